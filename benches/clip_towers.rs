//! CLIP tower speed against PyTorch, in one run on the same CPU threads.
//!
//! ```text
//! CLIP_VIS_TORCH_PYTHON=/opt/refenv/bin/python RAYON_NUM_THREADS=2 \
//!     cargo bench --bench clip_towers
//! ```
//! Times the image trunk (stem to res5) of the full-size RN50 and convnext_base_w_320 presets on
//! a 640x640 input, and the text tower on 80 prompts ("a photo of a {COCO class}."), with random
//! weights (speed does not depend on their values). Then, if `CLIP_VIS_TORCH_PYTHON` names a
//! Python with torch and open_clip 2.24, runs `benches/clip_towers_torch.py` with the same
//! thread count and prints the ratios. Groups are named `{backend}/{block}/{size}`; the
//! `*_trunk_tensor_ops` rows time Burn's tensor-op trunk (the GPU backends' path, and the CPU's
//! before its host kernels) beside the host-kernel trunk `Clip::features` runs on the CPU; the
//! `*_trunk_bf16` rows (CPUs with AMX only) time that trunk with `--dtype bf16` products.

mod common;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_vis_clip::host::{self, Precision};
use clip_vis_clip::weights::{SyntheticFill, TensorStore};
use clip_vis_clip::{Clip, ClipConfig};
use std::collections::BTreeMap;

const COCO: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

fn bench_model<B: Backend>(
    backend: &str,
    config: ClipConfig,
    short: &str,
    results: &mut BTreeMap<String, f64>,
) {
    let device = B::Device::default();
    let store = TensorStore::synthetic(SyntheticFill::Random(7));
    let clip = Clip::<B>::load(&store, &config, &device).expect("preset builds");
    let pixels = Tensor::<B, 4>::random(
        [1, 3, 640, 640],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let trunk = common::median_ms(common::repeats(5), || {
        let features = clip.features(pixels.clone());
        let _ = features.res5.into_data();
    });
    println!("{backend}/{short}_trunk/640x640: {trunk:.1} ms");
    results.insert(format!("{short}_trunk"), trunk);
    // The same host trunk with bf16 products on AMX (`--dtype bf16`), where the CPU has it.
    if host::set_precision(Precision::Bf16).is_ok() {
        let bf16 = common::median_ms(common::repeats(5), || {
            let features = clip.features(pixels.clone());
            let _ = features.res5.into_data();
        });
        host::set_precision(Precision::F32).unwrap();
        println!("{backend}/{short}_trunk_bf16/640x640: {bf16:.1} ms");
        results.insert(format!("{short}_trunk_bf16"), bf16);
    }
    // Burn's tensor-op trunk on the same backend (what the GPU backends run, and what the CPU
    // ran before the host kernels): the before/after of the host kernels in one run.
    let reference = common::median_ms(common::repeats(5), || {
        let features = clip.features_reference(pixels.clone());
        let _ = features.res5.into_data();
    });
    println!("{backend}/{short}_trunk_tensor_ops/640x640: {reference:.1} ms");
    results.insert(format!("{short}_trunk_tensor_ops"), reference);
    let prompts: Vec<String> = COCO.iter().map(|c| format!("a photo of a {c}.")).collect();
    let text = common::median_ms(common::repeats(5), || {
        let _ = clip.encode_prompts(&prompts).expect("encode").into_data();
    });
    println!("{backend}/{short}_text/80_prompts: {text:.1} ms");
    results.insert(format!("{short}_text"), text);
}

fn torch_results(threads: usize) -> Option<BTreeMap<String, f64>> {
    let python = std::env::var("CLIP_VIS_TORCH_PYTHON").ok()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/clip_towers_torch.py");
    let output = std::process::Command::new(python)
        .args([
            script,
            "--threads",
            &threads.to_string(),
            "--repeats",
            &common::repeats(5).to_string(),
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "torch side failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let mut results = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        results.insert(
            value["block"].as_str()?.to_string(),
            value["median_ms"].as_f64()?,
        );
    }
    Some(results)
}

fn main() {
    let threads = common::threads();
    let mut rust = BTreeMap::new();
    bench_model::<burn::backend::Flex>("flex", ClipConfig::rn50(), "rn50", &mut rust);
    bench_model::<burn::backend::Flex>(
        "flex",
        ClipConfig::convnext_base_w_320(),
        "convnext",
        &mut rust,
    );
    match torch_results(threads) {
        Some(torch) => {
            println!("\n{:<26} {:>10} {:>10} {:>8}   ({threads} threads)", "block", "flex ms", "torch ms", "ratio");
            for (block, ms) in &rust {
                let torch_block = block
                    .trim_end_matches("_tensor_ops")
                    .trim_end_matches("_bf16");
                if let Some(reference) = torch.get(torch_block) {
                    println!("{block:<26} {ms:>10.1} {reference:>10.1} {:>7.2}x", ms / reference);
                }
            }
        }
        None => println!("\n(set CLIP_VIS_TORCH_PYTHON to a Python with torch + open_clip 2.24 for the PyTorch side)"),
    }
}
