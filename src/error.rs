//! The facade's error: every crate's error, plus files and images the user gave.

use std::path::PathBuf;

/// Everything clip-vis can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the CLIP towers (weights, inputs).
    #[error(transparent)]
    Clip(#[from] clip_vis_clip::ClipError),
    /// From the assembled model (checkpoint layout, layer count, inputs).
    #[error(transparent)]
    Model(#[from] clip_vis_model::ModelError),
    /// From training (datasets, checkpoints, the loop).
    #[error(transparent)]
    Train(#[from] clip_vis_train::TrainError),
    /// From the evaluator (ground truth, results).
    #[error(transparent)]
    Eval(#[from] clip_vis_eval::EvalError),
    /// An image file that cannot be read or decoded.
    #[error("{}: cannot decode image: {message}", file.display())]
    Image {
        /// The file.
        file: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// A file that cannot be read or written.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// From temporal matching (non-finite or mis-shaped embeddings).
    #[error(transparent)]
    Matching(#[from] clip_vis_matching::MatchError),
    /// A vocabulary that cannot be used (empty, blank entries, unreadable file).
    #[error(transparent)]
    Vocabulary(#[from] clip_vis_classification::VocabularyError),
    /// A video frame that cannot be used (size differs from the first frame, non-finite
    /// model outputs, ...), counted from 0 in the order given.
    #[error("frame {frame}: {message}")]
    Frame {
        /// Frame index.
        frame: usize,
        /// What is wrong.
        message: String,
    },
    /// A video without frames.
    #[error("{0}: the video has no frames")]
    NoFrames(String),
    /// A bad argument or value from the user.
    #[error("{0}")]
    Usage(String),
    /// An index past the end of what it indexes (a track or frame of a finished video).
    #[error("{what} {index} is out of range: there are {count}")]
    OutOfRange {
        /// What was indexed (`track`, `frame`).
        what: &'static str,
        /// The index asked for.
        index: usize,
        /// How many there are.
        count: usize,
    },
    /// A failure inside clip-vis that no input explains (a scratch file it wrote that does not
    /// read back, a value that does not serialise): a bug or a broken machine, never a usage
    /// error.
    #[error("internal error: {0}")]
    Internal(String),
    /// A device that cannot be used: a backend this build lacks, no driver or adapter, or a
    /// GPU that failed on a batch (out of memory names the batch size). Never a silent fallback
    /// to the CPU.
    #[error("device {device}: {message}")]
    Device {
        /// The device (`wgpu:0`, `cuda:1`, ...).
        device: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Downloading weights failed.
    #[error("{0}")]
    Fetch(String),
}

/// Result alias of the facade.
pub type Result<T> = std::result::Result<T, Error>;
