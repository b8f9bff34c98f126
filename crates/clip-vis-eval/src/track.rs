//! Masks of one track over a video, and the video IoU of two tracks, computed on run-length
//! encodings without decoding them.

use hotcoco::Rle;

/// COCO RLE of an `h` x `w` mask given in row-major order by `on(y * w + x)`: runs in
/// column-major order, starting with a (possibly empty) run of zeros. Encodes straight from
/// the row-major source, without a transposed copy.
pub fn rle_from_row_major(h: usize, w: usize, on: impl Fn(usize) -> bool) -> Rle {
    let mut counts = Vec::new();
    let mut current = false;
    let mut run = 0u32;
    for x in 0..w {
        for y in 0..h {
            if on(y * w + x) != current {
                counts.push(run);
                run = 0;
                current = !current;
            }
            run += 1;
        }
    }
    counts.push(run);
    Rle {
        h: h as u32,
        w: w as u32,
        counts,
    }
}

/// One track's per-frame masks (`None` where the track has no mask in that frame).
#[derive(Debug, Clone, PartialEq)]
pub struct TrackMasks {
    /// Frame height.
    pub height: u32,
    /// Frame width.
    pub width: u32,
    /// Per-frame column-major run lengths (COCO order: alternating 0s and 1s, 0s first).
    pub frames: Vec<Option<Vec<u32>>>,
}

impl TrackMasks {
    /// Builds a track from hotcoco RLEs.
    pub fn from_rles(height: u32, width: u32, frames: Vec<Option<Rle>>) -> Self {
        Self {
            height,
            width,
            frames: frames.into_iter().map(|f| f.map(|r| r.counts)).collect(),
        }
    }

    /// Foreground pixels per frame (`None` where there is no mask).
    pub fn areas(&self) -> Vec<Option<u64>> {
        self.frames
            .iter()
            .map(|f| f.as_ref().map(|counts| rle_area(counts)))
            .collect()
    }
}

/// Foreground pixels of a run-length encoding (the odd runs).
pub fn rle_area(counts: &[u32]) -> u64 {
    counts
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&c| u64::from(c))
        .sum()
}

/// Pixels that are foreground in both encodings of the same frame, by walking both run lists
/// at once (linear in the number of runs).
pub fn rle_intersection(a: &[u32], b: &[u32]) -> u64 {
    let (mut i, mut j) = (0usize, 0usize);
    // Remaining length of the current run of each side, and whether that run is foreground.
    let (mut left_a, mut left_b) = (0u64, 0u64);
    let (mut fg_a, mut fg_b) = (true, true);
    let mut total = 0u64;
    loop {
        while left_a == 0 {
            if i == a.len() {
                return total;
            }
            left_a = u64::from(a[i]);
            fg_a = i % 2 == 1;
            i += 1;
        }
        while left_b == 0 {
            if j == b.len() {
                return total;
            }
            left_b = u64::from(b[j]);
            fg_b = j % 2 == 1;
            j += 1;
        }
        let step = left_a.min(left_b);
        if fg_a && fg_b {
            total += step;
        }
        left_a -= step;
        left_b -= step;
    }
}

/// Video IoU of the YTVIS / LV-VIS evaluators: `Σ_t |d_t ∩ g_t| / Σ_t |d_t ∪ g_t|`. A frame where
/// only one side has a mask adds that mask's area to the union only; an empty mask still counts
/// as a mask (area 0). Returns 0 when the union is empty.
pub fn video_iou(detection: &TrackMasks, ground_truth: &TrackMasks) -> f64 {
    let mut intersection = 0u64;
    let mut union = 0u64;
    for (d, g) in detection.frames.iter().zip(&ground_truth.frames) {
        match (d, g) {
            (Some(d), Some(g)) => {
                let overlap = rle_intersection(d, g);
                intersection += overlap;
                union += rle_area(d) + rle_area(g) - overlap;
            }
            (Some(only), None) | (None, Some(only)) => union += rle_area(only),
            (None, None) => {}
        }
    }
    if union > 0 {
        intersection as f64 / union as f64
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(mask: &[u8], h: u32, w: u32) -> Vec<u32> {
        hotcoco::mask::encode(mask, h, w).unwrap().counts
    }

    #[test]
    fn row_major_encoding_equals_hotcoco_on_the_transposed_mask() {
        let (h, w) = (7usize, 5usize);
        for seed in 0..20u64 {
            // A pseudo-random row-major mask; seed 0 is all zeros, seed 19 all ones.
            let row_major: Vec<bool> = (0..h * w)
                .map(|i| match seed {
                    0 => false,
                    19 => true,
                    _ => (i as u64 * 2654435761 + seed * 40503) % 7 < 3,
                })
                .collect();
            let mut column_major = vec![0u8; h * w];
            for y in 0..h {
                for x in 0..w {
                    column_major[x * h + y] = u8::from(row_major[y * w + x]);
                }
            }
            let rle = rle_from_row_major(h, w, |i| row_major[i]);
            assert_eq!((rle.h, rle.w), (h as u32, w as u32));
            assert_eq!(
                rle.counts,
                encode(&column_major, h as u32, w as u32),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn intersection_matches_decoded_masks() {
        let (h, w) = (7u32, 5u32);
        let mut seed = 12345u32;
        for _ in 0..200 {
            let mut random_mask = || {
                (0..h * w)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        u8::from((seed >> 16).is_multiple_of(3))
                    })
                    .collect::<Vec<u8>>()
            };
            let (a, b) = (random_mask(), random_mask());
            let expected = a
                .iter()
                .zip(&b)
                .filter(|(x, y)| **x == 1 && **y == 1)
                .count() as u64;
            assert_eq!(
                rle_intersection(&encode(&a, h, w), &encode(&b, h, w)),
                expected
            );
            assert_eq!(
                rle_area(&encode(&a, h, w)),
                a.iter().map(|&v| u64::from(v)).sum::<u64>()
            );
        }
    }

    #[test]
    fn video_iou_counts_one_sided_frames_in_the_union() {
        let full = vec![0, 4];
        let half = vec![0, 2, 2];
        let d = TrackMasks {
            height: 2,
            width: 2,
            frames: vec![Some(full.clone()), Some(half.clone()), None],
        };
        let g = TrackMasks {
            height: 2,
            width: 2,
            frames: vec![Some(half), None, Some(full)],
        };
        // frame 0: inter 2, union 4; frame 1: union 2; frame 2: union 4.
        assert!((video_iou(&d, &g) - 2.0 / 10.0).abs() < 1e-12);
        let empty = TrackMasks {
            height: 2,
            width: 2,
            frames: vec![None, None, None],
        };
        assert_eq!(video_iou(&empty, &empty), 0.0);
    }
}
