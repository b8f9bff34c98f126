//! Per-frame open-vocabulary logits: text classifiers and CLIP mask pooling (SPEC §2, §6.4).

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_vis_clip::nn::resize_bilinear;
use clip_vis_clip::zero_shot::{Templates, TextClassifier};
use clip_vis_clip::{Clip, Result};

use crate::Vocabulary;

/// Text classifiers, built once per (vocabulary, templates): encoding 1196 categories × 14
/// prompts is the most expensive step of a short video, and a session reuses it.
#[derive(Debug)]
pub struct ClassifierCache<B: Backend> {
    entries: HashMap<(Vec<Vec<String>>, Templates), TextClassifier<B>>,
}

impl<B: Backend> Default for ClassifierCache<B> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<B: Backend> ClassifierCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The classifier of `vocabulary` with `templates`, built on first use.
    pub fn get(
        &mut self,
        clip: &Clip<B>,
        vocabulary: &Vocabulary,
        templates: Templates,
    ) -> Result<&TextClassifier<B>> {
        let key = (vocabulary.synonyms(), templates);
        if !self.entries.contains_key(&key) {
            let classifier = TextClassifier::from_synonyms(clip, &key.0, templates)?;
            self.entries.insert(key.clone(), classifier);
        }
        Ok(&self.entries[&key])
    }

    /// Number of cached classifiers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One frame's class logits `[queries, categories]`: every query's stride-4 mask logits
/// `[queries, h, w]` are resized bilinearly (`align_corners=False`) to the dense CLIP map `res5`
/// `[1, C, H/32, W/32]`, binarised at `> 0`, and CLIP pools an embedding under each mask; the
/// logits are `min(exp(logit_scale), 100) · cos(embedding, text)`, max over synonyms. Queries
/// whose mask covers no cell get all-zero logits on RN50 (the reference sets them so) and the
/// projected norm bias on ConvNeXt (what the reference computes).
pub fn frame_class_logits<B: Backend>(
    clip: &Clip<B>,
    classifier: &TextClassifier<B>,
    res5: Tensor<B, 4>,
    mask_logits: Tensor<B, 3>,
) -> Result<Tensor<B, 2>> {
    let [_, _, height, width] = res5.dims();
    let [queries, mask_h, mask_w] = mask_logits.dims();
    let resized = resize_bilinear(
        mask_logits.reshape([1, queries, mask_h, mask_w]),
        [height, width],
    )
    .reshape([queries, height, width]);
    let embeddings = clip.embed_masks(res5, resized.greater_elem(0.0))?;
    Ok(classifier.logits(embeddings, clip.logit_scale))
}
