//! Parity of the CLIP towers with open_clip 2.24 (PyTorch) on small random-weight models.
//!
//! Fixtures: `tests/fixtures/{rn50,convnext}_small.safetensors`, written by
//! `scripts/fixtures/gen_clip.py` (versions pinned in its header; regenerate with
//! `/opt/refenv/bin/python scripts/fixtures/gen_clip.py` from the repository root). Each holds the
//! model's open_clip state dict, the inputs and PyTorch's outputs under `io.*`, and the small
//! architecture as JSON in the metadata key `config`. Every weight is perturbed (layer scale,
//! norms, BatchNorm statistics) so that no block is an identity.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use clip_vis_clip::config::*;
use clip_vis_clip::preprocess::SIZE_DIVISIBILITY;
use clip_vis_clip::{Clip, TensorStore};

/// Relative error allowed: max |rust − torch| / max |torch| per output.
const REL_TOL: f32 = 1e-4;

fn fixture(name: &str) -> TensorStore {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    TensorStore::open(path).expect("fixture readable")
}

/// The small architecture described by the fixture's `config` metadata.
fn fixture_config(store: &TensorStore) -> ClipConfig {
    let meta: serde_json::Value =
        serde_json::from_str(&store.metadata()["config"]).expect("config json");
    let text = &meta["text"];
    let get = |v: &serde_json::Value| v.as_u64().expect("integer") as usize;
    let text = TextConfig {
        context_length: get(&text["context_length"]),
        vocab_size: get(&text["vocab_size"]),
        width: get(&text["width"]),
        heads: get(&text["heads"]),
        layers: get(&text["layers"]),
        activation: if meta["quick_gelu"].as_bool().unwrap() {
            TextActivation::QuickGelu
        } else {
            TextActivation::Gelu
        },
    };
    let vision = &meta["vision"];
    let four = |v: &serde_json::Value| -> [usize; 4] {
        let list: Vec<usize> = v.as_array().unwrap().iter().map(get).collect();
        list.try_into().unwrap()
    };
    let vision = match vision["type"].as_str().unwrap() {
        "modified_resnet" => VisionConfig::ModifiedResnet(ModifiedResNetConfig {
            layers: four(&vision["layers"]),
            width: get(&vision["width"]),
            heads: get(&vision["heads"]),
            image_size: get(&vision["image_size"]),
        }),
        _ => VisionConfig::Convnext(ConvNextConfig {
            depths: four(&vision["depths"]),
            dims: four(&vision["dims"]),
            image_size: get(&vision["image_size"]),
        }),
    };
    ClipConfig {
        name: meta["model"].as_str().unwrap().to_string(),
        embed_dim: get(&meta["embed_dim"]),
        vision,
        text,
    }
}

fn io<B: Backend, const D: usize>(store: &TensorStore, key: &str, device: &B::Device) -> Tensor<B, D> {
    let raw = store.raw(&format!("io.{key}")).expect("io tensor");
    let shape: [usize; D] = raw.shape.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(raw.values.clone(), shape), device)
}

fn assert_close<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, expected: Tensor<B, D>) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let got: Vec<f32> = got.into_data().convert::<f32>().into_vec().unwrap();
    let expected: Vec<f32> = expected.into_data().convert::<f32>().into_vec().unwrap();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (index, diff) = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |best, (i, d)| if d > best.1 { (i, d) } else { best });
    let rel = diff / scale;
    assert!(
        rel <= REL_TOL,
        "{what}: relative error {rel:.3e} at flat index {index}: rust {} vs torch {}",
        got[index],
        expected[index]
    );
    eprintln!("{what}: relative error {rel:.2e}");
}

fn check_model<B: Backend>(name: &str, device: &B::Device) {
    let store = fixture(name);
    let config = fixture_config(&store);
    let clip = Clip::<B>::load(&store, &config, device).expect("fixture weights load");

    // Multi-scale features on the zero-padded input.
    let pixels: Tensor<B, 4> = io(&store, "pixels", device);
    let [_, _, h, w] = pixels.dims();
    let padded_dims = [h, w].map(|v| v.div_ceil(SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY);
    let padded = pixels.pad([(0, padded_dims[0] - h), (0, padded_dims[1] - w)], burn::tensor::ops::PadMode::Constant(0.0));
    assert_close(&format!("{name} padding"), padded.clone(), io::<B, 4>(&store, "pixels_padded", device));
    let features = clip.features(padded);
    assert_close(&format!("{name} stem"), features.stem, io(&store, "stem", device));
    assert_close(&format!("{name} res2"), features.res2, io(&store, "res2", device));
    assert_close(&format!("{name} res3"), features.res3, io(&store, "res3", device));
    assert_close(&format!("{name} res4"), features.res4, io(&store, "res4", device));
    assert_close(&format!("{name} res5"), features.res5.clone(), io(&store, "res5", device));

    // Global image embedding at the model's native size.
    let global = clip.features(io(&store, "pixels_global", device));
    let embed = clip.embed_image(global.res5).expect("native grid");
    assert_close(&format!("{name} image embedding"), embed, io(&store, "image_embed", device));

    // Dense mask-pooled path, including a single-pixel, a full and an empty mask.
    let masks: Tensor<B, 3> = io(&store, "masks", device);
    let masks: Tensor<B, 3, Bool> = masks.greater_elem(0.0);
    let dense = clip.embed_masks(features.res5, masks).expect("mask pooling");
    assert_close(&format!("{name} dense embeddings"), dense, io(&store, "dense_embed", device));

    // Text tower.
    let tokens = store.raw("io.text_tokens").expect("tokens");
    let ids: Vec<u32> = tokens.values.iter().map(|&v| v as u32).collect();
    let text = clip.encode_text(&ids, tokens.shape[1]).expect("text");
    assert_close(&format!("{name} text embeddings"), text, io(&store, "text_embed", device));
}

#[test]
fn rn50_small_matches_open_clip_on_flex() {
    check_model::<burn::backend::Flex>("rn50_small.safetensors", &Default::default());
}

#[test]
fn convnext_small_matches_open_clip_on_flex() {
    check_model::<burn::backend::Flex>("convnext_small.safetensors", &Default::default());
}

#[test]
fn rn50_small_matches_open_clip_on_ndarray() {
    check_model::<burn::backend::NdArray>("rn50_small.safetensors", &Default::default());
}

#[test]
fn convnext_small_matches_open_clip_on_ndarray() {
    check_model::<burn::backend::NdArray>("convnext_small.safetensors", &Default::default());
}
