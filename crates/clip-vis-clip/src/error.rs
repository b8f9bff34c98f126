//! Errors of the CLIP towers: reading weights, matching them to an architecture, bad inputs.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running the CLIP towers.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The weights file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors / PyTorch checkpoint (truncated, corrupt, other format).
    #[error("{}: not a readable {format} checkpoint: {message}", file.display())]
    Format {
        /// The file.
        file: PathBuf,
        /// `safetensors` or `PyTorch`.
        format: &'static str,
        /// What the parser reported.
        message: String,
    },
    /// A tensor the architecture needs is not in the file.
    #[error("{}: missing tensor `{key}`", file.display())]
    MissingTensor {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
    },
    /// A tensor has another shape than the architecture expects.
    #[error("{}: tensor `{key}` has shape {found:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
        /// What the architecture expects.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },
    /// A tensor holds a dtype clip-vis cannot turn into `f32`.
    #[error("{}: tensor `{key}` has unsupported dtype {dtype}", file.display())]
    UnsupportedDtype {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// The file holds tensors the architecture does not use (strict loading).
    #[error("{}: {count} unexpected tensor(s), e.g. `{first}`", file.display())]
    UnexpectedTensors {
        /// The file.
        file: PathBuf,
        /// How many were left over.
        count: usize,
        /// The first, in sorted order.
        first: String,
    },
    /// The weights do not describe a CLIP model clip-vis knows.
    #[error("{}: cannot tell the CLIP architecture: {reason}", file.display())]
    UnknownArchitecture {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The caller asked for another architecture than the file holds.
    #[error("{}: holds `{found}` weights, but `{expected}` was requested", file.display())]
    ArchitectureMismatch {
        /// The file.
        file: PathBuf,
        /// The requested model name.
        expected: String,
        /// The model name the file describes.
        found: String,
    },
    /// A weight or input is NaN or infinite.
    #[error("{what} contains NaN or infinite values")]
    NonFinite {
        /// Which tensor or input.
        what: String,
    },
    /// An input tensor or image has an unusable shape.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ClipError>;
