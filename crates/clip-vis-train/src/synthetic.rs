//! Synthetic data with exact ground truth: COCO-style images and YouTube-VIS-style videos of
//! textured shapes on textured backgrounds. In videos the shapes move, turn, pass behind each
//! other, leave the picture and come back, and some hide for a few frames and re-appear, so
//! the tracking problems CLIP-VIS's matching addresses all occur.
//!
//! Everything is a pure function of the seed and the item's index, so a dataset can be
//! re-made anywhere bit for bit, and a test can render one item without the others. The
//! ground truth of an instance is its *visible* region (what COCO and YouTube-VIS annotate):
//! the shape minus whatever lies in front of it. An instance with fewer than
//! [`SynthConfig::min_area`] visible pixels is absent (no annotation in an image, `null` in a
//! video frame).

use std::path::{Path, PathBuf};

use clip_vis_clip::preprocess::RgbImage;
use clip_vis_clip::weights::write_atomically;
use hotcoco::mask;
use serde_json::{json, Value};

use crate::rng::Rng;
use crate::{Result, TrainError};

/// The shape categories, in category-id order (id = position + 1).
pub const CATEGORIES: [&str; 4] = ["disc", "square", "triangle", "ring"];

/// Sizes and counts of synthetic data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthConfig {
    /// Picture width in pixels.
    pub width: usize,
    /// Picture height in pixels.
    pub height: usize,
    /// Fewest shapes per picture (or video).
    pub min_objects: usize,
    /// Most shapes per picture (or video).
    pub max_objects: usize,
    /// Smallest shape radius, as a fraction of the short side.
    pub min_radius: f64,
    /// Largest shape radius, as a fraction of the short side.
    pub max_radius: f64,
    /// Visible pixels below which an instance counts as absent.
    pub min_area: usize,
    /// The seed every item derives from.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            width: 256,
            height: 192,
            min_objects: 1,
            max_objects: 4,
            min_radius: 0.1,
            max_radius: 0.28,
            min_area: 24,
            seed: 0,
        }
    }
}

impl SynthConfig {
    fn validate(&self) -> Result<()> {
        if self.width < 8 || self.height < 8 {
            return Err(TrainError::Config(format!(
                "synthetic pictures of {}x{} are too small (at least 8x8)",
                self.width, self.height
            )));
        }
        if self.min_objects == 0 || self.min_objects > self.max_objects {
            return Err(TrainError::Config(format!(
                "synthetic object count {}..={} is empty or starts at 0",
                self.min_objects, self.max_objects
            )));
        }
        if !(self.min_radius > 0.0 && self.min_radius <= self.max_radius && self.max_radius < 1.0) {
            return Err(TrainError::Config(format!(
                "synthetic radius range {}..{} must satisfy 0 < min <= max < 1",
                self.min_radius, self.max_radius
            )));
        }
        Ok(())
    }
}

/// One annotated instance of a picture.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthInstance {
    /// Category index into [`CATEGORIES`] (0-based).
    pub category: usize,
    /// Visible pixels, row-major `height × width`.
    pub mask: Vec<bool>,
}

/// A synthetic picture and its instances (front-most last).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthImage {
    /// The picture.
    pub image: RgbImage,
    /// Its visible instances.
    pub instances: Vec<SynthInstance>,
}

/// One object through a synthetic video.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthTrack {
    /// Category index into [`CATEGORIES`].
    pub category: usize,
    /// Visible pixels per frame (row-major), `None` where the object is absent.
    pub masks: Vec<Option<Vec<bool>>>,
}

/// A synthetic video and its tracks.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthVideo {
    /// The frames.
    pub frames: Vec<RgbImage>,
    /// Every object that is visible in at least one frame.
    pub tracks: Vec<SynthTrack>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pattern {
    Stripes { angle: f64, period: f64 },
    Checker { period: f64 },
    Dots { period: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Texture {
    pattern: Pattern,
    colors: [[f64; 3]; 2],
}

impl Texture {
    /// The colour at `(u, v)` in the textured surface's own frame.
    fn color(&self, u: f64, v: f64) -> [f64; 3] {
        let second = match self.pattern {
            Pattern::Stripes { angle, period } => {
                ((u * angle.cos() + v * angle.sin()) / period).rem_euclid(1.0) < 0.5
            }
            Pattern::Checker { period } => {
                ((u / period).floor() + (v / period).floor()).rem_euclid(2.0) < 1.0
            }
            Pattern::Dots { period } => {
                let (du, dv) = (
                    (u / period).rem_euclid(1.0) - 0.5,
                    (v / period).rem_euclid(1.0) - 0.5,
                );
                du * du + dv * dv < 0.09
            }
        };
        self.colors[usize::from(second)]
    }

    fn random(rng: &mut Rng, saturation: (f64, f64), scale: f64) -> Self {
        let hue = rng.uniform();
        let s = rng.range(saturation.0, saturation.1);
        let v = rng.range(0.55, 0.95);
        let base = hsv(hue, s, v);
        let shade = rng.range(0.45, 0.7);
        let second = if rng.chance(0.5) {
            base.map(|c| c * shade)
        } else {
            base.map(|c| c + (255.0 - c) * (1.0 - shade))
        };
        let period = scale * rng.range(0.15, 0.45);
        let pattern = match rng.below(3) {
            0 => Pattern::Stripes {
                angle: rng.range(0.0, std::f64::consts::PI),
                period: period.max(3.0),
            },
            1 => Pattern::Checker {
                period: (period * 0.6).max(2.0),
            },
            _ => Pattern::Dots {
                period: period.max(3.0),
            },
        };
        Self {
            pattern,
            colors: [base, second],
        }
    }
}

fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    let rgb = match i as i64 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    };
    rgb.map(|c| c * 255.0)
}

/// A shape at a pose.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Object {
    category: usize,
    cx: f64,
    cy: f64,
    radius: f64,
    angle: f64,
    texture: Texture,
}

impl Object {
    /// `(u, v)`: the pixel centre in the object's rotating frame.
    fn local(&self, x: f64, y: f64) -> (f64, f64) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (s, c) = self.angle.sin_cos();
        (dx * c + dy * s, -dx * s + dy * c)
    }

    fn contains(&self, u: f64, v: f64) -> bool {
        let r = self.radius;
        match CATEGORIES[self.category] {
            "disc" => u * u + v * v <= r * r,
            "square" => u.abs() <= r * 0.8 && v.abs() <= r * 0.8,
            "triangle" => {
                // Equilateral, circumradius r, one vertex up (v < 0).
                let h = r * 1.5;
                let top = -r;
                let t = (v - top) / h;
                (0.0..=1.0).contains(&t) && u.abs() <= t * r * 3f64.sqrt() / 2.0
            }
            _ => {
                let d = u * u + v * v;
                d <= r * r && d >= (0.55 * r) * (0.55 * r)
            }
        }
    }
}

fn random_object(rng: &mut Rng, config: &SynthConfig) -> Object {
    let short = config.width.min(config.height) as f64;
    let radius = short * rng.range(config.min_radius, config.max_radius);
    Object {
        category: rng.below(CATEGORIES.len()),
        cx: rng.range(0.0, config.width as f64),
        cy: rng.range(0.0, config.height as f64),
        radius,
        angle: rng.range(0.0, std::f64::consts::TAU),
        texture: Texture::random(rng, (0.55, 1.0), radius),
    }
}

/// A textured background that can pan: `(offset_x, offset_y)` shifts it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Background {
    texture: Texture,
    gradient: [f64; 3],
    noise_seed: u64,
}

impl Background {
    fn random(rng: &mut Rng, config: &SynthConfig) -> Self {
        let short = config.width.min(config.height) as f64;
        Self {
            texture: Texture::random(rng, (0.0, 0.35), short * 0.3),
            gradient: [
                rng.range(-60.0, 60.0),
                rng.range(-60.0, 60.0),
                rng.range(-60.0, 60.0),
            ],
            noise_seed: rng.next_u64(),
        }
    }

    fn color(&self, x: f64, y: f64, offset: (f64, f64), height: f64) -> [f64; 3] {
        let base = self.texture.color(x + offset.0, y + offset.1);
        let t = y / height - 0.5;
        // Per-pixel noise, fixed to the scene (it pans with it).
        let cell = ((x + offset.0).floor() as i64 as u64).wrapping_mul(0x9E37_79B9)
            ^ ((y + offset.1).floor() as i64 as u64).wrapping_mul(0x85EB_CA6B);
        let noise = Rng::derive(self.noise_seed, &[cell]).range(-12.0, 12.0);
        [0, 1, 2].map(|c| base[c] + self.gradient[c] * t + noise)
    }
}

/// Paints `objects` (back to front) over `background` and returns the picture and each
/// object's visible pixels.
fn render(
    config: &SynthConfig,
    background: &Background,
    offset: (f64, f64),
    objects: &[Option<Object>],
) -> (RgbImage, Vec<Vec<bool>>) {
    let (w, h) = (config.width, config.height);
    let mut pixels = Vec::with_capacity(w * h * 3);
    let mut owner = vec![usize::MAX; w * h];
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let mut color = background.color(fx, fy, offset, h as f64);
            for (i, object) in objects.iter().enumerate() {
                let Some(object) = object else { continue };
                let (u, v) = object.local(fx, fy);
                if object.contains(u, v) {
                    color = object.texture.color(u, v);
                    owner[y * w + x] = i;
                }
            }
            pixels.extend(color.map(|c| c.round().clamp(0.0, 255.0) as u8));
        }
    }
    let masks = (0..objects.len())
        .map(|i| owner.iter().map(|&o| o == i).collect())
        .collect();
    (RgbImage::new(w, h, pixels).expect("consistent size"), masks)
}

/// Picture `index` of a synthetic image set.
pub fn render_image(config: &SynthConfig, index: usize) -> Result<SynthImage> {
    config.validate()?;
    let mut rng = Rng::derive(config.seed, &[1, index as u64]);
    let background = Background::random(&mut rng, config);
    let count = config.min_objects + rng.below(config.max_objects - config.min_objects + 1);
    let objects: Vec<Option<Object>> = (0..count)
        .map(|_| Some(random_object(&mut rng, config)))
        .collect();
    let (image, masks) = render(config, &background, (0.0, 0.0), &objects);
    let instances = objects
        .iter()
        .zip(masks)
        .filter(|(_, m)| m.iter().filter(|&&b| b).count() >= config.min_area)
        .map(|(o, mask)| SynthInstance {
            category: o.expect("all present").category,
            mask,
        })
        .collect();
    Ok(SynthImage { image, instances })
}

/// How an object moves through a video.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Motion {
    start: Object,
    velocity: (f64, f64),
    spin: f64,
    /// Frames `[from, to)` during which the object is hidden (it keeps moving).
    hidden: Option<(usize, usize)>,
}

/// Video `index` of a synthetic video set, `frames` frames long.
pub fn render_video(config: &SynthConfig, index: usize, frames: usize) -> Result<SynthVideo> {
    config.validate()?;
    if frames == 0 {
        return Err(TrainError::Config(
            "a synthetic video needs at least 1 frame".into(),
        ));
    }
    let mut rng = Rng::derive(config.seed, &[2, index as u64]);
    let background = Background::random(&mut rng, config);
    let short = config.width.min(config.height) as f64;
    let pan = (
        rng.range(-0.01, 0.01) * short,
        rng.range(-0.01, 0.01) * short,
    );
    let count = config.min_objects + rng.below(config.max_objects - config.min_objects + 1);
    let motions: Vec<Motion> = (0..count)
        .map(|_| {
            let start = random_object(&mut rng, config);
            let speed = rng.range(0.005, 0.03) * short;
            let direction = rng.range(0.0, std::f64::consts::TAU);
            let hidden = (frames >= 6 && rng.chance(0.35)).then(|| {
                let length = 2 + rng.below(frames / 3 - 1);
                let from = 1 + rng.below(frames - length - 1);
                (from, from + length)
            });
            Motion {
                start,
                velocity: (speed * direction.cos(), speed * direction.sin()),
                spin: rng.range(-0.08, 0.08),
                hidden,
            }
        })
        .collect();
    let (w, h) = (config.width as f64, config.height as f64);
    let mut video_frames = Vec::with_capacity(frames);
    let mut tracks: Vec<SynthTrack> = motions
        .iter()
        .map(|m| SynthTrack {
            category: m.start.category,
            masks: Vec::with_capacity(frames),
        })
        .collect();
    for f in 0..frames {
        let t = f as f64;
        let objects: Vec<Option<Object>> = motions
            .iter()
            .map(|m| {
                if m.hidden.is_some_and(|(a, b)| (a..b).contains(&f)) {
                    return None;
                }
                // Reflect the centre's path at the borders, allowing half the shape outside, so
                // shapes leave the picture partly or wholly and come back.
                let bounce = |p: f64, size: f64| {
                    let span = size + m.start.radius * 2.0;
                    let q = (p + m.start.radius).rem_euclid(2.0 * span);
                    (if q > span { 2.0 * span - q } else { q }) - m.start.radius
                };
                Some(Object {
                    cx: bounce(m.start.cx + m.velocity.0 * t, w),
                    cy: bounce(m.start.cy + m.velocity.1 * t, h),
                    angle: m.start.angle + m.spin * t,
                    ..m.start
                })
            })
            .collect();
        let (image, masks) = render(config, &background, (pan.0 * t, pan.1 * t), &objects);
        video_frames.push(image);
        for (track, mask) in tracks.iter_mut().zip(masks) {
            let present = mask.iter().filter(|&&b| b).count() >= config.min_area;
            track.masks.push(present.then_some(mask));
        }
    }
    tracks.retain(|t| t.masks.iter().any(Option::is_some));
    Ok(SynthVideo {
        frames: video_frames,
        tracks,
    })
}

/// COCO run-length encoding (`{"size": [h, w], "counts": "<string>"}`), area and `[x, y, w, h]`
/// box of a row-major mask.
fn encode(mask: &[bool], width: usize, height: usize) -> (Value, u64, [f64; 4]) {
    let rle = clip_vis_eval::track::rle_from_row_major(height, width, |i| mask[i]);
    let value = json!({"size": [height, width], "counts": mask::rle_to_string(&rle)});
    (value, mask::area(&rle), mask::to_bbox(&rle))
}

fn categories_json() -> Value {
    Value::Array(
        CATEGORIES
            .iter()
            .enumerate()
            .map(|(i, name)| json!({"id": i + 1, "name": name, "supercategory": "shape"}))
            .collect(),
    )
}

fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
    }
    let buffer = image::RgbImage::from_raw(
        image.width as u32,
        image.height as u32,
        image.pixels.clone(),
    )
    .expect("consistent size");
    let mut bytes = Vec::new();
    buffer
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| TrainError::Image {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomically(path, &bytes).map_err(TrainError::io(path))
}

fn save_json(value: &Value, path: &Path) -> Result<()> {
    let text = serde_json::to_vec(value).expect("json values serialise");
    write_atomically(path, &text).map_err(TrainError::io(path))
}

/// Writes pictures `first..first + count` as a COCO instance set: `dir/images/NNNNNN.png` and
/// `dir/instances.json` (RLE segmentations, categories [`CATEGORIES`]). Returns the json path.
pub fn write_coco(dir: &Path, config: &SynthConfig, first: usize, count: usize) -> Result<PathBuf> {
    let mut images = Vec::with_capacity(count);
    let mut annotations = Vec::new();
    for index in first..first + count {
        let sample = render_image(config, index)?;
        let file_name = format!("{index:06}.png");
        save_png(&sample.image, &dir.join("images").join(&file_name))?;
        let id = index as u64 + 1;
        images.push(json!({"id": id, "file_name": file_name, "width": config.width, "height": config.height}));
        for instance in &sample.instances {
            let (segmentation, area, bbox) = encode(&instance.mask, config.width, config.height);
            annotations.push(json!({
                "id": annotations.len() + 1, "image_id": id, "category_id": instance.category + 1,
                "segmentation": segmentation, "area": area, "bbox": bbox, "iscrowd": 0,
            }));
        }
    }
    let path = dir.join("instances.json");
    save_json(
        &json!({
            "info": {"description": "clip-vis synthetic shapes", "seed": config.seed},
            "images": images, "annotations": annotations, "categories": categories_json(),
        }),
        &path,
    )?;
    Ok(path)
}

/// Writes videos `first..first + count` of `frames` frames each in YouTube-VIS layout:
/// `dir/JPEGImages/<video>/NNNNN.png` (lossless, so the ground truth is exact) and
/// `dir/instances.json` (`videos` with `file_names`, per-frame RLE or `null`). Returns the json
/// path.
pub fn write_ytvis(
    dir: &Path,
    config: &SynthConfig,
    first: usize,
    count: usize,
    frames: usize,
) -> Result<PathBuf> {
    let mut videos = Vec::with_capacity(count);
    let mut annotations = Vec::new();
    for index in first..first + count {
        let video = render_video(config, index, frames)?;
        let id = index as u64 + 1;
        let folder = format!("{index:06}");
        let mut file_names = Vec::with_capacity(frames);
        for (f, frame) in video.frames.iter().enumerate() {
            let name = format!("{folder}/{f:05}.png");
            save_png(frame, &dir.join("JPEGImages").join(&name))?;
            file_names.push(name);
        }
        videos.push(json!({
            "id": id, "width": config.width, "height": config.height, "length": frames,
            "file_names": file_names,
        }));
        for track in &video.tracks {
            let (mut segmentations, mut areas, mut bboxes) = (Vec::new(), Vec::new(), Vec::new());
            for mask in &track.masks {
                match mask {
                    Some(mask) => {
                        let (rle, area, bbox) = encode(mask, config.width, config.height);
                        segmentations.push(rle);
                        areas.push(json!(area));
                        bboxes.push(json!(bbox));
                    }
                    None => {
                        segmentations.push(Value::Null);
                        areas.push(Value::Null);
                        bboxes.push(Value::Null);
                    }
                }
            }
            annotations.push(json!({
                "id": annotations.len() + 1, "video_id": id, "category_id": track.category + 1,
                "iscrowd": 0, "width": config.width, "height": config.height, "length": frames,
                "segmentations": segmentations, "areas": areas, "bboxes": bboxes,
            }));
        }
    }
    let path = dir.join("instances.json");
    save_json(
        &json!({
            "info": {"description": "clip-vis synthetic shapes", "seed": config.seed},
            "videos": videos, "annotations": annotations, "categories": categories_json(),
        }),
        &path,
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_reproducible_and_annotated() {
        let config = SynthConfig::default();
        let a = render_image(&config, 3).unwrap();
        assert_eq!(a, render_image(&config, 3).unwrap());
        assert_ne!(a.image, render_image(&config, 4).unwrap().image);
        assert!(!a.instances.is_empty());
        // Visible masks never overlap: each pixel belongs to the front-most shape only.
        let (w, h) = (config.width, config.height);
        for p in 0..w * h {
            assert!(a.instances.iter().filter(|i| i.mask[p]).count() <= 1);
        }
    }

    #[test]
    fn videos_have_disappearing_and_reappearing_tracks() {
        let config = SynthConfig {
            min_objects: 3,
            max_objects: 4,
            ..SynthConfig::default()
        };
        // Over a few videos some track must vanish and come back.
        let reappears =
            (0..6).any(|v| {
                render_video(&config, v, 24).unwrap().tracks.iter().any(|t| {
                let present: Vec<bool> = t.masks.iter().map(Option::is_some).collect();
                let first = present.iter().position(|&p| p);
                let last = present.iter().rposition(|&p| p);
                matches!((first, last), (Some(a), Some(b)) if present[a..=b].contains(&false))
            })
            });
        assert!(reappears);
        let video = render_video(&config, 0, 5).unwrap();
        assert_eq!(video.frames.len(), 5);
        assert!(video.tracks.iter().all(|t| t.masks.len() == 5));
    }

    #[test]
    fn bad_sizes_are_errors() {
        let config = SynthConfig {
            width: 4,
            ..SynthConfig::default()
        };
        assert!(render_image(&config, 0).is_err());
        assert!(render_video(&SynthConfig::default(), 0, 0).is_err());
    }
}
