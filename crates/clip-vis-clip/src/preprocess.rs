//! Image preprocessing: CLIP's normalisation, padding to a multiple of 32, and open_clip's
//! zero-shot transform (bicubic resize of the short side, centre crop).

use crate::error::{ClipError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// OpenAI CLIP's per-channel RGB mean, on the 0–255 scale (SPEC §1 `PIXEL_MEAN`).
pub const PIXEL_MEAN: [f32; 3] = [122.770_94, 116.746_01, 104.093_74];
/// OpenAI CLIP's per-channel RGB standard deviation, on the 0–255 scale (SPEC §1 `PIXEL_STD`).
pub const PIXEL_STD: [f32; 3] = [68.500_53, 66.632_16, 70.323_16];
/// Every input side is padded up to a multiple of this (the deepest stride).
pub const SIZE_DIVISIBILITY: usize = 32;

/// An 8-bit RGB image, row-major, `height * width * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Interleaved RGB bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps interleaved RGB bytes, checking the size.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(ClipError::InvalidInput(format!(
                "image of {width}x{height} pixels has no content"
            )));
        }
        if pixels.len() != width * height * 3 {
            return Err(ClipError::InvalidInput(format!(
                "a {width}x{height} RGB image needs {} bytes, got {}",
                width * height * 3,
                pixels.len()
            )));
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }
}

/// Normalises an image with CLIP's mean/std and zero-pads it on the right and bottom to a
/// multiple of 32 (padding after normalisation, as detectron2's `ImageList` does):
/// `[1, 3, ceil32(height), ceil32(width)]`.
pub fn normalize_and_pad<B: Backend>(image: &RgbImage, device: &B::Device) -> Tensor<B, 4> {
    normalize_and_pad_batch(std::slice::from_ref(image), device)
}

/// [`normalize_and_pad`] of several images of one size as one `[n, 3, H, W]` tensor, uploaded
/// to the device in one transfer (what a GPU wants: one copy per batch, not per frame).
///
/// # Panics
/// If `images` is empty or the images differ in size (the video session checks both first).
pub fn normalize_and_pad_batch<B: Backend>(
    images: &[RgbImage],
    device: &B::Device,
) -> Tensor<B, 4> {
    let first = images.first().expect("at least one image");
    assert!(
        images
            .iter()
            .all(|i| (i.height, i.width) == (first.height, first.width)),
        "normalize_and_pad_batch: images of one size"
    );
    let round_up = |v: usize| v.div_ceil(SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY;
    let (height, width) = (round_up(first.height), round_up(first.width));
    let plane = 3 * height * width;
    let mut values = vec![0f32; images.len() * plane];
    for (image, values) in images.iter().zip(values.chunks_mut(plane)) {
        for y in 0..image.height {
            for x in 0..image.width {
                for c in 0..3 {
                    let byte = image.pixels[(y * image.width + x) * 3 + c];
                    values[(c * height + y) * width + x] =
                        (f32::from(byte) - PIXEL_MEAN[c]) / PIXEL_STD[c];
                }
            }
        }
    }
    Tensor::from_data(
        TensorData::new(values, [images.len(), 3, height, width]),
        device,
    )
}

/// open_clip's evaluation transform for an `image_size` model: resize so the short side is
/// `image_size` (PIL bicubic, antialiased, as torchvision applies it to PIL images), then
/// centre-crop `image_size` square.
pub fn resize_and_center_crop(image: &RgbImage, image_size: usize) -> RgbImage {
    let (width, height) = (image.width, image.height);
    // torchvision `Resize(int)`: the long side is `int(size * long / short)`.
    let (new_width, new_height) = if width <= height {
        (
            image_size,
            (image_size as f64 * height as f64 / width as f64) as usize,
        )
    } else {
        (
            (image_size as f64 * width as f64 / height as f64) as usize,
            image_size,
        )
    };
    let resized = resize_bicubic(image, new_width, new_height);
    // torchvision `CenterCrop`: offsets `int(round((size - crop) / 2))`, Python's round
    // (half to even: 10.5 -> 10).
    let top = ((new_height - image_size) as f64 / 2.0).round_ties_even() as usize;
    let left = ((new_width - image_size) as f64 / 2.0).round_ties_even() as usize;
    let mut pixels = Vec::with_capacity(image_size * image_size * 3);
    for y in top..top + image_size {
        let row = (y * new_width + left) * 3;
        pixels.extend_from_slice(&resized.pixels[row..row + image_size * 3]);
    }
    RgbImage {
        width: image_size,
        height: image_size,
        pixels,
    }
}

/// detectron2's `ResizeShortestEdge` output size `(height, width)`: short side to `short`,
/// long side capped at `max`, each rounded with `int(x + 0.5)`.
pub fn resized_size(height: usize, width: usize, short: usize, max: usize) -> (usize, usize) {
    let (h, w) = (height as f64, width as f64);
    let scale = short as f64 / h.min(w);
    let (mut new_h, mut new_w) = if h < w {
        (short as f64, scale * w)
    } else {
        (scale * h, short as f64)
    };
    if new_h.max(new_w) > max as f64 {
        let rescale = max as f64 / new_h.max(new_w);
        new_h *= rescale;
        new_w *= rescale;
    }
    ((new_h + 0.5) as usize, (new_w + 0.5) as usize)
}

/// PIL's `Image.resize(..., BICUBIC)` on 8-bit RGB (Pillow 13): separable convolution with
/// the cubic kernel `a = -0.5`, support widened by the scale when shrinking (antialiasing), each
/// pass rounded and clamped to 8 bits with PIL's fixed-point coefficients. A pass whose size
/// does not change is skipped. Pillow 13 runs the vertical pass first when the height shrinks
/// by more than twice as many pixels as the width (earlier Pillows always start horizontally;
/// the two orders differ in the last bit of some pixels).
pub fn resize_bicubic(image: &RgbImage, new_width: usize, new_height: usize) -> RgbImage {
    resize_pil(image, new_width, new_height, Filter::Bicubic)
}

/// PIL's `Image.resize(..., BILINEAR)` on 8-bit RGB (Pillow 13), the resize detectron2's
/// `ResizeShortestEdge` applies to video frames: the triangle filter (support 1, widened by the
/// scale when shrinking), otherwise exactly as [`resize_bicubic`].
pub fn resize_bilinear(image: &RgbImage, new_width: usize, new_height: usize) -> RgbImage {
    resize_pil(image, new_width, new_height, Filter::Bilinear)
}

/// A PIL resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Bicubic => bicubic_kernel(x),
        }
    }
}

fn resize_pil(image: &RgbImage, new_width: usize, new_height: usize, filter: Filter) -> RgbImage {
    let shrink_height = image.height as i64 - new_height as i64;
    let shrink_width = image.width as i64 - new_width as i64;
    let vertical_first = shrink_height > 0 && shrink_height > 2 * shrink_width;
    let pass = |image: &RgbImage, horizontal: bool| {
        let (from, to) = if horizontal {
            (image.width, new_width)
        } else {
            (image.height, new_height)
        };
        if from == to {
            image.clone()
        } else {
            resample_axis(image, to, horizontal, filter)
        }
    };
    let first = pass(image, !vertical_first);
    pass(&first, vertical_first)
}

/// PIL `ImagingResample` precision for 8-bit images (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output index, the first input
/// index and fixed-point weights.
fn coefficients(input: usize, output: usize, filter: Filter) -> Vec<(usize, Vec<i64>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..output)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let ss = 1.0 / filter_scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(input as i64) as usize).max(xmin);
            let mut weights: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            let fixed = weights
                .iter()
                .map(|w| {
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    // PIL rounds half away from zero here.
                    if scaled < 0.0 {
                        (scaled - 0.5) as i64
                    } else {
                        (scaled + 0.5) as i64
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn resample_axis(image: &RgbImage, new_size: usize, horizontal: bool, filter: Filter) -> RgbImage {
    let (width, height) = (image.width, image.height);
    let input = if horizontal { width } else { height };
    let coefficients = coefficients(input, new_size, filter);
    let (out_width, out_height) = if horizontal {
        (new_size, height)
    } else {
        (width, new_size)
    };
    let mut pixels = vec![0u8; out_width * out_height * 3];
    for y in 0..out_height {
        for x in 0..out_width {
            let (start, weights) = &coefficients[if horizontal { x } else { y }];
            for c in 0..3 {
                let mut sum: i64 = 1 << (PRECISION_BITS - 1);
                for (k, w) in weights.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (start + k, y)
                    } else {
                        (x, start + k)
                    };
                    sum += i64::from(image.pixels[(sy * width + sx) * 3 + c]) * w;
                }
                pixels[(y * out_width + x) * 3 + c] = (sum >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
    RgbImage {
        width: out_width,
        height: out_height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_keeps_pixels() {
        let image = RgbImage::new(3, 2, (0..18).map(|v| v as u8 * 10).collect()).unwrap();
        assert_eq!(resize_bicubic(&image, 3, 2), image);
    }

    #[test]
    fn constant_image_stays_constant() {
        let image = RgbImage::new(37, 23, vec![77; 37 * 23 * 3]).unwrap();
        let out = resize_and_center_crop(&image, 16);
        assert_eq!((out.width, out.height), (16, 16));
        assert!(out.pixels.iter().all(|&p| p == 77));
    }

    #[test]
    fn empty_image_is_an_error() {
        assert!(RgbImage::new(0, 4, vec![]).is_err());
        assert!(RgbImage::new(2, 2, vec![0; 5]).is_err());
    }
}
