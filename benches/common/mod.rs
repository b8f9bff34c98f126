//! Timing helpers shared by the benches.
#![allow(dead_code)]

use std::time::Instant;

/// Timed runs per measurement: `CLIP_VIS_BENCH_REPEATS`, else `default`.
pub fn repeats(default: usize) -> usize {
    std::env::var("CLIP_VIS_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU threads in use: `RAYON_NUM_THREADS`, else every core (rayon's own default).
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Median wall time in milliseconds of `repeats` runs after one warm-up.
pub fn median_ms(repeats: usize, mut run: impl FnMut()) -> f64 {
    run();
    let mut runs: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}
