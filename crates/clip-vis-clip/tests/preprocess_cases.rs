//! open_clip's evaluation transform, byte for byte: torchvision `Resize(short side)` on a PIL
//! image (Pillow 13 bicubic, 8-bit fixed point), `CenterCrop`, `ToTensor`, `Normalize`.
//!
//! Cases from `tests/fixtures/preprocess_cases.safetensors` (`scripts/fixtures/gen_clip.py`):
//! downscales in both orientations, an upscale, identity sizes, crop offsets that round half
//! to even, saturated regions and one-pixel lines.

use burn::backend::Flex;
use clip_vis_clip::preprocess::{
    normalize_and_pad, resize_and_center_crop, resize_bicubic, RgbImage,
};
use clip_vis_clip::TensorStore;

/// The image size of the fixture's transform.
const SIZE: usize = 64;

fn image(store: &TensorStore, key: &str) -> RgbImage {
    let raw = store.raw(key).unwrap();
    let (height, width) = (raw.shape[0], raw.shape[1]);
    RgbImage::new(width, height, raw.values.iter().map(|&v| v as u8).collect()).unwrap()
}

#[test]
fn resize_crop_and_normalise_match_open_clip() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/preprocess_cases.safetensors"
    );
    let store = TensorStore::open(path).unwrap();
    let cases = store
        .keys()
        .iter()
        .filter(|k| k.ends_with(".image"))
        .count();
    assert!(cases >= 6, "{cases} cases");
    for case in 0..cases {
        let input = image(&store, &format!("case{case}.image"));
        let resized = image(&store, &format!("case{case}.resized"));
        let ours = resize_bicubic(&input, resized.width, resized.height);
        let differing = ours
            .pixels
            .iter()
            .zip(&resized.pixels)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "case {case}: {differing} resized bytes differ from PIL"
        );

        let cropped = resize_and_center_crop(&input, SIZE);
        let pixels: Vec<f32> = normalize_and_pad::<Flex>(&cropped, &Default::default())
            .into_data()
            .to_vec()
            .unwrap();
        let expected = &store.raw(&format!("case{case}.pixels")).unwrap().values;
        assert_eq!(pixels.len(), expected.len(), "case {case}: size");
        // open_clip divides by 255 then by std; clip-vis subtracts the 0-255 mean and divides by
        // the 0-255 std (as CLIP-VIS normalises): equal up to float rounding.
        let worst = pixels
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-5,
            "case {case}: normalised pixels differ by {worst}"
        );
    }
}
