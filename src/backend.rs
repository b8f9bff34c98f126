//! The backend the command line and examples run on, chosen by cargo feature:
//! `cuda` (GPU), else `flex` (the default CPU backend), else `ndarray`.

#[cfg(feature = "cuda")]
/// The GPU backend (`--features cuda`).
pub type Default = burn::backend::Cuda;

#[cfg(all(not(feature = "cuda"), feature = "flex"))]
/// The default CPU backend.
pub type Default = burn::backend::Flex;

#[cfg(all(not(feature = "cuda"), not(feature = "flex"), feature = "ndarray"))]
/// The ndarray CPU backend.
pub type Default = burn::backend::NdArray;

#[cfg(feature = "flex")]
/// The CPU backend used for host-side work (`flex`).
pub type Cpu = burn::backend::Flex;

#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
/// The CPU backend used for host-side work (`ndarray`).
pub type Cpu = burn::backend::NdArray;

/// `count` devices of [`Default`](type@Default) for data-parallel training: GPUs `0..count`
/// with `cuda`; on the CPU backends `count` ranks share the one CPU device (each rank is a
/// thread; useful to test a data-parallel setup, not for speed).
pub fn devices(count: usize) -> Vec<burn::tensor::Device<Default>> {
    #[cfg(feature = "cuda")]
    {
        (0..count)
            .map(burn::backend::cuda::CudaDevice::new)
            .collect()
    }
    #[cfg(not(feature = "cuda"))]
    {
        vec![std::default::Default::default(); count]
    }
}

/// Human-readable name of [`Default`](type@Default).
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "flex") {
        "flex (CPU)"
    } else {
        "ndarray (CPU)"
    }
}

#[cfg(not(any(feature = "flex", feature = "ndarray")))]
compile_error!("clip-vis needs a CPU backend: enable the `flex` (default) or `ndarray` feature");
