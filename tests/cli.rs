//! The `clip-vis` command line end to end, including the bad inputs a user can give it.

use clip_vis_clip::config::CONFIG_METADATA_KEY;
use clip_vis_clip::weights::{SaveDtype, SyntheticFill, TensorStore};
use clip_vis_clip::Clip;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn clip_vis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clip-vis"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clip-vis-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the demo's tiny model (seeded random weights) as a converted clip-vis file.
fn write_tiny_weights(path: &Path) {
    let config = clip_vis::demo::tiny_config();
    let store = TensorStore::synthetic(SyntheticFill::Random(clip_vis::demo::DEMO_SEED));
    Clip::<burn::backend::Flex>::load(&store, &config, &Default::default()).unwrap();
    let metadata = HashMap::from([(CONFIG_METADATA_KEY.to_string(), config.to_json())]);
    store
        .save_requested(path, SaveDtype::F32, metadata)
        .unwrap();
}

fn write_png(path: &Path) {
    let picture = clip_vis::demo::synthetic_picture();
    image::RgbImage::from_raw(picture.width as u32, picture.height as u32, picture.pixels)
        .unwrap()
        .save(path)
        .unwrap();
}

/// A scratch folder holding the tiny model's weights and a PNG picture.
fn setup(name: &str) -> (PathBuf, String, String) {
    let dir = scratch(name);
    let (weights, picture) = (dir.join("tiny.safetensors"), dir.join("picture.png"));
    write_tiny_weights(&weights);
    write_png(&picture);
    let text = |p: PathBuf| p.to_str().unwrap().to_string();
    (dir, text(weights), text(picture))
}

/// What the shipped demo model reaches on the demo's default video (measured in
/// assets/demo/README.md; the bound leaves a margin).
const DEMO_AP50_AT_LEAST: f64 = 50.0; // 61.8 measured at 8 frames

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn demo_segments_tracks_and_scores_a_synthetic_video_with_the_trained_model() {
    let dir = scratch("demo");
    let out = dir.join("out");
    let output = clip_vis(&["demo", "--out", out.to_str().unwrap(), "--frames", "8"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("trained with clip-vis"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("category"), "{stdout}");
    // The class-agnostic AP of the trained mask generator and matching on a video it never saw.
    let [_, ap50, _] = demo_ap(&stdout);
    assert!(ap50 >= DEMO_AP50_AT_LEAST, "demo AP50 {ap50}");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let records = results.as_array().unwrap();
    assert_eq!(records.len(), 50);
    assert!(records
        .iter()
        .all(|r| r["segmentations"].as_array().unwrap().len() == 8));
    assert!(out.join("results.zip").is_file() && out.join("video.gif").is_file());
    assert_eq!(std::fs::read_dir(out.join("frames")).unwrap().count(), 8);
    // The demo model is a clip-vis weights file `segment` takes.
    let again = dir.join("again");
    let frames = out.join("input/JPEGImages/000000");
    let output = clip_vis(&[
        "segment",
        "--weights",
        out.join("model.safetensors").to_str().unwrap(),
        "--vocab",
        "disc,square",
        "--frames",
        frames.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
        "--no-pictures",
        "--short-side",
        "192",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(again.join("results.json").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The AP line of `demo`: (AP, AP50, AP75).
fn demo_ap(stdout: &str) -> [f64; 3] {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("class-agnostic video mask AP "))
        .unwrap_or_else(|| panic!("no AP line in {stdout}"));
    let mut values = line.split([',', '(']).take(3).map(|part| {
        part.trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    });
    [(); 3].map(|_| values.next().expect("three AP values"))
}

/// `--dtype bf16` (AMX products) on the demo video: the same detections as f32, their scores
/// within 0.05 and the class-agnostic AP within 5 points (the bf16 rounding of the operands
/// moves mask borders by a pixel here and there, never a track). Without AMX: a clear error.
/// Each run is its own process: the precision is process-wide.
#[test]
fn demo_in_bf16_keeps_the_tracks_of_f32() {
    let dir = scratch("bf16");
    let run = |dtype: &str| {
        let out = dir.join(dtype);
        let output = clip_vis(&[
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--frames",
            "8",
            "--no-pictures",
            "--dtype",
            dtype,
        ]);
        (output, out)
    };
    let (bf16, bf16_out) = run("bf16");
    if !bf16.status.success() {
        let message = stderr(&bf16);
        assert!(
            message.contains("need Intel AMX-BF16") && !message.contains("panicked"),
            "{message}"
        );
        eprintln!("SKIPPED: no AMX on this CPU ({message})");
        return;
    }
    let (f32, f32_out) = run("f32");
    assert!(f32.status.success(), "{}", stderr(&f32));
    let [ap, ap50, ap75] = demo_ap(&String::from_utf8_lossy(&f32.stdout));
    let [bap, bap50, bap75] = demo_ap(&String::from_utf8_lossy(&bf16.stdout));
    eprintln!("f32 AP {ap} / {ap50} / {ap75}, bf16 AP {bap} / {bap50} / {bap75}");
    for (a, b) in [(ap, bap), (ap50, bap50), (ap75, bap75)] {
        assert!((a - b).abs() <= 5.0, "AP f32 {a} vs bf16 {b}");
    }
    let read = |out: &Path| -> Vec<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
    };
    let scores = |records: &[serde_json::Value]| {
        let mut s: Vec<(u64, f64)> = records
            .iter()
            .map(|r| {
                (
                    r["category_id"].as_u64().unwrap(),
                    r["score"].as_f64().unwrap(),
                )
            })
            .collect();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        s
    };
    let (a, b) = (scores(&read(&f32_out)), scores(&read(&bf16_out)));
    assert_eq!(a.len(), b.len(), "detections");
    for ((ca, sa), (cb, sb)) in a.iter().zip(&b) {
        assert_eq!(ca, cb, "categories");
        assert!((sa - sb).abs() <= 0.05, "score {sa} vs {sb}");
    }
    // bf16 is a CPU option.
    let output = clip_vis(&[
        "demo", "--dtype", "bf16", "--device", "wgpu", "--out", "unused",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--dtype bf16 is for --device cpu"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn zero_shot_prints_json_probabilities() {
    let (_, weights, picture) = setup("json");
    let output = clip_vis(&[
        "zero-shot",
        "--clip",
        &weights,
        "--image",
        &picture,
        "--labels",
        "cat,dog,hard drive|disk",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(value["labels"].as_array().unwrap().len(), 3);
    assert_eq!(value["labels"][2], "hard drive,disk");
    let probs: Vec<f64> = value["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{probs:?}");
    assert_eq!(value["logits"].as_array().unwrap().len(), 3);
}

#[test]
fn truncated_weights_are_a_clear_error() {
    let (dir, weights, picture) = setup("truncated");
    let bytes = std::fs::read(&weights).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let output = clip_vis(&[
        "zero-shot",
        "--clip",
        truncated.to_str().unwrap(),
        "--image",
        &picture,
        "--labels",
        "cat",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("truncated.safetensors") && message.contains("safetensors"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

#[test]
fn weights_of_another_model_are_refused() {
    let (_, weights, picture) = setup("other");
    let output = clip_vis(&[
        "zero-shot",
        "--clip",
        &weights,
        "--image",
        &picture,
        "--labels",
        "cat",
        "--model",
        "RN50",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("holds `tiny-demo` weights, but `RN50` was requested"),
        "{message}"
    );
}

#[test]
fn undecodable_image_and_empty_labels_are_clear_errors() {
    let (dir, weights, _) = setup("image");
    let not_an_image = dir.join("notes.png");
    std::fs::write(&not_an_image, b"this is not a PNG").unwrap();
    let output = clip_vis(&[
        "zero-shot",
        "--clip",
        &weights,
        "--image",
        not_an_image.to_str().unwrap(),
        "--labels",
        "cat",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("notes.png: cannot decode image"),
        "{}",
        stderr(&output)
    );

    for labels in ["", " , dog", "cat,"] {
        let output = clip_vis(&[
            "zero-shot",
            "--clip",
            &weights,
            "--image",
            not_an_image.to_str().unwrap(),
            "--labels",
            labels,
        ]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "labels {labels:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("--labels"), "{}", stderr(&output));
    }
}

#[test]
fn missing_weights_file_names_the_file() {
    let output = clip_vis(&[
        "zero-shot",
        "--clip",
        "/nonexistent/w.safetensors",
        "--image",
        "x.png",
        "--labels",
        "cat",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/w.safetensors"),
        "{}",
        stderr(&output)
    );
}

fn eval_fixture(name: &str) -> String {
    format!(
        "{}/crates/clip-vis-eval/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn eval_prints_json_summaries_equal_to_the_python_tools() {
    let output = clip_vis(&[
        "eval",
        "--gt",
        &eval_fixture("random.gt.json"),
        "--results",
        &eval_fixture("random.results.json"),
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(eval_fixture("random.expected.json")).unwrap())
            .unwrap();
    for split in ["all", "base", "novel"] {
        let ap = value[split]["AP"].as_f64().unwrap();
        let reference = expected["lvvis"][split][0].as_f64().unwrap();
        assert!(
            (ap - reference).abs() < 1e-6,
            "{split}: {ap} vs {reference}"
        );
        assert!(value[split]["AR100"].is_number());
    }
    // The table form prints the same rows the Python tools print.
    let output = clip_vis(&[
        "eval",
        "--gt",
        &eval_fixture("random.gt.json"),
        "--results",
        &eval_fixture("random.results.json"),
        "--protocol",
        "ytvis",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"));
}

#[test]
fn eval_rejects_results_of_unknown_categories_and_corrupt_json() {
    let output = clip_vis(&[
        "eval",
        "--gt",
        &eval_fixture("absent_categories.gt.json"),
        "--results",
        &eval_fixture("absent_categories.results.json"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("names category 7"),
        "{}",
        stderr(&output)
    );

    let dir = scratch("eval-corrupt");
    let broken = dir.join("results.json");
    std::fs::write(&broken, "[{\"video_id\": 1,").unwrap();
    let output = clip_vis(&[
        "eval",
        "--gt",
        &eval_fixture("random.gt.json"),
        "--results",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("results.json"),
        "{}",
        stderr(&output)
    );
}
