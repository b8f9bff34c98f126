//! The wgpu backend against the CPU backend on the same inputs (CI runs it on Mesa's lavapipe,
//! a real Vulkan driver on the CPU; `scripts/install-vulkan.sh`). Each crate's parity tests
//! also run on wgpu against the PyTorch fixtures (`cargo test --workspace --features wgpu`);
//! this file compares the two backends directly: the small CLIP-VIS model end to end with the
//! open-vocabulary logits, the ConvNeXt tower, and the whole demo video through the command
//! line (same detections, categories and RLE masks; scores to 1e-3).
//!
//! Without a Vulkan driver every test here prints SKIPPED and passes, unless
//! `CLIP_VIS_REQUIRE_WGPU` is set (CI sets it), where it fails.
#![cfg(feature = "wgpu")]

/// The CLIP crate's fixture helpers (the architecture recorded in a tower fixture).
#[path = "../crates/clip-vis-clip/tests/common/mod.rs"]
mod clip_fixtures;
mod common;

use burn::backend::{Flex, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Distribution, Tensor};
use clip_vis::clip::device::wgpu_test_device;
use clip_vis::clip::preprocess::RgbImage;
use clip_vis::clip::{Clip, TensorStore};
use common::{fixture_classifier, model_config, small_model_store, video_intermediates};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::Command;

/// f32 on two backends: reassociated sums (tiled GPU matmuls and reductions against gemm's
/// blocking), so equal up to rounding; the same bound the PyTorch parity tests use.
const REL_TOL: f32 = 1e-4;

/// A tensor read back to the host: its shape and its values.
type HostTensor = (Vec<usize>, Vec<f32>);

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
    let dims = t.dims().to_vec();
    (dims, t.into_data().convert::<f32>().into_vec().unwrap())
}

/// Max |gpu − cpu| / max |cpu| ≤ `tolerance`.
fn assert_same(what: &str, gpu: HostTensor, cpu: HostTensor, tol: f32) {
    assert_eq!(gpu.0, cpu.0, "{what}: shapes differ");
    let scale = cpu.1.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (index, diff) = gpu
        .1
        .iter()
        .zip(&cpu.1)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0f32),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    let rel = diff / scale;
    eprintln!("{what}: wgpu vs cpu relative error {rel:.2e}");
    assert!(
        rel <= tol,
        "{what}: wgpu {} vs cpu {} at flat index {index} (relative {rel:.3e} > {tol:e})",
        gpu.1[index],
        cpu.1[index]
    );
}

fn fixture(path: &str) -> TensorStore {
    TensorStore::open(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("fixture")
}

fn fixture_image(store: &TensorStore) -> RgbImage {
    let raw = store.raw("io.image").unwrap();
    RgbImage::new(
        raw.shape[1],
        raw.shape[0],
        raw.values.iter().map(|&v| v as u8).collect(),
    )
    .unwrap()
}

/// Everything one image gives on a backend: the decoder's outputs, the masks at the original
/// size, and the open-vocabulary logits (text tower + mask pooling + classifier).
fn small_model_outputs<B: Backend>(device: &B::Device) -> Vec<(&'static str, HostTensor)> {
    let store = small_model_store();
    let model = clip_vis::model::ClipVis::<B>::load(&store, &model_config(&store), device)
        .expect("weights");
    let output = model
        .segment_image(&fixture_image(&store), device)
        .expect("inference");
    let decoder = &output.frame.decoder;
    // The text tower from token ids: the tiny tower's vocabulary has 1000 entries.
    let intermediates = video_intermediates();
    let classifier = fixture_classifier(
        &model,
        &SafeTensors::deserialize(&intermediates).expect("video fixture"),
    );
    let [_, queries, h, w] = decoder.last.masks.dims();
    let logits = clip_vis::classification::frame_class_logits(
        &model.clip,
        &classifier,
        output.frame.features.res5.clone(),
        decoder.last.masks.clone().reshape([queries, h, w]),
    )
    .expect("class logits");
    vec![
        ("text classifier", host(classifier.embeddings.clone())),
        ("object logits", host(decoder.last.object_logits.clone())),
        ("stride-4 masks", host(decoder.last.masks.clone())),
        ("ious", host(decoder.last.ious.clone())),
        ("embeddings", host(decoder.embeds.clone())),
        (
            "every auxiliary mask",
            host(Tensor::cat(
                decoder.aux.iter().map(|a| a.masks.clone()).collect(),
                1,
            )),
        ),
        ("masks at the original size", host(output.masks)),
        ("class logits (mask pooling)", host(logits)),
    ]
}

#[test]
fn small_clip_vis_with_open_vocabulary_logits_equals_the_cpu() {
    let Some(device) = wgpu_test_device() else {
        return;
    };
    let gpu = small_model_outputs::<Wgpu>(&device);
    let cpu = small_model_outputs::<Flex>(&Default::default());
    for ((what, gpu), (_, cpu)) in gpu.into_iter().zip(cpu) {
        assert_same(what, gpu, cpu, REL_TOL);
    }
}

fn convnext_outputs<B: Backend>(device: &B::Device) -> Vec<(&'static str, HostTensor)> {
    let store = fixture("crates/clip-vis-clip/tests/fixtures/convnext_small.safetensors");
    let config = clip_fixtures::fixture_config(&store);
    let clip = Clip::<B>::load(&store, &config, device).expect("weights");
    let raw = store.raw("io.pixels").unwrap();
    let pixels = Tensor::<B, 4>::from_data(
        burn::tensor::TensorData::new(raw.values.clone(), raw.shape.clone()),
        device,
    );
    let [_, _, h, w] = pixels.dims();
    let pad = |v: usize| v.div_ceil(32) * 32 - v;
    let pixels = pixels.pad(
        [(0, pad(h)), (0, pad(w))],
        burn::tensor::ops::PadMode::Constant(0.0),
    );
    let features = clip.features(pixels);
    let raw = store.raw("io.masks").unwrap();
    let masks: Tensor<B, 3, Bool> = Tensor::<B, 3>::from_data(
        burn::tensor::TensorData::new(raw.values.clone(), raw.shape.clone()),
        device,
    )
    .greater_elem(0.0);
    let dense = clip
        .embed_masks(features.res5.clone(), masks)
        .expect("pooling");
    vec![
        ("convnext res2", host(features.res2)),
        ("convnext res3", host(features.res3)),
        ("convnext res4", host(features.res4)),
        ("convnext res5", host(features.res5)),
        ("convnext dense embeddings", host(dense)),
    ]
}

#[test]
fn convnext_tower_equals_the_cpu() {
    let Some(device) = wgpu_test_device() else {
        return;
    };
    let gpu = convnext_outputs::<Wgpu>(&device);
    let cpu = convnext_outputs::<Flex>(&Default::default());
    for ((what, gpu), (_, cpu)) in gpu.into_iter().zip(cpu) {
        assert_same(what, gpu, cpu, REL_TOL);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clip-vis-wgpu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn demo(out: &Path, device: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_clip-vis"))
        .args([
            "demo",
            "--frames",
            "4",
            "--no-pictures",
            "--device",
            device,
            "--out",
        ])
        .arg(out)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo --device {device} failed:\n{stderr}"
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

/// The whole pipeline (CLIP, both decoders on the GPU path, classification, matching, scoring,
/// masks) on the demo video: the same detections in the same order, the same categories and
/// RLE strings, scores within 1e-3.
#[test]
fn the_demo_video_on_wgpu_equals_the_cpu() {
    if wgpu_test_device().is_none() {
        return;
    }
    let dir = scratch("demo");
    let cpu = demo(&dir.join("cpu"), "cpu");
    let gpu = demo(&dir.join("wgpu"), "wgpu");
    let (cpu, gpu) = (cpu.as_array().unwrap(), gpu.as_array().unwrap());
    assert!(!cpu.is_empty(), "the demo found nothing");
    assert_eq!(gpu.len(), cpu.len(), "number of detections");
    let mut worst = 0f64;
    let (mut masks, mut same) = (0usize, 0usize);
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert_eq!(
            g["category_id"], c["category_id"],
            "detection {i}: category"
        );
        let (gs, cs) = (g["score"].as_f64().unwrap(), c["score"].as_f64().unwrap());
        worst = worst.max((gs - cs).abs());
        assert!((gs - cs).abs() <= 1e-3, "detection {i}: score {gs} vs {cs}");
        let (gm, cm) = (
            g["segmentations"].as_array().unwrap(),
            c["segmentations"].as_array().unwrap(),
        );
        assert_eq!(gm.len(), cm.len());
        for (a, b) in gm.iter().zip(cm) {
            masks += 1;
            same += usize::from(a == b);
        }
    }
    eprintln!(
        "{} detections, worst score difference {worst:.2e}, {same}/{masks} RLE masks identical",
        cpu.len()
    );
    assert_eq!(same, masks, "RLE masks that differ between wgpu and cpu");
    let _ = std::fs::remove_dir_all(&dir);
}

/// No Vulkan driver: one clear error naming what is missing, exit status 1, no panic.
#[test]
fn wgpu_without_a_driver_is_a_clear_error() {
    let dir = scratch("no-driver");
    let output = Command::new(env!("CARGO_BIN_EXE_clip-vis"))
        .args([
            "demo",
            "--frames",
            "2",
            "--no-pictures",
            "--device",
            "wgpu",
            "--out",
        ])
        .arg(dir.join("out"))
        // The Vulkan loader finds no driver; no other graphics API exists on Linux.
        .env("VK_ICD_FILENAMES", dir.join("no-such-icd.json"))
        .env("VK_DRIVER_FILES", dir.join("no-such-icd.json"))
        .env("WGPU_BACKEND", "vulkan")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("device wgpu:0"), "{stderr}");
    assert!(stderr.contains("Vulkan"), "{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "a panic reached the user:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Environment variable that turns `double_buffered_matmul_with_odd_k_stages` into its child
/// process: the value is the `k` to multiply with.
const MATMUL_CHILD_ENV: &str = "CLIP_VIS_MATMUL_CHILD_K";

/// `[768, k] x [k, 32]` on wgpu against the CPU; panics when they differ.
fn odd_k_matmul_matches_cpu(k: usize) {
    let Some(device) = wgpu_test_device() else {
        return;
    };
    let cpu = Default::default();
    let lhs = Tensor::<Flex, 2>::random([768, k], Distribution::Normal(0.0, 1.0), &cpu);
    let rhs = Tensor::<Flex, 2>::random([k, 32], Distribution::Normal(0.0, 1.0), &cpu);
    let on_gpu = Tensor::<Wgpu, 2>::from_data(lhs.to_data(), &device)
        .matmul(Tensor::<Wgpu, 2>::from_data(rhs.to_data(), &device));
    assert_same(
        &format!("[768, {k}] x [{k}, 32]"),
        host(on_gpu),
        host(lhs.matmul(rhs)),
        REL_TOL,
    );
}

/// Regression test for the patched CubeCL bug in `vendor/README.md`: the double-buffered
/// matmuls read past `k` when `k` is an odd multiple of the stage's k extent (k = 8, 24).
/// Autotune picks a kernel by timing, so a plain run would meet the broken kernel only by
/// chance. This test forces each candidate instead: a child process (this test binary, in a
/// scratch folder with its own autotune cache) tunes the shape once; then the cache is rewritten
/// to select every candidate in turn, and the child checks the product against the CPU each
/// time.
#[test]
fn double_buffered_matmul_with_odd_k_stages() {
    if let Ok(k) = std::env::var(MATMUL_CHILD_ENV) {
        odd_k_matmul_matches_cpu(k.parse().expect("k"));
        return;
    }
    if wgpu_test_device().is_none() {
        return;
    }
    let child = |dir: &Path, k: usize| {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "double_buffered_matmul_with_odd_k_stages",
                "--nocapture",
            ])
            .env(MATMUL_CHILD_ENV, k.to_string())
            .current_dir(dir)
            .output()
            .expect("child test process");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let mut double_buffered_checked = 0;
    for k in [8, 24] {
        let scratch = ScratchDir::new(&format!("odd-k-matmul-{k}"));
        // CubeCL keeps its autotune cache in `target/` next to the nearest Cargo.toml.
        std::fs::write(scratch.path().join("Cargo.toml"), "").unwrap();
        let (ok, log) = child(scratch.path(), k);
        assert!(ok, "k = {k}, autotuned: {log}");
        let cache_files: Vec<PathBuf> = walk(&scratch.path().join("target/autotune"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("matmul"))
            .collect();
        assert!(!cache_files.is_empty(), "no matmul autotune cache written");
        for file in cache_files {
            let original = std::fs::read_to_string(&file).unwrap();
            let entries: Vec<serde_json::Value> = original
                .lines()
                .map(|line| serde_json::from_str(line).expect("autotune cache line"))
                .collect();
            for (row, entry) in entries.iter().enumerate() {
                let candidates: Vec<(String, u64)> = entry["value"]["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|r| {
                        let ok = &r["outcome"]["Ok"];
                        Some((ok["name"].as_str()?.to_string(), ok["index"].as_u64()?))
                    })
                    .collect();
                for (name, index) in candidates {
                    let mut forced = entries.clone();
                    forced[row]["value"]["fastest_index"] = index.into();
                    let text: String = forced.iter().map(|e| format!("{e}\n")).collect();
                    std::fs::write(&file, text).unwrap();
                    let (ok, log) = child(scratch.path(), k);
                    assert!(ok, "k = {k}, kernel {name} forced: {log}");
                    if name.contains("double") {
                        double_buffered_checked += 1;
                    }
                }
                std::fs::write(&file, &original).unwrap();
            }
        }
    }
    assert!(
        double_buffered_checked > 0,
        "no double-buffered matmul was among the candidates: the test checked nothing"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A folder under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("clip-vis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
