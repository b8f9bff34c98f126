//! The optimiser of CLIP-VIS (SPEC §5): AdamW (β = 0.9, 0.999, ε = 1e-8, lr 1e-4, weight decay
//! 0.05) with no decay on normalisation layers and embeddings, the full-model gradient norm
//! clipped at 0.01, and detectron2's warmup + multi-step schedule.
//!
//! Burn's AdamW computes torch's update (decoupled decay on the old value, bias-corrected
//! moments, ε outside the root) but has one weight decay for all parameters, and Burn's norm
//! clipping is per tensor; so the decay groups are two optimisers over disjoint parameter sets,
//! and the clipping is done here over all gradients at once, as
//! `torch.nn.utils.clip_grad_norm_` (what detectron2's `CLIP_TYPE "full_model"` calls) does.

use std::collections::HashSet;
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

use crate::step::TrainableHead;
use crate::{Result, TrainError};

/// AdamW hyper-parameters and gradient clipping.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerConfig {
    /// Base learning rate (`BASE_LR`, 1e-4).
    pub lr: f64,
    /// Weight decay of weights and biases (`WEIGHT_DECAY`, 0.05).
    pub weight_decay: f64,
    /// Weight decay of GroupNorm / LayerNorm parameters (`WEIGHT_DECAY_NORM`, 0).
    pub weight_decay_norm: f64,
    /// Weight decay of embeddings: the decoder's `query_feat`, `query_embed`, `level_embed`
    /// (`WEIGHT_DECAY_EMBED`, 0).
    pub weight_decay_embed: f64,
    /// Adam β₁ (0.9).
    pub beta1: f64,
    /// Adam β₂ (0.999).
    pub beta2: f64,
    /// Adam ε (1e-8, torch's default).
    pub epsilon: f64,
    /// Largest L2 norm of all gradients together (`CLIP_VALUE`, 0.01); `None` for no clipping.
    pub clip_norm: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            weight_decay: 0.05,
            weight_decay_norm: 0.0,
            weight_decay_embed: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            clip_norm: Some(0.01),
        }
    }
}

/// detectron2's `WarmupMultiStepLR` as `build_lr_scheduler` builds it (fvcore's
/// `MultiStepParamScheduler` inside a `WarmupParamScheduler`, evaluated at `iteration /
/// max_iter`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScheduleConfig {
    /// Iterations of the run (`MAX_ITER`, 368750).
    pub max_iter: usize,
    /// Iterations at which the rate is multiplied by `gamma` (`STEPS`, 327778 and 355092).
    pub steps: Vec<usize>,
    /// Decay factor (0.1).
    pub gamma: f64,
    /// Warmup iterations (`WARMUP_ITERS`, 10).
    pub warmup_iters: usize,
    /// Rate multiplier at iteration 0 (`WARMUP_FACTOR`, 1.0: no warmup in effect).
    pub warmup_factor: f64,
    /// `true`: linear warmup; `false`: constant (`WARMUP_METHOD`).
    pub warmup_linear: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            max_iter: 368_750,
            steps: vec![327_778, 355_092],
            gamma: 0.1,
            warmup_iters: 10,
            warmup_factor: 1.0,
            warmup_linear: true,
        }
    }
}

impl ScheduleConfig {
    /// The multi-step part at `iteration`: `gamma^(milestones ≤ iteration)`.
    fn step_value(&self, iteration: f64) -> f64 {
        // fvcore: `int((where + 1e-6) * num_updates)` then `bisect_right(milestones, ·)`.
        let max = self.max_iter.max(1) as f64;
        let epoch = ((iteration / max + 1e-6) * max).floor() as usize;
        let passed = self.steps.iter().filter(|&&s| s <= epoch).count();
        self.gamma.powi(passed as i32)
    }

    /// The learning-rate multiplier at `iteration` (0-based: the rate of the update that
    /// iteration makes).
    pub fn multiplier(&self, iteration: usize) -> f64 {
        let warmup = self.warmup_iters.min(self.max_iter);
        if iteration < warmup {
            let start = self.warmup_factor * self.step_value(0.0);
            if !self.warmup_linear {
                return start;
            }
            let end = self.step_value(warmup as f64);
            let alpha = iteration as f64 / warmup as f64;
            return end * alpha + start * (1.0 - alpha);
        }
        self.step_value(iteration as f64)
    }

    /// Checks the values can run.
    pub fn validate(&self) -> Result<()> {
        if self.max_iter == 0 {
            return Err(TrainError::Config("max_iter must be at least 1".into()));
        }
        if self.steps.windows(2).any(|w| w[0] > w[1]) {
            return Err(TrainError::Config(format!(
                "the learning-rate steps {:?} must be increasing",
                self.steps
            )));
        }
        Ok(())
    }
}

/// Prepares a module's parameters for training that can be saved and resumed exactly:
///
/// - every parameter gets the id of its position in visiting order, so that optimiser state
///   saved by one process finds its parameters in another (Burn's ids are random per
///   construction) and every data-parallel peer names each parameter the same;
/// - every parameter is copied into a contiguous row-major buffer. Loaded linear weights are
///   transposed views of the checkpoint's `[out, in]` tensors, while updated ones are plain
///   buffers, and a matrix product sums in a different order for the two layouts: without the
///   copy a resumed run (views) would drift from an uninterrupted one (buffers) in the last
///   bits.
pub fn stable_param_ids<B: Backend, M: Module<B>>(module: M) -> M {
    struct Renumber(u64);
    impl<B: Backend> ModuleMapper<B> for Renumber {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            let device = tensor.device();
            let require_grad = tensor.is_require_grad();
            let contiguous = Tensor::<B, D>::from_data(tensor.into_data(), &device)
                .set_require_grad(require_grad);
            self.0 += 1;
            // An offset keeps these clear of small ids other code might pick.
            Param::from_mapped_value(ParamId::from(0x5eed_0000 + self.0), contiguous, mapper)
        }
    }
    module.map(&mut Renumber(0))
}

/// Which parameters get which weight decay (detectron2's `get_default_optimizer_params`):
/// every parameter owned by a `GroupNorm` or `LayerNorm` is a norm parameter; the decoder's
/// three `nn.Embedding`s (`query_feat`, `query_embed`, `level_embed`) are embeddings. The pixel
/// decoder's `level_embed` is an `nn.Parameter`, not an embedding, and keeps the decay.
#[derive(Debug, Default, Clone)]
struct DecayGroups {
    stack: Vec<(String, String)>,
    norm: Vec<ParamId>,
    embed: Vec<ParamId>,
    other: Vec<ParamId>,
}

impl<B: Backend> ModuleVisitor<B> for DecayGroups {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let (field, owner) = self
            .stack
            .last()
            .map(|(f, o)| (f.as_str(), o.as_str()))
            .unwrap_or_default();
        let owner = owner.strip_prefix("Struct:").unwrap_or(owner);
        if matches!(owner, "GroupNorm" | "LayerNorm") {
            self.norm.push(param.id);
        } else if owner == "MultiScaleMaskedTransformerDecoder"
            && matches!(field, "query_feat" | "query_embed" | "level_embed")
        {
            self.embed.push(param.id);
        } else {
            self.other.push(param.id);
        }
    }
}

/// Moves the gradients of `ids` out of `grads` into a new set.
fn split_gradients<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    ids: &HashSet<ParamId>,
) -> GradientsParams {
    struct Split<'a> {
        from: &'a mut GradientsParams,
        to: GradientsParams,
        ids: &'a HashSet<ParamId>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.ids.contains(&param.id) {
                if let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) {
                    self.to.register::<B::InnerBackend, D>(param.id, g);
                }
            }
        }
    }
    let mut split = Split {
        from: grads,
        to: GradientsParams::new(),
        ids,
    };
    module.visit(&mut split);
    split.to
}

/// The L2 norm of all gradients of `module` together, and scales them by
/// `max_norm / (norm + 1e-6)` when that is below 1 (`torch.nn.utils.clip_grad_norm_`).
/// Returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: Option<f64>,
) -> f64 {
    struct SquaredSum<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        sum: Option<Tensor<B::InnerBackend, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredSum<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let s = g.square().sum();
                self.sum = Some(match self.sum.take() {
                    Some(total) => total + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
                self.grads
                    .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut squared = SquaredSum::<B> {
        grads: &*grads,
        sum: None,
    };
    module.visit(&mut squared);
    let norm = squared
        .sum
        .map(|s| s.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0);
    if let Some(max_norm) = max_norm {
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            module.visit(&mut Scale { grads, factor });
        }
    }
    norm
}

type Adam<B> = OptimizerAdaptor<AdamW, TrainableHead<B>, B>;

/// AdamW over the trainable head, one optimiser per weight-decay group.
pub struct HeadOptimizer<B: AutodiffBackend> {
    config: OptimizerConfig,
    groups: Vec<(HashSet<ParamId>, Adam<B>)>,
}

impl<B: AutodiffBackend> std::fmt::Debug for HeadOptimizer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadOptimizer")
            .field("config", &self.config)
            .field(
                "groups",
                &self.groups.iter().map(|g| g.0.len()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<B: AutodiffBackend> HeadOptimizer<B> {
    /// The optimiser of `head` (whose parameter ids should be [`stable_param_ids`] so its
    /// state can be saved and resumed).
    pub fn new(config: OptimizerConfig, head: &TrainableHead<B>) -> Self {
        let mut groups = DecayGroups::default();
        head.visit(&mut groups);
        let adam = |decay: f64| {
            AdamWConfig::new()
                .with_beta_1(config.beta1 as f32)
                .with_beta_2(config.beta2 as f32)
                .with_epsilon(config.epsilon as f32)
                .with_weight_decay(decay as f32)
                .init::<B, TrainableHead<B>>()
        };
        let groups = [
            (groups.other, config.weight_decay),
            (groups.norm, config.weight_decay_norm),
            (groups.embed, config.weight_decay_embed),
        ]
        .into_iter()
        .filter(|(ids, _)| !ids.is_empty())
        .map(|(ids, decay)| (ids.into_iter().collect(), adam(decay)))
        .collect();
        Self { config, groups }
    }

    /// Parameters per decay group (weights, norms, embeddings; empty groups left out).
    pub fn group_sizes(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g.0.len()).collect()
    }

    /// One update at `lr` with `grads` (clipped here by the global norm). Returns the updated
    /// head and the gradient norm before clipping.
    pub fn step(
        &mut self,
        lr: f64,
        mut head: TrainableHead<B>,
        mut grads: GradientsParams,
    ) -> (TrainableHead<B>, f64) {
        let norm = clip_global_norm(&head, &mut grads, self.config.clip_norm);
        for (ids, optimizer) in &mut self.groups {
            let group = split_gradients(&head, &mut grads, ids);
            head = optimizer.step(lr, head, group);
        }
        (head, norm)
    }

    /// Writes the optimiser state (moments and step counts) to `dir/optimizer_{g}.mpk`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        for (g, (_, optimizer)) in self.groups.iter().enumerate() {
            let path = dir.join(format!("optimizer_{g}"));
            recorder
                .record(optimizer.to_record(), path.clone())
                .map_err(|e| TrainError::Checkpoint {
                    file: path,
                    message: format!("cannot write the optimiser state: {e}"),
                })?;
        }
        Ok(())
    }

    /// Reads the state [`HeadOptimizer::save`] wrote.
    pub fn load(mut self, dir: &Path, device: &B::Device) -> Result<Self> {
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        for (g, (_, optimizer)) in self.groups.iter_mut().enumerate() {
            let path = dir.join(format!("optimizer_{g}"));
            let record =
                recorder
                    .load(path.clone(), device)
                    .map_err(|e| TrainError::Checkpoint {
                        file: path.with_extension("mpk"),
                        message: format!("cannot read the optimiser state: {e}"),
                    })?;
            *optimizer = optimizer.clone().load_record(record);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_detectron2() {
        let schedule = ScheduleConfig {
            max_iter: 100,
            steps: vec![50, 80],
            gamma: 0.1,
            warmup_iters: 10,
            warmup_factor: 0.001,
            warmup_linear: true,
        };
        assert!((schedule.multiplier(0) - 0.001).abs() < 1e-12);
        assert!((schedule.multiplier(5) - (0.001 * 0.5 + 0.5)).abs() < 1e-12);
        assert_eq!(schedule.multiplier(10), 1.0);
        assert_eq!(schedule.multiplier(49), 1.0);
        assert!((schedule.multiplier(50) - 0.1).abs() < 1e-12);
        assert!((schedule.multiplier(80) - 0.01).abs() < 1e-12);
        // The released setting: warmup factor 1, i.e. no warmup.
        assert_eq!(ScheduleConfig::default().multiplier(0), 1.0);
        assert!(ScheduleConfig {
            steps: vec![5, 3],
            ..schedule
        }
        .validate()
        .is_err());
    }
}
