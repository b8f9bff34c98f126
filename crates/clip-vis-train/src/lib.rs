//! Training CLIP-VIS (SPEC §5): the class-agnostic objective and the pipeline around it.
//!
//! - The objective: Hungarian matching on sampled points, and the object cross-entropy, mask
//!   BCE, dice and mask-IoU losses with deep supervision ([`Criterion`]), with the frozen CLIP
//!   outside the autodiff graph ([`TrainingModel`], [`TrainableHead`]).
//! - Data: LVIS v1 / COCO and YouTube-VIS datasets ([`data`]), large-scale jitter and the video
//!   resize ([`augment`]), repeat-factor sampling ([`sampler`]), decoding on worker threads
//!   ([`loader`]), synthetic shapes with exact ground truth ([`synthetic`]).
//! - The loop: AdamW with decay groups, global-norm clipping and the warmup multi-step schedule
//!   ([`optim`]), checkpoints and exact resume ([`Trainer`]), data-parallel training on several
//!   devices and machines ([`distributed`]), class-agnostic AP on held-out pictures
//!   ([`validation`]).
//!
//! Everything numeric is generic over `B: Backend` (`B: AutodiffBackend` to train).
//! Randomness is derived from the run's seed and the position it serves ([`rng`]), so runs are
//! reproducible and resumable bit for bit on the CPU.

pub mod augment;
mod criterion;
pub mod data;
pub mod distributed;
mod error;
pub mod init;
pub mod loader;
mod matcher;
pub mod optim;
mod points;
pub mod rng;
pub mod sampler;
mod step;
pub mod synthetic;
mod trainer;
pub mod validation;

pub use criterion::{Criterion, CriterionConfig, LossTerms, OutputLosses, Targets};
pub use error::{Result, TrainError};
pub use matcher::{match_image, matching_cost, Assignment, MatcherConfig};
pub use points::{point_sample, uncertain_points, PointSource, SeededPoints};
pub use step::{frozen_features, TrainableHead, TrainingModel};
pub use trainer::{
    clip_store, ClipWeights, DataSpec, DecoderInit, NoHooks, PointSourceFactory, StepReport,
    TrainConfig, TrainHooks, TrainSummary, Trainer,
};

/// `log(1 + exp(−|x|))`, the stable tail of the logistic losses (BCE with logits is
/// `max(x, 0) − x·t + log(1 + exp(−|x|))`).
pub(crate) fn log1p_exp_neg_abs<B: burn::tensor::backend::Backend, const D: usize>(
    x: burn::tensor::Tensor<B, D>,
) -> burn::tensor::Tensor<B, D> {
    x.abs().neg().exp().log1p()
}
