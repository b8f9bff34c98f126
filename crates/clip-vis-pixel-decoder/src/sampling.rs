//! Differentiable bilinear sampling built from gathers.
//!
//! Burn's `grid_sample_2d` has no backward pass in 0.21 and the host kernel of
//! [`crate::ms_deform_attn`] leaves the graph, so training samples through this function: four
//! gathers and their bilinear weights, which back-propagate to the sampled map and to the
//! sampling locations (through the weights) on every backend.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Bilinear samples of `input` `[n, c, h, w]` at `coords` `[n, p, 2]` (`(x, y)` in `[0, 1]`,
/// `align_corners=False`, zero outside the map): `[n, c, p]`. The same values as
/// `grid_sample(input, 2·coords − 1)` (PyTorch) and detectron2's `point_sample`.
pub fn sample_bilinear<B: Backend>(input: Tensor<B, 4>, coords: Tensor<B, 3>) -> Tensor<B, 3> {
    let [n, c, h, w] = input.dims();
    let [_, p, _] = coords.dims();
    let flat = input.reshape([n, c, h * w]);
    // Pixel coordinates of the sample: x·W − 0.5 (align_corners=False).
    let x = coords.clone().slice([0..n, 0..p, 0..1]).reshape([n, p]) * (w as f64) - 0.5;
    let y = coords.slice([0..n, 0..p, 1..2]).reshape([n, p]) * (h as f64) - 0.5;
    let x0 = x.clone().floor().detach();
    let y0 = y.clone().floor().detach();
    let (fx, fy) = (x - x0.clone(), y - y0.clone());
    let mut out: Option<Tensor<B, 3>> = None;
    for (dy, dx) in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)] {
        let xi = x0.clone() + dx;
        let yi = y0.clone() + dy;
        let wx = if dx == 0.0 {
            fx.clone().neg() + 1.0
        } else {
            fx.clone()
        };
        let wy = if dy == 0.0 {
            fy.clone().neg() + 1.0
        } else {
            fy.clone()
        };
        let inside = xi
            .clone()
            .greater_equal_elem(0.0)
            .bool_and(xi.clone().lower_equal_elem((w - 1) as f64))
            .bool_and(yi.clone().greater_equal_elem(0.0))
            .bool_and(yi.clone().lower_equal_elem((h - 1) as f64));
        let weight = (wx * wy).mask_fill(inside.bool_not(), 0.0);
        let index = (yi.clamp(0.0, (h - 1) as f64) * (w as f64) + xi.clamp(0.0, (w - 1) as f64))
            .int()
            .reshape([n, 1, p])
            .expand([n, c, p]);
        let values = flat.clone().gather(2, index) * weight.reshape([n, 1, p]);
        out = Some(match out {
            None => values,
            Some(acc) => acc + values,
        });
    }
    out.expect("four corners")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData};

    type A = Autodiff<Flex>;

    /// Gradients with respect to the map and to the coordinates equal central differences.
    #[test]
    fn gradients_match_finite_differences() {
        let device = Default::default();
        let input = Tensor::<A, 4>::random([1, 2, 5, 7], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        // Interior points away from pixel centres (where the bilinear weights have kinks).
        let coords: Vec<f32> = vec![0.31, 0.47, 0.62, 0.23, 0.14, 0.83];
        let coords_t =
            Tensor::<A, 3>::from_data(TensorData::new(coords.clone(), [1, 3, 2]), &device)
                .require_grad();
        let loss = (sample_bilinear(input.clone(), coords_t.clone()) * 1.7).sum();
        let grads = loss.backward();
        let grad_coords = coords_t
            .grad(&grads)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let grad_input = input
            .grad(&grads)
            .unwrap()
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let plain = Tensor::<Flex, 4>::from_data(input.clone().inner().into_data(), &device);
        let f = |c: &[f32]| {
            let t = Tensor::<Flex, 3>::from_data(TensorData::new(c.to_vec(), [1, 3, 2]), &device);
            (sample_bilinear(plain.clone(), t) * 1.7)
                .sum()
                .into_scalar()
        };
        let eps = 1e-3f32;
        for i in 0..coords.len() {
            let (mut up, mut down) = (coords.clone(), coords.clone());
            up[i] += eps;
            down[i] -= eps;
            let numeric = (f(&up) - f(&down)) / (2.0 * eps);
            assert!(
                (numeric - grad_coords[i]).abs() < 2e-2 * numeric.abs().max(1.0),
                "coordinate {i}: {numeric} vs {}",
                grad_coords[i]
            );
        }
        // d/d(input) of a sum of samples: the total bilinear weight on each pixel, in [0, 3·1.7].
        let total: f32 = grad_input.iter().sum();
        assert!((total - 2.0 * 3.0 * 1.7).abs() < 1e-4, "{total}");
    }
}
