//! Shared by the train crate's tests: fixture reading and injected random points.
#![allow(dead_code)]

use clip_vis_train::PointSource;
use safetensors::SafeTensors;
use std::collections::VecDeque;

/// Hands out the reference's random points in the order the criterion draws them.
pub struct Injected(pub VecDeque<(String, Vec<f32>)>);

impl PointSource for Injected {
    fn uniform(&mut self, n: usize, count: usize) -> Vec<f32> {
        let (name, values) = self
            .0
            .pop_front()
            .expect("more point draws than the reference made");
        assert_eq!(values.len(), n * count * 2, "draw {name}: wrong size");
        values
    }
}

/// A fixture tensor as f32 values (int64 converted) and its shape.
pub fn tensor(st: &SafeTensors, name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
    let t = st.tensor(name).ok()?;
    let values = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    Some((values, t.shape().to_vec()))
}

/// The reference's draws for decoder output `o`: the matcher's points of every image with
/// targets, then the loss's candidates and extra points (when any pair was matched).
pub fn draws(st: &SafeTensors, prefix: &str, counts: &[usize]) -> Injected {
    let mut draws = VecDeque::new();
    for (b, &n) in counts.iter().enumerate() {
        if n > 0 {
            let name = format!("{prefix}match_points{b}");
            draws.push_back((name.clone(), tensor(st, &name).unwrap().0));
        }
    }
    for k in ["cand", "extra"] {
        if let Some((v, _)) = tensor(st, &format!("{prefix}{k}")) {
            if !v.is_empty() {
                draws.push_back((k.to_string(), v));
            }
        }
    }
    Injected(draws)
}

/// Asserts `got` and `want` agree to `tol` relative to `want`'s largest magnitude.
pub fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * scale,
            "{what}[{i}]: {a} vs {b} (scale {scale})"
        );
    }
}
