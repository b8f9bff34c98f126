//! Video instance segmentation mask AP, as the LV-VIS and YouTube-VIS evaluators compute it.
//!
//! A port of the `lvviseval` / `ytvoseval` evaluators (pycocotools' `COCOeval` applied to
//! tracks, SPEC §7): track IoU is `Σ_t |d_t ∩ g_t| / Σ_t |d_t ∪ g_t|`, computed on run-length
//! encodings without decoding; IoU thresholds 0.50:0.05:0.95; 101 recall points; at most 1, 10
//! and 100 detections per (video, category); area ranges by the mean non-empty per-frame area
//! (all, small < 128², medium 128²–256², large > 256²); crowd tracks never count against a
//! detection; categories without ground truth are skipped. The summary has the 12 numbers the
//! Python tools print, over all categories and over the base and novel ones.
//!
//! ```no_run
//! use clip_vis_eval::{evaluate_files, Protocol};
//! let report = evaluate_files("val_instances.json", "results.json", &Protocol::Lvvis)?;
//! println!("AP {:.1}, novel AP {:.1}", 100.0 * report.all.stats[0], 100.0 * report.novel.unwrap().stats[0]);
//! # Ok::<(), clip_vis_eval::EvalError>(())
//! ```

pub mod accumulate;
pub mod dataset;
mod error;
pub mod evaluate;
pub mod params;
pub mod track;

pub use accumulate::{Summary, STAT_NAMES};
pub use dataset::{Category, GroundTruth, Track, Video};
pub use error::{EvalError, Result};
pub use params::Params;

use std::collections::HashSet;
use std::path::Path;

/// How categories split into base and novel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// LV-VIS: partitions 0 and 1 are base, 2 and 3 novel (from the ground truth's categories).
    Lvvis,
    /// YouTube-VIS style: no split, or novel = the named categories.
    Ytvis {
        /// Names of the novel categories (empty: report only "all").
        novel: Vec<String>,
    },
}

/// The evaluation result.
#[derive(Debug, Clone)]
pub struct Report {
    /// Over every category with ground truth.
    pub all: Summary,
    /// Over the base categories (when the protocol defines them).
    pub base: Option<Summary>,
    /// Over the novel categories (when the protocol defines them).
    pub novel: Option<Summary>,
    /// Per category id: its summary (AP is −1 for categories without ground truth).
    pub per_category: Vec<(u64, Summary)>,
}

/// Evaluates `results` against `ground_truth`.
pub fn evaluate(ground_truth: &GroundTruth, results: &[Track], protocol: &Protocol) -> Report {
    let params = Params::default();
    let rules = match protocol {
        Protocol::Lvvis => evaluate::Rules::LVVIS,
        Protocol::Ytvis { .. } => evaluate::Rules::YTVIS,
    };
    let evaluation = evaluate::Evaluation::new(&params, rules, ground_truth, results);
    let pairs = evaluation.run();
    let mut category_ids: Vec<u64> = ground_truth.categories.iter().map(|c| c.id).collect();
    category_ids.sort_unstable();
    category_ids.dedup();
    let mut videos: Vec<usize> = (0..ground_truth.videos.len()).collect();
    videos.sort_by_key(|&v| ground_truth.videos[v].id);
    let accumulated = accumulate::accumulate(&params, &pairs, &category_ids, &videos);
    let all = accumulated.summarize(&params, |_| true);
    let split: Option<(HashSet<u64>, HashSet<u64>)> = match protocol {
        Protocol::Lvvis => {
            let of = |parts: [u8; 2]| {
                ground_truth
                    .categories
                    .iter()
                    .filter(|c| c.partition.is_some_and(|p| parts.contains(&p)))
                    .map(|c| c.id)
                    .collect::<HashSet<u64>>()
            };
            Some((of([0, 1]), of([2, 3])))
        }
        Protocol::Ytvis { novel } if !novel.is_empty() => {
            let novel_ids: HashSet<u64> = ground_truth
                .categories
                .iter()
                .filter(|c| novel.iter().any(|n| n == &c.name))
                .map(|c| c.id)
                .collect();
            let base_ids = category_ids
                .iter()
                .copied()
                .filter(|id| !novel_ids.contains(id))
                .collect();
            Some((base_ids, novel_ids))
        }
        Protocol::Ytvis { .. } => None,
    };
    let (base, novel) = match split {
        Some((base, novel)) => (
            Some(accumulated.summarize(&params, |id| base.contains(&id))),
            Some(accumulated.summarize(&params, |id| novel.contains(&id))),
        ),
        None => (None, None),
    };
    let per_category = category_ids
        .iter()
        .map(|&id| (id, accumulated.summarize(&params, |c| c == id)))
        .collect();
    Report {
        all,
        base,
        novel,
        per_category,
    }
}

/// Reads both files and evaluates.
pub fn evaluate_files(
    ground_truth: impl AsRef<Path>,
    results: impl AsRef<Path>,
    protocol: &Protocol,
) -> Result<Report> {
    let ground_truth = GroundTruth::from_file(ground_truth)?;
    let results = ground_truth.read_results(results)?;
    Ok(evaluate(&ground_truth, &results, protocol))
}
