//! The built-in demo: the whole CLIP path on a tiny model with seeded random weights.
//!
//! It needs no file and no network, so it runs on a fresh machine right after `git clone`:
//! it synthesises a picture, tokenizes and encodes prompts with the real tokenizer and the 14
//! ViLD templates, runs the image tower (multi-scale maps, global embedding, mask-pooled dense
//! embeddings) and classifies. The weights are random, so the probabilities mean nothing; the
//! demo shows that the machinery works and what a real run prints.

use crate::error::Result;
use crate::ZeroShot;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use clip_vis_clip::config::{ClipConfig, ConvNextConfig, TextActivation, TextConfig, VisionConfig};
use clip_vis_clip::preprocess::{normalize_and_pad, RgbImage};
use clip_vis_clip::weights::{SyntheticFill, TensorStore};
use clip_vis_clip::zero_shot::{Templates, TextClassifier};
use clip_vis_clip::Clip;

/// Seed of the demo model's weights.
pub const DEMO_SEED: u64 = 2024;

/// A ConvNeXt CLIP small enough to build in a blink, with the real 49408-token vocabulary.
pub fn tiny_config() -> ClipConfig {
    ClipConfig {
        name: "tiny-demo".into(),
        embed_dim: 64,
        vision: VisionConfig::Convnext(ConvNextConfig {
            depths: [1, 1, 2, 1],
            dims: [16, 32, 64, 128],
            image_size: 128,
        }),
        text: TextConfig {
            context_length: 77,
            vocab_size: 49408,
            width: 64,
            heads: 4,
            layers: 2,
            activation: TextActivation::Gelu,
        },
    }
}

/// The tiny model with seeded random weights.
pub fn tiny_model<B: Backend>(device: &B::Device) -> Result<Clip<B>> {
    let store = TensorStore::synthetic(SyntheticFill::Random(DEMO_SEED));
    Ok(Clip::load(&store, &tiny_config(), device)?)
}

/// A 200x150 picture: a sky-to-grass gradient with a red disc and a blue square.
pub fn synthetic_picture() -> RgbImage {
    let (width, height) = (200usize, 150usize);
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let (dx, dy) = (x as f32 - 60.0, y as f32 - 70.0);
            let rgb = if dx * dx + dy * dy < 900.0 {
                [220, 30, 40]
            } else if (120..170).contains(&x) && (40..90).contains(&y) {
                [30, 60, 210]
            } else if y < 100 {
                [120, 170, (255 - y) as u8]
            } else {
                [40, 150, 60]
            };
            pixels.extend_from_slice(&rgb);
        }
    }
    RgbImage::new(width, height, pixels).expect("consistent size")
}

/// What the demo computed.
#[derive(Debug)]
pub struct DemoReport {
    /// Zero-shot result over the labels.
    pub zero_shot: ZeroShot,
    /// `[channels, height, width]` of `res2..res5` on the padded picture.
    pub feature_shapes: Vec<[usize; 3]>,
    /// Shape of the mask-pooled embeddings `[masks, embed_dim]`.
    pub dense_shape: [usize; 2],
}

/// Runs the tiny model on the synthetic picture with `labels`.
pub fn run<B: Backend>(labels: &[&str], device: &B::Device) -> Result<DemoReport> {
    let clip = tiny_model::<B>(device)?;
    let classifier = TextClassifier::new(&clip, labels, Templates::Vild)?;
    let picture = synthetic_picture();
    let zero_shot = crate::zero_shot_rgb(&clip, &classifier, &picture)?;

    // The dense path on the full picture: one mask per quadrant of the stride-32 grid.
    let features = clip.features(normalize_and_pad::<B>(&picture, device));
    let feature_shapes = [
        &features.res2,
        &features.res3,
        &features.res4,
        &features.res5,
    ]
    .map(|t| {
        let [_, c, h, w] = t.dims();
        [c, h, w]
    })
    .to_vec();
    let [_, _, h, w] = features.res5.dims();
    let mut masks = Vec::with_capacity(4 * h * w);
    for quadrant in 0..4 {
        for y in 0..h {
            for x in 0..w {
                masks.push((y * 2 / h.max(1)) * 2 + (x * 2 / w.max(1)) == quadrant);
            }
        }
    }
    let masks = Tensor::<B, 3, Bool>::from_data(TensorData::new(masks, [4, h, w]), device);
    let dense = clip.embed_masks(features.res5, masks)?;
    Ok(DemoReport {
        zero_shot,
        feature_shapes,
        dense_shape: dense.dims(),
    })
}
