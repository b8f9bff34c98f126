//! Transformer decoder speed against PyTorch, in one run on the same CPU threads.
//!
//! ```text
//! CLIP_VIS_TORCH_PYTHON=/opt/refenv/bin/python RAYON_NUM_THREADS=2 cargo bench --bench transformer_decoder
//! ```
//! The full-size CLIP-VIS masked-attention decoder (SPEC §4: 100 queries, 256 wide, 6 layers as
//! the LVIS models) with its heads, on the paper's test resolution (a 480x640 frame: memory at
//! 15x20, 30x40, 60x80, mask features at 120x160), random weights. The PyTorch side is
//! `benches/transformer_decoder_torch.py`.

mod common;

use burn::tensor::{Distribution, Tensor};
use clip_vis_clip::weights::{SyntheticFill, TensorStore};
use clip_vis_transformer_decoder::{MultiScaleMaskedTransformerDecoder, TransformerDecoderConfig};

type B = burn::backend::Flex;
const HEIGHT: usize = 480;
const WIDTH: usize = 640;
const LAYERS: usize = 6;

fn main() {
    let repeats = common::repeats(3);
    let device = Default::default();
    let store = TensorStore::synthetic(SyntheticFill::Random(5));
    let decoder = MultiScaleMaskedTransformerDecoder::<B>::load(
        &store,
        "",
        &TransformerDecoderConfig::clip_vis(LAYERS),
        &device,
    )
    .expect("decoder builds");
    let map = |c: usize, stride: usize| {
        Tensor::<B, 4>::random(
            [1, c, HEIGHT / stride, WIDTH / stride],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
    };
    let maps = [map(256, 32), map(256, 16), map(256, 8)];
    let mask_features = map(256, 4);
    // Every prediction (what training and the PyTorch side compute), then the inference path
    // (last prediction only) that the video pipeline runs.
    let every = common::median_ms(repeats, || {
        let output = decoder.forward(&maps, mask_features.clone());
        let _ = output.last.masks.into_data();
    });
    println!("flex/transformer_decoder_{LAYERS}/{HEIGHT}x{WIDTH}: {every:.0} ms");
    let ours = common::median_ms(repeats, || {
        let output = decoder.forward_inference(&maps, mask_features.clone());
        let _ = output.last.masks.into_data();
    });
    println!("flex/transformer_decoder_{LAYERS}_inference/{HEIGHT}x{WIDTH}: {ours:.0} ms");
    let Ok(python) = std::env::var("CLIP_VIS_TORCH_PYTHON") else {
        println!("(set CLIP_VIS_TORCH_PYTHON to a Python with torch 2.5 for the PyTorch side)");
        return;
    };
    let threads = common::threads().to_string();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/transformer_decoder_torch.py"
    );
    let output = std::process::Command::new(python)
        .args([
            script,
            "--threads",
            &threads,
            "--repeats",
            &repeats.to_string(),
        ])
        .args([
            "--height",
            &HEIGHT.to_string(),
            "--width",
            &WIDTH.to_string(),
            "--layers",
            &LAYERS.to_string(),
        ])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        Some(value) => {
            let reference = value["median_ms"].as_f64().unwrap_or(f64::NAN);
            println!("torch/transformer_decoder_{LAYERS}/{HEIGHT}x{WIDTH}: {reference:.0} ms; ratio {:.2}x every prediction, {:.2}x inference path ({threads} threads)", every / reference, ours / reference);
        }
        None => eprintln!(
            "torch side failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
