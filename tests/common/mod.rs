//! Fixture loading shared by the facade's integration tests: the small random-weight CLIP-VIS
//! of `clip-vis-model`'s fixtures and the open-vocabulary classifier of `tests/fixtures/
//! video_small` (`scripts/fixtures/gen_video.py`), on any backend.
#![allow(dead_code)]

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use clip_vis::clip::zero_shot::{l2_normalize, TextClassifier};
use clip_vis::clip::TensorStore;
use clip_vis::model::{ClipVis, ClipVisConfig};
use safetensors::SafeTensors;
use std::path::PathBuf;

/// The facade's root folder.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The small model's weights (with its architecture in the `config` metadata).
pub fn small_model_store() -> TensorStore {
    TensorStore::open(
        root().join("crates/clip-vis-model/tests/fixtures/clip_vis_small.safetensors"),
    )
    .expect("small model fixture")
}

/// The architecture recorded in a model fixture's `config` metadata.
pub fn model_config(store: &TensorStore) -> ClipVisConfig {
    let meta: serde_json::Value =
        serde_json::from_str(&store.metadata()["config"]).expect("config json");
    serde_json::from_value(serde_json::json!({
        "clip": meta["clip"],
        "pixel_decoder": meta["pixel_decoder"],
        "transformer_decoder": meta["transformer_decoder"],
    }))
    .expect("fixture config")
}

/// The small CLIP-VIS on `device`.
pub fn small_model<B: Backend>(device: &B::Device) -> ClipVis<B> {
    let store = small_model_store();
    ClipVis::load(&store, &model_config(&store), device).expect("small model weights")
}

/// The video fixture's reference intermediates (token ids, text classifier, near-threshold
/// pixels), as raw bytes: deserialise with [`SafeTensors::deserialize`].
pub fn video_intermediates() -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/video_small/expected_intermediate.safetensors"))
        .expect("video fixture")
}

/// A tensor's little-endian bytes and shape.
pub fn tensor_bytes(st: &SafeTensors, name: &str) -> (Vec<u8>, Vec<usize>) {
    let t = st.tensor(name).expect("fixture tensor");
    (t.data().to_vec(), t.shape().to_vec())
}

/// Prompt templates per synonym in the fixture (`Templates::Vild`).
const TEMPLATES: usize = 14;

/// The video fixture's 6 categories (the second has a synonym): synonym row -> category.
pub const FIXTURE_CATEGORY_OF: [usize; 7] = [0, 1, 1, 2, 3, 4, 5];

/// The classifier of the fixture's vocabulary through `clip`'s text tower, from the
/// reference's token ids (the tiny text tower has a 1000-entry vocabulary, so the generator
/// maps real CLIP ids into it; see gen_video.py): per synonym, the normalised mean of its
/// normalised template embeddings, as [`TextClassifier::new`] computes from text.
pub fn fixture_classifier<B: Backend>(model: &ClipVis<B>, st: &SafeTensors) -> TextClassifier<B> {
    let (bytes, shape) = tensor_bytes(st, "text_tokens");
    let ids: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let encoded = l2_normalize(model.clip.encode_text(&ids, shape[1]).expect("token ids"));
    let [rows, dim] = encoded.dims();
    let synonyms = rows / TEMPLATES;
    assert_eq!(synonyms, FIXTURE_CATEGORY_OF.len(), "fixture synonyms");
    let embeddings: Tensor<B, 2> = l2_normalize(
        encoded
            .reshape([synonyms, TEMPLATES, dim])
            .mean_dim(1)
            .reshape([synonyms, dim]),
    );
    TextClassifier {
        embeddings,
        category_of: FIXTURE_CATEGORY_OF.to_vec(),
        num_categories: FIXTURE_CATEGORY_OF[FIXTURE_CATEGORY_OF.len() - 1] + 1,
    }
}
