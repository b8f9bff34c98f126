//! Decoding training pictures as detectron2's `read_image(file, "RGB")` does: EXIF orientation
//! applied, alpha dropped, grey replicated.

use std::io::Cursor;
use std::path::Path;

use clip_vis_clip::preprocess::RgbImage;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::{Result, TrainError};

/// Decodes an image file (PNG, JPEG, BMP, WebP, GIF) to 8-bit RGB, turned upright by its EXIF
/// orientation.
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(TrainError::io(path))?;
    let image_error = |message: String| TrainError::Image {
        file: path.to_path_buf(),
        message,
    };
    let mut decoder = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| image_error(e.to_string()))?
        .into_decoder()
        .map_err(|e| image_error(format!("cannot decode image: {e}")))?;
    let orientation = decoder.orientation().ok();
    let mut decoded = DynamicImage::from_decoder(decoder)
        .map_err(|e| image_error(format!("cannot decode image: {e}")))?;
    if let Some(orientation) = orientation {
        decoded.apply_orientation(orientation);
    }
    let rgb = decoded.to_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    RgbImage::new(width, height, rgb.into_raw()).map_err(|e| image_error(e.to_string()))
}
