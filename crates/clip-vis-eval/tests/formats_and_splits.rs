//! Segmentation formats (compressed and uncompressed RLE, polygons, null) and the YouTube-VIS
//! base/novel split by category names.

use clip_vis_eval::{evaluate, GroundTruth, Protocol};
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

#[test]
fn compressed_uncompressed_and_polygon_masks_agree() {
    // A 4x6 frame; the rectangle x in [1, 4), y in [1, 3) in three encodings.
    let mask: Vec<u8> = (0..6)
        .flat_map(|x| (0..4).map(move |y| u8::from((1..4).contains(&x) && (1..3).contains(&y))))
        .collect();
    let rle = hotcoco::mask::encode(&mask, 4, 6).unwrap();
    let compressed = hotcoco::mask::rle_to_string(&rle);
    let polygon =
        hotcoco::mask::fr_polys(&[vec![1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]], 4, 6).unwrap();
    let gt = format!(
        r#"{{"videos": [{{"id": 1, "width": 6, "height": 4, "length": 3}}],
             "annotations": [{{"id": 1, "video_id": 1, "category_id": 1,
                "segmentations": [{{"size": [4, 6], "counts": "{compressed}"}},
                                  {{"size": [4, 6], "counts": {:?}}},
                                  [[1, 1, 4, 1, 4, 3, 1, 3]]]}}],
             "categories": [{{"id": 1, "name": "box"}}]}}"#,
        rle.counts
    );
    let ground_truth = GroundTruth::from_json(&gt).unwrap();
    let frames = &ground_truth.tracks[0].masks.frames;
    assert_eq!(frames[0].as_ref().unwrap(), &rle.counts);
    assert_eq!(frames[1].as_ref().unwrap(), &rle.counts);
    // Polygons rasterise as pycocotools does (hotcoco's port of `rleFrPoly`).
    assert_eq!(frames[2].as_ref().unwrap(), &polygon.counts);

    // A perfect result scores AP 1 on it.
    let results = ground_truth
        .results_from_json(&format!(
            r#"[{{"video_id": 1, "category_id": 1, "score": 0.9,
                 "segmentations": [{{"size": [4, 6], "counts": "{compressed}"}},
                                   {{"size": [4, 6], "counts": "{compressed}"}}, null]}}]"#
        ))
        .unwrap();
    let report = evaluate(&ground_truth, &results, &Protocol::Ytvis { novel: vec![] });
    assert!(report.all.stats[0] > 0.0);
    assert!(report.base.is_none() && report.novel.is_none());
}

#[test]
fn ytvis_split_by_names_equals_the_lvvis_partition_split() {
    // The `random` case has no crowd tracks and integer areas, where both evaluators agree, so a
    // YTVIS split naming the partition-2/3 categories must give LV-VIS's base and novel numbers.
    let ground_truth = GroundTruth::from_file(fixture("random.gt.json")).unwrap();
    let results = ground_truth
        .read_results(fixture("random.results.json"))
        .unwrap();
    let novel: Vec<String> = ground_truth
        .categories
        .iter()
        .filter(|c| matches!(c.partition, Some(2 | 3)))
        .map(|c| c.name.clone())
        .collect();
    assert!(!novel.is_empty());
    let by_names = evaluate(&ground_truth, &results, &Protocol::Ytvis { novel });
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture("random.expected.json")).unwrap()).unwrap();
    for (split, summary) in [
        ("base", by_names.base.unwrap()),
        ("novel", by_names.novel.unwrap()),
    ] {
        for (i, value) in summary.stats.iter().enumerate() {
            let reference = expected["lvvis"][split][i].as_f64().unwrap();
            assert!(
                (value - reference).abs() < 1e-9,
                "{split} stat {i}: {value} vs {reference}"
            );
        }
    }
}
