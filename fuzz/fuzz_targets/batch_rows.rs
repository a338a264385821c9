//! The import side's reader of batch files, CSV and JSON Lines
//! (`ferry_batch::format::RowReader`): any file, columns and format give
//! rows of one cell per column or a failure, never a panic. Round trip:
//! rows made from the same bytes (`arbitrary`), written by `RowWriter`,
//! read back as the same cells (a JSON Lines Json cell minified).
#![no_main]

use arbitrary::Arbitrary;
use ferry_batch::format::{RowReader, RowWriter};
use ferry_batch::{Column, FileFormat, ValueKind};
use libfuzzer_sys::fuzz_target;

/// A column's kind by its name in the manifest.
fn kind(name: &str) -> Option<ValueKind> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// The rows to write and read back, made from the input (`arbitrary`).
#[derive(Arbitrary, Debug)]
struct RoundTrip {
    jsonl: bool,
    columns: Vec<(String, u8)>,
    rows: Vec<Vec<Option<String>>>,
}

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
fn read_all(
    bytes: Vec<u8>,
    format: FileFormat,
    gzip: bool,
    columns: &[Column],
) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut reader = RowReader::new(
        std::io::Cursor::new(bytes),
        "fuzz".to_owned(),
        format,
        gzip,
        columns,
    )
    .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().map_err(|e| e.to_string())? {
        assert_eq!(row.len(), columns.len());
        rows.push(row);
    }
    Ok(rows)
}

fuzz_target!(|data: &[u8]| {
    // The input as a file: its first line is `csv`, `jsonl`, `csv.gz` or
    // `jsonl.gz`, a space and the manifest's columns as `name:kind`
    // separated by commas; the file's bytes follow.
    if let Some(newline) = data.iter().position(|&b| b == b'\n') {
        if let Ok(first) = std::str::from_utf8(&data[..newline]) {
            let (format, columns) = first.split_once(' ').unwrap_or((first, ""));
            let columns: Option<Vec<Column>> = columns
                .split(',')
                .filter(|c| !c.is_empty())
                .map(|c| {
                    let (name, kind_name) = c.rsplit_once(':')?;
                    Some(Column {
                        name: name.to_owned(),
                        db_type: kind_name.to_owned(),
                        kind: kind(kind_name)?,
                    })
                })
                .collect();
            let format = match format.strip_suffix(".gz").unwrap_or(format) {
                "csv" => Some(FileFormat::Csv),
                "jsonl" => Some(FileFormat::Jsonl),
                _ => None,
            };
            if let (Some(format), Some(columns)) = (format, columns) {
                let gzip = first.split(' ').next().is_some_and(|f| f.ends_with(".gz"));
                let _ = read_all(data[newline + 1..].to_vec(), format, gzip, &columns);
            }
        }
    }

    // Round trip, through uncompressed files: one cell per column, and
    // distinct column names (an export's result has them).
    let Ok(input) = RoundTrip::arbitrary(&mut arbitrary::Unstructured::new(data)) else {
        return;
    };
    let format = if input.jsonl {
        FileFormat::Jsonl
    } else {
        FileFormat::Csv
    };
    let columns: Vec<Column> = input
        .columns
        .iter()
        .map(|(name, kind)| Column {
            name: name.clone(),
            db_type: "fuzz".to_owned(),
            kind: KINDS[usize::from(*kind) % KINDS.len()],
        })
        .collect();
    let mut names: Vec<&String> = columns.iter().map(|c| &c.name).collect();
    names.sort();
    names.dedup();
    if columns.is_empty() || names.len() != columns.len() {
        return;
    }
    let rows: Vec<Vec<Option<String>>> = input
        .rows
        .into_iter()
        .map(|mut row| {
            row.resize(columns.len(), None);
            row
        })
        .collect();
    let mut writer = RowWriter::new(format, &columns, Vec::new());
    for row in &rows {
        let cells: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
        writer
            .write_row(&cells)
            .expect("a row of one cell per column");
    }
    let bytes = writer.finish().expect("writing to memory");
    let back = read_all(bytes.clone(), format, false, &columns).unwrap_or_else(|e| {
        panic!(
            "{rows:?} written as {:?} does not read back: {e}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert_eq!(back.len(), rows.len());
    for (row, back) in rows.iter().zip(&back) {
        for ((cell, back), column) in row.iter().zip(back).zip(&columns) {
            // A Json cell is written minified; one that has no whitespace to
            // remove (or is not JSON, so written as a string) reads back as is.
            let minified = cell
                .as_deref()
                .is_none_or(|c| !c.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')));
            if column.kind != ValueKind::Json || format == FileFormat::Csv || minified {
                assert_eq!(
                    back,
                    cell,
                    "column {column:?}, written as {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }
});
