//! YouTube-VIS 2019 / 2021 video datasets for the single-frame fine-tune (SPEC §1, §5: COCO
//! model fine-tuned on `ytvis_2019_train` with `SAMPLING_FRAME_NUM 1`).
//!
//! Each draw picks one frame uniformly over the whole video (`random.randrange(length)` in
//! `zwq456/CLIP-VIS:clipvis/data_video/dataset_mapper.py`); the instances are the annotations
//! with a mask in that frame (a `null` entry means the object is absent there). Frames without
//! instances are kept, as the video loader keeps them (`FILTER_EMPTY_ANNOTATIONS False`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use hotcoco::Segmentation;
use serde::Deserialize;

use super::{instance_mask, BadRecords, DatasetReport, ImageRecord, InstanceMask, TrainSource};
use crate::rng::Rng;
use crate::{Result, TrainError};

#[derive(Deserialize)]
struct RawDataset {
    videos: Vec<RawVideo>,
    #[serde(default)]
    annotations: Vec<RawAnnotation>,
    categories: Vec<RawCategory>,
}

#[derive(Deserialize)]
struct RawVideo {
    id: u64,
    width: u32,
    height: u32,
    file_names: Vec<String>,
}

#[derive(Deserialize)]
struct RawCategory {
    id: u64,
}

#[derive(Deserialize)]
struct RawAnnotation {
    #[serde(default)]
    id: Option<u64>,
    video_id: u64,
    category_id: u64,
    #[serde(default)]
    iscrowd: Option<serde_json::Value>,
    segmentations: Vec<Option<Segmentation>>,
}

/// One video: its frame files and, per frame, the instances present.
#[derive(Debug, Clone)]
struct VideoRecord {
    width: u32,
    height: u32,
    frames: Vec<PathBuf>,
    instances: Vec<Vec<InstanceMask>>,
}

/// A YouTube-VIS-layout video dataset with its frames on disk.
#[derive(Debug, Clone)]
pub struct VideoDataset {
    json: PathBuf,
    videos: Vec<VideoRecord>,
    categories: Vec<Vec<u64>>,
    report: DatasetReport,
}

fn truthy(value: &Option<serde_json::Value>) -> bool {
    match value {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Number(n)) => n.as_f64().is_some_and(|v| v != 0.0),
        _ => false,
    }
}

impl VideoDataset {
    /// Reads `json` (YouTube-VIS 2019/2021 layout); frames are `frames_root/<file_names[i]>`.
    pub fn open(json: &Path, frames_root: &Path, bad_records: BadRecords) -> Result<Self> {
        let error = |message: String| TrainError::Dataset {
            file: json.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(json).map_err(TrainError::io(json))?;
        let raw: RawDataset = serde_json::from_slice(&bytes)
            .map_err(|e| error(format!("not a YouTube-VIS json: {e}")))?;
        let skip = bad_records == BadRecords::Skip;
        let known: BTreeSet<u64> = raw.categories.iter().map(|c| c.id).collect();
        let mut report = DatasetReport::default();
        let mut order: Vec<usize> = (0..raw.videos.len()).collect();
        order.sort_by_key(|&v| raw.videos[v].id);
        let index: HashMap<u64, usize> = order
            .iter()
            .enumerate()
            .map(|(i, &v)| (raw.videos[v].id, i))
            .collect();
        let mut videos: Vec<VideoRecord> = order
            .iter()
            .map(|&v| {
                let video = &raw.videos[v];
                VideoRecord {
                    width: video.width,
                    height: video.height,
                    frames: video
                        .file_names
                        .iter()
                        .map(|f| frames_root.join(f))
                        .collect(),
                    instances: vec![Vec::new(); video.file_names.len()],
                }
            })
            .collect();
        if let Some(v) = videos.iter().position(|v| v.frames.is_empty()) {
            return Err(error(format!(
                "video {} has no frames",
                raw.videos[order[v]].id
            )));
        }
        let mut categories = vec![BTreeSet::new(); videos.len()];
        for (a, annotation) in raw.annotations.iter().enumerate() {
            let what = format!("annotation {}", annotation.id.unwrap_or(a as u64 + 1));
            let Some(&v) = index.get(&annotation.video_id) else {
                return Err(error(format!(
                    "{what} names video {}, which the file does not list",
                    annotation.video_id
                )));
            };
            if truthy(&annotation.iscrowd) {
                report.crowd += 1;
                continue;
            }
            if !known.contains(&annotation.category_id) {
                if skip {
                    report.unknown_categories += 1;
                    continue;
                }
                return Err(error(format!(
                    "{what}: category {} is not in the file's categories (use skip to drop such annotations)",
                    annotation.category_id
                )));
            }
            let video = &mut videos[v];
            if annotation.segmentations.len() != video.frames.len() {
                if skip {
                    report.bad_masks += 1;
                    continue;
                }
                return Err(error(format!(
                    "{what}: {} segmentations for a video of {} frames",
                    annotation.segmentations.len(),
                    video.frames.len()
                )));
            }
            let mut present = false;
            for (f, segmentation) in annotation.segmentations.iter().enumerate() {
                if segmentation.is_none() {
                    continue; // not in this frame
                }
                let mask = instance_mask(
                    segmentation.as_ref(),
                    video.height,
                    video.width,
                    skip,
                    &mut report,
                )
                .map_err(|message| error(format!("{what}, frame {f}: {message}")))?;
                let Some(mask) = mask else { continue };
                video.instances[f].push(mask);
                report.instances += 1;
                present = true;
            }
            if present {
                categories[v].insert(annotation.category_id);
            }
        }
        if videos.is_empty() {
            return Err(error("no videos".into()));
        }
        report.records = videos.len();
        Ok(Self {
            json: json.to_path_buf(),
            videos,
            categories: categories
                .into_iter()
                .map(|c| c.into_iter().collect())
                .collect(),
            report,
        })
    }
}

impl TrainSource for VideoDataset {
    fn path(&self) -> &Path {
        &self.json
    }

    fn len(&self) -> usize {
        self.videos.len()
    }

    fn categories(&self, index: usize) -> &[u64] {
        &self.categories[index]
    }

    fn pick(&self, index: usize, rng: &mut Rng) -> ImageRecord {
        let video = &self.videos[index];
        let frame = rng.below(video.frames.len());
        ImageRecord {
            file: video.frames[frame].clone(),
            width: video.width,
            height: video.height,
            instances: video.instances[frame].clone(),
        }
    }

    fn report(&self) -> &DatasetReport {
        &self.report
    }
}
