//! OpenCLIP's ConvNeXt image tower (the ConvNeXt-B backbone of CLIP-VIS).
//!
//! Port of timm's `ConvNeXt` (`huggingface/pytorch-image-models:timm/models/convnext.py`
//! @v0.9.10, `conv_mlp=False`, head-norm-last) as open_clip wraps it (`TimmModel` with
//! `timm_pool=""`, `timm_proj="linear"`: `mlfoundations/open_clip:src/open_clip/timm_model.py`
//! @v2.24.0). Every LayerNorm uses eps 1e-6; blocks scale their residual branch by the learned
//! layer scale `gamma`.

use crate::config::ConvNextConfig;
use crate::error::Result;
use crate::host;
use crate::nn::{gelu, is_host_backend, linear_flat, load_linear, Conv2d, ConvSpec, LayerNorm};
use crate::weights::TensorStore;
use crate::FeatureMaps;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

/// timm ConvNeXt LayerNorm epsilon.
const LAYER_NORM_EPS: f64 = 1e-6;

/// `x + gamma · fc2(gelu(fc1(LN(dwconv7x7(x)))))`, the MLP part channels-last.
#[derive(Module, Debug)]
pub struct ConvNextBlock<B: Backend> {
    conv_dw: Conv2d<B>,
    norm: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    /// Layer scale, `[dim]`.
    gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> ConvNextBlock<B> {
    fn load(store: &TensorStore, key: &str, dim: usize, device: &B::Device) -> Result<Self> {
        let k = |name: &str| format!("{key}.{name}");
        Ok(Self {
            conv_dw: Conv2d::load(
                store,
                &k("conv_dw"),
                ConvSpec::new(dim, dim, 7).padding(3).groups(dim).bias(),
                device,
            )?,
            norm: LayerNorm::load(store, &k("norm"), dim, LAYER_NORM_EPS, device)?,
            fc1: load_linear(store, &k("mlp.fc1"), dim, 4 * dim, true, device)?,
            fc2: load_linear(store, &k("mlp.fc2"), 4 * dim, dim, true, device)?,
            gamma: Param::from_tensor(store.tensor(&k("gamma"), [dim], device)?),
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let branch = self.conv_dw.forward(x.clone()).permute([0, 2, 3, 1]);
        let branch = self.norm.forward(branch);
        let hidden = gelu(linear_flat(&self.fc1, branch));
        let branch = linear_flat(&self.fc2, hidden);
        let branch = branch * self.gamma.val().unsqueeze::<4>();
        x + branch.permute([0, 3, 1, 2])
    }
}

/// LayerNorm2d then a 2x2 stride-2 convolution (`stages.i.downsample.{0,1}`).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    norm: LayerNorm<B>,
    conv: Conv2d<B>,
}

/// One stage: an optional downsampling and its blocks.
#[derive(Module, Debug)]
pub struct ConvNextStage<B: Backend> {
    downsample: Option<Downsample<B>>,
    blocks: Vec<ConvNextBlock<B>>,
}

impl<B: Backend> ConvNextStage<B> {
    fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some(downsample) = &self.downsample {
            x = downsample
                .conv
                .forward(downsample.norm.forward_channels_first(x));
        }
        for block in &self.blocks {
            x = block.forward(x);
        }
        x
    }
}

/// The ConvNeXt trunk, its head norm and open_clip's bias-free projection.
#[derive(Module, Debug)]
pub struct ConvNext<B: Backend> {
    stem_conv: Conv2d<B>,
    stem_norm: LayerNorm<B>,
    stages: Vec<ConvNextStage<B>>,
    /// `trunk.head.norm`, a LayerNorm2d applied after pooling.
    head_norm: LayerNorm<B>,
    /// `head.proj`, `[dims[3], embed_dim]`, no bias.
    proj: Linear<B>,
    /// The trunk's weights laid out for the host kernels, on the CPU backends without autodiff
    /// (where [`ConvNext::features`] runs them); `None` elsewhere.
    host: Option<Arc<HostTrunk>>,
}

impl<B: Backend> ConvNext<B> {
    /// Loads `{key}.trunk.*` and `{key}.head.proj.weight` (open_clip: `key = "visual"`).
    pub fn load(
        store: &TensorStore,
        key: &str,
        config: &ConvNextConfig,
        embed_dim: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let k = |name: &str| format!("{key}.trunk.{name}");
        let dims = config.dims;
        let mut stages = Vec::with_capacity(4);
        for (index, (&depth, &dim)) in config.depths.iter().zip(dims.iter()).enumerate() {
            let stage = k(&format!("stages.{index}"));
            // timm gives stage 0 an identity downsample: the stem already has stride 4.
            let downsample = if index > 0 {
                let previous = dims[index - 1];
                Some(Downsample {
                    norm: LayerNorm::load(
                        store,
                        &format!("{stage}.downsample.0"),
                        previous,
                        LAYER_NORM_EPS,
                        device,
                    )?,
                    conv: Conv2d::load(
                        store,
                        &format!("{stage}.downsample.1"),
                        ConvSpec::new(previous, dim, 2).stride(2).bias(),
                        device,
                    )?,
                })
            } else {
                None
            };
            let blocks = (0..depth)
                .map(|block| {
                    ConvNextBlock::load(store, &format!("{stage}.blocks.{block}"), dim, device)
                })
                .collect::<Result<Vec<_>>>()?;
            stages.push(ConvNextStage { downsample, blocks });
        }
        let mut model = Self {
            stem_conv: Conv2d::load(
                store,
                &k("stem.0"),
                ConvSpec::new(3, dims[0], 4).stride(4).bias(),
                device,
            )?,
            stem_norm: LayerNorm::load(store, &k("stem.1"), dims[0], LAYER_NORM_EPS, device)?,
            stages,
            head_norm: LayerNorm::load(store, &k("head.norm"), dims[3], LAYER_NORM_EPS, device)?,
            proj: load_linear(
                store,
                &format!("{key}.head.proj"),
                dims[3],
                embed_dim,
                false,
                device,
            )?,
            host: None,
        };
        if is_host_backend::<B>(device) {
            model.host = Some(Arc::new(HostTrunk::from_module(&model)));
        }
        Ok(model)
    }

    /// Stem (stride 4) and `res2..res5` (strides 4..32) of a normalised `[batch, 3, H, W]`
    /// image.
    ///
    /// On the CPU backends (without autodiff) this runs the host kernels of [`crate::host`]
    /// channels-last; elsewhere, and in [`ConvNext::features_reference`], Burn's tensor ops.
    pub fn features(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        match &self.host {
            Some(host) => host.features(pixels),
            None => self.features_reference(pixels),
        }
    }

    /// [`ConvNext::features`] by Burn's tensor ops on any backend: the reference the host
    /// kernels are tested against.
    pub fn features_reference(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        let stem = self
            .stem_norm
            .forward_channels_first(self.stem_conv.forward(pixels));
        let mut x = stem.clone();
        let mut levels = Vec::with_capacity(4);
        for stage in &self.stages {
            x = stage.forward(x);
            levels.push(x.clone());
        }
        FeatureMaps::from_stages(stem, levels)
    }

    /// Head norm and projection of pooled `[n, dims[3]]` features: `[n, embed_dim]`.
    /// Pooling comes first, as in the trunk's head and in FC-CLIP's dense path.
    pub fn project(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        self.proj.forward(self.head_norm.forward(pooled))
    }

    /// Global image embedding: average pool of `res5`, head norm, projection.
    pub fn embed(&self, res5: Tensor<B, 4>) -> Tensor<B, 2> {
        let [batch, channels, _, _] = res5.dims();
        let pooled = res5.mean_dim(3).mean_dim(2).reshape([batch, channels]);
        self.project(pooled)
    }
}

use host::values;

fn row_norm<B: Backend>(norm: &LayerNorm<B>) -> host::RowNorm {
    host::RowNorm::from_module(norm)
}

fn patchify<B: Backend>(conv: &Conv2d<B>) -> host::Patchify {
    let [_, channels_in, kernel, _] = conv.weight.dims();
    let bias = values(
        conv.bias
            .as_ref()
            .expect("ConvNeXt convolutions have a bias")
            .val(),
    );
    host::Patchify::from_torch(&values(conv.weight.val()), bias, channels_in, kernel)
}

/// One block's weights for the host kernels.
#[derive(Debug)]
struct HostBlock {
    conv_dw: host::Depthwise,
    norm: host::RowNorm,
    /// `[dim, 4 dim]` and its bias.
    fc1: host::RowLinear,
    /// `[4 dim, dim]` and its bias.
    fc2: host::RowLinear,
    gamma: Vec<f32>,
}

/// Rows of one fused MLP tile: small enough for the hidden tile (`rows x 4 dim`) to stay in
/// the core's cache, large enough for the matrix products to run at full speed.
const TILE_ROWS: usize = 128;

/// Largest MLP weight matrix (bytes) for which the tiled path pays: it must stay in the core's
/// L2 cache across tiles (1 MiB: `dim ≤ 256`).
const TILE_WEIGHT_BYTES: usize = 1 << 20;

impl HostBlock {
    fn from_module<B: Backend>(block: &ConvNextBlock<B>) -> Self {
        let [_, _, kernel, _] = block.conv_dw.weight.dims();
        let linear = |l: &Linear<B>| {
            let bias = l.bias.as_ref().expect("ConvNeXt MLPs have a bias").val();
            host::RowLinear::new(values(l.weight.val()), values(bias))
        };
        Self {
            conv_dw: host::Depthwise::from_torch(
                &values(block.conv_dw.weight.val()),
                values(block.conv_dw.bias.as_ref().expect("depthwise bias").val()),
                kernel,
            ),
            norm: row_norm(&block.norm),
            fc1: linear(&block.fc1),
            fc2: linear(&block.fc2),
            gamma: values(block.gamma.val()),
        }
    }

    /// `x += gamma · fc2(gelu(fc1(LN(dwconv(x)))))` on channels-last `[batch, h, w, dim]`.
    fn forward(&self, x: &mut [f32], batch: usize, h: usize, w: usize) {
        let dim = self.gamma.len();
        let rows = batch * h * w;
        let mut branch = self.conv_dw.forward(x, batch, h, w);
        let threads = rayon::current_num_threads();
        let weight_bytes = self.fc1.weight.len() * std::mem::size_of::<f32>();
        if weight_bytes <= TILE_WEIGHT_BYTES && rows.div_ceil(TILE_ROWS) >= 2 * threads {
            // Small weights, many tiles (stages 1 and 2): each thread runs the whole MLP on its
            // tiles, one product at a time on one core, so the hidden activations never leave
            // its cache.
            branch
                .par_chunks_mut(TILE_ROWS * dim)
                .zip(x.par_chunks_mut(TILE_ROWS * dim))
                .for_each(|(branch, x)| self.mlp(branch, x, 1));
        } else {
            // Large weights (stages 3 and 4): a tile's product would stream them from memory
            // again for every tile; whole-matrix products split by `gemm` read them once
            // (measured at 480x640 on 2 threads: 861 ms for the trunk, 927 ms with stage 3
            // tiled as well).
            self.mlp(&mut branch, x, threads);
        }
    }

    /// LN, fc1, GELU, fc2, layer scale and residual on `rows x dim` tiles.
    fn mlp(&self, branch: &mut [f32], x: &mut [f32], threads: usize) {
        let dim = self.gamma.len();
        let hidden_dim = self.fc1.d_output();
        let rows = branch.len() / dim;
        if threads > 1 {
            self.norm.apply(branch);
        } else {
            self.norm.apply_serial(branch);
        }
        let mut hidden = vec![0f32; rows * hidden_dim];
        self.fc1.forward_into(branch, &mut hidden, threads);
        if threads > 1 {
            hidden.par_chunks_mut(1 << 14).for_each(host::gelu_in_place);
        } else {
            host::gelu_in_place(&mut hidden);
        }
        self.fc2.forward_into(&hidden, branch, threads);
        if threads > 1 {
            x.par_chunks_mut(256 * dim)
                .zip(branch.par_chunks(256 * dim))
                .for_each(|(x, y)| host::add_scaled_rows(x, y, &self.gamma));
        } else {
            host::add_scaled_rows(x, branch, &self.gamma);
        }
    }
}

#[derive(Debug)]
struct HostStage {
    downsample: Option<(host::RowNorm, host::Patchify)>,
    blocks: Vec<HostBlock>,
}

/// The ConvNeXt trunk (stem to res5) prepared once for the host kernels: weights in the
/// layouts the kernels read, activations channels-last from the stem to the last stage.
#[derive(Debug)]
pub struct HostTrunk {
    stem: host::Patchify,
    stem_norm: host::RowNorm,
    stages: Vec<HostStage>,
}

impl HostTrunk {
    fn from_module<B: Backend>(model: &ConvNext<B>) -> Self {
        Self {
            stem: patchify(&model.stem_conv),
            stem_norm: row_norm(&model.stem_norm),
            stages: model
                .stages
                .iter()
                .map(|stage| HostStage {
                    downsample: stage
                        .downsample
                        .as_ref()
                        .map(|d| (row_norm(&d.norm), patchify(&d.conv))),
                    blocks: stage.blocks.iter().map(HostBlock::from_module).collect(),
                })
                .collect(),
        }
    }

    fn features<B: Backend>(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        let device = pixels.device();
        let [batch, channels, h, w] = pixels.dims();
        let to_tensor = |x: &[f32], h: usize, w: usize| {
            let channels = x.len() / (batch * h * w);
            let planar = host::to_channels_first(x, batch, h * w, channels);
            Tensor::<B, 4>::from_data(TensorData::new(planar, [batch, channels, h, w]), &device)
        };
        let input = host::to_channels_last(&values(pixels), batch, channels, h * w);
        let (mut x, mut h, mut w) = self.stem.forward(&input, batch, h, w);
        self.stem_norm.apply(&mut x);
        let stem = to_tensor(&x, h, w);
        let mut levels = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            if let Some((norm, conv)) = &stage.downsample {
                let mut normed = x.clone();
                norm.apply(&mut normed);
                (x, h, w) = conv.forward(&normed, batch, h, w);
            }
            for block in &stage.blocks {
                block.forward(&mut x, batch, h, w);
            }
            levels.push(to_tensor(&x, h, w));
        }
        FeatureMaps::from_stages(stem, levels)
    }
}
