//! Batch files: what is written reads back as the same cells, and what
//! the writer would never write is refused with the file, line and reason.

use std::io::Write;
use std::path::Path;

use chrono::{TimeZone, Utc};
use ferry_batch::format::{open_rows, PartWriter, RowReader};
use ferry_batch::{Column, FileFormat, Manifest, ValueKind, Window};
use ferry_core::ErrorKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

fn manifest(format: FileFormat, gzip: bool, columns: Vec<Column>) -> Manifest {
    Manifest {
        format_version: ferry_batch::manifest::FORMAT_VERSION,
        job: "j".into(),
        window: Window {
            start: "a".into(),
            end: "b".into(),
        },
        run_id: "r".into(),
        format,
        gzip,
        columns,
        files: Vec::new(),
        created_at: Utc.timestamp_opt(0, 0).unwrap(),
    }
}

/// Pieces that stress quoting and escaping.
const PIECES: [&str; 18] = [
    "",
    ",",
    "\"",
    "\r",
    "\n",
    "\r\n",
    "é",
    "日本語",
    "\\.",
    " ",
    "a",
    "null",
    "\u{1}",
    "\t",
    "\\",
    "{",
    "\u{7f}",
    "💡",
];

fn text(rng: &mut StdRng) -> String {
    (0..rng.gen_range(0..6))
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

fn digits(rng: &mut StdRng, most: usize) -> String {
    let n = rng.gen_range(1..most);
    let mut s: String = (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect();
    if s.len() > 1 && s.starts_with('0') {
        s.replace_range(..1, "7");
    }
    s
}

fn value(rng: &mut StdRng, kind: ValueKind) -> String {
    let sign = if rng.gen_bool(0.5) { "-" } else { "" };
    match kind {
        ValueKind::Integer => format!("{sign}{}", digits(rng, 40)),
        ValueKind::Decimal => format!("{sign}{}.{}", digits(rng, 30), digits(rng, 12)),
        ValueKind::Float => [
            "1e+20",
            "NaN",
            "-Infinity",
            "0.1",
            "-0",
            "1.5e-07",
            "123456",
        ][rng.gen_range(0..7)]
        .to_owned(),
        ValueKind::Boolean => if rng.gen_bool(0.5) { "true" } else { "false" }.to_owned(),
        ValueKind::Text => text(rng),
        ValueKind::Timestamp => "2026-12-07T02:00:00.000001Z".into(),
        ValueKind::DateTime => "2026-12-07T02:00:00.123456".into(),
        ValueKind::Date => "2026-12-07".into(),
        ValueKind::Time => "23:59:59.999999".into(),
        ValueKind::Json => serde_json::to_string(&serde_json::json!({
            "k": text(rng), "n": [1, 2.5, null, true], "s": {"x": text(rng)}
        }))
        .unwrap(),
        ValueKind::Bytes => format!("\\x{}", hex_of(rng)),
    }
}

fn hex_of(rng: &mut StdRng) -> String {
    (0..rng.gen_range(0..8))
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

fn write_file(
    path: &Path,
    format: FileFormat,
    gzip: bool,
    columns: &[Column],
    rows: &[Vec<Option<String>>],
) {
    let mut w = PartWriter::create(path, format, gzip, columns).unwrap();
    for row in rows {
        let cells: Vec<Option<&str>> = row.iter().map(|c| c.as_deref()).collect();
        w.rows().write_row(&cells).unwrap();
    }
    let summary = w.finish().unwrap();
    let on_disk = std::fs::read(path).unwrap();
    assert_eq!(summary.rows, rows.len() as u64);
    assert_eq!(summary.bytes, on_disk.len() as u64);
    assert_eq!(summary.sha256, sha256(&on_disk));
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn read_all(mut reader: RowReader) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    while let Some(row) = reader.next_row().unwrap() {
        rows.push(row);
    }
    rows
}

#[test]
fn random_rows_read_back_the_same_in_both_formats_with_and_without_gzip() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(1..8);
        let columns: Vec<Column> = (0..n)
            .map(|i| Column {
                name: if i == 0 {
                    "weird, \"name\"\n".into()
                } else {
                    format!("c{i}é")
                },
                db_type: "x".into(),
                kind: KINDS[rng.gen_range(0..KINDS.len())],
            })
            .collect();
        let rows: Vec<Vec<Option<String>>> = (0..rng.gen_range(0..60))
            .map(|_| {
                columns
                    .iter()
                    .map(|c| (!rng.gen_bool(0.2)).then(|| value(&mut rng, c.kind)))
                    .collect()
            })
            .collect();
        for format in [FileFormat::Csv, FileFormat::Jsonl] {
            for gzip in [false, true] {
                let path = dir.path().join(format!("{seed}-{format:?}-{gzip}"));
                write_file(&path, format, gzip, &columns, &rows);
                let m = manifest(format, gzip, columns.clone());
                let back = read_all(open_rows(&path, &m).unwrap());
                assert_eq!(back, rows, "seed {seed} {format:?} gzip {gzip}");
            }
        }
    }
}

#[test]
fn one_column_files_keep_nulls_empty_strings_and_the_end_marker() {
    let dir = tempfile::tempdir().unwrap();
    let columns = vec![Column {
        name: "v".into(),
        db_type: "text".into(),
        kind: ValueKind::Text,
    }];
    let rows: Vec<Vec<Option<String>>> = [None, Some(""), Some("\\."), Some("x"), None]
        .iter()
        .map(|c| vec![c.map(str::to_owned)])
        .collect();
    for format in [FileFormat::Csv, FileFormat::Jsonl] {
        let path = dir.path().join(format!("{format:?}"));
        write_file(&path, format, false, &columns, &rows);
        let back = read_all(open_rows(&path, &manifest(format, false, columns.clone())).unwrap());
        assert_eq!(back, rows);
    }
    let csv = std::fs::read(dir.path().join("Csv")).unwrap();
    assert_eq!(csv, b"v\r\n\r\n\"\"\r\n\"\\.\"\r\nx\r\n\r\n");
}

#[test]
fn an_empty_result_is_a_header_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let columns = vec![Column {
        name: "id".into(),
        db_type: "int8".into(),
        kind: ValueKind::Integer,
    }];
    for format in [FileFormat::Csv, FileFormat::Jsonl] {
        let path = dir.path().join(format!("{format:?}"));
        write_file(&path, format, true, &columns, &[]);
        let back = read_all(open_rows(&path, &manifest(format, true, columns.clone())).unwrap());
        assert!(back.is_empty());
    }
}

/// The failure reading `content` as a file of columns `a` (Integer) and
/// `b` (Text), at open or at the first row that fails.
fn refusal(format: FileFormat, content: &[u8]) -> ferry_core::Failure {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-file");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(content)
        .unwrap();
    let columns = ["a", "b"]
        .iter()
        .zip([ValueKind::Integer, ValueKind::Text])
        .map(|(n, k)| Column {
            name: (*n).into(),
            db_type: "x".into(),
            kind: k,
        })
        .collect();
    let m = manifest(format, false, columns);
    let mut reader = match open_rows(&path, &m) {
        Ok(r) => r,
        Err(e) => return e,
    };
    loop {
        match reader.next_row() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("{content:?} was read without error"),
            Err(e) => return e,
        }
    }
}

#[test]
fn refuses_what_the_writer_never_writes() {
    use FileFormat::{Csv, Jsonl};
    let cases: &[(FileFormat, &[u8], &str)] = &[
        (Csv, b"a,c\r\n", "line 1: the header"),
        (Csv, b"", "line 1: the file is empty"),
        (Csv, b"a,b\r\n1,x\r\n1,x,y\r\n", "line 3: 3 fields"),
        (Csv, b"a,b\r\n1\r\n", "line 2: 1 fields"),
        (
            Csv,
            b"a,b\r\n1,\"x\"y\r\n",
            "line 2: field 2 has text after",
        ),
        (Csv, b"a,b\r\n1,x\"y\"\r\n", "line 2: unquoted field 2"),
        (
            Csv,
            b"a,b\r\n1,\"x\r\ny\r\n",
            "line 2: a quoted field is not closed",
        ),
        (
            Csv,
            b"a,b\r\n1,\"multi\r\nline\"\r\n2,\xff\r\n",
            "line 4: field 2 is not UTF-8",
        ),
        (Csv, b"a,b\n1,x\n", "line 1: the record ends with LF"),
        (
            Jsonl,
            b"{\"a\":1,\"b\":\"x\"}\n[1]\n",
            "line 2: not a JSON object",
        ),
        (
            Jsonl,
            b"{\"a\":1,\"b\":\"x\",\"c\":2}\n",
            "line 1: unknown key \"c\"",
        ),
        (Jsonl, b"{\"a\":1}\n", "line 1: key \"b\" is missing"),
        (
            Jsonl,
            b"{\"a\":1,\"a\":2,\"b\":\"\"}\n",
            "line 1: key \"a\" appears twice",
        ),
        (
            Jsonl,
            b"{\"a\":true,\"b\":\"x\"}\n",
            "line 1: key \"a\": true is not",
        ),
        (Jsonl, b"{\"a\":1,\"b\":\"\xff\"}\n", "line 1: not UTF-8"),
        (Jsonl, b"\n", "line 1: not a JSON object"),
    ];
    for (format, content, expected) in cases {
        let e = refusal(*format, content);
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert!(e.message.contains("bad-file"), "{e}");
        assert!(
            e.message.contains(expected),
            "{:?}: {e}",
            String::from_utf8_lossy(content)
        );
    }
}
