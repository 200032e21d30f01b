//! Wan's prompt clean-up (`prompt_clean` in diffusers' `pipelines/wan/pipeline_wan.py`), without
//! `ftfy`.
//!
//! The reference runs `ftfy.fix_text` (only when the `ftfy` package is installed), then
//! `html.unescape` twice, `str.strip`, `re.sub(r"\s+", " ")` and `str.strip` again. There is no
//! ftfy in Rust, so [`prompt_clean`] is exactly the reference **as it runs without ftfy**: the
//! fixture's `cleaned_prompts_without_ftfy`. With ftfy installed (as in the fixture run, and as
//! the original Wan code always does) the following `fix_text` steps (ftfy 6.3 defaults) are
//! missing here:
//!
//! - **mojibake repair** (`fix_encoding`, `restore_byte_a0`, `replace_lossy_sequences`,
//!   `decode_inconsistent_utf8`): `"CafÃ©"` → `"Café"`. This is the fixture's prompt 2; with the
//!   tiny fixture tokenizer both spellings give the same ids (its Unigram vocabulary has neither
//!   `Ã`, `©` nor `é`, and consecutive `<unk>`s are fused), but with the real umT5 vocabulary they
//!   differ.
//! - **`uncurl_quotes`**: `’ ‘ “ ”` → `' "`. The tokenizer's NFKC does not do this, so prompts with
//!   typographic quotes or apostrophes (`It’s`) tokenize differently. Probably the most common
//!   real-world difference.
//! - **`fix_c1_controls`**: U+0080–U+009F read as Windows-1252 (`"\u{96}"` → `"–"`).
//! - **`remove_terminal_escapes`** (ANSI colour codes) and **`remove_control_chars`** (for example
//!   U+0007, U+FEFF; *not* U+200B): ftfy deletes them, here they reach the tokenizer.
//! - `unescape_html="auto"`: ftfy unescapes entities itself unless the text contains `<`; since
//!   `html.unescape` runs twice afterwards anyway, this only matters for text that is escaped
//!   three or more times.
//! - `fix_latin_ligatures`, `fix_character_width`, NFC normalization: the tokenizer's NFKC
//!   normalizer does the same, so the token ids do not change. `fix_line_breaks`: all line breaks
//!   are whitespace and are collapsed below anyway. `fix_surrogates`: a Rust `str` cannot hold
//!   surrogates.

use super::html_entities::HTML5_ENTITIES;

/// Cleans a prompt as diffusers' Wan pipeline does when `ftfy` is not installed:
/// `html.unescape(html.unescape(text))`, then whitespace runs (Python's `\s`, see
/// [`is_python_whitespace`]) collapsed to one space and the ends stripped. See the module docs for
/// what `ftfy.fix_text` would add.
pub fn prompt_clean(text: &str) -> String {
    let unescaped = html_unescape(&html_unescape(text));
    // `strip` → `re.sub(r"\s+", " ")` → `strip` leaves exactly the non-empty whitespace-separated
    // words joined by single spaces.
    unescaped
        .split(is_python_whitespace)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Python's `str.isspace()`, which is also what `\s` matches in a `str` pattern and what
/// `str.strip()` removes. Rust's `char::is_whitespace` (Unicode `White_Space`) lacks U+001C–U+001F
/// (information separators), which Python counts as whitespace.
pub fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `html.unescape` (CPython 3.11): named references from the HTML5 list (with the legacy
/// names that need no `;`, and the longest-prefix rule for unknown names such as `&ampfoo`),
/// decimal and hex numeric references with the HTML5 replacements for invalid code points.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '&' {
            if let Some((end, replacement)) = char_ref(&chars, i + 1) {
                out.push_str(&replacement);
                i = end;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Matches the reference's `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)` right after
/// an `&` at `start`; gives the index after the match and the replacement.
fn char_ref(chars: &[char], start: usize) -> Option<(usize, String)> {
    let at = |i: usize| chars.get(i).copied();
    if at(start) == Some('#') {
        let (digits_start, radix) = match at(start + 1) {
            Some(c) if c.is_ascii_digit() => (start + 1, 10),
            Some('x' | 'X') if at(start + 2).is_some_and(|c| c.is_ascii_hexdigit()) => {
                (start + 2, 16)
            }
            // The third alternative cannot start with '#': no reference here.
            _ => return None,
        };
        let mut end = digits_start;
        // Python's int() is unbounded; anything above U+10FFFF becomes U+FFFD, so saturating
        // is exact.
        let mut num: u64 = 0;
        while let Some(d) = at(end).and_then(|c| c.to_digit(radix)) {
            num = num.saturating_mul(radix as u64).saturating_add(d as u64);
            end += 1;
        }
        if at(end) == Some(';') {
            end += 1;
        }
        return Some((end, numeric_ref(num)));
    }
    let mut end = start;
    while end - start < 32
        && at(end)
            .is_some_and(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
    {
        end += 1;
    }
    if end == start {
        return None;
    }
    if at(end) == Some(';') {
        end += 1;
    }
    let name: String = chars[start..end].iter().collect();
    if let Some(v) = lookup(&name) {
        return Some((end, v.to_string()));
    }
    // The longest known prefix of at least 2 characters wins; the rest stays as text.
    let name_chars = &chars[start..end];
    for x in (2..name_chars.len()).rev() {
        let prefix: String = name_chars[..x].iter().collect();
        if let Some(v) = lookup(&prefix) {
            let rest: String = name_chars[x..].iter().collect();
            return Some((end, format!("{v}{rest}")));
        }
    }
    Some((end, format!("&{name}")))
}

fn lookup(name: &str) -> Option<&'static str> {
    HTML5_ENTITIES
        .binary_search_by(|(k, _)| k.cmp(&name))
        .ok()
        .map(|i| HTML5_ENTITIES[i].1)
}

/// Python's `_invalid_charrefs` for 0x80..=0x9F: the Windows-1252 reading, where it has one.
const CP1252_C1: [char; 32] = [
    '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}', '\u{2021}',
    '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}', '\u{8f}',
    '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}', '\u{2014}',
    '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}', '\u{178}',
];

/// The numeric-reference rules of Python's `html._replace_charref`, in its order.
fn numeric_ref(num: u64) -> String {
    match num {
        0 => '\u{fffd}'.to_string(),
        0x0d => '\r'.to_string(),
        0x80..=0x9f => CP1252_C1[(num - 0x80) as usize].to_string(),
        0xd800..=0xdfff => '\u{fffd}'.to_string(),
        n if n > 0x10ffff => '\u{fffd}'.to_string(),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        // U+FFFE and U+FFFF of every plane.
        n if n & 0xfffe == 0xfffe => String::new(),
        n => char::from_u32(n as u32)
            .map(String::from)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_binary_search() {
        assert!(HTML5_ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(HTML5_ENTITIES.len(), 2231);
    }

    /// Expected values printed by CPython 3.11's `html.unescape`.
    #[test]
    fn unescape_matches_python() {
        let cases = [
            ("&amp;lt;", "&lt;"),
            ("a &amp b", "a & b"),
            ("&ampfoo;", "&foo;"),
            ("&notit;", "\u{ac}it;"),
            ("&notin;", "\u{2209}"),
            ("&#39;&#x27;&#X41;", "''A"),
            ("&#150;", "\u{2013}"),
            (
                "&#0;&#13;&#1;&#xD800;&#99999999999999999999;",
                "\u{fffd}\r\u{fffd}\u{fffd}",
            ),
            ("&#xfffe;&#x1ffff;&#x10000;", "\u{10000}"),
            ("&#x;&#;&;& &unknown;", "&#x;&#;&;& &unknown;"),
            ("&lt&gt", "<>"),
            ("&éa;", "&éa;"),
        ];
        for (input, want) in cases {
            assert_eq!(html_unescape(input), want, "{input:?}");
        }
    }

    #[test]
    fn whitespace_is_pythons() {
        assert_eq!(
            prompt_clean("\u{1c}a\u{3000}\u{85}b\u{200b}c "),
            "a b\u{200b}c"
        );
        assert_eq!(prompt_clean(" \t\n"), "");
    }
}
