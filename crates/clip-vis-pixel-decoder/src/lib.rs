//! Mask2Former's multi-scale deformable-attention pixel decoder, as CLIP-VIS uses it
//! (SPEC §3), on Burn.
//!
//! - [`MsDeformAttn`]: multi-scale deformable attention, a reusable module that runs on every
//!   backend through `grid_sample_2d` (no custom kernel).
//! - [`MsDeformAttnPixelDecoder`]: the decoder: `res2..res5` of the CLIP tower in,
//!   `mask_features` (stride 4) and the encoder's multi-scale maps (strides 32, 16, 8) out.

mod deform_kernel;
mod group_norm;
mod host;
pub mod ms_deform_attn;
pub mod pixel_decoder;
pub mod position_encoding;
pub mod sampling;

pub use group_norm::GroupNorm;
pub use ms_deform_attn::{MsDeformAttn, MsDeformAttnConfig};
pub use pixel_decoder::{MsDeformAttnPixelDecoder, PixelDecoderConfig, PixelDecoderOutput};
