//! [`VideoSession`]: frames in, named tracks out, in memory that does not grow with the video.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_vis_classification::scoring::{frame_score, keeps_frame, softmax_rows};
use clip_vis_classification::{frame_class_logits, MaskStats, VideoScores, Vocabulary};
use clip_vis_clip::device::catch_panic;
use clip_vis_clip::nn::runs_on_host;
use clip_vis_clip::preprocess::{normalize_and_pad_batch, resize_bilinear, RgbImage};
use clip_vis_clip::zero_shot::TextClassifier;
use clip_vis_matching::{permute_rows, TemporalMatcher};
use clip_vis_model::ClipVis;
use hotcoco::Rle;
use rayon::prelude::*;

use super::masks::{MaskGeometry, MaskResizer};
use super::spill::{FrameRecord, MaskSpill, Spill};
use super::{resized_size, FinishedVideo, TrackSummary, VideoConfig};
use crate::{Error, Result};

/// Wall-clock time per pipeline stage, summed over the frames processed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Resizing, normalising and padding frames.
    pub preprocess: Duration,
    /// The frozen CLIP image tower.
    pub clip: Duration,
    /// The pixel decoder.
    pub pixel_decoder: Duration,
    /// The transformer decoder and heads.
    pub transformer_decoder: Duration,
    /// Mask pooling and text-classifier logits.
    pub classify: Duration,
    /// Temporal matching.
    pub matching: Duration,
    /// Scoring sums, output-mask resize and RLE, spilling.
    pub masks: Duration,
    /// The final selection (reading the spill back).
    pub finish: Duration,
    /// Frames processed.
    pub frames: usize,
}

impl StageTimings {
    /// `(stage name, time)` pairs in pipeline order.
    pub fn stages(&self) -> [(&'static str, Duration); 8] {
        [
            ("preprocess", self.preprocess),
            ("clip", self.clip),
            ("pixel_decoder", self.pixel_decoder),
            ("transformer_decoder", self.transformer_decoder),
            ("classify", self.classify),
            ("matching", self.matching),
            ("masks", self.masks),
            ("finish", self.finish),
        ]
    }

    /// Adds another session's timings.
    pub fn add(&mut self, other: &StageTimings) {
        self.preprocess += other.preprocess;
        self.clip += other.clip;
        self.pixel_decoder += other.pixel_decoder;
        self.transformer_decoder += other.transformer_decoder;
        self.classify += other.classify;
        self.matching += other.matching;
        self.masks += other.masks;
        self.finish += other.finish;
        self.frames += other.frames;
    }
}

/// One video being segmented. Push frames with [`push`](Self::push) (they are batched
/// `config.chunk` at a time through the model), then [`finish`](Self::finish).
///
/// What stays in memory per frame is a few numbers per track (object logits and mask-score
/// sums); class probabilities and masks (as RLE, encoded as soon as the frame is matched) go to
/// a temporary file. The matcher keeps at most `T` frames of embeddings.
pub struct VideoSession<'m, B: Backend> {
    model: &'m ClipVis<B>,
    classifier: TextClassifier<B>,
    vocabulary: Vocabulary,
    config: VideoConfig,
    device: B::Device,
    matcher: Box<dyn TemporalMatcher + Send>,
    scores: Option<VideoScores>,
    resizer: Option<MaskResizer>,
    first_size: Option<(usize, usize)>,
    pending: Vec<RgbImage>,
    /// `[frame][track][2]` object logits, in track order.
    object_logits: Vec<f32>,
    /// `[frame][track]` mask-score sums.
    mask_stats: Vec<MaskStats>,
    spill: Spill,
    frames: usize,
    queries: usize,
    timings: StageTimings,
}

/// What one chunk's model pass leaves on the host.
struct ChunkOutputs {
    /// `[frame, query, h, w]` mask logits at stride 4.
    masks: Vec<f32>,
    /// `[frame, query, 2]` object logits.
    objects: Vec<f32>,
    /// `[frame, query]` predicted IoUs.
    ious: Vec<f32>,
    /// `[frame, query, dim]` tracking embeddings.
    embeds: Vec<f32>,
    /// Per frame, `[query, class]` logits.
    class_logits: Vec<Vec<f32>>,
    queries: usize,
    mask_size: (usize, usize),
    dim: usize,
    /// CLIP, pixel decoder, transformer decoder, classification.
    timings: [Duration; 4],
}

fn sync<B: Backend>(device: &B::Device) {
    // Stage timings are only meaningful on asynchronous backends after a sync.
    let _ = B::sync(device);
}

fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

impl<'m, B: Backend> VideoSession<'m, B> {
    /// A session for one video. `classifier` must be the text classifier of `vocabulary`
    /// (see [`clip_vis_classification::ClassifierCache`]).
    pub fn new(
        model: &'m ClipVis<B>,
        classifier: TextClassifier<B>,
        vocabulary: Vocabulary,
        config: VideoConfig,
        device: &B::Device,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            model,
            classifier,
            vocabulary,
            matcher: config.strategy.build()?,
            spill: Spill::create(config.spill_dir.clone())?,
            config,
            device: device.clone(),
            scores: None,
            resizer: None,
            first_size: None,
            pending: Vec::new(),
            object_logits: Vec::new(),
            mask_stats: Vec::new(),
            frames: 0,
            queries: 0,
            timings: StageTimings::default(),
        })
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> usize {
        self.frames + self.pending.len()
    }

    /// Time spent per stage so far.
    pub fn timings(&self) -> StageTimings {
        self.timings
    }

    /// Adds the next frame. Every frame must have the first frame's size.
    pub fn push(&mut self, frame: RgbImage) -> Result<()> {
        let index = self.frames();
        let size = (frame.height, frame.width);
        if size.0 == 0 || size.1 == 0 {
            return Err(Error::Frame {
                frame: index,
                message: "the frame is empty (0 pixels)".into(),
            });
        }
        match self.first_size {
            None => self.first_size = Some(size),
            Some(first) if first != size => {
                return Err(Error::Frame {
                    frame: index,
                    message: format!(
                        "{}x{} (width x height) differs from the first frame's {}x{}; every frame of a video must have one size",
                        size.1, size.0, first.1, first.0
                    ),
                })
            }
            Some(_) => {}
        }
        self.pending.push(frame);
        if self.pending.len() >= self.config.chunk {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds several frames (see [`push`](Self::push)).
    pub fn push_all(&mut self, frames: impl IntoIterator<Item = RgbImage>) -> Result<()> {
        frames.into_iter().try_for_each(|f| self.push(f))
    }

    /// Runs the model on the pending frames and folds them into the tracks.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let (height, width) = (pending[0].height, pending[0].width);
        let (new_h, new_w) =
            resized_size(height, width, self.config.short_side, self.config.max_side);
        let resized: Vec<RgbImage> = if (new_h, new_w) == (height, width) {
            pending
        } else {
            pending
                .par_iter()
                .map(|frame| resize_bilinear(frame, new_w, new_h))
                .collect()
        };
        // One upload per chunk.
        let pixels = normalize_and_pad_batch::<B>(&resized, &self.device);
        let [count, _, padded_h, padded_w] = pixels.dims();
        sync::<B>(&self.device);
        self.timings.preprocess += started.elapsed();

        // Everything on the device, then one download per output: on a GPU a failure (out of
        // memory on a large batch, a lost device) surfaces as a panic inside the backend, which
        // becomes an error naming the batch instead of aborting the process.
        let on_device = || self.run_model(pixels, count);
        let outputs = if runs_on_host::<B>(&self.device) {
            on_device()?
        } else {
            catch_panic(on_device).map_err(|cause| Error::Device {
                device: B::name(&self.device),
                message: format!(
                    "the model failed on a batch of {count} frames ({padded_w}x{padded_h} padded): {cause}{}",
                    if cause.to_ascii_lowercase().contains("memory") {
                        "; out of GPU memory: use a smaller --batch"
                    } else {
                        ""
                    }
                ),
            })??
        };
        let ChunkOutputs {
            masks: all_masks,
            objects: all_objects,
            ious: all_ious,
            embeds: all_embeds,
            class_logits,
            queries,
            mask_size: (mask_h, mask_w),
            dim,
            timings,
        } = outputs;
        self.timings.clip += timings[0];
        self.timings.pixel_decoder += timings[1];
        self.timings.transformer_decoder += timings[2];
        self.timings.classify += timings[3];
        if self.resizer.is_none() {
            self.queries = queries;
            self.scores = Some(VideoScores::new(
                queries,
                self.vocabulary.len(),
                self.config.weights,
            ));
            self.resizer = Some(MaskResizer::new(MaskGeometry {
                logits: (mask_h, mask_w),
                padded: (padded_h, padded_w),
                valid: (new_h, new_w),
                original: (height, width),
            }));
        }
        let plane = mask_h * mask_w;
        for b in 0..count {
            let frame = self.frames;
            let logits = &class_logits[b];
            let masks = &all_masks[b * queries * plane..(b + 1) * queries * plane];
            let objects = &all_objects[b * queries * 2..(b + 1) * queries * 2];
            let ious = &all_ious[b * queries..(b + 1) * queries];
            let embeds = &all_embeds[b * queries * dim..(b + 1) * queries * dim];
            for (what, values) in [
                ("class logits", &logits[..]),
                ("object logits", objects),
                ("IoUs", ious),
                ("mask logits", masks),
            ] {
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(Error::Frame {
                        frame,
                        message: format!(
                            "the model produced non-finite {what} (corrupt weights or input?)"
                        ),
                    });
                }
            }

            let t = Instant::now();
            let perm = self.matcher.assign(embeds, dim)?;
            self.timings.matching += t.elapsed();

            let t = Instant::now();
            let classes = self.vocabulary.len();
            let probabilities = softmax_rows(&permute_rows(logits, classes, &perm), classes);
            let objects = permute_rows(objects, 2, &perm);
            let ious = permute_rows(ious, 1, &perm);
            self.scores
                .as_mut()
                .expect("set on the first chunk")
                .add_frame(&probabilities, &ious, &objects);
            self.object_logits.extend_from_slice(&objects);
            let resizer = self.resizer.as_ref().expect("set on the first chunk");
            let tracks: Vec<(MaskStats, Rle)> = perm
                .par_iter()
                .map(|&q| {
                    let logits = &masks[q * plane..(q + 1) * plane];
                    (MaskStats::of(logits), resizer.encode(logits))
                })
                .collect();
            let (stats, rles): (Vec<MaskStats>, Vec<Rle>) = tracks.into_iter().unzip();
            self.mask_stats.extend(stats);
            self.spill.push(&FrameRecord {
                probabilities,
                masks: rles,
            })?;
            self.frames += 1;
            self.timings.masks += t.elapsed();
        }
        self.timings.frames = self.frames;
        Ok(())
    }

    /// The device part of a chunk: CLIP, both decoders, and the class logits of every frame
    /// (mask pooling against the cached text classifier), downloaded once per output.
    fn run_model(&self, pixels: Tensor<B, 4>, count: usize) -> Result<ChunkOutputs> {
        let model = self.model;
        let t = Instant::now();
        let features = model.clip.features(pixels);
        sync::<B>(&self.device);
        let clip = t.elapsed();
        let t = Instant::now();
        let pixel = model.pixel_decoder.forward(
            features.res2.clone(),
            features.res3.clone(),
            features.res4.clone(),
            features.res5.clone(),
        );
        sync::<B>(&self.device);
        let pixel_decoder = t.elapsed();
        let t = Instant::now();
        let decoder = model
            .transformer_decoder
            .forward_inference(&pixel.multi_scale_features, pixel.mask_features);
        sync::<B>(&self.device);
        let transformer_decoder = t.elapsed();

        let [_, queries, mask_h, mask_w] = decoder.last.masks.dims();
        let [_, _, dim] = decoder.embeds.dims();
        let [_, channels, dense_h, dense_w] = features.res5.dims();
        let t = Instant::now();
        let mut class_logits = Vec::with_capacity(count);
        for b in 0..count {
            let res5 = features
                .res5
                .clone()
                .slice([b..b + 1, 0..channels, 0..dense_h, 0..dense_w]);
            let frame_masks = decoder
                .last
                .masks
                .clone()
                .slice([b..b + 1, 0..queries, 0..mask_h, 0..mask_w])
                .reshape([queries, mask_h, mask_w]);
            class_logits.push(to_host(frame_class_logits(
                &model.clip,
                &self.classifier,
                res5,
                frame_masks,
            )?));
        }
        sync::<B>(&self.device);
        let classify = t.elapsed();
        Ok(ChunkOutputs {
            masks: to_host(decoder.last.masks),
            objects: to_host(decoder.last.object_logits),
            ious: to_host(decoder.last.ious),
            embeds: to_host(decoder.embeds),
            class_logits,
            queries,
            mask_size: (mask_h, mask_w),
            dim,
            timings: [clip, pixel_decoder, transformer_decoder, classify],
        })
    }

    /// Finishes the video: the best `config.detections` (track, category) pairs, each with its
    /// score and one mask per frame at the original size (SPEC §6.4–6.6), best first. The masks
    /// stay in a temporary file; see [`FinishedVideo`].
    pub fn finish(mut self) -> Result<FinishedVideo> {
        self.flush()?;
        if self.frames == 0 {
            return Err(Error::NoFrames("the video session".into()));
        }
        let started = Instant::now();
        let scores = self.scores.take().expect("set with the first frame");
        let pairs = scores.top_pairs(self.config.detections);
        let classes = self.vocabulary.len();
        let queries = self.queries;
        let resizer = self.resizer.take().expect("set with the first frame");
        let empty = hotcoco::mask::rle_to_string(&resizer.empty());
        let mut stats = vec![MaskStats::default(); pairs.len()];
        let mut masks = MaskSpill::create(self.config.spill_dir.clone(), pairs.len())?;
        let (object_logits, mask_stats) = (&self.object_logits, &self.mask_stats);
        self.spill.frames(|frame, record| {
            let strings: Vec<String> = pairs
                .iter()
                .enumerate()
                .map(|(k, pair)| {
                    let p = record.probabilities[pair.query * classes + pair.label];
                    let objects = &object_logits[(frame * queries + pair.query) * 2..];
                    if keeps_frame(frame_score(p, objects), pair.video_score) {
                        stats[k].add(mask_stats[frame * queries + pair.query]);
                        hotcoco::mask::rle_to_string(&record.masks[pair.query])
                    } else {
                        empty.clone()
                    }
                })
                .collect();
            masks.push_frame(&strings)
        })?;
        let mut tracks: Vec<TrackSummary> = pairs
            .iter()
            .zip(stats)
            .enumerate()
            .map(|(slot, (pair, stats))| {
                let category = &self.vocabulary.categories[pair.label];
                TrackSummary {
                    slot,
                    query: pair.query,
                    label: pair.label,
                    category_id: category.id,
                    category: category.name.clone(),
                    video_score: pair.video_score,
                    score: pair.video_score * stats.score(),
                }
            })
            .collect();
        tracks.sort_by(|a, b| b.score.total_cmp(&a.score));
        self.timings.finish += started.elapsed();
        let (height, width) = resizer.geometry().original;
        Ok(FinishedVideo {
            tracks,
            frames: self.frames,
            size: (height as u32, width as u32),
            timings: self.timings,
            masks,
        })
    }
}
