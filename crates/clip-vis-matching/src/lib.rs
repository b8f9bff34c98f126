//! Temporal query matching: which query of frame `f` continues which track.
//!
//! CLIP-VIS is an image model; it becomes a video model only here. Every frame yields the same
//! number of query embeddings, and a matcher returns, for each new frame, the permutation that
//! lines its queries up with the tracks so far (SPEC §6.2). Track `i` of the video is query
//! `perm[i]` of the frame. The first frame fixes the track order (identity permutation).
//!
//! Three strategies share the [`TemporalMatcher`] trait so that the paper's Table V can be re-run:
//! - [`TopKMatcher`]: CLIP-VIS's temporal top-K enhanced matching over a memory of the last `T`
//!   frames (the default: paper T=9, K=3; the released checkpoints were evaluated with K=5).
//! - [`AdjacentMatcher`]: MinVIS, previous frame only.
//! - [`LongTermMatcher`]: OV2Seg-style, all previous frames aggregated into one target.
//!
//! Everything is plain Rust over row-major `&[f32]` (`[queries, dim]`); no tensor library.
//!
//! ```
//! use clip_vis_matching::{MatchConfig, TemporalMatcher, TopKMatcher};
//!
//! let mut matcher = TopKMatcher::new(MatchConfig::default()).unwrap();
//! // Two queries of dimension 2; the second frame lists them the other way round.
//! let first = [1.0, 0.0, 0.0, 1.0];
//! let second = [0.1, 0.9, 0.9, 0.1];
//! assert_eq!(matcher.assign(&first, 2).unwrap(), vec![0, 1]);
//! assert_eq!(matcher.assign(&second, 2).unwrap(), vec![1, 0]);
//! ```

mod baselines;
mod cost;
mod topk;

pub use baselines::{AdjacentMatcher, LongTermMatcher};
pub use cost::{cosine_cost, normalized_rows, solve_assignment};
pub use topk::TopKMatcher;

/// Matching failures. Each names the frame (0-based, in the order frames were given).
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    /// An embedding holds NaN or an infinity.
    #[error("frame {frame}: query {query} has a non-finite embedding value")]
    NonFinite {
        /// Frame index.
        frame: usize,
        /// Query index within the frame.
        query: usize,
    },
    /// An embedding is all zeros, so it has no direction to compare.
    #[error("frame {frame}: query {query} has a zero embedding (cosine similarity undefined)")]
    ZeroEmbedding {
        /// Frame index.
        frame: usize,
        /// Query index within the frame.
        query: usize,
    },
    /// The frame's embeddings do not have the shape of the earlier frames.
    #[error("frame {frame}: {message}")]
    Shape {
        /// Frame index.
        frame: usize,
        /// What is wrong.
        message: String,
    },
    /// A cost matrix the solver cannot take (non-finite entries).
    #[error("frame {frame}: the assignment cost matrix has non-finite entries")]
    InvalidCost {
        /// Frame index.
        frame: usize,
    },
    /// A configuration that cannot run (zero memory or zero K).
    #[error("invalid matching configuration: {0}")]
    Config(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, MatchError>;

/// Aligns each new frame's queries with the tracks of the frames before it.
pub trait TemporalMatcher {
    /// Takes one frame's query embeddings, row-major `[queries, dim]` (`embeddings.len()` must
    /// be `queries * dim`, the same shape every frame), and returns the permutation `perm` with
    /// `perm[track] = query`. The first frame after construction or [`reset`](Self::reset)
    /// returns the identity.
    fn assign(&mut self, embeddings: &[f32], dim: usize) -> Result<Vec<usize>>;

    /// Forgets every frame, ready for a new video.
    fn reset(&mut self);

    /// Frames seen since the last reset.
    fn frames_seen(&self) -> usize;
}

/// Memory length `T` and vote size `K` of [`TopKMatcher`] (SPEC §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchConfig {
    /// `T`: how many previous frames (their permuted embeddings) the memory keeps.
    pub memory_frames: usize,
    /// `K`: how many lowest-cost memory frames vote on the final assignment. While the memory
    /// holds fewer than `K` frames, the single best frame's assignment is used (so `K > T`
    /// always uses it, as the reference does).
    pub topk_frames: usize,
}

impl MatchConfig {
    /// The paper's best setting (Table V): T = 9, K = 3. This is the default.
    pub const PAPER: Self = Self {
        memory_frames: 9,
        topk_frames: 3,
    };
    /// The setting the released checkpoints were evaluated with (`TEST.NUM_TOPK 5`): T = 9, K = 5.
    pub const RELEASED: Self = Self {
        memory_frames: 9,
        topk_frames: 5,
    };

    /// Checks that the configuration can run.
    pub fn validate(&self) -> Result<()> {
        if self.memory_frames == 0 {
            return Err(MatchError::Config(
                "the memory must hold at least one frame".into(),
            ));
        }
        if self.topk_frames == 0 {
            return Err(MatchError::Config(
                "K (top-K frames) must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Default for MatchConfig {
    fn default() -> Self {
        Self::PAPER
    }
}

/// Which matching strategy to run; [`Strategy::build`] makes the matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// CLIP-VIS temporal top-K enhanced matching.
    TopK(MatchConfig),
    /// MinVIS: previous frame only.
    Adjacent,
    /// OV2Seg-style: all previous frames aggregated.
    LongTerm,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::TopK(MatchConfig::default())
    }
}

impl Strategy {
    /// A fresh matcher of this strategy.
    pub fn build(self) -> Result<Box<dyn TemporalMatcher + Send>> {
        Ok(match self {
            Strategy::TopK(config) => Box::new(TopKMatcher::new(config)?),
            Strategy::Adjacent => Box::new(AdjacentMatcher::new()),
            Strategy::LongTerm => Box::new(LongTermMatcher::new()),
        })
    }
}

/// The identity permutation of `n` queries.
pub(crate) fn identity(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Applies `perm` (`perm[track] = query`) to the rows of a row-major `[queries, width]` array.
pub fn permute_rows<T: Copy>(rows: &[T], width: usize, perm: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(perm.len() * width);
    for &query in perm {
        out.extend_from_slice(&rows[query * width..(query + 1) * width]);
    }
    out
}
