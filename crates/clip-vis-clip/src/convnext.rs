//! OpenCLIP's ConvNeXt image tower (the ConvNeXt-B backbone of CLIP-VIS).
//!
//! Port of timm's `ConvNeXt` (`huggingface/pytorch-image-models:timm/models/convnext.py`
//! @v0.9.10, `conv_mlp=False`, head-norm-last) as open_clip wraps it (`TimmModel` with
//! `timm_pool=""`, `timm_proj="linear"`: `mlfoundations/open_clip:src/open_clip/timm_model.py`
//! @v2.24.0). Every LayerNorm uses eps 1e-6; blocks scale their residual branch by the learned
//! layer scale `gamma`.

use crate::config::ConvNextConfig;
use crate::error::Result;
use crate::nn::{gelu, linear_flat, load_linear, Conv2d, ConvSpec, LayerNorm};
use crate::weights::TensorStore;
use crate::FeatureMaps;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

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
        Ok(Self {
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
        })
    }

    /// Stem (stride 4) and `res2..res5` (strides 4..32) of a normalised `[batch, 3, H, W]`
    /// image.
    pub fn features(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
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
