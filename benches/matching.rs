//! Temporal matching per frame: 100 queries of dimension 256, memory T = 9, K = 3, against the
//! official algorithm (PyTorch costs + SciPy `linear_sum_assignment`) on the same embeddings.
//!
//! CLIP_VIS_TORCH_PYTHON=/opt/refenv/bin/python RAYON_NUM_THREADS=2 cargo bench --bench matching

mod common;

use clip_vis::matching::{MatchConfig, Strategy};
use std::time::Instant;

const QUERIES: usize = 100;
const DIM: usize = 256;
const FRAMES: usize = 200;

/// Seeded normals (xorshift64* + Box-Muller).
fn normals(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

/// `realistic`: fixed per-object embeddings plus 0.3 noise, listed in a rotating order (what
/// a video gives); otherwise independent random embeddings per frame (the hardest case).
fn video(realistic: bool) -> Vec<f32> {
    let base = normals(1, QUERIES * DIM);
    let noise = normals(2, FRAMES * QUERIES * DIM);
    let mut out = Vec::with_capacity(FRAMES * QUERIES * DIM);
    for f in 0..FRAMES {
        for q in 0..QUERIES {
            let object = (q * 37 + f * 11) % QUERIES;
            for d in 0..DIM {
                let n = noise[(f * QUERIES + q) * DIM + d];
                out.push(if realistic {
                    base[object * DIM + d] + 0.3 * n
                } else {
                    n
                });
            }
        }
    }
    out
}

fn main() {
    breakdown();
    let config = MatchConfig::PAPER;
    for (name, realistic) in [("realistic", true), ("random", false)] {
        let frames = video(realistic);
        let mut matcher = Strategy::TopK(config).build().unwrap();
        let start = Instant::now();
        for frame in frames.chunks_exact(QUERIES * DIM) {
            matcher.assign(frame, DIM).unwrap();
        }
        let ours = start.elapsed().as_secs_f64() * 1e3 / FRAMES as f64;
        println!(
            "matching/topk T={} K={} {QUERIES}x{DIM} {name}: {ours:.3} ms/frame",
            config.memory_frames, config.topk_frames
        );
        let Ok(python) = std::env::var("CLIP_VIS_TORCH_PYTHON") else {
            continue;
        };
        let path = std::env::temp_dir().join(format!("clip-vis-matching-bench-{name}.bin"));
        let bytes: Vec<u8> = frames.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/matching_python.py");
        let output = std::process::Command::new(&python)
            .arg(script)
            .arg(&path)
            .args(
                [
                    FRAMES,
                    QUERIES,
                    DIM,
                    config.memory_frames,
                    config.topk_frames,
                ]
                .map(|v| v.to_string()),
            )
            .args(["--threads", &common::threads().to_string()])
            .output()
            .expect("python runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        match stdout
            .lines()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            Some(v) => {
                let theirs = v["ms_per_frame"].as_f64().unwrap();
                println!(
                    "  reference (torch + scipy): {theirs:.3} ms/frame, ratio {:.2}x",
                    ours / theirs
                );
            }
            None => println!(
                "  reference failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
        let _ = std::fs::remove_file(&path);
    }
    if std::env::var("CLIP_VIS_TORCH_PYTHON").is_err() {
        println!(
            "(set CLIP_VIS_TORCH_PYTHON to a Python with torch and scipy for the reference side)"
        );
    }
}

/// Where a frame's time goes: the cosine costs against a full memory and the Hungarian solves.
#[allow(dead_code)]
pub fn breakdown() {
    use clip_vis::matching::{cosine_cost, normalized_rows, solve_assignment};
    let frames = video(true);
    let (a, _) = normalized_rows(&frames[..QUERIES * DIM], DIM, 0).unwrap();
    let (b, _) = normalized_rows(&frames[QUERIES * DIM..2 * QUERIES * DIM], DIM, 0).unwrap();
    let n = 200;
    let start = Instant::now();
    let mut cost = Vec::new();
    for _ in 0..n {
        cost = cosine_cost(&a, &b, DIM);
    }
    let gemm = start.elapsed().as_secs_f64() * 1e3 / n as f64;
    let start = Instant::now();
    for _ in 0..n {
        solve_assignment(&cost, QUERIES, 0).unwrap();
    }
    let solve = start.elapsed().as_secs_f64() * 1e3 / n as f64;
    println!("  one cost matrix {gemm:.3} ms, one Hungarian solve {solve:.3} ms");
}
