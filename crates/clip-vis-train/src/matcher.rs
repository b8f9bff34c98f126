//! The class-agnostic Hungarian matcher of CLIP-VIS (SPEC §5): per image, a cost of
//! `5·BCE + 2·(−P_object) + 5·dice` between every query and every target mask, on points shared
//! by both, solved with `lsap` (SciPy's algorithm) after one copy to the host.

use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::points::{point_sample, PointSource};
use crate::{log1p_exp_neg_abs, Result, TrainError};

/// Cost weights and point count of the matcher.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MatcherConfig {
    /// Weight of the mean point BCE (`MASK_WEIGHT`, 5).
    pub cost_mask: f64,
    /// Weight of `−softmax(object logits)[object]` (`OBJECT_WEIGHT`, 2).
    pub cost_object: f64,
    /// Weight of the dice cost (`DICE_WEIGHT`, 5).
    pub cost_dice: f64,
    /// Uniform points shared by predictions and targets (`TRAIN_NUM_POINTS`, 12544).
    pub points: usize,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            cost_mask: 5.0,
            cost_object: 2.0,
            cost_dice: 5.0,
            points: 12544,
        }
    }
}

/// One image's matched pairs: `queries[i]` is matched with target `targets[i]`, queries
/// ascending (SciPy's order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Matched query indices, ascending.
    pub queries: Vec<usize>,
    /// The target index of each.
    pub targets: Vec<usize>,
}

/// The cost matrix `[queries, targets]` of one image: `masks` `[Q, h, w]` logits,
/// `object_logits` `[Q, 2]`, `targets` `[N, H, W]` (0/1), `points` `[P, 2]`.
pub fn matching_cost<B: Backend>(
    config: &MatcherConfig,
    masks: Tensor<B, 3>,
    object_logits: Tensor<B, 2>,
    targets: Tensor<B, 3>,
    points: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [queries, h, w] = masks.dims();
    let [n, th, tw] = targets.dims();
    let [p, _] = points.dims();
    let coords = |count: usize| points.clone().reshape([1, p, 2]).expand([count, p, 2]);
    let x = point_sample(masks.reshape([queries, 1, h, w]), coords(queries)).reshape([queries, p]);
    let t = point_sample(targets.reshape([n, 1, th, tw]), coords(n)).reshape([n, p]);
    // BCE against 1 and against 0 for every point, then summed against t and 1 − t.
    let tail = log1p_exp_neg_abs(x.clone());
    let pos = relu(x.clone().neg()) + tail.clone();
    let neg = relu(x.clone()) + tail;
    let bce = (pos.matmul(t.clone().transpose())
        + neg.matmul(t.clone().neg().add_scalar(1.0).transpose()))
        / p as f64;
    let prob = sigmoid(x);
    let numerator = prob.clone().matmul(t.clone().transpose()) * 2.0;
    let denominator = prob.sum_dim(1) + t.sum_dim(1).transpose();
    let dice = ((numerator + 1.0) / (denominator + 1.0)).neg() + 1.0;
    let object = softmax(object_logits, 1).slice([0..queries, 0..1]).neg();
    bce * config.cost_mask + object * config.cost_object + dice * config.cost_dice
}

/// Matches one image's queries to its targets on `config.points` uniform points drawn from
/// `source`. No targets: an empty assignment, and no points are drawn.
pub fn match_image<B: Backend>(
    config: &MatcherConfig,
    image: usize,
    masks: Tensor<B, 3>,
    object_logits: Tensor<B, 2>,
    targets: Tensor<B, 3>,
    source: &mut dyn PointSource,
) -> Result<Assignment> {
    let [queries, _, _] = masks.dims();
    let [n, _, _] = targets.dims();
    if n == 0 || queries == 0 {
        return Ok(Assignment::default());
    }
    let device = masks.device();
    let points = Tensor::<B, 2>::from_data(
        TensorData::new(source.uniform(1, config.points), [config.points, 2]),
        &device,
    );
    let cost = matching_cost(config, masks, object_logits, targets, points);
    let cost: Vec<f64> = cost
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| TrainError::InvalidInput(format!("{e:?}")))?;
    if cost.iter().any(|v| v.is_nan()) {
        return Err(TrainError::NonFiniteCost { image });
    }
    // SciPy rejects infinite entries; clamp them to a huge finite cost instead, so a single
    // saturated pair cannot stop training (the pair is then never chosen over a finite one).
    let cost: Vec<f64> = cost.into_iter().map(|v| v.clamp(-1e30, 1e30)).collect();
    let (rows, cols) =
        lsap::solve(queries, n, &cost, false).map_err(|_| TrainError::NonFiniteCost { image })?;
    let mut pairs: Vec<(usize, usize)> = rows.into_iter().zip(cols).collect();
    pairs.sort_unstable();
    Ok(Assignment {
        queries: pairs.iter().map(|p| p.0).collect(),
        targets: pairs.iter().map(|p| p.1).collect(),
    })
}
