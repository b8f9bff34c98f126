//! The prompt-ensemble text classifier of CLIP-VIS (SPEC §2) and zero-shot image labelling.
//!
//! Each category name is split on commas into synonyms; every synonym is put into each
//! template, the prompts are encoded and L2-normalised, averaged over templates and normalised
//! again, giving one vector per synonym. A category's logit is the largest of its synonyms'
//! (`logit_scale · cos`).

use crate::error::{ClipError, Result};
use crate::model::Clip;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The 14 ViLD templates, verbatim from `zwq456/CLIP-VIS:clipvis/clipvis_video.py`.
pub const VILD_TEMPLATES: [&str; 14] = [
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
];

/// Prompts are encoded in chunks of this many, as the reference does (bounds memory only).
const ENCODE_BATCH: usize = 128;

/// Which prompt templates to ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Templates {
    /// The 14 ViLD templates CLIP-VIS uses.
    #[default]
    Vild,
    /// Only `"a photo of a {}."`.
    Single,
}

impl Templates {
    /// The template strings, `{}` marking the name.
    pub fn strings(self) -> &'static [&'static str] {
        match self {
            Templates::Vild => &VILD_TEMPLATES,
            Templates::Single => &VILD_TEMPLATES[..1],
        }
    }
}

/// Splits category names into synonyms as CLIP-VIS does (`", "` → `","`, then split on `,`).
/// Names are used verbatim otherwise (LV-VIS keeps its underscores). Returns, per category,
/// its synonyms; an empty or whitespace-only name or synonym is an error naming it.
pub fn split_synonyms<S: AsRef<str>>(names: &[S]) -> Result<Vec<Vec<String>>> {
    if names.is_empty() {
        return Err(ClipError::InvalidInput("the vocabulary is empty".into()));
    }
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let name = name.as_ref();
            let synonyms: Vec<String> = name
                .replace(", ", ",")
                .split(',')
                .map(str::to_string)
                .collect();
            if synonyms.iter().any(|s| s.trim().is_empty()) {
                return Err(ClipError::InvalidInput(format!(
                    "vocabulary entry {} ({name:?}) is empty or has an empty synonym",
                    index + 1
                )));
            }
            Ok(synonyms)
        })
        .collect()
}

/// A text classifier: one normalised embedding per synonym and the category of each.
#[derive(Debug, Clone)]
pub struct TextClassifier<B: Backend> {
    /// `[num_synonyms, embed_dim]`, unit norm.
    pub embeddings: Tensor<B, 2>,
    /// Category index of each synonym row.
    pub category_of: Vec<usize>,
    /// Number of categories.
    pub num_categories: usize,
}

impl<B: Backend> TextClassifier<B> {
    /// Builds the classifier for `names` with `templates`.
    pub fn new<S: AsRef<str>>(clip: &Clip<B>, names: &[S], templates: Templates) -> Result<Self> {
        Self::from_synonyms(clip, &split_synonyms(names)?, templates)
    }

    /// Builds the classifier from categories already split into synonyms (each category one or
    /// more non-empty words), e.g. a vocabulary parsed elsewhere.
    pub fn from_synonyms(
        clip: &Clip<B>,
        synonyms: &[Vec<String>],
        templates: Templates,
    ) -> Result<Self> {
        if synonyms.is_empty() || synonyms.iter().any(Vec::is_empty) {
            return Err(ClipError::InvalidInput(
                "the vocabulary is empty or has a category without words".into(),
            ));
        }
        let templates = templates.strings();
        let mut prompts = Vec::new();
        let mut category_of = Vec::new();
        for (category, words) in synonyms.iter().enumerate() {
            for word in words {
                category_of.push(category);
                prompts.extend(templates.iter().map(|t| t.replace("{}", word)));
            }
        }
        let mut encoded = Vec::new();
        for chunk in prompts.chunks(ENCODE_BATCH) {
            encoded.push(l2_normalize(clip.encode_prompts(chunk)?));
        }
        let all = Tensor::cat(encoded, 0);
        let [_, dim] = all.dims();
        let per_synonym = all
            .reshape([category_of.len(), templates.len(), dim])
            .mean_dim(1)
            .reshape([category_of.len(), dim]);
        Ok(Self {
            embeddings: l2_normalize(per_synonym),
            category_of,
            num_categories: synonyms.len(),
        })
    }

    /// Category logits `[n, num_categories]` of unnormalised embeddings `[n, embed_dim]`:
    /// `logit_scale · normalize(x) · Tᵀ`, max over each category's synonyms.
    pub fn logits(&self, embeddings: Tensor<B, 2>, logit_scale: f64) -> Tensor<B, 2> {
        let per_synonym =
            l2_normalize(embeddings).matmul(self.embeddings.clone().transpose()) * logit_scale;
        if self.category_of.len() == self.num_categories {
            return per_synonym;
        }
        // Max over synonyms: gather each category's columns.
        let [n, _] = per_synonym.dims();
        let device = per_synonym.device();
        let columns: Vec<Tensor<B, 2>> = (0..self.num_categories)
            .map(|category| {
                let indices: Vec<i64> = self
                    .category_of
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c == category)
                    .map(|(i, _)| i as i64)
                    .collect();
                let count = indices.len();
                let indices = Tensor::<B, 1, burn::tensor::Int>::from_data(
                    TensorData::new(indices, [count]),
                    &device,
                );
                per_synonym.clone().select(1, indices).max_dim(1)
            })
            .collect();
        Tensor::cat(columns, 1).reshape([n, self.num_categories])
    }
}

/// `x / max(‖x‖₂, 1e-12)` per row (PyTorch `F.normalize`).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Zero-shot labelling of one image embedding: `(logits, probabilities)` over the categories.
pub fn classify<B: Backend>(
    clip: &Clip<B>,
    classifier: &TextClassifier<B>,
    image_embedding: Tensor<B, 2>,
) -> (Vec<f32>, Vec<f32>) {
    let logits = classifier.logits(image_embedding, clip.logit_scale);
    let probs = softmax(logits.clone(), 1);
    let to_vec = |t: Tensor<B, 2>| {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default()
    };
    (to_vec(logits), to_vec(probs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synonyms_split_like_clip_vis() {
        let split = split_synonyms(&["cat", "hard drive, disk", "action_camera"]).unwrap();
        assert_eq!(split[1], vec!["hard drive", "disk"]);
        assert_eq!(split[2], vec!["action_camera"]);
        assert!(split_synonyms::<&str>(&[]).is_err());
        assert!(split_synonyms(&["cat", "  "]).is_err());
        assert!(split_synonyms(&["cat,"]).is_err());
    }
}
