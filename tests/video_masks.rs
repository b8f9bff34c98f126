//! The host output-mask resize against PyTorch's `F.interpolate` (bilinear,
//! `align_corners=False`), from `scripts/fixtures/gen_mask_resize.py`: values to 1e-6
//! relative, and every thresholded pixel whose logit is not within that of 0.

use clip_vis::video::masks::{MaskGeometry, MaskResizer};
use safetensors::SafeTensors;

#[test]
fn resize_equals_pytorch_bit_for_bit() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mask_resize.safetensors"
    ))
    .unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let floats = |name: &str| -> (Vec<f32>, Vec<usize>) {
        let t = st.tensor(name).unwrap();
        (
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            t.shape().to_vec(),
        )
    };
    let pair = |v: &serde_json::Value| {
        (
            v[0].as_u64().unwrap() as usize,
            v[1].as_u64().unwrap() as usize,
        )
    };
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let (masks, shape) = floats(&format!("case{i}.masks"));
        let (want, _) = floats(&format!("case{i}.resized"));
        let geometry = MaskGeometry {
            logits: (shape[1], shape[2]),
            padded: pair(&case["padded"]),
            valid: pair(&case["valid"]),
            original: pair(&case["original"]),
        };
        let resizer = MaskResizer::new(geometry);
        let plane = shape[1] * shape[2];
        let out = geometry.original.0 * geometry.original.1;
        let mut differing = 0;
        let mut worst = 0.0f32;
        for q in 0..shape[0] {
            let got = resizer.resize(&masks[q * plane..(q + 1) * plane]);
            let expected = &want[q * out..(q + 1) * out];
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in got.iter().zip(expected) {
                worst = worst.max((a - b).abs() / scale);
                if (a - b).abs() > 1e-6 * scale {
                    differing += 1;
                }
            }
            let rle = resizer.encode(&masks[q * plane..(q + 1) * plane]);
            let decoded = hotcoco::mask::decode(&rle);
            let (h, w) = geometry.original;
            for y in 0..h {
                for x in 0..w {
                    let want = expected[y * w + x];
                    if want.abs() > 1e-5 {
                        assert_eq!(
                            decoded[y + h * x] == 1,
                            want > 0.0,
                            "case {i} query {q} pixel ({y}, {x})"
                        );
                    }
                }
            }
        }
        assert_eq!(
            differing, 0,
            "case {i}: {differing} values differ, worst by {worst:e}"
        );
        eprintln!("case {i}: worst relative difference {worst:.1e}");
    }
}
