//! Multi-scale deformable attention (Deformable DETR, as Mask2Former's pixel decoder uses it).
//!
//! Each query predicts, per head, `points` sampling offsets on every level and one attention
//! weight per (level, point), softmaxed over all levels × points of the head. The values of
//! each level are sampled bilinearly at `reference + offset / (width, height)` (normalised
//! `[0, 1]` coordinates, `x` first; PyTorch `grid_sample` semantics with `align_corners=False`
//! and zeros outside the map), weighted and summed. Port of
//! `facebookresearch/Mask2Former:mask2former/modeling/pixel_decoder/ops/modules/ms_deform_attn.py`
//! with its pure-PyTorch core (`ms_deform_attn_core_pytorch`); it runs on every Burn backend
//! through `grid_sample_2d`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{GridSampleOptions, InterpolateMode};
use burn::tensor::Tensor;

use crate::deform_kernel::{self, Geometry};
use clip_vis_clip::nn::{is_host_backend, linear_flat, load_linear, save_linear};
use clip_vis_clip::weights::join_key;
use clip_vis_clip::{Result, TensorSink, TensorStore};

/// How the bilinear samples are gathered; both give the same result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingCore {
    /// Burn's `grid_sample_2d`, one call per level: runs on every backend.
    GridSample,
    /// A direct CPU kernel over the host buffers (the CPU backends' default): Burn's CPU
    /// `grid_sample` is about 9x slower than PyTorch's.
    Host,
    /// Gathers with bilinear weights ([`crate::sampling::sample_bilinear`]): differentiable on
    /// every backend, so it is what autodiff backends other than the CPU ones use (and the
    /// reference of [`SamplingCore::HostAutodiff`]).
    Gather,
    /// The direct CPU kernels for the forward and the backward pass as one autodiff
    /// operation: what training on the CPU backends uses (about 10x faster than the gathers).
    /// Falls back to [`SamplingCore::Gather`] on other backends.
    HostAutodiff,
}

/// Sizes of a multi-scale deformable attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsDeformAttnConfig {
    /// Model width `d` (256 in CLIP-VIS, SPEC §3).
    pub d_model: usize,
    /// Heads (8).
    pub heads: usize,
    /// Feature levels (3: 1/32, 1/16, 1/8).
    pub levels: usize,
    /// Sampling points per head and level (4).
    pub points: usize,
}

/// The module; field names are the checkpoint's.
#[derive(Module, Debug)]
pub struct MsDeformAttn<B: Backend> {
    /// `d → heads · levels · points · 2` offsets.
    sampling_offsets: Linear<B>,
    /// `d → heads · levels · points` attention logits.
    attention_weights: Linear<B>,
    value_proj: Linear<B>,
    output_proj: Linear<B>,
    heads: usize,
    levels: usize,
    points: usize,
}

impl<B: Backend> MsDeformAttn<B> {
    /// Loads `{key}.{sampling_offsets,attention_weights,value_proj,output_proj}.{weight,bias}`.
    pub fn load(
        store: &TensorStore,
        key: &str,
        config: &MsDeformAttnConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let d = config.d_model;
        let samples = config.heads * config.levels * config.points;
        let linear =
            |name: &str, out| load_linear(store, &join_key(key, name), d, out, true, device);
        Ok(Self {
            sampling_offsets: linear("sampling_offsets", samples * 2)?,
            attention_weights: linear("attention_weights", samples)?,
            value_proj: linear("value_proj", d)?,
            output_proj: linear("output_proj", d)?,
            heads: config.heads,
            levels: config.levels,
            points: config.points,
        })
    }

    /// Host copies of the weights, for the CPU inference encoder.
    pub(crate) fn host(&self) -> crate::host::HostDeformAttn {
        use clip_vis_clip::host::RowLinear;
        crate::host::HostDeformAttn {
            value: RowLinear::from_module(&self.value_proj),
            query: RowLinear::concat(&[
                &RowLinear::from_module(&self.sampling_offsets),
                &RowLinear::from_module(&self.attention_weights),
            ]),
            output: RowLinear::from_module(&self.output_proj),
            heads: self.heads,
            levels: self.levels,
            points: self.points,
        }
    }

    /// Writes the four linears under `{key}.*` (the inverse of [`MsDeformAttn::load`]).
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        for (name, linear) in [
            ("sampling_offsets", &self.sampling_offsets),
            ("attention_weights", &self.attention_weights),
            ("value_proj", &self.value_proj),
            ("output_proj", &self.output_proj),
        ] {
            save_linear(sink, &join_key(key, name), linear);
        }
    }

    /// # Shapes
    /// - `query`: `[batch, queries, d]`
    /// - `reference_points`: `[batch, queries, levels, 2]`, `(x, y)` in `[0, 1]`
    /// - `input`: `[batch, Σ H_l·W_l, d]`, the levels' maps flattened row-major, level after
    ///   level in the order of `spatial_shapes`
    /// - `spatial_shapes`: `(H_l, W_l)` per level
    /// - returns `[batch, queries, d]`
    ///
    /// On the CPU backends the sampling runs in a direct kernel ([`SamplingCore::Host`]);
    /// elsewhere through `grid_sample_2d` ([`SamplingCore::GridSample`]); under autodiff
    /// through differentiable gathers ([`SamplingCore::Gather`]).
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        reference_points: Tensor<B, 4>,
        input: Tensor<B, 3>,
        spatial_shapes: &[(usize, usize)],
    ) -> Tensor<B, 3> {
        let device = query.device();
        let core = if B::ad_enabled(&device) {
            SamplingCore::HostAutodiff
        } else if is_host_backend::<B>(&device) {
            SamplingCore::Host
        } else {
            SamplingCore::GridSample
        };
        self.forward_with(core, query, reference_points, input, spatial_shapes)
    }

    /// [`MsDeformAttn::forward`] with an explicit sampling core (the two are tested equal).
    pub fn forward_with(
        &self,
        core: SamplingCore,
        query: Tensor<B, 3>,
        reference_points: Tensor<B, 4>,
        input: Tensor<B, 3>,
        spatial_shapes: &[(usize, usize)],
    ) -> Tensor<B, 3> {
        let [batch, queries, _] = query.dims();
        let (heads, levels, points) = (self.heads, self.levels, self.points);
        assert_eq!(spatial_shapes.len(), levels, "one spatial shape per level");
        let device = query.device();

        let value = linear_flat(&self.value_proj, input);
        let offsets = linear_flat(&self.sampling_offsets, query.clone())
            .reshape([batch, queries, heads, levels, points, 2]);
        let weights = softmax(
            linear_flat(&self.attention_weights, query).reshape([
                batch,
                queries,
                heads,
                levels * points,
            ]),
            3,
        );
        // Offsets are in pixels of each level: divide by (W_l, H_l).
        let normalizer: Vec<f32> = spatial_shapes
            .iter()
            .flat_map(|&(h, w)| [w as f32, h as f32])
            .collect();
        let normalizer = Tensor::<B, 1>::from_floats(normalizer.as_slice(), &device)
            .reshape([1, 1, 1, levels, 1, 2]);
        let locations =
            reference_points.reshape([batch, queries, 1, levels, 1, 2]) + offsets / normalizer;
        let geometry = || Geometry {
            batch,
            queries,
            heads,
            levels,
            points,
            head_dim: value.dims()[2] / heads,
            shapes: spatial_shapes.to_vec(),
        };
        let sampled = match core {
            SamplingCore::GridSample => self.sample_grid(value, locations, weights, spatial_shapes),
            SamplingCore::Host => {
                let geometry = geometry();
                deform_kernel::sample(value, locations, weights, &geometry)
            }
            SamplingCore::Gather => self.sample_gather(value, locations, weights, spatial_shapes),
            SamplingCore::HostAutodiff => {
                let geometry = geometry();
                match deform_kernel::sample_autodiff(value, locations, weights, &geometry) {
                    Ok(sampled) => sampled,
                    Err((value, locations, weights)) => {
                        self.sample_gather(value, locations, weights, spatial_shapes)
                    }
                }
            }
        };
        linear_flat(&self.output_proj, sampled)
    }

    /// Differentiable core: per level, [`crate::sampling::sample_bilinear`] at all
    /// `queries · points` locations.
    fn sample_gather(
        &self,
        value: Tensor<B, 3>,
        locations: Tensor<B, 6>,
        weights: Tensor<B, 4>,
        spatial_shapes: &[(usize, usize)],
    ) -> Tensor<B, 3> {
        Self::sample_levels(
            value,
            locations,
            weights,
            spatial_shapes,
            |level_value, coords| {
                let [n, queries, points, _] = coords.dims();
                let [_, head_dim, _, _] = level_value.dims();
                crate::sampling::sample_bilinear(
                    level_value,
                    coords.reshape([n, queries * points, 2]),
                )
                .reshape([n, head_dim, queries, points])
            },
        )
    }

    /// Generic core: one `grid_sample_2d` per level.
    fn sample_grid(
        &self,
        value: Tensor<B, 3>,
        locations: Tensor<B, 6>,
        weights: Tensor<B, 4>,
        spatial_shapes: &[(usize, usize)],
    ) -> Tensor<B, 3> {
        Self::sample_levels(
            value,
            locations,
            weights,
            spatial_shapes,
            |level_value, coords| {
                // grid_sample takes [-1, 1].
                level_value.grid_sample_2d(
                    coords * 2.0 - 1.0,
                    GridSampleOptions::new(InterpolateMode::Bilinear),
                )
            },
        )
    }

    /// The tensor cores' common frame: each level's values as `[batch·heads, head_dim, H, W]`
    /// and its locations as `[batch·heads, queries, points, 2]` (`[0, 1]`) go to
    /// `sample_level`, which returns `[batch·heads, head_dim, queries, points]`; the samples
    /// of all levels are weighted and summed into `[batch, queries, d]`.
    fn sample_levels(
        value: Tensor<B, 3>,
        locations: Tensor<B, 6>,
        weights: Tensor<B, 4>,
        spatial_shapes: &[(usize, usize)],
        sample_level: impl Fn(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
    ) -> Tensor<B, 3> {
        let [batch, _, d] = value.dims();
        let [_, queries, heads, levels, points, _] = locations.dims();
        let head_dim = d / heads;
        let mut sampled = Vec::with_capacity(levels);
        let mut start = 0;
        for (level, &(h, w)) in spatial_shapes.iter().enumerate() {
            // [batch, H·W, heads, head_dim] → [batch·heads, head_dim, H, W]
            let level_value = value
                .clone()
                .slice([0..batch, start..start + h * w, 0..d])
                .reshape([batch, h * w, heads, head_dim])
                .permute([0, 2, 3, 1])
                .reshape([batch * heads, head_dim, h, w]);
            start += h * w;
            // [batch, queries, heads, points, 2] → [batch·heads, queries, points, 2]
            let coords = locations
                .clone()
                .slice([
                    0..batch,
                    0..queries,
                    0..heads,
                    level..level + 1,
                    0..points,
                    0..2,
                ])
                .reshape([batch, queries, heads, points, 2])
                .permute([0, 2, 1, 3, 4])
                .reshape([batch * heads, queries, points, 2]);
            sampled.push(sample_level(level_value, coords));
        }
        // [batch·heads, head_dim, queries, levels·points], weighted over the last axis.
        let sampled = Tensor::cat(sampled, 3);
        let weights =
            weights
                .permute([0, 2, 1, 3])
                .reshape([batch * heads, 1, queries, levels * points]);
        (sampled * weights)
            .sum_dim(3)
            .reshape([batch, heads * head_dim, queries])
            .swap_dims(1, 2)
    }
}
