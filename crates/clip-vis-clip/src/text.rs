//! CLIP's causal text transformer (`encode_text` of
//! `mlfoundations/open_clip:src/open_clip/model.py` @v2.24.0, SPEC §2).
//!
//! Token and positional embeddings, pre-norm residual attention blocks under a causal mask,
//! `ln_final`, the feature at the end-of-text token (the row's largest id, `argmax`), and the
//! `text_projection`. The context is cut at the longest prompt of the batch: under the causal
//! mask no position before EOT sees a later one, so the result is exact and the work shrinks
//! with the prompt length instead of always paying for 77 positions.

use crate::config::{TextActivation, TextConfig};
use crate::error::{ClipError, Result};
use crate::nn::{gelu, linear_flat, load_linear, LayerNorm};
use crate::weights::TensorStore;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::Backend;
use burn::tensor::module::{attention, embedding};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};

/// PyTorch `nn.LayerNorm` default epsilon, used throughout the text tower.
const LAYER_NORM_EPS: f64 = 1e-5;

/// `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct ResidualAttentionBlock<B: Backend> {
    ln_1: LayerNorm<B>,
    /// Packed `in_proj` as one `[width, 3 * width]` linear (q, k, v in that order).
    in_proj: Linear<B>,
    out_proj: Linear<B>,
    ln_2: LayerNorm<B>,
    c_fc: Linear<B>,
    c_proj: Linear<B>,
    heads: usize,
    quick_gelu: bool,
}

impl<B: Backend> ResidualAttentionBlock<B> {
    fn load(
        store: &TensorStore,
        key: &str,
        config: &TextConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let k = |name: &str| format!("{key}.{name}");
        let width = config.width;
        let in_proj = Linear {
            weight: Param::from_tensor(store.linear_weight(
                &k("attn.in_proj_weight"),
                width,
                3 * width,
                device,
            )?),
            bias: Some(Param::from_tensor(store.tensor(
                &k("attn.in_proj_bias"),
                [3 * width],
                device,
            )?)),
        };
        Ok(Self {
            ln_1: LayerNorm::load(store, &k("ln_1"), width, LAYER_NORM_EPS, device)?,
            in_proj,
            out_proj: load_linear(store, &k("attn.out_proj"), width, width, true, device)?,
            ln_2: LayerNorm::load(store, &k("ln_2"), width, LAYER_NORM_EPS, device)?,
            c_fc: load_linear(store, &k("mlp.c_fc"), width, 4 * width, true, device)?,
            c_proj: load_linear(store, &k("mlp.c_proj"), 4 * width, width, true, device)?,
            heads: config.heads,
            quick_gelu: config.activation == TextActivation::QuickGelu,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, length, width] = x.dims();
        let head_dim = width / self.heads;
        let qkv = linear_flat(&self.in_proj, self.ln_1.forward(x.clone()));
        let qkv = qkv
            .reshape([batch, length, 3, self.heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice([i..i + 1, 0..batch, 0..self.heads, 0..length, 0..head_dim])
                .reshape([batch, self.heads, length, head_dim])
        };
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        let context = attention(part(0), part(1), part(2), None, None, options)
            .swap_dims(1, 2)
            .reshape([batch, length, width]);
        let x = x + linear_flat(&self.out_proj, context);
        let hidden = linear_flat(&self.c_fc, self.ln_2.forward(x.clone()));
        let hidden = if self.quick_gelu {
            hidden.clone() * sigmoid(hidden * 1.702)
        } else {
            gelu(hidden)
        };
        x + linear_flat(&self.c_proj, hidden)
    }
}

/// The text tower: ids `[batch, context]` → embeddings `[batch, embed_dim]`.
#[derive(Module, Debug)]
pub struct TextTransformer<B: Backend> {
    /// `[vocab_size, width]`.
    token_embedding: Param<Tensor<B, 2>>,
    /// `[context_length, width]`.
    positional_embedding: Param<Tensor<B, 2>>,
    resblocks: Vec<ResidualAttentionBlock<B>>,
    ln_final: LayerNorm<B>,
    /// `[width, embed_dim]`, applied as `x @ text_projection`.
    text_projection: Param<Tensor<B, 2>>,
    vocab_size: usize,
    context_length: usize,
}

impl<B: Backend> TextTransformer<B> {
    /// Loads open_clip's root-level text keys (`token_embedding.weight`,
    /// `transformer.resblocks.*`, `ln_final.*`, `text_projection`, `positional_embedding`).
    pub fn load(
        store: &TensorStore,
        config: &TextConfig,
        embed_dim: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let resblocks = (0..config.layers)
            .map(|i| {
                ResidualAttentionBlock::load(
                    store,
                    &format!("transformer.resblocks.{i}"),
                    config,
                    device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: Param::from_tensor(store.tensor(
                "token_embedding.weight",
                [config.vocab_size, config.width],
                device,
            )?),
            positional_embedding: Param::from_tensor(store.tensor(
                "positional_embedding",
                [config.context_length, config.width],
                device,
            )?),
            resblocks,
            ln_final: LayerNorm::load(store, "ln_final", config.width, LAYER_NORM_EPS, device)?,
            text_projection: Param::from_tensor(store.tensor(
                "text_projection",
                [config.width, embed_dim],
                device,
            )?),
            vocab_size: config.vocab_size,
            context_length: config.context_length,
        })
    }

    /// Encodes row-major token ids `[batch, columns]` (as [`crate::tokenizer`] produces them;
    /// `columns <= context_length`). Returns unnormalised embeddings `[batch, embed_dim]`.
    pub fn encode(&self, ids: &[u32], columns: usize) -> Result<Tensor<B, 2>> {
        if columns == 0 || ids.is_empty() || !ids.len().is_multiple_of(columns) {
            return Err(ClipError::InvalidInput(format!(
                "token ids: {} ids do not form rows of {columns}",
                ids.len()
            )));
        }
        if columns > self.context_length {
            return Err(ClipError::InvalidInput(format!(
                "token ids: rows of {columns} exceed the context length {}",
                self.context_length
            )));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(ClipError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size
            )));
        }
        let batch = ids.len() / columns;
        // End of text = first position of the row's largest id (PyTorch `argmax`).
        let eot: Vec<usize> = ids
            .chunks(columns)
            .map(|row| {
                let max = *row.iter().max().expect("non-empty row");
                row.iter().position(|&id| id == max).expect("max is in row")
            })
            .collect();
        let length = eot.iter().max().copied().unwrap_or(0) + 1;
        let device = self.token_embedding.device();
        let cut: Vec<i64> = ids
            .chunks(columns)
            .flat_map(|row| row[..length].iter().map(|&id| i64::from(id)))
            .collect();
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(cut, [batch, length]), &device);
        let width = self.positional_embedding.dims()[1];
        let mut x = embedding(self.token_embedding.val(), tokens)
            + self
                .positional_embedding
                .val()
                .slice([0..length, 0..width])
                .unsqueeze::<3>();
        for block in &self.resblocks {
            x = block.forward(x);
        }
        let x = self.ln_final.forward(x);
        let index: Vec<i64> = eot.iter().map(|&p| p as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [batch]), &device)
            .reshape([batch, 1, 1])
            .expand([batch, 1, width]);
        let pooled = x.gather(1, index).reshape([batch, width]);
        Ok(pooled.matmul(self.text_projection.val()))
    }
}
