//! Ground truth and results in the YouTube-VIS / LV-VIS json layout.
//!
//! Ground truth: `{"videos": [{"id", "width", "height", "length"}], "annotations": [{"id",
//! "video_id", "category_id", "segmentations": [per frame], "iscrowd"}], "categories": [{"id",
//! "name", "partition"}]}`. Results: `[{"video_id", "category_id", "score", "segmentations"}]`.
//! A per-frame segmentation is a COCO RLE (`counts` as a compressed string or a list of run
//! lengths), a list of polygons, or `null` (no mask in that frame).

use crate::error::{EvalError, Result};
use crate::track::TrackMasks;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// A video of the ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Video id.
    pub id: u64,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Number of frames.
    pub length: usize,
}

/// A category, with its LV-VIS partition (0, 1 = base; 2, 3 = novel) when the file gives one.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// Category id (need not be contiguous).
    pub id: u64,
    /// Name.
    pub name: String,
    /// LV-VIS partition.
    pub partition: Option<u8>,
}

/// A ground-truth or detected track.
#[derive(Debug, Clone)]
pub struct Track {
    /// Index of the video in [`GroundTruth::videos`].
    pub video: usize,
    /// Category id.
    pub category_id: u64,
    /// Detection score (1 for ground truth).
    pub score: f64,
    /// Crowd region (ground truth only).
    pub iscrowd: bool,
    /// Per-frame masks.
    pub masks: TrackMasks,
    /// Per-frame areas the evaluators bin by: the ground truth's json `areas` when given (the
    /// Python tools read them from there, not from the masks), else the mask areas.
    pub areas: Vec<Option<f64>>,
}

impl Track {
    /// A track in video `video` (an index into [`GroundTruth::videos`]) whose areas are its
    /// masks' areas: ground truth (score 1) or a detection built in memory.
    pub fn new(video: usize, category_id: u64, score: f64, masks: TrackMasks) -> Self {
        let areas = masks
            .areas()
            .into_iter()
            .map(|a| a.map(|a| a as f64))
            .collect();
        Self {
            video,
            category_id,
            score,
            iscrowd: false,
            masks,
            areas,
        }
    }

    /// Mean of the non-zero per-frame areas (the Python tools filter `if a`), 0 when there are
    /// none. `truncate`: LV-VIS's evaluator takes `int(a)` of each area first.
    pub fn mean_area(&self, truncate: bool) -> f64 {
        let areas: Vec<f64> = self
            .areas
            .iter()
            .flatten()
            .filter(|&&a| a != 0.0)
            .map(|&a| if truncate { a.trunc() } else { a })
            .collect();
        if areas.is_empty() {
            0.0
        } else {
            areas.iter().sum::<f64>() / areas.len() as f64
        }
    }
}

/// A parsed ground-truth file.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    /// Videos in file order.
    pub videos: Vec<Video>,
    /// Categories in file order.
    pub categories: Vec<Category>,
    /// Annotated tracks.
    pub tracks: Vec<Track>,
    video_index: HashMap<u64, usize>,
}

#[derive(Deserialize)]
struct RawGroundTruth {
    videos: Vec<RawVideo>,
    #[serde(default)]
    annotations: Vec<RawTrack>,
    categories: Vec<RawCategory>,
}

#[derive(Deserialize)]
struct RawVideo {
    id: u64,
    width: u32,
    height: u32,
    #[serde(default)]
    length: Option<usize>,
    #[serde(default)]
    file_names: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct RawCategory {
    id: u64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    partition: Option<u8>,
}

#[derive(Deserialize)]
struct RawTrack {
    video_id: u64,
    category_id: u64,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    iscrowd: Option<u8>,
    segmentations: Vec<Value>,
    #[serde(default)]
    areas: Option<Vec<Option<f64>>>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    parse_json(&bytes, path)
}

/// Parses json, naming `source` (a file, or a label for in-memory text) in the error.
fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], source: &Path) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| EvalError::Json {
        file: source.to_path_buf(),
        message: e.to_string(),
    })
}

impl GroundTruth {
    /// Reads a ground-truth json file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let raw: RawGroundTruth = read_json(path.as_ref())?;
        Self::from_raw(raw)
    }

    /// Ground truth built in memory (e.g. synthetic data, or images as one-frame videos).
    /// Every track must point at one of `videos` and name one of `categories`.
    pub fn new(videos: Vec<Video>, categories: Vec<Category>, tracks: Vec<Track>) -> Result<Self> {
        let video_index = videos.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
        for (i, track) in tracks.iter().enumerate() {
            if track.video >= videos.len() {
                return Err(EvalError::UnknownVideo {
                    what: format!("annotation {i}"),
                    video_id: track.video as u64,
                });
            }
            if !categories.iter().any(|c| c.id == track.category_id) {
                return Err(EvalError::UnknownCategory {
                    what: format!("annotation {i}"),
                    category_id: track.category_id,
                });
            }
        }
        Ok(Self {
            videos,
            categories,
            tracks,
            video_index,
        })
    }

    /// Parses ground truth from json text.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_raw(parse_json(text.as_bytes(), Path::new("<ground truth>"))?)
    }

    fn from_raw(raw: RawGroundTruth) -> Result<Self> {
        let videos: Vec<Video> = raw
            .videos
            .into_iter()
            .map(|v| Video {
                id: v.id,
                width: v.width,
                height: v.height,
                length: v
                    .length
                    .or_else(|| v.file_names.as_ref().map(Vec::len))
                    .unwrap_or(0),
            })
            .collect();
        let video_index = videos.iter().enumerate().map(|(i, v)| (v.id, i)).collect();
        let categories: Vec<Category> = raw
            .categories
            .into_iter()
            .map(|c| Category {
                id: c.id,
                name: c.name,
                partition: c.partition,
            })
            .collect();
        let mut ground_truth = Self {
            videos,
            categories,
            tracks: Vec::new(),
            video_index,
        };
        let tracks = raw
            .annotations
            .into_iter()
            .enumerate()
            .map(|(i, t)| ground_truth.track(t, &format!("annotation {i}"), false))
            .collect::<Result<Vec<_>>>()?;
        ground_truth.tracks = tracks;
        Ok(ground_truth)
    }

    /// Reads a results json file (a list of detected tracks) against this ground truth.
    pub fn read_results(&self, path: impl AsRef<Path>) -> Result<Vec<Track>> {
        let raw: Vec<RawTrack> = read_json(path.as_ref())?;
        self.results_from_raw(raw)
    }

    /// Parses results from json text.
    pub fn results_from_json(&self, text: &str) -> Result<Vec<Track>> {
        self.results_from_raw(parse_json(text.as_bytes(), Path::new("<results>"))?)
    }

    fn results_from_raw(&self, raw: Vec<RawTrack>) -> Result<Vec<Track>> {
        use rayon::prelude::*;
        raw.into_par_iter()
            .enumerate()
            .map(|(i, t)| self.track(t, &format!("result {i}"), true))
            .collect()
    }

    /// Index of a video id in [`GroundTruth::videos`].
    pub fn video_index(&self, id: u64) -> Option<usize> {
        self.video_index.get(&id).copied()
    }

    fn track(&self, raw: RawTrack, what: &str, is_result: bool) -> Result<Track> {
        let video = self
            .video_index(raw.video_id)
            .ok_or_else(|| EvalError::UnknownVideo {
                what: what.to_string(),
                video_id: raw.video_id,
            })?;
        if !self.categories.iter().any(|c| c.id == raw.category_id) {
            return Err(EvalError::UnknownCategory {
                what: what.to_string(),
                category_id: raw.category_id,
            });
        }
        let info = &self.videos[video];
        if raw.segmentations.len() != info.length {
            return Err(EvalError::FrameCount {
                what: what.to_string(),
                video_id: info.id,
                expected: info.length,
                got: raw.segmentations.len(),
            });
        }
        let frames = raw
            .segmentations
            .iter()
            .enumerate()
            .map(|(frame, value)| {
                parse_segmentation(value, info.height, info.width).map_err(|message| {
                    EvalError::Segmentation {
                        what: format!("{what} (video {})", info.id),
                        frame,
                        message,
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let masks = TrackMasks {
            height: info.height,
            width: info.width,
            frames,
        };
        let score = if is_result {
            let score = raw.score.ok_or_else(|| EvalError::Json {
                file: what.into(),
                message: "missing `score`".into(),
            })?;
            if !score.is_finite() {
                return Err(EvalError::Score {
                    what: what.to_string(),
                    score,
                });
            }
            score
        } else {
            1.0
        };
        let mask_areas = || {
            masks
                .areas()
                .into_iter()
                .map(|a| a.map(|a| a as f64))
                .collect()
        };
        let areas = match raw.areas {
            // Results get their areas from their masks, as `loadRes` computes them.
            Some(areas) if !is_result => {
                if areas.len() != info.length {
                    return Err(EvalError::FrameCount {
                        what: format!("{what} `areas`"),
                        video_id: info.id,
                        expected: info.length,
                        got: areas.len(),
                    });
                }
                areas
            }
            _ => mask_areas(),
        };
        Ok(Track {
            video,
            category_id: raw.category_id,
            score,
            iscrowd: raw.iscrowd.unwrap_or(0) != 0,
            masks,
            areas,
        })
    }
}

/// One frame's segmentation: COCO RLE (compressed or not), polygons, or `null`.
fn parse_segmentation(
    value: &Value,
    height: u32,
    width: u32,
) -> std::result::Result<Option<Vec<u32>>, String> {
    let pixels = u64::from(height) * u64::from(width);
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => {
            let size: Vec<u64> = map
                .get("size")
                .and_then(Value::as_array)
                .map(|s| s.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            if size != [u64::from(height), u64::from(width)] {
                return Err(format!(
                    "RLE size {size:?} differs from the video's [{height}, {width}]"
                ));
            }
            let counts = match map.get("counts") {
                Some(Value::String(text)) => {
                    hotcoco::mask::rle_from_string(text, height, width)
                        .map_err(|e| format!("corrupt RLE: {e}"))?
                        .counts
                }
                Some(Value::Array(runs)) => runs
                    .iter()
                    .map(|r| r.as_u64().and_then(|v| u32::try_from(v).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or("RLE counts must be non-negative integers")?,
                _ => return Err("RLE without `counts`".into()),
            };
            let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
            if total != pixels {
                return Err(format!(
                    "corrupt RLE: runs cover {total} pixels, the frame has {pixels}"
                ));
            }
            Ok(Some(counts))
        }
        Value::Array(polygons) => {
            let polygons = polygons
                .iter()
                .map(|p| {
                    p.as_array()
                        .and_then(|xy| xy.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>())
                        .filter(|xy| xy.len() >= 6 && xy.len() % 2 == 0)
                        .ok_or("a polygon must be a list of at least 3 (x, y) pairs")
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            hotcoco::mask::fr_polys(&polygons, height, width)
                .map(|rle| Some(rle.counts))
                .map_err(|e| format!("bad polygon: {e}"))
        }
        other => Err(format!("not a segmentation: {other}")),
    }
}
