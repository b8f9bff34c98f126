//! One training step's losses with the CLIP encoder frozen *outside* the autodiff graph.
//!
//! The CLIP towers live on the inner (non-autodiff) backend: their features are computed there
//! and enter the graph as constants, so a step stores no activations for the encoder and no
//! CLIP parameter can receive a gradient (it has none to receive: it is not an autodiff
//! tensor). Only the pixel decoder and the transformer decoder with its heads train.

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use clip_vis_clip::model::CLIP_VIS_PREFIX;
use clip_vis_clip::{Clip, TensorSink, TensorStore};
use clip_vis_model::{ClipVis, ClipVisConfig};
use clip_vis_pixel_decoder::MsDeformAttnPixelDecoder;
use clip_vis_transformer_decoder::MultiScaleMaskedTransformerDecoder;

use crate::criterion::{Criterion, LossTerms, Targets};
use crate::points::PointSource;
use crate::{Result, TrainError};

/// The trained part of CLIP-VIS: what the optimiser updates.
#[derive(Module, Debug)]
pub struct TrainableHead<B: burn::tensor::backend::Backend> {
    /// The pixel decoder.
    pub pixel_decoder: MsDeformAttnPixelDecoder<B>,
    /// The transformer decoder and its heads.
    pub transformer_decoder: MultiScaleMaskedTransformerDecoder<B>,
}

impl<B: burn::tensor::backend::Backend> TrainableHead<B> {
    /// The losses of the decoders on CLIP's `res2..res5` (however they were computed).
    pub fn losses(
        &self,
        features: [Tensor<B, 4>; 4],
        targets: &Targets<B>,
        criterion: &Criterion,
        source: &mut dyn PointSource,
    ) -> Result<LossTerms<B>> {
        self.losses_normalized(
            features,
            targets,
            criterion,
            Criterion::num_masks(targets),
            source,
        )
    }

    /// [`TrainableHead::losses`] with the mask losses divided by `num_masks` (data-parallel
    /// training: the count over all ranks over the number of ranks).
    pub fn losses_normalized(
        &self,
        features: [Tensor<B, 4>; 4],
        targets: &Targets<B>,
        criterion: &Criterion,
        num_masks: f64,
        source: &mut dyn PointSource,
    ) -> Result<LossTerms<B>> {
        let [res2, res3, res4, res5] = features;
        let pixel = self.pixel_decoder.forward(res2, res3, res4, res5);
        let decoder = self
            .transformer_decoder
            .forward(&pixel.multi_scale_features, pixel.mask_features);
        criterion.forward_normalized(&decoder.last, &decoder.aux, targets, num_masks, source)
    }

    /// Writes both decoders under their detectron2 names (`sem_seg_head.*`), bit-exact.
    pub fn save(&self, sink: &mut TensorSink) {
        clip_vis_model::save_decoders(sink, &self.pixel_decoder, &self.transformer_decoder);
    }

    /// Loads both decoders from `store` (detectron2 names).
    pub fn load(store: &TensorStore, config: &ClipVisConfig, device: &B::Device) -> Result<Self> {
        let (pixel_decoder, transformer_decoder) =
            clip_vis_model::load_decoders(store, config, device)?;
        Ok(Self {
            pixel_decoder,
            transformer_decoder,
        })
    }
}

/// CLIP's `res2..res5` of normalised, padded `pixels` `[batch, 3, H, W]` (H, W multiples of
/// 32), computed on the inner backend and lifted into the autodiff graph as constants: no
/// encoder activation is kept for the backward pass.
pub fn frozen_features<B: AutodiffBackend>(
    clip: &Clip<B::InnerBackend>,
    pixels: Tensor<B::InnerBackend, 4>,
) -> Result<[Tensor<B, 4>; 4]> {
    let [batch, channels, height, width] = pixels.dims();
    if channels != 3 || batch == 0 || height % 32 != 0 || width % 32 != 0 {
        return Err(TrainError::InvalidInput(format!(
            "a batch of {batch} images {channels}x{height}x{width}: expected 3 channels and sides that are multiples of 32"
        )));
    }
    let features = clip.features(pixels);
    let lift = |t: Tensor<B::InnerBackend, 4>| Tensor::<B, 4>::from_inner(t);
    Ok([
        lift(features.res2),
        lift(features.res3),
        lift(features.res4),
        lift(features.res5),
    ])
}

/// CLIP-VIS set up for training: frozen CLIP on the inner backend, trainable head on `B`.
#[derive(Debug)]
pub struct TrainingModel<B: AutodiffBackend> {
    /// The frozen CLIP towers (no autodiff).
    pub clip: Clip<B::InnerBackend>,
    /// The trainable decoders.
    pub head: TrainableHead<B>,
}

impl<B: AutodiffBackend> TrainingModel<B> {
    /// Builds the model of `config` from `store` (detectron2 key names, as
    /// [`ClipVis::load`] reads them).
    pub fn load(store: &TensorStore, config: &ClipVisConfig, device: &B::Device) -> Result<Self> {
        let clip = store.scoped(CLIP_VIS_PREFIX, |s| {
            Clip::<B::InnerBackend>::load(s, &config.clip, device)
        })?;
        Ok(Self {
            clip,
            head: TrainableHead::load(store, config, device)?,
        })
    }

    /// The losses of one batch: normalised, padded `pixels` `[batch, 3, H, W]` (H, W multiples
    /// of 32) on the inner backend and each image's instance masks at `H × W`. Back-propagate
    /// `total` and hand the gradients of [`TrainingModel::head`] to an optimiser.
    pub fn losses(
        &self,
        pixels: Tensor<B::InnerBackend, 4>,
        targets: &Targets<B>,
        criterion: &Criterion,
        source: &mut dyn PointSource,
    ) -> Result<LossTerms<B>> {
        let features = frozen_features::<B>(&self.clip, pixels)?;
        self.head.losses(features, targets, criterion, source)
    }

    /// The inference model with the current weights (for validation during training).
    pub fn to_inference(&self) -> ClipVis<B::InnerBackend> {
        let head = self.head.valid();
        ClipVis {
            clip: self.clip.clone(),
            pixel_decoder: head.pixel_decoder,
            transformer_decoder: head.transformer_decoder,
        }
    }
}
