//! Where frames come from: a folder of images (always works) or a video file decoded by the
//! system `ffmpeg` into a temporary folder. Frames are read one at a time, so a long video is
//! never held in memory.

use std::path::{Path, PathBuf};
use std::process::Command;

use clip_vis_clip::preprocess::RgbImage;

use crate::image_io::read_rgb;
use crate::{Error, Result};

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "webp", "gif"];

/// Orders file names with embedded numbers numerically (`frame2` before `frame10`), as frame
/// dumps are often not zero-padded.
fn natural_key(name: &str) -> Vec<(u8, u128, String)> {
    let mut key = Vec::new();
    let mut chars = name.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digits = c.is_ascii_digit();
        let mut part = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != digits {
                break;
            }
            part.push(c);
            chars.next();
        }
        if digits {
            key.push((0, part.parse().unwrap_or(u128::MAX), part));
        } else {
            key.push((1, 0, part));
        }
    }
    key
}

/// The image files of a frame folder in natural name order. An empty folder (or one without
/// images) is an error naming it.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        file: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    if files.is_empty() {
        return Err(Error::NoFrames(format!(
            "{} (no image files)",
            dir.display()
        )));
    }
    files.sort_by_cached_key(|p| natural_key(&p.file_name().unwrap_or_default().to_string_lossy()));
    Ok(files)
}

/// Reads frame `index` of a video from `path`; a file that does not decode is an error naming
/// the file and the frame.
pub fn read_frame(path: &Path, index: usize) -> Result<RgbImage> {
    read_rgb(path).map_err(|e| match e {
        Error::Image { file, message } => Error::Image {
            file,
            message: format!("frame {index}: {message}"),
        },
        other => other,
    })
}

/// Frames decoded from a video file, in a temporary folder removed on drop.
#[derive(Debug)]
pub struct DecodedVideo {
    dir: PathBuf,
    /// The frame files, in order.
    pub frames: Vec<PathBuf>,
}

impl Drop for DecodedVideo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether an `ffmpeg` executable answers on the `PATH`.
pub fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Decodes `video` to PNG frames with the system `ffmpeg` (every frame, no resampling).
pub fn decode_video(video: &Path) -> Result<DecodedVideo> {
    if !video.is_file() {
        return Err(Error::Io {
            file: video.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such video file"),
        });
    }
    if !ffmpeg_available() {
        return Err(Error::Usage(format!(
            "{}: decoding video files needs ffmpeg on the PATH (e.g. `apt install ffmpeg` or `brew install ffmpeg`); or extract the frames yourself and pass --frames <dir>",
            video.display()
        )));
    }
    let dir = super::scratch_path(None, "frames", "");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        file: dir.clone(),
        source,
    })?;
    // Removes the folder again on every early return below.
    let mut decoded = DecodedVideo {
        dir: dir.clone(),
        frames: Vec::new(),
    };
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(video)
        .args(["-vsync", "0", "-start_number", "0"])
        .arg(dir.join("%06d.png"))
        .output()
        .map_err(|source| Error::Io {
            file: video.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Image {
            file: video.to_path_buf(),
            message: format!(
                "ffmpeg could not decode it: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    decoded.frames = list_frames(&dir).map_err(|_| Error::NoFrames(video.display().to_string()))?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_puts_frame2_before_frame10() {
        let mut names = vec!["f10.png", "f2.png", "f1.png", "a.png"];
        names.sort_by_cached_key(|n| natural_key(n));
        assert_eq!(names, vec!["a.png", "f1.png", "f2.png", "f10.png"]);
    }
}
