//! Per (video, category) matching, as `YTVOSeval.evaluateImg` / `LVVISeval.evaluateVid` do it
//! (COCO's greedy matching on video IoU), and the accumulation into precision and recall
//! arrays (`accumulate`).

use crate::dataset::{GroundTruth, Track};
use crate::params::Params;
use crate::track::video_iou;
use rayon::prelude::*;
use std::collections::HashMap;

/// The matching of one (video, category) pair for one area range, at `max_dets` detections.
#[derive(Debug, Clone)]
pub struct PairEval {
    /// Detection scores, best first (stable order on ties).
    pub scores: Vec<f64>,
    /// `[threshold][detection]`: matched to a ground truth that counts (`Some(id)`), where the
    /// id is the ground truth's 1-based position as the Python tools number it.
    pub matched: Vec<Vec<bool>>,
    /// `[threshold][detection]`: ignored (matched to an ignored ground truth, or unmatched and
    /// outside the area range).
    pub ignored: Vec<Vec<bool>>,
    /// Ground truths that count (not crowd, inside the area range).
    pub counted_ground_truths: usize,
}

/// Where the two Python evaluators differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `ytvoseval` ignores crowd ground truths (they never count as missed); `lvviseval` counts
    /// them like any other, only letting several detections match one.
    pub crowd_is_ignored: bool,
    /// `lvviseval` truncates each per-frame area to an integer before averaging.
    pub truncate_areas: bool,
}

impl Rules {
    /// `tools/evaluate/lvviseval.py`.
    pub const LVVIS: Rules = Rules {
        crowd_is_ignored: false,
        truncate_areas: true,
    };
    /// The YouTube-VIS `ytvoseval.py`.
    pub const YTVIS: Rules = Rules {
        crowd_is_ignored: true,
        truncate_areas: false,
    };
}

/// Every track of the ground truth and the results, grouped by (video, category).
pub struct Evaluation<'a> {
    params: &'a Params,
    rules: Rules,
    ground_truth: &'a GroundTruth,
    results: &'a [Track],
    /// `(video index, category id)` → (ground-truth indices, result indices sorted by score).
    groups: HashMap<(usize, u64), (Vec<usize>, Vec<usize>)>,
}

impl<'a> Evaluation<'a> {
    /// Groups tracks; results are sorted by descending score, ties kept in file order (numpy's
    /// stable `mergesort`), and cut to the largest `max_dets`.
    pub fn new(
        params: &'a Params,
        rules: Rules,
        ground_truth: &'a GroundTruth,
        results: &'a [Track],
    ) -> Self {
        let mut groups: HashMap<(usize, u64), (Vec<usize>, Vec<usize>)> = HashMap::new();
        for (i, t) in ground_truth.tracks.iter().enumerate() {
            groups
                .entry((t.video, t.category_id))
                .or_default()
                .0
                .push(i);
        }
        for (i, t) in results.iter().enumerate() {
            groups
                .entry((t.video, t.category_id))
                .or_default()
                .1
                .push(i);
        }
        let max_dets = params.max_dets.iter().copied().max().unwrap_or(0);
        for (_, detections) in groups.values_mut() {
            detections.sort_by(|&a, &b| results[b].score.total_cmp(&results[a].score));
            detections.truncate(max_dets);
        }
        Self {
            params,
            rules,
            ground_truth,
            results,
            groups,
        }
    }

    /// Evaluates every pair for every area range (in parallel over pairs). Returns
    /// `[(category id, area range index, video index)] → PairEval`.
    pub fn run(&self) -> HashMap<(u64, usize, usize), PairEval> {
        let keys: Vec<&(usize, u64)> = self.groups.keys().collect();
        keys.par_iter()
            .flat_map_iter(|&&(video, category)| {
                let (gts, dts) = &self.groups[&(video, category)];
                let ious: Vec<Vec<f64>> = dts
                    .iter()
                    .map(|&d| {
                        gts.iter()
                            .map(|&g| {
                                video_iou(
                                    &self.results[d].masks,
                                    &self.ground_truth.tracks[g].masks,
                                )
                            })
                            .collect()
                    })
                    .collect();
                (0..self.params.area_ranges.len())
                    .map(move |area| {
                        let eval = self.evaluate_pair(gts, dts, &ious, area);
                        ((category, area, video), eval)
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn evaluate_pair(
        &self,
        gts: &[usize],
        dts: &[usize],
        ious: &[Vec<f64>],
        area: usize,
    ) -> PairEval {
        let (low, high) = self.params.area_ranges[area];
        let gt_tracks: Vec<&Track> = gts.iter().map(|&g| &self.ground_truth.tracks[g]).collect();
        let outside = |a: f64| a < low || a > high;
        let gt_ignored: Vec<bool> = gt_tracks
            .iter()
            .map(|g| {
                (self.rules.crowd_is_ignored && g.iscrowd)
                    || outside(g.mean_area(self.rules.truncate_areas))
            })
            .collect();
        // Ground truths that count first, stable (numpy mergesort on the ignore flag).
        let mut order: Vec<usize> = (0..gts.len()).collect();
        order.sort_by_key(|&i| gt_ignored[i]);
        let thresholds = &self.params.iou_thresholds;
        let mut matched = vec![vec![false; dts.len()]; thresholds.len()];
        let mut ignored = vec![vec![false; dts.len()]; thresholds.len()];
        for (t, &threshold) in thresholds.iter().enumerate() {
            let mut gt_taken = vec![false; gts.len()];
            for d in 0..dts.len() {
                let mut best_iou = threshold.min(1.0 - 1e-10);
                let mut best: Option<usize> = None;
                for (position, &g) in order.iter().enumerate() {
                    let crowd = gt_tracks[g].iscrowd;
                    if gt_taken[position] && !crowd {
                        continue;
                    }
                    // Once matched to a counted ground truth, ignored ones cannot win.
                    if let Some(b) = best {
                        if !gt_ignored[order[b]] && gt_ignored[g] {
                            break;
                        }
                    }
                    let iou = ious[d][g];
                    if iou < best_iou {
                        continue;
                    }
                    best_iou = iou;
                    best = Some(position);
                }
                if let Some(b) = best {
                    let g = order[b];
                    ignored[t][d] = gt_ignored[g];
                    matched[t][d] = true;
                    gt_taken[b] = true;
                }
            }
        }
        for d in 0..dts.len() {
            if outside(self.results[dts[d]].mean_area(self.rules.truncate_areas)) {
                for t in 0..thresholds.len() {
                    if !matched[t][d] {
                        ignored[t][d] = true;
                    }
                }
            }
        }
        PairEval {
            scores: dts.iter().map(|&d| self.results[d].score).collect(),
            matched,
            ignored,
            counted_ground_truths: gt_ignored.iter().filter(|&&i| !i).count(),
        }
    }
}
