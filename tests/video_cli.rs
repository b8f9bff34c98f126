//! `clip-vis segment` end to end on the demo's tiny model (written as a weights file), and the
//! bad inputs a user can give it: an empty frame folder, a frame that does not decode, frames
//! of different sizes, an empty vocabulary, a blank vocabulary entry, a video without ffmpeg.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn clip_vis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clip-vis"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("clip-vis-video-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_frames(dir: &Path, count: usize, width: usize, height: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let f = clip_vis::demo::synthetic_frame(i, width, height);
        image::RgbImage::from_raw(width as u32, height as u32, f.pixels)
            .unwrap()
            .save(dir.join(format!("{i:05}.png")))
            .unwrap();
    }
}

/// A scratch folder with the tiny model's weights and 3 frames of 96x64.
fn setup(name: &str) -> (PathBuf, String, PathBuf) {
    let dir = scratch(name);
    let weights = dir.join("tiny.safetensors");
    clip_vis::demo::write_tiny_video_weights(&weights).unwrap();
    let frames = dir.join("frames");
    write_frames(&frames, 3, 96, 64);
    (dir, weights.to_str().unwrap().to_string(), frames)
}

fn segment(weights: &str, frames: &Path, out: &Path, vocab: &str) -> Output {
    clip_vis(&[
        "segment",
        "--weights",
        weights,
        "--vocab",
        vocab,
        "--frames",
        frames.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--short-side",
        "64",
        "--detections",
        "7",
    ])
}

#[test]
fn segment_writes_results_and_pictures() {
    let (dir, weights, frames) = setup("ok");
    let out = dir.join("out");
    let output = segment(
        &weights,
        &frames,
        &out,
        "red disc, blue square|box ,yellow bar",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let records = results.as_array().unwrap();
    assert_eq!(records.len(), 7);
    for r in records {
        assert_eq!(r["video_id"], 1);
        assert!((1..=3).contains(&r["category_id"].as_u64().unwrap()));
        let masks = r["segmentations"].as_array().unwrap();
        assert_eq!(masks.len(), 3);
        for m in masks {
            // Masks are at the original frame size, as [height, width].
            assert_eq!(m["size"], serde_json::json!([64, 96]));
            hotcoco::mask::rle_from_string(m["counts"].as_str().unwrap(), 64, 96).unwrap();
        }
    }
    let scores: Vec<f64> = records
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "sorted by score: {scores:?}"
    );
    assert!(out.join("results.zip").is_file());
    assert!(out.join("video.gif").is_file());
    assert_eq!(std::fs::read_dir(out.join("frames")).unwrap().count(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A GIF whose last bytes cannot be written (the disk is full when the encoder writes its
/// trailer, on drop) is an error naming the GIF, printed once, and no truncated GIF is renamed
/// into place. The GIF's temporary file is made a link to `/dev/full`, where every write fails.
#[cfg(target_os = "linux")]
#[test]
fn a_gif_that_cannot_be_written_is_an_error_not_a_truncated_file() {
    let (dir, weights, frames) = setup("gif-full");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join(".video.gif.tmp")).unwrap();
    let output = segment(&weights, &frames, &out, "disc,square");
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("video.gif"), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    // The OS error is in the message once, not repeated as a cause.
    assert_eq!(
        message.matches("No space left on device").count(),
        1,
        "{message}"
    );
    assert!(!out.join("video.gif").exists(), "a GIF was put in place");
    assert!(
        !out.join(".video.gif.tmp").exists(),
        "the partial GIF was left"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_frames_are_clear_errors() {
    let (dir, weights, frames) = setup("bad-frames");
    let out = dir.join("out");

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let output = segment(&weights, &empty, &out, "cat");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("no frames") && message.contains("empty"),
        "{message}"
    );

    std::fs::write(frames.join("00001.png"), b"not a png at all").unwrap();
    let output = segment(&weights, &frames, &out, "cat");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("00001.png") && message.contains("frame 1"),
        "{message}"
    );

    let mixed = dir.join("mixed");
    write_frames(&mixed, 2, 96, 64);
    let odd = clip_vis::demo::synthetic_frame(2, 80, 64);
    image::RgbImage::from_raw(80, 64, odd.pixels)
        .unwrap()
        .save(mixed.join("00002.png"))
        .unwrap();
    let output = segment(&weights, &mixed, &out, "cat");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("frame 2") && message.contains("80x64") && message.contains("96x64"),
        "{message}"
    );
    assert!(
        !out.join("results.json").exists(),
        "no partial results are written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_vocabularies_are_usage_errors() {
    let (dir, weights, frames) = setup("bad-vocab");
    let out = dir.join("out");
    let output = segment(&weights, &frames, &out, "  ");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("vocabulary is empty"),
        "{}",
        stderr(&output)
    );
    let output = segment(&weights, &frames, &out, "cat,   ,dog");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("entry 2"), "{}", stderr(&output));
    let file = dir.join("vocab.txt");
    std::fs::write(&file, "cat\n \ndog\n").unwrap();
    let output = clip_vis(&[
        "segment",
        "--weights",
        &weights,
        "--vocab-file",
        file.to_str().unwrap(),
        "--frames",
        frames.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("vocab.txt: entry 2"),
        "{}",
        stderr(&output)
    );
    let output = clip_vis(&[
        "segment",
        "--weights",
        &weights,
        "--dataset",
        "kinetics",
        "--frames",
        frames.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown built-in vocabulary"),
        "{}",
        stderr(&output)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_video_file_needs_ffmpeg_or_says_why_it_failed() {
    let (dir, weights, _) = setup("video");
    let video = dir.join("clip.mp4");
    std::fs::write(&video, b"not a video").unwrap();
    let output = clip_vis(&[
        "segment",
        "--weights",
        &weights,
        "--vocab",
        "cat",
        "--video",
        video.to_str().unwrap(),
        "--out",
        dir.join("out").to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("clip.mp4") && message.contains("ffmpeg"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
