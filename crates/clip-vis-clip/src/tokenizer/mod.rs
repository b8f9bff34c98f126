//! CLIP byte-pair tokenizer with open_clip's exact ids.
//!
//! Mirrors `open_clip.tokenize` (`mlfoundations/open_clip:src/open_clip/tokenizer.py` @v2.24.0):
//! clean the text ([`clean_text`]), split it into words with open_clip's pattern, byte-pair
//! encode every word with OpenAI's `bpe_simple_vocab_16e6` merges (through
//! `instant-clip-tokenizer`, which embeds that file), then `[SOT] + ids + [EOT]`, truncated to
//! the context length with the last id forced to EOT, and zero-padded.

mod clean;
mod html5_entities;

pub use clean::clean_text;

use instant_clip_tokenizer::{Token, Tokenizer};
use regex::Regex;
use std::sync::OnceLock;

/// Start-of-text id of the OpenAI vocabulary.
pub const SOT_TOKEN: u32 = 49406;
/// End-of-text id of the OpenAI vocabulary; the largest id, so `argmax` over a row finds it.
pub const EOT_TOKEN: u32 = 49407;
/// Context length of every CLIP text tower clip-vis uses.
pub const CONTEXT_LENGTH: usize = 77;

/// open_clip's tokenizer: cleaning plus OpenAI's BPE.
///
/// ```
/// use clip_vis_clip::tokenizer::ClipTokenizer;
/// let tokenizer = ClipTokenizer::new();
/// let ids = tokenizer.tokenize("a photo of a cat.", 77);
/// assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 269]);
/// assert_eq!(ids[7], 49407);
/// assert!(ids[8..].iter().all(|&id| id == 0));
/// ```
pub struct ClipTokenizer {
    bpe: Tokenizer,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Builds the tokenizer from the embedded OpenAI vocabulary (49408 ids).
    pub fn new() -> Self {
        Self {
            bpe: Tokenizer::new(),
        }
    }

    /// A process-wide tokenizer, built once: building parses the 49408-entry vocabulary, which
    /// callers encoding prompts in chunks would otherwise repeat per chunk.
    pub fn shared() -> &'static ClipTokenizer {
        static SHARED: OnceLock<ClipTokenizer> = OnceLock::new();
        SHARED.get_or_init(ClipTokenizer::new)
    }

    /// BPE ids of `text` after cleaning, without SOT/EOT.
    ///
    /// Words are split with open_clip 2.24's pattern, case-insensitively as open_clip compiles
    /// it (`re.IGNORECASE`): `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|
    /// [\p{N}]|[^\s\p{L}\p{N}]+`. Each word is then byte-pair encoded by
    /// `instant-clip-tokenizer`, whose own (case-sensitive) pattern keeps every such word whole,
    /// with one exception: case-insensitively `'s` also matches `'ſ` (long s folds to s), which
    /// the library would split in two.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        static WORD: OnceLock<Regex> = OnceLock::new();
        let pattern = WORD.get_or_init(|| {
            Regex::new(
                r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
            )
            .expect("static pattern")
        });
        let cleaned = clean_text(text);
        let mut ids = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        for word in pattern.find_iter(&cleaned).map(|m| m.as_str()) {
            if word == "'\u{17f}" {
                // No merge applies to the bytes 27 C5 BF: they stay byte tokens, the last one
                // marked end-of-word (open_clip gives [6, 129, 379]).
                ids.extend([6, 129, 123 + 256]);
                continue;
            }
            tokens.clear();
            self.bpe.encode(word, &mut tokens);
            ids.extend(tokens.iter().map(|t| u32::from(t.to_u16())));
        }
        ids
    }

    /// One row of `open_clip.tokenize`: `[SOT] + encode(text) + [EOT]`, cut to
    /// `context_length` (the last kept id becomes EOT), padded with 0.
    ///
    /// # Panics
    /// If `context_length < 2` (no room for SOT and EOT).
    pub fn tokenize(&self, text: &str, context_length: usize) -> Vec<u32> {
        assert!(context_length >= 2, "context length must hold SOT and EOT");
        let mut ids = Vec::with_capacity(context_length);
        ids.push(SOT_TOKEN);
        ids.extend(self.encode(text));
        ids.push(EOT_TOKEN);
        if ids.len() > context_length {
            ids.truncate(context_length);
            ids[context_length - 1] = EOT_TOKEN;
        }
        ids.resize(context_length, 0);
        ids
    }

    /// Tokenizes a batch into a row-major `[texts.len(), context_length]` id matrix.
    pub fn tokenize_batch<S: AsRef<str>>(&self, texts: &[S], context_length: usize) -> Vec<u32> {
        texts
            .iter()
            .flat_map(|text| self.tokenize(text.as_ref(), context_length))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_forces_eot() {
        let tokenizer = ClipTokenizer::new();
        let ids = tokenizer.tokenize(&"word ".repeat(100), 77);
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], SOT_TOKEN);
        assert_eq!(ids[76], EOT_TOKEN);
        assert!(ids[1..76].iter().all(|&id| id != 0 && id != EOT_TOKEN));
    }
}
