//! Shared helpers of the parity tests: fixture loading, the fixture's architecture, and the
//! relative-error comparison.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clip_vis_clip::config::*;
use clip_vis_clip::TensorStore;

/// Relative error allowed: max |rust − torch| / max |torch| per output.
pub const REL_TOL: f32 = 1e-4;

pub fn fixture(name: &str) -> TensorStore {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    TensorStore::open(path).expect("fixture readable")
}

/// The small architecture described by the fixture's `config` metadata.
pub fn fixture_config(store: &TensorStore) -> ClipConfig {
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

pub fn io<B: Backend, const D: usize>(
    store: &TensorStore,
    key: &str,
    device: &B::Device,
) -> Tensor<B, D> {
    let raw = store.raw(&format!("io.{key}")).expect("io tensor");
    let shape: [usize; D] = raw.shape.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(raw.values.clone(), shape), device)
}

pub fn assert_close<B: Backend, const D: usize>(
    what: &str,
    got: Tensor<B, D>,
    expected: Tensor<B, D>,
) {
    assert_close_tol(what, got, expected, REL_TOL);
}

/// [`assert_close`] with an explicit tolerance (f16 weights, for instance).
pub fn assert_close_tol<B: Backend, const D: usize>(
    what: &str,
    got: Tensor<B, D>,
    expected: Tensor<B, D>,
    tolerance: f32,
) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let got: Vec<f32> = got.into_data().convert::<f32>().into_vec().unwrap();
    let expected: Vec<f32> = expected.into_data().convert::<f32>().into_vec().unwrap();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (index, diff) = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0f32),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    let rel = diff / scale;
    assert!(
        rel <= tolerance,
        "{what}: relative error {rel:.3e} at flat index {index}: rust {} vs torch {}",
        got[index],
        expected[index]
    );
    eprintln!("{what}: relative error {rel:.2e}");
}
