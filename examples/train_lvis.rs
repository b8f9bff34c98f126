//! Trains CLIP-VIS's class-agnostic mask generator on LVIS v1 (or COCO, or YouTube-VIS frames)
//! with the frozen CLIP encoder, as the paper does (SPEC §5), and writes clip-vis weights that
//! `clip-vis segment` takes directly.
//!
//! ```text
//! cargo run --release --features cuda --example train_lvis -- --device cuda \
//!     --lvis-json datasets/lvis/lvis_v1_train.json --images datasets/coco \
//!     --clip RN50-openai.bin --preset r50 --out runs/lvis_r50 [--batch 16] [--iters 368750] [--resume]
//! ```
//!
//! `--images` is the COCO folder holding `train2017/` (or that folder itself). Rare categories
//! are dropped (`lvis_v1_train_norare`) and pictures are drawn by repeat factor (0.001); LSJ at
//! 1024; AdamW 1e-4, weight decay 0.05 (none on norms and embeddings), gradients clipped at a
//! global norm of 0.01; the learning rate drops ×0.1 at 88.9 % and 96.3 % of the run (the
//! released 327,778 and 355,092 of 368,750). Every number is a flag. `--dataset coco` trains on
//! COCO instances instead (all categories, uniform order); `--ytvis-json` / `--frames` with
//! `--init <coco model>` is the single-frame YouTube-VIS fine-tune (short side 800).
//!
//! The run folder holds `config.json`, `metrics.jsonl`, `checkpoints/` and, at the end,
//! `model_final.safetensors`. `--resume` continues the newest checkpoint with the saved
//! configuration (and gives the same weights an uninterrupted run gives, on the CPU).
//!
//! `--device cpu|wgpu|cuda` picks the backend (`wgpu`: any Vulkan / Metal / DX12 GPU, build with
//! `--features wgpu`; `cuda`: NVIDIA, `--features cuda`). Data-parallel: `--devices N` trains
//! on N GPUs of that backend (on the CPU, N ranks share the machine), the batch split evenly. Several machines: start the orchestrator on one
//! (`--serve-orchestrator 9000`), then on every machine `--num-nodes M --node-rank r
//! --orchestrator ws://host0:9000 --node-address ws://this-host:9001 --data-port 9001`.
//!
//! Output of the demo model's run on synthetic shapes (the command is in
//! `assets/demo/README.md`); on a terminal a progress bar also shows the iteration, the time
//! elapsed and left, and each loss term, e.g. `iter 400/3000 [..] loss 11.875 (ce 0.154 mask
//! 0.091 dice 0.334 iou 0.266) lr 3.0e-4` (iteration 400 of `runs/demo/metrics.jsonl`):
//!
//! ```text
//! train_lvis: 2000 pictures, 5044 instances (0 crowd, 0 rare, 0 empty, 0 skipped)
//! train_lvis: iteration 500: held-out AP50 44.2, AP 21.6
//! ...
//! train_lvis: iteration 3000: held-out AP50 65.3, AP 41.4
//! train_lvis: wrote runs/demo/model_final.safetensors
//! ```

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Parser, ValueEnum};
use clip_vis::backend::{self, DeviceKind};
use clip_vis::model::{ClipVis, ClipVisConfig};
use clip_vis::train::augment::Augmentation;
use clip_vis::train::data::BadRecords;
use clip_vis::train::distributed::{spawn_orchestrator, train_data_parallel, DataParallel};
use clip_vis::train::optim::ScheduleConfig;
use clip_vis::train::sampler::SamplerKind;
use clip_vis::train::synthetic::SynthConfig;
use clip_vis::train::validation::HeldOut;
use clip_vis::train::{
    ClipWeights, CriterionConfig, DataSpec, DecoderInit, MatcherConfig, TrainConfig, TrainError,
    TrainHooks,
};

/// `--device`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceName {
    /// The CPU backend.
    Cpu,
    /// GPUs through wgpu (Vulkan, Metal, DX12; build with `--features wgpu`).
    Wgpu,
    /// NVIDIA GPUs through CUDA (build with `--features cuda`).
    Cuda,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    /// OpenAI RN50 CLIP, LVIS decoders (DEC_LAYERS 7).
    R50,
    /// OpenCLIP ConvNeXt-B CLIP, LVIS decoders.
    ConvnextB,
    /// The tiny demo model (seconds per step on a laptop CPU).
    Tiny,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dataset {
    /// LVIS v1 without rare categories, repeat-factor sampling (the paper).
    Lvis,
    /// COCO instances, every category, uniform order.
    Coco,
}

/// Train CLIP-VIS's mask generator (frozen CLIP).
#[derive(Debug, Parser)]
struct Args {
    /// LVIS v1 (or COCO) instance json.
    #[arg(long, required_unless_present_any = ["resume", "ytvis_json"])]
    lvis_json: Option<PathBuf>,
    /// The picture folder (COCO's, holding train2017/, or that split folder).
    #[arg(long, required_unless_present_any = ["resume", "ytvis_json"])]
    images: Option<PathBuf>,
    /// YouTube-VIS video json instead: the single-frame fine-tune.
    #[arg(long, requires = "frames")]
    ytvis_json: Option<PathBuf>,
    /// The folder the video json's `file_names` are in.
    #[arg(long)]
    frames: Option<PathBuf>,
    /// CLIP weights (open_clip checkpoint or CLIP-VIS file), or `seeded:<seed>` for random
    /// weights (the tiny preset).
    #[arg(long, required_unless_present = "resume")]
    clip: Option<String>,
    /// Architecture.
    #[arg(long, value_enum, default_value = "r50")]
    preset: Preset,
    /// Decoder layers (`DEC_LAYERS - 1`: 6 for LVIS, 9 for COCO / YouTube-VIS).
    #[arg(long)]
    layers: Option<usize>,
    /// Output folder of the run.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its newest checkpoint (its saved settings).
    #[arg(long)]
    resume: bool,
    /// Pictures per iteration, over all devices.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Iterations (the released 368750); the learning-rate steps scale with it.
    #[arg(long, default_value_t = 368_750)]
    iters: usize,
    /// Learning-rate steps (default: 88.9 % and 96.3 % of --iters).
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<usize>>,
    /// Base learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Warmup iterations and starting factor.
    #[arg(long, default_value_t = 10)]
    warmup_iters: usize,
    /// Learning-rate factor at iteration 0 (1 = no warmup, the released setting).
    #[arg(long, default_value_t = 1.0)]
    warmup_factor: f64,
    /// Which instance dataset --lvis-json is.
    #[arg(long, value_enum, default_value = "lvis")]
    dataset: Dataset,
    /// LSJ output side.
    #[arg(long, default_value_t = 1024)]
    image_size: usize,
    /// Points per mask in the losses and the matcher (12544).
    #[arg(long, default_value_t = 12544)]
    points: usize,
    /// Start the decoders from this CLIP-VIS weights file (e.g. the COCO model).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Decoding threads per device.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seed of initialisation, order, augmentation and points.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Iterations between checkpoints.
    #[arg(long, default_value_t = 10_000)]
    checkpoint_period: usize,
    /// Iterations between metric lines.
    #[arg(long, default_value_t = 20)]
    log_period: usize,
    /// Skip (and count) unusable records and pictures instead of stopping.
    #[arg(long)]
    skip_bad_records: bool,
    /// Evaluate class-agnostic AP on this many held-out synthetic pictures (for runs on
    /// `clip-vis synth` data: its --size and --seed must match).
    #[arg(long, default_value_t = 0)]
    eval_synthetic: usize,
    /// Size of those pictures, `WIDTHxHEIGHT`.
    #[arg(long, default_value = "256x192")]
    eval_size: String,
    /// Seed of those pictures (the `clip-vis synth --seed`).
    #[arg(long, default_value_t = 0)]
    eval_seed: u64,
    /// First held-out picture index (past the training pictures).
    #[arg(long, default_value_t = 1_000_000)]
    eval_first: usize,
    /// Iterations between evaluations (0: at the end only).
    #[arg(long, default_value_t = 0)]
    eval_period: usize,
    /// Where the decoders train (the frozen CLIP runs there too, outside the graph).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceName,
    /// Data-parallel ranks on this machine: GPUs 0..N with a GPU --device (on the CPU, N
    /// ranks share the machine).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Machines in the run.
    #[arg(long, default_value_t = 1)]
    num_nodes: usize,
    /// This machine's index.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// The orchestrator, ws://host:port (several machines).
    #[arg(long)]
    orchestrator: Option<String>,
    /// This machine's address for the others, ws://host:port (several machines).
    #[arg(long)]
    node_address: Option<String>,
    /// This machine's data-service port (several machines).
    #[arg(long)]
    data_port: Option<u16>,
    /// Also run the orchestrator here, on this port.
    #[arg(long)]
    serve_orchestrator: Option<u16>,
}

/// Class-agnostic AP on held-out synthetic pictures, logged as `eval.AP50` / `eval.AP`.
struct SyntheticEval {
    held_out: HeldOut,
}

impl<B: AutodiffBackend> TrainHooks<B> for SyntheticEval {
    fn evaluate(
        &mut self,
        model: &ClipVis<B::InnerBackend>,
        iteration: usize,
    ) -> clip_vis::train::Result<Vec<(String, f64)>> {
        let device = model.devices().into_iter().next().unwrap_or_default();
        let summary = self.held_out.evaluate(model, &device)?;
        eprintln!(
            "train_lvis: iteration {iteration}: held-out AP50 {:.1}, AP {:.1}",
            100.0 * summary.stats[1],
            100.0 * summary.stats[0]
        );
        Ok(vec![
            ("AP".into(), summary.stats[0]),
            ("AP50".into(), summary.stats[1]),
        ])
    }
}

/// Nothing to evaluate.
struct Quiet;
impl<B: AutodiffBackend> TrainHooks<B> for Quiet {}

fn parse_size(text: &str) -> Result<(usize, usize), TrainError> {
    text.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| TrainError::Config(format!("size {text:?}: expected WIDTHxHEIGHT")))
}

fn config(args: &Args) -> Result<TrainConfig, TrainError> {
    let clip_arg = args.clip.as_deref().unwrap_or_default();
    let clip = match clip_arg.strip_prefix("seeded:") {
        Some(seed) => ClipWeights::Seeded {
            seed: seed
                .parse()
                .map_err(|_| TrainError::Config(format!("--clip {clip_arg}: seeded:<integer>")))?,
        },
        None => ClipWeights::File {
            path: PathBuf::from(clip_arg),
        },
    };
    let clip_config = match (&clip, args.preset) {
        (_, Preset::Tiny) => ClipVisConfig::tiny().clip,
        (ClipWeights::File { path }, _) => {
            // The architecture comes from the weights; the preset must agree.
            let store = clip_vis::train::clip_store(&clip, &ClipVisConfig::tiny())?;
            let found = clip_vis::clip::model::detect_config(&store)?;
            let wanted = match args.preset {
                Preset::R50 => "RN50",
                _ => "convnext_base_w_320",
            };
            if found.name != wanted {
                return Err(TrainError::Config(format!(
                    "{}: the weights are {}, but --preset asks for {wanted}",
                    path.display(),
                    found.name
                )));
            }
            found
        }
        (ClipWeights::Seeded { .. }, Preset::R50) => ClipVisConfig::rn50_lvis().clip,
        (ClipWeights::Seeded { .. }, Preset::ConvnextB) => ClipVisConfig::convnext_b_lvis().clip,
    };
    let video = args.ytvis_json.is_some();
    let layers = args
        .layers
        .unwrap_or(match (args.preset, args.dataset, video) {
            (Preset::Tiny, _, _) => 3,
            (_, Dataset::Lvis, false) => 6,
            _ => 9,
        });
    let mut model = match args.preset {
        Preset::Tiny => ClipVisConfig::tiny(),
        _ => ClipVisConfig::for_clip(clip_config, layers),
    };
    model.transformer_decoder.layers = layers;
    let data = match (&args.ytvis_json, &args.lvis_json, &args.images) {
        (Some(json), _, _) => DataSpec::Videos {
            json: json.clone(),
            frames: args.frames.clone().expect("clap requires --frames"),
        },
        (None, Some(json), Some(images)) => DataSpec::Instances {
            json: json.clone(),
            images: images.clone(),
            norare: matches!(args.dataset, Dataset::Lvis),
        },
        _ => {
            return Err(TrainError::Config(
                "give --lvis-json and --images (or --ytvis-json and --frames)".into(),
            ))
        }
    };
    let steps = args.steps.clone().unwrap_or_else(|| {
        let at = |fraction: f64| (args.iters as f64 * fraction).round() as usize;
        vec![at(327_778.0 / 368_750.0), at(355_092.0 / 368_750.0)]
    });
    let mut config = TrainConfig::lvis(model, clip, PathBuf::new(), PathBuf::new());
    config.data = data;
    config.init = match &args.init {
        Some(path) => DecoderInit::File { path: path.clone() },
        None => DecoderInit::Fresh { seed: args.seed },
    };
    config.bad_records = if args.skip_bad_records {
        BadRecords::Skip
    } else {
        BadRecords::Error
    };
    config.augmentation = if video {
        Augmentation::video_finetune()
    } else {
        Augmentation::lsj(args.image_size)
    };
    config.sampler = match (video, args.dataset) {
        (false, Dataset::Lvis) => SamplerKind::RepeatFactor { threshold: 0.001 },
        _ => SamplerKind::Uniform,
    };
    config.batch_size = args.batch;
    config.workers = args.workers;
    config.optimizer.lr = args.lr;
    config.schedule = ScheduleConfig {
        max_iter: args.iters,
        steps,
        warmup_iters: args.warmup_iters,
        warmup_factor: args.warmup_factor,
        ..ScheduleConfig::default()
    };
    config.criterion = CriterionConfig {
        points: args.points,
        matcher: MatcherConfig {
            points: args.points,
            ..MatcherConfig::default()
        },
        ..CriterionConfig::default()
    };
    config.seed = args.seed;
    config.checkpoint_period = args.checkpoint_period;
    config.log_period = args.log_period;
    config.eval_period = args.eval_period;
    Ok(config)
}

fn run(args: Args) -> clip_vis::Result<()> {
    let kind = match args.device {
        DeviceName::Cpu => DeviceKind::Cpu,
        DeviceName::Wgpu => DeviceKind::Wgpu,
        DeviceName::Cuda => DeviceKind::Cuda,
    };
    let count = args.devices.max(1);
    match kind {
        DeviceKind::Cpu => train::<Autodiff<backend::Cpu>>(args, vec![Default::default(); count]),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            let devices = backend::gpu_devices(kind, count)?;
            let devices = devices.into_iter().map(backend::GpuDevice::wgpu).collect();
            train::<Autodiff<backend::Wgpu>>(args, devices)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            let devices = backend::gpu_devices(kind, count)?;
            let devices = devices.into_iter().map(backend::GpuDevice::cuda).collect();
            train::<Autodiff<backend::Cuda>>(args, devices)
        }
        #[allow(unreachable_patterns)]
        _ => Err(backend::not_compiled(kind)),
    }
}

/// The run on backend `B` (an autodiff backend over the chosen device's backend).
fn train<B: AutodiffBackend>(args: Args, devices: Vec<B::Device>) -> clip_vis::Result<()>
where
    B::InnerBackend: Backend,
{
    if let Some(port) = args.serve_orchestrator {
        spawn_orchestrator(port)?;
        eprintln!("train_lvis: orchestrator listening on port {port}");
    }
    let config = if args.resume {
        None
    } else {
        Some(config(&args)?)
    };
    if let Some(config) = &config {
        let source = config.data.open(config.bad_records)?;
        let report = source.report();
        eprintln!(
            "train_lvis: {} pictures, {} instances ({} crowd, {} rare, {} empty, {} skipped)",
            report.records,
            report.instances,
            report.crowd,
            report.rare,
            report.empty,
            report.skipped()
        );
    } else {
        eprintln!("train_lvis: resuming {}", args.out.display());
    }
    let parallel = DataParallel {
        num_nodes: args.num_nodes,
        node_rank: args.node_rank,
        orchestrator: args.orchestrator.clone(),
        node_address: args.node_address.clone(),
        data_port: args.data_port,
    };
    let mut synthetic;
    let mut quiet = Quiet;
    let hooks: &mut (dyn TrainHooks<B> + Send) = if args.eval_synthetic > 0 {
        let (width, height) = parse_size(&args.eval_size)?;
        let synth = SynthConfig {
            width,
            height,
            seed: args.eval_seed,
            ..SynthConfig::default()
        };
        synthetic = SyntheticEval {
            held_out: HeldOut::synthetic(&synth, args.eval_first, args.eval_synthetic)?,
        };
        &mut synthetic
    } else {
        &mut quiet
    };
    let summary =
        train_data_parallel::<B>(config, &args.out, &devices, &parallel, None, true, hooks)?;
    eprintln!(
        "train_lvis: {} iterations, {:.2} pictures/s on this machine, {} pictures skipped",
        summary.iteration, summary.images_per_second, summary.skipped
    );
    if let Some(model) = summary.model {
        eprintln!("train_lvis: wrote {}", model.display());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("train_lvis: error: {error}");
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}
