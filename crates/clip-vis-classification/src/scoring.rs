//! The weighted video score and the per-video selection of CLIP-VIS (SPEC §6.3–6.5), on the
//! host over row-major `f32` arrays of tracked queries (track order, after matching).
//!
//! ```text
//! P_t   = softmax_C(logits_t)                   per frame, [Q, C]
//! A     = mean_t sqrt(P_t · IoU_t)              IoU_t broadcast over C
//! S_obj = softmax(mean_t obj_logits_t)[:, 0]    softmax after averaging the logits
//! S     = sqrt(A · S_obj)                       [Q, C]
//! ```
//! Then the `k` best (query, class) pairs; for each, frame `t` is dropped (its mask emptied)
//! when `sqrt(sigmoid(P_t[label]) · softmax(obj_t)[0]) < 0.1 · S` (the sigmoid of a
//! probability is the released code's quirk, kept), and the final score is `S · mask_score`.

/// Which terms weight the CLIP probability (the paper's Tables II and III switch them off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreWeights {
    /// Multiply by the predicted mask IoU per frame (`IoU_t`); off means `IoU_t = 1`.
    pub use_iou: bool,
    /// Multiply by the video's object probability (`S_obj`); off means `S_obj = 1`.
    pub use_object: bool,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            use_iou: true,
            use_object: true,
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax of each row of a row-major `[rows, width]` array (max-subtracted, f32).
pub fn softmax_rows(logits: &[f32], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(width) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let start = out.len();
        out.extend(row.iter().map(|&v| (v - max).exp()));
        let sum: f32 = out[start..].iter().sum();
        for v in &mut out[start..] {
            *v /= sum;
        }
    }
    out
}

/// `softmax([object, no-object])[0]` of one query's two object logits.
pub fn object_probability(logits: &[f32]) -> f32 {
    softmax_rows(&logits[..2], 2)[0]
}

/// The per-frame score used for pruning: `sqrt(sigmoid(p) · softmax(obj)[0])` where `p` is the
/// frame's class probability of the pair's label.
pub fn frame_score(probability: f32, object_logits: &[f32]) -> f32 {
    (sigmoid(probability) * object_probability(object_logits)).sqrt()
}

/// Whether a frame keeps its mask: its score is not below a tenth of the pair's video score.
pub fn keeps_frame(frame_score: f32, video_score: f32) -> bool {
    // Pruned only when strictly below; a NaN score keeps the frame, as the reference does.
    frame_score.partial_cmp(&(video_score * 0.1)) != Some(std::cmp::Ordering::Less)
}

/// Running sums over one track's stride-4 mask logits, for the mask score
/// `Σ sigmoid(m)·[m > 0] / (Σ [m > 0] + 1e-6)` over its kept frames.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaskStats {
    /// `Σ sigmoid(m)` over positive logits.
    pub sigmoid_sum: f64,
    /// Number of positive logits.
    pub positive: u64,
}

impl MaskStats {
    /// The sums of one frame's mask logits.
    pub fn of(logits: &[f32]) -> Self {
        let mut stats = Self::default();
        for &m in logits {
            if m > 0.0 {
                stats.sigmoid_sum += f64::from(sigmoid(m));
                stats.positive += 1;
            }
        }
        stats
    }

    /// Adds another frame's sums.
    pub fn add(&mut self, other: Self) {
        self.sigmoid_sum += other.sigmoid_sum;
        self.positive += other.positive;
    }

    /// The mean sigmoid over positive pixels (0 when there are none).
    pub fn score(&self) -> f32 {
        (self.sigmoid_sum / (self.positive as f64 + 1e-6)) as f32
    }
}

/// One selected (track, category) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopPair {
    /// Track (query) index.
    pub query: usize,
    /// Category index (0-based label).
    pub label: usize,
    /// `S[query, label]`.
    pub video_score: f32,
}

/// Accumulates the video score frame by frame: memory is `[Q, C]` sums, whatever the length.
#[derive(Debug, Clone)]
pub struct VideoScores {
    queries: usize,
    classes: usize,
    frames: usize,
    weights: ScoreWeights,
    /// `Σ_t sqrt(P_t · IoU_t)`, `[Q, C]`.
    sum_sqrt: Vec<f64>,
    /// `Σ_t obj_logits_t`, `[Q, 2]`.
    sum_object: Vec<f64>,
}

impl VideoScores {
    /// Empty sums for `queries` tracks and `classes` categories.
    pub fn new(queries: usize, classes: usize, weights: ScoreWeights) -> Self {
        Self {
            queries,
            classes,
            frames: 0,
            weights,
            sum_sqrt: vec![0.0; queries * classes],
            sum_object: vec![0.0; queries * 2],
        }
    }

    /// Adds one frame, in track order: class probabilities `[Q, C]` (softmax of the logits),
    /// IoUs `[Q]` and object logits `[Q, 2]`.
    ///
    /// # Panics
    /// When a slice's length is not the shape above for the `queries` and `classes` given to
    /// [`VideoScores::new`]: the inputs are the model's own outputs, so a mismatch is a bug in
    /// the caller, not bad data (the message names the slice).
    pub fn add_frame(&mut self, probabilities: &[f32], ious: &[f32], object_logits: &[f32]) {
        assert_eq!(
            probabilities.len(),
            self.queries * self.classes,
            "probabilities shape"
        );
        assert_eq!(ious.len(), self.queries, "IoU shape");
        assert_eq!(object_logits.len(), self.queries * 2, "object logits shape");
        for (query, row) in probabilities.chunks_exact(self.classes).enumerate() {
            let iou = if self.weights.use_iou {
                ious[query]
            } else {
                1.0
            };
            let sums = &mut self.sum_sqrt[query * self.classes..(query + 1) * self.classes];
            for (acc, &p) in sums.iter_mut().zip(row) {
                *acc += f64::from((p * iou).sqrt());
            }
        }
        for (acc, &v) in self.sum_object.iter_mut().zip(object_logits) {
            *acc += f64::from(v);
        }
        self.frames += 1;
    }

    /// Frames added so far.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// `softmax(mean_t obj_logits_t)[:, 0]` per track (1 when the object term is off).
    pub fn object_probabilities(&self) -> Vec<f32> {
        let n = self.frames.max(1) as f64;
        self.sum_object
            .chunks_exact(2)
            .map(|pair| {
                if self.weights.use_object {
                    object_probability(&[(pair[0] / n) as f32, (pair[1] / n) as f32])
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// `S`, row-major `[Q, C]`.
    pub fn scores(&self) -> Vec<f32> {
        let n = self.frames.max(1) as f64;
        let object = self.object_probabilities();
        self.sum_sqrt
            .chunks_exact(self.classes)
            .zip(object)
            .flat_map(|(row, p_obj)| row.iter().map(move |&s| ((s / n) as f32 * p_obj).sqrt()))
            .collect()
    }

    /// The `k` best (query, class) pairs of `scores()` by descending score (ties: lower flat
    /// index first). `k` is capped at `Q · C`.
    pub fn top_pairs(&self, k: usize) -> Vec<TopPair> {
        top_pairs(&self.scores(), self.classes, k)
    }
}

/// The `k` largest entries of a row-major `[Q, C]` score array as pairs, best first.
pub fn top_pairs(scores: &[f32], classes: usize, k: usize) -> Vec<TopPair> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|flat| TopPair {
            query: flat / classes,
            label: flat % classes,
            video_score: scores[flat],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "IoU shape")]
    fn a_frame_of_the_wrong_shape_is_a_documented_panic() {
        let mut scores = VideoScores::new(2, 3, ScoreWeights::default());
        scores.add_frame(&[0.0; 6], &[0.0; 3], &[0.0; 4]);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let p = softmax_rows(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], 3);
        assert!((p[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[3] - 1.0 / 3.0).abs() < 1e-7);
    }

    #[test]
    fn mask_stats_ignore_non_positive_logits() {
        let stats = MaskStats::of(&[-1.0, 0.0, 2.0]);
        assert_eq!(stats.positive, 1);
        assert!((stats.score() - sigmoid(2.0)).abs() < 1e-5);
        assert_eq!(MaskStats::of(&[-1.0; 4]).score(), 0.0);
    }

    #[test]
    fn top_pairs_orders_by_score_then_index() {
        let pairs = top_pairs(&[0.1, 0.5, 0.5, 0.9], 2, 3);
        let flat: Vec<_> = pairs.iter().map(|p| (p.query, p.label)).collect();
        assert_eq!(flat, vec![(1, 1), (0, 1), (1, 0)]);
        assert_eq!(top_pairs(&[0.1, 0.2], 2, 9).len(), 2);
    }
}
