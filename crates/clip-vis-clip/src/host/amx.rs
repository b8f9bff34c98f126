//! Optional bfloat16 matrix products on Intel AMX (Sapphire Rapids and later Xeons).
//!
//! The opt-in `bf16` precision of the host kernels ([`super::set_precision`]): each product's
//! operands are rounded to bfloat16 (round to nearest even, 8 significant bits) and multiplied
//! by the AMX tile unit, which accumulates in f32. On the 2-core Xeon this project is built on,
//! ConvNeXt-B's stage-3 MLP products at 480x640 (`[1200, 512] · [512, 2048]` and
//! `[1200, 2048] · [2048, 512]`) take 7.9 ms each with `gemm`'s AVX-512 f32 kernels, 3.7 and
//! 2.4 ms on the tile unit. Results change by the rounding of the operands (about 3e-3 of a
//! product's largest entry), so it is never the default; the
//! README gives its measured effect on scores and masks.
//!
//! Written here, not taken from a crate: no Rust crate offers AMX products, and the stable
//! compiler has no AMX intrinsics, so the four instructions it needs are written with `asm!`
//! (the assembler knows them whatever the target features).
//!
//! Layout (what the tile instructions want): a tile is 16 rows of 64 bytes. The left operand is
//! converted a 32-row block at a time into `[k / 32][32 rows][32 values]`, so the two 16-row
//! tiles of one k-step are adjacent; the right operand (the weights, packed once per layer,
//! [`Panel`]) is `[n / 16][k / 32][16 pairs of rows][16 columns][2]`, the "VNNI" pairing in
//! which `tdpbf16ps` reads two consecutive k for each column. One kernel call computes a 32x32
//! block of the output as four f32 tiles, loaded from the output (which holds the bias or the
//! value to accumulate onto) and stored back.

use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows and columns of one output tile; a tile row is 64 bytes (16 f32 or 32 bf16).
const TILE: usize = 16;
/// The k extent of one tile product (32 bf16 values per tile row).
const K_STEP: usize = 32;
/// Output rows of one kernel call (two tiles).
const ROW_BLOCK: usize = 2 * TILE;

/// Whether the running CPU has AMX-BF16 and the kernel lets this process use the tile state
/// (Linux asks each process to request it). Checked once.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let has_amx = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
    if !has_amx {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with two integer arguments; it only changes which register
    // state this process may use.
    let granted = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    granted == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `x` rounded to the nearest bfloat16 (ties to even), as its bits; NaN stays a quiet NaN.
#[inline(always)]
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    if x.is_nan() {
        0x7fc0
    } else {
        rounded as u16
    }
}

/// A right operand `[k, n]` in the tile layout, rounded to bfloat16: built once per weight
/// matrix and kept beside it ([`PanelCache`]).
#[derive(Debug, Clone)]
pub struct Panel {
    data: Vec<u16>,
    k: usize,
    n: usize,
    k_steps: usize,
    /// Column tiles, rounded up to an even count (the kernel computes two at a time; the extra
    /// one is zeros).
    column_tiles: usize,
}

/// bf16 values in one `[16 pairs][16 columns][2]` tile of a [`Panel`].
const PANEL_TILE: usize = TILE * K_STEP;

impl Panel {
    /// Packs the row-major `[k, n]` matrix `b` (row stride `n`).
    pub fn new(k: usize, n: usize, b: &[f32]) -> Self {
        assert!(b.len() >= k * n, "Panel: matrix too short");
        let k_steps = k.div_ceil(K_STEP);
        let column_tiles = n.div_ceil(TILE).next_multiple_of(2);
        let mut data = vec![0u16; column_tiles * k_steps * PANEL_TILE];
        data.par_chunks_mut(k_steps * PANEL_TILE)
            .enumerate()
            .for_each(|(tile, column)| {
                let first = tile * TILE;
                let width = n.saturating_sub(first).min(TILE);
                if width == 0 {
                    return; // the zero tile that makes the count even
                }
                for row in 0..k {
                    let at = (row / K_STEP) * PANEL_TILE + (row % K_STEP / 2) * K_STEP + row % 2;
                    let src = &b[row * n + first..][..width];
                    for (c, &value) in src.iter().enumerate() {
                        column[at + 2 * c] = to_bf16(value);
                    }
                }
            });
        Self {
            data,
            k,
            n,
            k_steps,
            column_tiles,
        }
    }
}

/// The bf16 [`Panel`] of a weight matrix, made the first time a bf16 product needs it. Sits
/// beside each host layer's f32 weights; f32 runs never fill it.
#[derive(Debug, Clone, Default)]
pub struct PanelCache(OnceLock<Panel>);

impl PanelCache {
    /// The panel of `b` (`[k, n]`), packing it on first use.
    pub fn get(&self, k: usize, n: usize, b: &[f32]) -> &Panel {
        let panel = self.0.get_or_init(|| Panel::new(k, n, b));
        assert!(
            panel.k == k && panel.n == n,
            "PanelCache: one cache used for two matrix shapes"
        );
        panel
    }
}

/// The 64-byte tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut tile = 0;
    while tile < 8 {
        bytes[16 + 2 * tile] = 64; // bytes per row (u16, little-endian)
        bytes[48 + tile] = TILE as u8; // rows
        tile += 1;
    }
    TileConfig(bytes)
};

/// `out[m, n] += a[m, k] · panel` (row stride `lda` for `a`, `n` for `out`); `threads > 1`
/// spreads the 32-row blocks over the rayon pool. Requires [`available`].
pub fn matmul_accumulate(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    panel: &Panel,
    out: &mut [f32],
    threads: usize,
) {
    assert!(available(), "amx::matmul_accumulate without AMX");
    let n = panel.n;
    assert!(panel.k == k, "amx: panel depth {} for k {k}", panel.k);
    assert!(m == 0 || a.len() >= (m - 1) * lda + k, "amx: lhs too short");
    assert!(out.len() >= m * n, "amx: output too short");
    let blocks = m.div_ceil(ROW_BLOCK);
    let out_at = out.as_mut_ptr() as usize;
    // The converted left block, one buffer per task rather than one allocation per block.
    let left_len = panel.k_steps * ROW_BLOCK * K_STEP;
    let run = |left: &mut Vec<u16>, block: usize| {
        // SAFETY: each block writes only its own output rows (`block · 32 ..`), inside `out`
        // by the asserts above; AMX is available (asserted).
        unsafe { row_block(block, m, k, a, lda, panel, left, out_at as *mut f32) }
    };
    if threads > 1 && blocks > 1 {
        (0..blocks)
            .into_par_iter()
            .for_each_init(|| vec![0u16; left_len], run);
    } else {
        let mut left = vec![0u16; left_len];
        (0..blocks).for_each(|block| run(&mut left, block));
    }
}

/// Rows `32 · block ..` of the product, every column.
///
/// # Safety
/// AMX is available, and `out` points to `[m, panel.n]` floats no other thread writes in these
/// rows.
#[allow(clippy::too_many_arguments)]
unsafe fn row_block(
    block: usize,
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    panel: &Panel,
    left: &mut [u16],
    out: *mut f32,
) {
    let n = panel.n;
    let first = block * ROW_BLOCK;
    let rows = (m - first).min(ROW_BLOCK);
    // The left block in tile order, `[k_steps][32 rows][32]`. Its k padding is never written
    // (zero from allocation); rows past `rows` still hold an earlier block's, so a partial
    // block clears them (they only feed output rows that are dropped, but stay finite).
    convert_rows(left, a, first, rows, k, lda);
    if rows < ROW_BLOCK {
        for step in left.chunks_exact_mut(ROW_BLOCK * K_STEP) {
            step[rows * K_STEP..].fill(0);
        }
    }
    // Output block staged here when it does not fill 32x32 inside `out`.
    let mut stage = [0f32; ROW_BLOCK * ROW_BLOCK];
    // SAFETY: the configuration is valid for palette 1.
    unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack)) };
    for pair in 0..panel.column_tiles / 2 {
        let first_column = pair * 2 * TILE;
        let columns = n.saturating_sub(first_column).min(2 * TILE);
        let whole = rows == ROW_BLOCK && columns == 2 * TILE;
        let (c_at, c_stride) = if whole {
            // SAFETY: the 32x32 block lies inside `out` (whole) at row `first`.
            (unsafe { out.add(first * n + first_column) }, n * 4)
        } else {
            for r in 0..rows {
                for c in 0..columns {
                    // SAFETY: row `first + r < m`, column `first_column + c < n`.
                    stage[r * ROW_BLOCK + c] =
                        unsafe { *out.add((first + r) * n + first_column + c) };
                }
            }
            (stage.as_mut_ptr(), ROW_BLOCK * 4)
        };
        let b0 = panel.data[2 * pair * panel.k_steps * PANEL_TILE..].as_ptr();
        // SAFETY: the tiles read `k_steps` steps of 2 KB from `left` and 1 KB from each panel
        // column, inside both buffers; the four output tiles lie inside `out` or `stage`.
        unsafe {
            std::arch::asm!(
                "tileloadd tmm0, [{c} + {cs}*1]",
                "tileloadd tmm1, [{c} + {cs}*1 + 64]",
                "mov {t}, {cs}",
                "shl {t}, 4",
                "add {t}, {c}",
                "tileloadd tmm2, [{t} + {cs}*1]",
                "tileloadd tmm3, [{t} + {cs}*1 + 64]",
                "2:",
                "tileloadd tmm4, [{a} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm5, [{a} + {s}*1 + 1024]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 2048",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{c} + {cs}*1], tmm0",
                "tilestored [{c} + {cs}*1 + 64], tmm1",
                "tilestored [{t} + {cs}*1], tmm2",
                "tilestored [{t} + {cs}*1 + 64], tmm3",
                c = in(reg) c_at,
                cs = in(reg) c_stride,
                t = out(reg) _,
                a = inout(reg) left.as_ptr() => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b0.add(panel.k_steps * PANEL_TILE) => _,
                s = in(reg) 64usize,
                steps = inout(reg) panel.k_steps => _,
                options(nostack),
            );
        }
        if !whole {
            for r in 0..rows {
                for c in 0..columns {
                    // SAFETY: as above.
                    unsafe {
                        *out.add((first + r) * n + first_column + c) = stage[r * ROW_BLOCK + c]
                    };
                }
            }
        }
    }
    // SAFETY: releases this thread's tile state (no tile is used after).
    unsafe { std::arch::asm!("tilerelease", options(nostack)) };
}

super::multiversion! {
    /// Rows `first .. first + rows` of `a` (row stride `lda`, `k` wide) into `left`'s tile order.
    fn convert_rows(left: &mut [u16], a: &[f32], first: usize, rows: usize, k: usize, lda: usize) {
        for r in 0..rows {
            let row = &a[(first + r) * lda..][..k];
            for (step, values) in row.chunks(K_STEP).enumerate() {
                let dst = &mut left[step * ROW_BLOCK * K_STEP + r * K_STEP..][..values.len()];
                for (d, &v) in dst.iter_mut().zip(values) {
                    *d = to_bf16(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AMX product equals an f64 product of the bf16-rounded operands to f32 accuracy, at
    /// shapes with partial row blocks, partial and odd column tiles, and k not a multiple of 32.
    #[test]
    fn amx_product_equals_rounded_operands_product() {
        if !available() {
            eprintln!("SKIPPED: no AMX-BF16 on this CPU");
            return;
        }
        let round = |x: f32| f32::from_bits((to_bf16(x) as u32) << 16);
        for &(m, k, n) in &[
            (1, 1, 1),
            (33, 45, 17),
            (64, 64, 64),
            (70, 100, 50),
            (5, 300, 40),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 13.0)
                .collect();
            let bias: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 - 3.0).collect();
            let panel = Panel::new(k, n, &b);
            // One thread reuses one left buffer across blocks (a partial last block after full
            // ones); two split the blocks.
            let mut serial = bias.clone();
            matmul_accumulate(m, k, &a, k, &panel, &mut serial, 1);
            let mut out = bias.clone();
            matmul_accumulate(m, k, &a, k, &panel, &mut out, 2);
            assert_eq!(serial, out, "{m}x{k}x{n}: one thread vs two");
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|l| round(a[i * k + l]) as f64 * round(b[l * n + j]) as f64)
                        .sum::<f64>()
                        + bias[i * n + j] as f64;
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                        "{m}x{k}x{n} at ({i}, {j}): {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties up to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(f32::NAN), 0x7fc0);
        assert_eq!(to_bf16(-2.0), 0xc000);
    }
}
