//! `nn.GroupNorm` (eps 1e-5) loaded from a checkpoint.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_vis_clip::{Result, TensorSink, TensorStore};

/// PyTorch `GroupNorm` default epsilon.
const EPS: f64 = 1e-5;

/// Group normalisation over `[batch, channels, height, width]`.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// Scale, `[channels]`.
    gamma: Param<Tensor<B, 1>>,
    /// Shift, `[channels]`.
    beta: Param<Tensor<B, 1>>,
    groups: usize,
}

impl<B: Backend> GroupNorm<B> {
    /// Loads `{key}.weight` and `{key}.bias`.
    pub fn load(
        store: &TensorStore,
        key: &str,
        channels: usize,
        groups: usize,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self {
            gamma: Param::from_tensor(store.tensor(
                &format!("{key}.weight"),
                [channels],
                device,
            )?),
            beta: Param::from_tensor(store.tensor(&format!("{key}.bias"), [channels], device)?),
            groups,
        })
    }

    /// Writes `{key}.weight` and `{key}.bias` (the inverse of [`GroupNorm::load`]).
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        sink.put(format!("{key}.weight"), self.gamma.val());
        sink.put(format!("{key}.bias"), self.beta.val());
    }

    /// Host copy for the CPU inference path.
    pub(crate) fn host(&self) -> crate::host::HostGroupNorm {
        crate::host::HostGroupNorm {
            gamma: clip_vis_clip::host::values(self.gamma.val()),
            beta: clip_vis_clip::host::values(self.beta.val()),
            groups: self.groups,
            epsilon: EPS,
        }
    }

    /// Normalises each group of channels over its channels and all positions.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = x.dims();
        let grouped = x.reshape([
            batch,
            self.groups,
            (channels / self.groups) * height * width,
        ]);
        let mean = grouped.clone().mean_dim(2);
        let centered = grouped - mean;
        let variance = centered.clone().powi_scalar(2).mean_dim(2);
        let normalized =
            (centered / (variance + EPS).sqrt()).reshape([batch, channels, height, width]);
        normalized * self.gamma.val().reshape([1, channels, 1, 1])
            + self.beta.val().reshape([1, channels, 1, 1])
    }
}
