//! Cosine costs between query sets and the Hungarian solve (`lsap`, SciPy's algorithm).

use crate::{MatchError, Result};

/// Checks one frame's row-major `[queries, dim]` embeddings and returns them with every row
/// scaled to unit length (`x / ‖x‖`, as the reference divides by the norm), plus the number of
/// queries. A NaN/infinite value or a zero row is an error naming `frame` and the query.
pub fn normalized_rows(embeddings: &[f32], dim: usize, frame: usize) -> Result<(Vec<f32>, usize)> {
    if dim == 0 || embeddings.is_empty() || !embeddings.len().is_multiple_of(dim) {
        return Err(MatchError::Shape {
            frame,
            message: format!(
                "{} embedding values do not form whole rows of dimension {dim}",
                embeddings.len()
            ),
        });
    }
    let queries = embeddings.len() / dim;
    let mut out = Vec::with_capacity(embeddings.len());
    for (query, row) in embeddings.chunks_exact(dim).enumerate() {
        if row.iter().any(|v| !v.is_finite()) {
            return Err(MatchError::NonFinite { frame, query });
        }
        // Accumulate in f64 so the norm is the correctly rounded one PyTorch computes.
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt() as f32;
        if norm == 0.0 || !norm.is_finite() {
            return Err(MatchError::ZeroEmbedding { frame, query });
        }
        out.extend(row.iter().map(|&v| v / norm));
    }
    Ok((out, queries))
}

/// `1 − cos` between unit rows: entry `[r, c]` (row-major, `rows × cols`) compares row `r` of
/// `row_set` with row `c` of `col_set`. One SGEMM (`matrixmultiply`), so the T memory frames of
/// 100 queries cost well under a millisecond.
pub fn cosine_cost(row_set: &[f32], col_set: &[f32], dim: usize) -> Vec<f32> {
    let rows = row_set.len() / dim;
    let cols = col_set.len() / dim;
    let mut out = vec![0.0f32; rows * cols];
    // SAFETY: the slices hold rows×dim, cols×dim and rows×cols values and the strides below
    // address exactly those row-major layouts (col_set is read transposed: stride 1 along k).
    unsafe {
        matrixmultiply::sgemm(
            rows,
            dim,
            cols,
            1.0,
            row_set.as_ptr(),
            dim as isize,
            1,
            col_set.as_ptr(),
            1,
            dim as isize,
            0.0,
            out.as_mut_ptr(),
            cols as isize,
            1,
        );
    }
    for v in &mut out {
        *v = 1.0 - *v;
    }
    out
}

/// Solves the square assignment problem on row-major `cost` (`n × n`, minimised) and returns
/// `perm` with `perm[row] = column`. Non-finite costs are an error (the solver would otherwise
/// fail or, in other implementations, loop).
pub fn solve_assignment(cost: &[f32], n: usize, frame: usize) -> Result<Vec<usize>> {
    debug_assert_eq!(cost.len(), n * n);
    if cost.iter().any(|v| !v.is_finite()) {
        return Err(MatchError::InvalidCost { frame });
    }
    let cost: Vec<f64> = cost.iter().map(|&v| f64::from(v)).collect();
    let (rows, cols) =
        lsap::solve(n, n, &cost, false).map_err(|_| MatchError::InvalidCost { frame })?;
    // SciPy returns the rows in order 0..n for a square problem; keep that contract explicit.
    let mut perm = vec![0; n];
    for (row, col) in rows.into_iter().zip(cols) {
        perm[row] = col;
    }
    Ok(perm)
}

/// Sum of the chosen entries `cost[row, perm[row]]`, accumulated in f32 like the reference.
pub(crate) fn assigned_cost(cost: &[f32], n: usize, perm: &[usize]) -> f32 {
    perm.iter()
        .enumerate()
        .map(|(row, &col)| cost[row * n + col])
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_cost_matches_a_direct_dot_product() {
        let a = [1.0, 0.0, 0.6, 0.8];
        let b = [0.0, 1.0, 1.0, 0.0, 0.6, 0.8];
        let cost = cosine_cost(&a, &b, 2);
        let expected = [1.0, 0.0, 0.4, 0.2, 0.4, 0.0];
        for (got, want) in cost.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{cost:?}");
        }
    }

    #[test]
    fn bad_rows_are_named() {
        assert!(matches!(
            normalized_rows(&[1.0, f32::NAN, 0.0, 1.0], 2, 4),
            Err(MatchError::NonFinite { frame: 4, query: 0 })
        ));
        assert!(matches!(
            normalized_rows(&[1.0, 1.0, 0.0, 0.0], 2, 1),
            Err(MatchError::ZeroEmbedding { frame: 1, query: 1 })
        ));
        assert!(matches!(
            normalized_rows(&[1.0; 3], 2, 0),
            Err(MatchError::Shape { .. })
        ));
    }

    #[test]
    fn solver_rejects_non_finite_costs_and_solves_a_small_case() {
        assert!(matches!(
            solve_assignment(&[0.0, f32::INFINITY, 1.0, 0.0], 2, 3),
            Err(MatchError::InvalidCost { frame: 3 })
        ));
        assert_eq!(
            solve_assignment(&[5.0, 1.0, 1.0, 5.0], 2, 0).unwrap(),
            vec![1, 0]
        );
    }
}
