//! Naming the tracks: open vocabularies, text classifiers, CLIP mask pooling and the weighted
//! video score of CLIP-VIS (SPEC §2, §6.3–6.5).
//!
//! - [`Vocabulary`]: the categories a user types (a list, a text file, a dataset json or a
//!   built-in dataset), validated and split into synonyms.
//! - [`ClassifierCache`]: text classifiers built once per vocabulary and prompt set.
//! - [`frame_class_logits`]: one frame's per-query class logits, pooled from the dense CLIP map
//!   under each predicted mask.
//! - [`scoring`]: the host-side video score `sqrt(mean_t sqrt(P_t · IoU_t) · P_obj)`, the top-k
//!   (query, class) pairs, per-frame pruning and mask scores, exactly as the released code.

mod pooling;
pub mod scoring;
mod vocabulary;

pub use pooling::{frame_class_logits, ClassifierCache};
pub use scoring::{MaskStats, ScoreWeights, TopPair, VideoScores};
pub use vocabulary::{BuiltinVocabulary, Category, Vocabulary, VocabularyError};
