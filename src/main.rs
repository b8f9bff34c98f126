//! The `clip-vis` command line.
//!
//! ```text
//! clip-vis demo
//! clip-vis synth images --count 2000 --out synth/
//! clip-vis segment --weights clipvis_lvis_r50_7.pth --vocab "cat,dog,hard drive" --video cat.mp4 --out out/
//! clip-vis zero-shot --clip RN50.safetensors --image cat.jpg --labels "cat,dog,hard drive"
//! clip-vis weights fetch RN50            (with --features fetch)
//! ```
//! Results go to stdout, progress and errors to stderr. Exit status: 0 on success, 2 for a
//! usage error, 1 for any other failure.

use clap::{Parser, Subcommand, ValueEnum};
use clip_vis::backend;
use clip_vis::clip::zero_shot::{Templates, TextClassifier};
use clip_vis::clip::Clip;
use clip_vis::{Error, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "cli/segment.rs"]
mod segment;
#[path = "cli/synth.rs"]
mod synth;

/// Open-vocabulary video instance segmentation (CLIP-VIS) in pure Rust.
#[derive(Debug, Parser)]
#[command(name = "clip-vis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole video pipeline on a built-in tiny model with random weights and a synthetic
    /// video (no files needed); writes what `segment` writes.
    Demo(segment::DemoArgs),
    /// Segment, track and name every object of a video (or a dataset split) with your own
    /// vocabulary; writes results.json, results.zip and pictures.
    Segment(segment::SegmentArgs),
    /// Synthetic data with exact ground truth: COCO-style pictures or YouTube-VIS-style
    /// videos of textured moving shapes (for training, tests and benchmarks).
    #[command(subcommand)]
    Synth(synth::SynthArgs),
    /// Classify an image against labels typed on the command line (CLIP zero-shot).
    ZeroShot {
        /// CLIP weights: an open_clip checkpoint as published, or a `weights-convert` output.
        #[arg(long)]
        clip: PathBuf,
        /// The image (PNG, JPEG, BMP, WebP, GIF).
        #[arg(long)]
        image: PathBuf,
        /// Comma-separated labels; `|` joins synonyms of one label (`hard drive|disk`).
        #[arg(long)]
        labels: String,
        /// Confirm the architecture; the weights decide it, a mismatch is an error.
        #[arg(long, value_enum)]
        model: Option<ModelName>,
        /// Prompt templates to ensemble.
        #[arg(long, value_enum, default_value = "vild")]
        templates: TemplateSet,
        /// Print `{"labels": [...], "logits": [...], "probs": [...]}`.
        #[arg(long)]
        json: bool,
        /// Where the model runs.
        #[arg(long, value_enum, default_value = "cpu")]
        device: segment::DeviceName,
    },
    /// Video mask AP of a results json against ground truth (LV-VIS / YouTube-VIS protocols).
    Eval {
        /// Ground truth in YTVIS layout (`videos`, `annotations`, `categories`).
        #[arg(long)]
        gt: PathBuf,
        /// Results: a list of `{video_id, category_id, score, segmentations}`.
        #[arg(long)]
        results: PathBuf,
        /// `lvvis`: also base (partitions 0, 1) and novel (2, 3); `ytvis`: all categories, or
        /// base/novel with `--novel`.
        #[arg(long, value_enum, default_value = "lvvis")]
        protocol: ProtocolName,
        /// For `ytvis`: a text file of novel category names, one per line.
        #[arg(long)]
        novel: Option<PathBuf>,
        /// Print `{"all": {...}, "base": {...}, "novel": {...}}` (fractions, -1 = undefined).
        #[arg(long)]
        json: bool,
        /// Also print the AP of every category.
        #[arg(long)]
        per_category: bool,
    },
    /// Manage CLIP weights.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum WeightsCommand {
    /// Download a published open_clip checkpoint into the cache (resumable, checksum-verified).
    Fetch {
        /// Which model.
        #[arg(value_enum)]
        model: ModelName,
        /// Cache folder (default: `$CLIP_VIS_CACHE`, else `~/.cache/clip-vis`).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Hub address (default: `$HF_ENDPOINT`, else https://huggingface.co).
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModelName {
    #[value(name = "RN50", alias = "rn50")]
    Rn50,
    #[value(name = "convnext_base_w_320", alias = "convnext-b")]
    ConvnextBaseW320,
}

impl ModelName {
    fn open_clip_name(self) -> &'static str {
        match self {
            ModelName::Rn50 => "RN50",
            ModelName::ConvnextBaseW320 => "convnext_base_w_320",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolName {
    Lvvis,
    Ytvis,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TemplateSet {
    Vild,
    Single,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut shown = error.to_string();
            eprintln!("clip-vis: error: {shown}");
            // Causes the message above already spells out (`file: <os error>`) are not repeated.
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
                source = cause.source();
            }
            ExitCode::from(if matches!(error, Error::Usage(_) | Error::Vocabulary(_)) {
                2
            } else {
                1
            })
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo(args) => segment::demo(args),
        Command::Segment(args) => segment::segment(args),
        Command::Synth(args) => synth::synth(args),
        Command::ZeroShot {
            clip,
            image,
            labels,
            model,
            templates,
            json,
            device,
        } => backend::run_on(
            device.into(),
            ZeroShotJob {
                clip,
                image,
                labels,
                model,
                templates,
                json,
            },
        ),
        Command::Eval {
            gt,
            results,
            protocol,
            novel,
            json,
            per_category,
        } => eval(gt, results, protocol, novel, json, per_category),
        Command::Weights {
            command:
                WeightsCommand::Fetch {
                    model,
                    cache_dir,
                    endpoint,
                },
        } => fetch(model, cache_dir, endpoint),
    }
}

/// Splits `--labels`: commas separate labels, `|` separates synonyms within one.
fn parse_labels(labels: &str) -> Result<Vec<String>> {
    let parsed: Vec<String> = labels
        .split(',')
        .map(|label| {
            label
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    if labels.trim().is_empty() {
        return Err(Error::Usage(
            "--labels is empty: give at least one label".into(),
        ));
    }
    if let Some(position) = parsed
        .iter()
        .position(|l| l.split(',').any(|s| s.trim().is_empty()))
    {
        return Err(Error::Usage(format!(
            "--labels: label {} is empty (labels: {labels:?})",
            position + 1
        )));
    }
    Ok(parsed)
}

fn print_table<S: AsRef<str>>(labels: &[S], result: &clip_vis::ZeroShot) {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| result.probs[b].total_cmp(&result.probs[a]));
    println!("{:>8}  {:>8}  label", "prob", "logit");
    for i in order {
        println!(
            "{:>8.4}  {:>8.3}  {}",
            result.probs[i],
            result.logits[i],
            labels[i].as_ref()
        );
    }
}

/// `clip-vis zero-shot` on the device of `--device`.
struct ZeroShotJob {
    clip: PathBuf,
    image: PathBuf,
    labels: String,
    model: Option<ModelName>,
    templates: TemplateSet,
    json: bool,
}

impl backend::OnBackend for ZeroShotJob {
    type Output = ();
    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Result<()> {
        zero_shot::<B>(self, &device)
    }
}

fn zero_shot<B: burn::tensor::backend::Backend>(
    job: ZeroShotJob,
    device: &B::Device,
) -> Result<()> {
    let ZeroShotJob {
        clip: clip_path,
        image,
        labels,
        model,
        templates,
        json,
    } = job;
    let labels = parse_labels(&labels)?;
    eprintln!("clip-vis: loading {}", clip_path.display());
    let clip = Clip::<B>::from_file(&clip_path, model.map(ModelName::open_clip_name), device)?;
    // Decode the image before the text work so a bad file fails fast.
    let picture = clip_vis::image_io::read_rgb(&image)?;
    let templates = match templates {
        TemplateSet::Vild => Templates::Vild,
        TemplateSet::Single => Templates::Single,
    };
    let classifier = TextClassifier::new(&clip, &labels, templates)?;
    let result = clip_vis::zero_shot_rgb(&clip, &classifier, &picture)?;
    if json {
        let value = serde_json::json!({
            "labels": labels,
            "logits": result.logits,
            "probs": result.probs,
        });
        println!("{value}");
    } else {
        print_table(&labels, &result);
    }
    Ok(())
}

fn eval(
    gt: PathBuf,
    results: PathBuf,
    protocol: ProtocolName,
    novel: Option<PathBuf>,
    json: bool,
    per_category: bool,
) -> Result<()> {
    use clip_vis::eval::{evaluate_files, Protocol, Summary, STAT_NAMES};
    let protocol = match (protocol, novel) {
        (ProtocolName::Lvvis, None) => Protocol::Lvvis,
        (ProtocolName::Lvvis, Some(_)) => {
            return Err(Error::Usage(
                "--novel applies to --protocol ytvis; LV-VIS takes its split from the ground truth's partitions".into(),
            ))
        }
        (ProtocolName::Ytvis, None) => Protocol::Ytvis { novel: Vec::new() },
        (ProtocolName::Ytvis, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                file: path.clone(),
                source,
            })?;
            let novel: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            Protocol::Ytvis { novel }
        }
    };
    let started = std::time::Instant::now();
    let report = evaluate_files(&gt, &results, &protocol)?;
    eprintln!(
        "clip-vis: evaluated in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let columns: Vec<(&str, Summary)> = [
        Some(("all", report.all)),
        report.base.map(|s| ("base", s)),
        report.novel.map(|s| ("novel", s)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if json {
        let mut value = serde_json::Map::new();
        for (name, summary) in &columns {
            let stats: serde_json::Map<String, serde_json::Value> = STAT_NAMES
                .iter()
                .zip(summary.stats)
                .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
                .collect();
            value.insert(name.to_string(), serde_json::Value::Object(stats));
        }
        if per_category {
            let categories: serde_json::Map<String, serde_json::Value> = report
                .per_category
                .iter()
                .map(|(id, s)| (id.to_string(), serde_json::json!(s.stats[0])))
                .collect();
            value.insert(
                "per_category_AP".into(),
                serde_json::Value::Object(categories),
            );
        }
        println!("{}", serde_json::Value::Object(value));
        return Ok(());
    }
    const ROWS: [&str; 12] = [
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
        "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
        "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    ];
    let header: Vec<String> = columns.iter().map(|(n, _)| format!("{n:>7}")).collect();
    println!("{:<72} {}", "", header.join(" "));
    for (row, label) in ROWS.iter().enumerate() {
        let values: Vec<String> = columns
            .iter()
            .map(|(_, s)| format!("{:>7.3}", s.stats[row]))
            .collect();
        println!(" {label} = {}", values.join(" "));
    }
    if per_category {
        println!("\n{:>12}  AP", "category");
        for (id, summary) in &report.per_category {
            println!("{id:>12}  {:.3}", summary.stats[0]);
        }
    }
    Ok(())
}

#[cfg(feature = "fetch")]
fn fetch(model: ModelName, cache_dir: Option<PathBuf>, endpoint: Option<String>) -> Result<()> {
    let options = clip_vis::fetch::FetchOptions::from_env(cache_dir, endpoint);
    let path = clip_vis::fetch::fetch(model.open_clip_name(), &options)?;
    println!("{}", path.display());
    Ok(())
}

#[cfg(not(feature = "fetch"))]
fn fetch(_: ModelName, _: Option<PathBuf>, _: Option<String>) -> Result<()> {
    Err(Error::Usage(
        "this clip-vis was built without downloads; rebuild with `--features fetch`".into(),
    ))
}
