//! The sine positional encoding of DETR / Mask2Former (`PositionEmbeddingSine` with
//! `normalize=True`, `scale=2π`, temperature 10000; SPEC §3).
//!
//! For a map without padding, position `(i, j)` gets `y = (i + 1) / (H + ε) · 2π` and
//! `x = (j + 1) / (W + ε) · 2π` (the cumulative sum of an all-valid mask, normalised by its last
//! value, `ε = 1e-6`). Feature `2k` of each half is `sin(v / T^(2k/F))`, feature `2k + 1`
//! is `cos(v / T^(2k/F))`, `F = channels / 2`; the `y` half comes first.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

const TEMPERATURE: f64 = 10000.0;
const EPS: f64 = 1e-6;

/// Encoding of an `height x width` map with `channels` features (`[channels, height, width]`).
pub fn sine_position_encoding<B: Backend>(
    channels: usize,
    height: usize,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let features = channels / 2;
    let scale = 2.0 * std::f64::consts::PI;
    // Computed in f32 like the reference: the embeddings and frequencies are f32 tensors there.
    let frequency = |k: usize| {
        let exponent = (2 * (k / 2)) as f32 / features as f32;
        (TEMPERATURE as f32).powf(exponent)
    };
    let embed = |index: usize, size: usize| {
        ((index + 1) as f32 / ((size as f32) + EPS as f32)) * scale as f32
    };
    let mut values = vec![0f32; channels * height * width];
    for k in 0..features {
        let f = frequency(k);
        for i in 0..height {
            for j in 0..width {
                let (y, x) = (embed(i, height) / f, embed(j, width) / f);
                let (py, px) = if k % 2 == 0 {
                    (y.sin(), x.sin())
                } else {
                    (y.cos(), x.cos())
                };
                values[(k * height + i) * width + j] = py;
                values[((features + k) * height + i) * width + j] = px;
            }
        }
    }
    Tensor::from_data(TensorData::new(values, [channels, height, width]), device)
}

/// [`sine_position_encoding`] flattened row-major to tokens and repeated over the batch:
/// `[batch, height · width, channels]`, as the attention layers add it to their keys.
pub fn sine_position_tokens<B: Backend>(
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    sine_position_encoding::<B>(channels, height, width, device)
        .reshape([channels, height * width])
        .transpose()
        .unsqueeze::<3>()
        .expand([batch, height * width, channels])
}
