//! The training loop of CLIP-VIS (SPEC §5): batches from the [`Loader`], one step per batch
//! (losses with the frozen CLIP outside the graph, backward, optional data-parallel
//! all-reduce, global-norm clipping, AdamW at the scheduled rate), metrics as JSON lines and a
//! progress bar, checkpoints, periodic evaluation, and the final model as a clip-vis weights
//! file that `clip-vis segment` reads directly.
//!
//! A run lives in one output folder:
//!
//! ```text
//! out/config.json                        the TrainConfig (resuming needs nothing else)
//! out/metrics.jsonl                      one line per logged iteration / evaluation
//! out/checkpoints/iter_0010000/          head.safetensors (decoders, exact f32),
//!                                        optimizer_{0,1,2}.mpk (AdamW moments), state.json
//! out/checkpoints/last                   the newest checkpoint's folder name
//! out/model_final.safetensors            CLIP + decoders + config: `segment --weights` takes it
//! ```
//!
//! Every file is written to a temporary name and renamed (a checkpoint folder as a whole), so
//! an interruption never leaves a half-written checkpoint under a final name. Resuming restores
//! the decoders, the optimiser state and the iteration; the data order, the augmentations and
//! the sampled points are functions of the seed and the iteration, so an interrupted and
//! resumed run ends with the weights an uninterrupted one ends with.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use clip_vis_clip::model::CLIP_VIS_PREFIX;
use clip_vis_clip::weights::{write_atomically, SaveDtype, SyntheticFill};
use clip_vis_clip::{Clip, TensorSink, TensorStore};
use clip_vis_model::{weights_metadata, ClipVis, ClipVisConfig};

use crate::augment::Augmentation;
use crate::criterion::{Criterion, CriterionConfig, Targets};
use crate::data::{BadRecords, InstanceDataset, InstanceOptions, TrainSource, VideoDataset};
use crate::distributed::Peer;
use crate::init::initial_decoders;
use crate::loader::{Batch, Loader, LoaderConfig};
use crate::optim::{stable_param_ids, HeadOptimizer, OptimizerConfig, ScheduleConfig};
use crate::points::{PointSource, SeededPoints};
use crate::rng::Rng;
use crate::sampler::{Sampler, SamplerKind};
use crate::step::{frozen_features, TrainableHead};
use crate::{Result, TrainError};

/// Where the frozen CLIP's weights come from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClipWeights {
    /// An open_clip checkpoint as published, its `weights-convert` output, or a CLIP-VIS
    /// weights file (its `backbone.clip_model.*` part).
    File {
        /// The file.
        path: PathBuf,
    },
    /// Seeded random weights in the architecture of the config (the tiny demo model and
    /// tests: no file needed).
    Seeded {
        /// The seed.
        seed: u64,
    },
}

/// How the decoders start.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DecoderInit {
    /// Mask2Former's initialisation, seeded ([`crate::init`]).
    Fresh {
        /// The seed.
        seed: u64,
    },
    /// The decoders of a CLIP-VIS weights file (e.g. the COCO model before the YouTube-VIS
    /// fine-tune, `MODEL.WEIGHTS`).
    File {
        /// The file.
        path: PathBuf,
    },
}

/// The training data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpec {
    /// LVIS v1 / COCO instance json with pictures under `images`.
    Instances {
        /// The json.
        json: PathBuf,
        /// The picture folder.
        images: PathBuf,
        /// Drop rare LVIS categories (`lvis_v1_train_norare`).
        norare: bool,
    },
    /// YouTube-VIS video json with frames under `frames` (one random frame per draw).
    Videos {
        /// The json.
        json: PathBuf,
        /// The folder `file_names` are relative to.
        frames: PathBuf,
    },
}

impl DataSpec {
    /// Opens the dataset.
    pub fn open(&self, bad_records: BadRecords) -> Result<Arc<dyn TrainSource>> {
        Ok(match self {
            DataSpec::Instances {
                json,
                images,
                norare,
            } => Arc::new(InstanceDataset::open(
                json,
                images,
                InstanceOptions {
                    norare: *norare,
                    bad_records,
                },
            )?),
            DataSpec::Videos { json, frames } => {
                Arc::new(VideoDataset::open(json, frames, bad_records)?)
            }
        })
    }
}

/// Everything that defines a training run; saved as `config.json` in the output folder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The architecture.
    pub model: ClipVisConfig,
    /// The frozen CLIP's weights.
    pub clip: ClipWeights,
    /// How the decoders start.
    pub init: DecoderInit,
    /// The data.
    pub data: DataSpec,
    /// Unusable records and pictures: an error, or skipped and counted.
    pub bad_records: BadRecords,
    /// Augmentation.
    pub augmentation: Augmentation,
    /// Sampling order.
    pub sampler: SamplerKind,
    /// Pictures per iteration over all data-parallel ranks (`IMS_PER_BATCH`).
    pub batch_size: usize,
    /// Decoding threads per rank.
    pub workers: usize,
    /// Batches prepared ahead per rank.
    pub prefetch: usize,
    /// AdamW and clipping.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule (its `max_iter` is the run's length).
    pub schedule: ScheduleConfig,
    /// Loss weights and point sampling.
    pub criterion: CriterionConfig,
    /// The seed of sampling, augmentation and points.
    pub seed: u64,
    /// Iterations between checkpoints (0: only at the end).
    pub checkpoint_period: usize,
    /// Iterations between metric lines.
    pub log_period: usize,
    /// Iterations between evaluations (0: only at the end).
    pub eval_period: usize,
}

impl TrainConfig {
    /// The paper's LVIS image stage for `model` (SPEC §5): LSJ at 1024, repeat-factor sampling
    /// (0.001), rare categories dropped, batch 16, AdamW 1e-4 / 0.05, clipping 0.01, the
    /// 368,750-iteration schedule, checkpoints every 10,000 iterations.
    pub fn lvis(model: ClipVisConfig, clip: ClipWeights, json: PathBuf, images: PathBuf) -> Self {
        Self {
            model,
            clip,
            init: DecoderInit::Fresh { seed: 0 },
            data: DataSpec::Instances {
                json,
                images,
                norare: true,
            },
            bad_records: BadRecords::Error,
            augmentation: Augmentation::lsj(1024),
            sampler: SamplerKind::RepeatFactor { threshold: 0.001 },
            batch_size: 16,
            workers: 4,
            prefetch: 2,
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            criterion: CriterionConfig::default(),
            seed: 0,
            checkpoint_period: 10_000,
            log_period: 20,
            eval_period: 0,
        }
    }

    /// Checks the values can run on `world_size` ranks.
    pub fn validate(&self, world_size: usize) -> Result<()> {
        self.schedule.validate()?;
        self.augmentation.validate().map_err(TrainError::Config)?;
        if self.batch_size == 0 || !self.batch_size.is_multiple_of(world_size) {
            return Err(TrainError::Config(format!(
                "the batch of {} pictures does not split evenly over {world_size} data-parallel ranks",
                self.batch_size
            )));
        }
        if self.log_period == 0 {
            return Err(TrainError::Config("log_period must be at least 1".into()));
        }
        Ok(())
    }
}

/// The frozen CLIP's tensors (open_clip names) from `weights`.
pub fn clip_store(weights: &ClipWeights, model: &ClipVisConfig) -> Result<TensorStore> {
    match weights {
        ClipWeights::File { path } => {
            let store = TensorStore::open(path)?;
            let scoped = store.keys().iter().any(|k| k.starts_with(CLIP_VIS_PREFIX));
            Ok(if scoped {
                store.with_prefix(CLIP_VIS_PREFIX)
            } else {
                store
            })
        }
        ClipWeights::Seeded { seed } => {
            // Invent the tensors the tower asks for, then keep them as a plain store.
            let synthetic = TensorStore::synthetic(SyntheticFill::Random(*seed));
            Clip::<burn::backend::Flex>::load(&synthetic, &model.clip, &Default::default())?;
            let tensors = synthetic
                .requested_tensors()?
                .into_iter()
                .map(|(key, shape, values)| {
                    (key, clip_vis_clip::weights::StoredTensor { shape, values })
                })
                .collect();
            Ok(TensorStore::from_tensors(
                format!("<seeded CLIP, seed {seed}>"),
                tensors,
                Default::default(),
            ))
        }
    }
}

/// One step's numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Iterations done after this step (1 for the first).
    pub iteration: usize,
    /// Learning rate used.
    pub lr: f64,
    /// The weighted total over all outputs.
    pub total_loss: f64,
    /// The last output's object cross-entropy.
    pub loss_object_ce: f64,
    /// The last output's point BCE.
    pub loss_mask: f64,
    /// The last output's dice loss.
    pub loss_dice: f64,
    /// The last output's IoU L1 loss.
    pub loss_iou: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Target masks in the batch (this rank).
    pub num_masks: usize,
    /// Seconds waiting for the batch.
    pub data_time: f64,
    /// Seconds of the step (forward, backward, update).
    pub step_time: f64,
    /// Pictures replaced because they could not be read.
    pub skipped: usize,
    /// Instances of this step's pictures dropped because their augmented polygons could not be
    /// rasterised.
    pub unrasterizable: usize,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainSummary {
    /// The iteration the run stopped at.
    pub iteration: usize,
    /// Wall time of this process's part of the run.
    pub seconds: f64,
    /// Pictures per second of this process.
    pub images_per_second: f64,
    /// Pictures skipped as unreadable.
    pub skipped: usize,
    /// The final model, when the run reached `max_iter` (rank 0).
    pub model: Option<PathBuf>,
}

/// Called by rank 0 during a run.
pub trait TrainHooks<B: AutodiffBackend> {
    /// Evaluates the current weights every `eval_period` iterations and at the end; the
    /// returned `(name, value)` pairs are logged.
    fn evaluate(
        &mut self,
        _model: &ClipVis<B::InnerBackend>,
        _iteration: usize,
    ) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }

    /// After every step.
    fn after_step(&mut self, _report: &StepReport) {}
}

/// No hooks.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl<B: AutodiffBackend> TrainHooks<B> for NoHooks {}

/// A source of the sampled points of one iteration on one rank.
pub type PointSourceFactory = Arc<dyn Fn(usize, usize) -> Box<dyn PointSource> + Send + Sync>;

/// What `state.json` of a checkpoint holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct CheckpointState {
    format: u32,
    iteration: usize,
    seed: u64,
    skipped: usize,
}

const CHECKPOINTS: &str = "checkpoints";
const LAST: &str = "last";

/// A training run.
pub struct Trainer<B: AutodiffBackend> {
    config: TrainConfig,
    out: PathBuf,
    device: B::Device,
    clip: Clip<B::InnerBackend>,
    head: Option<TrainableHead<B>>,
    optimizer: HeadOptimizer<B>,
    criterion: Criterion,
    iteration: usize,
    skipped: usize,
    peer: Option<Peer>,
    points: PointSourceFactory,
    progress: bool,
}

impl<B: AutodiffBackend> std::fmt::Debug for Trainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("out", &self.out)
            .field("iteration", &self.iteration)
            .field("peer", &self.peer)
            .finish()
    }
}

fn json_error(file: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        file: file.to_path_buf(),
        message: e.to_string(),
    }
}

fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    serde_json::from_str(&text).map_err(|e| json_error(path, e))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| json_error(path, e))?;
    write_atomically(path, &text).map_err(TrainError::io(path))
}

impl<B: AutodiffBackend> Trainer<B> {
    /// Starts a new run in `out` (which must not hold one already: pass it to
    /// [`Trainer::resume`] instead, so nothing is overwritten).
    pub fn new(config: TrainConfig, out: &Path, device: &B::Device) -> Result<Self> {
        config.validate(1)?;
        prepare_output(&config, out)?;
        Self::start(config, out, device, None)
    }

    /// A new run as data-parallel `peer` (only rank 0 writes files).
    pub(crate) fn start(
        config: TrainConfig,
        out: &Path,
        device: &B::Device,
        peer: Option<Peer>,
    ) -> Result<Self> {
        let decoders = match &config.init {
            DecoderInit::Fresh { seed } => initial_decoders(&config.model, *seed)?,
            DecoderInit::File { path } => TensorStore::open(path)?,
        };
        Self::build(config, out, device, peer, &decoders)
    }

    fn build(
        config: TrainConfig,
        out: &Path,
        device: &B::Device,
        peer: Option<Peer>,
        decoders: &TensorStore,
    ) -> Result<Self> {
        let world = peer.as_ref().map_or(1, |p| p.world_size);
        config.validate(world)?;
        let clip_tensors = clip_store(&config.clip, &config.model)?;
        let clip = Clip::<B::InnerBackend>::load(&clip_tensors, &config.model.clip, device)?;
        drop(clip_tensors);
        let head = stable_param_ids(TrainableHead::<B>::load(decoders, &config.model, device)?);
        let optimizer = HeadOptimizer::new(config.optimizer.clone(), &head);
        let seed = config.seed;
        Ok(Self {
            criterion: Criterion::new(config.criterion),
            config,
            out: out.to_path_buf(),
            device: device.clone(),
            clip,
            head: Some(head),
            optimizer,
            iteration: 0,
            skipped: 0,
            peer,
            points: Arc::new(move |iteration, rank| {
                Box::new(SeededPoints::new(
                    Rng::derive(seed, &[5, iteration as u64, rank as u64]).next_u64(),
                ))
            }),
            progress: false,
        })
    }

    /// Continues the run in `out` from its newest checkpoint.
    pub fn resume(out: &Path, device: &B::Device) -> Result<Self> {
        Self::resume_as(out, device, None)
    }

    pub(crate) fn resume_as(out: &Path, device: &B::Device, peer: Option<Peer>) -> Result<Self> {
        let config: TrainConfig = read_json(&out.join("config.json"))?;
        let last_file = out.join(CHECKPOINTS).join(LAST);
        let name = std::fs::read_to_string(&last_file).map_err(TrainError::io(&last_file))?;
        let dir = out.join(CHECKPOINTS).join(name.trim());
        let state: CheckpointState = read_json(&dir.join("state.json"))?;
        let decoders = TensorStore::open(dir.join("head.safetensors"))?;
        let mut trainer = Self::build(config, out, device, peer, &decoders)?;
        decoders.ensure_all_used()?;
        trainer.optimizer = HeadOptimizer::new(trainer.config.optimizer.clone(), trainer.head())
            .load(&dir, device)?;
        trainer.iteration = state.iteration;
        trainer.skipped = state.skipped;
        Ok(trainer)
    }

    /// Replaces the source of sampled points (tests inject fixed points).
    pub fn with_point_source(mut self, points: PointSourceFactory) -> Self {
        self.points = points;
        self
    }

    /// Shows a progress bar with the losses and the time left (rank 0).
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Iterations done.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// The trainable decoders.
    pub fn head(&self) -> &TrainableHead<B> {
        self.head
            .as_ref()
            .expect("the head is always present between steps")
    }

    /// The inference model with the current weights.
    pub fn inference_model(&self) -> ClipVis<B::InnerBackend> {
        let head = self.head().valid();
        ClipVis {
            clip: self.clip.clone(),
            pixel_decoder: head.pixel_decoder,
            transformer_decoder: head.transformer_decoder,
        }
    }

    fn rank(&self) -> usize {
        self.peer.as_ref().map_or(0, |p| p.rank)
    }

    fn world_size(&self) -> usize {
        self.peer.as_ref().map_or(1, |p| p.world_size)
    }

    /// The batches this rank trains on from the current iteration.
    pub fn loader(&self) -> Result<Loader> {
        let source = self.config.data.open(self.config.bad_records)?;
        let sampler = Arc::new(Sampler::new(
            self.config.sampler,
            source.as_ref(),
            self.config.seed,
        ));
        Loader::new(
            source,
            sampler,
            self.config.augmentation.clone(),
            LoaderConfig {
                batch_size: self.config.batch_size / self.world_size(),
                workers: self.config.workers,
                prefetch: self.config.prefetch,
                seed: self.config.seed,
                world_size: self.world_size(),
                rank: self.rank(),
                bad_images: self.config.bad_records,
            },
            self.iteration,
        )
    }

    /// One step on `batch` (which must be this iteration's).
    pub fn step(&mut self, batch: Batch) -> Result<StepReport> {
        let started = Instant::now();
        let local_masks: usize = batch.masks.iter().map(|m| m.0).sum();
        let skipped = batch.skipped;
        let unrasterizable = batch.unrasterizable;
        let head = self.head.take().expect("the head is present between steps");
        // Whatever fails, the head goes back in place, so the trainer stays usable.
        let (logged, grads) = match self.losses_and_gradients(&head, batch, local_masks) {
            Ok(done) => done,
            Err(e) => {
                self.head = Some(head);
                return Err(e);
            }
        };
        let lr = self.config.optimizer.lr * self.config.schedule.multiplier(self.iteration);
        let (head, grad_norm) = self.optimizer.step(lr, head, grads);
        self.head = Some(head);
        self.skipped += skipped;
        let report = StepReport {
            iteration: self.iteration + 1,
            lr,
            total_loss: logged[0],
            loss_object_ce: logged[1],
            loss_mask: logged[2],
            loss_dice: logged[3],
            loss_iou: logged[4],
            grad_norm,
            num_masks: local_masks,
            data_time: 0.0,
            step_time: started.elapsed().as_secs_f64(),
            skipped,
            unrasterizable,
        };
        self.iteration += 1;
        Ok(report)
    }

    /// The losses of `batch` (total and the last output's four terms, averaged over the ranks)
    /// and the gradients of `head` (all-reduced over the ranks).
    fn losses_and_gradients(
        &self,
        head: &TrainableHead<B>,
        batch: Batch,
        local_masks: usize,
    ) -> Result<([f64; 5], GradientsParams)> {
        let device = &self.device;
        let (h, w) = (batch.height, batch.width);
        let images = batch.masks.len();
        let pixels = Tensor::<B::InnerBackend, 4>::from_data(
            TensorData::new(batch.pixels, [images, 3, h, w]),
            device,
        );
        let targets = Targets {
            masks: batch
                .masks
                .into_iter()
                .map(|(n, m)| Tensor::<B, 3>::from_data(TensorData::new(m, [n, h, w]), device))
                .collect(),
        };
        let num_masks = match &self.peer {
            None => local_masks as f64,
            Some(peer) => {
                peer.all_reduce_sum::<B::InnerBackend>(&[local_masks as f32], device)?[0] as f64
                    / peer.world_size as f64
            }
        };
        let mut points = (self.points)(self.iteration, self.rank());
        let features = frozen_features::<B>(&self.clip, pixels)?;
        let terms = head.losses_normalized(
            features,
            &targets,
            &self.criterion,
            num_masks,
            points.as_mut(),
        )?;
        let last = &terms.outputs[0];
        // One device-to-host read for the five logged numbers.
        let values = crate::criterion::to_vec(Tensor::cat(
            vec![
                terms.total.clone(),
                last.object_ce.clone(),
                last.mask.clone(),
                last.dice.clone(),
                last.iou.clone(),
            ],
            0,
        ));
        let values = match &self.peer {
            // The mean over ranks is logged; and a diverged rank stops every rank together.
            Some(peer) => peer
                .all_reduce_sum::<B::InnerBackend>(&values, device)?
                .into_iter()
                .map(|v| v / peer.world_size as f32)
                .collect(),
            None => values,
        };
        let logged: [f64; 5] = std::array::from_fn(|i| f64::from(values[i]));
        if !logged[0].is_finite() {
            return Err(TrainError::NonFiniteLoss {
                iteration: self.iteration,
                value: logged[0],
            });
        }
        let mut grads = GradientsParams::from_grads(terms.total.backward(), head);
        if let Some(peer) = &self.peer {
            crate::distributed::fill_missing_gradients(head, &mut grads);
            grads = peer.all_reduce_gradients::<B>(grads)?;
        }
        Ok((logged, grads))
    }

    /// Runs to the schedule's `max_iter`, then writes `model_final.safetensors`.
    pub fn run(&mut self, hooks: &mut dyn TrainHooks<B>) -> Result<TrainSummary> {
        self.run_until(self.config.schedule.max_iter, hooks)
    }

    /// Runs until iteration `stop` (at most `max_iter`); checkpoints, logs and evaluations
    /// happen on their periods. Stopping before `max_iter` leaves a resumable run (the
    /// checkpoints are its resume points).
    pub fn run_until(
        &mut self,
        stop: usize,
        hooks: &mut dyn TrainHooks<B>,
    ) -> Result<TrainSummary> {
        let max_iter = self.config.schedule.max_iter;
        let stop = stop.min(max_iter);
        let rank0 = self.rank() == 0;
        let started = Instant::now();
        let first = self.iteration;
        if rank0 {
            self.truncate_metrics()?;
        }
        let mut loader = self.loader()?;
        let bar = (self.progress && rank0).then(|| progress_bar(max_iter, self.iteration));
        while self.iteration < stop {
            let waited = Instant::now();
            let batch = loader.next_batch()?;
            let data_time = waited.elapsed().as_secs_f64();
            let mut report = self.step(batch)?;
            report.data_time = data_time;
            let done = self.iteration;
            if report.unrasterizable > 0 {
                eprintln!(
                    "clip-vis train: iteration {}: {} instance(s) dropped, their augmented \
                     polygons could not be rasterised",
                    report.iteration, report.unrasterizable
                );
            }
            if rank0 {
                hooks.after_step(&report);
                if done.is_multiple_of(self.config.log_period) || done == max_iter {
                    self.append_metrics(&serde_json::to_value(&report).expect("plain numbers"))?;
                }
                if let Some(bar) = &bar {
                    bar.set_position(done as u64);
                    bar.set_message(format!(
                        "loss {:.3} (ce {:.3} mask {:.3} dice {:.3} iou {:.3}) lr {:.1e}",
                        report.total_loss,
                        report.loss_object_ce,
                        report.loss_mask,
                        report.loss_dice,
                        report.loss_iou,
                        report.lr
                    ));
                }
            }
            let checkpoint = self.config.checkpoint_period;
            if rank0 && ((checkpoint > 0 && done.is_multiple_of(checkpoint)) || done == max_iter) {
                self.save_checkpoint()?;
            }
            let eval = self.config.eval_period;
            if rank0 && ((eval > 0 && done.is_multiple_of(eval)) || done == max_iter) {
                let metrics = hooks.evaluate(&self.inference_model(), done)?;
                if !metrics.is_empty() {
                    let mut line = serde_json::Map::new();
                    line.insert("iteration".into(), done.into());
                    let values: serde_json::Map<String, serde_json::Value> =
                        metrics.into_iter().map(|(k, v)| (k, v.into())).collect();
                    line.insert("eval".into(), values.into());
                    self.append_metrics(&line.into())?;
                }
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let model = if rank0 && self.iteration == max_iter {
            let path = self.out.join("model_final.safetensors");
            self.export(&path)?;
            Some(path)
        } else {
            None
        };
        let seconds = started.elapsed().as_secs_f64();
        let images = (self.iteration - first) * self.config.batch_size / self.world_size();
        Ok(TrainSummary {
            iteration: self.iteration,
            seconds,
            images_per_second: images as f64 / seconds.max(1e-9),
            skipped: self.skipped,
            model,
        })
    }

    /// Writes the whole model (frozen CLIP + current decoders + config) as a clip-vis weights
    /// file that `clip-vis segment --weights` and [`ClipVis::from_file`] read.
    pub fn export(&self, path: &Path) -> Result<()> {
        let mut sink = TensorSink::new();
        sink.put_store(
            &clip_store(&self.config.clip, &self.config.model)?,
            CLIP_VIS_PREFIX,
        )?;
        self.head().valid().save(&mut sink);
        let mut metadata = weights_metadata(&self.config.model);
        metadata.insert(
            "clip_vis.trained".into(),
            serde_json::json!({"iteration": self.iteration, "data": self.config.data, "seed": self.config.seed})
                .to_string(),
        );
        sink.save(path, SaveDtype::F32, metadata)?;
        Ok(())
    }

    /// Writes a checkpoint of the current iteration and points `checkpoints/last` at it.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let root = self.out.join(CHECKPOINTS);
        std::fs::create_dir_all(&root).map_err(TrainError::io(&root))?;
        let name = format!("iter_{:07}", self.iteration);
        let dir = root.join(&name);
        let staging = root.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(TrainError::io(&staging))?;
        let mut sink = TensorSink::new();
        self.head().valid().save(&mut sink);
        sink.save(
            &staging.join("head.safetensors"),
            SaveDtype::F32,
            weights_metadata(&self.config.model),
        )?;
        self.optimizer.save(&staging)?;
        write_json(
            &staging.join("state.json"),
            &CheckpointState {
                format: 1,
                iteration: self.iteration,
                seed: self.config.seed,
                skipped: self.skipped,
            },
        )?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(TrainError::io(&dir))?;
        }
        std::fs::rename(&staging, &dir).map_err(TrainError::io(&dir))?;
        let last = root.join(LAST);
        write_atomically(&last, name.as_bytes()).map_err(TrainError::io(&last))?;
        Ok(dir)
    }

    fn append_metrics(&self, value: &serde_json::Value) -> Result<()> {
        let path = self.out.join("metrics.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        writeln!(file, "{value}").map_err(TrainError::io(&path))
    }

    /// Drops metric lines past the current iteration (left by the interrupted part of a run
    /// that is now resumed), so the file reads as one run.
    fn truncate_metrics(&self) -> Result<()> {
        let path = self.out.join("metrics.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["iteration"].as_u64())
                    .is_some_and(|i| i as usize <= self.iteration)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if kept.len() != text.len() {
            write_atomically(&path, kept.as_bytes()).map_err(TrainError::io(&path))?;
        }
        Ok(())
    }
}

/// Creates the output folder of a new run and writes its `config.json`; a folder that already
/// holds a run is an error (resume it instead), so no earlier work is overwritten.
pub(crate) fn prepare_output(config: &TrainConfig, out: &Path) -> Result<()> {
    if out.join(CHECKPOINTS).join(LAST).exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a training run; resume it or choose another output folder",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
    write_json(&out.join("config.json"), config)
}

fn progress_bar(max_iter: usize, at: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(max_iter as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} iter {pos}/{len} [{elapsed_precise} < {eta_precise}] {bar:25} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(at as u64);
    bar.reset_eta();
    bar
}
