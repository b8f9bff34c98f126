//! Architecture descriptions of the CLIP models, with presets for the two CLIP-VIS uses.
//!
//! A config travels inside every converted weights file (safetensors metadata key
//! [`CONFIG_METADATA_KEY`]), so the architecture always comes from the weights, never from a flag
//! that could disagree with them.

use serde::{Deserialize, Serialize};

/// Safetensors metadata key under which clip-vis stores the JSON of a [`ClipConfig`].
pub const CONFIG_METADATA_KEY: &str = "clip_vis.clip_config";

/// A whole CLIP model: image tower, text tower and the shared embedding width.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// open_clip model name (`RN50`, `convnext_base_w_320`) or a free name for custom models.
    pub name: String,
    /// Width of the joint image/text embedding space.
    pub embed_dim: usize,
    /// The image tower.
    pub vision: VisionConfig,
    /// The text tower.
    pub text: TextConfig,
}

/// The image towers clip-vis implements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VisionConfig {
    /// OpenAI's ModifiedResNet (3-conv stem, anti-aliased downsampling, attention pooling).
    ModifiedResnet(ModifiedResNetConfig),
    /// timm ConvNeXt trunk with open_clip's bias-free linear projection head.
    Convnext(ConvNextConfig),
}

/// OpenAI ModifiedResNet (`mlfoundations/open_clip:src/open_clip/modified_resnet.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModifiedResNetConfig {
    /// Bottleneck blocks per stage (RN50: `[3, 4, 6, 3]`).
    pub layers: [usize; 4],
    /// Base width; stage `i` has `width * 2^i` planes and `4 * width * 2^i` output channels.
    pub width: usize,
    /// Heads of the attention-pooling head (open_clip: `width * 32 / 64`).
    pub heads: usize,
    /// Training resolution; the attention pool's positional grid is `image_size / 32` square.
    pub image_size: usize,
}

/// timm ConvNeXt (`huggingface/pytorch-image-models:timm/models/convnext.py` @v0.9.10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvNextConfig {
    /// Blocks per stage (ConvNeXt-B: `[3, 3, 27, 3]`).
    pub depths: [usize; 4],
    /// Channels per stage (ConvNeXt-B: `[128, 256, 512, 1024]`).
    pub dims: [usize; 4],
    /// Preprocessing resolution (the short side is resized to it, then centre-cropped).
    pub image_size: usize,
}

/// Activation inside the text transformer's MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextActivation {
    /// `x * sigmoid(1.702 x)`: OpenAI's models (RN50 loads with `quick_gelu=True`).
    QuickGelu,
    /// Exact (erf) GELU: models trained by OpenCLIP, ConvNeXt among them.
    Gelu,
}

/// The causal text transformer (`mlfoundations/open_clip:src/open_clip/transformer.py`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Maximum prompt length in tokens, SOT and EOT included (77).
    pub context_length: usize,
    /// Token vocabulary size (49408 for OpenAI's BPE).
    pub vocab_size: usize,
    /// Residual width.
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// Residual attention blocks.
    pub layers: usize,
    /// MLP activation.
    pub activation: TextActivation,
}

impl ClipConfig {
    /// OpenAI `RN50` as open_clip builds it from the `openai` weights (QuickGELU text tower),
    /// the R50 backbone of CLIP-VIS (SPEC §1–2).
    pub fn rn50() -> Self {
        Self {
            name: "RN50".into(),
            embed_dim: 1024,
            vision: VisionConfig::ModifiedResnet(ModifiedResNetConfig {
                layers: [3, 4, 6, 3],
                width: 64,
                heads: 32,
                image_size: 224,
            }),
            text: TextConfig {
                context_length: 77,
                vocab_size: 49408,
                width: 512,
                heads: 8,
                layers: 12,
                activation: TextActivation::QuickGelu,
            },
        }
    }

    /// OpenCLIP `convnext_base_w_320` (`laion_aesthetic_s13b_b82k`), the ConvNeXt-B backbone of
    /// CLIP-VIS (SPEC §1–2).
    pub fn convnext_base_w_320() -> Self {
        Self {
            name: "convnext_base_w_320".into(),
            embed_dim: 640,
            vision: VisionConfig::Convnext(ConvNextConfig {
                depths: [3, 3, 27, 3],
                dims: [128, 256, 512, 1024],
                image_size: 320,
            }),
            text: TextConfig {
                context_length: 77,
                vocab_size: 49408,
                width: 640,
                heads: 10,
                layers: 12,
                activation: TextActivation::Gelu,
            },
        }
    }

    /// A ConvNeXt CLIP small enough to build in a blink (widths 16–128, a 2-layer text tower of
    /// width 64) with the real 49408-token vocabulary: the built-in demo's and the tests' tower.
    pub fn tiny() -> Self {
        Self {
            name: "tiny-demo".into(),
            embed_dim: 64,
            vision: VisionConfig::Convnext(ConvNextConfig {
                depths: [1, 1, 2, 1],
                dims: [16, 32, 64, 128],
                image_size: 128,
            }),
            text: TextConfig {
                context_length: 77,
                vocab_size: 49408,
                width: 64,
                heads: 4,
                layers: 2,
                activation: TextActivation::Gelu,
            },
        }
    }

    /// The preset with this open_clip model name, if clip-vis has one.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "RN50" | "rn50" => Some(Self::rn50()),
            "convnext_base_w_320" | "convnext-b" => Some(Self::convnext_base_w_320()),
            _ => None,
        }
    }

    /// Image size of the zero-shot preprocessing (short side resize + centre crop).
    pub fn image_size(&self) -> usize {
        match &self.vision {
            VisionConfig::ModifiedResnet(c) => c.image_size,
            VisionConfig::Convnext(c) => c.image_size,
        }
    }

    /// Channels of `[res2, res3, res4, res5]` (SPEC §1).
    pub fn feature_channels(&self) -> [usize; 4] {
        match &self.vision {
            VisionConfig::ModifiedResnet(c) => [0, 1, 2, 3].map(|i| (c.width * 4) << i),
            VisionConfig::Convnext(c) => c.dims,
        }
    }

    /// Parses the JSON stored in a weights file's metadata.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// JSON for a weights file's metadata.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ClipConfig always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_json() {
        for config in [ClipConfig::rn50(), ClipConfig::convnext_base_w_320()] {
            assert_eq!(ClipConfig::from_json(&config.to_json()).unwrap(), config);
        }
        assert_eq!(
            ClipConfig::rn50().feature_channels(),
            [256, 512, 1024, 2048]
        );
        assert_eq!(
            ClipConfig::convnext_base_w_320().feature_channels(),
            [128, 256, 512, 1024]
        );
    }
}
