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
use clip_vis_clip::config::ClipConfig;
use clip_vis_clip::preprocess::{normalize_and_pad, RgbImage};
use clip_vis_clip::weights::{SyntheticFill, TensorStore};
use clip_vis_clip::zero_shot::{Templates, TextClassifier};
use clip_vis_clip::Clip;

/// Seed of the demo model's weights.
pub const DEMO_SEED: u64 = 2024;

/// The tiny CLIP of the demo ([`ClipConfig::tiny`]).
pub fn tiny_config() -> ClipConfig {
    ClipConfig::tiny()
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

/// The tiny CLIP-VIS of the demo ([`clip_vis_model::ClipVisConfig::tiny`]).
pub fn tiny_video_config() -> clip_vis_model::ClipVisConfig {
    clip_vis_model::ClipVisConfig::tiny()
}

/// The tiny video model's weights: every tensor [`tiny_video_model`] reads, seeded.
pub fn tiny_video_store() -> TensorStore {
    TensorStore::synthetic(SyntheticFill::Random(DEMO_SEED))
}

/// The tiny CLIP-VIS model with seeded random weights.
pub fn tiny_video_model<B: Backend>(device: &B::Device) -> Result<clip_vis_model::ClipVis<B>> {
    let store = tiny_video_store();
    Ok(clip_vis_model::ClipVis::load(
        &store,
        &tiny_video_config(),
        device,
    )?)
}

/// Any CLIP-VIS architecture with seeded random weights (the demo's full-size presets).
pub fn random_model<B: Backend>(
    config: &clip_vis_model::ClipVisConfig,
    device: &B::Device,
) -> Result<clip_vis_model::ClipVis<B>> {
    Ok(clip_vis_model::ClipVis::load(
        &tiny_video_store(),
        config,
        device,
    )?)
}

/// Writes the tiny video model as a converted clip-vis weights file (what `weights-convert`
/// produces), for `clip-vis segment --weights` in tests and benchmarks.
pub fn write_tiny_video_weights(path: &std::path::Path) -> Result<()> {
    use std::collections::HashMap;
    let store = tiny_video_store();
    let config = tiny_video_config();
    clip_vis_model::ClipVis::<crate::backend::Cpu>::load(&store, &config, &Default::default())?;
    let metadata = HashMap::from([(
        clip_vis_model::CONFIG_METADATA_KEY.to_string(),
        config.to_json(),
    )]);
    store.save_requested(path, clip_vis_clip::weights::SaveDtype::F32, metadata)?;
    Ok(())
}

/// Frame `index` of a synthetic video: a drifting gradient with a red disc moving right, a
/// blue square moving down and a yellow bar that leaves the picture for a while.
pub fn synthetic_frame(index: usize, width: usize, height: usize) -> RgbImage {
    let t = index as f32;
    let (w, h) = (width as f32, height as f32);
    let disc = (w * (0.2 + 0.01 * t) % w, h * 0.45, h * 0.15);
    let square = (w * 0.65, (h * (0.2 + 0.012 * t)) % h, h * 0.12);
    let bar_visible = (index / 10) % 3 != 1;
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let (fx, fy) = (x as f32, y as f32);
            let rgb = if (fx - disc.0).powi(2) + (fy - disc.1).powi(2) < disc.2 * disc.2 {
                [220, 30, 40]
            } else if (fx - square.0).abs() < square.2 && (fy - square.1).abs() < square.2 {
                [30, 60, 210]
            } else if bar_visible && fy > h * 0.8 && fy < h * 0.88 && fx > w * 0.1 && fx < w * 0.5 {
                [230, 200, 40]
            } else {
                let shade = ((fx + fy + 2.0 * t) % 64.0) as u8;
                [100 + shade, 150, 120 + shade / 2]
            };
            pixels.extend_from_slice(&rgb);
        }
    }
    RgbImage::new(width, height, pixels).expect("consistent size")
}

/// Seed of the demo model's frozen tiny CLIP ([`ClipWeights::Seeded`](clip_vis_train::ClipWeights)).
pub const DEMO_CLIP_SEED: u64 = DEMO_SEED;

/// The demo model's decoders, trained with clip-vis on synthetic shapes (the exact commands are
/// in `assets/demo/README.md`): `sem_seg_head.*` tensors of [`ClipVisConfig::tiny`](clip_vis_model::ClipVisConfig::tiny).
pub const DEMO_DECODERS: &[u8] = include_bytes!("../assets/demo/decoders.safetensors");

/// The trained demo model's weights: the seeded tiny CLIP and the embedded decoders, under the
/// detectron2 names of a CLIP-VIS file.
pub fn demo_store() -> Result<TensorStore> {
    use clip_vis_clip::model::CLIP_VIS_PREFIX;
    let config = clip_vis_model::ClipVisConfig::tiny();
    let clip = clip_vis_train::ClipWeights::Seeded {
        seed: DEMO_CLIP_SEED,
    };
    let mut sink = clip_vis_clip::TensorSink::new();
    sink.put_store(
        &clip_vis_train::clip_store(&clip, &config)?,
        CLIP_VIS_PREFIX,
    )?;
    let decoders = TensorStore::from_bytes("<embedded demo decoders>", DEMO_DECODERS)?;
    sink.put_store(&decoders, "")?;
    Ok(sink.into_store("<demo model>", clip_vis_model::weights_metadata(&config)))
}

/// The trained demo model (tiny CLIP-VIS whose mask generator was trained on synthetic shapes;
/// its CLIP is random, so its category names mean nothing, its masks and tracks do).
pub fn demo_model<B: Backend>(device: &B::Device) -> Result<clip_vis_model::ClipVis<B>> {
    let store = demo_store()?;
    let model =
        clip_vis_model::ClipVis::load(&store, &clip_vis_model::ClipVisConfig::tiny(), device)?;
    store.ensure_all_used()?;
    Ok(model)
}

/// Writes the demo model as a clip-vis weights file (for `clip-vis segment --weights`).
pub fn write_demo_model(path: &std::path::Path) -> Result<()> {
    let store = demo_store()?;
    clip_vis_clip::weights::save_safetensors(
        path,
        &store.parameters(),
        clip_vis_clip::weights::SaveDtype::F32,
        store.metadata().clone(),
    )?;
    Ok(())
}

/// Class-agnostic video mask AP of `video`'s tracks against the YouTube-VIS-layout ground truth
/// in `ground_truth` (video id `video_id`): every category counts as one, and each track
/// (query) is one detection with the score of its best (track, category) pair. This measures
/// what the mask generator and the temporal matching do, whatever the vocabulary.
pub fn class_agnostic_video_ap(
    ground_truth: &std::path::Path,
    video_id: u64,
    video: &mut crate::video::FinishedVideo,
) -> Result<clip_vis_eval::Summary> {
    use clip_vis_eval::track::TrackMasks;
    use clip_vis_eval::{Category, GroundTruth, Protocol, Track};
    let truth = GroundTruth::from_file(ground_truth)?;
    let object = vec![Category {
        id: 1,
        name: "object".into(),
        partition: None,
    }];
    let tracks = truth
        .tracks
        .iter()
        .cloned()
        .map(|mut t| {
            t.category_id = 1;
            t
        })
        .collect();
    let truth = GroundTruth::new(truth.videos.clone(), object, tracks)?;
    let index = truth.video_index(video_id).ok_or_else(|| {
        crate::Error::Usage(format!("{}: no video {video_id}", ground_truth.display()))
    })?;
    let (h, w) = video.size;
    let mut seen = std::collections::HashSet::new();
    let mut detections = Vec::new();
    for k in 0..video.tracks.len() {
        // Tracks come best first: a query's first pair is its best.
        if !seen.insert(video.tracks[k].query) {
            continue;
        }
        let masks = (0..video.frames)
            .map(|f| video.mask(k, f).map(Some))
            .collect::<Result<Vec<_>>>()?;
        detections.push(Track::new(
            index,
            1,
            f64::from(video.tracks[k].score),
            TrackMasks::from_rles(h, w, masks),
        ));
    }
    Ok(clip_vis_eval::evaluate(&truth, &detections, &Protocol::Ytvis { novel: Vec::new() }).all)
}
