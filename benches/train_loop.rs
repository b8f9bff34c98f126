//! Throughput of the training pipeline on the CPU: the loader's pictures per second with large-
//! scale jitter at 1024 (the R50 / ConvNeXt-B setting) per decoding thread, and the whole loop
//! (loader + step) with the tiny model, with and without decoding threads.
//!
//! RAYON_NUM_THREADS=2 cargo bench --bench train_loop
//!
//! `CLIP_VIS_BENCH_LOOP_ITERS` (default 12) iterations per loop run.
//!
//! Whether the loader keeps up with a GPU: a training step of the R50 preset at 1024x1024 costs
//! about 1.5 TFLOP per picture (the frozen RN50 trunk forward, ~0.17 TFLOP, plus 3x the
//! decoders' forward, ~0.45 TFLOP, scaling the paper's 244 GFLOPs at 480x853 to 1024x1024); at
//! a sustained 100 TFLOP/s (an A100 with mixed precision at ~30 % of peak) that is ~15 ms, i.e.
//! ~65 pictures per second per GPU. The bench prints how many decoding threads that takes.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::backend::Autodiff;
use clip_vis::backend::Cpu;
use clip_vis::model::ClipVisConfig;
use clip_vis::train::augment::Augmentation;
use clip_vis::train::data::{BadRecords, InstanceDataset, InstanceOptions, TrainSource};
use clip_vis::train::loader::{Loader, LoaderConfig};
use clip_vis::train::optim::ScheduleConfig;
use clip_vis::train::sampler::{Sampler, SamplerKind};
use clip_vis::train::synthetic::{write_coco, SynthConfig};
use clip_vis::train::{ClipWeights, DataSpec, NoHooks, TrainConfig, Trainer};

/// Pictures per second a GPU step of the R50 preset at 1024x1024 consumes (module docs).
const GPU_PICTURES_PER_SECOND: f64 = 65.0;

fn dataset(dir: &Path, width: usize, height: usize, count: usize) -> std::path::PathBuf {
    let json = dir.join("instances.json");
    if !json.exists() {
        let config = SynthConfig {
            width,
            height,
            min_objects: 3,
            max_objects: 8,
            ..SynthConfig::default()
        };
        write_coco(dir, &config, 0, count).unwrap();
    }
    json
}

fn loader_rate(json: &Path, images: &Path, workers: usize) -> f64 {
    let source: Arc<dyn TrainSource> =
        Arc::new(InstanceDataset::open(json, images, InstanceOptions::default()).unwrap());
    let sampler = Arc::new(Sampler::new(SamplerKind::Uniform, source.as_ref(), 0));
    let config = LoaderConfig {
        batch_size: 4,
        workers,
        // One batch ahead: what is prepared before the clock starts stays a small part of
        // what is timed.
        prefetch: 1,
        ..LoaderConfig::default()
    };
    let mut loader = Loader::new(source, sampler, Augmentation::lsj(1024), config, 0).unwrap();
    loader.next_batch().unwrap(); // threads started, caches warm
    let started = Instant::now();
    let batches = 24;
    for _ in 0..batches {
        loader.next_batch().unwrap();
    }
    (batches * 4) as f64 / started.elapsed().as_secs_f64()
}

fn loop_rate(json: &Path, images: &Path, out: &Path, workers: usize, iterations: usize) -> f64 {
    let _ = std::fs::remove_dir_all(out);
    let mut config = TrainConfig::lvis(
        ClipVisConfig::tiny(),
        ClipWeights::Seeded { seed: 2024 },
        json.to_path_buf(),
        images.to_path_buf(),
    );
    config.data = DataSpec::Instances {
        json: json.to_path_buf(),
        images: images.to_path_buf(),
        norare: false,
    };
    config.augmentation = Augmentation::lsj(256);
    config.sampler = SamplerKind::Uniform;
    config.batch_size = 4;
    config.workers = workers;
    config.bad_records = BadRecords::Error;
    config.schedule = ScheduleConfig {
        max_iter: iterations + 1,
        steps: vec![],
        ..ScheduleConfig::default()
    };
    config.checkpoint_period = 0;
    let device = Default::default();
    let mut trainer = Trainer::<Autodiff<Cpu>>::new(config, out, &device).unwrap();
    trainer.run_until(1, &mut NoHooks).unwrap(); // warm-up
    let summary = trainer.run_until(iterations + 1, &mut NoHooks).unwrap();
    summary.images_per_second
}

fn main() {
    let root = std::env::temp_dir().join("clip-vis-train-loop-bench");
    let large = root.join("lsj-640x480");
    let json = dataset(&large, 640, 480, 48);
    let images = large.join("images");
    println!("train/loader LSJ 1024, synthetic 640x480 pictures with 3-8 instances:");
    let mut per_thread = 0.0;
    for workers in [0usize, 1, 2] {
        let rate = loader_rate(&json, &images, workers);
        println!("  {workers} decoding threads: {rate:.1} pictures/s");
        if workers == 1 {
            per_thread = rate;
        }
    }
    println!(
        "  an R50 GPU step at 1024x1024 takes ~{GPU_PICTURES_PER_SECOND:.0} pictures/s per GPU: ~{:.0} decoding threads per GPU at this rate",
        (GPU_PICTURES_PER_SECOND / per_thread).ceil()
    );
    let small = root.join("loop-256x192");
    let json = dataset(&small, 256, 192, 64);
    let images = small.join("images");
    let iterations: usize = std::env::var("CLIP_VIS_BENCH_LOOP_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    println!("train/loop tiny model, LSJ 256, batch 4, 12544 points, {iterations} iterations:");
    for workers in [0usize, 2] {
        let rate = loop_rate(
            &json,
            &images,
            &root.join(format!("run-{workers}")),
            workers,
            iterations,
        );
        println!("  {workers} decoding threads: {rate:.2} pictures/s");
    }
}
