//! Rows to CSV or JSON Lines bytes.

use std::io::{self, Write};

use crate::{Column, FileFormat, ValueKind};

/// Bytes gathered before they are handed to the inner writer.
const FLUSH_AT: usize = 64 * 1024;

/// Writes rows of canonical cell texts as CSV or JSON Lines (see the
/// [module docs](super) for the exact bytes).
///
/// A row is written cell by cell ([`cell`](Self::cell)) and closed with
/// [`end_row`](Self::end_row), so no row needs to be collected first;
/// [`write_row`](Self::write_row) does both for a slice. Output is
/// buffered; [`finish`](Self::finish) flushes it and returns the inner
/// writer.
pub struct RowWriter<W: Write> {
    format: FileFormat,
    kinds: Vec<ValueKind>,
    /// JSON Lines: each column's `"name":`, already escaped.
    keys: Vec<Vec<u8>>,
    buf: Vec<u8>,
    inner: W,
    col: usize,
    rows: u64,
}

impl<W: Write> RowWriter<W> {
    /// A writer of `columns`' rows in `format`; CSV's header row is
    /// written at once.
    pub fn new(format: FileFormat, columns: &[Column], inner: W) -> Self {
        let mut buf = Vec::with_capacity(FLUSH_AT + 4096);
        let keys = match format {
            FileFormat::Csv => {
                for (i, c) in columns.iter().enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    csv_field(&mut buf, Some(&c.name), columns.len() == 1);
                }
                buf.extend_from_slice(b"\r\n");
                Vec::new()
            }
            FileFormat::Jsonl => columns
                .iter()
                .map(|c| {
                    let mut key = Vec::with_capacity(c.name.len() + 3);
                    json_string(&mut key, &c.name);
                    key.push(b':');
                    key
                })
                .collect(),
        };
        Self {
            format,
            kinds: columns.iter().map(|c| c.kind).collect(),
            keys,
            buf,
            inner,
            col: 0,
            rows: 0,
        }
    }

    /// Appends the next cell of the current row: `None` for NULL, else
    /// the value's canonical text.
    pub fn cell(&mut self, value: Option<&str>) {
        let i = self.col;
        self.col += 1;
        match self.format {
            FileFormat::Csv => {
                if i > 0 {
                    self.buf.push(b',');
                }
                csv_field(&mut self.buf, value, self.kinds.len() == 1);
            }
            FileFormat::Jsonl => {
                self.buf.push(if i == 0 { b'{' } else { b',' });
                match self.keys.get(i) {
                    Some(key) => self.buf.extend_from_slice(key),
                    // A cell past the last column: end_row refuses the row.
                    None => self.buf.extend_from_slice(b"\"\":"),
                }
                let kind = self.kinds.get(i).copied().unwrap_or(ValueKind::Text);
                json_value(&mut self.buf, kind, value);
            }
        }
    }

    /// Ends the current row. Fails (`InvalidInput`) when the row did not
    /// have one cell per column; the bytes written so far are then not a
    /// valid file.
    pub fn end_row(&mut self) -> io::Result<()> {
        let cells = std::mem::take(&mut self.col);
        if cells != self.kinds.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a row of {cells} cells for {} columns", self.kinds.len()),
            ));
        }
        match self.format {
            FileFormat::Csv => self.buf.extend_from_slice(b"\r\n"),
            FileFormat::Jsonl => {
                if cells == 0 {
                    self.buf.push(b'{');
                }
                self.buf.extend_from_slice(b"}\n");
            }
        }
        self.rows += 1;
        if self.buf.len() >= FLUSH_AT {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes a whole row.
    pub fn write_row(&mut self, cells: &[Option<&str>]) -> io::Result<()> {
        for cell in cells {
            self.cell(*cell);
        }
        self.end_row()
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes buffered here, not yet handed to the inner writer.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Writes what is buffered and returns the inner writer (not flushed).
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&self.buf)?;
        Ok(self.inner)
    }
}

/// Bytes that make a CSV field need quotes.
const CSV_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b',' as usize] = true;
    t[b'"' as usize] = true;
    t[b'\r' as usize] = true;
    t[b'\n' as usize] = true;
    t
};

fn csv_field(buf: &mut Vec<u8>, value: Option<&str>, single_column: bool) {
    let Some(s) = value else { return };
    let b = s.as_bytes();
    if b.is_empty() || (single_column && b == b"\\.") {
        buf.push(b'"');
        buf.extend_from_slice(b);
        buf.push(b'"');
    } else if b.iter().any(|&c| CSV_SPECIAL[c as usize]) {
        buf.push(b'"');
        let mut rest = b;
        while let Some(q) = memchr::memchr(b'"', rest) {
            buf.extend_from_slice(&rest[..=q]);
            buf.push(b'"');
            rest = &rest[q + 1..];
        }
        buf.extend_from_slice(rest);
        buf.push(b'"');
    } else {
        buf.extend_from_slice(b);
    }
}

fn json_value(buf: &mut Vec<u8>, kind: ValueKind, value: Option<&str>) {
    let Some(s) = value else {
        buf.extend_from_slice(b"null");
        return;
    };
    match kind {
        ValueKind::Integer | ValueKind::Decimal | ValueKind::Float if is_json_number(s) => {
            buf.extend_from_slice(s.as_bytes())
        }
        ValueKind::Boolean if s == "true" || s == "false" => buf.extend_from_slice(s.as_bytes()),
        // A JSON string or null is written as a string of its text: as
        // itself it would read back as another cell's string, or as NULL.
        ValueKind::Json if is_json(s) && !s.trim_start().starts_with(['"', 'n']) => {
            json_minified(buf, s)
        }
        _ => json_string(buf, s),
    }
}

/// Whether `s` is a JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
pub(crate) fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'-') {
        i = 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

fn is_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

/// Valid JSON without the whitespace outside its strings.
fn json_minified(buf: &mut Vec<u8>, s: &str) {
    let mut in_string = false;
    let mut escaped = false;
    for &c in s.as_bytes() {
        if in_string {
            buf.push(c);
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            buf.push(c);
            in_string = c == b'"';
        }
    }
}

/// A JSON string: `"`, `\` and control characters escaped, the rest as is.
pub(crate) fn json_string(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..=0x1f => 0,
            _ => continue,
        };
        buf.extend_from_slice(&b[start..i]);
        start = i + 1;
        if short != 0 {
            buf.extend_from_slice(&[b'\\', short]);
        } else {
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[(c >> 4) as usize]);
            buf.push(HEX[(c & 0xf) as usize]);
        }
    }
    buf.extend_from_slice(&b[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(kinds: &[ValueKind]) -> Vec<Column> {
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| Column {
                name: format!("c{i}"),
                db_type: "x".into(),
                kind: *k,
            })
            .collect()
    }

    fn written(format: FileFormat, kinds: &[ValueKind], rows: &[&[Option<&str>]]) -> String {
        let mut w = RowWriter::new(format, &columns(kinds), Vec::new());
        for r in rows {
            w.write_row(r).unwrap();
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        use ValueKind::*;
        let out = written(
            FileFormat::Csv,
            &[Text, Text, Text, Text, Integer],
            &[&[
                None,
                Some(""),
                Some("a,b"),
                Some("say \"hi\"\r\n"),
                Some("12"),
            ]],
        );
        assert_eq!(
            out,
            "c0,c1,c2,c3,c4\r\n,\"\",\"a,b\",\"say \"\"hi\"\"\r\n\",12\r\n"
        );
    }

    #[test]
    fn csv_quotes_the_end_of_data_marker_in_one_column_files() {
        let one = written(
            FileFormat::Csv,
            &[ValueKind::Text],
            &[&[Some("\\.")], &[None]],
        );
        assert_eq!(one, "c0\r\n\"\\.\"\r\n\r\n");
        let two = written(
            FileFormat::Csv,
            &[ValueKind::Text, ValueKind::Text],
            &[&[Some("\\."), Some("x")]],
        );
        assert_eq!(two, "c0,c1\r\n\\.,x\r\n");
    }

    #[test]
    fn jsonl_writes_numbers_exactly_and_the_rest_as_strings() {
        use ValueKind::*;
        let out = written(
            FileFormat::Jsonl,
            &[
                Integer, Decimal, Float, Float, Boolean, Json, Json, Text, Integer,
            ],
            &[&[
                Some("-9223372036854775808123"),
                Some("12345678901234567890.1234567890"),
                Some("1e+20"),
                Some("NaN"),
                Some("true"),
                Some("{ \"a\" : [1, \"x y\\\"\"] }"),
                Some("{not json"),
                Some("tab\there \u{1} é"),
                None,
            ]],
        );
        assert_eq!(
            out,
            "{\"c0\":-9223372036854775808123,\"c1\":12345678901234567890.1234567890,\"c2\":1e+20,\"c3\":\"NaN\",\"c4\":true,\"c5\":{\"a\":[1,\"x y\\\"\"]},\"c6\":\"{not json\",\"c7\":\"tab\\there \\u0001 é\",\"c8\":null}\n"
        );
    }

    #[test]
    fn refuses_rows_of_the_wrong_width() {
        let mut w = RowWriter::new(FileFormat::Csv, &columns(&[ValueKind::Text]), Vec::new());
        assert!(w.write_row(&[Some("a"), Some("b")]).is_err());
        assert!(w.write_row(&[]).is_err());
    }

    #[test]
    fn knows_json_numbers() {
        for ok in ["0", "-0", "12", "1.5", "1e5", "1E+5", "-0.0e-12"] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "+1", "NaN", "1 ", "0x1"] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
