//! The whole video pipeline: per-frame time of each stage for both presets (random weights at
//! full size) on a 480p video (480x640) and a 720p one resized to 480x853, beside the PyTorch reference
//! (`benches/video_torch.py`) on the same threads; and the peak resident memory of
//! `clip-vis segment` on 300- and 1000-frame 480p videos (the tiny model), which must not grow
//! with the video.
//!
//! CLIP_VIS_TORCH_PYTHON=/opt/refenv/bin/python RAYON_NUM_THREADS=2 cargo bench --bench video
//!
//! `CLIP_VIS_BENCH_FRAMES` (default 4) frames per preset; `CLIP_VIS_BENCH_MEMORY_FRAMES`
//! (default `300,1000`, empty to skip) the memory runs; `CLIP_VIS_BENCH_PRESETS` (default
//! `rn50,convnext`); `CLIP_VIS_BENCH_SIZES` (default `480x640,720x1280`) the source sizes;
//! `CLIP_VIS_BENCH_DTYPE` (default `f32`; `bf16`, or `f32,bf16` for both in one run) the
//! precision of clip-vis's products (`--dtype`; bf16 needs AMX; PyTorch's side stays f32).

mod common;

use burn::tensor::{Distribution, Tensor};
use clip_vis::backend;
use clip_vis::classification::{BuiltinVocabulary, Vocabulary};
use clip_vis::clip::host::{self, Precision};
use clip_vis::clip::weights::{SyntheticFill, TensorStore};
use clip_vis::clip::zero_shot::{l2_normalize, TextClassifier};
use clip_vis::model::{ClipVis, ClipVisConfig};
use clip_vis::video::{resized_size, StageTimings, VideoConfig, VideoSession};
use std::path::Path;
use std::process::Command;

type B = backend::Cpu;

/// Source frame sizes (height x width): a 480p video (480x640, no resize) and a 720p one
/// (resized to 480x853); override with `CLIP_VIS_BENCH_SIZES`, e.g. `480x640`.
const DEFAULT_SIZES: &str = "480x640,720x1280";

fn frames_env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn session_timings(
    model: &ClipVis<B>,
    classifier: &TextClassifier<B>,
    vocabulary: &Vocabulary,
    frames: usize,
    (height, width): (usize, usize),
) -> StageTimings {
    let device = Default::default();
    let config = VideoConfig {
        chunk: 1,
        ..VideoConfig::default()
    };
    let mut session = VideoSession::new(
        model,
        classifier.clone(),
        vocabulary.clone(),
        config,
        &device,
    )
    .unwrap();
    for i in 0..frames {
        session
            .push(clip_vis::demo::synthetic_frame(i, width, height))
            .unwrap();
    }
    session.finish().unwrap().timings
}

fn pipeline(preset: &str, sizes: &[(usize, usize)]) {
    let device = Default::default();
    let config = match preset {
        "rn50" => ClipVisConfig::rn50_lvis(),
        "convnext" => ClipVisConfig::convnext_b_lvis(),
        other => panic!("unknown preset {other}"),
    };
    let store = TensorStore::synthetic(SyntheticFill::Random(7));
    let model = ClipVis::<B>::load(&store, &config, &device).unwrap();
    // LV-VIS's 1196 categories; a random unit classifier stands in for the text tower, whose
    // one-time cost is measured by the clip_towers bench.
    let vocabulary = Vocabulary::builtin(BuiltinVocabulary::Lvvis);
    let embeddings = l2_normalize(Tensor::<B, 2>::random(
        [vocabulary.len(), config.clip.embed_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    ));
    let classifier = TextClassifier {
        embeddings,
        category_of: (0..vocabulary.len()).collect(),
        num_categories: vocabulary.len(),
    };
    let frames: usize = frames_env("CLIP_VIS_BENCH_FRAMES", "4").parse().unwrap();
    let precisions: Vec<(&str, Precision)> = frames_env("CLIP_VIS_BENCH_DTYPE", "f32")
        .split(',')
        .map(|name| match name.trim() {
            "f32" => ("f32", Precision::F32),
            "bf16" => ("bf16", Precision::Bf16),
            other => panic!("CLIP_VIS_BENCH_DTYPE: `{other}` is not f32 or bf16"),
        })
        .collect();
    for &(height, width) in sizes {
        let runs: Vec<(&str, StageTimings)> = precisions
            .iter()
            .map(|&(name, precision)| {
                host::set_precision(precision).expect("CLIP_VIS_BENCH_DTYPE");
                session_timings(&model, &classifier, &vocabulary, 1, (height, width)); // warm-up
                let t = session_timings(&model, &classifier, &vocabulary, frames, (height, width));
                (name, t)
            })
            .collect();
        host::set_precision(Precision::F32).unwrap();
        report(preset, &runs, frames, vocabulary.len(), (height, width));
    }
}

/// Prints one run's stages (one column per precision) beside the reference's on the same
/// frames and threads.
fn report(
    preset: &str,
    runs: &[(&str, StageTimings)],
    frames: usize,
    categories: usize,
    (height, width): (usize, usize),
) {
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / frames as f64;
    let (vh, vw) = resized_size(height, width, 480, 1333);
    let (ph, pw) = (vh.div_ceil(32) * 32, vw.div_ceil(32) * 32);
    println!("video/{preset} {height}x{width} -> {vh}x{vw} (padded {ph}x{pw}), {categories} categories, {frames} frames, {} threads:", common::threads());
    let reference = reference(preset, (ph, pw), (vh, vw), (height, width), frames);
    let mut header = format!("  {:<20}", "ms/frame");
    for (name, _) in runs {
        header += &format!(" {:>9}", format!("ours {name}"));
    }
    if reference.is_some() {
        header += &format!(" {:>9}", "torch");
        for (name, _) in runs {
            header += &format!(" {:>11}", format!("{name}/torch"));
        }
    }
    println!("{header}");
    let names: Vec<&str> = runs[0].1.stages().into_iter().map(|(n, _)| n).collect();
    let mut totals = vec![0.0; runs.len() + 1];
    for (stage, name) in names.iter().enumerate() {
        let ours: Vec<f64> = runs.iter().map(|(_, t)| per(t.stages()[stage].1)).collect();
        let theirs = reference
            .as_ref()
            .and_then(|r| r["stages_ms"][name].as_f64());
        print_row(name, &ours, theirs);
        for (total, value) in totals.iter_mut().zip(ours.iter().chain(theirs.iter())) {
            *total += value;
        }
    }
    let theirs = reference.is_some().then(|| totals[runs.len()]);
    print_row("total", &totals[..runs.len()], theirs);
}

fn print_row(name: &str, ours: &[f64], theirs: Option<f64>) {
    let mut line = format!("  {name:<20}");
    for value in ours {
        line += &format!(" {value:>9.1}");
    }
    if let Some(theirs) = theirs {
        line += &format!(" {theirs:>9.1}");
        for value in ours {
            line += &format!(" {:>10.2}x", value / theirs);
        }
    }
    println!("{line}");
}

fn reference(
    preset: &str,
    padded: (usize, usize),
    valid: (usize, usize),
    original: (usize, usize),
    frames: usize,
) -> Option<serde_json::Value> {
    let python = std::env::var("CLIP_VIS_TORCH_PYTHON").ok()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/video_torch.py");
    let output = Command::new(python)
        .arg(script)
        .args([
            "--preset",
            preset,
            "--frames",
            &frames.to_string(),
            "--classes",
            "1196",
        ])
        .args([
            "--threads",
            &common::threads().to_string(),
            "--repeats",
            "1",
        ])
        .args([
            "--height",
            &padded.0.to_string(),
            "--width",
            &padded.1.to_string(),
        ])
        .args([
            "--valid-height",
            &valid.0.to_string(),
            "--valid-width",
            &valid.1.to_string(),
        ])
        .args([
            "--orig-height",
            &original.0.to_string(),
            "--orig-width",
            &original.1.to_string(),
        ])
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = stdout
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    if value.is_none() {
        println!(
            "  (reference failed: {})",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    value
}

/// Peak RSS of `clip-vis segment` (release binary) on `frames` synthetic 640x480 frames.
fn peak_memory(dir: &Path, weights: &Path, frames: usize) -> (u64, f64) {
    let frames_dir = dir.join(format!("frames-{frames}"));
    if !frames_dir.exists() {
        std::fs::create_dir_all(&frames_dir).unwrap();
        for i in 0..frames {
            let f = clip_vis::demo::synthetic_frame(i, 640, 480);
            image::RgbImage::from_raw(640, 480, f.pixels)
                .unwrap()
                .save(frames_dir.join(format!("{i:06}.png")))
                .unwrap();
        }
    }
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/clip-vis");
    let start = std::time::Instant::now();
    let output = Command::new(&binary)
        .args([
            "segment",
            "--dataset",
            "ytvis19",
            "--no-pictures",
            "--report-peak-memory",
        ])
        .arg("--weights")
        .arg(weights)
        .arg("--frames")
        .arg(&frames_dir)
        .arg("--out")
        .arg(dir.join(format!("out-{frames}")))
        .output()
        .expect("run target/release/clip-vis (cargo build --release first)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let kib = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .expect("peak memory line");
    (kib, start.elapsed().as_secs_f64())
}

fn main() {
    let sizes: Vec<(usize, usize)> = frames_env("CLIP_VIS_BENCH_SIZES", DEFAULT_SIZES)
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let parsed = s
                .trim()
                .split_once('x')
                .and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)));
            parsed.unwrap_or_else(|| panic!("CLIP_VIS_BENCH_SIZES: `{s}` is not HEIGHTxWIDTH"))
        })
        .collect();
    for preset in frames_env("CLIP_VIS_BENCH_PRESETS", "rn50,convnext")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        pipeline(preset, &sizes);
    }
    let runs: Vec<usize> = frames_env("CLIP_VIS_BENCH_MEMORY_FRAMES", "300,1000")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if runs.is_empty() {
        return;
    }
    let dir = std::env::temp_dir().join("clip-vis-video-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("tiny.safetensors");
    clip_vis::demo::write_tiny_video_weights(&weights).unwrap();
    let mut peaks = Vec::new();
    for frames in runs {
        let (kib, seconds) = peak_memory(&dir, &weights, frames);
        println!("memory/segment {frames} frames 640x480 (tiny model, YTVIS-19 vocabulary): peak RSS {:.1} MiB, {seconds:.0} s", kib as f64 / 1024.0);
        peaks.push(kib as f64);
    }
    if peaks.len() >= 2 {
        let (lo, hi) = (peaks[0], peaks[peaks.len() - 1]);
        println!(
            "memory growth from the first to the last run: {:+.1} %",
            100.0 * (hi - lo) / lo
        );
    }
}
