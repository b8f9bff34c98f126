//! Parity of the masked-attention decoder and its heads with a PyTorch reference of CLIP-VIS's
//! `MultiScaleMaskedTransformerDecoder`: every prediction (the learnable queries' and each
//! layer's), so the attention-mask path is checked layer by layer.
//!
//! Fixture: `tests/fixtures/transformer_decoder.safetensors`, written by
//! `scripts/fixtures/gen_transformer_decoder.py` (versions pinned in its header): 4 layers so
//! the 1/32, 1/16, 1/8 cycle wraps, batch 2, non-square maps, masks that block some positions
//! and some whole rows.

#[path = "../../clip-vis-clip/tests/common/mod.rs"]
mod common;

use burn::tensor::backend::Backend;
use clip_vis_clip::TensorStore;
use clip_vis_transformer_decoder::{MultiScaleMaskedTransformerDecoder, TransformerDecoderConfig};
use common::{assert_close, io};

fn check<B: Backend>(device: &B::Device) {
    let path = format!(
        "{}/tests/fixtures/transformer_decoder.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let store = TensorStore::open(path).expect("fixture");
    let meta: serde_json::Value = serde_json::from_str(&store.metadata()["config"]).unwrap();
    let config: TransformerDecoderConfig =
        serde_json::from_value(meta["clip_vis"].clone()).expect("config");
    let decoder = MultiScaleMaskedTransformerDecoder::<B>::load(&store, "", &config, device)
        .expect("weights");
    let maps = [0, 1, 2].map(|l| io::<B, 4>(&store, &format!("multi_scale_{l}"), device));
    let output = decoder.forward(&maps, io(&store, "mask_features", device));
    let predictions: Vec<_> = output
        .aux
        .iter()
        .chain(std::iter::once(&output.last))
        .collect();
    assert_eq!(predictions.len(), config.layers + 1);
    for (p, prediction) in predictions.into_iter().enumerate() {
        assert_close(
            &format!("pred{p} object logits"),
            prediction.object_logits.clone(),
            io(&store, &format!("pred{p}.object_logits"), device),
        );
        assert_close(
            &format!("pred{p} masks"),
            prediction.masks.clone(),
            io(&store, &format!("pred{p}.masks"), device),
        );
        assert_close(
            &format!("pred{p} ious"),
            prediction.ious.clone(),
            io(&store, &format!("pred{p}.ious"), device),
        );
    }
    assert_close(
        "pred_embds",
        output.embeds,
        io(&store, "pred_embds", device),
    );

    // The inference path (attention masks at each level's size, heads once) predicts the same
    // last layer.
    let inference = decoder.forward_inference(&maps, io(&store, "mask_features", device));
    assert!(inference.aux.is_empty());
    let last = config.layers;
    assert_close(
        "inference object logits",
        inference.last.object_logits,
        io(&store, &format!("pred{last}.object_logits"), device),
    );
    assert_close(
        "inference masks",
        inference.last.masks,
        io(&store, &format!("pred{last}.masks"), device),
    );
    assert_close(
        "inference ious",
        inference.last.ious,
        io(&store, &format!("pred{last}.ious"), device),
    );
    assert_close(
        "inference pred_embds",
        inference.embeds,
        io(&store, "pred_embds", device),
    );
}

#[test]
fn decoder_matches_pytorch_on_flex() {
    check::<burn::backend::Flex>(&Default::default());
}

#[test]
fn decoder_matches_pytorch_on_ndarray() {
    check::<burn::backend::NdArray>(&Default::default());
}

/// The decoder with its heads on wgpu (lavapipe in CI), against the same PyTorch outputs.
#[cfg(feature = "wgpu")]
#[test]
fn decoder_matches_pytorch_on_wgpu() {
    if let Some(device) = clip_vis_clip::device::wgpu_test_device() {
        check::<burn::backend::Wgpu>(&device);
    }
}
