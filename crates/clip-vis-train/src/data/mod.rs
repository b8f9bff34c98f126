//! Training data: instance datasets on disk (LVIS v1 and COCO instance json, YouTube-VIS video
//! json), reduced to what CLIP-VIS trains on, class-agnostic instance masks (SPEC §5).
//!
//! A dataset is a list of records; a record turns into one picture with its instances when it
//! is drawn ([`TrainSource::pick`]: a video picks one of its frames, SPEC §1 "video
//! fine-tune"). Category ids are kept only for repeat-factor sampling.
//!
//! Records that cannot be used (a polygon with fewer than 3 points, an annotation of a category
//! the file does not list, a mask of the wrong size) are an error naming the record, or, with
//! [`BadRecords::Skip`], dropped and counted in the [`DatasetReport`]: never dropped silently.

mod coco;
mod image_file;
mod ytvis;

pub use coco::{InstanceDataset, InstanceOptions};
pub use image_file::read_image;
pub use ytvis::VideoDataset;

use std::path::{Path, PathBuf};

use crate::rng::Rng;

/// What to do with a record that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRecords {
    /// Stop with an error naming the record (the default).
    #[default]
    Error,
    /// Drop it, count it in the report, and go on.
    Skip,
}

/// What opening a dataset kept and dropped, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DatasetReport {
    /// Records (pictures or videos) kept.
    pub records: usize,
    /// Instances kept.
    pub instances: usize,
    /// Crowd annotations dropped (CLIP-VIS never trains on them).
    pub crowd: usize,
    /// Annotations of rare LVIS categories dropped (`norare`).
    pub rare: usize,
    /// Pictures dropped because no instance was left (`FILTER_EMPTY_ANNOTATIONS`).
    pub empty: usize,
    /// Polygons with fewer than 3 points (or an odd coordinate count) skipped.
    pub bad_polygons: usize,
    /// Annotations naming a category the file does not list, skipped.
    pub unknown_categories: usize,
    /// Annotations without a usable mask (none, wrong size, corrupt RLE), skipped.
    pub bad_masks: usize,
}

impl DatasetReport {
    /// Records and instances skipped as unusable (not the crowd, rare and empty drops, which
    /// the method asks for).
    pub fn skipped(&self) -> usize {
        self.bad_polygons + self.unknown_categories + self.bad_masks
    }
}

/// One instance's mask as the dataset stores it, at the record's size.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceMask {
    /// Polygons `[x0, y0, x1, y1, ...]` in pixels (LVIS, COCO); their union is the mask.
    Polygons(Vec<Vec<f64>>),
    /// A run-length encoding (YouTube-VIS, COCO RLE annotations).
    Rle(hotcoco::Rle),
}

/// A picture to train on: its file, its size as the json records it, and its instances.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// The image (or frame) file.
    pub file: PathBuf,
    /// Width recorded in the json (the decoded image must have it).
    pub width: u32,
    /// Height recorded in the json.
    pub height: u32,
    /// The class-agnostic instances.
    pub instances: Vec<InstanceMask>,
}

/// A dataset the loader can draw from.
pub trait TrainSource: Send + Sync {
    /// The dataset json, for messages.
    fn path(&self) -> &Path;
    /// Number of records.
    fn len(&self) -> usize;
    /// Whether there are no records.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The distinct category ids of record `index` (for repeat-factor sampling).
    fn categories(&self, index: usize) -> &[u64];
    /// The picture record `index` gives for a draw from `rng` (a video picks a frame; a
    /// picture ignores `rng`).
    fn pick(&self, index: usize, rng: &mut Rng) -> ImageRecord;
    /// What opening the dataset kept and dropped.
    fn report(&self) -> &DatasetReport;
}

/// One annotation's mask in a `height` x `width` picture (or frame), checked: polygons need an
/// even coordinate count of at least 6 (3 points) and finite values, an RLE must have the
/// picture's size and decode. `Ok(None)`: unusable and skipped (`skip`), counted in `report`;
/// `Err`: what is wrong, for the caller to prefix with the annotation it came from.
pub(crate) fn instance_mask(
    segmentation: Option<&hotcoco::Segmentation>,
    height: u32,
    width: u32,
    skip: bool,
    report: &mut DatasetReport,
) -> std::result::Result<Option<InstanceMask>, String> {
    use hotcoco::Segmentation;
    match segmentation {
        Some(Segmentation::Polygon(polygons)) => {
            let usable = |p: &Vec<f64>| {
                p.len() >= 6 && p.len().is_multiple_of(2) && p.iter().all(|v| v.is_finite())
            };
            let bad: Vec<usize> = (0..polygons.len())
                .filter(|&i| !usable(&polygons[i]))
                .collect();
            if let (Some(&first), false) = (bad.first(), skip) {
                return Err(format!(
                    "polygon {first} has {} coordinates; a polygon needs an even count of at least 6 (3 points), all finite",
                    polygons[first].len()
                ));
            }
            report.bad_polygons += bad.len();
            let kept: Vec<Vec<f64>> = polygons.iter().filter(|p| usable(p)).cloned().collect();
            Ok((!kept.is_empty()).then_some(InstanceMask::Polygons(kept)))
        }
        Some(
            segmentation @ (Segmentation::CompressedRle { size, .. }
            | Segmentation::UncompressedRle { size, .. }),
        ) => {
            let rle = (*size == [height, width])
                .then(|| segmentation.to_rle(height, width).ok())
                .flatten();
            match rle {
                Some(rle) => Ok(Some(InstanceMask::Rle(rle))),
                None if skip => {
                    report.bad_masks += 1;
                    Ok(None)
                }
                None => Err(format!(
                    "the RLE is {}x{} or corrupt, the picture is {height}x{width}",
                    size[0], size[1]
                )),
            }
        }
        _ if skip => {
            report.bad_masks += 1;
            Ok(None)
        }
        _ => Err("no polygon or RLE segmentation".into()),
    }
}
