//! `weights-convert` end to end: an open_clip-style checkpoint in, a validated clip-vis file
//! with its config in the metadata out; bad inputs fail without writing anything.

#[path = "../../crates/clip-vis-clip/tests/common/mod.rs"]
mod common;

use burn::backend::Flex;
use clip_vis_clip::config::CONFIG_METADATA_KEY;
use clip_vis_clip::weights::{save_safetensors, SaveDtype};
use clip_vis_clip::{Clip, TensorStore};
use common::{assert_close_tol, fixture_config, io};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn small() -> TensorStore {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/clip-vis-clip/tests/fixtures/rn50_small.safetensors"
    );
    TensorStore::open(path).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weights-convert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the fixture's model tensors without clip-vis metadata (as open_clip would) and the
/// architecture as a separate config file.
fn write_open_clip_style(dir: &Path, drop_key: Option<&str>) -> (PathBuf, PathBuf) {
    let source = small();
    let tensors: Vec<_> = source
        .parameters()
        .into_iter()
        .filter(|(k, _, _)| !k.starts_with("io.") && Some(k.as_str()) != drop_key)
        .collect();
    let checkpoint = dir.join("open_clip_model.safetensors");
    save_safetensors(&checkpoint, &tensors, SaveDtype::F32, HashMap::new()).unwrap();
    let config = dir.join("arch.json");
    std::fs::write(&config, fixture_config(&source).to_json()).unwrap();
    (checkpoint, config)
}

fn convert(args: &[&Path], extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weights-convert"))
        .args(args)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn converts_to_f16_with_config_metadata() {
    let dir = scratch("ok");
    let (checkpoint, config) = write_open_clip_style(&dir, None);
    let output = dir.join("converted.safetensors");
    let result = convert(
        &[&checkpoint, &output],
        &["--config", config.to_str().unwrap(), "--dtype", "f16"],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );

    let converted = TensorStore::open(&output).unwrap();
    assert!(converted.metadata().contains_key(CONFIG_METADATA_KEY));
    // The converted file needs no flag: its architecture travels with it.
    let clip = Clip::<Flex>::from_file(&output, None, &Default::default()).unwrap();
    let source = small();
    let tokens = source.raw("io.text_tokens").unwrap();
    let ids: Vec<u32> = tokens.values.iter().map(|&v| v as u32).collect();
    let text = clip.encode_text(&ids, tokens.shape[1]).unwrap();
    assert_close_tol(
        "converted f16 text",
        text,
        io(&source, "text_embed", &Default::default()),
        2e-2,
    );
    // Only the output remains: the temporary file was renamed.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn an_unknown_architecture_needs_a_config() {
    let dir = scratch("noconfig");
    let (checkpoint, _) = write_open_clip_style(&dir, None);
    let output = dir.join("converted.safetensors");
    let result = convert(&[&checkpoint, &output], &[]);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
    assert!(!output.exists());
}

#[test]
fn a_missing_tensor_fails_before_writing() {
    let dir = scratch("missing");
    let (checkpoint, config) = write_open_clip_style(&dir, Some("visual.attnpool.q_proj.bias"));
    let output = dir.join("converted.safetensors");
    let result = convert(
        &[&checkpoint, &output],
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("missing tensor `visual.attnpool.q_proj.bias`"),
        "{stderr}"
    );
    assert!(!output.exists());
}

#[test]
fn the_model_flag_must_agree_with_the_weights() {
    let dir = scratch("model");
    let (checkpoint, config) = write_open_clip_style(&dir, None);
    let output = dir.join("converted.safetensors");
    let result = convert(
        &[&checkpoint, &output],
        &["--config", config.to_str().unwrap(), "--model", "RN50"],
    );
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("`RN50` was requested"));
    assert!(!output.exists());
}

fn clip_vis_pth() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/clip-vis-model/tests/fixtures/clip_vis_small.pth"
    ))
}

#[test]
fn converts_a_detectron2_clip_vis_checkpoint_with_its_layer_count() {
    use clip_vis_model::{ClipVis, CONFIG_METADATA_KEY as MODEL_KEY};
    let dir = scratch("clipvis");
    let output = dir.join("clip_vis.safetensors");
    // The small test model's CLIP is no preset, so its architecture comes as a config file.
    let fixture = TensorStore::open(clip_vis_pth().with_extension("safetensors")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&fixture.metadata()["config"]).unwrap();
    let architecture = serde_json::json!({
        "clip": meta["clip"],
        "pixel_decoder": meta["pixel_decoder"],
        "transformer_decoder": meta["transformer_decoder"],
    });
    let config_path = dir.join("model.json");
    std::fs::write(&config_path, architecture.to_string()).unwrap();
    let result = convert(
        &[&clip_vis_pth(), &output],
        &[
            "--from",
            "clip-vis",
            "--config",
            config_path.to_str().unwrap(),
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let converted = TensorStore::open(&output).unwrap();
    let config: clip_vis_model::ClipVisConfig =
        serde_json::from_str(&converted.metadata()[MODEL_KEY]).expect("model config in metadata");
    assert_eq!(config.transformer_decoder.layers, 3);
    // The converted file predicts exactly what the pickled checkpoint does.
    let device = Default::default();
    let from_converted = ClipVis::<Flex>::from_file(&output, &device).expect("strict load");
    let pickled = TensorStore::open(clip_vis_pth()).unwrap();
    let from_pickle = ClipVis::<Flex>::load(&pickled, &config, &device).unwrap();
    let pixels = burn::tensor::Tensor::<Flex, 4>::random(
        [1, 3, 64, 96],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let a = from_converted
        .forward(pixels.clone())
        .unwrap()
        .decoder
        .last
        .object_logits;
    let b = from_pickle
        .forward(pixels)
        .unwrap()
        .decoder
        .last
        .object_logits;
    common::assert_close("converted vs pickled object logits", a, b);
    // Its CLIP towers also serve zero-shot directly.
    Clip::<Flex>::from_file(&output, None, &device).expect("CLIP part loads");
}

#[test]
fn a_clip_vis_checkpoint_is_not_an_open_clip_one() {
    let dir = scratch("wrongsource");
    let output = dir.join("out.safetensors");
    let result = convert(&[&clip_vis_pth(), &output], &["--from", "open-clip"]);
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("CLIP-VIS checkpoint"));
    assert!(!output.exists());
}

#[test]
fn a_config_whose_layer_count_disagrees_is_refused() {
    let dir = scratch("clipvis-layers");
    let output = dir.join("clip_vis.safetensors");
    let fixture = TensorStore::open(clip_vis_pth().with_extension("safetensors")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&fixture.metadata()["config"]).unwrap();
    let mut decoder = meta["transformer_decoder"].clone();
    decoder["layers"] = serde_json::json!(9);
    let architecture = serde_json::json!({
        "clip": meta["clip"],
        "pixel_decoder": meta["pixel_decoder"],
        "transformer_decoder": decoder,
    });
    let config_path = dir.join("model.json");
    std::fs::write(&config_path, architecture.to_string()).unwrap();
    let result = convert(
        &[&clip_vis_pth(), &output],
        &["--config", config_path.to_str().unwrap()],
    );
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("the config says 9 decoder layers, the tensors have 3"),
        "{stderr}"
    );
    assert!(!output.exists());
}
