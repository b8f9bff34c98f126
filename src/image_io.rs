//! Reading images into [`RgbImage`].

use crate::error::{Error, Result};
use clip_vis_clip::preprocess::RgbImage;
use clip_vis_train::TrainError;
use std::path::Path;

/// Decodes an image file (PNG, JPEG, BMP, WebP, GIF) to 8-bit RGB, upright by its EXIF
/// orientation, as detectron2's `read_image(file, "RGB")` does: alpha is dropped and grey
/// levels replicated, as PIL's `convert("RGB")` does.
pub fn read_rgb(path: &Path) -> Result<RgbImage> {
    clip_vis_train::data::read_image(path).map_err(|e| match e {
        TrainError::Io { file, source } => Error::Io { file, source },
        TrainError::Image { file, message } => Error::Image { file, message },
        other => Error::Train(other),
    })
}
