//! The pixel decoder on host buffers, for inference on the CPU backends: the deformable encoder
//! and the FPN level, channels-last.
//!
//! The same computation as the tensor-op decoder of [`crate::pixel_decoder`] (which stays its
//! reference in tests and runs everywhere else): each layer's products go to `gemm` with the
//! bias written in first, the sampling offsets and attention logits come out of one product,
//! locations and softmaxed weights are formed in one pass per row for the direct sampling
//! kernel ([`crate::deform_kernel::forward`]), and the FFN (linear, ReLU, linear, residual,
//! LayerNorm) runs fused on row tiles that stay in one core's cache. The weights are copied
//! from the Burn modules at every call (a few MB, about 1% of a frame's encoder time), so the
//! kernels always see the module's current parameters.

use crate::deform_kernel::{self, Geometry};
use clip_vis_clip::host::{self, RowLinear, RowNorm};
use rayon::prelude::*;

/// Rows of one fused FFN tile (`rows x ffn_dim` hidden values stay in cache).
const TILE_ROWS: usize = 128;

/// One `MsDeformAttn` on host buffers.
#[derive(Debug)]
pub(crate) struct HostDeformAttn {
    pub value: RowLinear,
    /// `sampling_offsets` then `attention_weights`, side by side: one product for both.
    pub query: RowLinear,
    pub output: RowLinear,
    pub heads: usize,
    pub levels: usize,
    pub points: usize,
}

impl HostDeformAttn {
    /// `query` `[batch · queries, d]` (positions added), `input` `[batch · tokens, d]`,
    /// `reference` `[queries, 2]` (`(x, y)` in `[0, 1]`, the same on every level and batch
    /// item) → `[batch · queries, d]`.
    fn forward(
        &self,
        query: &[f32],
        input: &[f32],
        reference: &[f32],
        batch: usize,
        shapes: &[(usize, usize)],
        threads: usize,
    ) -> Vec<f32> {
        let d = self.value.d_output();
        let (heads, levels, points) = (self.heads, self.levels, self.points);
        let samples = heads * levels * points;
        let rows = query.len() / d;
        let queries = rows / batch;
        let value = self.value.forward(input, threads);
        let projected = self.query.forward(query, threads);
        // Offsets are in pixels of their level: each is divided by its level's (W_l, H_l),
        // laid out once per call like the offsets `[heads, levels, points, (x, y)]`.
        let normalizer: Vec<f32> = (0..samples)
            .flat_map(|sample| {
                let (h, w) = shapes[(sample / points) % levels];
                [w as f32, h as f32]
            })
            .collect();
        let mut locations = vec![0f32; rows * samples * 2];
        let mut weights = vec![0f32; rows * samples];
        locations
            .par_chunks_mut(TILE_ROWS * samples * 2)
            .zip(weights.par_chunks_mut(TILE_ROWS * samples))
            .enumerate()
            .for_each(|(tile, (locations, weights))| {
                let rows = weights.len() / samples;
                for r in 0..rows {
                    let row = tile * TILE_ROWS + r;
                    let projected = &projected[row * samples * 3..(row + 1) * samples * 3];
                    let (offsets, logits) = projected.split_at(samples * 2);
                    let token = row % queries;
                    sampling_locations(
                        &mut locations[r * samples * 2..(r + 1) * samples * 2],
                        offsets,
                        &normalizer,
                        reference[token * 2],
                        reference[token * 2 + 1],
                    );
                    let weights = &mut weights[r * samples..(r + 1) * samples];
                    weights.copy_from_slice(logits);
                    for head in weights.chunks_exact_mut(levels * points) {
                        host::softmax_in_place(head);
                    }
                }
            });
        let geometry = Geometry {
            batch,
            queries,
            heads,
            levels,
            points,
            head_dim: d / heads,
            shapes: shapes.to_vec(),
        };
        let sampled = deform_kernel::forward(&value, &locations, &weights, &geometry);
        self.output.forward(&sampled, threads)
    }
}

clip_vis_clip::host_multiversion! {
    /// `locations = (x, y) + offsets / normalizer`, pair by pair (one query's samples).
    fn sampling_locations(
        locations: &mut [f32],
        offsets: &[f32],
        normalizer: &[f32],
        x: f32,
        y: f32,
    ) {
        for ((location, offset), norm) in locations
            .chunks_exact_mut(2)
            .zip(offsets.chunks_exact(2))
            .zip(normalizer.chunks_exact(2))
        {
            location[0] = x + offset[0] / norm[0];
            location[1] = y + offset[1] / norm[1];
        }
    }
}

/// One encoder layer on host buffers:
/// `src = LN1(src + MSDA(src + pos)); src = LN2(src + W2·ReLU(W1·src))`.
#[derive(Debug)]
pub(crate) struct HostEncoderLayer {
    pub attention: HostDeformAttn,
    pub norm1: RowNorm,
    pub linear1: RowLinear,
    pub linear2: RowLinear,
    pub norm2: RowNorm,
}

impl HostEncoderLayer {
    /// Updates `source` `[batch · tokens, d]` in place; `position` has the same shape.
    pub fn forward(
        &self,
        source: &mut [f32],
        position: &[f32],
        reference: &[f32],
        batch: usize,
        shapes: &[(usize, usize)],
    ) {
        let d = self.norm1.gamma.len();
        let threads = rayon::current_num_threads();
        let mut query = source.to_vec();
        query
            .par_chunks_mut(TILE_ROWS * d)
            .zip(position.par_chunks(TILE_ROWS * d))
            .for_each(|(q, p)| host::add_in_place(q, p));
        let attended = self
            .attention
            .forward(&query, source, reference, batch, shapes, threads);
        source
            .par_chunks_mut(TILE_ROWS * d)
            .zip(attended.par_chunks(TILE_ROWS * d))
            .for_each(|(s, a)| {
                host::add_in_place(s, a);
                self.norm1.apply_serial(s);
            });
        source.par_chunks_mut(TILE_ROWS * d).for_each(|tile| {
            let mut hidden = self.linear1.forward(tile, 1);
            host::relu_in_place(&mut hidden);
            let out = self.linear2.forward(&hidden, 1);
            host::add_in_place(tile, &out);
            self.norm2.apply_serial(tile);
        });
    }
}

/// A GroupNorm on channels-last maps: statistics per (batch item, group) over the group's
/// channels and every position, accumulated in f64.
#[derive(Debug)]
pub(crate) struct HostGroupNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub groups: usize,
    pub epsilon: f64,
}

impl HostGroupNorm {
    /// Normalises `x` `[batch, positions, channels]` in place, then a ReLU where asked.
    pub fn apply(&self, x: &mut [f32], batch: usize, relu: bool) {
        let channels = self.gamma.len();
        let per_group = channels / self.groups;
        let positions = x.len() / (batch * channels);
        for image in x.chunks_exact_mut(positions * channels) {
            // Sums and sums of squares per group, over position chunks in parallel.
            let partial: Vec<Vec<(f64, f64)>> = image
                .par_chunks(TILE_ROWS * channels)
                .map(|rows| {
                    let mut sums = vec![(0f64, 0f64); self.groups];
                    for row in rows.chunks_exact(channels) {
                        for (g, values) in row.chunks_exact(per_group).enumerate() {
                            let (s, q) = values
                                .iter()
                                .fold((0f32, 0f32), |(s, q), &v| (s + v, q + v * v));
                            sums[g].0 += s as f64;
                            sums[g].1 += q as f64;
                        }
                    }
                    sums
                })
                .collect();
            let count = (positions * per_group) as f64;
            let mut scale = vec![0f32; channels];
            let mut shift = vec![0f32; channels];
            for g in 0..self.groups {
                let (s, q) = partial
                    .iter()
                    .fold((0f64, 0f64), |(s, q), p| (s + p[g].0, q + p[g].1));
                let mean = s / count;
                let variance = (q / count - mean * mean).max(0.0);
                let inv = 1.0 / (variance + self.epsilon).sqrt();
                for c in g * per_group..(g + 1) * per_group {
                    scale[c] = (inv * self.gamma[c] as f64) as f32;
                    shift[c] = (self.beta[c] as f64 - mean * inv * self.gamma[c] as f64) as f32;
                }
            }
            image.par_chunks_mut(TILE_ROWS * channels).for_each(|rows| {
                scale_shift_rows(rows, &scale, &shift, relu);
            });
        }
    }
}

/// `x ← x · scale + shift` per channel (then ReLU where asked).
fn scale_shift_rows(x: &mut [f32], scale: &[f32], shift: &[f32], relu: bool) {
    for row in x.chunks_exact_mut(scale.len()) {
        for ((v, a), b) in row.iter_mut().zip(scale).zip(shift) {
            *v = *v * a + b;
        }
    }
    if relu {
        host::relu_in_place(x);
    }
}
