//! Initial weights of the trainable decoders, drawn as Mask2Former / CLIP-VIS initialise them
//! (`facebookresearch/Mask2Former:mask2former/modeling/pixel_decoder/msdeformattn.py`,
//! `.../transformer_decoder/mask2former_transformer_decoder.py`), re-stated:
//!
//! - pixel decoder: input projections xavier-uniform with zero bias; every matrix of the
//!   deformable encoder xavier-uniform, then each `MSDeformAttn` reset (sampling-offset
//!   weights 0 and biases on the head-direction grid scaled by point index, attention weights
//!   0, value/output projections xavier with zero bias); `level_embed` standard normal;
//!   `adapter_1`, `layer_1`, `mask_features` detectron2's `c2_xavier_fill` (kaiming-uniform,
//!   `a = 1`) with zero bias;
//! - transformer decoder: every matrix of the attention and FFN layers xavier-uniform,
//!   attention biases 0; the embeddings (`query_feat`, `query_embed`, `level_embed`) standard
//!   normal; the MLP heads PyTorch's `nn.Linear` default (`U(±1/√fan_in)` for weight and bias);
//! - every norm: weight 1, bias 0; other biases PyTorch's `nn.Linear` default.
//!
//! Each tensor draws from its own stream (seed and key), so the weights do not depend on the
//! order the modules ask for them.

use clip_vis_clip::weights::{StoredTensor, SyntheticFill};
use clip_vis_clip::TensorStore;
use clip_vis_model::{ClipVisConfig, PIXEL_DECODER_PREFIX, PREDICTOR_PREFIX};
use clip_vis_pixel_decoder::MsDeformAttnPixelDecoder;
use clip_vis_transformer_decoder::MultiScaleMaskedTransformerDecoder;
use std::collections::HashMap;

use crate::rng::Rng;
use crate::Result;

/// Uniform `±bound` values.
fn uniform(rng: &mut Rng, count: usize, bound: f64) -> Vec<f32> {
    (0..count)
        .map(|_| rng.range(-bound, bound) as f32)
        .collect()
}

/// Standard normal values (Box–Muller).
fn normal(rng: &mut Rng, count: usize) -> Vec<f32> {
    (0..count)
        .map(|_| {
            let u = 1.0 - rng.uniform();
            let v = rng.uniform();
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

/// `(fan_in, fan_out)` of a PyTorch weight `[out, in, k...]`.
fn fans(shape: &[usize]) -> (f64, f64) {
    let receptive: usize = shape[2..].iter().product();
    ((shape[1] * receptive) as f64, (shape[0] * receptive) as f64)
}

/// MSDeformAttn's sampling-offset bias: per head a unit direction (scaled so its larger
/// coordinate is ±1), repeated over levels and multiplied by `point + 1`, laid out
/// `[heads, levels, points, 2]`.
fn offset_grid(heads: usize, levels: usize, points: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(heads * levels * points * 2);
    for h in 0..heads {
        let theta = h as f64 * (2.0 * std::f64::consts::PI / heads as f64);
        let (x, y) = (theta.cos(), theta.sin());
        let scale = x.abs().max(y.abs());
        for _ in 0..levels {
            for p in 0..points {
                let k = (p + 1) as f64;
                out.push(((x / scale) * k) as f32);
                out.push(((y / scale) * k) as f32);
            }
        }
    }
    out
}

/// The initial value of the decoder tensor `key` (detectron2 name) of `shape`.
fn initial(key: &str, shape: &[usize], seed: u64, config: &ClipVisConfig) -> Vec<f32> {
    let count: usize = shape.iter().product();
    let stream = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::derive(seed, &[6, stream]);
    let name = key.rsplit('.').next().unwrap_or(key);
    let pixel = key.starts_with(PIXEL_DECODER_PREFIX);
    // GroupNorms of the input projections are `input_proj.{i}.1` (the conv is `.0`).
    let projection_norm = key
        .split("input_proj.")
        .nth(1)
        .is_some_and(|rest| rest.split('.').nth(1) == Some("1"));
    let is_norm = key.contains(".norm") || key.contains("decoder_norm") || projection_norm;
    if is_norm {
        return vec![if name == "weight" { 1.0 } else { 0.0 }; count];
    }
    if key.ends_with("level_embed")
        || key.ends_with("query_feat.weight")
        || key.ends_with("query_embed.weight")
        || key.ends_with("level_embed.weight")
    {
        return normal(&mut rng, count);
    }
    if key.ends_with("sampling_offsets.weight") || key.contains("attention_weights.") {
        return vec![0.0; count];
    }
    if key.ends_with("sampling_offsets.bias") {
        let c = &config.pixel_decoder;
        return offset_grid(c.heads, 3, c.points);
    }
    let heads_mlp = ["object_embed.", "mask_embed.", "iou_head."]
        .iter()
        .any(|h| key.contains(h));
    if name == "weight" && shape.len() >= 2 {
        let (fan_in, fan_out) = fans(shape);
        if heads_mlp {
            return uniform(&mut rng, count, 1.0 / fan_in.sqrt());
        }
        if pixel
            && ["adapter_1", "layer_1", "mask_features"]
                .iter()
                .any(|m| key.contains(m))
        {
            // c2_xavier_fill: kaiming_uniform_(a=1).
            return uniform(&mut rng, count, (3.0 / fan_in).sqrt());
        }
        return uniform(&mut rng, count, (6.0 / (fan_in + fan_out)).sqrt());
    }
    if name == "in_proj_weight" {
        let (fan_in, fan_out) = fans(shape);
        return uniform(&mut rng, count, (6.0 / (fan_in + fan_out)).sqrt());
    }
    // Biases: zero where the modules reset them, PyTorch's Linear default elsewhere.
    let zero_bias = key.contains("input_proj.")
        || key.contains("value_proj.")
        || key.contains("output_proj.")
        || key.contains("mask_features.")
        || name == "in_proj_bias"
        || key.contains("out_proj.");
    if zero_bias {
        return vec![0.0; count];
    }
    // A Linear's default bias bound is 1/sqrt(fan_in): the fan-in is the weight's second dim.
    let fan_in = linear_fan_in(key, config).unwrap_or(count) as f64;
    uniform(&mut rng, count, 1.0 / fan_in.sqrt())
}

/// The input width of the linear whose bias is `key`.
fn linear_fan_in(key: &str, config: &ClipVisConfig) -> Option<usize> {
    let p = &config.pixel_decoder;
    let t = &config.transformer_decoder;
    if key.starts_with(PIXEL_DECODER_PREFIX) {
        if key.contains("linear1") {
            return Some(p.conv_dim);
        }
        if key.contains("linear2") {
            return Some(p.ffn_dim);
        }
    } else if key.starts_with(PREDICTOR_PREFIX) {
        if key.contains("linear1") {
            return Some(t.hidden_dim);
        }
        if key.contains("linear2") {
            return Some(t.ffn_dim);
        }
        if ["object_embed.", "mask_embed.", "iou_head."]
            .iter()
            .any(|h| key.contains(h))
        {
            return Some(t.hidden_dim);
        }
    }
    None
}

/// Fresh decoder weights for `config` (detectron2 key names), seeded: a store that
/// [`MsDeformAttnPixelDecoder::load`] and [`MultiScaleMaskedTransformerDecoder::load`] read.
pub fn initial_decoders(config: &ClipVisConfig, seed: u64) -> Result<TensorStore> {
    // The decoders' own loaders list the tensors they need.
    let shapes = TensorStore::synthetic(SyntheticFill::Zeros);
    let device = Default::default();
    MsDeformAttnPixelDecoder::<burn::backend::Flex>::load(
        &shapes,
        PIXEL_DECODER_PREFIX,
        &config.pixel_decoder,
        &device,
    )?;
    MultiScaleMaskedTransformerDecoder::<burn::backend::Flex>::load(
        &shapes,
        PREDICTOR_PREFIX,
        &config.transformer_decoder,
        &device,
    )?;
    let tensors: HashMap<String, StoredTensor> = shapes
        .requested()
        .into_iter()
        .map(|(key, shape)| {
            let values = initial(&key, &shape, seed, config);
            (key, StoredTensor { shape, values })
        })
        .collect();
    Ok(TensorStore::from_tensors(
        format!("<initial decoders, seed {seed}>"),
        tensors,
        HashMap::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_grid_points_along_head_directions() {
        let grid = offset_grid(8, 3, 4);
        assert_eq!(grid.len(), 8 * 3 * 4 * 2);
        // Head 0 points along +x: (1, 0), (2, 0), ...
        assert_eq!(&grid[..8], &[1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 4.0, 0.0]);
        // Head 1 (45°) is scaled to (1, 1).
        let h1 = &grid[24..26];
        assert!((h1[0] - 1.0).abs() < 1e-6 && (h1[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn initial_weights_have_the_reference_statistics() {
        let config = ClipVisConfig::rn50_lvis();
        let store = initial_decoders(&config, 1).unwrap();
        let values = |k: &str| store.raw(k).unwrap().values.clone();
        let p = PIXEL_DECODER_PREFIX;
        let q = PREDICTOR_PREFIX;
        assert!(values(&format!("{p}.input_proj.0.1.weight"))
            .iter()
            .all(|&v| v == 1.0));
        assert!(values(&format!(
            "{p}.transformer.encoder.layers.0.self_attn.attention_weights.weight"
        ))
        .iter()
        .all(|&v| v == 0.0));
        // Xavier bound for the 256x256 value projection: sqrt(6 / 512).
        let v = values(&format!(
            "{p}.transformer.encoder.layers.0.self_attn.value_proj.weight"
        ));
        let bound = (6.0f32 / 512.0).sqrt();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max <= bound && max > 0.95 * bound, "{max} vs {bound}");
        // Embeddings are standard normal.
        let e = values(&format!("{q}.query_feat.weight"));
        let mean = e.iter().sum::<f32>() / e.len() as f32;
        let var = e.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / e.len() as f32;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
        // The same seed gives the same weights, another seed others.
        assert_eq!(values(&format!("{q}.query_feat.weight")), e);
        let other = initial_decoders(&config, 2).unwrap();
        assert_ne!(
            other.raw(&format!("{q}.query_feat.weight")).unwrap().values,
            e
        );
    }
}
