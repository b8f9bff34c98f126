//! # clip-vis
//!
//! Open-vocabulary video instance segmentation (CLIP-VIS, Zhu et al., IEEE TCSVT) in pure Rust
//! on [Burn](https://burn.dev): segment every object of a video, track it and name it from any
//! list of category names given at run time. No Python, no compiled CUDA op, no detectron2.
//!
//! This facade re-exports the parts:
//! - [`clip`]: the frozen CLIP towers (OpenAI RN50, OpenCLIP ConvNeXt-B), open_clip's tokenizer,
//!   checkpoint loading and zero-shot classification.
//! - [`model`]: the assembled CLIP-VIS model (frozen CLIP, deformable-attention pixel decoder,
//!   masked-attention decoder with object, mask and IoU heads) and per-image inference.
//! - [`matching`]: temporal query matching across frames (top-K enhanced, adjacent, long-term).
//! - [`classification`]: vocabularies, CLIP text classifiers, mask pooling, the weighted score.
//! - [`video`]: the streaming [`video::VideoSession`] and the results / pictures it writes.
//! - [`train`]: training the mask generator (data, losses, optimiser, checkpoints, data parallel).
//! - [`eval`]: LV-VIS / YouTube-VIS video mask AP without a server.
//!
//! ```no_run
//! use clip_vis::backend::Cpu;
//! use clip_vis::clip::{zero_shot, Clip};
//!
//! let device = Default::default();
//! let clip = Clip::<Cpu>::from_file("RN50-openai.safetensors", Some("RN50"), &device)?;
//! let labels = ["cat", "dog", "hard drive"];
//! let classifier = zero_shot::TextClassifier::new(&clip, &labels, zero_shot::Templates::Vild)?;
//! let probabilities = clip_vis::zero_shot_image(&clip, &classifier, "cat.jpg")?;
//! # Ok::<(), clip_vis::Error>(())
//! ```

pub use clip_vis_classification as classification;
pub use clip_vis_clip as clip;
pub use clip_vis_eval as eval;
pub use clip_vis_matching as matching;
pub use clip_vis_model as model;
pub use clip_vis_train as train;
/// COCO RLE codecs (the masks of results are `hotcoco::Rle`).
pub use hotcoco;

/// The README's Rust examples, compiled as doctests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod backend;
pub mod demo;
mod error;
#[cfg(feature = "fetch")]
pub mod fetch;
pub mod image_io;
pub mod video;

pub use error::{Error, Result};

use burn::tensor::backend::Backend;
use clip::preprocess::{normalize_and_pad, resize_and_center_crop};
use clip::zero_shot::{classify, TextClassifier};
use clip::Clip;
use std::path::Path;

/// Label logits and probabilities of one zero-shot classification, in label order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ZeroShot {
    /// `logit_scale · cos(image, label)`, max over a label's synonyms.
    pub logits: Vec<f32>,
    /// Softmax of the logits over the labels.
    pub probs: Vec<f32>,
}

/// Zero-shot classification of an image file with open_clip's evaluation preprocessing
/// (bicubic resize of the short side to the model's image size, centre crop, CLIP
/// normalisation).
pub fn zero_shot_image<B: Backend>(
    clip: &Clip<B>,
    classifier: &TextClassifier<B>,
    image: impl AsRef<Path>,
) -> Result<ZeroShot> {
    let image = image_io::read_rgb(image.as_ref())?;
    zero_shot_rgb(clip, classifier, &image)
}

/// [`zero_shot_image`] on decoded pixels.
pub fn zero_shot_rgb<B: Backend>(
    clip: &Clip<B>,
    classifier: &TextClassifier<B>,
    image: &clip::preprocess::RgbImage,
) -> Result<ZeroShot> {
    let size = clip.image_size;
    let cropped = resize_and_center_crop(image, size);
    let device = classifier.embeddings.device();
    let pixels = normalize_and_pad::<B>(&cropped, &device);
    let features = clip.features(pixels);
    let embedding = clip.embed_image(features.res5)?;
    let (logits, probs) = classify(clip, classifier, embedding);
    Ok(ZeroShot { logits, probs })
}
