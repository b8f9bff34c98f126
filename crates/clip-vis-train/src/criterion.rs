//! The losses of CLIP-VIS (SPEC §5), per decoder output with its own matching, and their
//! weighted sum over the last and every auxiliary output (deep supervision).

use burn::tensor::activation::{log_softmax, relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clip_vis_transformer_decoder::Prediction;

use crate::matcher::{match_image, Assignment, MatcherConfig};
use crate::points::{point_sample, point_sample_host, uncertain_points, PointSource};
use crate::{log1p_exp_neg_abs, Result, TrainError};

/// Loss weights and sampling of the criterion (the released code's values by default).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CriterionConfig {
    /// `loss_object_ce` weight (`OBJECT_WEIGHT`, 2).
    pub object_weight: f64,
    /// `loss_mask` weight (`MASK_WEIGHT`, 5).
    pub mask_weight: f64,
    /// `loss_dice` weight (`DICE_WEIGHT`, 5).
    pub dice_weight: f64,
    /// `loss_iou` weight (`MASKIOU_WEIGHT`, 2).
    pub iou_weight: f64,
    /// Cross-entropy weight of the no-object class: 0.4, hard-coded in the released code (its
    /// `NO_OBJECT_WEIGHT 0.1` is unused).
    pub no_object_weight: f64,
    /// Points per mask for the losses (`TRAIN_NUM_POINTS`, 12544).
    pub points: usize,
    /// Candidates per point for importance sampling (`OVERSAMPLE_RATIO`, 3).
    pub oversample: f64,
    /// Share of points chosen by uncertainty (`IMPORTANCE_SAMPLE_RATIO`, 0.75).
    pub importance: f64,
    /// The matcher.
    pub matcher: MatcherConfig,
}

impl Default for CriterionConfig {
    fn default() -> Self {
        Self {
            object_weight: 2.0,
            mask_weight: 5.0,
            dice_weight: 5.0,
            iou_weight: 2.0,
            no_object_weight: 0.4,
            points: 12544,
            oversample: 3.0,
            importance: 0.75,
            matcher: MatcherConfig::default(),
        }
    }
}

/// A batch's class-agnostic targets: per image, its instance masks `[N, H, W]` (0/1) at the
/// padded input size (4× the stride-4 prediction).
#[derive(Debug, Clone)]
pub struct Targets<B: Backend> {
    /// One `[N_b, H, W]` tensor per image (`N_b` may be 0).
    pub masks: Vec<Tensor<B, 3>>,
}

/// One decoder output's four losses, unweighted, and its matching.
#[derive(Debug, Clone)]
pub struct OutputLosses<B: Backend> {
    /// Weighted cross-entropy of object vs no-object over all queries.
    pub object_ce: Tensor<B, 1>,
    /// Point BCE of the matched masks, per mask mean, summed, over `num_masks`.
    pub mask: Tensor<B, 1>,
    /// Dice of the matched masks on the same points, summed, over `num_masks`.
    pub dice: Tensor<B, 1>,
    /// L1 between predicted and point IoU over matched queries whose IoU target is above 0.
    pub iou: Tensor<B, 1>,
    /// The matching, per image.
    pub assignments: Vec<Assignment>,
    /// The IoU targets of the matched pairs, in matching order.
    pub iou_targets: Vec<f32>,
}

/// Every output's losses and the weighted total to back-propagate.
#[derive(Debug, Clone)]
pub struct LossTerms<B: Backend> {
    /// The last output's losses first, then the auxiliary ones in decoder order.
    pub outputs: Vec<OutputLosses<B>>,
    /// `Σ_outputs (2·object + 5·mask + 5·dice + 2·iou)`.
    pub total: Tensor<B, 1>,
}

/// The CLIP-VIS criterion.
#[derive(Debug, Clone, Default)]
pub struct Criterion {
    /// Weights and sampling.
    pub config: CriterionConfig,
}

/// The values of `t` on the host as f32 (after `convert`, reading them cannot fail).
pub(crate) fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

impl Criterion {
    /// A criterion with `config`.
    pub fn new(config: CriterionConfig) -> Self {
        Self { config }
    }

    /// Total target masks of the batch, at least 1 (the normaliser of the mask losses).
    pub fn num_masks<B: Backend>(targets: &Targets<B>) -> f64 {
        targets
            .masks
            .iter()
            .map(|m| m.dims()[0])
            .sum::<usize>()
            .max(1) as f64
    }

    fn check<B: Backend>(prediction: &Prediction<B>, targets: &Targets<B>) -> Result<()> {
        let [batch, _, h, w] = prediction.masks.dims();
        if targets.masks.len() != batch {
            return Err(TrainError::InvalidInput(format!(
                "{} target sets for a batch of {batch} images",
                targets.masks.len()
            )));
        }
        for (image, masks) in targets.masks.iter().enumerate() {
            let [_, th, tw] = masks.dims();
            if (th, tw) != (4 * h, 4 * w) {
                return Err(TrainError::InvalidInput(format!(
                    "image {image}: target masks are {th}x{tw}, but the padded input is {}x{} (4x the {h}x{w} predicted masks)",
                    4 * h,
                    4 * w
                )));
            }
        }
        Ok(())
    }

    /// The four losses of one decoder output, with its own matching.
    pub fn output_losses<B: Backend>(
        &self,
        prediction: &Prediction<B>,
        targets: &Targets<B>,
        num_masks: f64,
        source: &mut dyn PointSource,
    ) -> Result<OutputLosses<B>> {
        Self::check(prediction, targets)?;
        let c = &self.config;
        let [batch, queries, h, w] = prediction.masks.dims();
        let device = prediction.masks.device();
        let assignments = (0..batch)
            .map(|b| {
                let masks =
                    prediction
                        .masks
                        .clone()
                        .detach()
                        .slice([b..b + 1, 0..queries, 0..h, 0..w]);
                let objects =
                    prediction
                        .object_logits
                        .clone()
                        .detach()
                        .slice([b..b + 1, 0..queries, 0..2]);
                match_image(
                    &c.matcher,
                    b,
                    masks.reshape([queries, h, w]),
                    objects.reshape([queries, 2]),
                    targets.masks[b].clone(),
                    source,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        // Object cross-entropy: 0 = object (matched), 1 = no object, class weights [1, w].
        let mut classes = vec![1i64; batch * queries];
        for (b, a) in assignments.iter().enumerate() {
            for &q in &a.queries {
                classes[b * queries + q] = 0;
            }
        }
        let weights: Vec<f32> = classes
            .iter()
            .map(|&t| {
                if t == 0 {
                    1.0
                } else {
                    c.no_object_weight as f32
                }
            })
            .collect();
        let weight_sum: f64 = weights.iter().map(|&v| f64::from(v)).sum();
        let target =
            Tensor::<B, 2, Int>::from_data(TensorData::new(classes, [batch * queries, 1]), &device);
        let weights =
            Tensor::<B, 1>::from_data(TensorData::new(weights, [batch * queries]), &device);
        let log_p = log_softmax(
            prediction
                .object_logits
                .clone()
                .reshape([batch * queries, 2]),
            1,
        );
        let picked = log_p.gather(1, target).reshape([batch * queries]);
        let object_ce = (picked * weights).sum().neg() / weight_sum;

        let flat: Vec<i64> = assignments
            .iter()
            .enumerate()
            .flat_map(|(b, a)| a.queries.iter().map(move |&q| (b * queries + q) as i64))
            .collect();
        let matched = flat.len();
        let zero = || Tensor::<B, 1>::zeros([1], &device);
        if matched == 0 {
            return Ok(OutputLosses {
                object_ce,
                mask: zero(),
                dice: zero(),
                iou: zero(),
                assignments,
                iou_targets: Vec::new(),
            });
        }
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [matched]), &device);
        let src = prediction
            .masks
            .clone()
            .reshape([batch * queries, h, w])
            .select(0, index.clone());
        let tgt = Tensor::cat(
            assignments
                .iter()
                .enumerate()
                .filter(|(_, a)| !a.targets.is_empty())
                .map(|(b, a)| {
                    let ids: Vec<i64> = a.targets.iter().map(|&t| t as i64).collect();
                    let count = ids.len();
                    targets.masks[b].clone().select(
                        0,
                        Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [count]), &device),
                    )
                })
                .collect(),
            0,
        );
        let [_, th, tw] = tgt.dims();
        let src = src.reshape([matched, 1, h, w]);
        let points = uncertain_points(
            src.clone().detach(),
            c.points,
            c.oversample,
            c.importance,
            source,
        );
        let logits = point_sample(src, points.clone()).reshape([matched, c.points]);
        let labels = if clip_vis_clip::nn::runs_on_host::<B>(&device) {
            // The labels need no gradient: sample the host values directly.
            let coords = to_vec(points);
            let values = point_sample_host(&to_vec(tgt), matched, th, tw, &coords, c.points);
            Tensor::<B, 2>::from_data(TensorData::new(values, [matched, c.points]), &device)
        } else {
            point_sample(tgt.reshape([matched, 1, th, tw]), points)
                .reshape([matched, c.points])
                .detach()
        };

        let bce = relu(logits.clone()) - logits.clone() * labels.clone()
            + log1p_exp_neg_abs(logits.clone());
        let mask = bce.mean_dim(1).sum() / num_masks;
        let prob = sigmoid(logits.clone());
        let numerator = (prob.clone() * labels.clone()).sum_dim(1) * 2.0;
        let denominator = prob.sum_dim(1) + labels.clone().sum_dim(1);
        let dice = ((numerator + 1.0) / (denominator + 1.0))
            .neg()
            .add_scalar(1.0)
            .sum()
            / num_masks;

        // IoU targets on the same points, without gradient.
        let hits = to_vec(logits.detach());
        let truth = to_vec(labels);
        let iou_targets: Vec<f32> = hits
            .chunks_exact(c.points)
            .zip(truth.chunks_exact(c.points))
            .map(|(l, t)| {
                let (mut inter, mut pred, mut gt) = (0.0f32, 0.0f32, 0.0f32);
                for (&l, &t) in l.iter().zip(t) {
                    let pb = if l > 0.0 { 1.0 } else { 0.0 };
                    inter += pb * t;
                    pred += pb;
                    gt += t;
                }
                inter / (pred + gt - inter)
            })
            .collect();
        let keep: Vec<i64> = (0..matched)
            .filter(|&i| iou_targets[i] > 0.0)
            .map(|i| i as i64)
            .collect();
        let iou = if keep.is_empty() {
            zero()
        } else {
            let kept = keep.len();
            let keep_index =
                Tensor::<B, 1, Int>::from_data(TensorData::new(keep.clone(), [kept]), &device);
            let predicted = prediction
                .ious
                .clone()
                .reshape([batch * queries])
                .select(0, index)
                .select(0, keep_index);
            let wanted: Vec<f32> = keep.iter().map(|&i| iou_targets[i as usize]).collect();
            let wanted = Tensor::<B, 1>::from_data(TensorData::new(wanted, [kept]), &device);
            (predicted - wanted).abs().mean().reshape([1])
        };
        Ok(OutputLosses {
            object_ce: object_ce.reshape([1]),
            mask: mask.reshape([1]),
            dice: dice.reshape([1]),
            iou,
            assignments,
            iou_targets,
        })
    }

    /// All losses of a decoder pass: the last prediction and every auxiliary one, each matched
    /// on its own, and their weighted sum.
    pub fn forward<B: Backend>(
        &self,
        last: &Prediction<B>,
        aux: &[Prediction<B>],
        targets: &Targets<B>,
        source: &mut dyn PointSource,
    ) -> Result<LossTerms<B>> {
        self.forward_normalized(last, aux, targets, Self::num_masks(targets), source)
    }

    /// [`Criterion::forward`] with the mask losses divided by `num_masks` instead of this
    /// batch's own count: data-parallel training divides by the count over all ranks divided by
    /// the number of ranks (SPEC §5, `num_masks` all-reduced), at least 1.
    pub fn forward_normalized<B: Backend>(
        &self,
        last: &Prediction<B>,
        aux: &[Prediction<B>],
        targets: &Targets<B>,
        num_masks: f64,
        source: &mut dyn PointSource,
    ) -> Result<LossTerms<B>> {
        let num_masks = num_masks.max(1.0);
        let c = &self.config;
        let mut outputs = Vec::with_capacity(aux.len() + 1);
        for prediction in std::iter::once(last).chain(aux) {
            outputs.push(self.output_losses(prediction, targets, num_masks, source)?);
        }
        let total = outputs
            .iter()
            .map(|o| {
                o.object_ce.clone() * c.object_weight
                    + o.mask.clone() * c.mask_weight
                    + o.dice.clone() * c.dice_weight
                    + o.iou.clone() * c.iou_weight
            })
            .reduce(|a, b| a + b)
            .expect("at least the last output");
        Ok(LossTerms { outputs, total })
    }
}
