//! One training step (losses, backward) with the frozen CLIP encoder outside the autodiff
//! graph (clip-vis: CLIP on the inner backend, its features enter as constants) versus inside
//! it (CLIP on the autodiff backend, as a plain port would run it): peak resident memory and
//! step time, each in its own process. Random weights, 2 images with 3 instances each,
//! 12544 points, DEC_LAYERS 7.
//!
//! CLIP_VIS_TORCH_PYTHON=/opt/refenv/bin/python RAYON_NUM_THREADS=2 cargo bench --bench train_step
//!
//! With `CLIP_VIS_TORCH_PYTHON` set, the full-size presets also run `benches/train_step_torch.py`
//! (the same step in PyTorch 2.5.1, CLIP frozen under `no_grad`) on the same threads.
//!
//! `CLIP_VIS_BENCH_TRAIN` (default `tiny:256,rn50:512,convnext:512`) lists `preset:side` runs.
//! Activation memory grows with the pixel count, so 1024x1024 is estimated as 4x the 512 run's
//! growth over the model's resident size.

use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor, TensorData};
use clip_vis::backend::Cpu;
use clip_vis::clip::model::CLIP_VIS_PREFIX;
use clip_vis::clip::weights::{SyntheticFill, TensorStore};
use clip_vis::clip::Clip;
use clip_vis::model::ClipVisConfig;
use clip_vis::train::{Criterion, SeededPoints, Targets, TrainingModel};
use std::process::Command;
use std::time::Instant;

type A = Autodiff<Cpu>;

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn child(preset: &str, side: usize, inside: bool) {
    let config = match preset {
        "tiny" => clip_vis::demo::tiny_video_config(),
        "rn50" => ClipVisConfig::rn50_lvis(),
        "convnext" => ClipVisConfig::convnext_b_lvis(),
        other => panic!("unknown preset {other}"),
    };
    let device = Default::default();
    let store = TensorStore::synthetic(SyntheticFill::Random(11));
    let model = TrainingModel::<A>::load(&store, &config, &device).unwrap();
    let clip_in_graph = inside.then(|| {
        store
            .scoped(CLIP_VIS_PREFIX, |s| {
                Clip::<A>::load(s, &config.clip, &device)
            })
            .unwrap()
    });
    let loaded = peak_kib();
    let rect = |r0: usize, r1: usize, c0: usize, c1: usize| -> Vec<f32> {
        (0..side * side)
            .map(|i| {
                if (r0..r1).contains(&(i / side)) && (c0..c1).contains(&(i % side)) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect()
    };
    let s = side;
    let image = || {
        let masks = [
            rect(s / 8, s / 2, s / 8, s / 2),
            rect(s / 3, s - 4, s / 2, s - 8),
            rect(0, s / 4, 0, s),
        ]
        .concat();
        Tensor::<A, 3>::from_data(TensorData::new(masks, [3, side, side]), &device)
    };
    let targets = Targets {
        masks: vec![image(), image()],
    };
    let criterion = Criterion::default();
    let mut times = Vec::new();
    for step in 0..2 {
        let pixels =
            Tensor::<Cpu, 4>::random([2, 3, side, side], Distribution::Normal(0.0, 1.0), &device);
        let start = Instant::now();
        let terms = match &clip_in_graph {
            None => model
                .losses(pixels, &targets, &criterion, &mut SeededPoints::new(step))
                .unwrap(),
            Some(clip) => {
                let f = clip.features(Tensor::<A, 4>::from_inner(pixels));
                model
                    .head
                    .losses(
                        [f.res2, f.res3, f.res4, f.res5],
                        &targets,
                        &criterion,
                        &mut SeededPoints::new(step),
                    )
                    .unwrap()
            }
        };
        let _grads = terms.total.backward();
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!("result {} {} {:.0}", loaded, peak_kib(), times[1]);
}

fn main() {
    if let Ok(spec) = std::env::var("CLIP_VIS_TRAIN_CHILD") {
        let parts: Vec<&str> = spec.split(',').collect();
        child(parts[0], parts[1].parse().unwrap(), parts[2] == "inside");
        return;
    }
    let runs = std::env::var("CLIP_VIS_BENCH_TRAIN")
        .unwrap_or_else(|_| "tiny:256,rn50:512,convnext:512".into());
    let exe = std::env::current_exe().unwrap();
    for run in runs.split(',').filter(|r| !r.is_empty()) {
        let (preset, side) = run.split_once(':').expect("preset:side");
        let mut rows = Vec::new();
        for mode in ["outside", "inside"] {
            let out = Command::new(&exe)
                .env("CLIP_VIS_TRAIN_CHILD", format!("{preset},{side},{mode}"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let Some(line) = text.lines().find(|l| l.starts_with("result ")) else {
                println!(
                    "train_step/{preset} {side}x{side} {mode}: failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                continue;
            };
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            let (loaded, peak, ms) = (v[0] / 1024.0, v[1] / 1024.0, v[2]);
            println!("train_step/{preset} {side}x{side} CLIP {mode} the graph: step {ms:.0} ms, peak {peak:.0} MiB (model loaded {loaded:.0} MiB, step adds {:.0} MiB)", peak - loaded);
            rows.push((mode, peak - loaded));
        }
        if preset != "tiny" {
            if let Ok(python) = std::env::var("CLIP_VIS_TORCH_PYTHON") {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/train_step_torch.py");
                let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".into());
                let out = Command::new(python)
                    .args([
                        script,
                        "--preset",
                        preset,
                        "--side",
                        side,
                        "--threads",
                        &threads,
                        "--repeats",
                        "1",
                    ])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                match text
                    .lines()
                    .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                {
                    Some(v) => {
                        let kib = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1024.0;
                        println!(
                            "  PyTorch: step {:.0} ms, peak {:.0} MiB (loaded {:.0} MiB, step adds {:.0} MiB)",
                            v["step_ms"].as_f64().unwrap_or(f64::NAN),
                            kib("peak_rss_kib"),
                            kib("loaded_rss_kib"),
                            kib("peak_rss_kib") - kib("loaded_rss_kib")
                        );
                    }
                    None => println!(
                        "  PyTorch side failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .last()
                            .unwrap_or("")
                    ),
                }
            }
        }
        if side != "1024" && rows.len() == 2 {
            let factor = (1024.0 / side.parse::<f64>().unwrap()).powi(2);
            println!(
                "  estimate at 1024x1024: a step adds ~{:.1} GiB (outside) vs ~{:.1} GiB (inside)",
                rows[0].1 * factor / 1024.0,
                rows[1].1 * factor / 1024.0
            );
        }
    }
}
