//! Backends, chosen at run time.
//!
//! The library is generic over Burn's `B: Backend`; this module names the backends compiled into
//! this build and picks one at run time from a [`DeviceKind`] (`--device cpu|wgpu|cuda` on every
//! command that runs a model):
//! - [`Cpu`]: `flex` (the default CPU backend), else `ndarray`;
//! - [`Wgpu`] (cargo feature `wgpu`): Vulkan, Metal or DX12 through wgpu, any GPU vendor (and
//!   Mesa's software Vulkan, lavapipe, on machines without a GPU);
//! - `Cuda` (cargo feature `cuda`): NVIDIA GPUs (NVRTC loaded at run time).
//!
//! Code that should run on whichever device the user picked implements [`OnBackend`] once and
//! calls [`run_on`]:
//!
//! ```
//! use burn::tensor::backend::Backend;
//! use burn::tensor::{ElementConversion, Tensor};
//! use clip_vis::backend::{run_on, DeviceKind, OnBackend};
//!
//! struct Sum(Vec<f32>);
//! impl OnBackend for Sum {
//!     type Output = f32;
//!     fn run<B: Backend>(self, device: B::Device) -> clip_vis::Result<f32> {
//!         let t = Tensor::<B, 1>::from_floats(self.0.as_slice(), &device);
//!         Ok(t.sum().into_scalar().elem::<f32>())
//!     }
//! }
//! let kind: DeviceKind = "cpu".parse()?;
//! assert_eq!(run_on(kind, Sum(vec![1.0, 2.0]))?, 3.0);
//! # Ok::<(), clip_vis::Error>(())
//! ```

use crate::{Error, Result};
use burn::tensor::backend::Backend;
use std::fmt;
use std::str::FromStr;

#[cfg(feature = "flex")]
/// The CPU backend (`flex`).
pub type Cpu = burn::backend::Flex;

#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
/// The CPU backend (`ndarray`).
pub type Cpu = burn::backend::NdArray;

#[cfg(feature = "wgpu")]
/// The portable GPU backend (feature `wgpu`): Vulkan, Metal, DX12; f32 kernels in WGSL.
pub type Wgpu = burn::backend::Wgpu;

#[cfg(feature = "cuda")]
/// The NVIDIA GPU backend (feature `cuda`).
pub type Cuda = burn::backend::Cuda;

#[cfg(feature = "cuda")]
/// The compile-time default backend of builds with `cuda`: [`Cuda`] (kept for code written
/// before [`run_on`]; new code should take a [`DeviceKind`]).
pub type Default = burn::backend::Cuda;

#[cfg(not(feature = "cuda"))]
/// The compile-time default backend: [`Cpu`] (with feature `cuda`, `Cuda`). New code should
/// take a [`DeviceKind`] and call [`run_on`].
pub type Default = Cpu;

/// Where a model runs, chosen at run time (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, std::default::Default)]
pub enum DeviceKind {
    /// The CPU backend (always compiled in).
    #[default]
    Cpu,
    /// A GPU through wgpu (Vulkan, Metal, DX12); needs the `wgpu` feature.
    Wgpu,
    /// An NVIDIA GPU through CUDA; needs the `cuda` feature.
    Cuda,
}

impl DeviceKind {
    /// Every kind, in `--device` order.
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Cpu, DeviceKind::Wgpu, DeviceKind::Cuda];

    /// The name `--device` takes.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// Whether this build has the backend (its cargo feature was enabled).
    pub fn compiled_in(self) -> bool {
        match self {
            DeviceKind::Cpu => true,
            DeviceKind::Wgpu => cfg!(feature = "wgpu"),
            DeviceKind::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Whether the backend computes on the host (no transfers, no kernel launches).
    pub fn is_host(self) -> bool {
        matches!(self, DeviceKind::Cpu)
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "wgpu" | "vulkan" | "metal" | "dx12" => Ok(DeviceKind::Wgpu),
            "cuda" | "gpu" => Ok(DeviceKind::Cuda),
            other => Err(Error::Usage(format!(
                "unknown device {other:?}: use cpu, wgpu or cuda"
            ))),
        }
    }
}

/// Work that runs on any backend. [`run_on`] picks `B` from a [`DeviceKind`] and hands the
/// work its device.
pub trait OnBackend {
    /// What the work returns.
    type Output;
    /// Runs the work on backend `B`, device `device`.
    fn run<B: Backend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `job` on the backend of `kind` (device 0), after checking that the device works: a
/// backend this build lacks, a missing driver or no adapter is an [`Error::Device`] that says
/// what is missing and how to get it.
pub fn run_on<J: OnBackend>(kind: DeviceKind, job: J) -> Result<J::Output> {
    match kind {
        DeviceKind::Cpu => job.run::<Cpu>(std::default::Default::default()),
        DeviceKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let device = gpu_devices(kind, 1)?.remove(0);
                job.run::<Wgpu>(device.wgpu())
            }
            #[cfg(not(feature = "wgpu"))]
            {
                let _ = job;
                Err(not_compiled(kind))
            }
        }
        DeviceKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = gpu_devices(kind, 1)?.remove(0);
                job.run::<Cuda>(device.cuda())
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = job;
                Err(not_compiled(kind))
            }
        }
    }
}

/// The error for a backend this build does not have.
pub fn not_compiled(kind: DeviceKind) -> Error {
    Error::Device {
        device: kind.name().into(),
        message: format!(
            "this clip-vis was built without the `{0}` cargo feature; rebuild with \
             `cargo build --release --features {0}`{1}",
            kind.name(),
            match kind {
                DeviceKind::Wgpu => " (Vulkan drivers on Linux: scripts/install-vulkan.sh)",
                _ => "",
            }
        ),
    }
}

/// What is missing when a GPU backend cannot start, in the user's terms.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
fn missing_driver(kind: DeviceKind, index: usize, cause: String) -> Error {
    let hint = match kind {
        DeviceKind::Wgpu => {
            "no usable Vulkan, Metal or DX12 adapter. On Linux install your GPU's Vulkan driver \
             (or Mesa's, `apt install mesa-vulkan-drivers`; scripts/install-vulkan.sh does it, \
             and gives a software Vulkan where there is no GPU); check with `vulkaninfo --summary`"
        }
        DeviceKind::Cuda => {
            "no usable CUDA device. It needs an NVIDIA GPU, its driver (libcuda) and NVRTC \
             (the CUDA toolkit's libnvrtc) on the library path; check with `nvidia-smi`"
        }
        DeviceKind::Cpu => "the CPU backend failed",
    };
    Error::Device {
        device: format!("{}:{index}", kind.name()),
        message: format!("{hint} (the backend said: {cause})"),
    }
}

/// One GPU device of the backends compiled in.
#[derive(Debug, Clone)]
pub enum GpuDevice {
    /// A wgpu adapter.
    #[cfg(feature = "wgpu")]
    Wgpu(burn::backend::wgpu::WgpuDevice),
    /// A CUDA device.
    #[cfg(feature = "cuda")]
    Cuda(burn::backend::cuda::CudaDevice),
}

impl GpuDevice {
    /// The wgpu device (panics on another kind: [`gpu_devices`] returns one kind only).
    #[cfg(feature = "wgpu")]
    pub fn wgpu(self) -> burn::backend::wgpu::WgpuDevice {
        match self {
            GpuDevice::Wgpu(device) => device,
            #[allow(unreachable_patterns)]
            _ => panic!("not a wgpu device"),
        }
    }

    /// The CUDA device (panics on another kind: [`gpu_devices`] returns one kind only).
    #[cfg(feature = "cuda")]
    pub fn cuda(self) -> burn::backend::cuda::CudaDevice {
        match self {
            GpuDevice::Cuda(device) => device,
            #[allow(unreachable_patterns)]
            _ => panic!("not a CUDA device"),
        }
    }
}

/// `count` checked devices of a GPU kind: device 0 is the best available adapter (wgpu) or
/// GPU 0 (CUDA); more than one means GPUs `0..count` (wgpu: discrete GPUs). Each is probed with
/// a tiny computation; a failure is an [`Error::Device`] naming the device.
#[allow(unreachable_code, clippy::diverging_sub_expression)]
// Without a GPU feature the loop body is only the error arm.
#[cfg_attr(
    not(any(feature = "wgpu", feature = "cuda")),
    allow(unused_mut, unused_variables)
)]
pub fn gpu_devices(kind: DeviceKind, count: usize) -> Result<Vec<GpuDevice>> {
    if !kind.compiled_in() {
        return Err(not_compiled(kind));
    }
    let mut devices = Vec::with_capacity(count);
    for index in 0..count.max(1) {
        let device = match kind {
            #[cfg(feature = "wgpu")]
            DeviceKind::Wgpu => {
                use burn::backend::wgpu::WgpuDevice;
                let device = if count <= 1 {
                    WgpuDevice::default()
                } else {
                    WgpuDevice::DiscreteGpu(index)
                };
                clip_vis_clip::device::probe::<Wgpu>(&device)
                    .map_err(|cause| missing_driver(kind, index, cause))?;
                GpuDevice::Wgpu(device)
            }
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => {
                let device = burn::backend::cuda::CudaDevice::new(index);
                clip_vis_clip::device::probe::<Cuda>(&device)
                    .map_err(|cause| missing_driver(kind, index, cause))?;
                GpuDevice::Cuda(device)
            }
            _ => {
                return Err(Error::Usage(format!(
                    "{kind} is not a GPU backend of this build"
                )))
            }
        };
        devices.push(device);
    }
    Ok(devices)
}

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

/// Human-readable name of the backend a [`DeviceKind`] runs on.
pub fn kind_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Cpu if cfg!(feature = "flex") => "flex (CPU)",
        DeviceKind::Cpu => "ndarray (CPU)",
        DeviceKind::Wgpu => "wgpu (GPU)",
        DeviceKind::Cuda => "cuda (GPU)",
    }
}

#[cfg(not(any(feature = "flex", feature = "ndarray")))]
compile_error!("clip-vis needs a CPU backend: enable the `flex` (default) or `ndarray` feature");
