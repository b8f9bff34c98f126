//! Checking that a backend's device really works before a model is loaded onto it.
//!
//! Burn's GPU backends initialise lazily and panic deep inside wgpu or the CUDA driver when
//! there is no adapter, no driver or no library: the first tensor op panics with a message
//! such as "No possible adapter available for backend". [`probe`] runs one tiny round trip
//! (upload, kernel, download) under `catch_unwind`, so callers can turn that into a typed error
//! that says what is missing, instead of a panic from the middle of a model load.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The message of a caught panic payload (`&str` or `String`; anything else is unnamed).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f`, turning a panic into `Err(message)`. The panic hook is silenced while `f` runs, so
/// the caller decides what the user sees (the hook is process-global: a panic on another thread
/// during that time is not printed either).
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|payload| panic_message(payload.as_ref()))
}

/// One upload, one kernel and one download on `device`; `Err` says why the device cannot be
/// used (the backend's own panic message, or a wrong result).
pub fn probe<B: Backend>(device: &B::Device) -> Result<(), String> {
    let value = catch_panic(|| {
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0, 3.0], device);
        (t * 2.0).sum().into_scalar().elem::<f32>()
    })?;
    if (value - 12.0).abs() > 1e-5 {
        return Err(format!(
            "the device computed 2·(1+2+3) = {value}, not 12: its kernels are broken"
        ));
    }
    Ok(())
}

/// Environment variable that makes [`wgpu_test_device`] fail instead of skipping: CI sets it
/// after installing a Vulkan driver (Mesa's lavapipe), so the GPU tests can never pass by not
/// running.
pub const REQUIRE_WGPU_ENV: &str = "CLIP_VIS_REQUIRE_WGPU";

/// For tests of the wgpu backend: its default device when it works. Without a usable adapter
/// it returns `None` after printing why (the test is then skipped), unless
/// [`REQUIRE_WGPU_ENV`] is set, where it panics.
#[cfg(feature = "wgpu")]
pub fn wgpu_test_device() -> Option<burn::backend::wgpu::WgpuDevice> {
    let device = burn::backend::wgpu::WgpuDevice::default();
    match probe::<burn::backend::Wgpu>(&device) {
        Ok(()) => Some(device),
        Err(cause) if std::env::var_os(REQUIRE_WGPU_ENV).is_some() => {
            panic!("{REQUIRE_WGPU_ENV} is set but wgpu has no usable adapter: {cause}")
        }
        Err(cause) => {
            eprintln!(
                "SKIPPED: no usable wgpu adapter ({cause}); install a Vulkan driver \
                 (scripts/install-vulkan.sh) to run the GPU tests"
            );
            None
        }
    }
}
