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
use burn::tensor::Tensor;
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
    check_pixel_decoder_with::<B>(device, false)
}

/// `reference`: through `forward_reference` (Burn's ops; on the CPU backends `forward` runs the
/// host encoder instead).
fn check_pixel_decoder_with<B: Backend>(device: &B::Device, reference: bool) {
    let store = fixture("pixel_decoder.safetensors");
    let meta = config(&store);
    let config: PixelDecoderConfig =
        serde_json::from_value(meta["clip_vis"].clone()).expect("clip_vis config");
    let decoder =
        MsDeformAttnPixelDecoder::<B>::load(&store, "", &config, device).expect("weights");
    let inputs = ["res2", "res3", "res4", "res5"].map(|name| io::<B, 4>(&store, name, device));
    let [res2, res3, res4, res5] = inputs;
    let output = if reference {
        decoder.forward_reference(res2, res3, res4, res5)
    } else {
        decoder.forward(res2, res3, res4, res5)
    };
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

/// The tensor-op encoder on the CPU too (the path of the GPU backends).
#[test]
fn pixel_decoder_reference_path_matches_pytorch_on_flex() {
    check_pixel_decoder_with::<burn::backend::Flex>(&Default::default(), true);
}

/// The host encoder against the tensor-op one on a batch of two (the fixture has one frame).
#[test]
fn host_encoder_equals_reference_encoder_on_a_batch() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let store = fixture("pixel_decoder.safetensors");
    let config: PixelDecoderConfig =
        serde_json::from_value(config(&store)["clip_vis"].clone()).expect("clip_vis config");
    let decoder =
        MsDeformAttnPixelDecoder::<B>::load(&store, "", &config, &device).expect("weights");
    let inputs = ["res2", "res3", "res4", "res5"].map(|name| {
        let single = io::<B, 4>(&store, name, &device);
        // A second, different frame: the first scaled and shifted.
        Tensor::cat(vec![single.clone(), single * 0.7 + 0.3], 0)
    });
    let [res2, res3, res4, res5] = inputs.clone();
    let host = decoder.forward(res2, res3, res4, res5);
    let [res2, res3, res4, res5] = inputs;
    let reference = decoder.forward_reference(res2, res3, res4, res5);
    for (i, (ours, theirs)) in host
        .multi_scale_features
        .into_iter()
        .zip(reference.multi_scale_features)
        .enumerate()
    {
        assert_close(&format!("batched multi_scale_{i}"), ours, theirs);
    }
    assert_close(
        "batched mask_features",
        host.mask_features,
        reference.mask_features,
    );
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

/// On wgpu `forward` takes the generic `grid_sample_2d` core (the GPUs' path, not the CPU
/// kernel); the whole pixel decoder and the attention alone against PyTorch.
#[cfg(feature = "wgpu")]
#[test]
fn ms_deform_attn_and_pixel_decoder_match_pytorch_on_wgpu() {
    if let Some(device) = clip_vis_clip::device::wgpu_test_device() {
        check_ms_deform_attn::<burn::backend::Wgpu>(&device, None);
        check_ms_deform_attn::<burn::backend::Wgpu>(&device, Some(SamplingCore::GridSample));
        check_pixel_decoder::<burn::backend::Wgpu>(&device);
    }
}

/// Training on a GPU: the gather core under autodiff on wgpu (forward values).
#[cfg(feature = "wgpu")]
#[test]
fn gather_core_matches_pytorch_under_autodiff_on_wgpu() {
    if let Some(device) = clip_vis_clip::device::wgpu_test_device() {
        check_ms_deform_attn::<burn::backend::Autodiff<burn::backend::Wgpu>>(&device, None);
    }
}

/// The gather core under autodiff is the generic, differentiable reference.
#[test]
fn ms_deform_attn_gather_core_matches_pytorch() {
    check_ms_deform_attn::<burn::backend::Autodiff<burn::backend::Flex>>(
        &Default::default(),
        Some(SamplingCore::Gather),
    );
}

/// Training's core (the direct forward and backward kernels as one autodiff operation) gives
/// the gather core's outputs and the same gradients for the query, the values and every
/// parameter, on the fixture (43-84 % of the points outside the maps) and on Autodiff<NdArray>.
fn check_host_autodiff_gradients<B: burn::tensor::backend::Backend>() {
    use burn::backend::Autodiff;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Distribution, Tensor};
    type A<B> = Autodiff<B>;
    let device = Default::default();
    let store = fixture("ms_deform_attn.safetensors");
    let meta = config(&store);
    let get = |k: &str| meta[k].as_u64().unwrap() as usize;
    let config = MsDeformAttnConfig {
        d_model: get("d_model"),
        heads: get("heads"),
        levels: get("levels"),
        points: get("points"),
    };
    let module = MsDeformAttn::<A<B>>::load(&store, "", &config, &device).unwrap();
    let shapes = spatial_shapes(&store);
    let query: Tensor<A<B>, 3> = io(&store, "query", &device);
    let reference: Tensor<A<B>, 4> = io(&store, "reference_points", &device);
    let value: Tensor<A<B>, 3> = io(&store, "value", &device);
    let weights = Tensor::<A<B>, 3>::random(query.dims(), Distribution::Normal(0.0, 1.0), &device);
    struct Grads<'a, B: burn::tensor::backend::AutodiffBackend>(&'a B::Gradients, Vec<Vec<f32>>);
    impl<B: burn::tensor::backend::AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let g = param
                .val()
                .grad(self.0)
                .expect("every parameter gets a gradient");
            self.1
                .push(g.into_data().convert::<f32>().into_vec().unwrap());
        }
    }
    let run = |core: SamplingCore| {
        let (q, v) = (
            query.clone().detach().require_grad(),
            value.clone().detach().require_grad(),
        );
        let out = module.forward_with(core, q.clone(), reference.clone(), v.clone(), &shapes);
        let grads = (out.clone() * weights.clone()).sum().backward();
        let mut params = Grads::<A<B>>(&grads, Vec::new());
        module.visit(&mut params);
        let host = |t: Tensor<B, 3>| t.into_data().convert::<f32>().into_vec::<f32>().unwrap();
        (
            host(out.inner()),
            host(q.grad(&grads).unwrap()),
            host(v.grad(&grads).unwrap()),
            params.1,
        )
    };
    let (out, dq, dv, dp) = run(SamplingCore::HostAutodiff);
    let (out_ref, dq_ref, dv_ref, dp_ref) = run(SamplingCore::Gather);
    let close = |what: &str, a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: {x} vs {y} (gather core)"
            );
        }
    };
    close("output", &out, &out_ref);
    close("d query", &dq, &dq_ref);
    close("d value", &dv, &dv_ref);
    assert_eq!(dp.len(), dp_ref.len());
    for (i, (a, b)) in dp.iter().zip(&dp_ref).enumerate() {
        close(&format!("d parameter {i}"), a, b);
    }
}

#[test]
fn host_autodiff_core_gradients_equal_the_gather_core_on_flex() {
    check_host_autodiff_gradients::<burn::backend::Flex>();
}

#[test]
fn host_autodiff_core_falls_back_to_gathers_elsewhere() {
    // No direct kernel is wired for Autodiff<NdArray> unless the `ndarray` feature is on; the
    // core then takes the gather path, and the gradients agree either way.
    check_host_autodiff_gradients::<burn::backend::NdArray>();
}
