//! Text helpers: cleaning what others wrote before it reaches the terminal, widths, word
//! wrapping that keeps byte offsets (so search matches can be styled after wrapping), and
//! case-insensitive search.

use std::{borrow::Cow, ops::Range};

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Replaces control characters (an escape sequence in a message must not reach the
/// terminal) and bidi overrides (which can disguise text) with visible stand-ins. Newlines
/// stay. Byte offsets change only where something was replaced.
pub(crate) fn clean(s: &str) -> Cow<'_, str> {
    let bad = |c: char| (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if c == '\t' {
                    ' '
                } else if bad(c) {
                    '\u{fffd}'
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// One line of untrusted text: newlines become spaces too.
pub(crate) fn one_line(s: &str) -> String {
    clean(s).replace('\n', " ")
}

/// Display width in terminal columns.
pub(crate) fn width(s: &str) -> usize {
    s.width()
}

/// Cuts `s` to at most `max` columns, ending with "…" when something was cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.width() <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    if max > 0 {
        out.push('…');
    }
    out
}

/// Word-wraps `text` to `width` columns: byte ranges of each row, newlines starting a row.
/// Words longer than a row are cut; the spaces a row breaks at are left out.
pub(crate) fn wrap(text: &str, width: usize) -> Vec<Range<usize>> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut offset = 0;
    for line in text.split('\n') {
        wrap_line(text, offset, offset + line.len(), width, &mut rows);
        offset += line.len() + 1;
    }
    rows
}

fn wrap_line(text: &str, from: usize, to: usize, width: usize, rows: &mut Vec<Range<usize>>) {
    let mut start = from;
    let mut col = 0;
    let mut last_space: Option<usize> = None;
    for (i, c) in text[from..to].char_indices() {
        let i = from + i;
        let w = c.width().unwrap_or(0);
        if c == ' ' {
            if col + w > width {
                rows.push(start..i);
                start = i + 1;
                col = 0;
                last_space = None;
            } else {
                last_space = Some(i);
                col += w;
            }
            continue;
        }
        if col + w > width {
            match last_space.take() {
                Some(space) => {
                    rows.push(start..start + text[start..space].trim_end().len());
                    start = space + 1;
                }
                None => {
                    rows.push(start..i);
                    start = i;
                }
            }
            col = text[start..i].width();
        }
        col += w;
    }
    rows.push(start..to);
}

fn fold(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// Byte ranges of every case-insensitive occurrence of `needle` in `haystack`.
pub(crate) fn find_all(haystack: &str, needle: &str) -> Vec<Range<usize>> {
    let needle: Vec<char> = needle.chars().map(fold).collect();
    if needle.is_empty() {
        return Vec::new();
    }
    let chars: Vec<(usize, char)> = haystack.char_indices().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + needle.len() <= chars.len() {
        if needle.iter().enumerate().all(|(k, n)| fold(chars[i + k].1) == *n) {
            let end = chars.get(i + needle.len()).map_or(haystack.len(), |c| c.0);
            found.push(chars[i].0..end);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, width: usize) -> Vec<&str> {
        wrap(text, width).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn wraps_words_and_cuts_long_ones() {
        assert_eq!(rows("see you at six tonight", 10), ["see you at", "six", "tonight"]);
        assert_eq!(rows("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(rows("one\n\ntwo", 10), ["one", "", "two"]);
        assert_eq!(rows("", 10), [""]);
        assert_eq!(rows("ab 日本語です", 6), ["ab", "日本語", "です"]);
    }

    #[test]
    fn finds_case_insensitively() {
        assert_eq!(find_all("Pizza? pizza!", "PIZZA"), [0..5, 7..12]);
        assert_eq!(find_all("Ärger", "är"), vec![0..3]);
        assert!(find_all("abc", "").is_empty());
    }

    #[test]
    fn cleans_escapes_and_truncates() {
        assert_eq!(clean("a\u{1b}[2Jb\tc\u{202e}d"), "a\u{fffd}[2Jb c\u{fffd}d");
        assert!(matches!(clean("plain\ntext"), Cow::Borrowed(_)));
        assert_eq!(truncate("Hello world", 6), "Hello…");
        assert_eq!(truncate("Hi", 6), "Hi");
    }
}
