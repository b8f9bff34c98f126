//! Training augmentations of a picture and its instance masks (SPEC §1 "Train"), re-stated from
//! detectron2 as Mask2Former / CLIP-VIS configure it:
//!
//! - **Large-scale jitter** (image stage, `COCOInstanceNewBaselineDatasetMapper`): horizontal
//!   flip with probability ½; `ResizeScale` to a random `s ∈ [0.1, 2.0]` of the target size
//!   (aspect kept, `scale = min(S·s/H, S·s/W)`, sizes rounded half to even as `np.round`);
//!   `FixedSizeCrop` at a random offset (one uniform draw for both axes) and padding on the
//!   right and bottom with 128 to exactly `S × S`. Three draws, in that order.
//! - **Resize shortest edge** (video fine-tune, `YTVISDatasetMapper` with one frame): short side
//!   to a size chosen from a list (800), long side at most 1333 (`int(x + 0.5)` rounding),
//!   then the flip.
//!
//! Pictures are resized with PIL's antialiased bilinear filter, exactly as detectron2's
//! `ResizeTransform` does on 8-bit images. Polygon instances (LVIS, COCO) are transformed as
//! polygons (flipped as `x' = W − x`, scaled, clipped to the crop window, translated) and
//! rasterised at the end with COCO's `frPyObjects` rule, as detectron2 does before
//! `convert_coco_poly_to_mask`; RLE instances (YouTube-VIS) are decoded and moved as pixels
//! (nearest-neighbour resize, PIL's rule). An instance left without area is dropped
//! (`filter_empty_instances`).
//!
//! Two documented differences: crops are clipped with Sutherland–Hodgman instead of shapely
//! (the same area; a polygon that shapely would split stays one polygon with zero-width
//! bridges along the crop edge, which rasterise to at most edge pixels), and RLE masks are
//! padded with 0 where current detectron2 pads segmentations with 255 (which would turn the
//! padding of an instance mask into foreground; COCO's only RLE annotations are crowds, which
//! are dropped, so the released training never met it).

use clip_vis_clip::preprocess::{resize_bilinear, resized_size, RgbImage};
use hotcoco::mask;

use crate::data::InstanceMask;
use crate::rng::Rng;

/// A picture after augmentation, with its instances' masks.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    /// The picture.
    pub image: RgbImage,
    /// One row-major 0/1 mask per kept instance, at the picture's size.
    pub masks: Vec<Vec<u8>>,
    /// Instances dropped because their moved polygons could not be rasterised (counted into
    /// the batch and the step report, never dropped silently).
    pub unrasterizable: usize,
}

/// How training pictures are augmented.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Augmentation {
    /// Flip, `ResizeScale`, `FixedSizeCrop` (the image stage; `size` 1024).
    LargeScaleJitter {
        /// Output side `S` (`INPUT.IMAGE_SIZE`, 1024).
        size: usize,
        /// Smallest scale (`MIN_SCALE`, 0.1).
        min_scale: f64,
        /// Largest scale (`MAX_SCALE`, 2.0).
        max_scale: f64,
        /// Random horizontal flip.
        flip: bool,
        /// Value of the padded pixels (128).
        pad_value: u8,
    },
    /// `ResizeShortestEdge` then flip (the video fine-tune).
    ResizeShortestEdge {
        /// Short-side sizes, one chosen per picture (`MIN_SIZE_TRAIN`, `[800]`).
        short_edge: Vec<usize>,
        /// Long-side limit (`MAX_SIZE_TRAIN`, 1333).
        max_size: usize,
        /// Random horizontal flip.
        flip: bool,
    },
}

impl Augmentation {
    /// The image stage's large-scale jitter at side `size` (1024 in CLIP-VIS).
    pub fn lsj(size: usize) -> Self {
        Self::LargeScaleJitter {
            size,
            min_scale: 0.1,
            max_scale: 2.0,
            flip: true,
            pad_value: 128,
        }
    }

    /// The video fine-tune's resize (short side 800, long side at most 1333) and flip.
    pub fn video_finetune() -> Self {
        Self::ResizeShortestEdge {
            short_edge: vec![800],
            max_size: 1333,
            flip: true,
        }
    }

    /// Checks the parameters can run.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::LargeScaleJitter {
                size,
                min_scale,
                max_scale,
                ..
            } => {
                if *size == 0 || !(*min_scale > 0.0 && min_scale <= max_scale) {
                    return Err(format!(
                        "large-scale jitter needs size > 0 and 0 < min_scale <= max_scale (got {size}, {min_scale}, {max_scale})"
                    ));
                }
            }
            Self::ResizeShortestEdge {
                short_edge,
                max_size,
                ..
            } => {
                if short_edge.is_empty() || short_edge.contains(&0) || *max_size == 0 {
                    return Err("resize-shortest-edge needs positive sizes".into());
                }
            }
        }
        Ok(())
    }

    /// Augments `image` and its `instances` (at the image's size) with draws from `rng`.
    pub fn apply(&self, image: &RgbImage, instances: &[InstanceMask], rng: &mut Rng) -> Augmented {
        let (h, w) = (image.height, image.width);
        match self {
            Self::LargeScaleJitter {
                size,
                min_scale,
                max_scale,
                flip,
                pad_value,
            } => {
                let size = *size;
                let flipped = *flip && rng.uniform() < 0.5;
                let s = rng.range(*min_scale, *max_scale);
                let target = size as f64 * s;
                let scale = (target / h as f64).min(target / w as f64);
                let nh = ((h as f64 * scale).round_ties_even() as usize).max(1);
                let nw = ((w as f64 * scale).round_ties_even() as usize).max(1);
                let c = rng.uniform();
                let oy = ((nh.saturating_sub(size)) as f64 * c).round_ties_even() as usize;
                let ox = ((nw.saturating_sub(size)) as f64 * c).round_ties_even() as usize;
                let source = if flipped {
                    flip_image(image)
                } else {
                    image.clone()
                };
                let resized = resize_bilinear(&source, nw, nh);
                let out = crop_pad_image(&resized, ox, oy, size, size, *pad_value);
                let geometry = Geometry {
                    width: w as f64,
                    flip_before: flipped,
                    sx: nw as f64 / w as f64,
                    sy: nh as f64 / h as f64,
                    flip_after: None,
                    ox: ox as f64,
                    oy: oy as f64,
                    window: Some((size as f64, size as f64)),
                };
                let mut unrasterizable = 0;
                let masks = instances
                    .iter()
                    .filter_map(|instance| match instance {
                        InstanceMask::Polygons(polygons) => {
                            let moved = geometry.polygons(polygons);
                            if !polygons_nonempty(&moved) {
                                return None;
                            }
                            let mask = rasterize(&moved, size, size);
                            unrasterizable += usize::from(mask.is_err());
                            mask.ok()
                        }
                        InstanceMask::Rle(rle) => {
                            let mut m = decode_row_major(rle);
                            if flipped {
                                m = flip_mask(&m, w, h);
                            }
                            let m = resize_nearest(&m, w, h, nw, nh);
                            let m = crop_pad_mask(&m, nw, nh, ox, oy, size, size);
                            m.contains(&1).then_some(m)
                        }
                    })
                    .collect();
                Augmented {
                    image: out,
                    masks,
                    unrasterizable,
                }
            }
            Self::ResizeShortestEdge {
                short_edge,
                max_size,
                flip,
            } => {
                let short = short_edge[rng.below(short_edge.len())];
                let (nh, nw) = resized_size(h, w, short, *max_size);
                let flipped = *flip && rng.uniform() < 0.5;
                let resized = resize_bilinear(image, nw, nh);
                let out = if flipped {
                    flip_image(&resized)
                } else {
                    resized
                };
                let geometry = Geometry {
                    width: w as f64,
                    flip_before: false,
                    sx: nw as f64 / w as f64,
                    sy: nh as f64 / h as f64,
                    flip_after: flipped.then_some(nw as f64),
                    ox: 0.0,
                    oy: 0.0,
                    window: None,
                };
                let mut unrasterizable = 0;
                let masks = instances
                    .iter()
                    .filter_map(|instance| {
                        let m = match instance {
                            InstanceMask::Polygons(polygons) => {
                                match rasterize(&geometry.polygons(polygons), nh, nw) {
                                    Ok(m) => m,
                                    Err(_) => {
                                        unrasterizable += 1;
                                        return None;
                                    }
                                }
                            }
                            InstanceMask::Rle(rle) => {
                                let m = resize_nearest(&decode_row_major(rle), w, h, nw, nh);
                                if flipped {
                                    flip_mask(&m, nw, nh)
                                } else {
                                    m
                                }
                            }
                        };
                        // The video mapper marks empty instances and the model drops them.
                        m.contains(&1).then_some(m)
                    })
                    .collect();
                Augmented {
                    image: out,
                    masks,
                    unrasterizable,
                }
            }
        }
    }
}

/// Where polygon coordinates go: optional flip, scale, optional flip, translation, clipping.
struct Geometry {
    /// Width before any transform (the first flip's `W`).
    width: f64,
    flip_before: bool,
    sx: f64,
    sy: f64,
    /// Flip after scaling, about this width.
    flip_after: Option<f64>,
    ox: f64,
    oy: f64,
    /// The crop window `(width, height)` to clip to, in output coordinates.
    window: Option<(f64, f64)>,
}

impl Geometry {
    fn polygons(&self, polygons: &[Vec<f64>]) -> Vec<Vec<f64>> {
        polygons
            .iter()
            .filter_map(|polygon| {
                let points: Vec<(f64, f64)> = polygon
                    .chunks_exact(2)
                    .map(|p| {
                        let mut x = if self.flip_before {
                            self.width - p[0]
                        } else {
                            p[0]
                        };
                        x *= self.sx;
                        if let Some(width) = self.flip_after {
                            x = width - x;
                        }
                        (x - self.ox, p[1] * self.sy - self.oy)
                    })
                    .collect();
                let points = match self.window {
                    Some((w, h)) => clip_to_window(&points, w, h),
                    None => points,
                };
                (points.len() >= 3).then(|| points.iter().flat_map(|&(x, y)| [x, y]).collect())
            })
            .collect()
    }
}

/// Sutherland–Hodgman clipping of a polygon to `[0, w] × [0, h]`.
fn clip_to_window(points: &[(f64, f64)], w: f64, h: f64) -> Vec<(f64, f64)> {
    // Each edge: inside test and intersection with the boundary line.
    type Inside = fn(f64, f64, f64, f64) -> bool;
    let edges: [(Inside, f64, bool); 4] = [
        (|x, _, _, _| x >= 0.0, 0.0, true),
        (|x, _, w, _| x <= w, w, true),
        (|_, y, _, _| y >= 0.0, 0.0, false),
        (|_, y, _, h| y <= h, h, false),
    ];
    let mut output = points.to_vec();
    for (inside, line, vertical) in edges {
        let input = std::mem::take(&mut output);
        let Some(&last) = input.last() else { break };
        let mut previous = last;
        let cross = |a: (f64, f64), b: (f64, f64)| {
            if vertical {
                let t = (line - a.0) / (b.0 - a.0);
                (line, a.1 + t * (b.1 - a.1))
            } else {
                let t = (line - a.1) / (b.1 - a.1);
                (a.0 + t * (b.0 - a.0), line)
            }
        };
        for &current in &input {
            let current_in = inside(current.0, current.1, w, h);
            let previous_in = inside(previous.0, previous.1, w, h);
            if current_in {
                if !previous_in {
                    output.push(cross(previous, current));
                }
                output.push(current);
            } else if previous_in {
                output.push(cross(previous, current));
            }
            previous = current;
        }
    }
    output
}

/// detectron2's `filter_empty_instances` for polygons: some polygon left, and a tight box of
/// its vertices wider and taller than 1e-5.
fn polygons_nonempty(polygons: &[Vec<f64>]) -> bool {
    if polygons.is_empty() {
        return false;
    }
    let (mut x0, mut y0, mut x1, mut y1) = (f64::INFINITY, f64::INFINITY, 0f64, 0f64);
    for polygon in polygons {
        for p in polygon.chunks_exact(2) {
            x0 = x0.min(p[0]);
            x1 = x1.max(p[0]);
            y0 = y0.min(p[1]);
            y1 = y1.max(p[1]);
        }
    }
    x1 - x0 > 1e-5 && y1 - y0 > 1e-5
}

/// The union of `polygons` rasterised at `h × w` (COCO's `frPyObjects` + `decode` + `any`),
/// row-major 0/1; what hotcoco could not rasterise is an error with its message.
pub fn rasterize(polygons: &[Vec<f64>], h: usize, w: usize) -> Result<Vec<u8>, String> {
    mask::fr_polys(polygons, h as u32, w as u32)
        .map(|rle| decode_row_major(&rle))
        .map_err(|e| e.to_string())
}

/// A COCO RLE as a row-major 0/1 mask (COCO masks are column-major).
pub fn decode_row_major(rle: &hotcoco::Rle) -> Vec<u8> {
    let (h, w) = (rle.h as usize, rle.w as usize);
    let column_major = mask::decode(rle);
    let mut out = vec![0u8; h * w];
    for x in 0..w {
        for y in 0..h {
            out[y * w + x] = column_major[x * h + y];
        }
    }
    out
}

fn flip_image(image: &RgbImage) -> RgbImage {
    let (w, h) = (image.width, image.height);
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in (0..w).rev() {
            pixels.extend_from_slice(&image.pixels[(y * w + x) * 3..(y * w + x) * 3 + 3]);
        }
    }
    RgbImage::new(w, h, pixels).expect("same size")
}

fn flip_mask(mask: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        out.extend(mask[y * w..(y + 1) * w].iter().rev());
    }
    out
}

/// PIL `NEAREST` resize: output pixel `x` takes input `floor((x + 0.5) · in / out)`.
fn resize_nearest(mask: &[u8], w: usize, h: usize, nw: usize, nh: usize) -> Vec<u8> {
    let pick = |i: usize, from: usize, to: usize| {
        (((i as f64 + 0.5) * from as f64 / to as f64) as usize).min(from - 1)
    };
    let columns: Vec<usize> = (0..nw).map(|x| pick(x, w, nw)).collect();
    let mut out = Vec::with_capacity(nw * nh);
    for y in 0..nh {
        let row = &mask[pick(y, h, nh) * w..];
        out.extend(columns.iter().map(|&x| row[x]));
    }
    out
}

/// The `cw × ch` window at `(ox, oy)` of an image, padded right and bottom with `pad`.
fn crop_pad_image(
    image: &RgbImage,
    ox: usize,
    oy: usize,
    cw: usize,
    ch: usize,
    pad: u8,
) -> RgbImage {
    let mut pixels = vec![pad; cw * ch * 3];
    let rows = image.height.saturating_sub(oy).min(ch);
    let cols = image.width.saturating_sub(ox).min(cw);
    for y in 0..rows {
        let from = ((oy + y) * image.width + ox) * 3;
        pixels[y * cw * 3..(y * cw + cols) * 3]
            .copy_from_slice(&image.pixels[from..from + cols * 3]);
    }
    RgbImage::new(cw, ch, pixels).expect("window size")
}

fn crop_pad_mask(
    mask: &[u8],
    w: usize,
    h: usize,
    ox: usize,
    oy: usize,
    cw: usize,
    ch: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; cw * ch];
    let rows = h.saturating_sub(oy).min(ch);
    let cols = w.saturating_sub(ox).min(cw);
    for y in 0..rows {
        let from = (oy + y) * w + ox;
        out[y * cw..y * cw + cols].copy_from_slice(&mask[from..from + cols]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> InstanceMask {
        InstanceMask::Polygons(vec![vec![x0, y0, x1, y0, x1, y1, x0, y1]])
    }

    fn picture(w: usize, h: usize) -> RgbImage {
        RgbImage::new(w, h, (0..w * h * 3).map(|i| (i % 251) as u8).collect()).unwrap()
    }

    /// hotcoco refuses pictures of more than 2^32 pixels (its run counts are 32-bit): an error
    /// the augmentation counts, not a zero mask of that size.
    #[test]
    fn a_polygon_that_cannot_be_rasterised_is_an_error() {
        let square = vec![vec![1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]];
        assert!(rasterize(&square, 70_000, 70_000).is_err());
        assert_eq!(
            rasterize(&square, 8, 8)
                .unwrap()
                .iter()
                .filter(|&&v| v == 1)
                .count(),
            16
        );
    }

    #[test]
    fn lsj_output_is_always_the_target_size() {
        let aug = Augmentation::lsj(64);
        for seed in 0..20 {
            let out = aug.apply(
                &picture(40, 30),
                &[square(5.0, 5.0, 20.0, 25.0)],
                &mut Rng::new(seed),
            );
            assert_eq!((out.image.width, out.image.height), (64, 64));
            assert!(out.masks.iter().all(|m| m.len() == 64 * 64));
        }
    }

    #[test]
    fn polygon_and_rle_instances_move_together() {
        // The same square as a polygon and as an RLE: after any augmentation the two masks
        // agree except along the edges (polygon rasterisation vs. nearest resizing).
        let (w, h) = (48usize, 36usize);
        let polygon = square(8.0, 6.0, 30.0, 20.0);
        let rows: Vec<u8> = (0..w * h)
            .map(|i| u8::from((8..30).contains(&(i % w)) && (6..20).contains(&(i / w))))
            .collect();
        let mut column_major = vec![0u8; w * h];
        for y in 0..h {
            for x in 0..w {
                column_major[x * h + y] = rows[y * w + x];
            }
        }
        let rle = InstanceMask::Rle(mask::encode(&column_major, h as u32, w as u32).unwrap());
        for aug in [Augmentation::lsj(40), Augmentation::video_finetune()] {
            for seed in 0..10 {
                let out = aug.apply(
                    &picture(w, h),
                    &[polygon.clone(), rle.clone()],
                    &mut Rng::new(seed),
                );
                if out.masks.len() < 2 {
                    continue; // cropped away
                }
                let (a, b) = (&out.masks[0], &out.masks[1]);
                let both = a
                    .iter()
                    .zip(b)
                    .filter(|(p, q)| **p == 1 && **q == 1)
                    .count();
                let either = a
                    .iter()
                    .zip(b)
                    .filter(|(p, q)| **p == 1 || **q == 1)
                    .count();
                assert!(
                    both as f64 >= 0.7 * either as f64,
                    "{aug:?} seed {seed}: IoU {}",
                    both as f64 / either as f64
                );
            }
        }
    }

    #[test]
    fn flip_mirrors_image_and_mask() {
        let aug = Augmentation::ResizeShortestEdge {
            short_edge: vec![30],
            max_size: 1333,
            flip: true,
        };
        let image = picture(40, 30);
        let instance = square(0.0, 0.0, 10.0, 30.0); // the left quarter
        let flipped = (0..50)
            .map(|s| aug.apply(&image, std::slice::from_ref(&instance), &mut Rng::new(s)))
            .find(|out| out.masks[0][39] == 1)
            .expect("some draw flips");
        assert_eq!(flipped.masks[0][0], 0);
        assert_eq!(&flipped.image.pixels[..3], &image.pixels[39 * 3..40 * 3]);
    }

    #[test]
    fn clipping_keeps_the_inside() {
        let clipped = clip_to_window(
            &[(-5.0, -5.0), (5.0, -5.0), (5.0, 5.0), (-5.0, 5.0)],
            10.0,
            10.0,
        );
        let xs: Vec<f64> = clipped.iter().map(|p| p.0).collect();
        assert!(xs.iter().all(|&x| (0.0..=5.0).contains(&x)));
        assert_eq!(
            rasterize(
                &[clipped.iter().flat_map(|&(x, y)| [x, y]).collect()],
                10,
                10
            )
            .unwrap()
            .iter()
            .filter(|&&v| v == 1)
            .count(),
            25
        );
        assert!(clip_to_window(&[(-5.0, -5.0), (-1.0, -5.0), (-1.0, -1.0)], 10.0, 10.0).is_empty());
    }
}
