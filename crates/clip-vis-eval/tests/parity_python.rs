//! The 12 summary numbers equal those of the Python evaluators (`lvviseval` for LV-VIS with its
//! base/novel split, `ytvoseval` for YouTube-VIS) on every committed case.
//!
//! Cases: `tests/fixtures/<case>.{gt,results,expected}.json`, written by
//! `scripts/fixtures/gen_eval.py`, which runs the upstream evaluators (see its header for the
//! commit and versions): missing frames, empty masks, crowd tracks, categories without ground
//! truth, over 100 results in a video, tied scores, every area range, non-contiguous ids.

use clip_vis_eval::{evaluate, GroundTruth, Protocol, STAT_NAMES};
use serde_json::Value;
use std::path::PathBuf;

/// Absolute tolerance on each number (fractions in [0, 1]).
const TOLERANCE: f64 = 1e-6;

fn fixtures() -> Vec<(String, PathBuf)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".expected.json")
                .map(|case| (case.to_string(), dir.clone()))
        })
        .collect();
    cases.sort();
    cases
}

fn compare(
    case: &str,
    protocol: &str,
    split: &str,
    got: &[f64; 12],
    expected: &Value,
    failures: &mut Vec<String>,
) {
    let expected: Vec<f64> = expected
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        if (g - e).abs() > TOLERANCE {
            failures.push(format!(
                "{case} {protocol} {split} {}: rust {g} vs python {e}",
                STAT_NAMES[i]
            ));
        }
    }
}

#[test]
fn summaries_match_the_python_evaluators() {
    let cases = fixtures();
    assert!(cases.len() >= 6, "only {} fixture cases", cases.len());
    let mut failures = Vec::new();
    for (case, dir) in &cases {
        let expected: Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{case}.expected.json"))).unwrap(),
        )
        .unwrap();
        let ground_truth = GroundTruth::from_file(dir.join(format!("{case}.gt.json"))).unwrap();
        let results_path = dir.join(format!("{case}.results.json"));
        let results = match ground_truth.read_results(&results_path) {
            Ok(results) => results,
            // The Python tools silently drop results of categories the ground truth does not
            // list; clip-vis refuses them. Compare on the rest.
            Err(clip_vis_eval::EvalError::UnknownCategory { .. }) => {
                let listed: Vec<u64> = ground_truth.categories.iter().map(|c| c.id).collect();
                let raw: Vec<Value> =
                    serde_json::from_slice(&std::fs::read(&results_path).unwrap()).unwrap();
                let kept: Vec<Value> = raw
                    .into_iter()
                    .filter(|r| listed.contains(&r["category_id"].as_u64().unwrap()))
                    .collect();
                ground_truth
                    .results_from_json(&serde_json::to_string(&kept).unwrap())
                    .unwrap()
            }
            Err(other) => panic!("{case}: {other}"),
        };
        if let Some(lvvis) = expected.get("lvvis") {
            let report = evaluate(&ground_truth, &results, &Protocol::Lvvis);
            compare(
                case,
                "lvvis",
                "all",
                &report.all.stats,
                &lvvis["all"],
                &mut failures,
            );
            compare(
                case,
                "lvvis",
                "base",
                &report.base.unwrap().stats,
                &lvvis["base"],
                &mut failures,
            );
            compare(
                case,
                "lvvis",
                "novel",
                &report.novel.unwrap().stats,
                &lvvis["novel"],
                &mut failures,
            );
        }
        if let Some(ytvis) = expected.get("ytvis") {
            let report = evaluate(
                &ground_truth,
                &results,
                &Protocol::Ytvis { novel: Vec::new() },
            );
            compare(
                case,
                "ytvis",
                "all",
                &report.all.stats,
                &ytvis["all"],
                &mut failures,
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
