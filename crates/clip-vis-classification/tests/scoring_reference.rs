//! The video score, top-k pairs, per-frame pruning and mask scores against the PyTorch
//! reference of SPEC §6.3–6.5 (`scripts/fixtures/gen_matching_scoring.py`), including the
//! weighting ablations.

use clip_vis_classification::scoring::{frame_score, keeps_frame, softmax_rows};
use clip_vis_classification::{MaskStats, ScoreWeights, VideoScores};
use safetensors::SafeTensors;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/scoring_cases.safetensors"
);

fn raw(st: &SafeTensors, name: &str) -> Vec<u8> {
    st.tensor(name)
        .unwrap_or_else(|_| panic!("missing {name}"))
        .data()
        .to_vec()
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    raw(st, name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    raw(st, name)
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1e-3)
}

#[test]
fn scores_selection_and_pruning_equal_the_reference() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut worst = 0.0f32;
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let get = |k: &str| case[k].as_u64().unwrap() as usize;
        let (frames, queries, classes) = (get("frames"), get("queries"), get("classes"));
        let pixels = get("height") * get("width");
        let weights = ScoreWeights {
            use_iou: case["use_iou"].as_bool().unwrap(),
            use_object: case["use_object"].as_bool().unwrap(),
        };
        let name = case["name"].as_str().unwrap();
        let t = |k: &str| f32s(&st, &format!("case{i}.{k}"));
        let (object, logits, ious, masks) =
            (t("obj_logits"), t("cls_logits"), t("ious"), t("masks"));

        let mut scores = VideoScores::new(queries, classes, weights);
        let mut probabilities = Vec::new();
        for f in 0..frames {
            let p = softmax_rows(
                &logits[f * queries * classes..(f + 1) * queries * classes],
                classes,
            );
            scores.add_frame(
                &p,
                &ious[f * queries..(f + 1) * queries],
                &object[f * queries * 2..(f + 1) * queries * 2],
            );
            probabilities.push(p);
        }
        let video = scores.scores();
        for (got, want) in video.iter().zip(t("video_scores")) {
            worst = worst.max((got - want).abs() / want.abs().max(1e-3));
            assert!(close(*got, want), "{name}: video score {got} vs {want}");
        }
        // Per-frame scores of every (frame, query, class).
        let per_frame = t("per_frame_scores");
        for f in 0..frames {
            for q in 0..queries {
                for c in 0..classes {
                    let got = frame_score(
                        probabilities[f][q * classes + c],
                        &object[(f * queries + q) * 2..],
                    );
                    let want = per_frame[(f * queries + q) * classes + c];
                    assert!(close(got, want), "{name}: frame score {got} vs {want}");
                }
            }
        }
        let pairs = scores.top_pairs(get("detections"));
        let (top_q, top_l) = (
            i64s(&st, &format!("case{i}.top_query")),
            i64s(&st, &format!("case{i}.top_label")),
        );
        let keep = raw(&st, &format!("case{i}.keep"));
        let (mask_score, score) = (t("mask_score"), t("score"));
        assert_eq!(pairs.len(), top_q.len(), "{name}");
        for (k, pair) in pairs.iter().enumerate() {
            assert_eq!(
                (pair.query as i64, pair.label as i64),
                (top_q[k], top_l[k]),
                "{name}: pair {k}"
            );
            let mut stats = MaskStats::default();
            for f in 0..frames {
                let s = frame_score(
                    probabilities[f][pair.query * classes + pair.label],
                    &object[(f * queries + pair.query) * 2..],
                );
                let kept = keeps_frame(s, pair.video_score);
                assert_eq!(
                    kept,
                    keep[k * frames + f] == 1,
                    "{name}: pair {k} frame {f}"
                );
                if kept {
                    let offset = (f * queries + pair.query) * pixels;
                    stats.add(MaskStats::of(&masks[offset..offset + pixels]));
                }
            }
            assert!(
                close(stats.score(), mask_score[k]) || (stats.score() - mask_score[k]).abs() < 1e-7,
                "{name}: mask score {} vs {}",
                stats.score(),
                mask_score[k]
            );
            let final_score = pair.video_score * stats.score();
            assert!(
                close(final_score, score[k]) || (final_score - score[k]).abs() < 1e-7,
                "{name}: score {final_score} vs {}",
                score[k]
            );
        }
    }
    eprintln!("worst relative error of the video scores: {worst:.2e}");
}
