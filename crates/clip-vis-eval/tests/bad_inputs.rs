//! Records that do not fit the ground truth are errors that name the record.

use clip_vis_eval::{EvalError, GroundTruth};

const GT: &str = r#"{
  "videos": [{"id": 3, "width": 4, "height": 2, "length": 2}],
  "annotations": [{"id": 1, "video_id": 3, "category_id": 5, "iscrowd": 0,
                   "segmentations": [{"size": [2, 4], "counts": [0, 8]}, null]}],
  "categories": [{"id": 5, "name": "cat", "partition": 2}]
}"#;

fn results(body: &str) -> Result<Vec<clip_vis_eval::Track>, EvalError> {
    GroundTruth::from_json(GT).unwrap().results_from_json(body)
}

const FULL: &str = r#"{"size": [2, 4], "counts": [0, 8]}"#;

#[test]
fn unknown_video_and_category_are_named() {
    let error = results(&format!(
        r#"[{{"video_id": 9, "category_id": 5, "score": 0.5, "segmentations": [{FULL}, null]}}]"#
    ))
    .unwrap_err();
    assert!(
        matches!(error, EvalError::UnknownVideo { video_id: 9, .. }),
        "{error}"
    );
    assert!(error.to_string().starts_with("result 0"), "{error}");
    let error = results(&format!(
        r#"[{{"video_id": 3, "category_id": 7, "score": 0.5, "segmentations": [{FULL}, null]}}]"#
    ))
    .unwrap_err();
    assert!(
        matches!(error, EvalError::UnknownCategory { category_id: 7, .. }),
        "{error}"
    );
}

#[test]
fn segmentation_count_must_match_the_video() {
    let error = results(&format!(
        r#"[{{"video_id": 3, "category_id": 5, "score": 0.5, "segmentations": [{FULL}]}}]"#
    ))
    .unwrap_err();
    assert!(
        matches!(
            error,
            EvalError::FrameCount {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn corrupt_rle_is_named_with_its_frame() {
    for bad in [
        r#"{"size": [2, 4], "counts": [0, 9]}"#,
        r#"{"size": [3, 4], "counts": [0, 12]}"#,
        r#"{"size": [2, 4], "counts": "\u0000\u0000garbage"}"#,
        r#"{"size": [2, 4]}"#,
        r#"[[1, 2, 3]]"#,
        r#"17"#,
    ] {
        let error = results(&format!(
            r#"[{{"video_id": 3, "category_id": 5, "score": 0.5, "segmentations": [null, {bad}]}}]"#
        ))
        .unwrap_err();
        assert!(
            matches!(error, EvalError::Segmentation { frame: 1, .. }),
            "{bad}: {error}"
        );
        assert!(
            error.to_string().contains("result 0 (video 3), frame 1"),
            "{error}"
        );
    }
}

#[test]
fn malformed_json_is_a_parse_error_with_position() {
    let error = results("[{\"video_id\": 3,").unwrap_err();
    assert!(matches!(error, EvalError::Json { .. }), "{error}");
    assert!(error.to_string().contains("line 1"), "{error}");
    let error = GroundTruth::from_json("{\"videos\": 5}").unwrap_err();
    assert!(matches!(error, EvalError::Json { .. }), "{error}");
}

#[test]
fn non_finite_scores_are_refused() {
    let error = results(&format!(
        r#"[{{"video_id": 3, "category_id": 5, "score": 1e999, "segmentations": [{FULL}, null]}}]"#
    ));
    // serde_json rejects 1e999 as out of range, which is a parse error; either way no result.
    assert!(error.is_err());
}
