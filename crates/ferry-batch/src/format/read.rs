//! Batch files back to rows of canonical cell texts.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use ferry_core::Failure;
use flate2::read::MultiGzDecoder;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::{Column, FileFormat, Manifest, ValueKind};

/// Reads a batch file's rows, checked against its manifest's columns.
///
/// Each row is one cell per manifest column, in column order: `None` for
/// NULL, else the canonical text the file was written from. Anything the
/// writer would not have written (a CSV header other than the column
/// names, a malformed record, a record of the wrong width, bytes that are
/// not UTF-8, a JSON line that is not an object of exactly the columns) is
/// a permanent failure naming the file, the line and the reason.
pub struct RowReader {
    input: Box<dyn BufRead + Send>,
    name: String,
    format: FileFormat,
    columns: Vec<Column>,
    /// Lines read so far.
    line: u64,
    raw: Vec<u8>,
}

/// Opens the data file at `path`, written per `manifest` (format, gzip,
/// columns). A CSV file's header is read and checked at once.
pub fn open_rows(path: &Path, manifest: &Manifest) -> Result<RowReader, Failure> {
    let file = File::open(path).map_err(|e| {
        Failure::permanent(format!("cannot open batch file {}", path.display())).with_source(e)
    })?;
    RowReader::new(
        file,
        path.display().to_string(),
        manifest.format,
        manifest.gzip,
        &manifest.columns,
    )
}

impl RowReader {
    /// Reads rows from `input` (named `name` in errors).
    pub fn new(
        input: impl Read + Send + 'static,
        name: String,
        format: FileFormat,
        gzip: bool,
        columns: &[Column],
    ) -> Result<Self, Failure> {
        let input: Box<dyn BufRead + Send> = if gzip {
            Box::new(BufReader::with_capacity(
                256 * 1024,
                MultiGzDecoder::new(BufReader::new(input)),
            ))
        } else {
            Box::new(BufReader::with_capacity(256 * 1024, input))
        };
        let mut reader = Self {
            input,
            name,
            format,
            columns: columns.to_vec(),
            line: 0,
            raw: Vec::new(),
        };
        if format == FileFormat::Csv {
            let expected: Vec<Option<String>> = reader
                .columns
                .iter()
                .map(|c| Some(c.name.clone()))
                .collect();
            match reader.csv_record()? {
                Some(header) if header == expected => {}
                Some(_) => {
                    return Err(reader.bad(1, "the header is not the manifest's column names"))
                }
                None => return Err(reader.bad(1, "the file is empty (no header)")),
            }
        }
        Ok(reader)
    }

    /// The next row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<Vec<Option<String>>>, Failure> {
        match self.format {
            FileFormat::Csv => self.csv_record(),
            FileFormat::Jsonl => self.jsonl_record(),
        }
    }

    fn bad(&self, line: u64, reason: impl std::fmt::Display) -> Failure {
        Failure::permanent(format!("batch file {} line {line}: {reason}", self.name))
    }

    /// Reads one physical line into `raw` (appending); false at the end.
    fn read_line(&mut self) -> Result<bool, Failure> {
        let n = self.input.read_until(b'\n', &mut self.raw).map_err(|e| {
            Failure::permanent(format!(
                "cannot read batch file {} after line {}",
                self.name, self.line
            ))
            .with_source(e)
        })?;
        if n > 0 {
            self.line += 1;
        }
        Ok(n > 0)
    }

    fn csv_record(&mut self) -> Result<Option<Vec<Option<String>>>, Failure> {
        self.raw.clear();
        let first = self.line + 1;
        if !self.read_line()? {
            return Ok(None);
        }
        // A quoted field may hold line breaks: read on while a quote is open.
        while memchr::memchr_iter(b'"', &self.raw).count() % 2 == 1 {
            if !self.read_line()? {
                return Err(self.bad(first, "a quoted field is not closed"));
            }
        }
        let body = match self.raw.strip_suffix(b"\r\n") {
            Some(body) => body,
            None if self.raw.ends_with(b"\n") => {
                return Err(self.bad(first, "the record ends with LF, not CRLF"))
            }
            None => &self.raw[..],
        };
        let fields = parse_csv(body).map_err(|reason| self.bad(first, reason))?;
        if fields.len() != self.columns.len() {
            return Err(self.bad(
                first,
                format!(
                    "{} fields where the manifest has {} columns",
                    fields.len(),
                    self.columns.len()
                ),
            ));
        }
        Ok(Some(fields))
    }

    fn jsonl_record(&mut self) -> Result<Option<Vec<Option<String>>>, Failure> {
        self.raw.clear();
        if !self.read_line()? {
            return Ok(None);
        }
        let line = self.line;
        let text = std::str::from_utf8(&self.raw)
            .map_err(|e| self.bad(line, format!("not UTF-8 ({e})")))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut de = serde_json::Deserializer::from_str(text);
        let pairs = de
            .deserialize_map(Pairs)
            .and_then(|p| de.end().map(|()| p))
            .map_err(|e| self.bad(line, format!("not a JSON object ({e})")))?;
        let mut row: Vec<Option<String>> = vec![None; self.columns.len()];
        let mut seen = vec![false; self.columns.len()];
        for (key, raw) in pairs {
            let Some(i) = self.columns.iter().position(|c| c.name == key) else {
                return Err(self.bad(line, format!("unknown key {key:?}")));
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(self.bad(line, format!("key {key:?} appears twice")));
            }
            row[i] = cell(self.columns[i].kind, raw.get())
                .map_err(|reason| self.bad(line, format!("key {key:?}: {reason}")))?;
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(self.bad(line, format!("key {:?} is missing", self.columns[i].name)));
        }
        Ok(Some(row))
    }
}

/// A JSON value back to the cell it was written from.
fn cell(kind: ValueKind, raw: &str) -> Result<Option<String>, String> {
    let bad = |e: serde_json::Error| format!("malformed value ({e})");
    match raw.as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'"') => Ok(Some(serde_json::from_str::<String>(raw).map_err(bad)?)),
        _ => match kind {
            ValueKind::Json => Ok(Some(raw.to_owned())),
            ValueKind::Integer | ValueKind::Decimal | ValueKind::Float
                if super::write::is_json_number(raw) =>
            {
                Ok(Some(raw.to_owned()))
            }
            ValueKind::Boolean if raw == "true" || raw == "false" => Ok(Some(raw.to_owned())),
            _ => Err(format!("{raw} is not a value of kind {kind:?}")),
        },
    }
}

/// A JSON object's members in order, values unparsed.
struct Pairs;

impl<'de> Visitor<'de> for Pairs {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            pairs.push((key.0, map.next_value::<&'de RawValue>()?));
        }
        Ok(pairs)
    }
}

/// A key, borrowed unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One CSV record (without its CRLF) to cells: an empty unquoted field is
/// NULL, a quoted one a string.
fn parse_csv(body: &[u8]) -> Result<Vec<Option<String>>, String> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if body.get(i) == Some(&b'"') {
            let mut value = Vec::new();
            i += 1;
            loop {
                let Some(q) = memchr::memchr(b'"', &body[i..]) else {
                    return Err("a quoted field is not closed".into());
                };
                value.extend_from_slice(&body[i..i + q]);
                i += q + 1;
                if body.get(i) == Some(&b'"') {
                    value.push(b'"');
                    i += 1;
                } else {
                    break;
                }
            }
            let text = String::from_utf8(value)
                .map_err(|e| format!("field {} is not UTF-8 ({e})", fields.len() + 1))?;
            fields.push(Some(text));
            match body.get(i) {
                None => return Ok(fields),
                Some(b',') => i += 1,
                Some(_) => {
                    return Err(format!(
                        "field {} has text after its closing quote",
                        fields.len()
                    ))
                }
            }
        } else {
            let end = memchr::memchr(b',', &body[i..]).map_or(body.len(), |e| i + e);
            let raw = &body[i..end];
            if let Some(c) = raw.iter().find(|c| matches!(c, b'"' | b'\r' | b'\n')) {
                return Err(format!(
                    "unquoted field {} holds {:?}",
                    fields.len() + 1,
                    char::from(*c)
                ));
            }
            if raw.is_empty() {
                fields.push(None);
            } else {
                let text = std::str::from_utf8(raw)
                    .map_err(|e| format!("field {} is not UTF-8 ({e})", fields.len() + 1))?;
                fields.push(Some(text.to_owned()));
            }
            if end == body.len() {
                return Ok(fields);
            }
            i = end + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_strictly() {
        assert_eq!(
            parse_csv(b",\"\",a,\"b,\"\"c\"\"\r\n\"").unwrap(),
            vec![
                None,
                Some(String::new()),
                Some("a".into()),
                Some("b,\"c\"\r\n".into())
            ]
        );
        assert_eq!(parse_csv(b"").unwrap(), vec![None]);
        assert_eq!(parse_csv(b"a,").unwrap(), vec![Some("a".into()), None]);
        assert!(parse_csv(b"a\"b").is_err());
        assert!(parse_csv(b"\"a\"b").is_err());
        assert!(parse_csv(b"\"a").is_err());
        assert!(parse_csv(b"a\rb").is_err());
        assert!(parse_csv(&[b'"', 0xff, b'"']).is_err());
    }
}

/// Property tests (issue 13): rows written by [`super::RowWriter`] read back
/// as the cells they were written from, in both formats, plain or gzip;
/// any bytes read as rows or as a failure naming the file and line, never
/// a panic.
#[cfg(test)]
mod props {
    use super::*;
    use crate::format::{Compressed, RowWriter};
    use proptest::prelude::*;
    use std::io::{Cursor, Write};

    const KINDS: [ValueKind; 11] = [
        ValueKind::Integer,
        ValueKind::Decimal,
        ValueKind::Float,
        ValueKind::Boolean,
        ValueKind::Text,
        ValueKind::Timestamp,
        ValueKind::DateTime,
        ValueKind::Date,
        ValueKind::Time,
        ValueKind::Json,
        ValueKind::Bytes,
    ];

    /// Columns with distinct names (names any text, quotes and commas too).
    fn columns() -> impl Strategy<Value = Vec<Column>> {
        proptest::collection::btree_map("\\PC{0,6}|[a-z,\" \r\n]{0,4}", 0..KINDS.len(), 1..5)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(name, k)| Column {
                        name,
                        db_type: "t".into(),
                        kind: KINDS[k],
                    })
                    .collect()
            })
    }

    /// A cell's text: anything, or text shaped like the kinds' values
    /// (numbers, booleans, JSON documents with whitespace) and the texts
    /// the formats treat specially.
    fn cell() -> impl Strategy<Value = Option<String>> {
        proptest::option::weighted(
            0.85,
            prop_oneof![
                any::<String>(),
                "\\PC{0,10}",
                "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,3})?",
                "true|false|NaN|-?Infinity|null|\\\\\\.|\"\"|,|\r\n",
                "[ \t\r\n]{0,2}(\\{\\}|\\[ ?1 ?, ?\"a b\" ?\\]|\\{ \"k\" : \\[ null \\] \\}|-?[0-9]{1,4}|\"[a-z \\\\\"]{0,4}\"|true|null)[ \n]{0,2}",
            ],
        )
    }

    fn table() -> impl Strategy<Value = (Vec<Column>, Vec<Vec<Option<String>>>)> {
        columns().prop_flat_map(|cols| {
            let n = cols.len();
            (
                Just(cols),
                proptest::collection::vec(proptest::collection::vec(cell(), n), 0..6),
            )
        })
    }

    fn format() -> impl Strategy<Value = FileFormat> {
        prop_oneof![Just(FileFormat::Csv), Just(FileFormat::Jsonl)]
    }

    /// Valid JSON without the whitespace outside its strings (what the
    /// writer promises for a Json cell holding valid JSON).
    fn minified(s: &str) -> String {
        let mut out = String::new();
        let (mut in_string, mut escaped) = (false, false);
        for c in s.chars() {
            if in_string {
                out.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
                out.push(c);
                in_string = c == '"';
            }
        }
        out
    }

    fn write(
        format: FileFormat,
        gzip: bool,
        columns: &[Column],
        rows: &[Vec<Option<String>>],
    ) -> Vec<u8> {
        let mut w = RowWriter::new(format, columns, Compressed::new(Vec::new(), gzip));
        for row in rows {
            let cells: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
            w.write_row(&cells).unwrap();
        }
        let mut inner = w.finish().unwrap();
        inner.flush().unwrap();
        inner.finish().unwrap()
    }

    /// Every row of `bytes`, or the first failure.
    fn read_all(
        bytes: Vec<u8>,
        format: FileFormat,
        gzip: bool,
        columns: &[Column],
    ) -> Result<Vec<Vec<Option<String>>>, Failure> {
        let mut reader = RowReader::new(Cursor::new(bytes), "f".into(), format, gzip, columns)?;
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row()? {
            prop_assert_eq_row_width(&row, columns);
            rows.push(row);
        }
        Ok(rows)
    }

    fn prop_assert_eq_row_width(row: &[Option<String>], columns: &[Column]) {
        assert_eq!(
            row.len(),
            columns.len(),
            "a row read is one cell per column"
        );
    }

    /// Found by `rows_read_back_as_written`: in JSON Lines a Json cell
    /// holding a JSON string (`""`, `"a"`) was written as itself and read
    /// back as the string's contents, and one holding `null` read back as
    /// NULL.
    #[test]
    fn regression_json_strings_and_null_read_back_as_written() {
        let columns = [Column {
            name: String::new(),
            db_type: "jsonb".into(),
            kind: ValueKind::Json,
        }];
        let rows = vec![
            vec![Some("\"\"".to_owned())],
            vec![Some("\"a\"".to_owned())],
            vec![Some("null".to_owned())],
            vec![Some(" null ".to_owned())],
            vec![Some("not json".to_owned())],
            vec![None],
        ];
        let bytes = write(FileFormat::Jsonl, false, &columns, &rows);
        let back = read_all(bytes, FileFormat::Jsonl, false, &columns).unwrap();
        assert_eq!(back, rows);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn rows_read_back_as_written(
            (columns, rows) in table(),
            format in format(),
            gzip in proptest::bool::weighted(0.2),
        ) {
            let bytes = write(format, gzip, &columns, &rows);
            let back = read_all(bytes, format, gzip, &columns)
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let expected: Vec<Vec<Option<String>>> = rows
                .iter()
                .map(|row| {
                    row.iter()
                        .zip(&columns)
                        .map(|(cell, col)| match cell {
                            Some(s)
                                if format == FileFormat::Jsonl
                                    && col.kind == ValueKind::Json
                                    && serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
                                    // A JSON string or null is written as a
                                    // string of its text, as it is.
                                    && !s.trim_start().starts_with(['"', 'n']) =>
                            {
                                Some(minified(s))
                            }
                            other => other.clone(),
                        })
                        .collect()
                })
                .collect();
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn any_bytes_read_as_rows_or_fail_naming_the_line(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                "[a-c,\"\r\n{}:\\[\\] 0-9nul]{0,80}".prop_map(String::into_bytes),
            ],
            columns in columns(),
            format in format(),
            gzip in proptest::bool::weighted(0.1),
        ) {
            if let Err(e) = read_all(bytes, format, gzip, &columns) {
                let text = e.to_string();
                prop_assert!(text.contains("batch file f"), "{}", text);
            }
        }

        #[test]
        fn a_damaged_file_reads_or_fails_without_panic(
            (columns, rows) in table(),
            format in format(),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
        ) {
            let mut bytes = write(format, false, &columns, &rows);
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            let _ = read_all(bytes, format, false, &columns);
        }
    }
}
