//! Output masks on the host: CLIP-VIS's two bilinear resizes (SPEC §6.6), the `> 0`
//! threshold, and COCO run-length encoding, one track at a time so a frame never holds more
//! than one full-size mask.
//!
//! The resize follows PyTorch's `upsample_bilinear2d` (`align_corners=False`, output size
//! given): the same source indices and weights in `f32`. PyTorch's CPU kernels differ among
//! themselves in the last bit (FMA contraction, a separate small-output kernel), so values
//! agree to about one ulp; the thresholded masks agree wherever the logit is not within that
//! distance of 0 (checked against PyTorch in `tests/video_masks.rs`).

use hotcoco::Rle;

/// Source rows/columns and weights of one output index along one axis.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// PyTorch's `compute_source_index_and_lambda` for `align_corners=False` with no scale factor
/// (the generic `upsample_bilinear2d` kernel).
fn taps_generic(input: usize, output: usize) -> Vec<Tap> {
    if input == output {
        return (0..output)
            .map(|i| Tap {
                i0: i,
                i1: i,
                w0: 1.0,
                w1: 0.0,
            })
            .collect();
    }
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(input - 1);
            let w1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

fn taps(input: (usize, usize), output: (usize, usize)) -> (Vec<Tap>, Vec<Tap>) {
    (
        taps_generic(input.0, output.0),
        taps_generic(input.1, output.1),
    )
}

/// Bilinear resize of one row-major `[h, w]` map to `[out_h, out_w]`, reading only the
/// top-left `[crop_h, crop_w]` of the source (the crop of the padded mask).
fn resize(
    src: &[f32],
    src_w: usize,
    crop: (usize, usize),
    out: (usize, usize),
    rows: &[Tap],
    cols: &[Tap],
) -> Vec<f32> {
    debug_assert_eq!((rows.len(), cols.len()), out);
    debug_assert!(crop.1 <= src_w);
    let mut dst = Vec::with_capacity(out.0 * out.1);
    for r in rows {
        let top = &src[r.i0 * src_w..r.i0 * src_w + crop.1];
        let bottom = &src[r.i1 * src_w..r.i1 * src_w + crop.1];
        for c in cols {
            // PyTorch: inner interpolation along the width, then along the height, each as
            // `a·w0 + b·w1` accumulated in that order.
            let t0 = top[c.i0] * c.w0 + top[c.i1] * c.w1;
            let t1 = bottom[c.i0] * c.w0 + bottom[c.i1] * c.w1;
            dst.push(t0 * r.w0 + t1 * r.w1);
        }
    }
    dst
}

/// The geometry of one video's frames: stride-4 mask size, padded network input, the resized
/// frame inside it, and the original frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskGeometry {
    /// `(h, w)` of the stride-4 mask logits.
    pub logits: (usize, usize),
    /// `(H, W)` of the padded network input.
    pub padded: (usize, usize),
    /// `(h, w)` of the resized frame (the unpadded part of the input).
    pub valid: (usize, usize),
    /// `(h, w)` of the original frame, the size results are written at.
    pub original: (usize, usize),
}

/// Precomputed taps of [`MaskGeometry`]'s two resizes.
#[derive(Debug, Clone)]
pub struct MaskResizer {
    geometry: MaskGeometry,
    up_rows: Vec<Tap>,
    up_cols: Vec<Tap>,
    down: Option<(Vec<Tap>, Vec<Tap>)>,
}

impl MaskResizer {
    /// Taps for `geometry`.
    pub fn new(geometry: MaskGeometry) -> Self {
        let MaskGeometry {
            logits,
            padded,
            valid,
            original,
        } = geometry;
        // Only the rows/columns of the padded resize that survive the crop are computed.
        let (mut up_rows, mut up_cols) = taps(logits, padded);
        up_rows.truncate(valid.0);
        up_cols.truncate(valid.1);
        let down = (valid != original).then(|| taps(valid, original));
        Self {
            geometry,
            up_rows,
            up_cols,
            down,
        }
    }

    /// The geometry.
    pub fn geometry(&self) -> MaskGeometry {
        self.geometry
    }

    /// One mask's logits at the original size, row-major `[h, w]`.
    pub fn resize(&self, logits: &[f32]) -> Vec<f32> {
        let g = self.geometry;
        let valid = resize(
            logits,
            g.logits.1,
            g.logits,
            g.valid,
            &self.up_rows,
            &self.up_cols,
        );
        match &self.down {
            None => valid,
            Some((rows, cols)) => resize(&valid, g.valid.1, g.valid, g.original, rows, cols),
        }
    }

    /// The binary mask (`logit > 0` after both resizes) as COCO RLE at the original size.
    /// Logits that are all `≤ 0` (or all `> 0`) stay so under bilinear interpolation, whose
    /// weights are non-negative, so those masks skip the resize.
    pub fn encode(&self, logits: &[f32]) -> Rle {
        let (h, w) = self.geometry.original;
        let total = (h * w) as u32;
        if logits.iter().all(|&v| v <= 0.0) {
            return Rle {
                h: h as u32,
                w: w as u32,
                counts: vec![total],
            };
        }
        let full = self.resize(logits);
        rle_column_major(&full, h, w)
    }

    /// The empty mask at the original size (a pruned frame).
    pub fn empty(&self) -> Rle {
        let (h, w) = self.geometry.original;
        Rle {
            h: h as u32,
            w: w as u32,
            counts: vec![(h * w) as u32],
        }
    }
}

/// COCO RLE of `values > 0` for a row-major `[h, w]` map: runs in column-major order,
/// starting with a (possibly empty) run of zeros.
pub fn rle_column_major(values: &[f32], h: usize, w: usize) -> Rle {
    clip_vis_eval::track::rle_from_row_major(h, w, |i| values[i] > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_starts_with_zeros_and_runs_down_columns() {
        // [[1, 0], [1, 1]] column-major: 1,1 | 0,1 → zeros 0, ones 2, zeros 1, ones 1.
        let rle = rle_column_major(&[1.0, -1.0, 2.0, 3.0], 2, 2);
        assert_eq!(rle.counts, vec![0, 2, 1, 1]);
        assert_eq!(hotcoco::mask::decode(&rle), vec![1, 1, 0, 1]);
    }

    #[test]
    fn identity_geometry_is_a_copy() {
        let g = MaskGeometry {
            logits: (2, 3),
            padded: (2, 3),
            valid: (2, 3),
            original: (2, 3),
        };
        let m = [1.0, -2.0, 3.0, 4.0, 5.0, -6.0];
        assert_eq!(MaskResizer::new(g).resize(&m), m.to_vec());
    }
}
