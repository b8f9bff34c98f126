//! Errors of the evaluator: unreadable files and records that do not fit the ground truth.

use std::path::PathBuf;

/// Everything that can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON of the expected layout.
    #[error("{}: {message}", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// What the parser said, with line and column.
        message: String,
    },
    /// A record names a video the ground truth does not have.
    #[error("{what} names video {video_id}, which the ground truth does not have")]
    UnknownVideo {
        /// Which record (`result 12`, `annotation 7`).
        what: String,
        /// The video id.
        video_id: u64,
    },
    /// A record names a category the ground truth does not list.
    #[error("{what} names category {category_id}, which the ground truth does not list")]
    UnknownCategory {
        /// Which record.
        what: String,
        /// The category id.
        category_id: u64,
    },
    /// A segmentation list whose length differs from the video's frame count.
    #[error("{what}: {got} segmentations for video {video_id} of {expected} frames")]
    FrameCount {
        /// Which record.
        what: String,
        /// The video id.
        video_id: u64,
        /// Frames in the video.
        expected: usize,
        /// Segmentations in the record.
        got: usize,
    },
    /// A segmentation that cannot be decoded (corrupt RLE, wrong size, bad polygon).
    #[error("{what}, frame {frame}: {message}")]
    Segmentation {
        /// Which record.
        what: String,
        /// Zero-based frame index.
        frame: usize,
        /// Why.
        message: String,
    },
    /// A score that is NaN or infinite.
    #[error("{what}: score {score} is not a finite number")]
    Score {
        /// Which record.
        what: String,
        /// The score.
        score: f64,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
