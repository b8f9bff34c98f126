//! Video inference (SPEC §6): a streaming [`VideoSession`], whole-video [`segment_video`], and
//! the outputs: YTVIS/LV-VIS results json ([`results`]), pictures ([`render`]) and frame input
//! ([`frames`]).
//!
//! ```no_run
//! use clip_vis::backend::Cpu;
//! use clip_vis::classification::{ClassifierCache, Vocabulary};
//! use clip_vis::model::ClipVis;
//! use clip_vis::video::{VideoConfig, VideoSession};
//!
//! let device = Default::default();
//! let model = ClipVis::<Cpu>::from_file("clipvis_lvis_r50_7.pth", &device)?;
//! let vocabulary = Vocabulary::from_list("cat, dog|puppy, hard drive")?;
//! let mut cache = ClassifierCache::new(); // one text classifier per vocabulary, reused
//! let classifier = cache.get(&model.clip, &vocabulary, Default::default())?.clone();
//! let mut session = VideoSession::new(&model, classifier, vocabulary, VideoConfig::default(), &device)?;
//! for path in clip_vis::video::frames::list_frames(std::path::Path::new("frames/"))? {
//!     session.push(clip_vis::image_io::read_rgb(&path)?)?; // frames stream in; memory stays flat
//! }
//! let mut finished = session.finish()?;
//! for (k, track) in finished.tracks.clone().iter().enumerate() {
//!     let first = finished.mask(k, 0)?; // masks wait in a temporary file until asked for
//!     println!("{} {:.3} ({} pixels in frame 0)", track.category, track.score, clip_vis::hotcoco::mask::area(&first));
//! }
//! # Ok::<(), clip_vis::Error>(())
//! ```

pub mod frames;
pub mod masks;
pub mod render;
pub mod results;
mod session;
pub mod spill;

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use clip_vis_classification::{ClassifierCache, ScoreWeights, Vocabulary};
use clip_vis_clip::preprocess::RgbImage;
use clip_vis_clip::zero_shot::Templates;
use clip_vis_matching::{MatchConfig, Strategy};
use clip_vis_model::ClipVis;
use hotcoco::Rle;

pub use session::{StageTimings, VideoSession};

use crate::{Error, Result};

/// How a video is segmented. The default is the paper's setting (T = 9, K = 3, 50 detections,
/// short side 480); [`VideoConfig::released`] is what the released checkpoints were evaluated
/// with (K = 5).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoConfig {
    /// Temporal matching strategy (top-K with T and K, or a baseline).
    pub strategy: Strategy,
    /// (track, category) pairs kept per video (`TEST.DETECTIONS_PER_IMAGE`, 50).
    pub detections: usize,
    /// Which terms weight the CLIP probability.
    pub weights: ScoreWeights,
    /// Prompt templates for the text classifier.
    pub templates: Templates,
    /// Frames are resized so their short side is this (480) ...
    pub short_side: usize,
    /// ... unless the long side would exceed this (1333).
    pub max_side: usize,
    /// Frames per model batch (the reference runs windows of 10).
    pub chunk: usize,
    /// Where the per-frame spill file goes (the system temporary directory by default).
    pub spill_dir: Option<PathBuf>,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::TopK(MatchConfig::PAPER),
            detections: 50,
            weights: ScoreWeights::default(),
            templates: Templates::Vild,
            short_side: 480,
            max_side: 1333,
            chunk: 10,
            spill_dir: None,
        }
    }
}

impl VideoConfig {
    /// The released evaluation setting: T = 9, K = 5.
    pub fn released() -> Self {
        Self {
            strategy: Strategy::TopK(MatchConfig::RELEASED),
            ..Self::default()
        }
    }

    /// Checks the values can run.
    pub fn validate(&self) -> Result<()> {
        if self.detections == 0 {
            return Err(Error::Usage("detections must be at least 1".into()));
        }
        if self.short_side == 0 || self.max_side == 0 {
            return Err(Error::Usage(
                "the frame size limits must be positive".into(),
            ));
        }
        if self.chunk == 0 {
            return Err(Error::Usage("the frame chunk must be at least 1".into()));
        }
        if let Strategy::TopK(config) = self.strategy {
            config.validate()?;
        }
        Ok(())
    }
}

/// One named object through the video, with its masks in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// The query (track) index.
    pub query: usize,
    /// The 0-based category index in the vocabulary.
    pub label: usize,
    /// The category id written to results (1-based position, or the dataset's id).
    pub category_id: u64,
    /// The category name.
    pub category: String,
    /// The final score: video score × mask score.
    pub score: f32,
    /// The video score `S` of the (track, category) pair.
    pub video_score: f32,
    /// One mask per frame at the original frame size (empty where the frame was pruned).
    pub masks: Vec<Rle>,
}

/// A selected (track, category) pair without its masks (see [`FinishedVideo`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TrackSummary {
    /// Where its masks are in the [`FinishedVideo`]'s mask file.
    slot: usize,
    /// The query (track) index.
    pub query: usize,
    /// The 0-based category index in the vocabulary.
    pub label: usize,
    /// The category id written to results (1-based position, or the dataset's id).
    pub category_id: u64,
    /// The category name.
    pub category: String,
    /// The final score: video score × mask score.
    pub score: f32,
    /// The video score `S` of the (track, category) pair.
    pub video_score: f32,
}

/// A finished video: its tracks, best first, with their masks in a temporary file so that a
/// long video's results never have to be in memory at once (they are streamed into the results
/// json, and read frame by frame for the pictures).
#[derive(Debug)]
pub struct FinishedVideo {
    /// The selected (track, category) pairs, best first.
    pub tracks: Vec<TrackSummary>,
    /// Frames in the video.
    pub frames: usize,
    /// `(height, width)` of the masks (the original frame size).
    pub size: (u32, u32),
    /// Time spent per stage.
    pub timings: StageTimings,
    masks: spill::MaskSpill,
}

impl FinishedVideo {
    /// The pycocotools RLE string of track `track` (an index into `tracks`) at `frame`.
    /// A track or frame past the end is [`Error::OutOfRange`].
    pub fn mask_string(&mut self, track: usize, frame: usize) -> Result<String> {
        let slot = self
            .tracks
            .get(track)
            .ok_or(Error::OutOfRange {
                what: "track",
                index: track,
                count: self.tracks.len(),
            })?
            .slot;
        if frame >= self.frames {
            return Err(Error::OutOfRange {
                what: "frame",
                index: frame,
                count: self.frames,
            });
        }
        self.masks.get(slot, frame)
    }

    /// The mask of track `track` (an index into `tracks`) at `frame` (errors as
    /// [`FinishedVideo::mask_string`]).
    pub fn mask(&mut self, track: usize, frame: usize) -> Result<Rle> {
        let text = self.mask_string(track, frame)?;
        hotcoco::mask::rle_from_string(&text, self.size.0, self.size.1)
            .map_err(|e| Error::Internal(format!("mask file: {e}")))
    }

    /// Every track with all its masks in memory.
    pub fn into_tracks(mut self) -> Result<Vec<Track>> {
        (0..self.tracks.len())
            .map(|k| {
                let masks = (0..self.frames)
                    .map(|f| self.mask(k, f))
                    .collect::<Result<Vec<_>>>()?;
                let t = &self.tracks[k];
                Ok(Track {
                    query: t.query,
                    label: t.label,
                    category_id: t.category_id,
                    category: t.category.clone(),
                    score: t.score,
                    video_score: t.video_score,
                    masks,
                })
            })
            .collect()
    }
}

/// Maps an I/O error to [`Error::Io`] naming `path`.
pub(crate) fn io_error(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        file: path.to_path_buf(),
        source,
    }
}

/// A fresh path `<dir>/clip-vis-<kind>-<pid>-<n><extension>` for scratch data (`dir`: the
/// system temporary directory when `None`), unique within the process.
pub(crate) fn scratch_path(dir: Option<PathBuf>, kind: &str, extension: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.unwrap_or_else(std::env::temp_dir).join(format!(
        "clip-vis-{kind}-{}-{n}{extension}",
        std::process::id()
    ))
}

pub use clip_vis_clip::preprocess::resized_size;

/// Segments a whole video in one call: builds (or reuses from `cache`) the text classifier of
/// `vocabulary`, streams `frames` through a [`VideoSession`] and returns the tracks.
pub fn segment_video<B: Backend>(
    model: &ClipVis<B>,
    cache: &mut ClassifierCache<B>,
    vocabulary: &Vocabulary,
    frames: impl IntoIterator<Item = RgbImage>,
    config: &VideoConfig,
    device: &B::Device,
) -> Result<(Vec<Track>, StageTimings)> {
    let classifier = cache
        .get(&model.clip, vocabulary, config.templates)?
        .clone();
    let mut session = VideoSession::new(
        model,
        classifier,
        vocabulary.clone(),
        config.clone(),
        device,
    )?;
    session.push_all(frames)?;
    let finished = session.finish()?;
    let timings = finished.timings;
    Ok((finished.into_tracks()?, timings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_detectron2() {
        assert_eq!(resized_size(720, 1280, 480, 1333), (480, 853));
        assert_eq!(resized_size(44, 60, 64, 1333), (64, 87));
        assert_eq!(resized_size(1280, 720, 480, 1333), (853, 480));
        // The long side is capped: 480 x 2400 would exceed 1333.
        assert_eq!(resized_size(100, 500, 480, 1333), (267, 1333));
    }
}
