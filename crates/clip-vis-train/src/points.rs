//! Point sampling (detectron2 PointRend's `point_sample` and
//! `get_uncertain_point_coords_with_randomness`).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clip_vis_pixel_decoder::sampling::sample_bilinear;

/// Where uniform random points come from: `[n, count, 2]` values in `[0, 1)`, row-major.
pub trait PointSource {
    /// `n × count` points `(x, y)`.
    fn uniform(&mut self, n: usize, count: usize) -> Vec<f32>;
}

/// A seeded xorshift source (the default for training; tests inject the reference's points).
#[derive(Debug, Clone)]
pub struct SeededPoints(u64);

impl SeededPoints {
    /// A source from `seed` (0 is replaced by a fixed non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
}

impl PointSource for SeededPoints {
    fn uniform(&mut self, n: usize, count: usize) -> Vec<f32> {
        (0..n * count * 2)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }
}

/// [`point_sample`] on host buffers, for values that need no gradient: `maps` `[n, h, w]`
/// (row-major) sampled at `coords` (`(x, y)` in `[0, 1]`), either `[n, p, 2]` (each map its own
/// points) or `[p, 2]` shared by all maps; returns `[n, p]`. The same arithmetic as
/// `grid_sample` (`x·W − 0.5`, zeros outside), parallel over the maps.
pub(crate) fn point_sample_host(
    maps: &[f32],
    n: usize,
    h: usize,
    w: usize,
    coords: &[f32],
    p: usize,
) -> Vec<f32> {
    use rayon::prelude::*;
    let shared = coords.len() == p * 2;
    let mut out = vec![0f32; n * p];
    out.par_chunks_mut(p.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            let map = &maps[i * h * w..(i + 1) * h * w];
            let coords = if shared {
                coords
            } else {
                &coords[i * p * 2..(i + 1) * p * 2]
            };
            for (k, value) in row.iter_mut().enumerate() {
                let x = coords[2 * k] * w as f32 - 0.5;
                let y = coords[2 * k + 1] * h as f32 - 0.5;
                let (x0, y0) = (x.floor(), y.floor());
                let (fx, fy) = (x - x0, y - y0);
                let (x0, y0) = (x0 as isize, y0 as isize);
                let mut acc = 0f32;
                for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
                    for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                        let (cx, cy) = (x0 + dx, y0 + dy);
                        if cx >= 0 && cy >= 0 && (cx as usize) < w && (cy as usize) < h {
                            acc += wy * wx * map[cy as usize * w + cx as usize];
                        }
                    }
                }
                *value = acc;
            }
        });
    out
}

/// detectron2's `point_sample`: bilinear samples of `input` `[n, c, h, w]` at `coords`
/// `[n, p, 2]` (`(x, y)` in `[0, 1]`, `align_corners=False`, zero outside): `[n, c, p]`.
/// Differentiable with respect to `input` (it is the pixel decoder's gather sampler).
pub fn point_sample<B: Backend>(input: Tensor<B, 4>, coords: Tensor<B, 3>) -> Tensor<B, 3> {
    sample_bilinear(input, coords)
}

/// PointRend's importance sampling for `logits` `[m, 1, h, w]`: of `3·points` uniform
/// candidates, the `0.75·points` most uncertain (`−|logit|` at the point, highest first), then
/// `points − 0.75·points` more uniform points. Returns `[m, points, 2]`.
pub fn uncertain_points<B: Backend>(
    logits: Tensor<B, 4>,
    points: usize,
    oversample: f64,
    importance: f64,
    source: &mut dyn PointSource,
) -> Tensor<B, 3> {
    let [m, _, _, _] = logits.dims();
    let device = logits.device();
    let candidates = (points as f64 * oversample) as usize;
    let uncertain = (importance * points as f64) as usize;
    let random = points - uncertain;
    let cand = Tensor::<B, 3>::from_data(
        TensorData::new(source.uniform(m, candidates), [m, candidates, 2]),
        &device,
    );
    let extra = Tensor::<B, 3>::from_data(
        TensorData::new(source.uniform(m, random), [m, random, 2]),
        &device,
    );
    select_uncertain(logits, cand, extra, uncertain)
}

/// The deterministic part of [`uncertain_points`], given the candidates `[m, k·p, 2]` and the
/// extra points `[m, r, 2]`.
pub(crate) fn select_uncertain<B: Backend>(
    logits: Tensor<B, 4>,
    cand: Tensor<B, 3>,
    extra: Tensor<B, 3>,
    uncertain: usize,
) -> Tensor<B, 3> {
    let [m, candidates, _] = cand.dims();
    let device = logits.device();
    let sampled = if clip_vis_clip::nn::runs_on_host::<B>(&device) {
        // No gradient flows here: sample the host values directly instead of through gathers.
        let [_, _, h, w] = logits.dims();
        let host = |t: Tensor<B, 4>| {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("f32")
        };
        let coords = cand
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("f32");
        let values = point_sample_host(&host(logits), m, h, w, &coords, candidates);
        Tensor::<B, 2>::from_data(TensorData::new(values, [m, candidates]), &device)
    } else {
        point_sample(logits, cand.clone()).reshape([m, candidates])
    };
    let uncertainty = sampled.abs().neg();
    let (_, index): (_, Tensor<B, 2, Int>) = uncertainty.topk_with_indices(uncertain, 1);
    let index = index.reshape([m, uncertain, 1]).expand([m, uncertain, 2]);
    let chosen = cand.gather(1, index);
    Tensor::cat(vec![chosen, extra], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn sampling_a_pixel_centre_returns_the_pixel() {
        let device = Default::default();
        let input = Tensor::<Flex, 4>::from_data(
            TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 4]),
            &device,
        );
        // Centre of pixel (row 1, column 2): ((2 + 0.5) / 4, (1 + 0.5) / 3).
        let coords = Tensor::<Flex, 3>::from_data(
            TensorData::new(vec![2.5f32 / 4.0, 1.5 / 3.0, -1.0, -1.0], [1, 2, 2]),
            &device,
        );
        let out = point_sample(input, coords)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert!((out[0] - 6.0).abs() < 1e-5 && out[1] == 0.0, "{out:?}");
    }
}
