//! The whole CLIP model: image tower, text tower, logit scale, and loading from checkpoints.

use crate::config::{ClipConfig, VisionConfig, CONFIG_METADATA_KEY};
use crate::convnext::ConvNext;
use crate::error::{ClipError, Result};
use crate::modified_resnet::ModifiedResNet;
use crate::text::TextTransformer;
use crate::weights::TensorStore;
use crate::FeatureMaps;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use std::path::Path;

/// The image tower of either architecture.
// Built once per model; Burn's `Module` derive does not see through a `Box`, so the size
// difference between the variants is accepted.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum VisionTower<B: Backend> {
    /// OpenAI ModifiedResNet (RN50).
    ModifiedResNet(ModifiedResNet<B>),
    /// timm ConvNeXt with open_clip's projection head.
    ConvNext(ConvNext<B>),
}

/// A frozen CLIP model (open_clip `CLIP`), built from a checkpoint.
///
/// ```no_run
/// use burn::backend::Flex;
/// use clip_vis_clip::Clip;
/// let device = Default::default();
/// let clip = Clip::<Flex>::from_file("RN50-openai.safetensors", None, &device)?;
/// let text = clip.encode_prompts(&["a photo of a cat."])?;
/// # Ok::<(), clip_vis_clip::ClipError>(())
/// ```
#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    /// The image tower.
    pub visual: VisionTower<B>,
    /// The text tower.
    pub text: TextTransformer<B>,
    /// `exp(logit_scale)` clamped at 100, as CLIP-VIS uses it (SPEC §2).
    pub logit_scale: f64,
    /// Square input size of open_clip's zero-shot preprocessing (224 for RN50, 320 for
    /// ConvNeXt-B).
    pub image_size: usize,
}

/// Prefix of the CLIP keys inside CLIP-VIS (detectron2) checkpoints.
pub const CLIP_VIS_PREFIX: &str = "backbone.clip_model.";

impl<B: Backend> Clip<B> {
    /// Reads a checkpoint (open_clip safetensors / `.bin` / `.pt`, a clip-vis file, or a
    /// CLIP-VIS detectron2 `.pth`) and builds the model it describes. `expected` (an open_clip
    /// model name) only confirms the architecture: a mismatch is an error.
    pub fn from_file(
        path: impl AsRef<Path>,
        expected: Option<&str>,
        device: &B::Device,
    ) -> Result<Self> {
        let store = open_clip_store(path)?;
        Self::from_store(&store, expected, device)
    }

    /// Like [`Clip::from_file`] on an already-read store: detects the architecture, checks it
    /// against `expected`, loads every tensor strictly (none missing, none left over).
    pub fn from_store(
        store: &TensorStore,
        expected: Option<&str>,
        device: &B::Device,
    ) -> Result<Self> {
        let config = detect_config(store)?;
        if let Some(expected) = expected {
            let wanted = ClipConfig::preset(expected)
                .map(|c| c.name)
                .unwrap_or_else(|| expected.to_string());
            if wanted != config.name {
                return Err(ClipError::ArchitectureMismatch {
                    file: store.file().to_path_buf(),
                    expected: expected.to_string(),
                    found: config.name.clone(),
                });
            }
        }
        let clip = Self::load(store, &config, device)?;
        store.ensure_all_used()?;
        Ok(clip)
    }

    /// Builds `config`'s modules from `store` (no check for left-over tensors).
    pub fn load(store: &TensorStore, config: &ClipConfig, device: &B::Device) -> Result<Self> {
        let visual =
            match &config.vision {
                VisionConfig::ModifiedResnet(c) => VisionTower::ModifiedResNet(
                    ModifiedResNet::load(store, "visual", c, config.embed_dim, device)?,
                ),
                VisionConfig::Convnext(c) => VisionTower::ConvNext(ConvNext::load(
                    store,
                    "visual",
                    c,
                    config.embed_dim,
                    device,
                )?),
            };
        let text = TextTransformer::load(store, &config.text, config.embed_dim, device)?;
        let logit_scale = f64::from(store.values("logit_scale", &[])?[0])
            .exp()
            .min(100.0);
        Ok(Self {
            visual,
            text,
            logit_scale,
            image_size: config.image_size(),
        })
    }

    /// Multi-scale features of a normalised, 32-divisible `[batch, 3, H, W]` batch.
    pub fn features(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        match &self.visual {
            VisionTower::ModifiedResNet(m) => m.features(pixels),
            VisionTower::ConvNext(m) => m.features(pixels),
        }
    }

    /// [`Clip::features`] by Burn's tensor ops on every backend, never the host kernels the CPU
    /// backends run: the reference those kernels are tested against.
    pub fn features_reference(&self, pixels: Tensor<B, 4>) -> FeatureMaps<B> {
        match &self.visual {
            VisionTower::ModifiedResNet(m) => m.features_reference(pixels),
            VisionTower::ConvNext(m) => m.features_reference(pixels),
        }
    }

    /// Global image embedding (unnormalised) from `res5`, `[batch, embed_dim]`.
    ///
    /// For RN50 the attention pool's positional embedding fixes the grid: `res5` must be
    /// `image_size / 32` square (7x7 for 224 input), as in open_clip.
    pub fn embed_image(&self, res5: Tensor<B, 4>) -> Result<Tensor<B, 2>> {
        match &self.visual {
            VisionTower::ModifiedResNet(m) => {
                let [_, _, h, w] = res5.dims();
                let grid = m.pool_grid();
                if (h, w) != (grid, grid) {
                    return Err(ClipError::InvalidInput(format!(
                        "the RN50 attention pool needs a {grid}x{grid} res5 map (an input of {0}x{0}), got {h}x{w}",
                        grid * 32
                    )));
                }
                Ok(m.embed(res5))
            }
            VisionTower::ConvNext(m) => Ok(m.embed(res5)),
        }
    }

    /// The dense path of CLIP-VIS (SPEC §1): one embedding per mask, pooled from one image's
    /// `res5` `[1, C, H, W]` with binary `masks` `[num_masks, H, W]` at stride 32 (true =
    /// inside). Returns unnormalised `[num_masks, embed_dim]`.
    ///
    /// ConvNeXt averages `res5` inside the mask, then applies the head norm and projection (an
    /// empty mask pools to zero and yields the projected norm bias). RN50 runs CLIP's attention
    /// pool restricted to the mask, with the positional embedding resized bilinearly; an empty
    /// mask yields the zero vector, whose class logits are then 0, as the reference sets them.
    pub fn embed_masks(
        &self,
        res5: Tensor<B, 4>,
        masks: Tensor<B, 3, Bool>,
    ) -> Result<Tensor<B, 2>> {
        let [batch, channels, height, width] = res5.dims();
        let [num_masks, mask_h, mask_w] = masks.dims();
        if batch != 1 || (mask_h, mask_w) != (height, width) {
            return Err(ClipError::InvalidInput(format!(
                "mask pooling takes one image's res5 [1, C, H, W] and masks [N, H, W] of the same size; got res5 {:?} and masks {:?}",
                [batch, channels, height, width],
                [num_masks, mask_h, mask_w]
            )));
        }
        let flat = masks.reshape([num_masks, height * width]);
        Ok(match &self.visual {
            VisionTower::ModifiedResNet(m) => m.embed_masked(res5, flat),
            VisionTower::ConvNext(m) => {
                let weights = flat.float();
                let area = weights.clone().sum_dim(1) + 1e-8;
                let features = res5.reshape([channels, height * width]).transpose();
                m.project(weights.matmul(features) / area)
            }
        })
    }

    /// Text embeddings (unnormalised) of row-major token ids `[batch, columns]`.
    pub fn encode_text(&self, ids: &[u32], columns: usize) -> Result<Tensor<B, 2>> {
        self.text.encode(ids, columns)
    }

    /// Tokenizes `prompts` (open_clip rules) and encodes them: `[prompts.len(), embed_dim]`.
    pub fn encode_prompts<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Tensor<B, 2>> {
        if prompts.is_empty() {
            return Err(ClipError::InvalidInput("no prompts to encode".into()));
        }
        let tokenizer = crate::tokenizer::ClipTokenizer::shared();
        let context = crate::tokenizer::CONTEXT_LENGTH;
        self.encode_text(&tokenizer.tokenize_batch(prompts, context), context)
    }
}

/// Opens a checkpoint for its CLIP towers: CLIP-VIS (detectron2) files keep them under
/// [`CLIP_VIS_PREFIX`], which is then stripped from every key.
pub fn open_clip_store(path: impl AsRef<Path>) -> Result<TensorStore> {
    let store = TensorStore::open(path)?;
    Ok(
        if store.keys().iter().any(|k| k.starts_with(CLIP_VIS_PREFIX)) {
            store.with_prefix(CLIP_VIS_PREFIX)
        } else {
            store
        },
    )
}

/// The architecture of a checkpoint: from clip-vis metadata when present, else by matching
/// the tensor shapes of a known preset.
pub fn detect_config(store: &TensorStore) -> Result<ClipConfig> {
    if let Some(json) = store.metadata().get(CONFIG_METADATA_KEY) {
        return ClipConfig::from_json(json).map_err(|e| ClipError::UnknownArchitecture {
            file: store.file().to_path_buf(),
            reason: format!("metadata `{CONFIG_METADATA_KEY}` is not a valid config: {e}"),
        });
    }
    let has = |key: &str, shape: &[usize]| store.shape(key) == Some(shape);
    if has("visual.conv1.weight", &[32, 3, 3, 3])
        && has("visual.attnpool.c_proj.weight", &[1024, 2048])
        && has("token_embedding.weight", &[49408, 512])
    {
        return Ok(ClipConfig::rn50());
    }
    if has("visual.trunk.stem.0.weight", &[128, 3, 4, 4])
        && has("visual.head.proj.weight", &[640, 1024])
        && has("token_embedding.weight", &[49408, 640])
    {
        return Ok(ClipConfig::convnext_base_w_320());
    }
    let reason = if store.contains("visual.attnpool.positional_embedding")
        || store.contains("visual.trunk.stem.0.weight")
    {
        "its shapes match neither RN50 nor convnext_base_w_320; convert it with `weights-convert --config <json>` to record its architecture"
    } else {
        "no `visual.*` CLIP image-tower tensors found"
    };
    Err(ClipError::UnknownArchitecture {
        file: store.file().to_path_buf(),
        reason: reason.into(),
    })
}
