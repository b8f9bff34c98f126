//! Pixel decoder speed against PyTorch, in one run on the same CPU threads.
//!
//! ```text
//! CLIP_VIS_TORCH_PYTHON=/opt/refenv/bin/python RAYON_NUM_THREADS=2 cargo bench --bench pixel_decoder
//! ```
//! The full-size CLIP-VIS pixel decoder (SPEC §3: 256 channels, 6 deformable encoder layers) for
//! both presets' feature channels, on the paper's test resolution (short side 480: a 480x640
//! frame), random weights. The PyTorch side is `benches/pixel_decoder_torch.py` (the same
//! pure-PyTorch deformable attention CLIP-VIS itself runs on the CPU). Groups are named
//! `{backend}/{block}/{size}`.

mod common;

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use clip_vis_clip::weights::{SyntheticFill, TensorStore};
use clip_vis_pixel_decoder::{MsDeformAttnPixelDecoder, PixelDecoderConfig};
use std::collections::BTreeMap;

const HEIGHT: usize = 480;
const WIDTH: usize = 640;

fn bench<B: Backend>(name: &str, channels: [usize; 4]) -> f64 {
    let device = B::Device::default();
    let store = TensorStore::synthetic(SyntheticFill::Random(3));
    let decoder = MsDeformAttnPixelDecoder::<B>::load(
        &store,
        "",
        &PixelDecoderConfig::clip_vis(channels),
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
    let inputs = (
        map(channels[0], 4),
        map(channels[1], 8),
        map(channels[2], 16),
        map(channels[3], 32),
    );
    let run = || {
        let out = decoder.forward(
            inputs.0.clone(),
            inputs.1.clone(),
            inputs.2.clone(),
            inputs.3.clone(),
        );
        let _ = out.mask_features.into_data();
    };
    let median = common::median_ms(common::repeats(3), run);
    println!("flex/{name}/{HEIGHT}x{WIDTH}: {median:.0} ms");
    median
}

fn main() {
    let threads = common::threads();
    let mut rust = BTreeMap::new();
    rust.insert(
        "pixel_decoder_r50",
        bench::<burn::backend::Flex>("pixel_decoder_r50", [256, 512, 1024, 2048]),
    );
    rust.insert(
        "pixel_decoder_convnext",
        bench::<burn::backend::Flex>("pixel_decoder_convnext", [128, 256, 512, 1024]),
    );
    let Ok(python) = std::env::var("CLIP_VIS_TORCH_PYTHON") else {
        println!("(set CLIP_VIS_TORCH_PYTHON to a Python with torch 2.5 + transformers 4.46 for the PyTorch side)");
        return;
    };
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/pixel_decoder_torch.py"
    );
    let output = std::process::Command::new(python)
        .args([
            script,
            "--threads",
            &threads.to_string(),
            "--repeats",
            &common::repeats(3).to_string(),
        ])
        .args([
            "--height",
            &HEIGHT.to_string(),
            "--width",
            &WIDTH.to_string(),
        ])
        .output()
        .expect("python runs");
    println!(
        "\n{:<24} {:>9} {:>9} {:>7}   ({threads} threads)",
        "block", "flex ms", "torch ms", "ratio"
    );
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let block = value["block"].as_str().unwrap_or_default();
        if let (Some(ms), Some(reference)) = (rust.get(block), value["median_ms"].as_f64()) {
            println!(
                "{block:<24} {ms:>9.0} {reference:>9.0} {:>6.2}x",
                ms / reference
            );
        }
    }
    if !output.status.success() {
        eprintln!(
            "torch side failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
