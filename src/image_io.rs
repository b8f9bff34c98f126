//! Reading images into [`RgbImage`].

use crate::error::{Error, Result};
use clip_vis_clip::preprocess::RgbImage;
use std::path::Path;

/// Decodes an image file (PNG, JPEG, BMP, WebP, GIF) to 8-bit RGB. Alpha is dropped and grey
/// levels replicated, as PIL's `convert("RGB")` does.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let decoded = image::load_from_memory(&bytes).map_err(|e| Error::Image {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let rgb = decoded.to_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    RgbImage::new(width, height, rgb.into_raw()).map_err(|e| Error::Image {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}
