//! Pictures of the tracks: each frame with translucent coloured masks (one colour per track)
//! and the category and score written beside each, as PNG frames, an animated GIF and, when
//! `ffmpeg` is installed, an MP4.

use std::cell::RefCell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use clip_vis_clip::preprocess::RgbImage;
use font8x8::legacy::BASIC_LEGACY;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};

use super::io_error;
use super::{FinishedVideo, TrackSummary};
use crate::{Error, Result};
use hotcoco::Rle;

/// A palette of distinguishable colours (Tableau 10).
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Which tracks to draw and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Draw at most this many tracks (the best-scoring; one label per track).
    pub max_tracks: usize,
    /// Skip tracks scoring below this.
    pub min_score: f32,
    /// Mask opacity.
    pub alpha: f32,
    /// Frames per second of the GIF and MP4.
    pub fps: u32,
    /// The GIF is scaled down to at most this width (GIF encoding is slow at full size).
    pub gif_max_width: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            max_tracks: 10,
            min_score: 0.0,
            alpha: 0.5,
            fps: 6,
            gif_max_width: 320,
        }
    }
}

/// The tracks drawn (indices into `tracks`, which are best first): the best label of each
/// query, within the options' limits.
pub fn shown_tracks(tracks: &[TrackSummary], options: &RenderOptions) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    (0..tracks.len())
        .filter(|&k| tracks[k].score >= options.min_score && seen.insert(tracks[k].query))
        .take(options.max_tracks)
        .collect()
}

/// Draws masks with their labels onto `frame`, the `k`-th in palette colour `k`.
pub fn draw_frame(frame: &RgbImage, masks: &[(String, Rle)], options: &RenderOptions) -> RgbImage {
    let mut out = frame.clone();
    let (w, h) = (frame.width, frame.height);
    let mut labels = Vec::new();
    for (k, (label, rle)) in masks.iter().enumerate() {
        if rle.h as usize != h || rle.w as usize != w {
            continue;
        }
        let color = PALETTE[k % PALETTE.len()];
        let mask = hotcoco::mask::decode(rle);
        let mut top_left: Option<(usize, usize)> = None;
        for x in 0..w {
            for y in 0..h {
                if mask[y + h * x] == 0 {
                    continue;
                }
                if top_left.is_none_or(|(ty, tx)| (y, x) < (ty, tx)) {
                    top_left = Some((y, x));
                }
                let p = &mut out.pixels[(y * w + x) * 3..(y * w + x) * 3 + 3];
                for c in 0..3 {
                    p[c] = (f32::from(p[c]) * (1.0 - options.alpha)
                        + f32::from(color[c]) * options.alpha)
                        .round() as u8;
                }
            }
        }
        if let Some((y, x)) = top_left {
            labels.push((y, x, color, label.clone()));
        }
    }
    for (y, x, color, text) in labels {
        draw_label(&mut out, y.saturating_sub(10), x, color, &text);
    }
    out
}

/// Writes `text` in an 8x8 bitmap font on a box of `color` with its top-left at `(y, x)`.
fn draw_label(image: &mut RgbImage, y: usize, x: usize, color: [u8; 3], text: &str) {
    let (w, h) = (image.width, image.height);
    let glyphs: Vec<[u8; 8]> = text
        .chars()
        .map(|c| {
            BASIC_LEGACY[if (c as u32) < 128 {
                c as usize
            } else {
                b'?' as usize
            }]
        })
        .collect();
    let box_w = glyphs.len() * 8 + 2;
    let x = x.min(w.saturating_sub(box_w));
    let y = y.min(h.saturating_sub(10));
    for dy in 0..10 {
        for dx in 0..box_w {
            let (py, px) = (y + dy, x + dx);
            if py >= h || px >= w {
                continue;
            }
            let glyph_on = (1..9).contains(&dy) && (1..box_w - 1).contains(&dx) && {
                let g = glyphs[(dx - 1) / 8];
                g[dy - 1] >> ((dx - 1) % 8) & 1 == 1
            };
            let value = if glyph_on { [255, 255, 255] } else { color };
            image.pixels[(py * w + px) * 3..(py * w + px) * 3 + 3].copy_from_slice(&value);
        }
    }
}

/// The GIF file's writer. It keeps the first write error it returned, and flushes when dropped,
/// keeping that error too: the GIF encoder writes its last bytes when it is dropped, where it
/// cannot report a failure, and a truncated GIF must not be renamed into place.
struct CheckedWriter {
    inner: std::io::BufWriter<std::fs::File>,
    error: Rc<RefCell<Option<std::io::Error>>>,
}

impl CheckedWriter {
    fn keep<T>(&self, result: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &result {
            let mut slot = self.error.borrow_mut();
            if slot.is_none() {
                *slot = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        }
        result
    }
}

impl Write for CheckedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let result = self.inner.write(bytes);
        self.keep(result)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let result = self.inner.flush();
        self.keep(result)
    }
}

impl Drop for CheckedWriter {
    fn drop(&mut self) {
        let result = self.inner.flush();
        let _ = self.keep(result);
    }
}

fn to_image(frame: &RgbImage) -> image::RgbImage {
    image::RgbImage::from_raw(
        frame.width as u32,
        frame.height as u32,
        frame.pixels.clone(),
    )
    .expect("RgbImage holds width x height x 3 bytes")
}

/// What [`render_video`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderedFiles {
    /// Folder of PNG frames.
    pub frames_dir: PathBuf,
    /// The animated GIF.
    pub gif: Option<PathBuf>,
    /// The MP4, when ffmpeg is installed.
    pub mp4: Option<PathBuf>,
}

/// Draws every frame (read one at a time by `read_frame`) into `<out>/frames/NNNNNN.png`, an
/// animated `<out>/video.gif`, and `<out>/video.mp4` when ffmpeg is present.
pub fn render_video(
    mut read_frame: impl FnMut(usize) -> Result<RgbImage>,
    video: &mut FinishedVideo,
    out: &Path,
    options: &RenderOptions,
) -> Result<RenderedFiles> {
    let shown = shown_tracks(&video.tracks, options);
    let frame_count = video.frames;
    let frames_dir = out.join("frames");
    std::fs::create_dir_all(&frames_dir).map_err(io_error(&frames_dir))?;
    let gif_path = out.join("video.gif");
    let gif_tmp = out.join(".video.gif.tmp");
    let gif_file = std::fs::File::create(&gif_tmp).map_err(io_error(&gif_tmp))?;
    let write_error = Rc::new(RefCell::new(None));
    let mut gif = GifEncoder::new_with_speed(
        CheckedWriter {
            inner: std::io::BufWriter::new(gif_file),
            error: Rc::clone(&write_error),
        },
        20,
    );
    // From here on, an error leaves no partial GIF behind.
    let remove_partial = |error: Error| {
        let _ = std::fs::remove_file(&gif_tmp);
        error
    };
    let gif_error = |e: image::ImageError| Error::Image {
        file: gif_path.clone(),
        message: e.to_string(),
    };
    gif.set_repeat(Repeat::Infinite)
        .map_err(|e| remove_partial(gif_error(e)))?;
    let delay = Delay::from_numer_denom_ms(1000, options.fps.max(1));
    for index in 0..frame_count {
        let frame = read_frame(index).map_err(remove_partial)?;
        let masks = shown
            .iter()
            .map(|&k| {
                let t = &video.tracks[k];
                Ok((
                    format!("{} {:.2}", t.category, t.score),
                    video.mask(k, index)?,
                ))
            })
            .collect::<Result<Vec<_>>>()
            .map_err(remove_partial)?;
        let drawn = draw_frame(&frame, &masks, options);
        let png = frames_dir.join(format!("{index:06}.png"));
        let image = to_image(&drawn);
        let mut bytes = Vec::new();
        image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|e| {
                remove_partial(Error::Image {
                    file: png.clone(),
                    message: e.to_string(),
                })
            })?;
        clip_vis_clip::weights::write_atomically(&png, &bytes)
            .map_err(|e| remove_partial(io_error(&png)(e)))?;
        let scale = (options.gif_max_width as f32 / drawn.width as f32).min(1.0);
        let (gw, gh) = (
            ((drawn.width as f32 * scale) as u32).max(1),
            ((drawn.height as f32 * scale) as u32).max(1),
        );
        let small = image::imageops::resize(&image, gw, gh, image::imageops::FilterType::Triangle);
        let rgba: RgbaImage = image::DynamicImage::ImageRgb8(small).to_rgba8();
        gif.encode_frame(Frame::from_parts(rgba, 0, 0, delay))
            .map_err(|e| remove_partial(gif_error(e)))?;
    }
    // The encoder writes the GIF's trailer when dropped and cannot return an error there; the
    // writer kept it.
    drop(gif);
    if let Some(source) = write_error.borrow_mut().take() {
        return Err(remove_partial(Error::Io {
            file: gif_path,
            source,
        }));
    }
    std::fs::rename(&gif_tmp, &gif_path).map_err(io_error(&gif_path))?;
    let mp4 = if super::frames::ffmpeg_available() {
        let path = out.join("video.mp4");
        let tmp = out.join(".video.tmp.mp4");
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-y", "-framerate"])
            .arg(options.fps.to_string())
            .arg("-i")
            .arg(frames_dir.join("%06d.png"))
            .args([
                "-vf",
                "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                "-pix_fmt",
                "yuv420p",
            ])
            .arg(&tmp)
            .status()
            .map_err(io_error(&path))?;
        if status.success() {
            std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
            Some(path)
        } else {
            let _ = std::fs::remove_file(&tmp);
            None
        }
    } else {
        None
    };
    Ok(RenderedFiles {
        frames_dir,
        gif: Some(gif_path),
        mp4,
    })
}
