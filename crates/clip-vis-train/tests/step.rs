//! One training step on the small random-weight CLIP-VIS of `clip-vis-model`'s fixtures: the
//! loss is finite, every trainable parameter gets a finite gradient, the frozen CLIP gets none
//! (it sits outside the graph), and bad targets are clear errors or correct losses, never NaN.

use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::module::{ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor, TensorData};
use clip_vis_clip::TensorStore;
use clip_vis_model::ClipVisConfig;
use clip_vis_train::{
    Criterion, CriterionConfig, MatcherConfig, SeededPoints, Targets, TrainError, TrainingModel,
};

type A = Autodiff<Flex>;

fn model() -> TrainingModel<A> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clip-vis-model/tests/fixtures/clip_vis_small.safetensors"
    );
    let store = TensorStore::open(path).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&store.metadata()["config"]).unwrap();
    let config: ClipVisConfig = serde_json::from_value(serde_json::json!({
        "clip": meta["clip"], "pixel_decoder": meta["pixel_decoder"], "transformer_decoder": meta["transformer_decoder"],
    }))
    .unwrap();
    TrainingModel::load(&store, &config, &Default::default()).unwrap()
}

fn criterion() -> Criterion {
    // Fewer points than the released 12544 keep the test quick; the semantics are the same.
    Criterion::new(CriterionConfig {
        points: 256,
        matcher: MatcherConfig {
            points: 256,
            ..Default::default()
        },
        ..Default::default()
    })
}

fn rectangle(
    h: usize,
    w: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Vec<f32> {
    (0..h * w)
        .map(|i| {
            if rows.contains(&(i / w)) && cols.contains(&(i % w)) {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

fn masks(list: Vec<Vec<f32>>, h: usize, w: usize) -> Tensor<A, 3> {
    let n = list.len();
    Tensor::from_data(
        TensorData::new(list.concat(), [n, h, w]),
        &Default::default(),
    )
}

/// Counts the trainable parameters with and without a finite gradient.
struct GradCheck<'a> {
    grads: &'a <A as AutodiffBackend>::Gradients,
    with: usize,
    without: usize,
    non_finite: usize,
}

impl ModuleVisitor<A> for GradCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        match param.val().grad(self.grads) {
            Some(g) => {
                self.with += 1;
                if g.into_data()
                    .into_vec::<f32>()
                    .unwrap()
                    .iter()
                    .any(|v| !v.is_finite())
                {
                    self.non_finite += 1;
                }
            }
            None => self.without += 1,
        }
    }
}

#[test]
fn one_step_gives_every_trainable_parameter_a_gradient_and_clip_none() {
    let model = model();
    let (h, w) = (64, 96);
    let pixels = Tensor::<Flex, 4>::random(
        [2, 3, h, w],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let targets = Targets {
        masks: vec![
            masks(
                vec![
                    rectangle(h, w, 4..30, 10..50),
                    rectangle(h, w, 20..60, 40..90),
                ],
                h,
                w,
            ),
            masks(vec![rectangle(h, w, 0..64, 0..20)], h, w),
        ],
    };
    let terms = model
        .losses(pixels, &targets, &criterion(), &mut SeededPoints::new(7))
        .unwrap();
    assert_eq!(
        terms.outputs.len(),
        4,
        "the last output and 3 auxiliary ones (DEC_LAYERS 4)"
    );
    let total = terms.total.clone().into_data().into_vec::<f32>().unwrap()[0];
    assert!(total.is_finite() && total > 0.0, "{total}");
    let grads = terms.total.backward();
    let mut check = GradCheck {
        grads: &grads,
        with: 0,
        without: 0,
        non_finite: 0,
    };
    model.head.visit(&mut check);
    assert!(check.with > 100, "{} parameters with gradients", check.with);
    assert_eq!(
        check.without, 0,
        "every trainable parameter is reached by the loss"
    );
    assert_eq!(check.non_finite, 0);
    // The CLIP towers are a module of the inner backend: they cannot hold gradients at all.
    let clip_params = model.clip.num_params();
    assert!(clip_params > 0);
}

#[test]
fn empty_masks_and_empty_batches_give_finite_losses() {
    let model = model();
    let (h, w) = (64, 96);
    let pixels = || {
        Tensor::<Flex, 4>::random(
            [2, 3, h, w],
            Distribution::Normal(0.0, 1.0),
            &Default::default(),
        )
    };
    let empty = || masks(vec![vec![0.0; h * w]], h, w);
    let none = || Tensor::<A, 3>::zeros([0, h, w], &Default::default());
    for (name, targets) in [
        (
            "every mask empty",
            Targets {
                masks: vec![empty(), empty()],
            },
        ),
        (
            "no targets at all",
            Targets {
                masks: vec![none(), none()],
            },
        ),
        (
            "one image without targets",
            Targets {
                masks: vec![none(), masks(vec![rectangle(h, w, 5..40, 5..40)], h, w)],
            },
        ),
    ] {
        let terms = model
            .losses(pixels(), &targets, &criterion(), &mut SeededPoints::new(3))
            .unwrap();
        for (o, out) in terms.outputs.iter().enumerate() {
            for (k, v) in [&out.object_ce, &out.mask, &out.dice, &out.iou]
                .iter()
                .enumerate()
            {
                let v = (*v).clone().into_data().into_vec::<f32>().unwrap()[0];
                assert!(v.is_finite(), "{name}: output {o} loss {k} = {v}");
            }
        }
        let grads = terms.total.backward();
        let mut check = GradCheck {
            grads: &grads,
            with: 0,
            without: 0,
            non_finite: 0,
        };
        model.head.visit(&mut check);
        assert_eq!(check.non_finite, 0, "{name}");
    }
}

#[test]
fn targets_of_the_wrong_size_are_an_error() {
    let model = model();
    let pixels = Tensor::<Flex, 4>::random(
        [1, 3, 64, 96],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    );
    let targets = Targets {
        masks: vec![masks(vec![vec![1.0; 60 * 90]], 60, 90)],
    };
    let err = model
        .losses(
            pixels.clone(),
            &targets,
            &criterion(),
            &mut SeededPoints::new(1),
        )
        .unwrap_err();
    assert!(
        matches!(err, TrainError::InvalidInput(_)) && err.to_string().contains("60x90"),
        "{err}"
    );
    let two = Targets {
        masks: vec![masks(vec![vec![1.0; 64 * 96]], 64, 96); 2],
    };
    let err = model
        .losses(pixels, &two, &criterion(), &mut SeededPoints::new(1))
        .unwrap_err();
    assert!(
        err.to_string().contains("2 target sets for a batch of 1"),
        "{err}"
    );
}
