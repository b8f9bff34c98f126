//! The full-size presets ask for exactly open_clip's state-dict keys and shapes, so a real
//! checkpoint loads strictly.
//!
//! The listings (`tests/fixtures/{rn50,convnext_base_w_320}_keys.txt`) were written by
//! `scripts/fixtures/gen_clip.py` from `open_clip.create_model(name, pretrained=None)` of
//! open_clip 2.24.0: one `key<TAB>dtype<TAB>shape` line per entry. The models are built here
//! from a synthetic store that records every tensor the loaders request.

use burn::backend::Flex;
use clip_vis_clip::weights::{SyntheticFill, TensorStore};
use clip_vis_clip::{Clip, ClipConfig};
use std::collections::BTreeMap;

fn listing(name: &str) -> BTreeMap<String, Vec<usize>> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .expect("listing")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter(|line| !line.contains("num_batches_tracked"))
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let shape = fields[2]
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.parse().expect("dimension"))
                .collect();
            (fields[0].to_string(), shape)
        })
        .collect()
}

fn requested(config: &ClipConfig) -> BTreeMap<String, Vec<usize>> {
    let store = TensorStore::synthetic(SyntheticFill::Zeros);
    Clip::<Flex>::load(&store, config, &Default::default()).expect("preset builds");
    store.requested().into_iter().collect()
}

fn assert_same(config: ClipConfig, file: &str) {
    let expected = listing(file);
    let got = requested(&config);
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{}: open_clip keys never loaded: {missing:?}",
        config.name
    );
    assert!(
        extra.is_empty(),
        "{}: keys open_clip does not have: {extra:?}",
        config.name
    );
    for (key, shape) in &expected {
        assert_eq!(&got[key], shape, "{}: shape of `{key}`", config.name);
    }
    assert!(expected.len() > 400, "{file} looks truncated");
}

#[test]
fn rn50_preset_matches_open_clip_state_dict() {
    assert_same(ClipConfig::rn50(), "rn50_keys.txt");
}

#[test]
fn convnext_base_w_320_preset_matches_open_clip_state_dict() {
    assert_same(
        ClipConfig::convnext_base_w_320(),
        "convnext_base_w_320_keys.txt",
    );
}
