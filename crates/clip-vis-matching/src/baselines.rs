//! The two matching baselines of the paper's Table V.

use crate::cost::{cosine_cost, normalized_rows, solve_assignment};
use crate::topk::check_shape;
use crate::{identity, permute_rows, Result, TemporalMatcher};

/// MinVIS-style matching: each frame against the previous (permuted) frame only.
#[derive(Debug, Clone, Default)]
pub struct AdjacentMatcher {
    previous: Option<Vec<f32>>,
    shape: Option<(usize, usize)>,
    frames_seen: usize,
}

impl AdjacentMatcher {
    /// A fresh matcher.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TemporalMatcher for AdjacentMatcher {
    fn assign(&mut self, embeddings: &[f32], dim: usize) -> Result<Vec<usize>> {
        let frame = self.frames_seen;
        let (current, queries) = normalized_rows(embeddings, dim, frame)?;
        check_shape(&mut self.shape, queries, dim, frame)?;
        let perm = match &self.previous {
            None => identity(queries),
            Some(previous) => {
                solve_assignment(&cosine_cost(previous, &current, dim), queries, frame)?
            }
        };
        self.previous = Some(permute_rows(&current, dim, &perm));
        self.frames_seen += 1;
        Ok(perm)
    }

    fn reset(&mut self) {
        *self = Self::default();
    }

    fn frames_seen(&self) -> usize {
        self.frames_seen
    }
}

/// Long-term matching in the manner of OV2Seg: every track's target is the mean of its unit
/// embeddings over *all* previous frames (normalised again before comparing), so the memory is
/// one running sum, whatever the video's length.
#[derive(Debug, Clone, Default)]
pub struct LongTermMatcher {
    sum: Vec<f32>,
    shape: Option<(usize, usize)>,
    frames_seen: usize,
}

impl LongTermMatcher {
    /// A fresh matcher.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TemporalMatcher for LongTermMatcher {
    fn assign(&mut self, embeddings: &[f32], dim: usize) -> Result<Vec<usize>> {
        let frame = self.frames_seen;
        let (current, queries) = normalized_rows(embeddings, dim, frame)?;
        check_shape(&mut self.shape, queries, dim, frame)?;
        let perm = if self.frames_seen == 0 {
            identity(queries)
        } else {
            let count = self.frames_seen as f32;
            let mean: Vec<f32> = self.sum.iter().map(|v| v / count).collect();
            let (target, _) = normalized_rows(&mean, dim, frame)?;
            solve_assignment(&cosine_cost(&target, &current, dim), queries, frame)?
        };
        let permuted = permute_rows(&current, dim, &perm);
        if self.sum.is_empty() {
            self.sum = permuted;
        } else {
            for (acc, v) in self.sum.iter_mut().zip(permuted) {
                *acc += v;
            }
        }
        self.frames_seen += 1;
        Ok(perm)
    }

    fn reset(&mut self) {
        *self = Self::default();
    }

    fn frames_seen(&self) -> usize {
        self.frames_seen
    }
}
