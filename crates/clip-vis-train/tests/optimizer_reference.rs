//! The optimiser against PyTorch (`scripts/fixtures/gen_optim.py`): three AdamW updates of the
//! small CLIP-VIS's decoders with detectron2's decay groups, `clip_grad_norm_` at 0.01 over
//! all gradients, and the warmup multi-step schedule; the same gradients (a fixed function of
//! the parameters) on both sides. Every parameter within 1e-5 relative.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use clip_vis_clip::{TensorSink, TensorStore};
use clip_vis_train::optim::{stable_param_ids, HeadOptimizer, OptimizerConfig, ScheduleConfig};
use clip_vis_train::TrainableHead;

mod common;
use common::{close, tensor};

type A = Autodiff<Flex>;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/optimizer_steps.safetensors"
);
const WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../clip-vis-model/tests/fixtures/clip_vis_small.safetensors"
);

/// g(p) = 0.3·p + 0.05·sin(7p) for every parameter.
struct Gradients(GradientsParams);

impl ModuleVisitor<A> for Gradients {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let p = param.val().inner();
        let g = p.clone().mul_scalar(0.3) + p.mul_scalar(7.0).sin().mul_scalar(0.05);
        self.0
            .register::<<A as AutodiffBackend>::InnerBackend, D>(param.id, g);
    }
}

#[test]
fn three_updates_equal_torch_adamw() {
    let bytes = std::fs::read(FIXTURE).expect("run scripts/fixtures/gen_optim.py");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["config"]).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let store = TensorStore::open(WEIGHTS).unwrap();
    let model_meta: serde_json::Value = serde_json::from_str(&store.metadata()["config"]).unwrap();
    let model: clip_vis_model::ClipVisConfig = serde_json::from_value(serde_json::json!({
        "clip": model_meta["clip"], "pixel_decoder": model_meta["pixel_decoder"], "transformer_decoder": model_meta["transformer_decoder"],
    }))
    .unwrap();
    let device = Default::default();
    let mut head = stable_param_ids(TrainableHead::<A>::load(&store, &model, &device).unwrap());
    let schedule = ScheduleConfig {
        max_iter: config["max_iter"].as_u64().unwrap() as usize,
        steps: vec![config["steps"][0].as_u64().unwrap() as usize],
        gamma: config["gamma"].as_f64().unwrap(),
        warmup_iters: config["warmup_iters"].as_u64().unwrap() as usize,
        warmup_factor: config["warmup_factor"].as_f64().unwrap(),
        warmup_linear: true,
    };
    let base_lr = config["base_lr"].as_f64().unwrap();
    let mut optimizer = HeadOptimizer::new(
        OptimizerConfig {
            lr: base_lr,
            weight_decay: config["weight_decay"].as_f64().unwrap(),
            clip_norm: Some(config["clip"].as_f64().unwrap()),
            ..OptimizerConfig::default()
        },
        &head,
    );
    // The decay groups hold what detectron2's rules give (weights, norms, embeddings). Each
    // attention layer's packed in_proj (weight, bias) is three linears here: 4 more tensors.
    let groups: Vec<usize> = serde_json::from_value(config["groups"].clone()).unwrap();
    let attention_layers = 2 * model.transformer_decoder.layers;
    let sizes = optimizer.group_sizes();
    assert_eq!(sizes[1..], groups[1..], "norm and embedding groups");
    assert_eq!(sizes[0], groups[0] + 4 * attention_layers, "weight group");
    let (lrs, _) = tensor(&st, "lrs").unwrap();
    let (norms, _) = tensor(&st, "norms").unwrap();
    for t in 0..config["updates"].as_u64().unwrap() as usize {
        let lr = base_lr * schedule.multiplier(t);
        assert!(
            (lr - f64::from(lrs[t])).abs() < 1e-6 * base_lr,
            "step {t}: lr {lr} vs {}",
            lrs[t]
        );
        let mut grads = Gradients(GradientsParams::new());
        head.visit(&mut grads);
        let (next, norm) = optimizer.step(lr, head, grads.0);
        assert!(
            (norm - f64::from(norms[t])).abs() < 1e-4 * f64::from(norms[t]),
            "step {t}: norm {norm} vs {}",
            norms[t]
        );
        head = next;
    }
    let mut sink = TensorSink::new();
    head.valid().save(&mut sink);
    for (key, saved) in sink.tensors() {
        let (want, _) = tensor(&st, key).unwrap_or_else(|| panic!("{key} not in the fixture"));
        close(key, &saved.values, &want, 1e-5);
    }
}
