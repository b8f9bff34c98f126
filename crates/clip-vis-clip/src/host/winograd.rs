//! 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3).
//!
//! Each 2x2 block of outputs ("tile") is computed from the 4x4 input patch around it as
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`, summed over the input channels. With the transforms done
//! once per tile (input) and once per filter (at load), the channel sums become 16 matrix
//! products `[tiles, c_in] · [c_in, c_out]`, one per position of the 4x4 transformed tile:
//! 16 products where the direct convolution needs 36 (2.25x fewer multiplications).
//!
//! Every transform coefficient is 0, ±1 or ±1/2, so the transforms are exact scalings and
//! regrouped additions of the same terms the direct convolution adds (the filter transform is
//! computed in f64 and rounded once); the result differs from the direct sum only by f32
//! rounding (tested against the direct path, `tests::winograd_equals_direct_convolution`).
//! This is the transform pair of Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks" (CVPR 2016), §4.1.

use super::{matmul, multiversion};
use rayon::prelude::*;

/// Positions of a transformed 4x4 tile.
const TAPS: usize = 16;

/// Tiles one task transforms and multiplies: about 128, so the 16 products' inputs and outputs
/// (`16 · tiles · channels` floats each) stay near one core's L2 cache.
const TILES_PER_TASK: usize = 128;

/// `G g Gᵀ` of every (input, output) channel pair: `[16, c_in, c_out]`, from the channels-last
/// patch weights `[9 · c_in, c_out]` (rows ordered `(ky, kx, c_in)`).
///
/// Entry `(i, j)` of `G g Gᵀ` is `Σ G[i][ky] · G[j][kx] · g[ky][kx]`; each coefficient is a
/// product of 0, ±1/2 and 1, exact in f64, and the sum is rounded to f32 once. Computed a row
/// of output channels at a time (the pixel decoder builds its FPN convolution at every call).
pub(super) fn transform_filters(
    weight: &[f32],
    channels_in: usize,
    channels_out: usize,
) -> Vec<f32> {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
    const G: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    // The nonzero (tap, coefficient) pairs of each transformed position `4 i + j`.
    let terms: Vec<Vec<(usize, f64)>> = (0..TAPS)
        .map(|position| {
            let (i, j) = (position / 4, position % 4);
            (0..9)
                .map(|tap| (tap, G[i][tap / 3] * G[j][tap % 3]))
                .filter(|&(_, coefficient)| coefficient != 0.0)
                .collect()
        })
        .collect();
    let mut out = vec![0f32; TAPS * channels_in * channels_out];
    let mut sum = vec![0f64; channels_out];
    for ci in 0..channels_in {
        let taps: [&[f32]; 9] = std::array::from_fn(|tap| {
            &weight[(tap * channels_in + ci) * channels_out..][..channels_out]
        });
        for (position, terms) in terms.iter().enumerate() {
            sum.fill(0.0);
            for &(tap, coefficient) in terms {
                add_scaled_f64(&mut sum, taps[tap], coefficient);
            }
            let row = &mut out[(position * channels_in + ci) * channels_out..][..channels_out];
            for (u, s) in row.iter_mut().zip(&sum) {
                *u = *s as f32;
            }
        }
    }
    out
}

multiversion! {
    /// `sum += coefficient · x` in f64.
    fn add_scaled_f64(sum: &mut [f64], x: &[f32], coefficient: f64) {
        for (s, &x) in sum.iter_mut().zip(x) {
            *s += coefficient * x as f64;
        }
    }
}

multiversion! {
    /// `Bᵀ d B` of one tile, for every channel: `d` holds the 16 input pixels of the 4x4 patch
    /// (row-major, `c` channels each, a zero row where the patch leaves the map), `v` receives
    /// the 16 transformed values as `[16, c]`.
    /// `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
    fn transform_input_tile(d: &[&[f32]; 16], v: &mut [f32]) {
        let c = v.len() / TAPS;
        let d: [&[f32]; 16] = d.map(|row| &row[..c]);
        let (v, rest) = v.split_at_mut(4 * c);
        let (v0, v1) = v.split_at_mut(2 * c);
        let (v00, v01) = v0.split_at_mut(c);
        let (v02, v03) = v1.split_at_mut(c);
        let (v1, rest) = rest.split_at_mut(4 * c);
        let (a, b) = v1.split_at_mut(2 * c);
        let (v10, v11) = a.split_at_mut(c);
        let (v12, v13) = b.split_at_mut(c);
        let (v2, v3) = rest.split_at_mut(4 * c);
        let (a, b) = v2.split_at_mut(2 * c);
        let (v20, v21) = a.split_at_mut(c);
        let (v22, v23) = b.split_at_mut(c);
        let (a, b) = v3.split_at_mut(2 * c);
        let (v30, v31) = a.split_at_mut(c);
        let (v32, v33) = b.split_at_mut(c);
        for k in 0..c {
            // Rows: t[i][s] = (Bᵀ d)[i][s], formed per column s.
            let columns: [[f32; 4]; 4] = std::array::from_fn(|s| {
                let (d0, d1, d2, d3) = (d[s][k], d[4 + s][k], d[8 + s][k], d[12 + s][k]);
                [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
            });
            let t: [[f32; 4]; 4] = std::array::from_fn(|i| columns.map(|column| column[i]));
            // Columns: (t B)[i][j].
            let column = |r: [f32; 4]| [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]];
            let [a0, a1, a2, a3] = column(t[0]);
            let [b0, b1, b2, b3] = column(t[1]);
            let [c0, c1, c2, c3] = column(t[2]);
            let [e0, e1, e2, e3] = column(t[3]);
            (v00[k], v01[k], v02[k], v03[k]) = (a0, a1, a2, a3);
            (v10[k], v11[k], v12[k], v13[k]) = (b0, b1, b2, b3);
            (v20[k], v21[k], v22[k], v23[k]) = (c0, c1, c2, c3);
            (v30[k], v31[k], v32[k], v33[k]) = (e0, e1, e2, e3);
        }
    }
}

multiversion! {
    /// `Aᵀ m A + bias` of one tile: `m` holds the 16 products' rows of this tile (`c` output
    /// channels each), `y` receives the 2x2 outputs `[4, c]` (row-major).
    /// `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
    fn transform_output_tile(m: &[&[f32]; 16], bias: &[f32], y: &mut [f32]) {
        let c = bias.len();
        let m: [&[f32]; 16] = m.map(|row| &row[..c]);
        let (top, bottom) = y[..4 * c].split_at_mut(2 * c);
        let (y00, y01) = top.split_at_mut(c);
        let (y10, y11) = bottom.split_at_mut(c);
        for k in 0..c {
            // Rows: s[a][j] = (Aᵀ m)[a][j], formed per column j.
            let columns: [[f32; 2]; 4] = std::array::from_fn(|j| {
                let (m0, m1, m2, m3) = (m[j][k], m[4 + j][k], m[8 + j][k], m[12 + j][k]);
                [m0 + m1 + m2, m1 - m2 - m3]
            });
            let s: [[f32; 4]; 2] = std::array::from_fn(|a| columns.map(|column| column[a]));
            let b = bias[k];
            y00[k] = s[0][0] + s[0][1] + s[0][2] + b;
            y01[k] = s[0][1] - s[0][2] - s[0][3] + b;
            y10[k] = s[1][0] + s[1][1] + s[1][2] + b;
            y11[k] = s[1][1] - s[1][2] - s[1][3] + b;
        }
    }
}

/// The convolution of channels-last `x` `[batch, h, w, c_in]` with the transformed filters `u`
/// (`[16, c_in, c_out]`) plus `bias`, same-size output `[batch, h, w, c_out]`; `epilogue` runs
/// on each task's finished output rows (first row index, rows) while they are in cache.
pub(super) fn conv3x3<F>(
    x: &[f32],
    (batch, h, w, channels_in): (usize, usize, usize, usize),
    u: &[f32],
    bias: &[f32],
    epilogue: F,
) -> Vec<f32>
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let channels_out = bias.len();
    let mut out = vec![0f32; batch * h * w * channels_out];
    if out.is_empty() {
        return out;
    }
    let tiles_x = w.div_ceil(2);
    let tile_rows = h.div_ceil(2);
    let threads = rayon::current_num_threads().max(1);
    // Tile rows per task: about TILES_PER_TASK tiles, and enough tasks to share the threads.
    let rows_per_task = TILES_PER_TASK
        .div_ceil(tiles_x)
        .min((batch * tile_rows).div_ceil(4 * threads))
        .clamp(1, tile_rows);
    let zeros = vec![0f32; channels_in];
    let image_len = h * w * channels_out;
    out.par_chunks_mut(image_len)
        .enumerate()
        .for_each(|(b, image_out)| {
            let image = &x[b * h * w * channels_in..(b + 1) * h * w * channels_in];
            image_out
                .par_chunks_mut(2 * rows_per_task * w * channels_out)
                .enumerate()
                .for_each(|(task, band)| {
                    let first_tile_row = task * rows_per_task;
                    let out_rows = band.len() / (w * channels_out);
                    let tiles = out_rows.div_ceil(2) * tiles_x;
                    // Transformed inputs, `[tiles, 16, c_in]`.
                    let mut v = vec![0f32; tiles * TAPS * channels_in];
                    for (t, v) in v.chunks_exact_mut(TAPS * channels_in).enumerate() {
                        let (ty, tx) = (first_tile_row + t / tiles_x, t % tiles_x);
                        let patch: [&[f32]; 16] = std::array::from_fn(|p| {
                            let iy = (2 * ty + p / 4) as isize - 1;
                            let ix = (2 * tx + p % 4) as isize - 1;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                &zeros[..]
                            } else {
                                let at = (iy as usize * w + ix as usize) * channels_in;
                                &image[at..at + channels_in]
                            }
                        });
                        transform_input_tile(&patch, v);
                    }
                    // The 16 products, `[16, tiles, c_out]`.
                    let mut m = vec![0f32; TAPS * tiles * channels_out];
                    for (tap, m) in m.chunks_exact_mut(tiles * channels_out).enumerate() {
                        matmul(
                            tiles,
                            channels_in,
                            channels_out,
                            &v[tap * channels_in..],
                            TAPS * channels_in,
                            &u[tap * channels_in * channels_out..],
                            m,
                            false,
                            1,
                        );
                    }
                    let mut y = vec![0f32; 4 * channels_out];
                    for t in 0..tiles {
                        let rows: [&[f32]; 16] = std::array::from_fn(|tap| {
                            let at = (tap * tiles + t) * channels_out;
                            &m[at..at + channels_out]
                        });
                        transform_output_tile(&rows, bias, &mut y);
                        let (ty, tx) = (t / tiles_x, t % tiles_x);
                        for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                            let (oy, ox) = (2 * ty + a, 2 * tx + b);
                            if oy < out_rows && ox < w {
                                let at = (oy * w + ox) * channels_out;
                                let from = (2 * a + b) * channels_out;
                                band[at..at + channels_out]
                                    .copy_from_slice(&y[from..from + channels_out]);
                            }
                        }
                    }
                    let first_row = b * h * w + 2 * first_tile_row * w;
                    epilogue(first_row, band);
                });
        });
    out
}
