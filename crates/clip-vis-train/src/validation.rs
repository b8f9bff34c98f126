//! Class-agnostic mask AP of the current weights on held-out pictures: the training run's
//! evaluation hook.
//!
//! The model has no class head: each query is a detection scored, like CLIP-VIS's image score
//! without the CLIP term, by `sqrt(P_object · IoU)` (object probability from the object logits,
//! the IoU head's prediction), its mask the last prediction's logits above 0 at the picture's
//! size. Pictures are scored as one-frame videos by clip-vis's own evaluator
//! (COCO mask AP with 100 detections per picture), every instance of category "object".

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use clip_vis_clip::preprocess::RgbImage;
use clip_vis_eval::track::{rle_from_row_major, TrackMasks};
use clip_vis_eval::{evaluate, Category, GroundTruth, Protocol, Summary, Track, Video};
use clip_vis_model::ClipVis;
use hotcoco::Rle;

use crate::criterion::to_vec;
use crate::synthetic::{render_image, SynthConfig};
use crate::Result;

/// Pictures with their instance masks.
#[derive(Debug, Clone, Default)]
pub struct HeldOut {
    /// The pictures.
    pub images: Vec<RgbImage>,
    /// Per picture, its instances as COCO RLEs at the picture's size.
    pub instances: Vec<Vec<Rle>>,
}

impl HeldOut {
    /// Synthetic pictures `first..first + count` of `config` (use indices the training set
    /// does not: held out).
    pub fn synthetic(config: &SynthConfig, first: usize, count: usize) -> Result<Self> {
        let mut held = Self::default();
        for index in first..first + count {
            let sample = render_image(config, index)?;
            held.instances.push(
                sample
                    .instances
                    .iter()
                    .map(|i| rle_from_row_major(config.height, config.width, |p| i.mask[p]))
                    .collect(),
            );
            held.images.push(sample.image);
        }
        Ok(held)
    }

    /// Class-agnostic mask AP of `model` (the 12 COCO numbers; `stats[1]` is AP50).
    pub fn evaluate<B: Backend>(&self, model: &ClipVis<B>, device: &B::Device) -> Result<Summary> {
        let videos: Vec<Video> = self
            .images
            .iter()
            .enumerate()
            .map(|(i, image)| Video {
                id: i as u64 + 1,
                width: image.width as u32,
                height: image.height as u32,
                length: 1,
            })
            .collect();
        let categories = vec![Category {
            id: 1,
            name: "object".into(),
            partition: None,
        }];
        let truth: Vec<Track> = self
            .instances
            .iter()
            .enumerate()
            .flat_map(|(v, instances)| {
                instances.iter().map(move |rle| {
                    Track::new(
                        v,
                        1,
                        1.0,
                        TrackMasks::from_rles(rle.h, rle.w, vec![Some(rle.clone())]),
                    )
                })
            })
            .collect();
        let ground_truth = GroundTruth::new(videos, categories, truth)?;
        let mut detections = Vec::new();
        for (v, image) in self.images.iter().enumerate() {
            let output = model.segment_image(image, device)?;
            let last = &output.frame.decoder.last;
            let [_, queries, _] = last.object_logits.dims();
            let object =
                to_vec(softmax(last.object_logits.clone(), 2).slice([0..1, 0..queries, 0..1]));
            let ious = to_vec(last.ious.clone());
            let logits = to_vec(output.masks);
            let (w, h) = (image.width, image.height);
            for q in 0..queries {
                let score = f64::from((object[q] * ious[q]).max(0.0)).sqrt();
                let logits = &logits[q * w * h..(q + 1) * w * h];
                let rle = rle_from_row_major(h, w, |i| logits[i] > 0.0);
                detections.push(Track::new(
                    v,
                    1,
                    score,
                    TrackMasks::from_rles(h as u32, w as u32, vec![Some(rle)]),
                ));
            }
        }
        Ok(evaluate(
            &ground_truth,
            &detections,
            &Protocol::Ytvis { novel: Vec::new() },
        )
        .all)
    }
}
