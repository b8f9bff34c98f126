//! Batches for training, decoded and augmented on worker threads ahead of the model.
//!
//! Every sample has a fixed place in the run: image `j` of the batch of iteration `g` on rank
//! `r` of `W` data-parallel ranks is stream position `p = (g·W + r)·b + j` of the shared
//! [`Sampler`], and its augmentation draws from the stream `Rng::derive(seed, [p, ...])`. So the
//! batches are the same whatever the number of worker threads, whichever thread loads which
//! sample, and after a resume; and `W` ranks of batch `b` see exactly the samples one rank of
//! batch `W·b` sees.
//!
//! A picture that cannot be read (missing, undecodable, not the size its record says) is an
//! error naming the file, or, with [`BadRecords::Skip`], replaced by a record drawn from the
//! position's own stream and counted in [`Batch::skipped`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use clip_vis_clip::preprocess::{PIXEL_MEAN, PIXEL_STD, SIZE_DIVISIBILITY};

use crate::augment::{Augmentation, Augmented};
use crate::data::{read_image, BadRecords, TrainSource};
use crate::rng::Rng;
use crate::sampler::Sampler;
use crate::{Result, TrainError};

/// How batches are made.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderConfig {
    /// Pictures per batch on this rank.
    pub batch_size: usize,
    /// Decoding threads (0: decode on the training thread).
    pub workers: usize,
    /// Batches prepared ahead of the model.
    pub prefetch: usize,
    /// The run's seed (sampling and augmentation).
    pub seed: u64,
    /// Data-parallel ranks in all.
    pub world_size: usize,
    /// This rank.
    pub rank: usize,
    /// Unreadable pictures: an error, or skipped and counted.
    pub bad_images: BadRecords,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 2,
            workers: 2,
            prefetch: 2,
            seed: 0,
            world_size: 1,
            rank: 0,
            bad_images: BadRecords::Error,
        }
    }
}

/// One batch, on the host: normalised pictures padded to a common size divisible by 32, and
/// each picture's instance masks at that size.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The iteration this batch is for.
    pub iteration: usize,
    /// Padded height.
    pub height: usize,
    /// Padded width.
    pub width: usize,
    /// `[batch, 3, height, width]`, `(x − mean) / std`, zero padding (SPEC §1).
    pub pixels: Vec<f32>,
    /// Per picture: its instance count and `[count, height, width]` 0/1 masks.
    pub masks: Vec<(usize, Vec<f32>)>,
    /// The sampler positions of the pictures.
    pub positions: Vec<u64>,
    /// Pictures replaced because they could not be read (with [`BadRecords::Skip`]).
    pub skipped: usize,
    /// Instances dropped because their augmented polygons could not be rasterised
    /// ([`Augmented::unrasterizable`]).
    pub unrasterizable: usize,
}

/// Attempts before a position gives up on finding a readable picture.
const MAX_ATTEMPTS: u64 = 64;

/// Loads sample `position`: the sampler's record, or, after a skipped attempt, a record drawn
/// from the position's own stream.
fn load_sample(
    source: &dyn TrainSource,
    sampler: &Sampler,
    augmentation: &Augmentation,
    seed: u64,
    position: u64,
    bad_images: BadRecords,
) -> Result<(Augmented, usize)> {
    let mut skipped = 0;
    for attempt in 0..MAX_ATTEMPTS {
        let mut rng = Rng::derive(seed, &[4, position, attempt]);
        let index = if attempt == 0 {
            sampler.at(position)
        } else {
            rng.below(source.len())
        };
        let record = source.pick(index, &mut rng);
        let loaded = read_image(&record.file).and_then(|image| {
            if (image.width, image.height) != (record.width as usize, record.height as usize) {
                return Err(TrainError::Image {
                    file: record.file.clone(),
                    message: format!(
                        "decoded as {}x{}, but {} records it as {}x{}",
                        image.width,
                        image.height,
                        source.path().display(),
                        record.width,
                        record.height
                    ),
                });
            }
            Ok(image)
        });
        match loaded {
            Ok(image) => {
                return Ok((
                    augmentation.apply(&image, &record.instances, &mut rng),
                    skipped,
                ))
            }
            Err(error) if bad_images == BadRecords::Error => return Err(error),
            Err(_) => skipped += 1,
        }
    }
    Err(TrainError::Dataset {
        file: source.path().to_path_buf(),
        message: format!("{MAX_ATTEMPTS} pictures in a row could not be read (position {position}); is the image folder right?"),
    })
}

/// Normalises and pads the pictures of one batch.
fn assemble(iteration: usize, samples: Vec<(u64, Augmented, usize)>) -> Batch {
    let round_up = |v: usize| v.div_ceil(SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY;
    let height = round_up(samples.iter().map(|s| s.1.image.height).max().unwrap_or(1));
    let width = round_up(samples.iter().map(|s| s.1.image.width).max().unwrap_or(1));
    let plane = height * width;
    let mut pixels = vec![0f32; samples.len() * 3 * plane];
    let mut masks = Vec::with_capacity(samples.len());
    let mut positions = Vec::with_capacity(samples.len());
    let mut skipped = 0;
    let mut unrasterizable = 0;
    for (b, (position, sample, skips)) in samples.into_iter().enumerate() {
        unrasterizable += sample.unrasterizable;
        let image = &sample.image;
        for y in 0..image.height {
            for x in 0..image.width {
                for c in 0..3 {
                    let byte = image.pixels[(y * image.width + x) * 3 + c];
                    pixels[((b * 3 + c) * height + y) * width + x] =
                        (f32::from(byte) - PIXEL_MEAN[c]) / PIXEL_STD[c];
                }
            }
        }
        let mut padded = vec![0f32; sample.masks.len() * plane];
        for (n, mask) in sample.masks.iter().enumerate() {
            for y in 0..image.height {
                for x in 0..image.width {
                    padded[n * plane + y * width + x] = f32::from(mask[y * image.width + x]);
                }
            }
        }
        masks.push((sample.masks.len(), padded));
        positions.push(position);
        skipped += skips;
    }
    Batch {
        iteration,
        height,
        width,
        pixels,
        masks,
        positions,
        skipped,
        unrasterizable,
    }
}

/// What the workers share.
struct Shared {
    source: Arc<dyn TrainSource>,
    sampler: Arc<Sampler>,
    augmentation: Augmentation,
    config: LoaderConfig,
    start_iteration: usize,
    /// `(next sample to claim, samples handed out to the trainer)`.
    progress: Mutex<(usize, usize)>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// Sample `k` of this rank's stream (counted from the start iteration).
    fn position(&self, k: usize) -> (usize, u64) {
        let b = self.config.batch_size;
        let iteration = self.start_iteration + k / b;
        let global = (iteration * self.config.world_size + self.config.rank) * b + k % b;
        (iteration, global as u64)
    }

    /// Sample `k`. A panic while loading it (a bug in a [`TrainSource`], an augmentation
    /// that meets a picture it cannot handle) is an error naming the sample: the batch waits
    /// for every sample, so a worker that died without sending one would hang the loop.
    fn load(&self, k: usize) -> Result<(u64, Augmented, usize)> {
        let (iteration, position) = self.position(k);
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            load_sample(
                self.source.as_ref(),
                &self.sampler,
                &self.augmentation,
                self.config.seed,
                position,
                self.config.bad_images,
            )
        }));
        let (sample, skipped) = loaded.unwrap_or_else(|payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(TrainError::Dataset {
                file: self.source.path().to_path_buf(),
                message: format!(
                    "training sample {position} (iteration {}, item {} of the batch): loading it \
                     panicked: {what}",
                    iteration,
                    k % self.config.batch_size
                ),
            })
        })?;
        Ok((position, sample, skipped))
    }
}

type Loaded = (usize, Result<(u64, Augmented, usize)>);

/// Batches of a training run, in iteration order (see the module docs).
pub struct Loader {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    results: Option<Receiver<Loaded>>,
    pending: BTreeMap<usize, Result<(u64, Augmented, usize)>>,
    next_sample: usize,
    iteration: usize,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("iteration", &self.iteration)
            .field("workers", &self.workers.len())
            .finish()
    }
}

fn worker(shared: Arc<Shared>, results: Sender<Loaded>) {
    let window = shared.config.batch_size * shared.config.prefetch.max(1);
    loop {
        let k = {
            let mut progress = shared.progress.lock().expect("loader state");
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if progress.0 < progress.1 + window {
                    break;
                }
                progress = shared.wake.wait(progress).expect("loader state");
            }
            progress.0 += 1;
            progress.0 - 1
        };
        let loaded = shared.load(k);
        if results.send((k, loaded)).is_err() {
            return;
        }
    }
}

impl Loader {
    /// Batches from `start_iteration` on (0 for a new run; a checkpoint's iteration to resume).
    pub fn new(
        source: Arc<dyn TrainSource>,
        sampler: Arc<Sampler>,
        augmentation: Augmentation,
        config: LoaderConfig,
        start_iteration: usize,
    ) -> Result<Self> {
        if config.batch_size == 0 || config.world_size == 0 || config.rank >= config.world_size {
            return Err(TrainError::Config(format!(
                "batch size {} on rank {} of {}: the batch needs a picture and the rank must be below the world size",
                config.batch_size, config.rank, config.world_size
            )));
        }
        augmentation.validate().map_err(TrainError::Config)?;
        let workers = config.workers;
        let shared = Arc::new(Shared {
            source,
            sampler,
            augmentation,
            config,
            start_iteration,
            progress: Mutex::new((0, 0)),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let (sender, receiver) = channel();
        let handles = (0..workers)
            .map(|i| {
                let shared = shared.clone();
                let sender = sender.clone();
                std::thread::Builder::new()
                    .name(format!("clip-vis-loader-{i}"))
                    .spawn(move || worker(shared, sender))
                    .expect("spawn a loader thread")
            })
            .collect();
        Ok(Self {
            shared,
            workers: handles,
            results: (workers > 0).then_some(receiver),
            pending: BTreeMap::new(),
            next_sample: 0,
            iteration: start_iteration,
        })
    }

    /// The dataset json.
    pub fn dataset(&self) -> PathBuf {
        self.shared.source.path().to_path_buf()
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let b = self.shared.config.batch_size;
        let mut samples = Vec::with_capacity(b);
        for _ in 0..b {
            let k = self.next_sample;
            let loaded = match &self.results {
                None => self.shared.load(k),
                Some(results) => loop {
                    if let Some(loaded) = self.pending.remove(&k) {
                        break loaded;
                    }
                    let (i, loaded) = results
                        .recv()
                        .map_err(|_| TrainError::Config("the loader threads stopped".into()))?;
                    self.pending.insert(i, loaded);
                },
            };
            self.next_sample += 1;
            {
                let mut progress = self.shared.progress.lock().expect("loader state");
                progress.1 = self.next_sample;
            }
            self.shared.wake.notify_all();
            samples.push(loaded?);
        }
        let batch = assemble(self.iteration, samples);
        self.iteration += 1;
        Ok(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        self.results = None;
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}
