//! Point sampling, the matcher's costs and assignments, the importance-sampled points, the IoU
//! targets and the four losses against the PyTorch reference of the released criterion
//! (`scripts/fixtures/gen_criterion.py`), with the reference's random points injected.

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use clip_vis_train::{matching_cost, point_sample, Criterion, CriterionConfig, Targets};
use clip_vis_transformer_decoder::Prediction;
use safetensors::SafeTensors;

mod common;
use common::{close, draws, tensor};

type B = Flex;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/criterion_cases.safetensors"
);

fn t<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn vec<const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().into_vec::<f32>().unwrap()
}

#[test]
fn point_sample_equals_grid_sample() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (input, shape) = tensor(&st, "ps.input").unwrap();
    let (coords, cshape) = tensor(&st, "ps.coords").unwrap();
    let (want, _) = tensor(&st, "ps.output").unwrap();
    let got = point_sample(
        t(input, [shape[0], shape[1], shape[2], shape[3]]),
        t(coords, [cshape[0], cshape[1], 2]),
    );
    close("point_sample", &vec(got), &want, 1e-5);
}

#[test]
fn criterion_equals_the_reference() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (index, case) in cases.as_array().unwrap().iter().enumerate() {
        // The generator numbers its cases from 1.
        let i = index + 1;
        let name = case["name"].as_str().unwrap().to_string();
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let (batch, queries, h, w, outputs, points) = (
            get("batch"),
            get("queries"),
            get("height"),
            get("width"),
            get("outputs"),
            get("points"),
        );
        let counts: Vec<usize> = case["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let masks = (0..batch)
            .map(|b| match tensor(&st, &format!("case{i}.tgt{b}.masks")) {
                Some((v, _)) if counts[b] > 0 => t(v, [counts[b], 4 * h, 4 * w]),
                _ => Tensor::<B, 3>::zeros([0, 4 * h, 4 * w], &Default::default()),
            })
            .collect();
        let targets = Targets { masks };
        let config = CriterionConfig {
            points,
            matcher: clip_vis_train::MatcherConfig {
                points,
                ..Default::default()
            },
            ..Default::default()
        };
        let criterion = Criterion::new(config);
        let num_masks = Criterion::num_masks(&targets);
        for o in 0..outputs {
            let p = |k: &str| tensor(&st, &format!("case{i}.out{o}.{k}")).unwrap().0;
            let prediction = Prediction::<B> {
                masks: t(p("pred_masks"), [batch, queries, h, w]),
                object_logits: t(p("obj_logits"), [batch, queries, 2]),
                ious: t(p("pred_ious"), [batch, queries, 1]),
            };
            // The matcher's cost matrices on the reference's shared points.
            for (b, _) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
                let masks = t(p("pred_masks"), [batch, queries, h, w])
                    .slice([b..b + 1, 0..queries, 0..h, 0..w])
                    .reshape([queries, h, w]);
                let objects = t(p("obj_logits"), [batch, queries, 2])
                    .slice([b..b + 1, 0..queries, 0..2])
                    .reshape([queries, 2]);
                let cost = matching_cost(
                    &config.matcher,
                    masks,
                    objects,
                    targets.masks[b].clone(),
                    t(p(&format!("match_points{b}")), [points, 2]),
                );
                close(
                    &format!("{name} output {o} image {b}: cost"),
                    &vec(cost),
                    &p(&format!("cost{b}")),
                    1e-5,
                );
            }
            let mut source = draws(&st, &format!("case{i}.out{o}."), &counts);
            let losses = criterion
                .output_losses(&prediction, &targets, num_masks, &mut source)
                .unwrap();
            assert!(source.0.is_empty(), "{name} output {o}: draws left over");
            for (b, a) in losses.assignments.iter().enumerate() {
                let want = tensor(&st, &format!("case{i}.out{o}.match{b}"))
                    .map(|x| x.0)
                    .unwrap_or_default();
                let got: Vec<f32> = a
                    .queries
                    .iter()
                    .zip(&a.targets)
                    .flat_map(|(&q, &t)| [q as f32, t as f32])
                    .collect();
                assert_eq!(got, want, "{name} output {o} image {b}: assignment");
            }
            let (want_iou, _) =
                tensor(&st, &format!("case{i}.out{o}.iou_targets")).unwrap_or_default();
            let finite = |v: &[f32]| {
                v.iter()
                    .map(|x| if x.is_nan() { -1.0 } else { *x })
                    .collect::<Vec<_>>()
            };
            close(
                &format!("{name} output {o}: IoU targets"),
                &finite(&losses.iou_targets),
                &finite(&want_iou),
                1e-5,
            );
            let got = [losses.object_ce, losses.mask, losses.dice, losses.iou].map(|x| vec(x)[0]);
            let (want, _) = tensor(&st, &format!("case{i}.out{o}.losses")).unwrap();
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(a.is_finite(), "{name} output {o}: loss {k} is {a}");
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1e-3),
                    "{name} output {o}: loss {k}: {a} vs {b}"
                );
            }
            eprintln!("{name} output {o}: losses {got:?}");
        }
    }
}
