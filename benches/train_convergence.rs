//! Convergence of the training pipeline: the tiny model trained from scratch on synthetic
//! shapes (frozen seeded CLIP, LSJ, AdamW, the whole loop), with the class-agnostic mask AP50 of
//! held-out synthetic pictures measured along the way. It must go from ~0 to above 50.
//!
//! RAYON_NUM_THREADS=2 cargo bench --bench train_convergence
//!
//! `CLIP_VIS_BENCH_CONVERGENCE_ITERS` (default 2400) iterations, evaluated every
//! `CLIP_VIS_BENCH_CONVERGENCE_EVERY` (default 400) on 50 held-out pictures.

use std::time::Instant;

use burn::backend::Autodiff;
use clip_vis::backend::Cpu;
use clip_vis::model::{ClipVis, ClipVisConfig};
use clip_vis::train::augment::Augmentation;
use clip_vis::train::optim::ScheduleConfig;
use clip_vis::train::sampler::SamplerKind;
use clip_vis::train::synthetic::{write_coco, SynthConfig};
use clip_vis::train::validation::HeldOut;
use clip_vis::train::{
    ClipWeights, CriterionConfig, DataSpec, MatcherConfig, TrainConfig, TrainHooks, Trainer,
};

type B = Autodiff<Cpu>;

struct Curve {
    held_out: HeldOut,
    started: Instant,
}

impl TrainHooks<B> for Curve {
    fn evaluate(
        &mut self,
        model: &ClipVis<Cpu>,
        iteration: usize,
    ) -> clip_vis::train::Result<Vec<(String, f64)>> {
        let summary = self.held_out.evaluate(model, &Default::default())?;
        println!(
            "  iteration {iteration:>5} ({:>5.0} s): AP50 {:>5.1}  AP {:>5.1}",
            self.started.elapsed().as_secs_f64(),
            100.0 * summary.stats[1],
            100.0 * summary.stats[0]
        );
        Ok(vec![("AP50".into(), summary.stats[1])])
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let iterations = env("CLIP_VIS_BENCH_CONVERGENCE_ITERS", 2400);
    let every = env("CLIP_VIS_BENCH_CONVERGENCE_EVERY", 400);
    let root = std::env::temp_dir().join("clip-vis-convergence-bench");
    let synth = SynthConfig {
        width: 128,
        height: 96,
        seed: 5,
        ..SynthConfig::default()
    };
    let data = root.join("train");
    let json = data.join("instances.json");
    if !json.exists() {
        write_coco(&data, &synth, 0, 500).unwrap();
    }
    let out = root.join("run");
    let _ = std::fs::remove_dir_all(&out);
    let images = data.join("images");
    let mut config = TrainConfig::lvis(
        ClipVisConfig::tiny(),
        ClipWeights::Seeded { seed: 2024 },
        json.clone(),
        images.clone(),
    );
    config.data = DataSpec::Instances {
        json,
        images,
        norare: false,
    };
    config.augmentation = Augmentation::lsj(128);
    config.sampler = SamplerKind::Uniform;
    config.batch_size = 4;
    config.workers = 1;
    config.optimizer.lr = 3e-4;
    config.schedule = ScheduleConfig {
        max_iter: iterations,
        steps: vec![iterations * 8 / 10],
        ..ScheduleConfig::default()
    };
    config.criterion = CriterionConfig {
        points: 3136,
        matcher: MatcherConfig {
            points: 3136,
            ..MatcherConfig::default()
        },
        ..CriterionConfig::default()
    };
    config.checkpoint_period = 0;
    config.eval_period = every;
    println!(
        "train/convergence tiny model, 500 synthetic 128x96 pictures, LSJ 128, batch 4, lr 3e-4, {iterations} iterations; class-agnostic AP on 50 held-out pictures:"
    );
    let mut curve = Curve {
        held_out: HeldOut::synthetic(&synth, 100_000, 50).unwrap(),
        started: Instant::now(),
    };
    let device = Default::default();
    let mut trainer = Trainer::<B>::new(config, &out, &device).unwrap();
    curve.evaluate(&trainer.inference_model(), 0).unwrap();
    let summary = trainer.run(&mut curve).unwrap();
    println!(
        "  {:.2} pictures/s, {:.0} s in all",
        summary.images_per_second, summary.seconds
    );
}
