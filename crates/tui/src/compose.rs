//! The compose box's text and cursor: a small multi-line editor.

use unicode_width::UnicodeWidthChar;

/// Text being written, with a cursor (a byte offset on a char boundary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compose {
    text: String,
    cursor: usize,
}

impl Compose {
    /// A box holding `text`, cursor at the end.
    pub fn with_text(text: &str) -> Self {
        Compose { text: text.to_owned(), cursor: text.len() }
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte offset of the cursor.
    #[cfg(test)]
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Nothing but whitespace.
    pub fn is_blank(&self) -> bool {
        self.text.trim().is_empty()
    }

    /// Empties the box and returns what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    /// Inserts text at the cursor. Carriage returns from pasted text become newlines.
    pub fn insert_str(&mut self, s: &str) {
        let clean = s.replace("\r\n", "\n").replace('\r', "\n");
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
    }

    /// Inserts one character at the cursor.
    pub fn insert(&mut self, c: char) {
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
    }

    /// Deletes the character before the cursor.
    pub fn backspace(&mut self) {
        if let Some(c) = self.text[..self.cursor].chars().next_back() {
            self.cursor -= c.len_utf8();
            self.text.remove(self.cursor);
        }
    }

    /// Deletes the character under the cursor.
    pub fn delete(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    /// Deletes the word before the cursor (and the spaces after it).
    pub fn delete_word(&mut self) {
        let start = self.word_start();
        self.text.replace_range(start..self.cursor, "");
        self.cursor = start;
    }

    /// One character left.
    pub fn left(&mut self) {
        if let Some(c) = self.text[..self.cursor].chars().next_back() {
            self.cursor -= c.len_utf8();
        }
    }

    /// One character right.
    pub fn right(&mut self) {
        if let Some(c) = self.text[self.cursor..].chars().next() {
            self.cursor += c.len_utf8();
        }
    }

    /// To the start of the previous word.
    pub fn word_left(&mut self) {
        self.cursor = self.word_start();
    }

    /// To the end of the next word.
    pub fn word_right(&mut self) {
        let rest = &self.text[self.cursor..];
        let skip_space = rest.len() - rest.trim_start().len();
        let word = rest[skip_space..].find(char::is_whitespace).unwrap_or(rest.len() - skip_space);
        self.cursor += skip_space + word;
    }

    /// To the start of the line.
    pub fn home(&mut self) {
        self.cursor = self.line_start(self.cursor);
    }

    /// To the end of the line.
    pub fn end(&mut self) {
        self.cursor = self.line_end(self.cursor);
    }

    /// One line up, keeping the column; false on the first line.
    pub fn up(&mut self) -> bool {
        let start = self.line_start(self.cursor);
        if start == 0 {
            return false;
        }
        let column = self.text[start..self.cursor].chars().count();
        let prev_start = self.line_start(start - 1);
        self.cursor = self.offset_at_column(prev_start, column);
        true
    }

    /// One line down, keeping the column; false on the last line.
    pub fn down(&mut self) -> bool {
        let end = self.line_end(self.cursor);
        if end == self.text.len() {
            return false;
        }
        let column = self.text[self.line_start(self.cursor)..self.cursor].chars().count();
        self.cursor = self.offset_at_column(end + 1, column);
        true
    }

    /// The text cut into rows of at most `width` columns (newlines start a row), and the
    /// cursor's row and column among them.
    pub fn rows(&self, width: u16) -> (Vec<String>, (usize, u16)) {
        let width = width.max(1);
        let mut rows = vec![String::new()];
        let mut col = 0u16;
        let mut cursor = (0, 0);
        for (i, c) in self.text.char_indices() {
            if c == '\n' {
                if i == self.cursor {
                    cursor = (rows.len() - 1, col);
                }
                rows.push(String::new());
                col = 0;
                continue;
            }
            let w = u16::try_from(c.width().unwrap_or(0)).unwrap_or(1);
            if col + w > width {
                rows.push(String::new());
                col = 0;
            }
            if i == self.cursor {
                cursor = (rows.len() - 1, col);
            }
            if let Some(row) = rows.last_mut() {
                row.push(c);
            }
            col += w;
        }
        if self.cursor >= self.text.len() {
            cursor = if col >= width { (rows.len(), 0) } else { (rows.len() - 1, col) };
            if col >= width {
                rows.push(String::new());
            }
        }
        (rows, cursor)
    }

    fn word_start(&self) -> usize {
        let before = self.text[..self.cursor].trim_end();
        before.rfind(char::is_whitespace).map_or(0, |i| i + 1)
    }

    fn line_start(&self, at: usize) -> usize {
        self.text[..at].rfind('\n').map_or(0, |i| i + 1)
    }

    fn line_end(&self, at: usize) -> usize {
        self.text[at..].find('\n').map_or(self.text.len(), |i| at + i)
    }

    fn offset_at_column(&self, line_start: usize, column: usize) -> usize {
        let end = self.line_end(line_start);
        self.text[line_start..end].char_indices().nth(column).map_or(end, |(i, _)| line_start + i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_and_moves() {
        let mut c = Compose::default();
        for ch in "héllo world".chars() {
            c.insert(ch);
        }
        c.word_left();
        assert_eq!(&c.text()[c.cursor()..], "world");
        c.backspace();
        c.insert('\n');
        assert_eq!(c.text(), "héllo\nworld");
        assert!(c.up());
        assert_eq!(&c.text()[c.cursor()..], "héllo\nworld");
        c.end();
        assert!(c.down());
        assert_eq!(&c.text()[c.cursor()..], "");
        c.delete_word();
        assert_eq!(c.text(), "héllo\n");
        c.home();
        c.left();
        c.delete();
        assert_eq!(c.text(), "héllo");
        assert_eq!(c.take(), "héllo");
        assert!(c.is_blank());
    }

    #[test]
    fn rows_wrap_and_place_the_cursor() {
        let c = Compose::with_text("abcdef\ngh");
        let (rows, cursor) = c.rows(4);
        assert_eq!(rows, ["abcd", "ef", "gh"]);
        assert_eq!(cursor, (2, 2));
        let (rows, cursor) = Compose::with_text("abcd").rows(4);
        assert_eq!(rows, ["abcd", ""]);
        assert_eq!(cursor, (1, 0));
    }
}
