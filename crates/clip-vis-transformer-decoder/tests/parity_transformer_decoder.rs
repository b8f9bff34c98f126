//! Parity of the masked-attention decoder and its heads with a PyTorch reference of CLIP-VIS's
//! `MultiScaleMaskedTransformerDecoder`: every prediction (the learnable queries' and each
//! layer's), so the attention-mask path is checked layer by layer.
//!
//! Fixture: `tests/fixtures/transformer_decoder.safetensors`, written by
//! `scripts/fixtures/gen_transformer_decoder.py` (versions pinned in its header): 4 layers so
//! the 1/32, 1/16, 1/8 cycle wraps, batch 2, non-square maps, masks that block some positions
//! and some whole rows.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clip_vis_clip::TensorStore;
use clip_vis_transformer_decoder::{MultiScaleMaskedTransformerDecoder, TransformerDecoderConfig};

/// Relative error allowed: max |rust − torch| / max |torch|.
const REL_TOL: f32 = 1e-4;

fn io<B: Backend, const D: usize>(
    store: &TensorStore,
    key: &str,
    device: &B::Device,
) -> Tensor<B, D> {
    let raw = store
        .raw(&format!("io.{key}"))
        .unwrap_or_else(|| panic!("io.{key}"));
    let shape: [usize; D] = raw.shape.clone().try_into().expect("rank");
    Tensor::from_data(TensorData::new(raw.values.clone(), shape), device)
}

fn assert_close<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, expected: Tensor<B, D>) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let got: Vec<f32> = got.into_data().convert::<f32>().into_vec().unwrap();
    let expected: Vec<f32> = expected.into_data().convert::<f32>().into_vec().unwrap();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (index, diff) = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0f32),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    assert!(
        diff / scale <= REL_TOL,
        "{what}: relative error {:.3e} at flat index {index}: rust {} vs torch {}",
        diff / scale,
        got[index],
        expected[index]
    );
    eprintln!("{what}: relative error {:.2e}", diff / scale);
}

fn check<B: Backend>(device: &B::Device) {
    let path = format!(
        "{}/tests/fixtures/transformer_decoder.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    let store = TensorStore::open(path).expect("fixture");
    let meta: serde_json::Value = serde_json::from_str(&store.metadata()["config"]).unwrap();
    let config: TransformerDecoderConfig =
        serde_json::from_value(meta["clip_vis"].clone()).expect("config");
    let decoder = MultiScaleMaskedTransformerDecoder::<B>::load(&store, "", &config, device)
        .expect("weights");
    let maps = [0, 1, 2].map(|l| io::<B, 4>(&store, &format!("multi_scale_{l}"), device));
    let output = decoder.forward(&maps, io(&store, "mask_features", device));
    let predictions: Vec<_> = output
        .aux
        .iter()
        .chain(std::iter::once(&output.last))
        .collect();
    assert_eq!(predictions.len(), config.layers + 1);
    for (p, prediction) in predictions.into_iter().enumerate() {
        assert_close(
            &format!("pred{p} object logits"),
            prediction.object_logits.clone(),
            io(&store, &format!("pred{p}.object_logits"), device),
        );
        assert_close(
            &format!("pred{p} masks"),
            prediction.masks.clone(),
            io(&store, &format!("pred{p}.masks"), device),
        );
        assert_close(
            &format!("pred{p} ious"),
            prediction.ious.clone(),
            io(&store, &format!("pred{p}.ious"), device),
        );
    }
    assert_close(
        "pred_embds",
        output.embeds,
        io(&store, "pred_embds", device),
    );
}

#[test]
fn decoder_matches_pytorch_on_flex() {
    check::<burn::backend::Flex>(&Default::default());
}

#[test]
fn decoder_matches_pytorch_on_ndarray() {
    check::<burn::backend::NdArray>(&Default::default());
}
