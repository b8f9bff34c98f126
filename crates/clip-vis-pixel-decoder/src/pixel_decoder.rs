//! Mask2Former's `MSDeformAttnPixelDecoder` as CLIP-VIS configures it (SPEC §3).
//!
//! Port of `facebookresearch/Mask2Former:mask2former/modeling/pixel_decoder/msdeformattn.py`:
//! 1x1 convolution + GroupNorm projections of res5, res4, res3 (in that order), a post-norm
//! deformable-attention encoder over those three levels with sine positional encodings plus a
//! learned level embedding, one FPN step to stride 4 on res2, and the `mask_features` 1x1
//! convolution.

use crate::group_norm::GroupNorm;
use crate::host::HostEncoderLayer;
use crate::ms_deform_attn::{MsDeformAttn, MsDeformAttnConfig};
use crate::position_encoding::sine_position_tokens;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clip_vis_clip::host::Conv as HostConv;
use clip_vis_clip::host::{self, RowLinear, RowNorm};
use clip_vis_clip::nn::{
    is_host_backend, linear_flat, load_linear, resize_bilinear, save_linear, Conv2d, ConvSpec,
    LayerNorm,
};
use clip_vis_clip::weights::join_key;
use clip_vis_clip::{Result, TensorSink, TensorStore};

/// Hyper-parameters of the pixel decoder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PixelDecoderConfig {
    /// Channels of `res2, res3, res4, res5` (the CLIP tower's, SPEC §1).
    pub in_channels: [usize; 4],
    /// Width of every internal map (`conv_dim`, 256).
    pub conv_dim: usize,
    /// Channels of `mask_features` (256).
    pub mask_dim: usize,
    /// Attention heads (8).
    pub heads: usize,
    /// Sampling points per head and level (4).
    pub points: usize,
    /// Encoder layers (6).
    pub encoder_layers: usize,
    /// Hidden width of the encoder FFN (1024).
    pub ffn_dim: usize,
    /// GroupNorm groups (32).
    pub groups: usize,
}

impl PixelDecoderConfig {
    /// The configuration of CLIP-VIS for a tower with these `res2..res5` channels (SPEC §3).
    pub fn clip_vis(in_channels: [usize; 4]) -> Self {
        Self {
            in_channels,
            conv_dim: 256,
            mask_dim: 256,
            heads: 8,
            points: 4,
            encoder_layers: 6,
            ffn_dim: 1024,
            groups: 32,
        }
    }

    fn attention(&self) -> MsDeformAttnConfig {
        MsDeformAttnConfig {
            d_model: self.conv_dim,
            heads: self.heads,
            levels: ENCODER_LEVELS,
            points: self.points,
        }
    }
}

/// The encoder runs on res5, res4, res3.
const ENCODER_LEVELS: usize = 3;

/// 1x1 (or 3x3) convolution followed by GroupNorm.
#[derive(Module, Debug)]
struct ConvNorm<B: Backend> {
    conv: Conv2d<B>,
    norm: GroupNorm<B>,
}

impl<B: Backend> ConvNorm<B> {
    fn save(&self, sink: &mut TensorSink, conv: &str, norm: &str) {
        self.conv.save(sink, conv);
        self.norm.save(sink, norm);
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.norm.forward(self.conv.forward(x))
    }
}

/// `src = LN1(src + MSDA(src + pos)); src = LN2(src + W2·ReLU(W1·src))`.
#[derive(Module, Debug)]
struct EncoderLayer<B: Backend> {
    self_attn: MsDeformAttn<B>,
    norm1: LayerNorm<B>,
    linear1: Linear<B>,
    linear2: Linear<B>,
    norm2: LayerNorm<B>,
}

impl<B: Backend> EncoderLayer<B> {
    /// Host copies of the weights (taken at every call: always the current parameters).
    fn host(&self) -> HostEncoderLayer {
        HostEncoderLayer {
            attention: self.self_attn.host(),
            norm1: RowNorm::from_module(&self.norm1),
            linear1: RowLinear::from_module(&self.linear1),
            linear2: RowLinear::from_module(&self.linear2),
            norm2: RowNorm::from_module(&self.norm2),
        }
    }
}

/// Outputs of the pixel decoder.
#[derive(Debug, Clone)]
pub struct PixelDecoderOutput<B: Backend> {
    /// `[batch, mask_dim, H/4, W/4]`: what query embeddings are multiplied with.
    pub mask_features: Tensor<B, 4>,
    /// Encoder outputs at strides 32, 16, 8 (in that order), `[batch, conv_dim, H_l, W_l]`.
    pub multi_scale_features: [Tensor<B, 4>; 3],
}

/// The pixel decoder; field names follow the checkpoint (`input_proj`, `transformer`,
/// `adapter_1`, `layer_1`, `mask_features`).
#[derive(Module, Debug)]
pub struct MsDeformAttnPixelDecoder<B: Backend> {
    /// Projections of res5, res4, res3.
    input_proj: Vec<ConvNorm<B>>,
    /// `transformer.level_embed`, `[3, conv_dim]`.
    level_embed: Param<Tensor<B, 2>>,
    layers: Vec<EncoderLayer<B>>,
    adapter_1: ConvNorm<B>,
    layer_1: ConvNorm<B>,
    mask_features: Conv2d<B>,
    conv_dim: usize,
}

impl<B: Backend> MsDeformAttnPixelDecoder<B> {
    /// Loads the decoder from `{key}.*` (CLIP-VIS: `sem_seg_head.pixel_decoder`; empty for keys
    /// without prefix).
    pub fn load(
        store: &TensorStore,
        key: &str,
        config: &PixelDecoderConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let k = |name: &str| join_key(key, name);
        let d = config.conv_dim;
        let conv_norm = |conv: String, norm: String, spec: ConvSpec| -> Result<ConvNorm<B>> {
            Ok(ConvNorm {
                conv: Conv2d::load(store, &conv, spec, device)?,
                norm: GroupNorm::load(store, &norm, spec.channels_out, config.groups, device)?,
            })
        };
        // res5, res4, res3: the deepest level first.
        let input_proj = (0..ENCODER_LEVELS)
            .map(|i| {
                let channels = config.in_channels[3 - i];
                conv_norm(
                    k(&format!("input_proj.{i}.0")),
                    k(&format!("input_proj.{i}.1")),
                    ConvSpec::new(channels, d, 1).bias(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let layers = (0..config.encoder_layers)
            .map(|i| {
                let layer = k(&format!("transformer.encoder.layers.{i}"));
                Ok(EncoderLayer {
                    self_attn: MsDeformAttn::load(
                        store,
                        &format!("{layer}.self_attn"),
                        &config.attention(),
                        device,
                    )?,
                    norm1: LayerNorm::load(store, &format!("{layer}.norm1"), d, 1e-5, device)?,
                    linear1: load_linear(
                        store,
                        &format!("{layer}.linear1"),
                        d,
                        config.ffn_dim,
                        true,
                        device,
                    )?,
                    linear2: load_linear(
                        store,
                        &format!("{layer}.linear2"),
                        config.ffn_dim,
                        d,
                        true,
                        device,
                    )?,
                    norm2: LayerNorm::load(store, &format!("{layer}.norm2"), d, 1e-5, device)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            input_proj,
            level_embed: Param::from_tensor(store.tensor(
                &k("transformer.level_embed"),
                [ENCODER_LEVELS, d],
                device,
            )?),
            layers,
            adapter_1: conv_norm(
                k("adapter_1"),
                k("adapter_1.norm"),
                ConvSpec::new(config.in_channels[0], d, 1),
            )?,
            layer_1: conv_norm(
                k("layer_1"),
                k("layer_1.norm"),
                ConvSpec::new(d, d, 3).padding(1),
            )?,
            mask_features: Conv2d::load(
                store,
                &k("mask_features"),
                ConvSpec::new(d, config.mask_dim, 1).bias(),
                device,
            )?,
            conv_dim: d,
        })
    }

    /// Writes every parameter under `{key}.*` with the checkpoint's names and layout: the
    /// inverse of [`MsDeformAttnPixelDecoder::load`] (a trained decoder saved this way loads
    /// back bit for bit).
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        let k = |name: &str| join_key(key, name);
        for (i, projection) in self.input_proj.iter().enumerate() {
            projection.save(
                sink,
                &k(&format!("input_proj.{i}.0")),
                &k(&format!("input_proj.{i}.1")),
            );
        }
        sink.put(k("transformer.level_embed"), self.level_embed.val());
        for (i, layer) in self.layers.iter().enumerate() {
            let prefix = k(&format!("transformer.encoder.layers.{i}"));
            layer.self_attn.save(sink, &format!("{prefix}.self_attn"));
            layer.norm1.save(sink, &format!("{prefix}.norm1"));
            save_linear(sink, &format!("{prefix}.linear1"), &layer.linear1);
            save_linear(sink, &format!("{prefix}.linear2"), &layer.linear2);
            layer.norm2.save(sink, &format!("{prefix}.norm2"));
        }
        self.adapter_1
            .save(sink, &k("adapter_1"), &k("adapter_1.norm"));
        self.layer_1.save(sink, &k("layer_1"), &k("layer_1.norm"));
        self.mask_features.save(sink, &k("mask_features"));
    }

    /// Decodes `res2..res5` (`[batch, C_l, H/s_l, W/s_l]`, strides 4, 8, 16, 32).
    ///
    /// On the CPU backends without autodiff the deformable encoder and the FPN run on host buffers
    /// (`crate::host`); elsewhere, and in [`MsDeformAttnPixelDecoder::forward_reference`],
    /// through Burn's tensor ops.
    pub fn forward(
        &self,
        res2: Tensor<B, 4>,
        res3: Tensor<B, 4>,
        res4: Tensor<B, 4>,
        res5: Tensor<B, 4>,
    ) -> PixelDecoderOutput<B> {
        let host = is_host_backend::<B>(&res5.device());
        self.decode(res2, res3, res4, res5, host)
    }

    /// [`MsDeformAttnPixelDecoder::forward`] through Burn's tensor ops on every backend: the
    /// reference of the host encoder.
    pub fn forward_reference(
        &self,
        res2: Tensor<B, 4>,
        res3: Tensor<B, 4>,
        res4: Tensor<B, 4>,
        res5: Tensor<B, 4>,
    ) -> PixelDecoderOutput<B> {
        self.decode(res2, res3, res4, res5, false)
    }

    fn decode(
        &self,
        res2: Tensor<B, 4>,
        res3: Tensor<B, 4>,
        res4: Tensor<B, 4>,
        res5: Tensor<B, 4>,
        host_encoder: bool,
    ) -> PixelDecoderOutput<B> {
        let device = res5.device();
        let d = self.conv_dim;
        let batch = res5.dims()[0];
        let inputs = [res5, res4, res3];
        let mut shapes = Vec::with_capacity(ENCODER_LEVELS);
        let mut sources = Vec::with_capacity(ENCODER_LEVELS);
        let mut positions = Vec::with_capacity(ENCODER_LEVELS);
        let mut references = Vec::new();
        for (level, (input, projection)) in inputs.into_iter().zip(&self.input_proj).enumerate() {
            let [_, _, h, w] = input.dims();
            shapes.push((h, w));
            let source = projection.forward(input);
            sources.push(source.reshape([batch, d, h * w]).swap_dims(1, 2));
            positions.push(
                sine_position_tokens::<B>(batch, d, h, w, &device)
                    + self
                        .level_embed
                        .val()
                        .slice([level..level + 1, 0..d])
                        .unsqueeze::<3>(),
            );
            // Pixel centres in [0, 1], (x, y).
            for i in 0..h {
                for j in 0..w {
                    references.push((j as f32 + 0.5) / w as f32);
                    references.push((i as f32 + 0.5) / h as f32);
                }
            }
        }
        let source = Tensor::cat(sources, 1);
        let position = Tensor::cat(positions, 1);
        if host_encoder {
            let mut values = host::values(source);
            let position = host::values(position);
            for layer in &self.layers {
                layer
                    .host()
                    .forward(&mut values, &position, &references, batch, &shapes);
            }
            self.fpn_host(&values, batch, &shapes, res2)
        } else {
            let source = self.encode(source, position, references, &shapes);
            self.fpn(source, &shapes, res2)
        }
    }

    /// The tensor-op encoder: `source` and `position` `[batch, tokens, d]`, `references` the
    /// `(x, y)` pixel centres of every token.
    fn encode(
        &self,
        mut source: Tensor<B, 3>,
        position: Tensor<B, 3>,
        references: Vec<f32>,
        shapes: &[(usize, usize)],
    ) -> Tensor<B, 3> {
        let device = source.device();
        let [batch, total, _] = source.dims();
        // The same normalised point on every level (no padding: valid ratios are 1).
        let reference =
            Tensor::<B, 3>::from_data(TensorData::new(references, [1, total, 2]), &device)
                .reshape([1, total, 1, 2])
                .expand([batch, total, ENCODER_LEVELS, 2]);
        for layer in &self.layers {
            let attended = layer.self_attn.forward(
                source.clone() + position.clone(),
                reference.clone(),
                source.clone(),
                shapes,
            );
            source = layer.norm1.forward(source + attended);
            let hidden = linear_flat(
                &layer.linear2,
                relu(linear_flat(&layer.linear1, source.clone())),
            );
            source = layer.norm2.forward(source + hidden);
        }
        source
    }

    /// [`MsDeformAttnPixelDecoder::fpn`] on host buffers: `source` `[batch, tokens, d]`
    /// channels-last from the host encoder.
    fn fpn_host(
        &self,
        source: &[f32],
        batch: usize,
        shapes: &[(usize, usize)],
        res2: Tensor<B, 4>,
    ) -> PixelDecoderOutput<B> {
        let device = res2.device();
        let d = self.conv_dim;
        let total: usize = shapes.iter().map(|(h, w)| h * w).sum();
        // Each level's tokens of every batch item, `[batch, h·w, d]`.
        let mut start = 0;
        let levels: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(h, w)| {
                let mut level = Vec::with_capacity(batch * h * w * d);
                for b in 0..batch {
                    let first = (b * total + start) * d;
                    level.extend_from_slice(&source[first..first + h * w * d]);
                }
                start += h * w;
                level
            })
            .collect();
        let to_tensor = |x: &[f32], (h, w): (usize, usize)| {
            let channels = x.len() / (batch * h * w);
            let planar = host::to_channels_first(x, batch, h * w, channels);
            Tensor::<B, 4>::from_data(TensorData::new(planar, [batch, channels, h, w]), &device)
        };
        let [_, c2, h2, w2] = res2.dims();
        let res2 = host::to_channels_last(&host::values(res2), batch, c2, h2 * w2);
        let (mut x, _, _) = HostConv::from_module(&self.adapter_1.conv).forward(
            &res2,
            (batch, h2, w2),
            None,
            false,
        );
        self.adapter_1.norm.host().apply(&mut x, batch, false);
        let (h, w) = shapes[ENCODER_LEVELS - 1];
        let upsampled = host::resize_bilinear_channels_last(
            &levels[ENCODER_LEVELS - 1],
            (batch, h, w, d),
            (h2, w2),
        );
        host::add_in_place(&mut x, &upsampled);
        let (mut x, _, _) =
            HostConv::from_module(&self.layer_1.conv).forward(&x, (batch, h2, w2), None, false);
        self.layer_1.norm.host().apply(&mut x, batch, true);
        let (mask_features, _, _) =
            HostConv::from_module(&self.mask_features).forward(&x, (batch, h2, w2), None, false);
        let maps: Vec<Tensor<B, 4>> = levels
            .iter()
            .zip(shapes)
            .map(|(level, &shape)| to_tensor(level, shape))
            .collect();
        let [m0, m1, m2]: [Tensor<B, 4>; 3] = maps.try_into().expect("three encoder levels");
        PixelDecoderOutput {
            mask_features: to_tensor(&mask_features, (h2, w2)),
            multi_scale_features: [m0, m1, m2],
        }
    }

    /// The encoder's levels as maps, and the FPN level at stride 4 with the mask features.
    fn fpn(
        &self,
        source: Tensor<B, 3>,
        shapes: &[(usize, usize)],
        res2: Tensor<B, 4>,
    ) -> PixelDecoderOutput<B> {
        let [batch, _, d] = source.dims();
        let mut start = 0;
        let maps: Vec<Tensor<B, 4>> = shapes
            .iter()
            .map(|&(h, w)| {
                let map = source
                    .clone()
                    .slice([0..batch, start..start + h * w, 0..d])
                    .swap_dims(1, 2)
                    .reshape([batch, d, h, w]);
                start += h * w;
                map
            })
            .collect();
        let [_, _, h2, w2] = res2.dims();
        // Differentiable on every backend (the GPU backends lack bilinear backward).
        let upsampled = resize_bilinear(maps[ENCODER_LEVELS - 1].clone(), [h2, w2]);
        let fpn = relu(
            self.layer_1
                .forward(self.adapter_1.forward(res2) + upsampled),
        );
        let [m0, m1, m2]: [Tensor<B, 4>; 3] = maps.try_into().expect("three encoder levels");
        PixelDecoderOutput {
            mask_features: self.mask_features.forward(fpn),
            multi_scale_features: [m0, m1, m2],
        }
    }
}
