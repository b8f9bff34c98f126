//! The class-agnostic Hungarian matcher of CLIP-VIS (SPEC §5): per image, a cost of
//! `5·BCE + 2·(−P_object) + 5·dice` between every query and every target mask, on points shared
//! by both, solved with `lsap` (SciPy's algorithm) after one copy to the host.

use burn::tensor::activation::{relu, sigmoid, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::points::{point_sample, point_sample_host, PointSource};
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

/// `a · bᵀ` for row-major `a` `[rows, k]` and `b` `[cols, k]`: `[rows, cols]`.
fn product_transposed(a: &[f32], b: &[f32], rows: usize, cols: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    // SAFETY: `a` holds rows·k and `b` cols·k values, `out` rows·cols; the strides address
    // exactly those row-major layouts (`b` read transposed).
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            cols,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            out.as_mut_ptr(),
            cols as isize,
            1,
        );
    }
    out
}

/// [`matching_cost`] on host buffers: predictions sampled as `x` `[Q, P]`, targets as `t`
/// `[N, P]`, object logits `[Q, 2]`; returns `[Q, N]`. The BCE term uses
/// `Σ_p pos·t + neg·(1 − t) = Σ_p neg − Σ_p x·t` (`pos − neg = −x`), two matrix products in all.
fn matching_cost_host(
    config: &MatcherConfig,
    x: &[f32],
    t: &[f32],
    objects: &[f32],
    queries: usize,
    n: usize,
    p: usize,
) -> Vec<f64> {
    let neg_sum: Vec<f32> = x
        .chunks_exact(p)
        .map(|row| {
            row.iter()
                .map(|&v| v.max(0.0) + (-v.abs()).exp().ln_1p())
                .sum()
        })
        .collect();
    let prob: Vec<f32> = x.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
    let prob_sum: Vec<f32> = prob.chunks_exact(p).map(|r| r.iter().sum()).collect();
    let t_sum: Vec<f32> = t.chunks_exact(p).map(|r| r.iter().sum()).collect();
    let xt = product_transposed(x, t, queries, n, p);
    let pt = product_transposed(&prob, t, queries, n, p);
    let mut cost = Vec::with_capacity(queries * n);
    for q in 0..queries {
        // softmax(logits)[object] = 1 / (1 + exp(l_no − l_object)).
        let object = -1.0 / (1.0 + (objects[2 * q + 1] - objects[2 * q]).exp());
        for j in 0..n {
            let bce = (neg_sum[q] - xt[q * n + j]) / p as f32;
            let dice = 1.0 - (2.0 * pt[q * n + j] + 1.0) / (prob_sum[q] + t_sum[j] + 1.0);
            cost.push(
                f64::from(bce) * config.cost_mask
                    + f64::from(object) * config.cost_object
                    + f64::from(dice) * config.cost_dice,
            );
        }
    }
    cost
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
    let uniform = source.uniform(1, config.points);
    let cost: Vec<f64> = if clip_vis_clip::nn::runs_on_host::<B>(&device) {
        // Host memory already: sample and reduce the values directly (no gradient flows here).
        let host = |t: Tensor<B, 3>| {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32")
        };
        let [_, h, w] = masks.dims();
        let [_, th, tw] = targets.dims();
        let p = config.points;
        let x = point_sample_host(&host(masks), queries, h, w, &uniform, p);
        let t = point_sample_host(&host(targets), n, th, tw, &uniform, p);
        let objects = object_logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32");
        matching_cost_host(config, &x, &t, &objects, queries, n, p)
    } else {
        let points =
            Tensor::<B, 2>::from_data(TensorData::new(uniform, [config.points, 2]), &device);
        matching_cost(config, masks, object_logits, targets, points)
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| TrainError::InvalidInput(format!("{e:?}")))?
    };
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
