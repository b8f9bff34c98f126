//! A small random-weight CLIP-VIS (RN50-style CLIP, pixel decoder, 3-layer transformer decoder)
//! on a 70x100 image (not a multiple of 32) gives the PyTorch reference's predictions, and
//! checkpoints that do not fit are refused with errors that say why.
//!
//! Fixture: `tests/fixtures/clip_vis_small.safetensors`, written by
//! `scripts/fixtures/gen_clip_vis.py` from the three part generators (versions in their
//! headers), with detectron2 key names (`backbone.clip_model.*`, `sem_seg_head.*`).

#[path = "../../clip-vis-clip/tests/common/mod.rs"]
mod common;

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clip_vis_clip::preprocess::RgbImage;
use clip_vis_clip::weights::{save_safetensors, SaveDtype};
use clip_vis_clip::TensorStore;
use clip_vis_model::{ClipVis, ClipVisConfig, ModelError, CONFIG_METADATA_KEY};
use common::{assert_close, fixture, io};
use std::collections::HashMap;
use std::path::PathBuf;

fn config(store: &TensorStore) -> ClipVisConfig {
    let meta: serde_json::Value = serde_json::from_str(&store.metadata()["config"]).unwrap();
    serde_json::from_value(serde_json::json!({
        "clip": meta["clip"],
        "pixel_decoder": meta["pixel_decoder"],
        "transformer_decoder": meta["transformer_decoder"],
    }))
    .expect("fixture config")
}

fn image(store: &TensorStore) -> RgbImage {
    let raw = store.raw("io.image").unwrap();
    RgbImage::new(
        raw.shape[1],
        raw.shape[0],
        raw.values.iter().map(|&v| v as u8).collect(),
    )
    .unwrap()
}

fn check<B: Backend>(device: &B::Device) {
    let store = fixture("clip_vis_small.safetensors");
    let model = ClipVis::<B>::load(&store, &config(&store), device).expect("weights");
    let output = model
        .segment_image(&image(&store), device)
        .expect("inference");
    let last = &output.frame.decoder.last;
    assert_close(
        "object logits",
        last.object_logits.clone(),
        io(&store, "object_logits", device),
    );
    assert_close(
        "stride-4 masks",
        last.masks.clone(),
        io(&store, "masks", device),
    );
    assert_close("ious", last.ious.clone(), io(&store, "ious", device));
    assert_close(
        "embeddings",
        output.frame.decoder.embeds.clone(),
        io(&store, "embeds", device),
    );
    assert_close(
        "masks at the original size",
        output.masks,
        io(&store, "masks_original", device),
    );
}

#[test]
fn small_clip_vis_matches_pytorch_on_flex() {
    check::<Flex>(&Default::default());
}

#[test]
fn small_clip_vis_matches_pytorch_on_ndarray() {
    check::<burn::backend::NdArray>(&Default::default());
}

/// The whole model on wgpu (lavapipe in CI), against the same PyTorch outputs.
#[cfg(feature = "wgpu")]
#[test]
fn small_clip_vis_matches_pytorch_on_wgpu() {
    if let Some(device) = clip_vis_clip::device::wgpu_test_device() {
        check::<burn::backend::Wgpu>(&device);
    }
}

/// The fixture's model tensors (no `io.*`) written as a clip-vis file, after `edit`.
fn write_checkpoint(name: &str, metadata: Option<String>, keep: impl Fn(&str) -> bool) -> PathBuf {
    let store = fixture("clip_vis_small.safetensors");
    let tensors: Vec<_> = store
        .parameters()
        .into_iter()
        .filter(|(k, _, _)| !k.starts_with("io.") && keep(k))
        .collect();
    let dir = std::env::temp_dir().join(format!("clip-vis-model-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let metadata = metadata
        .map(|json| HashMap::from([(CONFIG_METADATA_KEY.to_string(), json)]))
        .unwrap_or_default();
    save_safetensors(&path, &tensors, SaveDtype::F32, metadata).unwrap();
    path
}

#[test]
fn a_converted_file_loads_strictly_and_predicts_the_same() {
    let store = fixture("clip_vis_small.safetensors");
    let path = write_checkpoint("ok", Some(config(&store).to_json()), |_| true);
    let device = Default::default();
    let model = ClipVis::<Flex>::from_file(&path, &device).expect("strict load");
    let output = model.segment_image(&image(&store), &device).unwrap();
    assert_close(
        "object logits",
        output.frame.decoder.last.object_logits,
        io(&store, "object_logits", &device),
    );
}

#[test]
fn a_checkpoint_without_the_decoder_is_refused() {
    let store = fixture("clip_vis_small.safetensors");
    let path = write_checkpoint("nodecoder", Some(config(&store).to_json()), |k| {
        k.starts_with("backbone.")
    });
    let error = ClipVis::<Flex>::from_file(&path, &Default::default()).unwrap_err();
    assert!(matches!(error, ModelError::MissingPart { .. }), "{error}");
    assert!(
        error.to_string().contains("sem_seg_head.pixel_decoder"),
        "{error}"
    );
}

#[test]
fn a_layer_count_that_disagrees_with_the_tensors_is_refused() {
    let store = fixture("clip_vis_small.safetensors");
    let mut wrong = config(&store);
    let found = wrong.transformer_decoder.layers;
    wrong.transformer_decoder.layers = found + 3;
    let path = write_checkpoint("layers", Some(wrong.to_json()), |_| true);
    let error = ClipVis::<Flex>::from_file(&path, &Default::default()).unwrap_err();
    assert!(
        matches!(error, ModelError::LayerCountMismatch { configured, found: f, .. } if configured == found + 3 && f == found),
        "{error}"
    );
}

#[test]
fn images_with_the_wrong_channels_or_no_pixels_are_refused() {
    let store = fixture("clip_vis_small.safetensors");
    let device = Default::default();
    let model = ClipVis::<Flex>::load(&store, &config(&store), &device).unwrap();
    let four_channels =
        Tensor::<Flex, 4>::random([1, 4, 64, 64], Distribution::Normal(0.0, 1.0), &device);
    assert!(matches!(
        model.forward(four_channels),
        Err(ModelError::InvalidInput(_))
    ));
    let empty = Tensor::<Flex, 4>::zeros([1, 3, 0, 64], &device);
    assert!(matches!(
        model.forward(empty),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(RgbImage::new(0, 10, Vec::new()).is_err());
}

/// Saving the decoders writes back exactly the tensors they were loaded from: every
/// `sem_seg_head.*` key of the checkpoint, same shape, same bits (linear weights transposed
/// back, the packed attention projections re-packed).
#[test]
fn saved_decoders_equal_the_checkpoint() {
    let store = fixture("clip_vis_small.safetensors");
    let model = ClipVis::<Flex>::load(&store, &config(&store), &Default::default()).unwrap();
    let mut sink = clip_vis_clip::TensorSink::new();
    clip_vis_model::save_decoders(&mut sink, &model.pixel_decoder, &model.transformer_decoder);
    let mut expected: Vec<&str> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("sem_seg_head."))
        .collect();
    expected.sort_unstable();
    let saved: Vec<&str> = sink.tensors().keys().map(String::as_str).collect();
    assert_eq!(saved, expected, "saved keys");
    for (key, tensor) in sink.tensors() {
        let original = store.raw(key).unwrap();
        assert_eq!(tensor.shape, original.shape, "{key}: shape");
        assert!(
            tensor
                .values
                .iter()
                .zip(&original.values)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{key}: values differ"
        );
    }
}
