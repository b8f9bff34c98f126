//! Parity of the CLIP towers with open_clip 2.24 (PyTorch) on small random-weight models.
//!
//! Fixtures: `tests/fixtures/{rn50,convnext}_small.safetensors`, written by
//! `scripts/fixtures/gen_clip.py` (versions pinned in its header; regenerate with
//! `/opt/refenv/bin/python scripts/fixtures/gen_clip.py` from the repository root). Each holds the
//! model's open_clip state dict, the inputs and PyTorch's outputs under `io.*`, and the small
//! architecture as JSON in the metadata key `config`. Every weight is perturbed (layer scale,
//! norms, BatchNorm statistics) so that no block is an identity.

mod common;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use clip_vis_clip::preprocess::SIZE_DIVISIBILITY;
use clip_vis_clip::Clip;
use common::{assert_close, fixture, fixture_config, io};

/// Which implementation of the image trunk a check runs.
#[derive(Clone, Copy, PartialEq)]
enum Trunk {
    /// `Clip::features`: the host kernels on the CPU backends, Burn's ops elsewhere.
    Default,
    /// `Clip::features_reference`: Burn's ops everywhere.
    Reference,
}

fn check_model<B: Backend>(name: &str, device: &B::Device) {
    check_model_with::<B>(name, device, Trunk::Default)
}

fn check_model_with<B: Backend>(name: &str, device: &B::Device, trunk: Trunk) {
    let store = fixture(name);
    let config = fixture_config(&store);
    let clip = Clip::<B>::load(&store, &config, device).expect("fixture weights load");

    // Multi-scale features on the zero-padded input.
    let pixels: Tensor<B, 4> = io(&store, "pixels", device);
    let [_, _, h, w] = pixels.dims();
    let padded_dims = [h, w].map(|v| v.div_ceil(SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY);
    let padded = pixels.pad(
        [(0, padded_dims[0] - h), (0, padded_dims[1] - w)],
        burn::tensor::ops::PadMode::Constant(0.0),
    );
    assert_close(
        &format!("{name} padding"),
        padded.clone(),
        io::<B, 4>(&store, "pixels_padded", device),
    );
    let features = match trunk {
        Trunk::Default => clip.features(padded),
        Trunk::Reference => clip.features_reference(padded),
    };
    assert_close(
        &format!("{name} stem"),
        features.stem,
        io(&store, "stem", device),
    );
    assert_close(
        &format!("{name} res2"),
        features.res2,
        io(&store, "res2", device),
    );
    assert_close(
        &format!("{name} res3"),
        features.res3,
        io(&store, "res3", device),
    );
    assert_close(
        &format!("{name} res4"),
        features.res4,
        io(&store, "res4", device),
    );
    assert_close(
        &format!("{name} res5"),
        features.res5.clone(),
        io(&store, "res5", device),
    );

    // Global image embedding at the model's native size.
    let global = clip.features(io(&store, "pixels_global", device));
    let embed = clip.embed_image(global.res5).expect("native grid");
    assert_close(
        &format!("{name} image embedding"),
        embed,
        io(&store, "image_embed", device),
    );

    // Dense mask-pooled path, including a single-pixel, a full and an empty mask.
    let masks: Tensor<B, 3> = io(&store, "masks", device);
    let masks: Tensor<B, 3, Bool> = masks.greater_elem(0.0);
    let dense = clip
        .embed_masks(features.res5, masks)
        .expect("mask pooling");
    assert_close(
        &format!("{name} dense embeddings"),
        dense,
        io(&store, "dense_embed", device),
    );

    // Text tower.
    let tokens = store.raw("io.text_tokens").expect("tokens");
    let ids: Vec<u32> = tokens.values.iter().map(|&v| v as u32).collect();
    let text = clip.encode_text(&ids, tokens.shape[1]).expect("text");
    assert_close(
        &format!("{name} text embeddings"),
        text,
        io(&store, "text_embed", device),
    );
}

#[test]
fn rn50_small_matches_open_clip_on_flex() {
    check_model::<burn::backend::Flex>("rn50_small.safetensors", &Default::default());
}

#[test]
fn convnext_small_matches_open_clip_on_flex() {
    check_model::<burn::backend::Flex>("convnext_small.safetensors", &Default::default());
}

/// Burn's tensor-op trunk on the CPU too (the GPU backends' path), so both implementations of
/// each trunk are held against PyTorch here.
#[test]
fn reference_trunks_match_open_clip_on_flex() {
    for name in ["rn50_small.safetensors", "convnext_small.safetensors"] {
        check_model_with::<burn::backend::Flex>(name, &Default::default(), Trunk::Reference);
    }
}

/// The host trunk against the tensor-op one on a batch of two non-square random images (the
/// fixture has one): batching, a remainder-free but unequal height and width.
#[test]
fn host_trunk_equals_reference_trunk_on_a_batch() {
    type B = burn::backend::Flex;
    let device = Default::default();
    for name in ["rn50_small.safetensors", "convnext_small.safetensors"] {
        let store = fixture(name);
        let clip = Clip::<B>::load(&store, &fixture_config(&store), &device).expect("weights");
        let pixels = Tensor::<B, 4>::random(
            [2, 3, 96, 160],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let host = clip.features(pixels.clone());
        let reference = clip.features_reference(pixels);
        for (level, ours, theirs) in [
            ("stem", host.stem, reference.stem),
            ("res2", host.res2, reference.res2),
            ("res3", host.res3, reference.res3),
            ("res4", host.res4, reference.res4),
            ("res5", host.res5, reference.res5),
        ] {
            assert_close(&format!("{name} batched {level}"), ours, theirs);
        }
    }
}

/// Under autodiff the CPU backends take Burn's tensor ops everywhere (no host kernels): the
/// generic dense pooling and text paths are held against PyTorch here too.
#[test]
fn towers_match_open_clip_under_autodiff() {
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    for name in ["rn50_small.safetensors", "convnext_small.safetensors"] {
        check_model::<B>(name, &Default::default());
    }
}

#[test]
fn rn50_small_matches_open_clip_on_ndarray() {
    check_model::<burn::backend::NdArray>("rn50_small.safetensors", &Default::default());
}

#[test]
fn convnext_small_matches_open_clip_on_ndarray() {
    check_model::<burn::backend::NdArray>("convnext_small.safetensors", &Default::default());
}

/// The towers on the wgpu backend (Vulkan; Mesa's lavapipe in CI) against the same PyTorch
/// outputs at the same tolerance.
#[cfg(feature = "wgpu")]
#[test]
fn rn50_small_matches_open_clip_on_wgpu() {
    if let Some(device) = clip_vis_clip::device::wgpu_test_device() {
        check_model::<burn::backend::Wgpu>("rn50_small.safetensors", &device);
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn convnext_small_matches_open_clip_on_wgpu() {
    if let Some(device) = clip_vis_clip::device::wgpu_test_device() {
        check_model::<burn::backend::Wgpu>("convnext_small.safetensors", &device);
    }
}
