//! The assembled CLIP-VIS model: frozen CLIP image tower → deformable-attention pixel decoder →
//! masked-attention transformer decoder with object, mask and IoU heads (SPEC §0–4), and
//! per-image inference.
//!
//! Weights come from one file holding everything under the detectron2 names CLIP-VIS uses:
//! `backbone.clip_model.*` (open_clip keys), `sem_seg_head.pixel_decoder.*`,
//! `sem_seg_head.predictor.*`. The architecture, the decoder's layer count included, is read
//! from the file's metadata ([`CONFIG_METADATA_KEY`]) or from its tensors, and the two must
//! agree: a layer count that differs between training and testing is the Python original's most
//! common reproduction failure.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_vis_clip::model::{detect_config, CLIP_VIS_PREFIX};
use clip_vis_clip::nn::resize_bilinear;
use clip_vis_clip::preprocess::{normalize_and_pad, RgbImage};
use clip_vis_clip::{Clip, ClipConfig, ClipError, FeatureMaps, TensorSink, TensorStore};
use clip_vis_pixel_decoder::{MsDeformAttnPixelDecoder, PixelDecoderConfig};
use clip_vis_transformer_decoder::{
    DecoderOutput, MultiScaleMaskedTransformerDecoder, TransformerDecoderConfig,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Safetensors metadata key holding the JSON of a [`ClipVisConfig`].
pub const CONFIG_METADATA_KEY: &str = "clip_vis.model_config";
/// Prefix of the pixel decoder's tensors.
pub const PIXEL_DECODER_PREFIX: &str = "sem_seg_head.pixel_decoder";
/// Prefix of the transformer decoder's tensors.
pub const PREDICTOR_PREFIX: &str = "sem_seg_head.predictor";

/// Errors of the assembled model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// From the CLIP towers or the shared weight loading (names the file and key).
    #[error(transparent)]
    Clip(#[from] ClipError),
    /// The file has no tensors of a part of the model.
    #[error("{}: no `{prefix}.*` tensors: not a CLIP-VIS checkpoint (an open_clip file holds only the CLIP towers)", file.display())]
    MissingPart {
        /// The file.
        file: PathBuf,
        /// The missing part's key prefix.
        prefix: &'static str,
    },
    /// The configured decoder depth disagrees with the tensors.
    #[error("{}: the config says {configured} decoder layers, the tensors have {found}", file.display())]
    LayerCountMismatch {
        /// The file.
        file: PathBuf,
        /// Layers in the config.
        configured: usize,
        /// Layers in the tensors.
        found: usize,
    },
    /// The metadata config is not valid.
    #[error("{}: metadata `{CONFIG_METADATA_KEY}` is not a valid config: {message}", file.display())]
    Config {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An unusable input.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

/// The three parts' configurations.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClipVisConfig {
    /// The frozen CLIP model.
    pub clip: ClipConfig,
    /// The pixel decoder.
    pub pixel_decoder: PixelDecoderConfig,
    /// The transformer decoder.
    pub transformer_decoder: TransformerDecoderConfig,
}

impl ClipVisConfig {
    /// The R50 model trained on LVIS (`DEC_LAYERS 7`: 6 transformer layers).
    pub fn rn50_lvis() -> Self {
        Self::for_clip(ClipConfig::rn50(), 6)
    }

    /// The ConvNeXt-B model trained on LVIS (6 transformer layers).
    pub fn convnext_b_lvis() -> Self {
        Self::for_clip(ClipConfig::convnext_base_w_320(), 6)
    }

    /// CLIP-VIS's decoders on top of `clip`, with `layers` transformer layers (6 for the LVIS
    /// models, 9 for the COCO/YTVIS ones).
    pub fn for_clip(clip: ClipConfig, layers: usize) -> Self {
        let pixel_decoder = PixelDecoderConfig::clip_vis(clip.feature_channels());
        Self {
            clip,
            pixel_decoder,
            transformer_decoder: TransformerDecoderConfig::clip_vis(layers),
        }
    }

    /// A CLIP-VIS small enough to train and run a video in seconds on a laptop CPU: the tiny
    /// CLIP ([`ClipConfig::tiny`]), a 2-layer pixel decoder and a 3-layer decoder of width 32
    /// with 20 queries. The built-in demo model and the tests use it.
    pub fn tiny() -> Self {
        let clip = ClipConfig::tiny();
        let in_channels = clip.feature_channels();
        Self {
            clip,
            pixel_decoder: PixelDecoderConfig {
                in_channels,
                conv_dim: 32,
                mask_dim: 32,
                heads: 4,
                points: 2,
                encoder_layers: 2,
                ffn_dim: 64,
                groups: 8,
            },
            transformer_decoder: TransformerDecoderConfig {
                hidden_dim: 32,
                heads: 4,
                ffn_dim: 64,
                num_queries: 20,
                layers: 3,
                mask_dim: 32,
            },
        }
    }

    /// JSON for a weights file's metadata.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ClipVisConfig always serialises")
    }
}

/// The metadata of a clip-vis weights file of `config`: the model config (layer count
/// included) and the CLIP config, so that [`ClipVis::from_file`] needs no flag.
pub fn weights_metadata(config: &ClipVisConfig) -> HashMap<String, String> {
    HashMap::from([
        (CONFIG_METADATA_KEY.to_string(), config.to_json()),
        (
            clip_vis_clip::config::CONFIG_METADATA_KEY.to_string(),
            config.clip.to_json(),
        ),
    ])
}

/// Reads both decoders from their detectron2 prefixes ([`PIXEL_DECODER_PREFIX`],
/// [`PREDICTOR_PREFIX`]) of `store`: the trainable part of CLIP-VIS.
pub fn load_decoders<B: Backend>(
    store: &TensorStore,
    config: &ClipVisConfig,
    device: &B::Device,
) -> Result<(
    MsDeformAttnPixelDecoder<B>,
    MultiScaleMaskedTransformerDecoder<B>,
)> {
    Ok((
        MsDeformAttnPixelDecoder::load(store, PIXEL_DECODER_PREFIX, &config.pixel_decoder, device)?,
        MultiScaleMaskedTransformerDecoder::load(
            store,
            PREDICTOR_PREFIX,
            &config.transformer_decoder,
            device,
        )?,
    ))
}

/// Writes both decoders under their detectron2 prefixes ([`PIXEL_DECODER_PREFIX`],
/// [`PREDICTOR_PREFIX`]); with the CLIP tensors under [`CLIP_VIS_PREFIX`] this is a complete
/// CLIP-VIS weights file.
pub fn save_decoders<B: Backend>(
    sink: &mut TensorSink,
    pixel_decoder: &MsDeformAttnPixelDecoder<B>,
    transformer_decoder: &MultiScaleMaskedTransformerDecoder<B>,
) {
    pixel_decoder.save(sink, PIXEL_DECODER_PREFIX);
    transformer_decoder.save(sink, PREDICTOR_PREFIX);
}

/// Counts `sem_seg_head.predictor.transformer_cross_attention_layers.{i}` layers in a store.
pub fn decoder_layers_in(store: &TensorStore) -> usize {
    let prefix = format!("{PREDICTOR_PREFIX}.transformer_cross_attention_layers.");
    store
        .keys()
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// What the model predicts for one batch of frames.
#[derive(Debug, Clone)]
pub struct FrameOutput<B: Backend> {
    /// The CLIP tower's maps; `res5` is the dense map the classifier pools.
    pub features: FeatureMaps<B>,
    /// Decoder predictions (last and auxiliary) and tracking embeddings.
    pub decoder: DecoderOutput<B>,
}

/// The model.
#[derive(Module, Debug)]
pub struct ClipVis<B: Backend> {
    /// Frozen CLIP.
    pub clip: Clip<B>,
    /// Pixel decoder.
    pub pixel_decoder: MsDeformAttnPixelDecoder<B>,
    /// Transformer decoder and heads.
    pub transformer_decoder: MultiScaleMaskedTransformerDecoder<B>,
}

impl<B: Backend> ClipVis<B> {
    /// Reads a CLIP-VIS weights file (converted, or a released detectron2 `.pth`) and builds
    /// the model it describes, strictly: every tensor of every part used, none missing.
    pub fn from_file(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let store = TensorStore::open(path)?;
        let config = Self::detect_config(&store)?;
        let model = Self::load(&store, &config, device)?;
        store.ensure_all_used()?;
        Ok(model)
    }

    /// The architecture of a store: its metadata config when present, else CLIP from the
    /// tensor shapes and the decoder depth counted; either way checked against the tensors.
    pub fn detect_config(store: &TensorStore) -> Result<ClipVisConfig> {
        let file = store.file().to_path_buf();
        for prefix in [PIXEL_DECODER_PREFIX, PREDICTOR_PREFIX] {
            if !store.keys().iter().any(|k| k.starts_with(prefix)) {
                return Err(ModelError::MissingPart { file, prefix });
            }
        }
        let found = decoder_layers_in(store);
        let config = match store.metadata().get(CONFIG_METADATA_KEY) {
            Some(json) => {
                serde_json::from_str::<ClipVisConfig>(json).map_err(|e| ModelError::Config {
                    file: file.clone(),
                    message: e.to_string(),
                })?
            }
            None => {
                let clip = store.scoped(CLIP_VIS_PREFIX, detect_config)?;
                ClipVisConfig::for_clip(clip, found)
            }
        };
        if config.transformer_decoder.layers != found {
            return Err(ModelError::LayerCountMismatch {
                file,
                configured: config.transformer_decoder.layers,
                found,
            });
        }
        Ok(config)
    }

    /// Builds the parts of `config` from `store` (keys under the detectron2 prefixes).
    pub fn load(store: &TensorStore, config: &ClipVisConfig, device: &B::Device) -> Result<Self> {
        let clip = store.scoped(CLIP_VIS_PREFIX, |s| Clip::load(s, &config.clip, device))?;
        let (pixel_decoder, transformer_decoder) = load_decoders(store, config, device)?;
        Ok(Self {
            clip,
            pixel_decoder,
            transformer_decoder,
        })
    }

    /// Runs a normalised, 32-divisible batch `[batch, 3, H, W]`: every decoder prediction,
    /// the auxiliary ones included.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Result<FrameOutput<B>> {
        self.run(pixels, true)
    }

    /// [`ClipVis::forward`] without the auxiliary predictions (`decoder.aux` empty): the same
    /// last prediction and embeddings for less work
    /// ([`MultiScaleMaskedTransformerDecoder::forward_inference`]).
    pub fn forward_inference(&self, pixels: Tensor<B, 4>) -> Result<FrameOutput<B>> {
        self.run(pixels, false)
    }

    fn run(&self, pixels: Tensor<B, 4>, every_prediction: bool) -> Result<FrameOutput<B>> {
        let [batch, channels, height, width] = pixels.dims();
        if channels != 3 {
            return Err(ModelError::InvalidInput(format!(
                "images must have 3 (RGB) channels, got {channels}"
            )));
        }
        if batch == 0 || height == 0 || width == 0 || height % 32 != 0 || width % 32 != 0 {
            return Err(ModelError::InvalidInput(format!(
                "a batch of {batch} images of {height}x{width}: sides must be non-zero multiples of 32 (pad first)"
            )));
        }
        let features = self.clip.features(pixels);
        let pixel = self.pixel_decoder.forward(
            features.res2.clone(),
            features.res3.clone(),
            features.res4.clone(),
            features.res5.clone(),
        );
        let decoder = if every_prediction {
            self.transformer_decoder
                .forward(&pixel.multi_scale_features, pixel.mask_features)
        } else {
            self.transformer_decoder
                .forward_inference(&pixel.multi_scale_features, pixel.mask_features)
        };
        Ok(FrameOutput { features, decoder })
    }

    /// Segments one image: normalises and pads it, runs the model, and returns the outputs with
    /// the last prediction's mask logits also at the image's own resolution.
    pub fn segment_image(&self, image: &RgbImage, device: &B::Device) -> Result<ImageOutput<B>> {
        let pixels = normalize_and_pad::<B>(image, device);
        let [_, _, padded_h, padded_w] = pixels.dims();
        let frame = self.forward(pixels)?;
        let masks = masks_to_original(
            frame.decoder.last.masks.clone(),
            (padded_h, padded_w),
            (image.height, image.width),
            (image.height, image.width),
        );
        Ok(ImageOutput { frame, masks })
    }
}

/// [`ClipVis::segment_image`]'s result.
#[derive(Debug, Clone)]
pub struct ImageOutput<B: Backend> {
    /// Everything the model computed.
    pub frame: FrameOutput<B>,
    /// `[1, queries, height, width]`: the last prediction's mask logits at the image's size.
    pub masks: Tensor<B, 4>,
}

/// Resizes stride-4 mask logits the way CLIP-VIS writes its outputs (SPEC §6.6): bilinear
/// (`align_corners=False`) to the padded input size, crop to the valid (unpadded) region,
/// bilinear to the original frame size.
pub fn masks_to_original<B: Backend>(
    masks: Tensor<B, 4>,
    padded: (usize, usize),
    valid: (usize, usize),
    original: (usize, usize),
) -> Tensor<B, 4> {
    let [batch, queries, _, _] = masks.dims();
    let upsampled = resize_bilinear(masks, [padded.0, padded.1]);
    let cropped = upsampled.slice([0..batch, 0..queries, 0..valid.0, 0..valid.1]);
    if valid == original {
        cropped
    } else {
        resize_bilinear(cropped, [original.0, original.1])
    }
}
