//! CLIP-VIS's class-agnostic masked-attention transformer decoder (SPEC §4), on Burn: learnable
//! queries, masked cross-attention over the pixel decoder's maps, and the object, mask and
//! mask-IoU heads on every prediction.

mod attention;
pub mod decoder;
mod heads;

pub use attention::MultiheadAttention;
pub use decoder::{
    DecoderOutput, MultiScaleMaskedTransformerDecoder, Prediction, TransformerDecoderConfig,
};
pub use heads::Mlp;
