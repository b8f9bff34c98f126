//! CLIP-VIS temporal top-K enhanced matching (SPEC §6.2).

use std::collections::VecDeque;

use rayon::prelude::*;

use crate::cost::{assigned_cost, cosine_cost, normalized_rows, solve_assignment};
use crate::{identity, permute_rows, MatchConfig, MatchError, Result, TemporalMatcher};

/// Matches each frame against a memory of the last `T` frames' (permuted) embeddings.
///
/// For every memory slot `j` (oldest first) it solves the assignment on `C_j = 1 − cos` and
/// keeps the solved cost. With fewer than `K` slots stored, the assignment of the cheapest slot
/// wins. Otherwise the `K` cheapest slots vote: their matrices, weighted by recency `(j + 1)`,
/// are averaged and solved once more. One noisy frame then cannot drag a track onto the wrong
/// object, which a previous-frame-only matcher would propagate to the end of the video.
#[derive(Debug, Clone)]
pub struct TopKMatcher {
    config: MatchConfig,
    /// Unit-norm, permuted embeddings of the last `T` frames, oldest first.
    memory: VecDeque<Vec<f32>>,
    shape: Option<(usize, usize)>,
    frames_seen: usize,
}

impl TopKMatcher {
    /// A matcher with memory length `T` and vote size `K` from `config`.
    pub fn new(config: MatchConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            memory: VecDeque::with_capacity(config.memory_frames),
            shape: None,
            frames_seen: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> MatchConfig {
        self.config
    }

    fn remember(&mut self, normalized: Vec<f32>) {
        if self.memory.len() == self.config.memory_frames {
            self.memory.pop_front();
        }
        self.memory.push_back(normalized);
    }
}

/// Checks that a frame has the shape of the video's first frame.
pub(crate) fn check_shape(
    shape: &mut Option<(usize, usize)>,
    queries: usize,
    dim: usize,
    frame: usize,
) -> Result<()> {
    match *shape {
        None => {
            *shape = Some((queries, dim));
            Ok(())
        }
        Some(expected) if expected == (queries, dim) => Ok(()),
        Some((q, d)) => Err(MatchError::Shape {
            frame,
            message: format!(
                "{queries} queries of dimension {dim}, but earlier frames had {q} of dimension {d}"
            ),
        }),
    }
}

impl TemporalMatcher for TopKMatcher {
    fn assign(&mut self, embeddings: &[f32], dim: usize) -> Result<Vec<usize>> {
        let frame = self.frames_seen;
        let (current, queries) = normalized_rows(embeddings, dim, frame)?;
        check_shape(&mut self.shape, queries, dim, frame)?;
        let perm = if self.memory.is_empty() {
            identity(queries)
        } else {
            // Memory slots are rows (targets), current queries columns: perm[track] = query.
            // The slots are independent: solve them in parallel (at T = 9 and 100 queries the
            // nine cost matrices and solves are most of a frame's matching time).
            let mut solved = self
                .memory
                .par_iter()
                .map(|slot| {
                    let cost = cosine_cost(slot, &current, dim);
                    let perm = solve_assignment(&cost, queries, frame)?;
                    let total = assigned_cost(&cost, queries, &perm);
                    Ok((cost, perm, total))
                })
                .collect::<Result<Vec<_>>>()?;
            // Slots ordered by solved cost; ties keep the older slot first.
            let mut order: Vec<usize> = (0..solved.len()).collect();
            order.sort_by(|&a, &b| solved[a].2.total_cmp(&solved[b].2).then(a.cmp(&b)));
            if solved.len() < self.config.topk_frames {
                solved.swap_remove(order[0]).1
            } else {
                let k = self.config.topk_frames;
                let mut vote = vec![0.0f32; queries * queries];
                for &slot in &order[..k] {
                    let weight = (slot + 1) as f32;
                    for (acc, &c) in vote.iter_mut().zip(&solved[slot].0) {
                        *acc += c * weight;
                    }
                }
                for v in &mut vote {
                    *v /= k as f32;
                }
                solve_assignment(&vote, queries, frame)?
            }
        };
        self.remember(permute_rows(&current, dim, &perm));
        self.frames_seen += 1;
        Ok(perm)
    }

    fn reset(&mut self) {
        self.memory.clear();
        self.shape = None;
        self.frames_seen = 0;
    }

    fn frames_seen(&self) -> usize {
        self.frames_seen
    }
}
