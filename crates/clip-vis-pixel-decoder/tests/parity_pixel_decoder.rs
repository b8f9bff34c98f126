//! Parity of multi-scale deformable attention and of the whole pixel decoder with PyTorch
//! (Mask2Former semantics; the reference core is HuggingFace transformers' pure-PyTorch
//! `multi_scale_deformable_attention`).
//!
//! Fixtures: `tests/fixtures/{ms_deform_attn,pixel_decoder}.safetensors`, written by
//! `scripts/fixtures/gen_pixel_decoder.py` (versions pinned in its header): random perturbed
//! weights with detectron2 key names, non-square maps, sampling points outside the maps.

#[path = "../../clip-vis-clip/tests/common/mod.rs"]
mod common;

use burn::tensor::backend::Backend;
use clip_vis_clip::TensorStore;
use clip_vis_pixel_decoder::ms_deform_attn::SamplingCore;
use clip_vis_pixel_decoder::{
    MsDeformAttn, MsDeformAttnConfig, MsDeformAttnPixelDecoder, PixelDecoderConfig,
};
use common::{assert_close, fixture, io};

fn config(store: &TensorStore) -> serde_json::Value {
    serde_json::from_str(&store.metadata()["config"]).expect("config json")
}

fn spatial_shapes(store: &TensorStore) -> Vec<(usize, usize)> {
    store
        .raw("io.spatial_shapes")
        .expect("spatial shapes")
        .values
        .chunks(2)
        .map(|hw| (hw[0] as usize, hw[1] as usize))
        .collect()
}

/// `core`: the sampling core to force (`None`: the module's own choice for the backend).
fn check_ms_deform_attn<B: Backend>(device: &B::Device, core: Option<SamplingCore>) {
    let store = fixture("ms_deform_attn.safetensors");
    let meta = config(&store);
    let get = |k: &str| meta[k].as_u64().unwrap_or_else(|| panic!("config {k}")) as usize;
    let config = MsDeformAttnConfig {
        d_model: get("d_model"),
        heads: get("heads"),
        levels: get("levels"),
        points: get("points"),
    };
    let module = MsDeformAttn::<B>::load(&store, "", &config, device).expect("weights");
    let (query, reference, value) = (
        io(&store, "query", device),
        io(&store, "reference_points", device),
        io(&store, "value", device),
    );
    let output = match core {
        Some(core) => module.forward_with(core, query, reference, value, &spatial_shapes(&store)),
        None => module.forward(query, reference, value, &spatial_shapes(&store)),
    };
    assert_close(
        "ms_deform_attn output",
        output,
        io(&store, "output", device),
    );
}

fn check_pixel_decoder<B: Backend>(device: &B::Device) {
    let store = fixture("pixel_decoder.safetensors");
    let meta = config(&store);
    let config: PixelDecoderConfig =
        serde_json::from_value(meta["clip_vis"].clone()).expect("clip_vis config");
    let decoder =
        MsDeformAttnPixelDecoder::<B>::load(&store, "", &config, device).expect("weights");
    let output = decoder.forward(
        io(&store, "res2", device),
        io(&store, "res3", device),
        io(&store, "res4", device),
        io(&store, "res5", device),
    );
    for (i, map) in output.multi_scale_features.into_iter().enumerate() {
        assert_close(
            &format!("multi_scale_{i}"),
            map,
            io(&store, &format!("multi_scale_{i}"), device),
        );
    }
    assert_close(
        "mask_features",
        output.mask_features,
        io(&store, "mask_features", device),
    );
}

#[test]
fn ms_deform_attn_matches_pytorch_on_flex() {
    check_ms_deform_attn::<burn::backend::Flex>(&Default::default(), None);
}

#[test]
fn ms_deform_attn_matches_pytorch_on_ndarray() {
    check_ms_deform_attn::<burn::backend::NdArray>(&Default::default(), None);
}

#[test]
fn pixel_decoder_matches_pytorch_on_flex() {
    check_pixel_decoder::<burn::backend::Flex>(&Default::default());
}

#[test]
fn pixel_decoder_matches_pytorch_on_ndarray() {
    check_pixel_decoder::<burn::backend::NdArray>(&Default::default());
}

/// Under autodiff the sampling runs through differentiable gathers (`SamplingCore::Gather`).
#[test]
fn ms_deform_attn_matches_pytorch_under_autodiff() {
    check_ms_deform_attn::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default(), None);
}

#[test]
fn pixel_decoder_matches_pytorch_under_autodiff() {
    check_pixel_decoder::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default());
}

/// The `grid_sample_2d` core (the GPU backends' default) on the CPU.
#[test]
fn ms_deform_attn_grid_sample_core_matches_pytorch() {
    check_ms_deform_attn::<burn::backend::Flex>(
        &Default::default(),
        Some(SamplingCore::GridSample),
    );
}
