//! CLIP-VIS's `MultiScaleMaskedTransformerDecoder` (SPEC §4).
//!
//! Learnable queries attend, layer after layer, to the pixel decoder's maps at strides 32, 16,
//! 8 (cycling), each cross-attention restricted to where the previous prediction's mask is on
//! (`sigmoid ≥ 0.5` after resizing it to that level; a query whose mask is empty everywhere
//! attends everywhere). Each layer is post-norm cross-attention → self-attention → FFN. After
//! the learnable queries and after every layer, `decoder_norm` and three heads predict: object
//! logits (`[object, no-object]`), mask logits at stride 4 (mask embedding · `mask_features`) and
//! the mask IoU. Port of `zwq456/CLIP-VIS:clipvis/modeling/transformer_decoder/mask2former_transformer_decoder.py`.

use crate::attention::MultiheadAttention;
use crate::heads::Mlp;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use clip_vis_clip::host;
use clip_vis_clip::nn::{
    is_host_backend, linear_flat, load_linear, resize_bilinear, save_linear, LayerNorm,
};
use clip_vis_clip::weights::join_key;
use clip_vis_clip::{Result, TensorSink, TensorStore};
use clip_vis_pixel_decoder::position_encoding::sine_position_tokens;

/// Number of memory levels the decoder cycles through (strides 32, 16, 8).
const LEVELS: usize = 3;
/// PyTorch `nn.LayerNorm` default epsilon.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Hyper-parameters of the decoder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransformerDecoderConfig {
    /// Query width (256).
    pub hidden_dim: usize,
    /// Attention heads (8).
    pub heads: usize,
    /// FFN hidden width (2048).
    pub ffn_dim: usize,
    /// Learnable queries (100).
    pub num_queries: usize,
    /// Transformer layers: `DEC_LAYERS − 1` (6 for the LVIS models, 9 for COCO/YTVIS ones).
    pub layers: usize,
    /// Channels of `mask_features` (256).
    pub mask_dim: usize,
}

impl TransformerDecoderConfig {
    /// CLIP-VIS's decoder with `layers` transformer layers (SPEC §4).
    pub fn clip_vis(layers: usize) -> Self {
        Self {
            hidden_dim: 256,
            heads: 8,
            ffn_dim: 2048,
            num_queries: 100,
            layers,
            mask_dim: 256,
        }
    }
}

/// One prediction of the heads.
#[derive(Debug, Clone)]
pub struct Prediction<B: Backend> {
    /// `[batch, queries, 2]`: logits of `[object, no-object]`.
    pub object_logits: Tensor<B, 3>,
    /// `[batch, queries, H/4, W/4]`: mask logits at stride 4.
    pub masks: Tensor<B, 4>,
    /// `[batch, queries, 1]`: predicted mask IoU, a probability.
    pub ious: Tensor<B, 3>,
}

/// Everything the decoder predicts for a batch of frames.
#[derive(Debug, Clone)]
pub struct DecoderOutput<B: Backend> {
    /// The last layer's prediction.
    pub last: Prediction<B>,
    /// The earlier predictions, first the learnable queries' (training supervises them all).
    pub aux: Vec<Prediction<B>>,
    /// `[batch, queries, hidden]`: `decoder_norm` of the final queries, used for tracking.
    pub embeds: Tensor<B, 3>,
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    cross_attention: MultiheadAttention<B>,
    cross_norm: LayerNorm<B>,
    self_attention: MultiheadAttention<B>,
    self_norm: LayerNorm<B>,
    linear1: Linear<B>,
    linear2: Linear<B>,
    ffn_norm: LayerNorm<B>,
}

/// The decoder with its heads; checkpoint names as in the comments.
#[derive(Module, Debug)]
pub struct MultiScaleMaskedTransformerDecoder<B: Backend> {
    /// `query_feat.weight`, `[queries, hidden]`: the queries' content.
    query_feat: Param<Tensor<B, 2>>,
    /// `query_embed.weight`, `[queries, hidden]`: the queries' positions.
    query_embed: Param<Tensor<B, 2>>,
    /// `level_embed.weight`, `[3, hidden]`, added to each level's memory.
    level_embed: Param<Tensor<B, 2>>,
    layers: Vec<Layer<B>>,
    decoder_norm: LayerNorm<B>,
    object_embed: Mlp<B>,
    mask_embed: Mlp<B>,
    iou_head: Mlp<B>,
    heads: usize,
}

impl<B: Backend> MultiScaleMaskedTransformerDecoder<B> {
    /// Loads `{key}.*` (CLIP-VIS: `sem_seg_head.predictor`; empty for keys without prefix).
    pub fn load(
        store: &TensorStore,
        key: &str,
        config: &TransformerDecoderConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let k = |name: &str| join_key(key, name);
        let d = config.hidden_dim;
        let norm = |name: String| LayerNorm::load(store, &name, d, LAYER_NORM_EPS, device);
        let layers = (0..config.layers)
            .map(|i| {
                let cross = k(&format!("transformer_cross_attention_layers.{i}"));
                let own = k(&format!("transformer_self_attention_layers.{i}"));
                let ffn = k(&format!("transformer_ffn_layers.{i}"));
                Ok(Layer {
                    cross_attention: MultiheadAttention::load(
                        store,
                        &format!("{cross}.multihead_attn"),
                        d,
                        config.heads,
                        device,
                    )?,
                    cross_norm: norm(format!("{cross}.norm"))?,
                    self_attention: MultiheadAttention::load(
                        store,
                        &format!("{own}.self_attn"),
                        d,
                        config.heads,
                        device,
                    )?,
                    self_norm: norm(format!("{own}.norm"))?,
                    linear1: load_linear(
                        store,
                        &format!("{ffn}.linear1"),
                        d,
                        config.ffn_dim,
                        true,
                        device,
                    )?,
                    linear2: load_linear(
                        store,
                        &format!("{ffn}.linear2"),
                        config.ffn_dim,
                        d,
                        true,
                        device,
                    )?,
                    ffn_norm: norm(format!("{ffn}.norm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embedding = |name: &str, rows: usize| -> Result<Param<Tensor<B, 2>>> {
            Ok(Param::from_tensor(store.tensor(
                &k(name),
                [rows, d],
                device,
            )?))
        };
        Ok(Self {
            query_feat: embedding("query_feat.weight", config.num_queries)?,
            query_embed: embedding("query_embed.weight", config.num_queries)?,
            level_embed: embedding("level_embed.weight", LEVELS)?,
            layers,
            decoder_norm: norm(k("decoder_norm"))?,
            object_embed: Mlp::load(store, &k("object_embed"), d, d, 2, 3, device)?,
            mask_embed: Mlp::load(store, &k("mask_embed"), d, d, config.mask_dim, 3, device)?,
            iou_head: Mlp::load(store, &k("iou_head"), d, d, 1, 3, device)?,
            heads: config.heads,
        })
    }

    /// Writes every parameter under `{key}.*` with the checkpoint's names and layout: the
    /// inverse of [`MultiScaleMaskedTransformerDecoder::load`].
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        let k = |name: &str| join_key(key, name);
        for (i, layer) in self.layers.iter().enumerate() {
            let cross = k(&format!("transformer_cross_attention_layers.{i}"));
            let own = k(&format!("transformer_self_attention_layers.{i}"));
            let ffn = k(&format!("transformer_ffn_layers.{i}"));
            layer
                .cross_attention
                .save(sink, &format!("{cross}.multihead_attn"));
            layer.cross_norm.save(sink, &format!("{cross}.norm"));
            layer.self_attention.save(sink, &format!("{own}.self_attn"));
            layer.self_norm.save(sink, &format!("{own}.norm"));
            save_linear(sink, &format!("{ffn}.linear1"), &layer.linear1);
            save_linear(sink, &format!("{ffn}.linear2"), &layer.linear2);
            layer.ffn_norm.save(sink, &format!("{ffn}.norm"));
        }
        sink.put(k("query_feat.weight"), self.query_feat.val());
        sink.put(k("query_embed.weight"), self.query_embed.val());
        sink.put(k("level_embed.weight"), self.level_embed.val());
        self.decoder_norm.save(sink, &k("decoder_norm"));
        self.object_embed.save(sink, &k("object_embed"));
        self.mask_embed.save(sink, &k("mask_embed"));
        self.iou_head.save(sink, &k("iou_head"));
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Decodes one batch: every prediction, the auxiliary ones included (training).
    ///
    /// # Shapes
    /// - `multi_scale`: the pixel decoder's maps at strides 32, 16, 8, `[batch, hidden, H_l, W_l]`
    /// - `mask_features`: `[batch, mask_dim, H/4, W/4]`
    pub fn forward(
        &self,
        multi_scale: &[Tensor<B, 4>; 3],
        mask_features: Tensor<B, 4>,
    ) -> DecoderOutput<B> {
        self.decode(multi_scale, mask_features, true)
    }

    /// [`MultiScaleMaskedTransformerDecoder::forward`] for inference: the same `last` and
    /// `embeds`, `aux` left empty.
    ///
    /// Between layers only the attention masks are needed, at the next level's size, so they
    /// are computed there directly: bilinear resizing is linear in the map, hence
    /// `resize(E · F) = E · resize(F)` for mask embeddings `E` and mask features `F`, and the
    /// stride-4 masks (`queries x H/4 x W/4`, then resized) are computed once, for the last
    /// layer, instead of after every layer. The heads other than the mask embedding also run
    /// once. Same result up to f32 reassociation.
    pub fn forward_inference(
        &self,
        multi_scale: &[Tensor<B, 4>; 3],
        mask_features: Tensor<B, 4>,
    ) -> DecoderOutput<B> {
        self.decode(multi_scale, mask_features, false)
    }

    fn decode(
        &self,
        multi_scale: &[Tensor<B, 4>; 3],
        mask_features: Tensor<B, 4>,
        every_prediction: bool,
    ) -> DecoderOutput<B> {
        let device = mask_features.device();
        let [batch, _, _, _] = mask_features.dims();
        let [queries, d] = self.query_feat.dims();
        // Inference on a CPU backend: each level's keys and values are formed once, as host
        // rows, for every layer that attends to it (the same additions as the tensor path).
        let host_memory =
            !every_prediction && is_host_backend::<B>(&device) && !B::ad_enabled(&device);
        // Memory: values carry the level embedding, keys also the sine position. Each level
        // serves several layers: its keys and values are formed once.
        let mut memory = Vec::with_capacity(LEVELS);
        let mut sizes = Vec::with_capacity(LEVELS);
        for (level, map) in multi_scale.iter().enumerate() {
            let [_, _, h, w] = map.dims();
            sizes.push((h, w));
            let embed = self.level_embed.val().slice([level..level + 1, 0..d]);
            let position = sine_position_tokens::<B>(batch, d, h, w, &device);
            memory.push(if host_memory {
                LevelMemory::host(map.clone(), embed, position)
            } else {
                let values =
                    map.clone().reshape([batch, d, h * w]).swap_dims(1, 2) + embed.unsqueeze::<3>();
                LevelMemory::Tensors {
                    keys: values.clone() + position,
                    values,
                }
            });
        }
        let query_pos = self
            .query_embed
            .val()
            .unsqueeze::<3>()
            .expand([batch, queries, d]);
        let mut output = self
            .query_feat
            .val()
            .unsqueeze::<3>()
            .expand([batch, queries, d]);

        // Inference: the mask features at each level's size, for the attention masks.
        let level_features: Vec<Tensor<B, 3>> = if every_prediction {
            Vec::new()
        } else {
            let [_, mask_dim, _, _] = mask_features.dims();
            sizes
                .iter()
                .map(|&(h, w)| {
                    resize_bilinear(mask_features.clone(), [h, w]).reshape([batch, mask_dim, h * w])
                })
                .collect()
        };
        let mut predictions = Vec::with_capacity(self.layers.len() + 1);
        let mut blocked = if every_prediction {
            let (first, blocked) =
                self.predict(output.clone(), mask_features.clone(), Some(sizes[0]));
            predictions.push(first);
            blocked
        } else {
            Some(self.attention_mask(output.clone(), level_features[0].clone()))
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let level = i % LEVELS;
            let query = output.clone() + query_pos.clone();
            let attended =
                match &memory[level] {
                    LevelMemory::Host { keys, values } => layer
                        .cross_attention
                        .forward_host_memory(query, keys, values, blocked),
                    LevelMemory::Tensors { keys, values } => layer
                        .cross_attention
                        .forward_shared_mask(query, keys.clone(), values.clone(), blocked),
                };
            output = layer.cross_norm.forward(output + attended);
            let with_position = output.clone() + query_pos.clone();
            let attended = layer.self_attention.forward_shared_mask(
                with_position.clone(),
                with_position,
                output.clone(),
                None,
            );
            output = layer.self_norm.forward(output + attended);
            let hidden = linear_flat(
                &layer.linear2,
                relu(linear_flat(&layer.linear1, output.clone())),
            );
            output = layer.ffn_norm.forward(output + hidden);
            let next_level = (i + 1) % LEVELS;
            // The last layer's prediction needs no attention mask for a next layer.
            let last_layer = i + 1 == self.layers.len();
            if every_prediction || last_layer {
                let target = (!last_layer).then_some(sizes[next_level]);
                let (prediction, next) =
                    self.predict(output.clone(), mask_features.clone(), target);
                predictions.push(prediction);
                blocked = next;
            } else {
                blocked =
                    Some(self.attention_mask(output.clone(), level_features[next_level].clone()));
            }
        }
        if predictions.is_empty() {
            // No transformer layer: the learnable queries' prediction is the last one.
            let (first, _) = self.predict(output.clone(), mask_features.clone(), None);
            predictions.push(first);
        }
        let last = predictions
            .pop()
            .expect("at least the learnable queries' prediction");
        DecoderOutput {
            last,
            aux: predictions,
            embeds: self.decoder_norm.forward(output),
        }
    }

    /// The heads on `decoder_norm(output)`, and, where a next layer needs it, the attention
    /// mask at its `target` size: `[batch, queries, h·w]` (the same for every head), true =
    /// blocked.
    fn predict(
        &self,
        output: Tensor<B, 3>,
        mask_features: Tensor<B, 4>,
        target: Option<(usize, usize)>,
    ) -> (Prediction<B>, Option<Tensor<B, 3, Bool>>) {
        let decoded = self.decoder_norm.forward(output);
        let [batch, queries, _] = decoded.dims();
        let [_, mask_dim, h4, w4] = mask_features.dims();
        let object_logits = self.object_embed.forward(decoded.clone());
        let embedding = self.mask_embed.forward(decoded.clone());
        let masks = embedding
            .matmul(mask_features.reshape([batch, mask_dim, h4 * w4]))
            .reshape([batch, queries, h4, w4]);
        let ious = sigmoid(self.iou_head.forward(decoded));
        let blocked = target.map(|(h, w)| {
            let resized = resize_bilinear(masks.clone(), [h, w]);
            self.blocked_from_logits(resized.reshape([batch, queries, h * w]))
        });
        (
            Prediction {
                object_logits,
                masks,
                ious,
            },
            blocked,
        )
    }

    /// The attention mask from `decoder_norm(output)` and the mask features already at the
    /// target level's size (`[batch, mask_dim, h·w]`), without the other heads.
    fn attention_mask(
        &self,
        output: Tensor<B, 3>,
        level_features: Tensor<B, 3>,
    ) -> Tensor<B, 3, Bool> {
        let embedding = self.mask_embed.forward(self.decoder_norm.forward(output));
        self.blocked_from_logits(embedding.matmul(level_features))
    }

    /// `[batch, queries, h·w]` mask logits at a level → the attention mask of every head,
    /// true where `sigmoid < 0.5` (blocked), except that a query blocked everywhere attends
    /// everywhere instead.
    fn blocked_from_logits(&self, logits: Tensor<B, 3>) -> Tensor<B, 3, Bool> {
        let [batch, queries, tokens] = logits.dims();
        let device = logits.device();
        if is_host_backend::<B>(&device) && !B::ad_enabled(&device) {
            // One pass over the host values instead of six tensor ops.
            let logits = clip_vis_clip::host::values(logits);
            let mut blocked: Vec<bool> = logits.iter().map(|&x| sigmoid_f32(x) < 0.5).collect();
            for row in blocked.chunks_exact_mut(tokens) {
                if row.iter().all(|&b| b) {
                    row.fill(false);
                }
            }
            return Tensor::from_data(TensorData::new(blocked, [batch, queries, tokens]), &device);
        }
        let blocked = sigmoid(logits).lower_elem(0.5);
        let everywhere = blocked.clone().int().sum_dim(2).equal_elem(tokens as i64);
        blocked.bool_and(everywhere.bool_not().expand([batch, queries, tokens]))
    }
}

/// One level's memory for the cross-attentions that read it: `[batch, tokens, d]` values (the
/// map's pixels plus the level embedding) and keys (values plus the sine position).
enum LevelMemory<B: Backend> {
    /// As tensors (GPU backends, autodiff, every prediction).
    Tensors {
        keys: Tensor<B, 3>,
        values: Tensor<B, 3>,
    },
    /// As host rows (inference on a CPU backend).
    Host { keys: Vec<f32>, values: Vec<f32> },
}

impl<B: Backend> LevelMemory<B> {
    /// Host rows from the level's map `[batch, d, h, w]`, its embedding `[1, d]` and the
    /// position `[batch, h·w, d]`: the same additions as the tensor form.
    fn host(map: Tensor<B, 4>, embed: Tensor<B, 2>, position: Tensor<B, 3>) -> Self {
        let [batch, d, h, w] = map.dims();
        let mut values = host::to_channels_last(&host::values(map), batch, d, h * w);
        let embed = host::values(embed);
        for row in values.chunks_exact_mut(d) {
            host::add_in_place(row, &embed);
        }
        let mut keys = host::values(position);
        host::add_in_place(&mut keys, &values);
        Self::Host { keys, values }
    }
}

/// PyTorch's CPU `sigmoid` in f32: `1 / (1 + e^-x)`.
fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
