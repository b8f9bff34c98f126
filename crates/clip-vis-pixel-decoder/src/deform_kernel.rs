//! Direct CPU kernels of the deformable sampling (the `ms_deform_attn` CUDA op of Deformable
//! DETR, re-derived): the forward pass, its backward pass, and the two wired into Burn's
//! autodiff as one operation for the CPU backends.
//!
//! The sampling takes, per batch item, the values `[tokens, heads, head_dim]` of all levels
//! (flattened level after level), and per (query, head, level, point) a location `(x, y)` in
//! `[0, 1]` and an attention weight; it returns per (query, head) the weighted sum of the
//! bilinear samples (`grid_sample` semantics: `x·W − 0.5`, corners outside the map count as
//! 0). Under autodiff the generic gather core (`sampling::sample_bilinear`) builds four index
//! tensors per level and back-propagates by scatter-add, an order of magnitude slower than
//! these loops; the gather core stays the reference the kernels are tested against.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// Sizes of one sampling call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub queries: usize,
    pub heads: usize,
    pub levels: usize,
    pub points: usize,
    pub head_dim: usize,
    /// `(H_l, W_l)` per level.
    pub shapes: Vec<(usize, usize)>,
}

impl Geometry {
    fn d(&self) -> usize {
        self.heads * self.head_dim
    }

    fn tokens(&self) -> usize {
        self.shapes.iter().map(|(h, w)| h * w).sum()
    }

    fn starts(&self) -> Vec<usize> {
        self.shapes
            .iter()
            .scan(0, |start, &(h, w)| {
                let this = *start;
                *start += h * w;
                Some(this)
            })
            .collect()
    }

    /// Samples per (batch, query) row.
    fn samples(&self) -> usize {
        self.heads * self.levels * self.points
    }
}

/// One bilinear corner of a sample: the token it reads, its weight, and the derivatives of
/// that weight with respect to the fractional position `(fx, fy)`.
struct Corner {
    token: usize,
    weight: f32,
    d_fx: f32,
    d_fy: f32,
}

/// The (up to four) corners of location `(lx, ly)` on level `(h, w)` starting at `start`.
fn corners(lx: f32, ly: f32, h: usize, w: usize, start: usize, out: &mut Vec<Corner>) {
    out.clear();
    let x = lx * w as f32 - 0.5;
    let y = ly * h as f32 - 0.5;
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as isize, y0 as isize);
    for (dy, wy, dwy) in [(0, 1.0 - fy, -1.0f32), (1, fy, 1.0)] {
        for (dx, wx, dwx) in [(0, 1.0 - fx, -1.0f32), (1, fx, 1.0)] {
            let (cx, cy) = (x0 + dx, y0 + dy);
            if cx < 0 || cy < 0 || cx >= w as isize || cy >= h as isize {
                continue;
            }
            out.push(Corner {
                token: start + cy as usize * w + cx as usize,
                weight: wy * wx,
                d_fx: wy * dwx,
                d_fy: wx * dwy,
            });
        }
    }
}

/// Forward: `value` `[batch, tokens, heads·head_dim]`, `locations` `[batch, queries, heads,
/// levels, points, 2]`, `weights` `[batch, queries, heads, levels·points]` (row-major) →
/// `[batch, queries, heads·head_dim]`. Parallel over (batch, query).
pub(crate) fn forward(value: &[f32], locations: &[f32], weights: &[f32], g: &Geometry) -> Vec<f32> {
    let (d, tokens, samples, starts) = (g.d(), g.tokens(), g.samples(), g.starts());
    let mut output = vec![0f32; g.batch * g.queries * d];
    output.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
        forward_row(
            out,
            &value[(row / g.queries) * tokens * d..][..tokens * d],
            &locations[row * samples * 2..][..samples * 2],
            &weights[row * samples..][..samples],
            g,
            &starts,
        );
    });
    output
}

clip_vis_clip::host_multiversion! {
    /// One (batch, query) row of [`forward`]: the corners inline (same arithmetic as
    /// [`corners`]), each one's contribution a vectorised multiply-add over the head's values.
    /// With CLIP-VIS's 32-wide heads the head's sum lives in registers (a fixed-size array)
    /// until its last corner; other widths accumulate in the output row. Both add the same
    /// terms in the same order.
    fn forward_row(
        out: &mut [f32],
        value: &[f32],
        locations: &[f32],
        weights: &[f32],
        g: &Geometry,
        starts: &[usize],
    ) {
        for head in 0..g.heads {
            let out = &mut out[head * g.head_dim..][..g.head_dim];
            if let Ok(out) = <&mut [f32; 32]>::try_from(&mut *out) {
                let mut acc = [0f32; 32];
                accumulate_head(&mut acc, value, locations, weights, g, starts, head);
                *out = acc;
            } else {
                accumulate_head(out, value, locations, weights, g, starts, head);
            }
        }
    }
}

/// Adds head `head`'s weighted bilinear samples of every level and point into `acc`
/// (`[head_dim]`): `AsMut<[f32]>` so that a fixed-size array keeps the sum in registers.
#[inline(always)]
fn accumulate_head<A: AsMut<[f32]> + ?Sized>(
    acc: &mut A,
    value: &[f32],
    locations: &[f32],
    weights: &[f32],
    g: &Geometry,
    starts: &[usize],
    head: usize,
) {
    let acc = acc.as_mut();
    let d = g.d();
    for (level, &(h, w)) in g.shapes.iter().enumerate() {
        for point in 0..g.points {
            let sample = (head * g.levels + level) * g.points + point;
            let weight = weights[sample];
            let x = locations[sample * 2] * w as f32 - 0.5;
            let y = locations[sample * 2 + 1] * h as f32 - 0.5;
            let (x0, y0) = (x.floor(), y.floor());
            let (fx, fy) = (x - x0, y - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                let cy = y0 + dy;
                if cy < 0 || cy >= h as isize {
                    continue;
                }
                for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                    let cx = x0 + dx;
                    if cx < 0 || cx >= w as isize {
                        continue;
                    }
                    let token = starts[level] + cy as usize * w + cx as usize;
                    let scale = weight * (wy * wx);
                    let v = &value[token * d + head * g.head_dim..][..g.head_dim];
                    for (o, v) in acc.iter_mut().zip(v) {
                        *o += scale * v;
                    }
                }
            }
        }
    }
}

/// The gradients of [`forward`] with respect to its three inputs, given the output gradient
/// `grad` `[batch, queries, heads·head_dim]`: `(value, locations, weights)` in the inputs'
/// layouts. The value gradient is accumulated per (batch, head), whose slices of the value
/// rows are disjoint, so the parallel loop needs no atomics and sums in a fixed order.
pub(crate) fn backward(
    value: &[f32],
    locations: &[f32],
    weights: &[f32],
    grad: &[f32],
    g: &Geometry,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (d, tokens, samples, starts) = (g.d(), g.tokens(), g.samples(), g.starts());
    // Locations and weights: independent per (batch, query) row.
    let mut grad_locations = vec![0f32; g.batch * g.queries * samples * 2];
    let mut grad_weights = vec![0f32; g.batch * g.queries * samples];
    grad_locations
        .par_chunks_mut(samples * 2)
        .zip(grad_weights.par_chunks_mut(samples))
        .enumerate()
        .for_each(|(row, (grad_loc, grad_weight))| {
            let value = &value[(row / g.queries) * tokens * d..][..tokens * d];
            let locations = &locations[row * samples * 2..][..samples * 2];
            let weights = &weights[row * samples..][..samples];
            let grad = &grad[row * d..][..d];
            let mut corner_list = Vec::with_capacity(4);
            for head in 0..g.heads {
                let grad = &grad[head * g.head_dim..][..g.head_dim];
                for (level, &(h, w)) in g.shapes.iter().enumerate() {
                    for point in 0..g.points {
                        let sample = (head * g.levels + level) * g.points + point;
                        corners(
                            locations[sample * 2],
                            locations[sample * 2 + 1],
                            h,
                            w,
                            starts[level],
                            &mut corner_list,
                        );
                        let (mut d_weight, mut d_fx, mut d_fy) = (0f32, 0f32, 0f32);
                        for corner in &corner_list {
                            let v = &value[corner.token * d + head * g.head_dim..][..g.head_dim];
                            let dot: f32 = v.iter().zip(grad).map(|(a, b)| a * b).sum();
                            d_weight += corner.weight * dot;
                            d_fx += corner.d_fx * dot;
                            d_fy += corner.d_fy * dot;
                        }
                        grad_weight[sample] = d_weight;
                        // x = lx·W − 0.5, so d/dlx = W · d/dfx (the floor is constant).
                        let weight = weights[sample];
                        grad_loc[sample * 2] = weight * d_fx * w as f32;
                        grad_loc[sample * 2 + 1] = weight * d_fy * h as f32;
                    }
                }
            }
        });
    // Values: one buffer `[tokens, head_dim]` per (batch, head), interleaved at the end.
    let per_head: Vec<Vec<f32>> = (0..g.batch * g.heads)
        .into_par_iter()
        .map(|bh| {
            let (b, head) = (bh / g.heads, bh % g.heads);
            let mut acc = vec![0f32; tokens * g.head_dim];
            let mut corner_list = Vec::with_capacity(4);
            for q in 0..g.queries {
                let row = b * g.queries + q;
                let locations = &locations[row * samples * 2..][..samples * 2];
                let weights = &weights[row * samples..][..samples];
                let grad = &grad[row * d + head * g.head_dim..][..g.head_dim];
                for (level, &(h, w)) in g.shapes.iter().enumerate() {
                    for point in 0..g.points {
                        let sample = (head * g.levels + level) * g.points + point;
                        corners(
                            locations[sample * 2],
                            locations[sample * 2 + 1],
                            h,
                            w,
                            starts[level],
                            &mut corner_list,
                        );
                        for corner in &corner_list {
                            let scale = weights[sample] * corner.weight;
                            let a = &mut acc[corner.token * g.head_dim..][..g.head_dim];
                            for (a, gr) in a.iter_mut().zip(grad) {
                                *a += scale * gr;
                            }
                        }
                    }
                }
            }
            acc
        })
        .collect();
    let mut grad_value = vec![0f32; g.batch * tokens * d];
    for (bh, acc) in per_head.iter().enumerate() {
        let (b, head) = (bh / g.heads, bh % g.heads);
        for t in 0..tokens {
            grad_value[(b * tokens + t) * d + head * g.head_dim..][..g.head_dim]
                .copy_from_slice(&acc[t * g.head_dim..][..g.head_dim]);
        }
    }
    (grad_value, grad_locations, grad_weights)
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("float tensor")
}

/// The sampling on any backend's tensors through the host kernel (no gradient).
pub(crate) fn sample<B: Backend>(
    value: Tensor<B, 3>,
    locations: Tensor<B, 6>,
    weights: Tensor<B, 4>,
    g: &Geometry,
) -> Tensor<B, 3> {
    let device = value.device();
    let out = forward(&host(value), &host(locations), &host(weights), g);
    Tensor::from_data(TensorData::new(out, [g.batch, g.queries, g.d()]), &device)
}

/// The sampling as one autodiff operation with the host kernels for forward and backward, for
/// the autodiff backends over the CPU backends (`Autodiff<Flex>`, `Autodiff<NdArray>`).
/// Returns the inputs unchanged (`Err`) for any other backend.
#[allow(clippy::type_complexity)]
pub(crate) fn sample_autodiff<B: Backend>(
    value: Tensor<B, 3>,
    locations: Tensor<B, 6>,
    weights: Tensor<B, 4>,
    g: &Geometry,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 6>, Tensor<B, 4>)> {
    // Burn has no specialisation: recognise the concrete backends by type.
    macro_rules! try_backend {
        ($inner:ty) => {
            if let Some(out) = autodiff::dispatch::<B, $inner>(&value, &locations, &weights, g) {
                return Ok(out);
            }
        };
    }
    #[cfg(feature = "flex")]
    try_backend!(burn::backend::Flex);
    #[cfg(feature = "ndarray")]
    try_backend!(burn::backend::NdArray);
    let _ = g;
    Err((value, locations, weights))
}

mod autodiff {
    use super::{backward, forward, host, Geometry};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::Autodiff;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorData, TensorPrimitive};
    use std::any::Any;

    /// The saved inputs of one sampling call (host copies, as the kernels read them).
    #[derive(Debug, Clone)]
    struct Saved {
        value: Vec<f32>,
        locations: Vec<f32>,
        weights: Vec<f32>,
        geometry: Geometry,
    }

    #[derive(Debug)]
    struct DeformSampling;

    fn to_primitive<B: Backend>(
        values: Vec<f32>,
        shape: Vec<usize>,
        device: &B::Device,
    ) -> B::FloatTensorPrimitive {
        B::float_from_data(TensorData::new(values, shape), device)
    }

    impl<B: Backend> Backward<B, 3> for DeformSampling {
        type State = Saved;

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_value, node_locations, node_weights] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let grad = Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(grad));
            let device = grad.device();
            let saved = ops.state;
            let g = &saved.geometry;
            let (grad_value, grad_locations, grad_weights) = backward(
                &saved.value,
                &saved.locations,
                &saved.weights,
                &host(grad),
                g,
            );
            let samples = g.heads * g.levels * g.points;
            let tokens: usize = g.shapes.iter().map(|(h, w)| h * w).sum();
            let d = g.heads * g.head_dim;
            if let Some(node) = node_value {
                grads.register::<B>(
                    node.id,
                    to_primitive::<B>(grad_value, vec![g.batch, tokens, d], &device),
                );
            }
            if let Some(node) = node_locations {
                let shape = vec![g.batch, g.queries, g.heads, g.levels, g.points, 2];
                grads.register::<B>(node.id, to_primitive::<B>(grad_locations, shape, &device));
            }
            if let Some(node) = node_weights {
                let shape = vec![g.batch, g.queries, g.heads, samples / g.heads];
                grads.register::<B>(node.id, to_primitive::<B>(grad_weights, shape, &device));
            }
        }
    }

    /// When `Outer` is `Autodiff<Inner>`: the sampling as one tracked operation.
    pub(super) fn dispatch<Outer: Backend, Inner: Backend>(
        value: &Tensor<Outer, 3>,
        locations: &Tensor<Outer, 6>,
        weights: &Tensor<Outer, 4>,
        g: &Geometry,
    ) -> Option<Tensor<Outer, 3>> {
        let value = (value as &dyn Any)
            .downcast_ref::<Tensor<Autodiff<Inner>, 3>>()?
            .clone();
        let locations = (locations as &dyn Any)
            .downcast_ref::<Tensor<Autodiff<Inner>, 6>>()?
            .clone();
        let weights = (weights as &dyn Any)
            .downcast_ref::<Tensor<Autodiff<Inner>, 4>>()?
            .clone();
        let out = run::<Inner>(value, locations, weights, g);
        let boxed: Box<dyn Any> = Box::new(out);
        Some(
            *boxed
                .downcast::<Tensor<Outer, 3>>()
                .expect("Outer is Autodiff<Inner>"),
        )
    }

    fn run<B: Backend>(
        value: Tensor<Autodiff<B>, 3>,
        locations: Tensor<Autodiff<B>, 6>,
        weights: Tensor<Autodiff<B>, 4>,
        g: &Geometry,
    ) -> Tensor<Autodiff<B>, 3> {
        let device: B::Device = value.device();
        let (value, locations, weights) = (
            value.into_primitive().tensor(),
            locations.into_primitive().tensor(),
            weights.into_primitive().tensor(),
        );
        let saved = Saved {
            value: host(Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(
                value.primitive.clone(),
            ))),
            locations: host(Tensor::<B, 6>::from_primitive(TensorPrimitive::Float(
                locations.primitive.clone(),
            ))),
            weights: host(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(
                weights.primitive.clone(),
            ))),
            geometry: g.clone(),
        };
        let out = forward(&saved.value, &saved.locations, &saved.weights, g);
        let out = to_primitive::<B>(out, vec![g.batch, g.queries, g.heads * g.head_dim], &device);
        let result = match DeformSampling
            .prepare::<burn::backend::autodiff::checkpoint::strategy::NoCheckpointing>([
                value.node.clone(),
                locations.node.clone(),
                weights.node.clone(),
            ])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(saved, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive(TensorPrimitive::Float(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward kernel against a plain sum over [`corners`] (the backward pass's corner
    /// list), for CLIP-VIS's 32-wide heads (the register path) and another width: the same
    /// terms in the same order, so equal to the last bit. Locations reach outside the maps.
    #[test]
    fn forward_equals_sum_over_corners() {
        let wave = |i: usize, f: f32| (i as f32 * f).sin();
        for head_dim in [32, 12] {
            let g = Geometry {
                batch: 2,
                queries: 7,
                heads: 3,
                levels: 2,
                points: 2,
                head_dim,
                shapes: vec![(5, 6), (3, 2)],
            };
            let (d, tokens, samples, starts) = (g.d(), g.tokens(), g.samples(), g.starts());
            let value: Vec<f32> = (0..g.batch * tokens * d).map(|i| wave(i, 0.37)).collect();
            let locations: Vec<f32> = (0..g.batch * g.queries * samples * 2)
                .map(|i| 0.5 + 0.7 * wave(i, 1.93))
                .collect();
            let weights: Vec<f32> = (0..g.batch * g.queries * samples)
                .map(|i| wave(i, 0.71).abs())
                .collect();
            let ours = forward(&value, &locations, &weights, &g);
            let mut list = Vec::new();
            for row in 0..g.batch * g.queries {
                let value = &value[(row / g.queries) * tokens * d..];
                for head in 0..g.heads {
                    let mut expected = vec![0f32; head_dim];
                    for (level, &(h, w)) in g.shapes.iter().enumerate() {
                        for point in 0..g.points {
                            let sample = (head * g.levels + level) * g.points + point;
                            let at = row * samples + sample;
                            let (lx, ly) = (locations[2 * at], locations[2 * at + 1]);
                            corners(lx, ly, h, w, starts[level], &mut list);
                            for corner in &list {
                                let scale = weights[at] * corner.weight;
                                let v = &value[corner.token * d + head * head_dim..];
                                for (e, v) in expected.iter_mut().zip(v) {
                                    *e += scale * v;
                                }
                            }
                        }
                    }
                    let got = &ours[row * d + head * head_dim..][..head_dim];
                    assert_eq!(
                        got,
                        &expected[..],
                        "head_dim {head_dim} row {row} head {head}"
                    );
                }
            }
        }
    }
}
