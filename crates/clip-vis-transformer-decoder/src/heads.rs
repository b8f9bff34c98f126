//! The 3-layer MLP heads of the decoder (`object_embed`, `mask_embed`, `iou_head`).

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_vis_clip::nn::{linear_flat, load_linear, save_linear};
use clip_vis_clip::{Result, TensorSink, TensorStore};

/// `Linear → ReLU → … → Linear` (Mask2Former's `MLP`), keys `{key}.layers.{i}`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    /// Loads `layers` linear layers `input → hidden → … → output`.
    pub fn load(
        store: &TensorStore,
        key: &str,
        input: usize,
        hidden: usize,
        output: usize,
        layers: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let layers = (0..layers)
            .map(|i| {
                let d_in = if i == 0 { input } else { hidden };
                let d_out = if i + 1 == layers { output } else { hidden };
                load_linear(
                    store,
                    &format!("{key}.layers.{i}"),
                    d_in,
                    d_out,
                    true,
                    device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Writes `{key}.layers.{i}.*` (the inverse of [`Mlp::load`]).
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        for (i, layer) in self.layers.iter().enumerate() {
            save_linear(sink, &format!("{key}.layers.{i}"), layer);
        }
    }

    /// Applies the layers with ReLU between them (none after the last).
    pub fn forward(&self, mut x: Tensor<B, 3>) -> Tensor<B, 3> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = linear_flat(layer, x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}
