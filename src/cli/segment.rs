//! `clip-vis segment` and `clip-vis demo`: videos in, results.json and pictures out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};
use clip_vis::backend::{self, DeviceKind, OnBackend};
use clip_vis::classification::{BuiltinVocabulary, ClassifierCache, ScoreWeights, Vocabulary};
use clip_vis::matching::{MatchConfig, Strategy};
use clip_vis::model::ClipVis;
use clip_vis::video::frames::{decode_video, list_frames, read_frame};
use clip_vis::video::render::{render_video, RenderOptions};
use clip_vis::video::results::{write_zip, ResultsWriter};
use clip_vis::video::{FinishedVideo, StageTimings, VideoConfig, VideoSession};
use clip_vis::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

/// `--device` of every command that runs a model.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceName {
    /// The CPU backend (always built in).
    Cpu,
    /// A GPU through wgpu: Vulkan, Metal, DX12 (build with `--features wgpu`).
    Wgpu,
    /// An NVIDIA GPU through CUDA (build with `--features cuda`).
    Cuda,
}

impl From<DeviceName> for DeviceKind {
    fn from(name: DeviceName) -> Self {
        match name {
            DeviceName::Cpu => DeviceKind::Cpu,
            DeviceName::Wgpu => DeviceKind::Wgpu,
            DeviceName::Cuda => DeviceKind::Cuda,
        }
    }
}

/// Arithmetic of the model's matrix products (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeName {
    /// f32 everywhere (the default; equal to the PyTorch reference).
    F32,
    /// CPU only: matrix products with bfloat16 operands on Intel AMX, f32 sums (about 2x
    /// faster frames on CPUs that have it; scores and masks move slightly, see the README).
    Bf16,
}

/// Matching strategies of the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MatchingName {
    /// CLIP-VIS temporal top-K enhanced matching.
    Topk,
    /// MinVIS: previous frame only.
    Adjacent,
    /// OV2Seg-style: all previous frames aggregated.
    Longterm,
}

/// Options shared by `segment` and `demo`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// Memory length T of top-K matching.
    #[arg(long, default_value_t = 9)]
    pub memory_frames: usize,
    /// K of top-K matching (the paper's best is 3; the released checkpoints used 5).
    #[arg(long, default_value_t = 3)]
    pub topk_frames: usize,
    /// Matching strategy.
    #[arg(long, value_enum, default_value = "topk")]
    pub matching: MatchingName,
    /// (track, category) pairs kept per video.
    #[arg(long, default_value_t = 50)]
    pub detections: usize,
    /// Frames are resized to this short side ...
    #[arg(long, default_value_t = 480)]
    pub short_side: usize,
    /// ... with the long side at most this.
    #[arg(long, default_value_t = 1333)]
    pub max_side: usize,
    /// Frames per model batch (on a GPU, larger batches keep it busy; memory grows with it).
    #[arg(long, alias = "chunk", default_value_t = 10)]
    pub batch: usize,
    /// Where the model runs.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceName,
    /// Arithmetic of the matrix products.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeName,
    /// Do not weight the CLIP probability by the predicted mask IoU (ablation).
    #[arg(long)]
    pub no_iou_weight: bool,
    /// Do not weight by the object probability (ablation).
    #[arg(long)]
    pub no_object_weight: bool,
    /// Skip the pictures (PNG frames, GIF, MP4).
    #[arg(long)]
    pub no_pictures: bool,
    /// Draw at most this many tracks in the pictures.
    #[arg(long, default_value_t = 10)]
    pub show: usize,
    /// Print the peak resident memory at the end (Linux).
    #[arg(long, hide = true)]
    pub report_peak_memory: bool,
}

impl PipelineArgs {
    /// Applies `--dtype` (a process-wide setting of the CPU kernels): bf16 needs the CPU
    /// backend and a CPU with AMX-BF16.
    fn apply_dtype(&self) -> Result<()> {
        if self.dtype == DtypeName::F32 {
            return Ok(());
        }
        if !matches!(self.device, DeviceName::Cpu) {
            return Err(Error::Usage(
                "--dtype bf16 is for --device cpu (Intel AMX); GPUs run f32".into(),
            ));
        }
        clip_vis::clip::host::set_precision(clip_vis::clip::host::Precision::Bf16).map_err(
            |missing| Error::Device {
                device: "cpu".into(),
                message: missing.to_string(),
            },
        )
    }

    fn config(&self) -> VideoConfig {
        let strategy = match self.matching {
            MatchingName::Topk => Strategy::TopK(MatchConfig {
                memory_frames: self.memory_frames,
                topk_frames: self.topk_frames,
            }),
            MatchingName::Adjacent => Strategy::Adjacent,
            MatchingName::Longterm => Strategy::LongTerm,
        };
        VideoConfig {
            strategy,
            detections: self.detections,
            weights: ScoreWeights {
                use_iou: !self.no_iou_weight,
                use_object: !self.no_object_weight,
            },
            short_side: self.short_side,
            max_side: self.max_side,
            chunk: self.batch,
            ..VideoConfig::default()
        }
    }
}

/// `clip-vis segment`.
#[derive(Debug, Args)]
pub struct SegmentArgs {
    /// CLIP-VIS weights: a `weights-convert` output or a released detectron2 `.pth`.
    #[arg(long)]
    pub weights: PathBuf,
    /// Categories, comma-separated; `|` joins synonyms (`"cat,dog|puppy,hard drive"`).
    #[arg(long, group = "vocabulary")]
    pub vocab: Option<String>,
    /// Categories from a file: one per line, or a dataset json's `categories`.
    #[arg(long, group = "vocabulary")]
    pub vocab_file: Option<PathBuf>,
    /// A built-in vocabulary: lvvis, ytvis19, ytvis21, ovis, coco, lvis.
    #[arg(long, group = "vocabulary")]
    pub dataset: Option<String>,
    /// A folder of frames (sorted by name).
    #[arg(long, group = "input")]
    pub frames: Option<PathBuf>,
    /// A video file (decoded with the system ffmpeg).
    #[arg(long, group = "input")]
    pub video: Option<PathBuf>,
    /// A whole split in YTVIS layout: the dataset json (`videos` with `file_names`) ...
    #[arg(long, group = "input", requires = "frames_root")]
    pub dataset_json: Option<PathBuf>,
    /// ... and the folder its `file_names` are relative to.
    #[arg(long)]
    pub frames_root: Option<PathBuf>,
    /// The video id written for a single video.
    #[arg(long, default_value_t = 1)]
    pub video_id: u64,
    /// Output folder: results.json, results.zip, pictures.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

#[derive(Debug, Deserialize)]
struct SplitVideo {
    id: u64,
    file_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Split {
    videos: Vec<SplitVideo>,
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        file: dir.to_path_buf(),
        source,
    })
}

fn vocabulary(args: &SegmentArgs) -> Result<Vocabulary> {
    Ok(if let Some(list) = &args.vocab {
        Vocabulary::from_list(list)?
    } else if let Some(file) = &args.vocab_file {
        Vocabulary::from_file(file)?
    } else if let Some(name) = &args.dataset {
        Vocabulary::builtin(name.parse::<BuiltinVocabulary>()?)
    } else if let Some(json) = &args.dataset_json {
        Vocabulary::from_file(json)?
    } else {
        return Err(Error::Usage(
            "give the categories: --vocab \"a,b,c\", --vocab-file <file> or --dataset <name>"
                .into(),
        ));
    })
}

/// Prints per-stage milliseconds per frame.
fn print_timings(timings: &StageTimings) {
    let frames = timings.frames.max(1) as f64;
    let total: f64 = timings.stages().iter().map(|(_, d)| d.as_secs_f64()).sum();
    eprintln!(
        "clip-vis: {} frames, {:.1} ms per frame:",
        timings.frames,
        1000.0 * total / frames
    );
    for (name, duration) in timings.stages() {
        eprintln!(
            "  {name:<20} {:>9.2} ms/frame",
            1000.0 * duration.as_secs_f64() / frames
        );
    }
}

fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One video through a session; frames are read from disk one at a time.
fn run_video<B: Backend>(
    model: &ClipVis<B>,
    cache: &mut ClassifierCache<B>,
    vocabulary: &Vocabulary,
    config: &VideoConfig,
    paths: &[PathBuf],
    progress: Option<&ProgressBar>,
    device: &B::Device,
) -> Result<FinishedVideo> {
    let classifier = cache
        .get(&model.clip, vocabulary, config.templates)?
        .clone();
    let mut session = VideoSession::new(
        model,
        classifier,
        vocabulary.clone(),
        config.clone(),
        device,
    )?;
    for (index, path) in paths.iter().enumerate() {
        session.push(read_frame(path, index)?)?;
        if let Some(bar) = progress {
            bar.inc(1);
        }
    }
    session.finish()
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{pos}}/{{len}} [{{elapsed_precise}} < {{eta_precise}}] {{bar:30}}"
        ))
        .expect("valid template"),
    );
    bar
}

/// Closes results.json and zips it into results.zip.
fn finish_outputs(out: &Path, writer: ResultsWriter) -> Result<()> {
    let records = writer.records();
    let json = writer.finish()?;
    write_zip(&json, "results.json", &out.join("results.zip"))?;
    eprintln!(
        "clip-vis: wrote {} and {} ({records} detections)",
        json.display(),
        out.join("results.zip").display(),
    );
    Ok(())
}

fn print_tracks(video: &FinishedVideo, limit: usize) {
    println!("{:>7}  {:>7}  {:>5}  category", "score", "S", "track");
    for track in video.tracks.iter().take(limit) {
        println!(
            "{:>7.4}  {:>7.4}  {:>5}  {}",
            track.score, track.video_score, track.query, track.category
        );
    }
}

fn pictures(
    out: &Path,
    paths: &[PathBuf],
    video: &mut FinishedVideo,
    args: &PipelineArgs,
) -> Result<()> {
    let options = RenderOptions {
        max_tracks: args.show,
        ..RenderOptions::default()
    };
    let files = render_video(|i| read_frame(&paths[i], i), video, out, &options)?;
    eprintln!(
        "clip-vis: pictures in {}{}{}",
        files.frames_dir.display(),
        files
            .gif
            .map(|p| format!(", {}", p.display()))
            .unwrap_or_default(),
        files
            .mp4
            .map(|p| format!(", {}", p.display()))
            .unwrap_or_else(|| " (no ffmpeg: no MP4)".into()),
    );
    Ok(())
}

/// Runs `clip-vis segment` on the device of `--device`.
pub fn segment(args: SegmentArgs) -> Result<()> {
    let config = args.pipeline.config();
    config.validate()?;
    vocabulary(&args)?;
    args.pipeline.apply_dtype()?;
    backend::run_on(args.pipeline.device.into(), Segment(args))
}

struct Segment(SegmentArgs);

impl OnBackend for Segment {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        segment_on::<B>(self.0, &device)
    }
}

fn segment_on<B: Backend>(args: SegmentArgs, device: &B::Device) -> Result<()> {
    let config = args.pipeline.config();
    let vocabulary = vocabulary(&args)?;
    create_dir(&args.out)?;
    let started = Instant::now();
    eprintln!(
        "clip-vis: loading {} ({} backend)",
        args.weights.display(),
        backend::kind_name(args.pipeline.device.into())
    );
    let model = ClipVis::<B>::from_file(&args.weights, device)?;
    eprintln!(
        "clip-vis: model loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut cache = ClassifierCache::new();
    let t = Instant::now();
    cache.get(&model.clip, &vocabulary, config.templates)?;
    eprintln!(
        "clip-vis: text classifier for {} categories in {:.1} s",
        vocabulary.len(),
        t.elapsed().as_secs_f64()
    );

    if let Some(json) = &args.dataset_json {
        let root = args
            .frames_root
            .as_ref()
            .expect("clap requires --frames-root");
        let text = std::fs::read_to_string(json).map_err(|source| Error::Io {
            file: json.clone(),
            source,
        })?;
        let split: Split = serde_json::from_str(&text).map_err(|e| {
            Error::Usage(format!(
                "{}: not a YTVIS-layout dataset json: {e}",
                json.display()
            ))
        })?;
        let total: usize = split.videos.iter().map(|v| v.file_names.len()).sum();
        let progress = bar(total, "frames");
        let mut writer = ResultsWriter::create(&args.out.join("results.json"))?;
        let mut timings = StageTimings::default();
        for video in &split.videos {
            let paths: Vec<PathBuf> = video.file_names.iter().map(|f| root.join(f)).collect();
            if paths.is_empty() {
                return Err(Error::NoFrames(format!(
                    "{} video {}",
                    json.display(),
                    video.id
                )));
            }
            let mut finished = run_video(
                &model,
                &mut cache,
                &vocabulary,
                &config,
                &paths,
                Some(&progress),
                device,
            )?;
            timings.add(&finished.timings);
            writer.write_video(video.id, &mut finished)?;
        }
        progress.finish_and_clear();
        finish_outputs(&args.out, writer)?;
        print_timings(&timings);
    } else {
        let decoded;
        let paths = if let Some(dir) = &args.frames {
            list_frames(dir)?
        } else if let Some(video) = &args.video {
            decoded = decode_video(video)?;
            decoded.frames.clone()
        } else {
            return Err(Error::Usage("give the input: --frames <dir>, --video <file> or --dataset-json with --frames-root".into()));
        };
        let progress = bar(paths.len(), "frames");
        let mut finished = run_video(
            &model,
            &mut cache,
            &vocabulary,
            &config,
            &paths,
            Some(&progress),
            device,
        )?;
        progress.finish_and_clear();
        let mut writer = ResultsWriter::create(&args.out.join("results.json"))?;
        writer.write_video(args.video_id, &mut finished)?;
        finish_outputs(&args.out, writer)?;
        print_tracks(&finished, 10);
        if !args.pipeline.no_pictures {
            pictures(&args.out, &paths, &mut finished, &args.pipeline)?;
        }
        print_timings(&finished.timings);
    }
    if args.pipeline.report_peak_memory {
        if let Some(kib) = peak_memory_kib() {
            println!("peak_rss_kib {kib}");
        }
    }
    Ok(())
}

/// `clip-vis demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Categories (comma-separated, `|` for synonyms).
    #[arg(long, default_value = "disc,square,triangle,ring")]
    pub vocab: String,
    /// Frames of the synthetic video.
    #[arg(long, default_value_t = 24)]
    pub frames: usize,
    /// Output folder.
    #[arg(long, default_value = "clip-vis-demo")]
    pub out: PathBuf,
    /// Model: `tiny`, the built-in model trained on synthetic shapes; or a full-size
    /// architecture with random weights (`rn50`, `convnext`) to see how fast the real model
    /// runs on this machine.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: DemoPreset,
    /// Frame size of the synthetic video, `WIDTHxHEIGHT`.
    #[arg(long, default_value = "256x192")]
    pub size: String,
    /// Seed of the synthetic video.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// Demo model sizes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DemoPreset {
    /// The tiny built-in model, trained on synthetic shapes.
    Tiny,
    /// CLIP-VIS R50 (LVIS) architecture, random weights.
    Rn50,
    /// CLIP-VIS ConvNeXt-B (LVIS) architecture, random weights.
    Convnext,
}

/// Runs `clip-vis demo`: synthesises a video with ground truth, segments, tracks and names its
/// objects with the built-in model, writes everything `segment` writes, and scores the tracks
/// with the class-agnostic video AP of clip-vis's own evaluator.
pub fn demo(args: DemoArgs) -> Result<()> {
    args.pipeline.apply_dtype()?;
    backend::run_on(args.pipeline.device.into(), Demo(args))
}

struct Demo(DemoArgs);

impl OnBackend for Demo {
    type Output = ();
    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        demo_on::<B>(self.0, &device)
    }
}

fn demo_on<B: Backend>(mut args: DemoArgs, device: &B::Device) -> Result<()> {
    use clip_vis::train::synthetic::{write_ytvis, SynthConfig};
    let trained = matches!(args.preset, DemoPreset::Tiny);
    if trained {
        eprintln!(
            "clip-vis demo: a tiny CLIP-VIS whose mask generator was trained with clip-vis on\n\
             synthetic shapes (assets/demo/README.md), on the {} backend, on a new synthetic\n\
             {}-frame video with ground truth. The whole pipeline runs for real: frozen CLIP,\n\
             pixel decoder, transformer decoder, top-K matching, weighted open-vocabulary\n\
             scoring, RLE outputs, and clip-vis's evaluator. Its CLIP is random (no CLIP\n\
             weights ship with clip-vis), so the category names it gives mean nothing: the\n\
             class-agnostic AP below is what it is measured on.",
            backend::kind_name(args.pipeline.device.into()),
            args.frames
        );
    } else {
        eprintln!(
            "clip-vis demo: the full-size {:?} architecture with RANDOM weights on the {}\n\
             backend: it shows the speed of the real model here; its tracks mean nothing.",
            args.preset,
            backend::kind_name(args.pipeline.device.into())
        );
    }
    if args.frames == 0 {
        return Err(Error::NoFrames("--frames 0".into()));
    }
    let (width, height) = crate::synth::parse_size("--size", &args.size)?;
    if trained && args.pipeline.short_side == 480 {
        // The tiny model was trained on 256-pixel pictures; keep the video's own size.
        args.pipeline.short_side = height.min(width);
    }
    let config = args.pipeline.config();
    config.validate()?;
    let vocabulary = Vocabulary::from_list(&args.vocab)?;
    create_dir(&args.out)?;
    let model = match args.preset {
        DemoPreset::Tiny => {
            let weights = args.out.join("model.safetensors");
            clip_vis::demo::write_demo_model(&weights)?;
            eprintln!(
                "clip-vis demo: the model is also in {} (try `clip-vis segment --weights` on it)",
                weights.display()
            );
            clip_vis::demo::demo_model::<B>(device)?
        }
        DemoPreset::Rn50 => {
            clip_vis::demo::random_model::<B>(&clip_vis::model::ClipVisConfig::rn50_lvis(), device)?
        }
        DemoPreset::Convnext => clip_vis::demo::random_model::<B>(
            &clip_vis::model::ClipVisConfig::convnext_b_lvis(),
            device,
        )?,
    };
    let synth = SynthConfig {
        width,
        height,
        min_objects: 2,
        max_objects: 4,
        seed: args.seed,
        ..SynthConfig::default()
    };
    let input = args.out.join("input");
    let ground_truth = write_ytvis(&input, &synth, 0, 1, args.frames)?;
    let paths: Vec<PathBuf> = (0..args.frames)
        .map(|f| input.join("JPEGImages").join(format!("000000/{f:05}.png")))
        .collect();
    let mut cache = ClassifierCache::new();
    let mut finished = run_video(
        &model,
        &mut cache,
        &vocabulary,
        &config,
        &paths,
        None,
        device,
    )?;
    let mut writer = ResultsWriter::create(&args.out.join("results.json"))?;
    writer.write_video(1, &mut finished)?;
    finish_outputs(&args.out, writer)?;
    print_tracks(&finished, 10);
    if trained {
        let summary = clip_vis::demo::class_agnostic_video_ap(&ground_truth, 1, &mut finished)?;
        println!(
            "class-agnostic video mask AP {:.1}, AP50 {:.1}, AP75 {:.1} (against {}; clip-vis eval)",
            100.0 * summary.stats[0],
            100.0 * summary.stats[1],
            100.0 * summary.stats[2],
            ground_truth.display()
        );
    }
    if !args.pipeline.no_pictures {
        pictures(&args.out, &paths, &mut finished, &args.pipeline)?;
    }
    print_timings(&finished.timings);
    Ok(())
}
