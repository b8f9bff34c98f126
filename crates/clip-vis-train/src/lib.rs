//! The training objective of CLIP-VIS (SPEC §5): class-agnostic Hungarian matching on sampled
//! points, and the object cross-entropy, mask BCE, dice and mask-IoU losses with deep
//! supervision.
//!
//! Everything is generic over `B: Backend`; with an autodiff backend the losses carry
//! gradients to the predictions. Randomness (the points) comes from a [`PointSource`], so tests
//! can inject the reference's points.

mod criterion;
mod matcher;
mod points;
mod step;

pub use criterion::{Criterion, CriterionConfig, LossTerms, OutputLosses, Targets};
pub use matcher::{match_image, matching_cost, Assignment, MatcherConfig};
pub use points::{point_sample, uncertain_points, PointSource, SeededPoints};
pub use step::{TrainableHead, TrainingModel};

/// `log(1 + exp(−|x|))`, the stable tail of the logistic losses (BCE with logits is
/// `max(x, 0) − x·t + log(1 + exp(−|x|))`).
pub(crate) fn log1p_exp_neg_abs<B: burn::tensor::backend::Backend, const D: usize>(
    x: burn::tensor::Tensor<B, D>,
) -> burn::tensor::Tensor<B, D> {
    x.abs().neg().exp().log1p()
}

/// Training failures, each naming what was wrong.
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
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
