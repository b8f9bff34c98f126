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
    // The `y` half depends only on (feature, row), the `x` half only on (feature, column):
    // evaluate each sine once per row or column (features · (H + W) calls instead of
    // features · H · W; the map is rebuilt for every frame) and broadcast.
    let wave = |k: usize, v: f32| {
        if k.is_multiple_of(2) {
            v.sin()
        } else {
            v.cos()
        }
    };
    let mut values = vec![0f32; channels * height * width];
    for k in 0..features {
        let f = frequency(k);
        let row_values: Vec<f32> = (0..width).map(|j| wave(k, embed(j, width) / f)).collect();
        for i in 0..height {
            let py = wave(k, embed(i, height) / f);
            let y_row = (k * height + i) * width;
            values[y_row..y_row + width].fill(py);
            let x_row = ((features + k) * height + i) * width;
            values[x_row..x_row + width].copy_from_slice(&row_values);
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
