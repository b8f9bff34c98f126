//! Reading checkpoints: PyTorch pickles (zip and legacy) and detectron2 nesting through
//! `burn_store`, f16 safetensors into f32 modules, and strict errors that name the tensor.
//!
//! PyTorch fixtures come from `scripts/fixtures/gen_clip.py` (`pytorch_*.bin`,
//! `detectron2_style.pth`, with the expected f32 values in `pytorch_expected.safetensors`).

mod common;

use burn::backend::Flex;
use clip_vis_clip::config::CONFIG_METADATA_KEY;
use clip_vis_clip::model::open_clip_store;
use clip_vis_clip::weights::{save_safetensors, SaveDtype, StoredTensor};
use clip_vis_clip::{Clip, ClipError, TensorStore};
use common::{assert_close_tol, fixture, fixture_config, io};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clip-vis-weights-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_values_equal(store: &TensorStore, expected: &TensorStore, keys: &[&str]) {
    for key in keys {
        let want = expected
            .raw(key)
            .unwrap_or_else(|| panic!("expected `{key}`"));
        let got = store
            .values(key, &want.shape)
            .unwrap_or_else(|e| panic!("{}: {e}", store.file().display()));
        assert_eq!(
            got,
            want.values,
            "{}: values of `{key}`",
            store.file().display()
        );
    }
}

const PICKLED_KEYS: [&str; 5] = [
    "visual.conv1.weight",
    "visual.bn1.running_var",
    "text_projection",
    "logit_scale",
    "positional_embedding",
];

#[test]
fn pytorch_zip_and_legacy_pickles_read_with_f16_and_bf16_converted() {
    let expected = TensorStore::open(fixture_path("pytorch_expected.safetensors")).unwrap();
    for file in ["pytorch_zip.bin", "pytorch_legacy.bin"] {
        let store = TensorStore::open(fixture_path(file)).unwrap();
        assert_values_equal(&store, &expected, &PICKLED_KEYS);
        // The integer step counter is bookkeeping: never a parameter, never "unexpected".
        assert!(store
            .parameters()
            .iter()
            .all(|(k, _, _)| !k.ends_with("num_batches_tracked")));
    }
}

#[test]
fn detectron2_checkpoints_are_read_from_their_model_entry_under_the_clip_prefix() {
    let expected = TensorStore::open(fixture_path("pytorch_expected.safetensors")).unwrap();
    let store = open_clip_store(fixture_path("detectron2_style.pth")).unwrap();
    assert_values_equal(&store, &expected, &["visual.conv1.weight", "logit_scale"]);
    // Only the CLIP part is visible to the CLIP loaders; the decoder keys stay outside.
    assert!(store
        .keys()
        .contains(&"sem_seg_head.predictor.query_feat.weight"));
    assert_eq!(store.parameters().len(), 2);
}

/// The rn50_small fixture's model tensors (no `io.*`) as an open_clip-style file.
fn small_checkpoint(
    dtype: SaveDtype,
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> (PathBuf, TensorStore) {
    let source = fixture("rn50_small.safetensors");
    let config = fixture_config(&source);
    let mut tensors: Vec<_> = source
        .parameters()
        .into_iter()
        .filter(|(k, _, _)| !k.starts_with("io."))
        .collect();
    edit(&mut tensors);
    let path = scratch(&format!("{dtype:?}-{}", tensors.len())).join("small.safetensors");
    let metadata = HashMap::from([(CONFIG_METADATA_KEY.to_string(), config.to_json())]);
    save_safetensors(&path, &tensors, dtype, metadata).unwrap();
    (path, source)
}

#[test]
fn f16_checkpoints_load_into_f32_modules() {
    let (path, source) = small_checkpoint(SaveDtype::F16, |_| {});
    let clip = Clip::<Flex>::from_file(&path, None, &Default::default()).unwrap();
    let tokens = source.raw("io.text_tokens").unwrap();
    let ids: Vec<u32> = tokens.values.iter().map(|&v| v as u32).collect();
    let text = clip.encode_text(&ids, tokens.shape[1]).unwrap();
    // f16 keeps 11 significant bits: relative error ~1e-3 after a few layers.
    assert_close_tol(
        "f16 text embeddings",
        text,
        io(&source, "text_embed", &Default::default()),
        2e-2,
    );
}

fn load_error(edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> ClipError {
    let (path, _) = small_checkpoint(SaveDtype::F32, edit);
    Clip::<Flex>::from_file(&path, None, &Default::default()).unwrap_err()
}

#[test]
fn a_missing_tensor_is_named() {
    let error = load_error(|t| t.retain(|(k, _, _)| k != "visual.layer2.0.conv2.weight"));
    assert!(
        matches!(&error, ClipError::MissingTensor { key, .. } if key == "visual.layer2.0.conv2.weight"),
        "{error}"
    );
    assert!(error.to_string().contains("small.safetensors"), "{error}");
}

#[test]
fn a_misshaped_tensor_is_named_with_both_shapes() {
    let error = load_error(|t| {
        let entry = t
            .iter_mut()
            .find(|(k, _, _)| k == "ln_final.weight")
            .unwrap();
        entry.1 = vec![2, entry.1[0] / 2];
    });
    assert!(
        matches!(&error, ClipError::ShapeMismatch { key, expected, found, .. }
            if key == "ln_final.weight" && expected == &[32] && found == &[2, 16]),
        "{error}"
    );
}

#[test]
fn an_unexpected_tensor_is_named() {
    let error =
        load_error(|t| t.push(("visual.extra_head.weight".into(), vec![2], vec![0.0, 1.0])));
    assert!(
        matches!(&error, ClipError::UnexpectedTensors { first, count: 1, .. } if first == "visual.extra_head.weight"),
        "{error}"
    );
}

#[test]
fn nan_weights_are_refused() {
    let error = load_error(|t| {
        t.iter_mut()
            .find(|(k, _, _)| k == "positional_embedding")
            .unwrap()
            .2[3] = f32::NAN
    });
    assert!(matches!(error, ClipError::NonFinite { .. }), "{error}");
    assert!(
        error.to_string().contains("positional_embedding"),
        "{error}"
    );
}

#[test]
fn truncated_and_foreign_files_are_format_errors() {
    let dir = scratch("foreign");
    let bytes = std::fs::read(fixture_path("convnext_small.safetensors")).unwrap();
    let truncated = dir.join("cut.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    assert!(matches!(
        TensorStore::open(&truncated),
        Err(ClipError::Format {
            format: "safetensors",
            ..
        })
    ));
    let text = dir.join("notes.bin");
    std::fs::write(&text, b"not a checkpoint at all").unwrap();
    assert!(matches!(
        TensorStore::open(&text),
        Err(ClipError::Format {
            format: "PyTorch",
            ..
        })
    ));
    assert!(matches!(
        TensorStore::open(dir.join("absent.bin")),
        Err(ClipError::Io { .. })
    ));
}

#[test]
fn without_metadata_only_known_presets_are_accepted() {
    let store = TensorStore::from_tensors(
        "plain.safetensors",
        HashMap::from([(
            "visual.trunk.stem.0.weight".to_string(),
            StoredTensor {
                shape: vec![16, 3, 4, 4],
                values: vec![0.0; 768],
            },
        )]),
        HashMap::new(),
    );
    let error = Clip::<Flex>::from_store(&store, None, &Default::default()).unwrap_err();
    assert!(
        matches!(error, ClipError::UnknownArchitecture { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("--config"), "{error}");
}
