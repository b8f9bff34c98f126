//! `weights-convert`: turns a published checkpoint into one clip-vis safetensors file whose
//! metadata records the model config, so that no flag can disagree with the weights later.
//!
//! ```text
//! weights-convert open_clip_pytorch_model.bin convnext_base_w_320.safetensors --dtype f16
//! weights-convert RN50.bin rn50.safetensors --from open-clip --model RN50
//! weights-convert clipvis_lvis_r50_7.pth clipvis_lvis_r50.safetensors   # released CLIP-VIS
//! ```
//!
//! Every conversion is validated by building the model from the tensors strictly (no tensor
//! missing, mis-shaped or left over) before anything is written; the output is written to a
//! temporary file and renamed.

use burn::backend::Flex;
use clap::{Parser, ValueEnum};
use clip_vis_clip::config::CONFIG_METADATA_KEY;
use clip_vis_clip::model::{detect_config, CLIP_VIS_PREFIX};
use clip_vis_clip::weights::{save_safetensors, SaveDtype};
use clip_vis_clip::TensorStore;
use clip_vis_clip::{Clip, ClipConfig, ClipError};
use clip_vis_model::ClipVis;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// Metadata key naming the format version of clip-vis weight files.
const FORMAT_KEY: &str = "clip_vis.format";
/// Metadata key recording what was converted.
const SOURCE_KEY: &str = "clip_vis.source";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Source {
    /// Detect from the tensor names.
    Auto,
    /// An open_clip checkpoint (`visual.*`, `transformer.*`, ... keys).
    OpenClip,
    /// A released CLIP-VIS detectron2 checkpoint (`backbone.clip_model.*`, ...).
    ClipVis,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    F16,
}

/// Convert an open_clip or CLIP-VIS checkpoint into a clip-vis safetensors file.
#[derive(Debug, Parser)]
#[command(name = "weights-convert", version)]
struct Args {
    /// Checkpoint to read: `.safetensors`, or a PyTorch `.bin` / `.pt` / `.pth`.
    input: PathBuf,
    /// clip-vis safetensors file to write.
    output: PathBuf,
    /// Source format.
    #[arg(long, value_enum, default_value = "auto")]
    from: Source,
    /// Storage precision of the output.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Confirm the architecture (`RN50`, `convnext_base_w_320`): a mismatch is an error.
    #[arg(long)]
    model: Option<String>,
    /// Architecture as clip-vis config JSON, for checkpoints of models without a preset (a CLIP
    /// config for open_clip files, a model config for CLIP-VIS ones).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum ConvertError {
    #[error(transparent)]
    Clip(#[from] ClipError),
    #[error(transparent)]
    Model(#[from] clip_vis_model::ModelError),
    #[error("{}: {message}", file.display())]
    Input { file: PathBuf, message: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("weights-convert: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), ConvertError> {
    let store = TensorStore::open(&args.input)?;
    let is_clip_vis = store.keys().iter().any(|k| k.starts_with(CLIP_VIS_PREFIX));
    match (args.from, is_clip_vis) {
        (Source::OpenClip, true) => {
            return Err(ConvertError::Input {
                file: args.input.clone(),
                message: format!("has `{CLIP_VIS_PREFIX}*` keys: this is a CLIP-VIS checkpoint, not open_clip (use --from clip-vis or auto)"),
            })
        }
        (Source::ClipVis, false) => {
            return Err(ConvertError::Input {
                file: args.input.clone(),
                message: format!("no `{CLIP_VIS_PREFIX}*` keys: not a CLIP-VIS checkpoint"),
            })
        }
        (_, true) => return convert_clip_vis(args, store),
        _ => {}
    }
    let mut metadata = HashMap::new();
    let mut store = store;
    if let Some(path) = &args.config {
        let json = std::fs::read_to_string(path).map_err(|e| ConvertError::Input {
            file: path.clone(),
            message: e.to_string(),
        })?;
        let config = ClipConfig::from_json(&json).map_err(|e| ConvertError::Input {
            file: path.clone(),
            message: format!("not a clip-vis config: {e}"),
        })?;
        metadata.insert(CONFIG_METADATA_KEY.to_string(), config.to_json());
        store = store.with_metadata(metadata.clone());
    }
    let config = detect_config(&store)?;
    eprintln!(
        "weights-convert: {}: {} ({} tensors), validating...",
        args.input.display(),
        config.name,
        store.parameters().len()
    );
    // Strict load: every tensor present, well-shaped, finite, and none left over.
    let device = Default::default();
    Clip::<Flex>::from_store(&store, args.model.as_deref(), &device)?;

    metadata.insert(CONFIG_METADATA_KEY.to_string(), config.to_json());
    metadata.insert(FORMAT_KEY.to_string(), "1".to_string());
    let source_name = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    metadata.insert(SOURCE_KEY.to_string(), format!("{source_name} (open_clip)"));
    let dtype = match args.dtype {
        Dtype::F32 => SaveDtype::F32,
        Dtype::F16 => SaveDtype::F16,
    };
    save_safetensors(&args.output, &store.parameters(), dtype, metadata)?;
    eprintln!("weights-convert: wrote {}", args.output.display());
    Ok(())
}

/// A whole CLIP-VIS checkpoint (detectron2 names): validated by building the model strictly,
/// written with the model config (the decoder's layer count included) in the metadata.
fn convert_clip_vis(args: &Args, store: TensorStore) -> Result<(), ConvertError> {
    // The released models' CLIP is a preset, found from the shapes; other models need their
    // architecture as `--config` (a clip-vis model config). The decoder's layer count is
    // checked against the tensors either way.
    let store = match &args.config {
        Some(path) => {
            let json = std::fs::read_to_string(path).map_err(|e| ConvertError::Input {
                file: path.clone(),
                message: e.to_string(),
            })?;
            serde_json::from_str::<clip_vis_model::ClipVisConfig>(&json).map_err(|e| {
                ConvertError::Input {
                    file: path.clone(),
                    message: format!("not a clip-vis model config: {e}"),
                }
            })?;
            store.with_metadata(HashMap::from([(
                clip_vis_model::CONFIG_METADATA_KEY.to_string(),
                json,
            )]))
        }
        None => store,
    };
    let config = ClipVis::<Flex>::detect_config(&store)?;
    if let Some(expected) = &args.model {
        let wanted = ClipConfig::preset(expected)
            .map(|c| c.name)
            .unwrap_or_else(|| expected.clone());
        if wanted != config.clip.name {
            return Err(ClipError::ArchitectureMismatch {
                file: args.input.clone(),
                expected: expected.clone(),
                found: config.clip.name.clone(),
            }
            .into());
        }
    }
    eprintln!(
        "weights-convert: {}: CLIP-VIS with {} CLIP and {} decoder layers, validating...",
        args.input.display(),
        config.clip.name,
        config.transformer_decoder.layers
    );
    let device = Default::default();
    ClipVis::<Flex>::load(&store, &config, &device)?;
    store.ensure_all_used()?;
    let source_name = args
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = HashMap::from([
        (
            clip_vis_model::CONFIG_METADATA_KEY.to_string(),
            config.to_json(),
        ),
        (CONFIG_METADATA_KEY.to_string(), config.clip.to_json()),
        (FORMAT_KEY.to_string(), "1".to_string()),
        (SOURCE_KEY.to_string(), format!("{source_name} (CLIP-VIS)")),
    ]);
    let dtype = match args.dtype {
        Dtype::F32 => SaveDtype::F32,
        Dtype::F16 => SaveDtype::F16,
    };
    save_safetensors(&args.output, &store.parameters(), dtype, metadata)?;
    eprintln!("weights-convert: wrote {}", args.output.display());
    Ok(())
}
