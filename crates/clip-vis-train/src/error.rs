//! Training failures, each naming the file, record, image or iteration it concerns.

use std::path::PathBuf;

/// Everything training can report.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Targets that do not fit the predictions or images.
    #[error("{0}")]
    InvalidInput(String),
    /// A cost matrix with NaN (a diverged model): the assignment is undefined.
    #[error("image {image}: the matching cost has NaN entries (non-finite predictions?)")]
    NonFiniteCost {
        /// Image index in the batch.
        image: usize,
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
    /// A dataset file that cannot be used (bad json, a bad record, nothing to train on).
    #[error("{}: {message}", file.display())]
    Dataset {
        /// The dataset json (or image folder).
        file: PathBuf,
        /// What is wrong, naming the record.
        message: String,
    },
    /// An image that cannot be decoded or does not match its record.
    #[error("{}: {message}", file.display())]
    Image {
        /// The image file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint that cannot be written or resumed from.
    #[error("{}: {message}", file.display())]
    Checkpoint {
        /// The checkpoint file or folder.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Loading or saving weights failed.
    #[error(transparent)]
    Weights(#[from] clip_vis_clip::ClipError),
    /// Building or running the model failed.
    #[error(transparent)]
    Model(#[from] clip_vis_model::ModelError),
    /// Evaluating failed.
    #[error(transparent)]
    Eval(#[from] clip_vis_eval::EvalError),
    /// The loss became NaN or infinite (a diverged run); names the iteration.
    #[error("iteration {iteration}: the loss is {value} (diverged); lower the learning rate or check the data")]
    NonFiniteLoss {
        /// The iteration.
        iteration: usize,
        /// The loss value.
        value: f64,
    },
    /// The data-parallel collective failed (a peer died, a bad address, mismatched peers).
    #[error("data-parallel training: {0}")]
    Collective(String),
    /// A bad training configuration.
    #[error("{0}")]
    Config(String),
}

impl TrainError {
    /// An I/O error on `file`.
    pub fn io(file: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let file = file.into();
        move |source| Self::Io { file, source }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
