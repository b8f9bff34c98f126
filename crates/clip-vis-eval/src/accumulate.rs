//! Precision and recall over all videos (`accumulate`) and the 12 summary numbers
//! (`summarize`), as pycocotools-derived video evaluators compute them.

use crate::evaluate::PairEval;
use crate::params::Params;
use std::collections::HashMap;

/// `precision[t][r][k][a][m]` and `recall[t][k][a][m]`; −1 where undefined.
#[derive(Debug, Clone)]
pub struct Accumulated {
    /// Category ids in the order of the `k` axis (ascending, as pycocotools sorts them).
    pub category_ids: Vec<u64>,
    /// Interpolated precision at each recall point.
    pub precision: Vec<Vec<Vec<Vec<Vec<f64>>>>>,
    /// Final recall.
    pub recall: Vec<Vec<Vec<Vec<f64>>>>,
}

/// Accumulates the pair evaluations. `videos` lists the video indices in ascending id order
/// (detections of equal score keep that order, as numpy's stable sort does).
pub fn accumulate(
    params: &Params,
    evals: &HashMap<(u64, usize, usize), PairEval>,
    category_ids: &[u64],
    videos: &[usize],
) -> Accumulated {
    let (t_len, r_len, k_len) = (
        params.iou_thresholds.len(),
        params.recall_thresholds.len(),
        category_ids.len(),
    );
    let (a_len, m_len) = (params.area_ranges.len(), params.max_dets.len());
    let mut precision = vec![vec![vec![vec![vec![-1.0; m_len]; a_len]; k_len]; r_len]; t_len];
    let mut recall = vec![vec![vec![vec![-1.0; m_len]; a_len]; k_len]; t_len];
    for (k, &category) in category_ids.iter().enumerate() {
        for a in 0..a_len {
            let pairs: Vec<&PairEval> = videos
                .iter()
                .filter_map(|&v| evals.get(&(category, a, v)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let counted: usize = pairs.iter().map(|p| p.counted_ground_truths).sum();
            if counted == 0 {
                continue;
            }
            for (m, &max_det) in params.max_dets.iter().enumerate() {
                // (score, pair, detection) in concatenation order, then a stable sort.
                let mut detections: Vec<(f64, usize, usize)> = pairs
                    .iter()
                    .enumerate()
                    .flat_map(|(p, pair)| {
                        pair.scores
                            .iter()
                            .take(max_det)
                            .enumerate()
                            .map(move |(d, &s)| (s, p, d))
                    })
                    .collect();
                detections.sort_by(|x, y| y.0.total_cmp(&x.0));
                for t in 0..t_len {
                    let (mut tp, mut fp) = (0f64, 0f64);
                    let mut recalls = Vec::with_capacity(detections.len());
                    let mut precisions = Vec::with_capacity(detections.len());
                    for &(_, p, d) in &detections {
                        let pair = pairs[p];
                        if pair.ignored[t][d] {
                            // Neither a true nor a false positive: the running sums repeat.
                        } else if pair.matched[t][d] {
                            tp += 1.0;
                        } else {
                            fp += 1.0;
                        }
                        recalls.push(tp / counted as f64);
                        precisions.push(tp / (fp + tp + f64::EPSILON));
                    }
                    recall[t][k][a][m] = recalls.last().copied().unwrap_or(0.0);
                    // Make precision monotonically decreasing from the right.
                    for i in (1..precisions.len()).rev() {
                        if precisions[i] > precisions[i - 1] {
                            precisions[i - 1] = precisions[i];
                        }
                    }
                    for (r, &threshold) in params.recall_thresholds.iter().enumerate() {
                        // numpy `searchsorted(side='left')`: first recall >= threshold; recall
                        // points past the last detection stay 0.
                        let index = recalls.partition_point(|&rc| rc < threshold);
                        precision[t][r][k][a][m] = precisions.get(index).copied().unwrap_or(0.0);
                    }
                }
            }
        }
    }
    Accumulated {
        category_ids: category_ids.to_vec(),
        precision,
        recall,
    }
}

/// The 12 numbers the Python tools print, as fractions (−1 where undefined).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// AP, AP50, AP75, AP_small, AP_medium, AP_large, AR1, AR10, AR100, AR_small, AR_medium,
    /// AR_large.
    pub stats: [f64; 12],
}

/// Names of [`Summary::stats`], in order.
pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

impl Accumulated {
    /// Summarises over the categories selected by `keep` (all, base, novel, one category).
    pub fn summarize(&self, params: &Params, keep: impl Fn(u64) -> bool) -> Summary {
        let ks: Vec<usize> = self
            .category_ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| keep(id))
            .map(|(k, _)| k)
            .collect();
        let last_m = params.max_dets.len() - 1;
        let m_of = |max_det: usize| params.max_dets.iter().position(|&m| m == max_det);
        let mean = |values: Vec<f64>| {
            let valid: Vec<f64> = values.into_iter().filter(|&v| v > -1.0).collect();
            if valid.is_empty() {
                -1.0
            } else {
                valid.iter().sum::<f64>() / valid.len() as f64
            }
        };
        let ap = |threshold: Option<usize>, area: usize| {
            let ts: Vec<usize> = match threshold {
                Some(t) => vec![t],
                None => (0..params.iou_thresholds.len()).collect(),
            };
            let mut values = Vec::new();
            for &t in &ts {
                for r in 0..params.recall_thresholds.len() {
                    for &k in &ks {
                        values.push(self.precision[t][r][k][area][last_m]);
                    }
                }
            }
            mean(values)
        };
        let ar = |area: usize, m: Option<usize>| {
            let Some(m) = m else { return -1.0 };
            let mut values = Vec::new();
            for t in 0..params.iou_thresholds.len() {
                for &k in &ks {
                    values.push(self.recall[t][k][area][m]);
                }
            }
            mean(values)
        };
        Summary {
            stats: [
                ap(None, 0),
                ap(Some(0), 0),
                ap(Some(5), 0),
                ap(None, 1),
                ap(None, 2),
                ap(None, 3),
                ar(0, m_of(1)),
                ar(0, m_of(10)),
                ar(0, m_of(100)),
                ar(1, Some(last_m)),
                ar(2, Some(last_m)),
                ar(3, Some(last_m)),
            ],
        }
    }
}
