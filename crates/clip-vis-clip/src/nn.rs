//! Small building blocks shared by the towers and the decoders, built straight from checkpoint
//! tensors.
//!
//! The CLIP towers are frozen: they are only ever constructed from weights, so every block has
//! a `load` constructor that takes its tensors from a [`TensorStore`] by checkpoint key, with
//! the expected shape checked there.

use crate::error::Result;
use crate::weights::{TensorSink, TensorStore};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorPrimitive};

/// A PyTorch `nn.Linear` (`{key}.weight` `[out, in]`, optional `{key}.bias`) as a Burn
/// [`Linear`] (weight `[in, out]`).
pub fn load_linear<B: Backend>(
    store: &TensorStore,
    key: &str,
    d_input: usize,
    d_output: usize,
    bias: bool,
    device: &B::Device,
) -> Result<Linear<B>> {
    let weight = store.linear_weight::<B>(&format!("{key}.weight"), d_input, d_output, device)?;
    let bias = if bias {
        Some(Param::from_tensor(store.tensor::<B, 1>(
            &format!("{key}.bias"),
            [d_output],
            device,
        )?))
    } else {
        None
    };
    Ok(Linear {
        weight: Param::from_tensor(weight),
        bias,
    })
}

/// Writes a Burn [`Linear`] as a PyTorch `nn.Linear` under `{key}.weight` (`[out, in]`) and
/// `{key}.bias`: the inverse of [`load_linear`].
pub fn save_linear<B: Backend>(sink: &mut TensorSink, key: &str, linear: &Linear<B>) {
    sink.put(format!("{key}.weight"), linear.weight.val().transpose());
    if let Some(bias) = &linear.bias {
        sink.put(format!("{key}.bias"), bias.val());
    }
}

/// Layer normalisation over the last dimension (PyTorch `nn.LayerNorm`).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale, `[d_model]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift, `[d_model]`.
    pub beta: Param<Tensor<B, 1>>,
    /// Added to the variance (1e-5 in CLIP's text tower, 1e-6 in timm's ConvNeXt).
    pub epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Loads `{key}.weight` and `{key}.bias`.
    pub fn load(
        store: &TensorStore,
        key: &str,
        d_model: usize,
        epsilon: f64,
        device: &B::Device,
    ) -> Result<Self> {
        Ok(Self {
            gamma: Param::from_tensor(store.tensor(&format!("{key}.weight"), [d_model], device)?),
            beta: Param::from_tensor(store.tensor(&format!("{key}.bias"), [d_model], device)?),
            epsilon,
        })
    }

    /// Writes `{key}.weight` and `{key}.bias` (the inverse of [`LayerNorm::load`]).
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        sink.put(format!("{key}.weight"), self.gamma.val());
        sink.put(format!("{key}.bias"), self.beta.val());
    }

    /// Normalises the last dimension.
    pub fn forward<const D: usize>(&self, input: Tensor<B, D>) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            input.into_primitive().tensor(),
            self.gamma.val().into_primitive().tensor(),
            Some(self.beta.val().into_primitive().tensor()),
            self.epsilon,
        )))
    }

    /// Normalises the channel dimension of a `[batch, channels, height, width]` map
    /// (timm's `LayerNorm2d`).
    pub fn forward_channels_first(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward(input.permute([0, 2, 3, 1]))
            .permute([0, 3, 1, 2])
    }
}

/// A 2-D convolution with square kernel, symmetric padding and optional bias.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    /// Kernel, `[channels_out, channels_in / groups, kernel, kernel]`.
    pub weight: Param<Tensor<B, 4>>,
    /// Bias, `[channels_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Channel groups (depthwise: `channels_in`).
    pub groups: usize,
}

/// Geometry of a convolution to load.
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels.
    pub channels_out: usize,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Channel groups.
    pub groups: usize,
    /// Whether the checkpoint has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A plain convolution (`groups = 1`, no bias).
    pub fn new(channels_in: usize, channels_out: usize, kernel: usize) -> Self {
        Self {
            channels_in,
            channels_out,
            kernel,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: false,
        }
    }
    /// With this stride.
    pub fn stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }
    /// With this padding.
    pub fn padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }
    /// With this many groups.
    pub fn groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }
    /// With a bias.
    pub fn bias(self) -> Self {
        Self { bias: true, ..self }
    }
    fn weight_shape(&self) -> [usize; 4] {
        [
            self.channels_out,
            self.channels_in / self.groups,
            self.kernel,
            self.kernel,
        ]
    }
}

impl<B: Backend> Conv2d<B> {
    /// Loads `{key}.weight` (and `{key}.bias` when the spec has one).
    pub fn load(
        store: &TensorStore,
        key: &str,
        spec: ConvSpec,
        device: &B::Device,
    ) -> Result<Self> {
        let weight = store.tensor(&format!("{key}.weight"), spec.weight_shape(), device)?;
        let bias = if spec.bias {
            Some(Param::from_tensor(store.tensor(
                &format!("{key}.bias"),
                [spec.channels_out],
                device,
            )?))
        } else {
            None
        };
        Ok(Self {
            weight: Param::from_tensor(weight),
            bias,
            stride: spec.stride,
            padding: spec.padding,
            groups: spec.groups,
        })
    }

    /// Writes `{key}.weight` (and `{key}.bias`): the inverse of [`Conv2d::load`].
    pub fn save(&self, sink: &mut TensorSink, key: &str) {
        sink.put(format!("{key}.weight"), self.weight.val());
        if let Some(bias) = &self.bias {
            sink.put(format!("{key}.bias"), bias.val());
        }
    }

    /// Loads a bias-free convolution followed by an inference-mode `BatchNorm2d` (eps 1e-5),
    /// folding the normalisation into the kernel and a bias: the backbone is frozen, so
    /// `bn(conv(x)) = conv(x; W·s) + (β − μ·s)` with `s = γ / sqrt(σ² + eps)`.
    pub fn load_with_batch_norm(
        store: &TensorStore,
        conv_key: &str,
        bn_key: &str,
        spec: ConvSpec,
        device: &B::Device,
    ) -> Result<Self> {
        const BATCH_NORM_EPS: f32 = 1e-5;
        let channels = spec.channels_out;
        let shape = spec.weight_shape();
        let weight = store.values(&format!("{conv_key}.weight"), &shape)?;
        let gamma = store.values(&format!("{bn_key}.weight"), &[channels])?;
        let beta = store.values(&format!("{bn_key}.bias"), &[channels])?;
        let mean = store.values(&format!("{bn_key}.running_mean"), &[channels])?;
        let var = store.values(&format!("{bn_key}.running_var"), &[channels])?;
        let per_out = weight.len() / channels;
        let mut folded = Vec::with_capacity(weight.len());
        let mut bias = Vec::with_capacity(channels);
        for c in 0..channels {
            let scale = gamma[c] / (var[c] + BATCH_NORM_EPS).sqrt();
            folded.extend(
                weight[c * per_out..(c + 1) * per_out]
                    .iter()
                    .map(|w| w * scale),
            );
            bias.push(beta[c] - mean[c] * scale);
        }
        let weight = Tensor::from_data(burn::tensor::TensorData::new(folded, shape), device);
        let bias = Tensor::from_data(burn::tensor::TensorData::new(bias, [channels]), device);
        Ok(Self {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
            stride: spec.stride,
            padding: spec.padding,
            groups: spec.groups,
        })
    }

    /// `[batch, channels_in, height, width]` → `[batch, channels_out, height', width']`.
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(
            input,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], self.groups),
        )
    }
}

/// Whether tensors of `B` live in host memory, where a host kernel can read them without a
/// device transfer.
pub fn is_host_backend<B: Backend>(device: &B::Device) -> bool {
    matches!(B::name(device).as_str(), "flex" | "ndarray")
}

/// Whether `B`'s tensors live in host memory: a CPU backend, or an autodiff backend over one
/// (host-side work on its values then costs no transfer).
pub fn runs_on_host<B: Backend>(device: &B::Device) -> bool {
    matches!(
        B::name(device).as_str(),
        "flex" | "ndarray" | "autodiff<flex>" | "autodiff<ndarray>"
    )
}

/// Bilinear resize of `[batch, channels, height, width]` maps to `size`, PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing); every bilinear
/// resize of the project goes through it.
///
/// Burn 0.21's GPU backends have no backward pass for bilinear interpolation (it panics:
/// "bilinear interpolation backward is not supported by JIT backend"). Under autodiff on those
/// backends the resize is therefore written as two matmuls with the interpolation matrices,
/// `A_h · X · A_wᵀ`, whose rows hold the same two weights per output pixel, so it
/// differentiates on every backend. Everywhere else (inference, the CPU backends) it is Burn's
/// interpolation kernel.
pub fn resize_bilinear<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let device = x.device();
    if !B::ad_enabled(&device) || runs_on_host::<B>(&device) {
        return burn::tensor::module::interpolate(
            x,
            size,
            burn::tensor::ops::InterpolateOptions::new(
                burn::tensor::ops::InterpolateMode::Bilinear,
            )
            .with_align_corners(false),
        );
    }
    resize_by_matrices(x, size)
}

/// [`resize_bilinear`] as `A_h · X · A_wᵀ`: differentiable wherever matmul is.
fn resize_by_matrices<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let device = x.device();
    let [batch, channels, height, width] = x.dims();
    let [out_h, out_w] = size;
    let rows = interpolation_matrix::<B>(height, out_h, &device);
    let columns = interpolation_matrix::<B>(width, out_w, &device);
    let planes = batch * channels;
    let along_width = x
        .reshape([planes * height, width])
        .matmul(columns.transpose())
        .reshape([planes, height, out_w]);
    rows.unsqueeze::<3>()
        .expand([planes, out_h, height])
        .matmul(along_width)
        .reshape([batch, channels, out_h, out_w])
}

/// `[output, input]` weights of 1-D linear interpolation with `align_corners=False`, computed
/// in f32 as PyTorch does: source `(i + 0.5) · input/output − 0.5`, clamped at 0, between
/// index `floor` and `min(floor + 1, input − 1)`.
fn interpolation_matrix<B: Backend>(
    input: usize,
    output: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let scale = input as f32 / output as f32;
    let mut weights = vec![0f32; output * input];
    for i in 0..output {
        let source = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
        let low = (source as usize).min(input - 1);
        let high = (low + 1).min(input - 1);
        let frac = source - low as f32;
        weights[i * input + low] += 1.0 - frac;
        weights[i * input + high] += frac;
    }
    Tensor::from_data(
        burn::tensor::TensorData::new(weights, [output, input]),
        device,
    )
}

/// Exact (erf) GELU, `x · Φ(x)`.
///
/// On the CPU backends Burn evaluates libm's `erff` one element at a time on one thread: about
/// 30 ms for one ConvNeXt-B stage-3 MLP at 640x640, a sixth of the block. There this function
/// evaluates a polynomial `erf` (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7, far
/// under f32 parity tolerance) over all threads instead. Other backends use Burn's kernel,
/// which `tests::host_gelu_matches_burn` holds this one against.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !is_host_backend::<B>(&device) {
        return burn::tensor::activation::gelu(x);
    }
    let shape = x.shape();
    let mut values: Vec<f32> = match x.into_data().convert::<f32>().into_vec() {
        Ok(values) => values,
        Err(_) => unreachable!("converted to f32 above"),
    };
    use rayon::prelude::*;
    values.par_chunks_mut(1 << 14).for_each(|chunk| {
        for v in chunk {
            *v = gelu_scalar(*v);
        }
    });
    Tensor::from_data(burn::tensor::TensorData::new(values, shape), &device)
}

/// `0.5 x (1 + erf(x / √2))` with A&S 7.1.26 for `erf`.
#[inline]
fn gelu_scalar(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let erf_abs = 1.0 - poly * (-z * z).exp();
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    0.5 * x * (1.0 + erf)
}

/// Applies a linear layer to `[..., d_input]` by flattening the leading dimensions: Burn's
/// CPU matmul is up to twice as fast on one 2-D product as on a broadcast batch of them.
pub fn linear_flat<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let out = linear.forward(x.reshape([rows, dims[D - 1]]));
    let mut out_dims = dims;
    out_dims[D - 1] = out.dims()[1];
    out.reshape(out_dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// The matmul form (what autodiff on a GPU backend uses) against Burn's kernel (what
    /// `resize_bilinear` runs on Flex), up and down, odd sizes included.
    #[test]
    fn interpolation_matrices_equal_bilinear_interpolation() {
        type B = burn::backend::Flex;
        let device = Default::default();
        for (from, to) in [([6, 10], [12, 20]), ([7, 5], [16, 11]), ([12, 20], [5, 7])] {
            let x = Tensor::<B, 4>::random(
                [2, 3, from[0], from[1]],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let want: Vec<f32> = resize_bilinear(x.clone(), to).into_data().to_vec().unwrap();
            let got: Vec<f32> = resize_by_matrices(x, to).into_data().to_vec().unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{from:?} -> {to:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn host_gelu_matches_burn() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let x = Tensor::<B, 2>::random([64, 257], Distribution::Normal(0.0, 3.0), &device);
        let reference: Vec<f32> = burn::tensor::activation::gelu(x.clone())
            .into_data()
            .to_vec()
            .unwrap();
        let fast: Vec<f32> = gelu(x).into_data().to_vec().unwrap();
        for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "index {i}: {a} vs {b}"
            );
        }
    }
}
