//! Prompt cleaning exactly as open_clip 2.24 does it before BPE.
//!
//! open_clip's `SimpleTokenizer` (`mlfoundations/open_clip:src/open_clip/tokenizer.py` @v2.24.0)
//! cleans with `whitespace_clean(basic_clean(text)).lower()`, where `basic_clean` is
//! `ftfy.fix_text(text)`, then `html.unescape` twice, then `strip()`. This file ports the parts
//! of `ftfy.fix_text` (ftfy 6) that change ordinary text, `html.unescape` with the full HTML5
//! entity table, and Python's notion of whitespace.
//!
//! Left out on purpose: ftfy's mojibake repair (`fix_encoding`, e.g. `cafÃ©` → `café`). It only
//! acts on text that was decoded with the wrong codec, never on clean UTF-8 prompts, and needs
//! ftfy's statistical detector; such text is tokenized as given.

use super::html5_entities::HTML5_ENTITIES;
use std::borrow::Cow;
use unicode_normalization::UnicodeNormalization;

/// Cleans one prompt the way open_clip does before tokenizing: ftfy fixes, HTML unescaping,
/// whitespace folding and lower-casing.
///
/// ```
/// use clip_vis_clip::tokenizer::clean_text;
/// assert_eq!(clean_text("  Tom &amp; \u{201c}Jerry\u{201d}\t\u{FF21} "), "tom & \"jerry\" a");
/// ```
pub fn clean_text(text: &str) -> String {
    let text = ftfy_fix_text(text);
    let text = html_unescape(&html_unescape(&text)).into_owned();
    let text = python_strip(&text);
    whitespace_fold(text).to_lowercase()
}

/// `str.isspace()` of Python: Unicode `White_Space` plus the four ASCII information separators.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn python_strip(text: &str) -> &str {
    text.trim_matches(is_python_space)
}

/// `re.sub(r"\s+", " ", text).strip()`.
fn whitespace_fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if is_python_space(c) {
            in_space = true;
        } else {
            if in_space && !out.is_empty() {
                out.push(' ');
            }
            in_space = false;
            out.push(c);
        }
    }
    out
}

/// The subset of `ftfy.fix_text` (default config) that acts on well-formed text.
///
/// ftfy works line by line (each segment ends after a `\n`); HTML unescaping is switched off
/// for the rest of the text once a segment contains `<` (its `unescape_html="auto"`). Each
/// segment is fixed repeatedly until nothing changes, as `ftfy.fix_and_explain` does.
fn ftfy_fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        let mut current = segment.to_string();
        loop {
            let before = current.clone();
            if unescape {
                current = ftfy_unescape_html(&current);
            }
            current = fix_c1_controls(&current);
            current = fix_latin_ligatures(&current);
            current = fix_character_width(&current);
            current = uncurl_quotes(&current);
            current = fix_line_breaks(&current);
            current = remove_terminal_escapes(&current);
            current = remove_control_chars(&current);
            current = current.nfc().collect();
            if current == before {
                break;
            }
        }
        out.push_str(&current);
    }
    out
}

/// ftfy's `unescape_html`: only `&name;` / `&#num;` forms of 1 to 24 ASCII alphanumerics, and
/// entity names that were upper-cased by accident (`&NTILDE;`).
fn ftfy_unescape_html(text: &str) -> String {
    replace_matches(text, '&', |rest| {
        // rest starts just after '&'; match `#?[0-9A-Za-z]{1,24};`
        let bytes = rest.as_bytes();
        let mut i = usize::from(bytes.first() == Some(&b'#'));
        let start = i;
        while i < bytes.len() && i - start < 24 && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i == start || bytes.get(i) != Some(&b';') {
            return None;
        }
        let entity = &rest[..=i];
        let replacement = if entity.starts_with('#') {
            let unescaped = html_unescape(&format!("&{entity}")).into_owned();
            if unescaped.contains(';') {
                return None;
            }
            unescaped
        } else if let Some(value) = lookup_entity(entity) {
            value.to_string()
        } else {
            // An upper-cased entity whose lower-case form ends in ';' and whose upper-case
            // form is not itself an entity decodes to the upper-cased character.
            let lower = entity.to_lowercase();
            if lower == entity || lookup_entity(entity).is_some() {
                return None;
            }
            if entity != lower.to_uppercase() {
                return None;
            }
            let value = lookup_entity(&lower)?;
            // Python: html.unescape(entity_upper) == entity_upper must hold, i.e. no prefix of
            // the upper-case name is an entity either.
            if html_unescape(&format!("&{entity}")) != format!("&{entity}") {
                return None;
            }
            value.to_uppercase()
        };
        Some((i + 1, replacement))
    })
}

fn lookup_entity(name: &str) -> Option<&'static str> {
    HTML5_ENTITIES
        .binary_search_by(|(key, _)| (*key).cmp(name))
        .ok()
        .map(|index| HTML5_ENTITIES[index].1)
}

/// Python's `html.unescape` (HTML5 rules: numeric references with their invalid-codepoint
/// table, the longest-prefix rule for named references without `;`).
pub(crate) fn html_unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    Cow::Owned(replace_matches(text, '&', |rest| {
        let bytes = rest.as_bytes();
        if bytes.first() == Some(&b'#') {
            let (hex, digits_start) = match bytes.get(1) {
                Some(b'x' | b'X') => (true, 2),
                _ => (false, 1),
            };
            let mut i = digits_start;
            while i < bytes.len()
                && (if hex {
                    bytes[i].is_ascii_hexdigit()
                } else {
                    bytes[i].is_ascii_digit()
                })
            {
                i += 1;
            }
            if i == digits_start {
                return None;
            }
            let digits = &rest[digits_start..i];
            if bytes.get(i) == Some(&b';') {
                i += 1;
            }
            let number = digits.chars().fold(0u64, |acc, c| {
                acc.saturating_mul(if hex { 16 } else { 10 })
                    .saturating_add(u64::from(c.to_digit(16).unwrap_or(0)))
            });
            return Some((i, numeric_charref(number)));
        }
        // `[^\t\n\f <&#;]{1,32};?`
        let mut end = 0;
        for (count, (offset, c)) in rest.char_indices().enumerate() {
            if count == 32 || matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';') {
                break;
            }
            end = offset + c.len_utf8();
        }
        if end == 0 {
            return None;
        }
        if rest[end..].starts_with(';') {
            end += 1;
        }
        let name = &rest[..end];
        if let Some(value) = lookup_entity(name) {
            return Some((end, value.to_string()));
        }
        // Longest matching prefix of at least two characters (Python slices by code point).
        let boundaries: Vec<usize> = name.char_indices().map(|(offset, _)| offset).collect();
        for &cut in boundaries.iter().skip(2).rev() {
            if let Some(value) = lookup_entity(&name[..cut]) {
                return Some((end, format!("{value}{}", &name[cut..])));
            }
        }
        None
    }))
}

fn numeric_charref(number: u64) -> String {
    if let Some(c) = invalid_charref(number) {
        return c.to_string();
    }
    if (0xD800..=0xDFFF).contains(&number) || number > 0x10FFFF {
        return '\u{FFFD}'.to_string();
    }
    let invalid_codepoint = matches!(number, 0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (number & 0xFFFE) == 0xFFFE;
    if invalid_codepoint {
        return String::new();
    }
    char::from_u32(number as u32)
        .map(String::from)
        .unwrap_or_else(|| '\u{FFFD}'.to_string())
}

/// Python's `html._invalid_charrefs`: `&#0;`, `&#13;` and the Windows-1252 block.
fn invalid_charref(number: u64) -> Option<char> {
    Some(match number {
        0x00 => '\u{FFFD}',
        0x0D => '\r',
        0x80..=0x9F => windows_1252(number as u8),
        _ => return None,
    })
}

/// Windows-1252 for 0x80..=0x9F; the five undefined bytes map to the C1 control of the same
/// value (ftfy's "sloppy" codec and Python's charref table agree on this).
fn windows_1252(byte: u8) -> char {
    const TABLE: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}',
        '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}',
        '\u{178}',
    ];
    TABLE[usize::from(byte - 0x80)]
}

/// Scans `text` for `trigger`; at each occurrence `replace` sees the text after it and returns
/// how many bytes of that text to consume and the replacement, or `None` to keep the trigger.
fn replace_matches(
    text: &str,
    trigger: char,
    mut replace: impl FnMut(&str) -> Option<(usize, String)>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(position) = rest.find(trigger) {
        out.push_str(&rest[..position]);
        let after = &rest[position + trigger.len_utf8()..];
        match replace(after) {
            Some((consumed, replacement)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push(trigger);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|c| match c as u32 {
            0x80..=0x9F => windows_1252(c as u8),
            _ => c,
        })
        .collect()
}

fn fix_latin_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{132}' => out.push_str("IJ"),
            '\u{133}' => out.push_str("ij"),
            '\u{149}' => out.push_str("\u{2BC}n"),
            '\u{1F1}' => out.push_str("DZ"),
            '\u{1F2}' => out.push_str("Dz"),
            '\u{1F3}' => out.push_str("dz"),
            '\u{1C4}' => out.push_str("D\u{17D}"),
            '\u{1C5}' => out.push_str("D\u{17E}"),
            '\u{1C6}' => out.push_str("d\u{17E}"),
            '\u{1C7}' => out.push_str("LJ"),
            '\u{1C8}' => out.push_str("Lj"),
            '\u{1C9}' => out.push_str("lj"),
            '\u{1CA}' => out.push_str("NJ"),
            '\u{1CB}' => out.push_str("Nj"),
            '\u{1CC}' => out.push_str("nj"),
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' => out.push_str("\u{17F}t"),
            '\u{FB06}' => out.push_str("st"),
            _ => out.push(c),
        }
    }
    out
}

/// Full-width and half-width forms (U+FF01..U+FFEF) to their NFKC form; the ideographic space
/// to a plain space.
fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c as u32 {
            0x3000 => out.push(' '),
            0xFF01..=0xFFEF => out.extend(std::iter::once(c).nfkc()),
            _ => out.push(c),
        }
    }
    out
}

fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2BC}' | '\u{2018}'..='\u{201B}' => '\'',
            '\u{201C}'..='\u{201F}' => '"',
            _ => c,
        })
        .collect()
}

fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// Removes ANSI terminal escapes `ESC [ (digits|;)* letter`.
fn remove_terminal_escapes(text: &str) -> String {
    replace_matches(text, '\u{1b}', |rest| {
        let bytes = rest.as_bytes();
        if bytes.first() != Some(&b'[') {
            return None;
        }
        let mut i = 1;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b';') {
            i += 1;
        }
        if i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            Some((i + 1, String::new()))
        } else {
            None
        }
    })
}

fn remove_control_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            !matches!(c as u32,
                0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_unescape_follows_python() {
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&amp;amp;"), "&amp;");
        assert_eq!(html_unescape("&ampfoo"), "&foo");
        assert_eq!(html_unescape("&#65;&#x42;&#0;&#128;"), "AB\u{FFFD}\u{20AC}");
        assert_eq!(html_unescape("&#1;x"), "x");
        assert_eq!(html_unescape("&nosuch;"), "&nosuch;");
        assert_eq!(html_unescape("&#99999999999999;"), "\u{FFFD}");
    }

    #[test]
    fn ftfy_subset() {
        assert_eq!(ftfy_fix_text("\u{FB01}ne"), "fine");
        assert_eq!(ftfy_fix_text("\u{FF21}\u{3000}b"), "A b");
        assert_eq!(
            ftfy_fix_text("\u{201C}q\u{201D} \u{2018}s\u{2019}"),
            "\"q\" 's'"
        );
        assert_eq!(ftfy_fix_text("&amp;amp;"), "&");
        assert_eq!(ftfy_fix_text("<b>&amp;amp;"), "<b>&amp;amp;");
        assert_eq!(ftfy_fix_text("\u{1b}[31mred\u{1b}[0m"), "red");
        assert_eq!(ftfy_fix_text("e\u{301}"), "\u{e9}");
    }

    #[test]
    fn whitespace_is_folded_and_lowered() {
        // ftfy drops the separator control U+001C before whitespace folding (open_clip: "a bc").
        assert_eq!(clean_text("  A\t\nB\u{1c}c  "), "a bc");
        assert_eq!(clean_text(""), "");
    }
}
