//! The whole video path against the PyTorch reference (`scripts/fixtures/gen_video.py`): the
//! small random-weight CLIP-VIS of `clip-vis-model`'s fixtures on 12 synthetic 44x60 frames
//! (resized to short side 64), top-K matching with T = 9 and K = 3 or 5, RN50 mask pooling
//! against a 6-category vocabulary (one with synonyms), the weighted scores, the top 20
//! detections and their RLE masks at the original size. Scores agree within 1e-4 and every
//! mask pixel agrees, except the few the reference lists as within 1e-4 of the threshold.

mod common;

use burn::backend::Flex;
use clip_vis::classification::Vocabulary;
use clip_vis::matching::{MatchConfig, Strategy};
use clip_vis::video::results::{records, ResultsWriter};
use clip_vis::video::{VideoConfig, VideoSession};
use common::{fixture_classifier, root, small_model, tensor_bytes, video_intermediates};
use safetensors::SafeTensors;

/// The classifier from the reference's token ids, checked against the reference's own.
fn classifier(
    model: &clip_vis::model::ClipVis<Flex>,
    st: &SafeTensors,
) -> clip_vis::clip::zero_shot::TextClassifier<Flex> {
    let classifier = fixture_classifier(model, st);
    let (want, _) = tensor_bytes(st, "text_classifier");
    let want: Vec<f32> = want
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let got = classifier
        .embeddings
        .clone()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "text classifier {a} vs {b}");
    }
    classifier
}

fn check(k: usize) {
    let device = Default::default();
    let model = small_model::<Flex>(&device);
    let dir = root().join("tests/fixtures/video_small");
    let bytes = video_intermediates();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("expected_k{k}.json"))).unwrap(),
    )
    .unwrap();
    let names: Vec<String> = expected["vocabulary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let vocabulary = Vocabulary::from_names(&names, "fixture").unwrap();
    let config = VideoConfig {
        strategy: Strategy::TopK(MatchConfig {
            memory_frames: 9,
            topk_frames: k,
        }),
        detections: 20,
        short_side: 64,
        ..VideoConfig::default()
    };
    let mut session =
        VideoSession::new(&model, classifier(&model, &st), vocabulary, config, &device).unwrap();
    for f in 0..12 {
        session
            .push(clip_vis::image_io::read_rgb(&dir.join(format!("frame_{f:03}.png"))).unwrap())
            .unwrap();
    }
    let mut finished = session.finish().unwrap();
    // The streaming writer (what `segment` uses) and the in-memory records agree.
    let path = std::env::temp_dir().join(format!(
        "clip-vis-video-pipeline-{}-k{k}.json",
        std::process::id()
    ));
    let mut writer = ResultsWriter::create(&path).unwrap();
    writer.write_video(1, &mut finished).unwrap();
    writer.finish().unwrap();
    let streamed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    // A track or frame past the end is an error, not a panic.
    let count = finished.tracks.len();
    assert!(matches!(
        finished.mask_string(count, 0),
        Err(clip_vis::Error::OutOfRange { what: "track", index, .. }) if index == count
    ));
    assert!(matches!(
        finished.mask_string(0, 12),
        Err(clip_vis::Error::OutOfRange {
            what: "frame",
            index: 12,
            count: 12
        })
    ));
    let tracks = finished.into_tracks().unwrap();
    // Through text on both sides, so f32 scores read back alike.
    let got: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&records(1, &tracks)).unwrap()).unwrap();
    assert_eq!(streamed, got);
    let got = got.as_array().unwrap();
    let want = expected["results"].as_array().unwrap();
    assert_eq!(got.len(), want.len());

    let (near, _) = tensor_bytes(&st, &format!("near_zero_k{k}"));
    let near: Vec<i64> = near
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let near: Vec<[usize; 4]> = near
        .chunks_exact(4)
        .map(|c| [c[0] as usize, c[1] as usize, c[2] as usize, c[3] as usize])
        .collect();
    let mut identical_strings = 0;
    let mut worst_score = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g["category_id"], w["category_id"], "K={k} record {i}");
        let (gs, ws) = (g["score"].as_f64().unwrap(), w["score"].as_f64().unwrap());
        assert!(
            (gs - ws).abs() < 1e-4,
            "K={k} record {i}: score {gs} vs {ws}"
        );
        worst_score = worst_score.max((gs - ws).abs());
        let (gm, wm) = (
            g["segmentations"].as_array().unwrap(),
            w["segmentations"].as_array().unwrap(),
        );
        assert_eq!(gm.len(), 12);
        for f in 0..12 {
            let (gc, wc) = (
                gm[f]["counts"].as_str().unwrap(),
                wm[f]["counts"].as_str().unwrap(),
            );
            if gc == wc {
                identical_strings += 1;
                continue;
            }
            let decode = |s: &str| {
                hotcoco::mask::decode(&hotcoco::mask::rle_from_string(s, 44, 60).unwrap())
            };
            let (a, b) = (decode(gc), decode(wc));
            for x in 0..60 {
                for y in 0..44 {
                    if a[y + 44 * x] != b[y + 44 * x] {
                        assert!(near.contains(&[i, f, y, x]), "K={k} record {i} frame {f}: pixel ({y}, {x}) differs and is not near the threshold");
                    }
                }
            }
        }
    }
    eprintln!(
        "K={k}: {identical_strings} of {} RLE strings identical, largest score difference {worst_score:.1e}",
        12 * got.len()
    );
}

#[test]
fn whole_video_equals_the_reference_k3() {
    check(3);
}

#[test]
fn whole_video_equals_the_reference_k5() {
    check(5);
}
