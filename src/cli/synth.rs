//! `clip-vis synth`: synthetic training and test data with exact ground truth.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use clip_vis::train::synthetic::{write_coco, write_ytvis, SynthConfig, CATEGORIES};
use clip_vis::{Error, Result};

/// Options of both kinds.
#[derive(Debug, Args)]
pub struct Common {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Picture size, `WIDTHxHEIGHT`.
    #[arg(long, default_value = "256x192")]
    pub size: String,
    /// Seed (the same seed and indices give the same data anywhere).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Index of the first item (use disjoint ranges for training and held-out sets).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Fewest shapes per picture or video.
    #[arg(long, default_value_t = 1)]
    pub min_objects: usize,
    /// Most shapes per picture or video.
    #[arg(long, default_value_t = 4)]
    pub max_objects: usize,
}

/// What to synthesise.
#[derive(Debug, Subcommand)]
pub enum SynthArgs {
    /// COCO-style pictures: `<out>/images/*.png` and `<out>/instances.json`.
    Images {
        /// Number of pictures.
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[command(flatten)]
        common: Common,
    },
    /// YouTube-VIS-style videos: `<out>/JPEGImages/<video>/*.png` and `<out>/instances.json`.
    Videos {
        /// Number of videos.
        #[arg(long, default_value_t = 4)]
        count: usize,
        /// Frames per video.
        #[arg(long, default_value_t = 24)]
        frames: usize,
        #[command(flatten)]
        common: Common,
    },
}

/// Parses `WIDTHxHEIGHT`.
pub fn parse_size(flag: &str, text: &str) -> Result<(usize, usize)> {
    text.split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{flag} {text:?}: expected WIDTHxHEIGHT, e.g. 256x192"
            ))
        })
}

fn config(common: &Common) -> Result<SynthConfig> {
    let (width, height) = parse_size("--size", &common.size)?;
    Ok(SynthConfig {
        width,
        height,
        min_objects: common.min_objects,
        max_objects: common.max_objects,
        seed: common.seed,
        ..SynthConfig::default()
    })
}

/// Runs `clip-vis synth`.
pub fn synth(args: SynthArgs) -> Result<()> {
    let (json, what) = match &args {
        SynthArgs::Images { count, common } => (
            write_coco(&common.out, &config(common)?, common.first, *count)?,
            format!("{count} pictures"),
        ),
        SynthArgs::Videos {
            count,
            frames,
            common,
        } => (
            write_ytvis(&common.out, &config(common)?, common.first, *count, *frames)?,
            format!("{count} videos of {frames} frames"),
        ),
    };
    eprintln!(
        "clip-vis synth: {what} of {} ({})",
        CATEGORIES.join(", "),
        json.display()
    );
    println!("{}", json.display());
    Ok(())
}
