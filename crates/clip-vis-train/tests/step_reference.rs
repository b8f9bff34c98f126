//! One full training step against PyTorch (`scripts/fixtures/gen_train_step.py`): the small
//! random-weight CLIP-VIS, identical weights, images, targets and sampled points; the loss
//! terms of every decoder output, the total, and the gradient of every trainable parameter
//! within 1e-4 relative.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use clip_vis_clip::TensorStore;
use clip_vis_model::ClipVisConfig;
use clip_vis_train::{Criterion, CriterionConfig, MatcherConfig, Targets, TrainingModel};
use safetensors::SafeTensors;
use std::collections::VecDeque;

mod common;
use common::{close, draws, tensor};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/train_step.safetensors"
);
const WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../clip-vis-model/tests/fixtures/clip_vis_small.safetensors"
);

/// A trainable parameter's shape, values and gradient.
type ParamGrad = (Vec<usize>, Vec<f32>, Option<Vec<f32>>);

/// Every trainable parameter's shape, values and gradient.
struct Collect<'a, A: AutodiffBackend> {
    grads: &'a A::Gradients,
    params: Vec<ParamGrad>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for Collect<'_, A> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let value = param.val();
        let grad = value
            .grad(self.grads)
            .map(|g| g.into_data().convert::<f32>().into_vec::<f32>().unwrap());
        self.params.push((
            value.dims().to_vec(),
            value
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap(),
            grad,
        ));
    }
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows)
        .map(|i| values[(i % rows) * cols + i / rows])
        .collect()
}

#[test]
fn one_step_equals_pytorch() {
    check_step::<Flex>(&Default::default());
}

/// The same step on wgpu (lavapipe in CI): autodiff through the GPU path (the gather core of
/// deformable attention, the device's matmuls and reductions), every loss and gradient against
/// the same PyTorch values.
#[cfg(feature = "wgpu")]
#[test]
fn one_step_equals_pytorch_on_wgpu() {
    if let Some(device) = clip_vis_clip::device::wgpu_test_device() {
        check_step::<burn::backend::Wgpu>(&device);
    }
}

/// The autodiff backend over the inner backend `I` (CLIP runs on `I`, outside the graph).
type A<I> = Autodiff<I>;

fn check_step<I: Backend>(device: &I::Device) {
    let Ok(bytes) = std::fs::read(FIXTURE) else {
        panic!("missing {FIXTURE}: run scripts/fixtures/gen_train_step.py");
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let config: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    let keys: Vec<String> = serde_json::from_str(&meta["trainable_keys"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();

    let store = TensorStore::open(WEIGHTS).unwrap();
    let model_meta: serde_json::Value = serde_json::from_str(&store.metadata()["config"]).unwrap();
    let model_config: ClipVisConfig = serde_json::from_value(serde_json::json!({
        "clip": model_meta["clip"], "pixel_decoder": model_meta["pixel_decoder"], "transformer_decoder": model_meta["transformer_decoder"],
    }))
    .unwrap();
    let model = TrainingModel::<A<I>>::load(&store, &model_config, device).unwrap();

    let (pixels, shape) = tensor(&st, "pixels").unwrap();
    let (h, w) = (shape[2], shape[3]);
    let pixels =
        Tensor::<I, 4>::from_data(TensorData::new(pixels, [shape[0], shape[1], h, w]), device);
    let counts: Vec<usize> = (0..shape[0])
        .map(|b| tensor(&st, &format!("tgt{b}.masks")).map_or(0, |t| t.1[0]))
        .collect();
    let targets = Targets {
        masks: counts
            .iter()
            .enumerate()
            .map(|(b, &n)| match tensor(&st, &format!("tgt{b}.masks")) {
                Some((v, _)) if n > 0 => {
                    Tensor::<A<I>, 3>::from_data(TensorData::new(v, [n, h, w]), device)
                }
                _ => Tensor::<A<I>, 3>::zeros([0, h, w], device),
            })
            .collect(),
    };
    let points = config["points"].as_u64().unwrap() as usize;
    let outputs = config["outputs"].as_u64().unwrap() as usize;
    let criterion = Criterion::new(CriterionConfig {
        points,
        matcher: MatcherConfig {
            points,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut all = VecDeque::new();
    for o in 0..outputs {
        all.extend(draws(&st, &format!("out{o}."), &counts).0);
    }
    let mut source = common::Injected(all);

    let terms = model
        .losses(pixels, &targets, &criterion, &mut source)
        .unwrap();
    assert!(source.0.is_empty(), "draws left over");
    let (want_losses, _) = tensor(&st, "losses").unwrap();
    for (o, out) in terms.outputs.iter().enumerate() {
        let got = [&out.object_ce, &out.mask, &out.dice, &out.iou].map(|t| {
            (*t).clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .unwrap()[0]
        });
        close(
            &format!("output {o} losses"),
            &got,
            &want_losses[o * 4..o * 4 + 4],
            1e-5,
        );
    }
    let total = terms
        .total
        .clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap();
    close("total", &total, &tensor(&st, "total").unwrap().0, 1e-5);

    let grads = terms.total.backward();
    let mut collect = Collect::<A<I>> {
        grads: &grads,
        params: Vec::new(),
    };
    model.head.visit(&mut collect);
    let mut worst = 0.0f32;
    for key in &keys {
        let (weight, wshape) = store_weight(&store, key);
        let (want, _) = tensor(&st, &format!("grad.{key}")).unwrap();
        let find = |weight: &[f32], wshape: &[usize]| {
            collect.params.iter().find_map(|(shape, values, grad)| {
                let grad = || grad.clone().unwrap_or_else(|| vec![0.0; values.len()]);
                if *shape == wshape && *values == weight {
                    Some(grad())
                } else if wshape.len() == 2
                    && *shape == [wshape[1], wshape[0]]
                    && *values == transpose(weight, wshape[0], wshape[1])
                {
                    // Burn's Linear stores [in, out]; PyTorch [out, in].
                    Some(transpose(&grad(), wshape[1], wshape[0]))
                } else {
                    None
                }
            })
        };
        let got = find(&weight, &wshape).or_else(|| {
            // PyTorch's packed attention `in_proj_{weight,bias}` is three projections here.
            let rows = wshape[0] / 3;
            let width = weight.len() / 3;
            let mut parts = Vec::new();
            for part in weight.chunks_exact(width) {
                let mut shape = wshape.clone();
                shape[0] = rows;
                parts.extend(find(part, &shape)?);
            }
            Some(parts)
        });
        let got = got.unwrap_or_else(|| panic!("no trainable parameter holds {key}"));
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        worst = worst.max(err);
        assert!(err <= 1e-4, "{key}: gradient relative error {err:.2e}");
    }
    eprintln!(
        "{} trainable tensors, worst gradient relative error {worst:.2e}",
        keys.len()
    );
}

fn store_weight(store: &TensorStore, key: &str) -> (Vec<f32>, Vec<usize>) {
    let raw = store
        .raw(key)
        .unwrap_or_else(|| panic!("weights lack {key}"));
    (raw.values.clone(), raw.shape.clone())
}
