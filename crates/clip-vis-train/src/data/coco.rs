//! LVIS v1 and COCO instance datasets (`lvis_v1_train(_norare)`, `coco_2017_train`).
//!
//! What detectron2 and CLIP-VIS do, re-stated (`zwq456/CLIP-VIS:clipvis/data/datasets/lvis_v1.py`,
//! `tools/remove_lvis_rare.py`, `detectron2/data/build.py`): crowd annotations are dropped;
//! `norare` drops the annotations of categories with `frequency == "r"` (the paper's LVIS
//! setting; images and categories stay in the file); pictures left without an instance are
//! filtered out (`FILTER_EMPTY_ANNOTATIONS`). LVIS names no `file_name`: the picture is the
//! `coco_url`'s `split/name.jpg` under the image folder (or `name.jpg` directly in it, when the
//! folder given is the split itself).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use super::{instance_mask, BadRecords, DatasetReport, ImageRecord, TrainSource};
use crate::rng::Rng;
use crate::{Result, TrainError};

/// How an instance json is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct InstanceOptions {
    /// Drop annotations of rare LVIS categories (`lvis_v1_train_norare`).
    pub norare: bool,
    /// What to do with unusable records.
    pub bad_records: BadRecords,
}

/// A COCO-layout instance dataset (LVIS v1 or COCO) with its pictures on disk.
#[derive(Debug, Clone)]
pub struct InstanceDataset {
    json: PathBuf,
    records: Vec<ImageRecord>,
    categories: Vec<Vec<u64>>,
    report: DatasetReport,
}

fn dataset_error(json: &Path, message: String) -> TrainError {
    TrainError::Dataset {
        file: json.to_path_buf(),
        message,
    }
}

/// The picture file of `image` under `images`.
fn image_file(
    images: &Path,
    image: &hotcoco::Image,
    split_dirs: &mut Vec<(String, bool)>,
) -> Option<PathBuf> {
    if !image.file_name.is_empty() {
        return Some(images.join(&image.file_name));
    }
    // LVIS: ".../train2017/000000391895.jpg" → images/train2017/000000391895.jpg, or
    // images/000000391895.jpg when `images` is the split folder itself.
    let url = image.coco_url.as_deref()?;
    let mut parts = url.rsplit('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let split = parts.next().unwrap_or_default().to_string();
    let has_split = match split_dirs.iter().find(|(s, _)| *s == split) {
        Some((_, has)) => *has,
        None => {
            let has = !split.is_empty() && images.join(&split).is_dir();
            split_dirs.push((split.clone(), has));
            has
        }
    };
    Some(if has_split {
        images.join(split).join(name)
    } else {
        images.join(name)
    })
}

impl InstanceDataset {
    /// Reads `json` (COCO or LVIS v1 instance annotations); pictures are under `images`.
    pub fn open(json: &Path, image_root: &Path, options: InstanceOptions) -> Result<Self> {
        let bytes = std::fs::read(json).map_err(TrainError::io(json))?;
        let dataset: hotcoco::Dataset = serde_json::from_slice(&bytes)
            .map_err(|e| dataset_error(json, format!("not a COCO/LVIS instance json: {e}")))?;
        drop(bytes);
        let skip = options.bad_records == BadRecords::Skip;
        let mut report = DatasetReport::default();
        let known: HashSet<u64> = dataset.categories.iter().map(|c| c.id).collect();
        let rare: HashSet<u64> = dataset
            .categories
            .iter()
            .filter(|c| c.frequency.as_deref() == Some("r"))
            .map(|c| c.id)
            .collect();
        let mut by_image: std::collections::HashMap<u64, Vec<&hotcoco::Annotation>> =
            std::collections::HashMap::new();
        for annotation in &dataset.annotations {
            by_image
                .entry(annotation.image_id)
                .or_default()
                .push(annotation);
        }
        let image_ids: HashSet<u64> = dataset.images.iter().map(|i| i.id).collect();
        if let Some(orphan) = dataset
            .annotations
            .iter()
            .find(|a| !image_ids.contains(&a.image_id))
        {
            return Err(dataset_error(
                json,
                format!(
                    "annotation {} names image {}, which the file does not list",
                    orphan.id, orphan.image_id
                ),
            ));
        }
        let mut pictures: Vec<&hotcoco::Image> = dataset.images.iter().collect();
        pictures.sort_by_key(|i| i.id);
        let mut split_dirs = Vec::new();
        let mut records = Vec::with_capacity(pictures.len());
        let mut categories = Vec::with_capacity(pictures.len());
        for image in pictures {
            let Some(file) = image_file(image_root, image, &mut split_dirs) else {
                return Err(dataset_error(
                    json,
                    format!("image {} has neither `file_name` nor `coco_url`", image.id),
                ));
            };
            let mut instances = Vec::new();
            let mut classes = BTreeSet::new();
            for annotation in by_image
                .get(&image.id)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let what = || format!("annotation {} (image {})", annotation.id, image.id);
                if annotation.iscrowd {
                    report.crowd += 1;
                    continue;
                }
                if !known.contains(&annotation.category_id) {
                    if skip {
                        report.unknown_categories += 1;
                        continue;
                    }
                    return Err(dataset_error(
                        json,
                        format!(
                            "{}: category {} is not in the file's categories (use skip to drop such annotations)",
                            what(),
                            annotation.category_id
                        ),
                    ));
                }
                if options.norare && rare.contains(&annotation.category_id) {
                    report.rare += 1;
                    continue;
                }
                let mask = instance_mask(
                    annotation.segmentation.as_ref(),
                    image.height,
                    image.width,
                    skip,
                    &mut report,
                )
                .map_err(|message| dataset_error(json, format!("{}: {message}", what())))?;
                let Some(mask) = mask else { continue };
                classes.insert(annotation.category_id);
                instances.push(mask);
            }
            if instances.is_empty() {
                report.empty += 1;
                continue;
            }
            report.instances += instances.len();
            records.push(ImageRecord {
                file,
                width: image.width,
                height: image.height,
                instances,
            });
            categories.push(classes.into_iter().collect());
        }
        report.records = records.len();
        if records.is_empty() {
            return Err(dataset_error(
                json,
                format!(
                    "no picture with a usable instance ({} images, {} annotations: {} crowd, {} rare, {} skipped)",
                    dataset.images.len(),
                    dataset.annotations.len(),
                    report.crowd,
                    report.rare,
                    report.skipped()
                ),
            ));
        }
        Ok(Self {
            json: json.to_path_buf(),
            records,
            categories,
            report,
        })
    }

    /// The kept records, in image-id order.
    pub fn records(&self) -> &[ImageRecord] {
        &self.records
    }
}

impl TrainSource for InstanceDataset {
    fn path(&self) -> &Path {
        &self.json
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn categories(&self, index: usize) -> &[u64] {
        &self.categories[index]
    }

    fn pick(&self, index: usize, _rng: &mut Rng) -> ImageRecord {
        self.records[index].clone()
    }

    fn report(&self) -> &DatasetReport {
        &self.report
    }
}
