//! Host (CPU) inference kernels on channels-last `f32` buffers.
//!
//! The CLIP towers are frozen, so on the CPU backends their inference can skip the general
//! tensor machinery: weights are laid out once at load in the form the matrix product wants,
//! activations stay channels-last (`[pixels, channels]`, one row per pixel) from the stem to the
//! last stage, and the elementwise work (bias, LayerNorm, GELU, layer scale, residual) runs
//! fused on row tiles that are still in cache after the product that made them. Burn's generic
//! ops on the same model stay the reference these kernels are tested against
//! (`convnext::tests`).
//!
//! Matrix products go through the `gemm` crate (the one Burn's CPU backend uses, with its
//! AVX-512 kernels chosen at run time). The elementwise loops are plain Rust compiled three
//! times, for AVX-512, AVX2+FMA and the baseline, and picked once by CPU detection
//! ([`multiversion!`]): without it they would be compiled for SSE2 only.

use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

pub mod amx;
mod winograd;

/// The arithmetic of the host kernels' matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 operands and sums (`gemm`'s kernels): the default, equal to PyTorch's f32 to
    /// reassociation.
    #[default]
    F32,
    /// Operands rounded to bfloat16, sums in f32, on Intel AMX ([`amx`]): 2-3x faster products
    /// on CPUs that have it, results within the bf16 rounding of the operands. Never the
    /// default.
    Bf16,
}

/// The product precision of every host kernel in this process ([`set_precision`]).
static PRECISION: AtomicU8 = AtomicU8::new(0);

/// [`Precision::Bf16`] asked for on a CPU (or system) without AMX-BF16.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "bf16 products need Intel AMX-BF16 (Xeon Sapphire Rapids or later, Linux 5.16 or later); \
     this CPU or system has none: use the default f32"
)]
pub struct Bf16Unavailable;

/// Sets the precision of the host kernels' matrix products for the whole process (every model
/// on the CPU backends; the tensor-op paths that GPUs and autodiff run are not affected).
///
/// ```
/// use clip_vis_clip::host::{precision, set_precision, Precision};
/// if set_precision(Precision::Bf16).is_ok() {
///     assert_eq!(precision(), Precision::Bf16);
///     set_precision(Precision::F32).unwrap();
/// }
/// assert_eq!(precision(), Precision::F32);
/// ```
pub fn set_precision(precision: Precision) -> Result<(), Bf16Unavailable> {
    if precision == Precision::Bf16 && !amx::available() {
        return Err(Bf16Unavailable);
    }
    PRECISION.store(precision as u8, Ordering::Relaxed);
    Ok(())
}

/// The precision set by [`set_precision`] (f32 unless changed).
pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => Precision::F32,
        _ => Precision::Bf16,
    }
}

/// Smallest product (`m · k · n`) worth the bf16 path: below it the conversions cost more than
/// the tile unit saves.
const BF16_MIN_WORK: usize = 1 << 16;

/// The widest instruction set the running CPU offers among those the kernels are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 (F, VL) with AVX2 and FMA.
    V4,
    /// AVX2 with FMA.
    V3,
    /// The compilation target's baseline.
    Base,
}

/// Detected once per process.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if v3 && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                return Level::V4;
            }
            if v3 {
                return Level::V3;
            }
        }
        Level::Base
    })
}

/// Defines `fn name(args)` whose body is compiled for each [`Level`] and run at the best one the
/// CPU has. The body is an `#[inline(always)]` function inlined into `#[target_feature]`
/// wrappers, so the compiler vectorises it with that level's registers. Exported for the
/// decoder crates' host kernels.
#[doc(hidden)]
#[macro_export]
macro_rules! host_multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::host::level() {
                    // SAFETY: `level()` detected these features on the running CPU.
                    $crate::host::Level::V4 => return unsafe { v4($($arg),*) },
                    $crate::host::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::host::Level::Base => {}
                }
            }
            body($($arg),*)
        }
    };
}
use host_multiversion as multiversion;

/// Lanes of the chunked accumulators: wide enough for one AVX-512 register, so that a sum over
/// a row vectorises (float addition is not reassociated by the compiler on its own).
const LANES: usize = 16;

/// Row-major `[m, n]` output of `a · b` (+ `out` when `accumulate`), `a` `[m, k]` with row
/// stride `lda`, `b` `[k, n]` row-major. `threads > 1` lets `gemm` split the product.
///
/// In [`Precision::Bf16`] a large product packs `b` for the tile unit at every call; layers
/// with fixed weights call [`matmul_weights`], which packs them once.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    out: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    matmul_weights(m, k, n, a, lda, b, None, out, accumulate, threads);
}

/// [`matmul`] by a weight matrix `b` whose bf16 panel is kept in `panel` (made on the first
/// bf16 product; unused in f32). `None`: packed at every bf16 call, as [`matmul`] does.
#[allow(clippy::too_many_arguments)]
pub fn matmul_weights(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    panel: Option<&amx::PanelCache>,
    out: &mut [f32],
    accumulate: bool,
    threads: usize,
) {
    assert!(
        m == 0 || a.len() >= (m - 1) * lda + k,
        "matmul: lhs too short"
    );
    assert!(
        b.len() >= k * n && out.len() >= m * n,
        "matmul: rhs or output too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    // Packing an uncached right operand costs `k · n` conversions: worth it from 64 rows.
    let worth_bf16 = m * k * n >= BF16_MIN_WORK && (panel.is_some() || m >= 64);
    if precision() == Precision::Bf16 && worth_bf16 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        let packed;
        let panel = match panel {
            Some(cache) => cache.get(k, n, b),
            None => {
                packed = amx::Panel::new(k, n, b);
                &packed
            }
        };
        amx::matmul_accumulate(m, k, a, lda, panel, out, threads);
        return;
    }
    let parallelism = if threads > 1 && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every strided access inside the slices; `out` does not
    // alias `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The values of a float tensor as `f32`, in row-major order (one copy to the host).
pub fn values<B: burn::tensor::backend::Backend, const D: usize>(
    tensor: burn::tensor::Tensor<B, D>,
) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32 above")
}

/// A linear layer for row-major inputs: `y = x · weight + bias`.
#[derive(Debug, Clone)]
pub struct RowLinear {
    /// `[d_input, d_output]`, row-major (Burn's `Linear` layout).
    pub weight: Vec<f32>,
    /// `[d_output]`.
    pub bias: Vec<f32>,
    /// `weight` for bf16 products, packed on first use.
    bf16: amx::PanelCache,
}

impl RowLinear {
    /// From a row-major `[d_input, d_output]` weight and its bias.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>) -> Self {
        assert!(
            !bias.is_empty() && weight.len().is_multiple_of(bias.len()),
            "RowLinear: weight and bias shapes"
        );
        Self {
            weight,
            bias,
            bf16: amx::PanelCache::default(),
        }
    }

    /// The host copy of a Burn `Linear` (a missing bias reads as zeros).
    pub fn from_module<B: burn::tensor::backend::Backend>(linear: &burn::nn::Linear<B>) -> Self {
        let [_, d_output] = linear.weight.dims();
        Self::new(
            values(linear.weight.val()),
            linear
                .bias
                .as_ref()
                .map(|b| values(b.val()))
                .unwrap_or_else(|| vec![0.0; d_output]),
        )
    }

    /// Output width.
    pub fn d_output(&self) -> usize {
        self.bias.len()
    }

    /// Input width.
    pub fn d_input(&self) -> usize {
        self.weight.len() / self.bias.len()
    }

    /// `[rows, d_input]` → `[rows, d_output]`; `threads > 1` splits the product.
    pub fn forward(&self, x: &[f32], threads: usize) -> Vec<f32> {
        let rows = x.len() / self.d_input();
        let mut out = vec![0f32; rows * self.d_output()];
        self.forward_into(x, &mut out, threads);
        out
    }

    /// [`RowLinear::forward`] into `out` (`[rows, d_output]`, overwritten).
    pub fn forward_into(&self, x: &[f32], out: &mut [f32], threads: usize) {
        let (d_input, d_output) = (self.d_input(), self.d_output());
        let rows = x.len() / d_input;
        fill_rows(&mut out[..rows * d_output], &self.bias);
        matmul_weights(
            rows,
            d_input,
            d_output,
            x,
            d_input,
            &self.weight,
            Some(&self.bf16),
            out,
            true,
            threads,
        );
    }

    /// Side by side: one product for several layers reading the same input.
    pub fn concat(parts: &[&RowLinear]) -> Self {
        let d_input = parts[0].d_input();
        let d_output: usize = parts.iter().map(|p| p.d_output()).sum();
        let mut weight = Vec::with_capacity(d_input * d_output);
        for row in 0..d_input {
            for part in parts {
                let n = part.d_output();
                weight.extend_from_slice(&part.weight[row * n..(row + 1) * n]);
            }
        }
        Self::new(
            weight,
            parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
        )
    }
}

/// Softmax of one row in place (max-shifted, vectorised `exp`).
pub fn softmax_in_place(x: &mut [f32]) {
    softmax_row(x, None, 1.0);
}

/// Fills every `[.., width]` row of `out` with `row`.
pub fn fill_rows(out: &mut [f32], row: &[f32]) {
    for chunk in out.chunks_exact_mut(row.len()) {
        chunk.copy_from_slice(row);
    }
}

/// A LayerNorm over the channels of channels-last rows (PyTorch `nn.LayerNorm`, biased
/// variance).
#[derive(Debug, Clone)]
pub struct RowNorm {
    /// Scale, one per channel.
    pub gamma: Vec<f32>,
    /// Shift, one per channel.
    pub beta: Vec<f32>,
    /// Added to the variance.
    pub epsilon: f32,
}

impl RowNorm {
    /// The host copy of a Burn [`crate::nn::LayerNorm`].
    pub fn from_module<B: burn::tensor::backend::Backend>(norm: &crate::nn::LayerNorm<B>) -> Self {
        Self {
            gamma: values(norm.gamma.val()),
            beta: values(norm.beta.val()),
            epsilon: norm.epsilon as f32,
        }
    }

    /// Normalises every row of `x` (`[rows, gamma.len()]`) in place, rows spread over threads.
    pub fn apply(&self, x: &mut [f32]) {
        let width = self.gamma.len();
        let rows_per_task = (1 << 14) / width.max(1) + 1;
        x.par_chunks_mut(rows_per_task * width)
            .for_each(|rows| self.apply_serial(rows));
    }

    /// [`RowNorm::apply`] on the calling thread.
    pub fn apply_serial(&self, x: &mut [f32]) {
        layer_norm_rows(x, &self.gamma, &self.beta, self.epsilon);
    }
}

multiversion! {
    fn layer_norm_rows(x: &mut [f32], gamma: &[f32], beta: &[f32], epsilon: f32) {
        let width = gamma.len();
        for row in x.chunks_exact_mut(width) {
            let mean = sum(row) / width as f32;
            let mut acc = [0f32; LANES];
            let mut chunks = row.chunks_exact(LANES);
            for chunk in &mut chunks {
                for i in 0..LANES {
                    let d = chunk[i] - mean;
                    acc[i] += d * d;
                }
            }
            let mut squares: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
            squares += acc.iter().sum::<f32>();
            let inv = 1.0 / (squares / width as f32 + epsilon).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inv * g + b;
            }
        }
    }
}

/// Sum of a row with [`LANES`] independent accumulators (vectorisable).
#[inline(always)]
fn sum(row: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            acc[i] += chunk[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

multiversion! {
    /// Exact (erf) GELU in place, with the same A&S 7.1.26 `erf` as `nn::gelu` (absolute error
    /// below 1.5e-7) and a branch-free `exp` so that the loop vectorises.
    pub fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_scalar(*v);
        }
    }
}

/// `0.5 x (1 + erf(x / √2))`, A&S 7.1.26 for `erf` (as `nn::gelu_scalar`), with [`exp_neg`].
#[inline(always)]
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
    let erf_abs = 1.0 - poly * exp_neg(-z * z);
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    0.5 * x * (1.0 + erf)
}

/// `e^x` for `x ≤ 0` (Cephes `expf`: `x = n ln 2 + r`, a degree-5 polynomial in `r`, `2^n` by
/// exponent bits; relative error about 1e-7), 0 below −87 (−∞ included). Branch-free so that it
/// vectorises.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let flushed = x < -87.0;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n for n ∈ [-126, 0], a normal float, built from its biased exponent n + 127. Adding
    // 2^23 puts that integer in the mantissa bits, read off without a float-to-int conversion
    // (whose saturating form does not vectorise).
    const MANTISSA: f32 = 8_388_608.0;
    let exponent = (n + 127.0 + MANTISSA).to_bits() - MANTISSA.to_bits();
    let value = e * f32::from_bits(exponent << 23);
    if flushed {
        0.0
    } else {
        value
    }
}

multiversion! {
    /// `x += gamma ⊙ y` row by row (`gamma` one row long).
    pub fn add_scaled_rows(x: &mut [f32], y: &[f32], gamma: &[f32]) {
        let width = gamma.len();
        for (xr, yr) in x.chunks_exact_mut(width).zip(y.chunks_exact(width)) {
            for ((a, b), g) in xr.iter_mut().zip(yr).zip(gamma) {
                *a += g * b;
            }
        }
    }
}

/// Sizes of one [`attention`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionDims {
    /// Batch items.
    pub batch: usize,
    /// Query rows per item.
    pub queries: usize,
    /// Key (and value) rows per item.
    pub keys: usize,
    /// Heads; the width `d` is `heads · head_dim`.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Multi-head scaled dot-product attention of already projected rows, the heads side by side
/// in each row as PyTorch's `nn.MultiheadAttention` lays them out: `q` `[batch, queries, d]`,
/// `k`, `v` `[batch, keys, d]`, `blocked` `[batch, queries, keys]` (true = may not attend;
/// shared by all heads) → `[batch, queries, d]`.
///
/// Per (item, head), on one thread each: the score tile `q_h · k_hᵀ` by `gemm` reading the
/// head's columns in place (no split-heads copy), the masked softmax per row with the
/// vectorised `exp`, then `· v_h`. A row blocked everywhere gives zeros, as Burn's CPU
/// attention does.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    blocked: Option<&[bool]>,
    dims: AttentionDims,
) -> Vec<f32> {
    let AttentionDims {
        batch,
        queries,
        keys,
        heads,
        head_dim,
    } = dims;
    let d = heads * head_dim;
    assert!(q.len() == batch * queries * d, "attention: query shape");
    assert!(
        k.len() == batch * keys * d && v.len() == k.len(),
        "attention: key/value shape"
    );
    if let Some(mask) = blocked {
        assert!(
            mask.len() == batch * queries * keys,
            "attention: mask shape"
        );
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    // The mask as an additive bias (0 or −∞), formed once for all heads: the masked softmax
    // then vectorises as a multiply-add (a select on `bool` flags did not).
    let bias: Option<Vec<f32>> = blocked.map(|mask| {
        mask.par_iter()
            .map(|&b| if b { f32::NEG_INFINITY } else { 0.0 })
            .collect()
    });
    let tiles: Vec<Vec<f32>> = (0..batch * heads)
        .into_par_iter()
        .map(|task| {
            let (b, h) = (task / heads, task % heads);
            let q_at = &q[b * queries * d + h * head_dim..];
            let k_at = &k[b * keys * d + h * head_dim..];
            let v_at = &v[b * keys * d + h * head_dim..];
            let mut scores = vec![0f32; queries * keys];
            // SAFETY: rows `i < queries` (`keys`) of width `head_dim` with stride `d` starting
            // at the head's column offset stay inside the item's `[rows, d]` block.
            unsafe {
                gemm::gemm(
                    queries,
                    keys,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    keys as isize,
                    false,
                    q_at.as_ptr(),
                    1,
                    d as isize,
                    k_at.as_ptr(),
                    d as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let mask = bias
                .as_deref()
                .map(|m| &m[b * queries * keys..(b + 1) * queries * keys]);
            for (row, scores) in scores.chunks_exact_mut(keys).enumerate() {
                softmax_row(
                    scores,
                    mask.map(|m| &m[row * keys..(row + 1) * keys]),
                    scale,
                );
            }
            let mut out = vec![0f32; queries * head_dim];
            // SAFETY: as above, for the value rows.
            unsafe {
                gemm::gemm(
                    queries,
                    head_dim,
                    keys,
                    out.as_mut_ptr(),
                    1,
                    head_dim as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    keys as isize,
                    v_at.as_ptr(),
                    1,
                    d as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            out
        })
        .collect();
    let mut out = vec![0f32; batch * queries * d];
    for (task, tile) in tiles.iter().enumerate() {
        let (b, h) = (task / heads, task % heads);
        for (row, values) in tile.chunks_exact(head_dim).enumerate() {
            let at = (b * queries + row) * d + h * head_dim;
            out[at..at + head_dim].copy_from_slice(values);
        }
    }
    out
}

/// `softmax(scale · scores + bias)` over one row in place, where `bias` is 0 or −∞ (blocked:
/// weight 0); all zeros when every entry is blocked.
fn softmax_row(scores: &mut [f32], bias: Option<&[f32]>, scale: f32) {
    let mut max = f32::NEG_INFINITY;
    match bias {
        Some(bias) => mask_scale_max(scores, bias, scale, &mut max),
        None => scale_max(scores, scale, &mut max),
    }
    if max == f32::NEG_INFINITY {
        scores.fill(0.0);
        return;
    }
    let total = exp_shifted_in_place(scores, max);
    let inv = 1.0 / total;
    for s in scores.iter_mut() {
        *s *= inv;
    }
}

multiversion! {
    /// `x ← scale · x + bias` (`bias` 0, or −∞ where blocked); the maximum into `max`.
    fn mask_scale_max(x: &mut [f32], bias: &[f32], scale: f32, max: &mut f32) {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        let mut biases = bias.chunks_exact(LANES);
        for (chunk, biases) in (&mut chunks).zip(&mut biases) {
            for i in 0..LANES {
                chunk[i] = chunk[i] * scale + biases[i];
                acc[i] = acc[i].max(chunk[i]);
            }
        }
        let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for (v, &b) in chunks.into_remainder().iter_mut().zip(biases.remainder()) {
            *v = *v * scale + b;
            m = m.max(*v);
        }
        *max = m;
    }
}

multiversion! {
    /// `x ← scale · x`; the maximum into `max`.
    fn scale_max(x: &mut [f32], scale: f32, max: &mut f32) {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for i in 0..LANES {
                chunk[i] *= scale;
                acc[i] = acc[i].max(chunk[i]);
            }
        }
        let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for v in chunks.into_remainder() {
            *v *= scale;
            m = m.max(*v);
        }
        *max = m;
    }
}

multiversion! {
    /// `x ← e^(x − max)` (`x ≤ max`; −∞ gives 0) and the sum of the results.
    fn exp_shifted_in_place_impl(x: &mut [f32], max: f32, total: &mut f32) {
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for i in 0..LANES {
                chunk[i] = exp_neg(chunk[i] - max);
                acc[i] += chunk[i];
            }
        }
        let mut rest = 0f32;
        for v in chunks.into_remainder() {
            *v = exp_neg(*v - max);
            rest += *v;
        }
        *total = acc.iter().sum::<f32>() + rest;
    }
}

fn exp_shifted_in_place(x: &mut [f32], max: f32) -> f32 {
    let mut total = 0.0;
    exp_shifted_in_place_impl(x, max, &mut total);
    total
}

multiversion! {
    /// `max(x, 0)` in place.
    pub fn relu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

multiversion! {
    /// `x += a · y` elementwise.
    pub fn add_scaled(x: &mut [f32], y: &[f32], a: f32) {
        for (p, q) in x.iter_mut().zip(y) {
            *p += a * q;
        }
    }
}

multiversion! {
    /// `x += y` elementwise.
    pub fn add_in_place(x: &mut [f32], y: &[f32]) {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }
}

/// A depthwise `k x k` convolution (stride 1, zero padding `k / 2`) on channels-last maps.
#[derive(Debug, Clone)]
pub(crate) struct Depthwise {
    /// `[k · k, channels]`: tap-major, so one tap's weights over the channels are contiguous.
    pub weight: Vec<f32>,
    /// `[channels]`.
    pub bias: Vec<f32>,
    pub kernel: usize,
}

impl Depthwise {
    /// From PyTorch's `[channels, 1, k, k]` weight.
    pub fn from_torch(weight: &[f32], bias: Vec<f32>, kernel: usize) -> Self {
        let channels = bias.len();
        let taps = kernel * kernel;
        let mut packed = vec![0f32; taps * channels];
        for c in 0..channels {
            for t in 0..taps {
                packed[t * channels + c] = weight[c * taps + t];
            }
        }
        Self {
            weight: packed,
            bias,
            kernel,
        }
    }

    /// `[batch, h, w, channels]` → same shape; output rows spread over threads.
    pub fn forward(&self, x: &[f32], batch: usize, h: usize, w: usize) -> Vec<f32> {
        let channels = self.bias.len();
        let mut out = vec![0f32; batch * h * w * channels];
        out.par_chunks_mut(w * channels)
            .enumerate()
            .for_each(|(row, out_row)| {
                let (b, y) = (row / h, row % h);
                let image = &x[b * h * w * channels..(b + 1) * h * w * channels];
                depthwise_row(
                    image,
                    out_row,
                    &self.weight,
                    &self.bias,
                    self.kernel,
                    h,
                    w,
                    y,
                );
            });
        out
    }
}

/// Channels one depthwise accumulator block holds: four AVX-512 registers, so the 49 taps of a
/// 7x7 kernel feed four independent addition chains instead of one.
const DEPTHWISE_BLOCK: usize = 4 * LANES;

multiversion! {
    /// One output row of [`Depthwise::forward`]. Each output pixel's channels are summed in
    /// register-sized blocks over all taps (bias first, then the taps in `(ky, kx)` order, as
    /// the per-tap passes it replaced added them), so the output row is written once instead
    /// of once per tap.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_row(
        image: &[f32],
        out_row: &mut [f32],
        weight: &[f32],
        bias: &[f32],
        kernel: usize,
        h: usize,
        w: usize,
        y: usize,
    ) {
        let channels = bias.len();
        let pad = kernel / 2;
        // Source rows inside the map: (ky, row).
        let rows: Vec<(usize, &[f32])> = (0..kernel)
            .filter_map(|ky| {
                let sy = (y + ky).checked_sub(pad).filter(|&sy| sy < h)?;
                Some((ky, &image[sy * w * channels..(sy + 1) * w * channels]))
            })
            .collect();
        // Channels in whole register blocks; the rest one at a time.
        let blocks = channels / DEPTHWISE_BLOCK * DEPTHWISE_BLOCK;
        for x in 0..w {
            // Taps whose source column lies inside the map.
            let kx_lo = pad.saturating_sub(x);
            let kx_hi = (w + pad - x).min(kernel);
            let out = &mut out_row[x * channels..(x + 1) * channels];
            for c0 in (0..blocks).step_by(DEPTHWISE_BLOCK) {
                let mut acc = [[0f32; LANES]; 4];
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc.copy_from_slice(&bias[c0 + r * LANES..c0 + (r + 1) * LANES]);
                }
                for &(ky, row) in &rows {
                    for kx in kx_lo..kx_hi {
                        let sx = x + kx - pad;
                        let taps = &weight[(ky * kernel + kx) * channels + c0..][..DEPTHWISE_BLOCK];
                        let input = &row[sx * channels + c0..][..DEPTHWISE_BLOCK];
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let taps = &taps[r * LANES..(r + 1) * LANES];
                            let input = &input[r * LANES..(r + 1) * LANES];
                            for l in 0..LANES {
                                acc[l] += taps[l] * input[l];
                            }
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    out[c0 + r * LANES..c0 + (r + 1) * LANES].copy_from_slice(acc);
                }
            }
            // Channels past the last whole block.
            for c in blocks..channels {
                let mut acc = bias[c];
                for &(ky, row) in &rows {
                    for kx in kx_lo..kx_hi {
                        let sx = x + kx - pad;
                        acc += weight[(ky * kernel + kx) * channels + c] * row[sx * channels + c];
                    }
                }
                out[c] = acc;
            }
        }
    }
}

/// A convolution whose stride equals its kernel (ConvNeXt's stem and downsampling layers):
/// each output pixel reads its own `k x k` patch, so it is one matrix product over patches.
#[derive(Debug, Clone)]
pub(crate) struct Patchify {
    /// `[k · k · c_in, c_out]`, rows ordered (ky, kx, c_in) like a channels-last patch.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub kernel: usize,
    pub channels_in: usize,
    /// `weight` for bf16 products, packed on first use.
    bf16: amx::PanelCache,
}

impl Patchify {
    /// From PyTorch's `[c_out, c_in, k, k]` weight.
    pub fn from_torch(weight: &[f32], bias: Vec<f32>, channels_in: usize, kernel: usize) -> Self {
        let channels_out = bias.len();
        let rows = kernel * kernel * channels_in;
        let mut packed = vec![0f32; rows * channels_out];
        for o in 0..channels_out {
            for c in 0..channels_in {
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let row = (ky * kernel + kx) * channels_in + c;
                        packed[row * channels_out + o] =
                            weight[((o * channels_in + c) * kernel + ky) * kernel + kx];
                    }
                }
            }
        }
        Self {
            weight: packed,
            bias,
            kernel,
            channels_in,
            bf16: amx::PanelCache::default(),
        }
    }

    /// `[batch, h, w, c_in]` → (`[batch, h / k, w / k, c_out]`, h / k, w / k); a remainder
    /// smaller than the kernel is dropped, as PyTorch's convolution does.
    pub fn forward(&self, x: &[f32], batch: usize, h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let (k, c) = (self.kernel, self.channels_in);
        let (oh, ow) = (h / k, w / k);
        let patch = k * k * c;
        let mut patches = vec![0f32; batch * oh * ow * patch];
        patches
            .par_chunks_mut(ow * patch)
            .enumerate()
            .for_each(|(row, out)| {
                let (b, oy) = (row / oh, row % oh);
                for ox in 0..ow {
                    for ky in 0..k {
                        let src = ((b * h + oy * k + ky) * w + ox * k) * c;
                        let dst = ox * patch + ky * k * c;
                        out[dst..dst + k * c].copy_from_slice(&x[src..src + k * c]);
                    }
                }
            });
        let channels_out = self.bias.len();
        let rows = batch * oh * ow;
        let mut out = vec![0f32; rows * channels_out];
        fill_rows(&mut out, &self.bias);
        matmul_weights(
            rows,
            patch,
            channels_out,
            &patches,
            patch,
            &self.weight,
            Some(&self.bf16),
            &mut out,
            true,
            rayon::current_num_threads(),
        );
        (out, oh, ow)
    }
}

/// Fewest input and output channels for which a 3x3 convolution takes the Winograd path.
/// Below it the 16 products are too thin for `gemm` to run at speed and the transforms
/// dominate: measured on 2 threads (and 1), Winograd / direct time was 1.98 (1.84) at 32
/// channels, 1.44 (1.41) at 64, 0.94 (0.93) at 128, 0.66-1.00 (0.77-0.86) at 256 and 0.78-0.83
/// (0.66-0.69) at 512, at RN50's map sizes for a 480x640 frame.
const WINOGRAD_MIN_CHANNELS: usize = 128;

/// A convolution on channels-last maps (`groups = 1`, square kernel, symmetric zero padding),
/// with its bias and an optional residual and ReLU: a 1x1 convolution is a matrix product over
/// the pixels; any other multiplies patch rows, built a chunk at a time (so the patch matrix of
/// a large map never exists whole), by the weights.
#[derive(Debug, Clone)]
pub struct Conv {
    /// `[k · k · c_in, c_out]`, rows ordered (ky, kx, c_in) like a channels-last patch.
    pub weight: Vec<f32>,
    /// `[c_out]`.
    pub bias: Vec<f32>,
    /// Square kernel side.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Input channels.
    pub channels_in: usize,
    /// For 3x3 convolutions with stride 1 and padding 1: the Winograd-transformed filters
    /// `[16, c_in, c_out]` (see [`Conv::forward`]).
    winograd: Option<Vec<f32>>,
    /// `weight` for bf16 products, packed on first use.
    bf16: amx::PanelCache,
}

impl Conv {
    /// The host copy of a Burn [`crate::nn::Conv2d`] (`groups = 1`; a missing bias reads as
    /// zeros).
    pub fn from_module<B: burn::tensor::backend::Backend>(conv: &crate::nn::Conv2d<B>) -> Self {
        assert_eq!(conv.groups, 1, "host convolutions are dense");
        let [channels_out, channels_in, kernel, _] = conv.weight.dims();
        let bias = conv
            .bias
            .as_ref()
            .map(|b| values(b.val()))
            .unwrap_or_else(|| vec![0.0; channels_out]);
        let patchify = Patchify::from_torch(&values(conv.weight.val()), bias, channels_in, kernel);
        let winograd = (kernel == 3
            && conv.stride == 1
            && conv.padding == 1
            && channels_in.min(channels_out) >= WINOGRAD_MIN_CHANNELS)
            .then(|| winograd::transform_filters(&patchify.weight, channels_in, channels_out));
        Self {
            weight: patchify.weight,
            bias: patchify.bias,
            kernel,
            stride: conv.stride,
            padding: conv.padding,
            channels_in,
            winograd,
            bf16: amx::PanelCache::default(),
        }
    }

    /// Output channels.
    pub fn channels_out(&self) -> usize {
        self.bias.len()
    }

    /// `[batch, h, w, c_in]` → (`[batch, h', w', c_out]`, h', w'), PyTorch's output size;
    /// then `+ residual` (the output's shape) and a ReLU where asked.
    ///
    /// The output rows are split into chunks, one task each: the chunk's bias, patch rows,
    /// product (on one core) and epilogue all happen while the chunk is in that core's cache.
    /// A 3x3 convolution with stride 1, padding 1 and at least `WINOGRAD_MIN_CHANNELS` (128) input
    /// and output channels takes Winograd's F(2x2, 3x3) instead (`host/winograd.rs`: 2.25x
    /// fewer multiplications, the same sums regrouped).
    pub fn forward(
        &self,
        x: &[f32],
        (batch, h, w): (usize, usize, usize),
        residual: Option<&[f32]>,
        relu: bool,
    ) -> (Vec<f32>, usize, usize) {
        let channels_out = self.channels_out();
        let epilogue = |first: usize, out: &mut [f32]| {
            let n = out.len() / channels_out;
            match (residual, relu) {
                (Some(residual), true) => add_relu_in_place(
                    out,
                    &residual[first * channels_out..(first + n) * channels_out],
                ),
                (Some(residual), false) => add_in_place(
                    out,
                    &residual[first * channels_out..(first + n) * channels_out],
                ),
                (None, true) => relu_in_place(out),
                (None, false) => {}
            }
        };
        // In bf16 the tile unit multiplies 16x faster than it could add Winograd's transforms
        // back, and Winograd's regrouped sums would add to the operands' rounding: direct.
        if let Some(filters) = self
            .winograd
            .as_ref()
            .filter(|_| precision() == Precision::F32)
        {
            let dims = (batch, h, w, self.channels_in);
            let out = winograd::conv3x3(x, dims, filters, &self.bias, epilogue);
            return (out, h, w);
        }
        let (k, s, p, c) = (self.kernel, self.stride, self.padding, self.channels_in);
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let rows = batch * oh * ow;
        let pointwise = k == 1 && s == 1 && p == 0;
        let patch = k * k * c;
        let mut out = vec![0f32; rows * channels_out];
        let chunk_rows = chunk_rows(rows, if pointwise { 0 } else { patch });
        out.par_chunks_mut(chunk_rows * channels_out)
            .enumerate()
            .for_each(|(chunk, out)| {
                let first = chunk * chunk_rows;
                let n = out.len() / channels_out;
                fill_rows(out, &self.bias);
                if pointwise {
                    matmul_weights(
                        n,
                        c,
                        channels_out,
                        &x[first * c..],
                        c,
                        &self.weight,
                        Some(&self.bf16),
                        out,
                        true,
                        1,
                    );
                } else {
                    let mut patches = vec![0f32; n * patch];
                    for (i, row) in patches.chunks_exact_mut(patch).enumerate() {
                        let r = first + i;
                        let (b, oy, ox) = (r / (oh * ow), (r / ow) % oh, r % ow);
                        for ky in 0..k {
                            let iy = (oy * s + ky) as isize - p as isize;
                            for kx in 0..k {
                                let ix = (ox * s + kx) as isize - p as isize;
                                let dst = &mut row[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    dst.fill(0.0);
                                } else {
                                    let src = ((b * h + iy as usize) * w + ix as usize) * c;
                                    dst.copy_from_slice(&x[src..src + c]);
                                }
                            }
                        }
                    }
                    matmul_weights(
                        n,
                        patch,
                        channels_out,
                        &patches,
                        patch,
                        &self.weight,
                        Some(&self.bf16),
                        out,
                        true,
                        1,
                    );
                }
                epilogue(first, out);
            });
        (out, oh, ow)
    }
}

/// Output rows per task of a chunked product: enough chunks to keep every thread busy, each
/// large enough (≥ 64 rows) for the product to run at speed, its patch rows (`patch` floats
/// each, 0 for none) within about 4 MB.
fn chunk_rows(rows: usize, patch: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let balanced = rows.div_ceil(4 * threads);
    let cached = (1usize << 20).checked_div(patch).unwrap_or(512);
    balanced.min(cached).clamp(64, 512).min(rows.max(1))
}

/// `nn.AvgPool2d(k)` (kernel = stride = `k`, no padding, floor mode) on channels-last maps:
/// (`[batch, h / k, w / k, c]`, h / k, w / k).
pub fn avg_pool(
    x: &[f32],
    batch: usize,
    h: usize,
    w: usize,
    channels: usize,
    k: usize,
) -> (Vec<f32>, usize, usize) {
    let (oh, ow) = (h / k, w / k);
    let mut out = vec![0f32; batch * oh * ow * channels];
    let scale = 1.0 / (k * k) as f32;
    out.par_chunks_mut(ow * channels)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, oy) = (row / oh, row % oh);
            for ky in 0..k {
                let src_row = &x[((b * h + oy * k + ky) * w) * channels..];
                for ox in 0..ow {
                    for kx in 0..k {
                        let src = &src_row[(ox * k + kx) * channels..(ox * k + kx + 1) * channels];
                        add_in_place(&mut out[ox * channels..(ox + 1) * channels], src);
                    }
                }
            }
            for v in out.iter_mut() {
                *v *= scale;
            }
        });
    (out, oh, ow)
}

multiversion! {
    /// `x ← max(x + y, 0)`: a residual connection and its ReLU.
    pub fn add_relu_in_place(x: &mut [f32], y: &[f32]) {
        for (a, b) in x.iter_mut().zip(y) {
            *a = (*a + b).max(0.0);
        }
    }
}

/// PyTorch's bilinear resize (`align_corners=False`, no antialiasing) of channels-last maps
/// `[batch, h, w, c]` to `[batch, out_h, out_w, c]`, with the source positions and weights
/// computed as PyTorch's CPU kernel does (`h0λ · (w0λ · x00 + w1λ · x01) + h1λ · (…)`).
pub fn resize_bilinear_channels_last(
    x: &[f32],
    (batch, h, w, channels): (usize, usize, usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let taps = |input: usize, output: usize| -> Vec<(usize, usize, f32)> {
        let scale = input as f32 / output as f32;
        (0..output)
            .map(|i| {
                let source = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let low = (source as usize).min(input - 1);
                let high = (low + 1).min(input - 1);
                (low, high, source - low as f32)
            })
            .collect()
    };
    let (rows, columns) = (taps(h, out_h), taps(w, out_w));
    let mut out = vec![0f32; batch * out_h * out_w * channels];
    out.par_chunks_mut(out_w * channels)
        .enumerate()
        .for_each(|(row, out)| {
            let (b, y) = (row / out_h, row % out_h);
            let (y0, y1, fy) = rows[y];
            let image = &x[b * h * w * channels..(b + 1) * h * w * channels];
            let line = |yy: usize, xx: usize| &image[(yy * w + xx) * channels..][..channels];
            for (x, &(x0, x1, fx)) in columns.iter().enumerate() {
                blend4(
                    &mut out[x * channels..(x + 1) * channels],
                    [line(y0, x0), line(y0, x1), line(y1, x0), line(y1, x1)],
                    fx,
                    fy,
                );
            }
        });
    out
}

multiversion! {
    /// `out = (1 − fy)·((1 − fx)·a + fx·b) + fy·((1 − fx)·c + fx·d)` for corners [a, b, c, d].
    fn blend4(out: &mut [f32], corners: [&[f32]; 4], fx: f32, fy: f32) {
        let [a, b, c, d] = corners;
        let (gx, gy) = (1.0 - fx, 1.0 - fy);
        for i in 0..out.len() {
            out[i] = gy * (gx * a[i] + fx * b[i]) + fy * (gx * c[i] + fx * d[i]);
        }
    }
}

/// `[batch, channels, hw]` → `[batch, hw, channels]`.
pub fn to_channels_last(x: &[f32], batch: usize, channels: usize, hw: usize) -> Vec<f32> {
    transpose_planes(x, batch, channels, hw)
}

/// `[batch, hw, channels]` → `[batch, channels, hw]`.
pub fn to_channels_first(x: &[f32], batch: usize, hw: usize, channels: usize) -> Vec<f32> {
    transpose_planes(x, batch, hw, channels)
}

/// Transposes each `[rows, cols]` matrix of a batch, in 32 x 32 tiles for the caches.
fn transpose_planes(x: &[f32], batch: usize, rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0f32; x.len()];
    let plane = rows * cols;
    out.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .take(batch)
        .for_each(|(dst, src)| {
            for r0 in (0..rows).step_by(TILE) {
                for c0 in (0..cols).step_by(TILE) {
                    for r in r0..(r0 + TILE).min(rows) {
                        for c in c0..(c0 + TILE).min(cols) {
                            dst[c * rows + r] = src[r * cols + c];
                        }
                    }
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorisable `exp` against the standard library over its whole range.
    #[test]
    fn exp_neg_matches_std() {
        let mut worst = 0f32;
        // Down to −86.9: below −87 the function flushes to 0 on purpose.
        for i in 0..=86_900 {
            let x = -(i as f32) * 1e-3;
            let (ours, std) = (exp_neg(x), x.exp());
            worst = worst.max((ours - std).abs() / std);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_neg(-200.0), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
    }

    /// The in-place GELU (every instruction-set level the CPU has) against `erf` GELU in f64.
    #[test]
    fn gelu_matches_erf() {
        // |x| ≤ 5, where the Taylor series of the reference `erf` is exact in f64.
        let mut x: Vec<f32> = (-1000..=1000).map(|i| i as f32 * 5e-3).collect();
        let reference: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))
            })
            .collect();
        gelu_in_place(&mut x);
        for (ours, theirs) in x.iter().zip(&reference) {
            assert!((*ours as f64 - theirs).abs() < 1e-6, "{ours} vs {theirs}");
        }
        // Far tails: the identity and zero.
        let mut tails = [-30.0f32, -12.0, 12.0, 30.0];
        gelu_in_place(&mut tails);
        assert_eq!(tails, [0.0, 0.0, 12.0, 30.0]);
    }

    /// `erf` by its Taylor series (exact to ~1e-11 in f64 for |x| ≤ 4; cancellation ruins it
    /// beyond).
    fn erf(x: f64) -> f64 {
        assert!(x.abs() <= 4.0, "the series is only used for |x| ≤ 4");
        let (mut term, mut total) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            total += term / (2 * n + 1) as f64;
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// Row LayerNorm and the transposes against direct loops.
    #[test]
    fn layer_norm_and_transposes_match_direct_loops() {
        let (rows, width) = (7, 37);
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 37 % 101) as f32).sin() * 3.0)
            .collect();
        let norm = RowNorm {
            gamma: (0..width).map(|i| 0.5 + i as f32 * 0.01).collect(),
            beta: (0..width).map(|i| i as f32 * -0.02).collect(),
            epsilon: 1e-6,
        };
        let mut ours = x.clone();
        norm.apply(&mut ours);
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
            for c in 0..width {
                let expected = (row[c] as f64 - mean) / (var + 1e-6).sqrt() * norm.gamma[c] as f64
                    + norm.beta[c] as f64;
                assert!((ours[r * width + c] as f64 - expected).abs() < 1e-5);
            }
        }
        let t = to_channels_first(&x, 1, rows, width);
        assert_eq!(to_channels_last(&t, 1, width, rows), x);
        assert_eq!(t[3 * rows + 5], x[5 * width + 3]);
    }

    /// A 3x3 convolution (stride 1, padding 1) by the Winograd path and by the direct path,
    /// against the sum over each patch in f64: odd and even sizes (tiles cut by the border),
    /// maps smaller than a tile, a batch, a residual and ReLU.
    #[test]
    fn winograd_equals_direct_convolution() {
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 1.7 + (i as f32 * 0.37).cos();
        for (batch, h, w, c_in, c_out) in [
            (2, 7, 9, 3, 5),
            (1, 1, 1, 4, 4),
            (1, 1, 6, 2, 3),
            (1, 5, 1, 2, 3),
            (2, 16, 12, 17, 33),
            (1, 11, 13, 64, 16),
        ] {
            let x: Vec<f32> = (0..batch * h * w * c_in).map(|i| wave(i, 0.71)).collect();
            let weight: Vec<f32> = (0..9 * c_in * c_out).map(|i| wave(i, 1.31) * 0.3).collect();
            let bias: Vec<f32> = (0..c_out).map(|i| wave(i, 0.13)).collect();
            let residual: Vec<f32> = (0..batch * h * w * c_out).map(|i| wave(i, 0.53)).collect();
            let conv = Conv {
                winograd: Some(winograd::transform_filters(&weight, c_in, c_out)),
                weight,
                bias,
                kernel: 3,
                stride: 1,
                padding: 1,
                channels_in: c_in,
                bf16: amx::PanelCache::default(),
            };
            let mut expected = vec![0f64; batch * h * w * c_out];
            let mut scale = 0f64;
            for b in 0..batch {
                for y in 0..h as isize {
                    for x_ in 0..w as isize {
                        let row = (b * h + y as usize) * w + x_ as usize;
                        for co in 0..c_out {
                            let mut sum = conv.bias[co] as f64;
                            for ky in 0..3isize {
                                for kx in 0..3isize {
                                    let (iy, ix) = (y + ky - 1, x_ + kx - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let at = ((b * h + iy as usize) * w + ix as usize) * c_in;
                                    for ci in 0..c_in {
                                        let tap = ((ky * 3 + kx) as usize * c_in + ci) * c_out;
                                        sum += x[at + ci] as f64 * conv.weight[tap + co] as f64;
                                    }
                                }
                            }
                            scale = scale.max(sum.abs());
                            let v = sum + residual[row * c_out + co] as f64;
                            expected[row * c_out + co] = v.max(0.0);
                        }
                    }
                }
            }
            let direct = Conv {
                winograd: None,
                ..conv.clone()
            };
            for (path, conv) in [("winograd", conv), ("direct", direct)] {
                let (out, oh, ow) = conv.forward(&x, (batch, h, w), Some(&residual), true);
                assert_eq!((oh, ow), (h, w));
                for (i, (ours, theirs)) in out.iter().zip(&expected).enumerate() {
                    let error = (*ours as f64 - theirs).abs() / scale;
                    assert!(
                        error < 1e-6,
                        "{path} {batch}x{h}x{w}x{c_in}->{c_out}: index {i}: {ours} vs {theirs}"
                    );
                }
            }
        }
    }

    /// The depthwise convolution against a direct loop in the same summation order (bias,
    /// then taps by row and column): equal to the last bit, with channel counts that fill whole
    /// register blocks, part of one, and none.
    #[test]
    fn depthwise_equals_direct_loop() {
        let wave = |i: usize, f: f32| (i as f32 * f).sin() + (i as f32 * 0.29).cos() * 0.5;
        for (batch, h, w, channels, kernel) in [
            (2, 9, 11, 64, 7),
            (1, 3, 4, 80, 7),
            (1, 6, 5, 7, 3),
            (1, 1, 1, 128, 7),
        ] {
            let x: Vec<f32> = (0..batch * h * w * channels)
                .map(|i| wave(i, 0.61))
                .collect();
            let torch: Vec<f32> = (0..channels * kernel * kernel)
                .map(|i| wave(i, 1.7))
                .collect();
            let bias: Vec<f32> = (0..channels).map(|i| wave(i, 0.3)).collect();
            let conv = Depthwise::from_torch(&torch, bias.clone(), kernel);
            let out = conv.forward(&x, batch, h, w);
            let pad = (kernel / 2) as isize;
            for b in 0..batch {
                for y in 0..h as isize {
                    for x_ in 0..w as isize {
                        for c in 0..channels {
                            let mut sum = bias[c];
                            for ky in 0..kernel as isize {
                                for kx in 0..kernel as isize {
                                    let (sy, sx) = (y + ky - pad, x_ + kx - pad);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    let at = ((b * h + sy as usize) * w + sx as usize) * channels;
                                    let tap = (c * kernel + ky as usize) * kernel + kx as usize;
                                    sum += torch[tap] * x[at + c];
                                }
                            }
                            let at = ((b * h + y as usize) * w + x_ as usize) * channels + c;
                            assert_eq!(out[at], sum, "{batch}x{h}x{w}x{channels} index {at}");
                        }
                    }
                }
            }
        }
    }
}
