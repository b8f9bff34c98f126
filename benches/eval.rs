//! Evaluation speed on an LV-VIS-sized workload, against the Python evaluators in one run.
//!
//! ```text
//! CLIP_VIS_TORCH_PYTHON=/opt/refenv/bin/python CLIP_VIS_EVALREF=/tmp/evalref \
//!     cargo bench --bench eval
//! ```
//! Generates (seeded) 837 videos of 20 frames at 320x180, 1196 categories over the four LV-VIS
//! partitions, about 4 ground-truth tracks and 50 results per video (half of them noisy copies
//! of ground truth), writes them as json, times `clip_vis_eval::evaluate_files`, and, when
//! `CLIP_VIS_EVALREF` names a folder with the upstream `lvviseval.py` / `lvvis.py` (extracted
//! from the CLIP-VIS repository, not shipped here) and `CLIP_VIS_TORCH_PYTHON` a Python with
//! numpy and pycocotools, times `benches/eval_python.py` on the same files.

use clip_vis_eval::{evaluate_files, Protocol};
use serde_json::{json, Value};
use std::time::Instant;

const VIDEOS: usize = 837;
const CATEGORIES: u64 = 1196;
const FRAMES: usize = 20;
const RESULTS_PER_VIDEO: usize = 50;
const WIDTH: u32 = 320;
const HEIGHT: u32 = 180;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A rectangle moving across the frames, as compressed COCO RLE strings (None when absent),
/// with its per-frame areas (the ground-truth `areas` field the Python tools require).
fn moving_box(rng: &mut Rng, present_from: usize) -> (Vec<Value>, Vec<Value>) {
    let (w, h) = (8 + rng.below(120) as i64, 8 + rng.below(90) as i64);
    let (mut x, mut y) = (
        rng.below(WIDTH as u64) as i64,
        rng.below(HEIGHT as u64) as i64,
    );
    let (dx, dy) = (rng.below(7) as i64 - 3, rng.below(5) as i64 - 2);
    (0..FRAMES)
        .map(|f| {
            x += dx;
            y += dy;
            if f < present_from {
                return (Value::Null, Value::Null);
            }
            let mut mask = vec![0u8; (WIDTH * HEIGHT) as usize];
            for col in x.max(0)..(x + w).min(WIDTH as i64) {
                for row in y.max(0)..(y + h).min(HEIGHT as i64) {
                    mask[(col * HEIGHT as i64 + row) as usize] = 1;
                }
            }
            let rle = hotcoco::mask::encode(&mask, HEIGHT, WIDTH).expect("encode");
            let area = hotcoco::mask::area(&rle);
            (
                json!({"size": [HEIGHT, WIDTH], "counts": hotcoco::mask::rle_to_string(&rle)}),
                json!(area),
            )
        })
        .unzip()
}

fn workload(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = Rng(7);
    let categories: Vec<Value> = (1..=CATEGORIES)
        .map(|id| json!({"id": id, "name": format!("category_{id}"), "partition": id % 4}))
        .collect();
    let mut videos = Vec::new();
    let mut annotations = Vec::new();
    let mut results = Vec::new();
    for v in 1..=VIDEOS as u64 {
        videos.push(
            json!({"id": v, "width": WIDTH, "height": HEIGHT, "length": FRAMES,
            "file_names": (0..FRAMES).map(|f| format!("{v}/{f:05}.jpg")).collect::<Vec<_>>()}),
        );
        let mut tracks = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let category = 1 + rng.below(CATEGORIES);
            let id = annotations.len() + 1;
            let present_from = rng.below(4) as usize;
            let (segmentations, areas) = moving_box(&mut rng, present_from);
            tracks.push(category);
            annotations.push(json!({"id": id, "video_id": v, "category_id": category,
                "iscrowd": 0, "segmentations": segmentations, "areas": areas}));
        }
        for r in 0..RESULTS_PER_VIDEO {
            // Half the results name a category present in the video, half a random one.
            let category = if r % 2 == 0 {
                tracks[r / 2 % tracks.len()]
            } else {
                1 + rng.below(CATEGORIES)
            };
            let (segmentations, _) = moving_box(&mut rng, 0);
            results.push(json!({"video_id": v, "category_id": category,
                "score": rng.below(1000) as f64 / 1000.0, "segmentations": segmentations}));
        }
    }
    let gt_path = dir.join("gt.json");
    let results_path = dir.join("results.json");
    let gt = json!({"videos": videos, "annotations": annotations, "categories": categories, "info": {}, "licenses": []});
    std::fs::write(&gt_path, serde_json::to_vec(&gt).unwrap()).unwrap();
    std::fs::write(&results_path, serde_json::to_vec(&results).unwrap()).unwrap();
    (gt_path, results_path)
}

fn main() {
    let dir = std::env::temp_dir().join("clip-vis-eval-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let generated = Instant::now();
    let (gt, results) = workload(&dir);
    eprintln!(
        "workload written to {} in {:.1} s",
        dir.display(),
        generated.elapsed().as_secs_f64()
    );
    let threads = rayon::current_num_threads();
    let started = Instant::now();
    let report = evaluate_files(&gt, &results, &Protocol::Lvvis).expect("evaluates");
    let rust_s = started.elapsed().as_secs_f64();
    println!(
        "rust/lvvis_eval/837_videos: {rust_s:.2} s ({threads} threads), AP {:.4}",
        report.all.stats[0]
    );
    let (Ok(python), Ok(evalref)) = (
        std::env::var("CLIP_VIS_TORCH_PYTHON"),
        std::env::var("CLIP_VIS_EVALREF"),
    ) else {
        println!("(set CLIP_VIS_TORCH_PYTHON and CLIP_VIS_EVALREF for the Python side)");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/eval_python.py");
    let output = std::process::Command::new(python)
        .args([script, "--evalref", &evalref, "--gt"])
        .arg(&gt)
        .arg("--results")
        .arg(&results)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        Some(value) => {
            let python_s = value["seconds"].as_f64().unwrap_or(f64::NAN);
            println!(
                "python/lvvis_eval/837_videos: {python_s:.2} s, AP {:.4}",
                value["AP"].as_f64().unwrap_or(f64::NAN)
            );
            println!("ratio: rust is {:.1}x faster", python_s / rust_s);
        }
        None => eprintln!(
            "python side failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
