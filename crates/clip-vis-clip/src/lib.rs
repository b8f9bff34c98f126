//! Frozen CLIP towers for clip-vis, on Burn.
//!
//! CLIP-VIS (Zhu et al., IEEE TCSVT) feeds the multi-scale maps of a frozen CLIP image encoder
//! to its mask generator, and names the masks by pooling CLIP's dense features inside them and
//! comparing with CLIP text embeddings. This crate holds the two image towers CLIP-VIS uses
//! (OpenAI `RN50` and OpenCLIP `convnext_base_w_320`), the text tower, open_clip's tokenizer,
//! checkpoint loading and zero-shot helpers, all matching open_clip 2.24 numerically.
//!
//! - [`Clip`]: the model; [`Clip::features`] gives `res2..res5` (SPEC §1),
//!   [`Clip::embed_image`] the global embedding, [`Clip::embed_masks`] the dense mask-pooled
//!   path, [`Clip::encode_text`] the text embeddings.
//! - [`ClipConfig`]: architectures, with presets [`ClipConfig::rn50`] and
//!   [`ClipConfig::convnext_base_w_320`].
//! - [`tokenizer`]: ids identical to `open_clip.tokenize`.
//! - [`preprocess`]: CLIP normalisation, padding to a multiple of 32, open_clip's zero-shot
//!   resize and crop.
//! - [`zero_shot`]: the prompt-template classifier (SPEC §2).

pub mod config;
pub mod convnext;
pub mod device;
mod error;
pub mod host;
pub mod model;
pub mod modified_resnet;
pub mod nn;
pub mod preprocess;
pub mod text;
pub mod tokenizer;
pub mod weights;
pub mod zero_shot;

pub use config::{
    ClipConfig, ConvNextConfig, ModifiedResNetConfig, TextActivation, TextConfig, VisionConfig,
};
pub use error::{ClipError, Result};
pub use model::{Clip, VisionTower};
pub use weights::{TensorSink, TensorStore};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Multi-scale maps of the image tower (SPEC §1), each `[batch, channels, H / stride, W / stride]`.
#[derive(Debug, Clone)]
pub struct FeatureMaps<B: Backend> {
    /// Stem output: stride 2 for RN50 (before its average pool), stride 4 for ConvNeXt.
    pub stem: Tensor<B, 4>,
    /// Stride 4.
    pub res2: Tensor<B, 4>,
    /// Stride 8.
    pub res3: Tensor<B, 4>,
    /// Stride 16.
    pub res4: Tensor<B, 4>,
    /// Stride 32; also the dense map that mask pooling reads (`clip_vis_dense`).
    pub res5: Tensor<B, 4>,
}

impl<B: Backend> FeatureMaps<B> {
    /// Assembles the maps from the stem and the outputs of the four stages, in order.
    pub(crate) fn from_stages(stem: Tensor<B, 4>, stages: Vec<Tensor<B, 4>>) -> Self {
        let [res2, res3, res4, res5]: [Tensor<B, 4>; 4] = stages
            .try_into()
            .expect("CLIP image towers have four stages");
        Self {
            stem,
            res2,
            res3,
            res4,
            res5,
        }
    }
}
