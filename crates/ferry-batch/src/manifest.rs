//! The manifest: the last file of a batch, and the only signal that the
//! batch is complete.
//!
//! A sender writes every data file first (each under a temporary name,
//! renamed when complete), then the manifest, named
//! `<batch>.manifest.json`. A receiver takes a batch only once its
//! manifest is there, and checks every file against it (size, rows,
//! SHA-256) before loading anything.
//!
//! The format is versioned ([`FORMAT_VERSION`]); a receiver refuses a
//! manifest of a version it does not know rather than guessing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The manifest format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The suffix of a manifest's file name.
pub const SUFFIX: &str = ".manifest.json";

/// A complete batch: what a receiver checks and loads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The export job's name.
    pub job: String,
    /// The window the batch covers.
    pub window: Window,
    /// The run that wrote it (a re-run of the same window writes the same
    /// file names and contents, under another run id).
    pub run_id: String,
    /// How the data files are written.
    pub format: FileFormat,
    /// Whether the data files are gzip-compressed.
    pub gzip: bool,
    /// The result's columns, in file order.
    pub columns: Vec<Column>,
    /// The data files, in order (part 1 first).
    pub files: Vec<FileEntry>,
    /// When the manifest was written.
    pub created_at: DateTime<Utc>,
}

/// The span of data a batch covers: `[start, end)` in time for a
/// scheduled window, or the watermarks for an incremental one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start of the window (inclusive), as text: an RFC 3339 time or a
    /// watermark value.
    pub start: String,
    /// End of the window (exclusive), same form as `start`.
    pub end: String,
}

/// The layout of a batch's data files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// CSV per RFC 4180: a header row, `,` between fields, CRLF after
    /// every record, fields quoted when they hold `,`, `"`, CR or LF (and
    /// `\.` alone in a file of one column, which PostgreSQL's `COPY`
    /// would take for the end of data). NULL is an empty unquoted field;
    /// an empty string is `""`.
    Csv,
    /// JSON Lines: one JSON object per row, `\n` after each.
    Jsonl,
}

impl FileFormat {
    /// The file-name extension, without gzip's.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
        }
    }
}

/// A column of the exported result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// Its name in the result.
    pub name: String,
    /// Its type as the source database names it (e.g. `int8`,
    /// `timestamptz`, `VARCHAR`).
    pub db_type: String,
    /// How its values are written in the files.
    pub kind: ValueKind,
}

/// How a column's values are written, whatever the source database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// Whole numbers, as decimal digits (JSON: a number, never rounded).
    Integer,
    /// Exact decimals, as decimal text (JSON: a number written as given).
    Decimal,
    /// Floating point, shortest text that reads back the same (JSON: a
    /// number; NaN and infinities as strings).
    Float,
    /// `true` or `false`.
    Boolean,
    /// Text, as is.
    Text,
    /// A point in time, RFC 3339 in UTC with microseconds
    /// (`2026-12-07T02:00:00.000000Z`).
    Timestamp,
    /// A time without a zone, `YYYY-MM-DDTHH:MM:SS.ffffff`.
    DateTime,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A time of day, `HH:MM:SS.ffffff`.
    Time,
    /// JSON (JSON Lines: the value itself, but a JSON string or `null` as
    /// a string of its text; CSV: its text).
    Json,
    /// Bytes, as `\x` and lower-case hex (PostgreSQL's `bytea` text).
    Bytes,
}

/// One data file of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Its name, relative to the manifest's folder.
    pub name: String,
    /// Its part number, from 1.
    pub part: u32,
    /// Data rows in it (CSV: not counting the header).
    pub rows: u64,
    /// Its size in bytes, as stored (compressed when gzip).
    pub bytes: u64,
    /// SHA-256 of its bytes as stored, lower-case hex.
    pub sha256: String,
}

impl Manifest {
    /// The manifest's file name for a batch named `batch`.
    pub fn file_name(batch: &str) -> String {
        format!("{batch}{SUFFIX}")
    }

    /// The batch name of a manifest file name, if it is one.
    pub fn batch_of(file_name: &str) -> Option<&str> {
        file_name.strip_suffix(SUFFIX).filter(|b| !b.is_empty())
    }

    /// Total data rows over every file.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// The manifest as written: pretty JSON, keys in a fixed order, so a
    /// re-run of a window writes the same bytes but for `run_id` and
    /// `created_at`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Reads a manifest, refusing one of an unknown format version.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(ManifestError::Malformed)?;
        if version.format_version != FORMAT_VERSION {
            return Err(ManifestError::Version(version.format_version));
        }
        serde_json::from_slice(bytes).map_err(ManifestError::Malformed)
    }
}

/// Why a manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not a manifest.
    #[error("malformed manifest: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Written by a newer (or unknown) format.
    #[error(
        "manifest format_version {0} is not supported (this Ferry reads version {FORMAT_VERSION})"
    )]
    Version(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            job: "orders".into(),
            window: Window {
                start: "2026-12-06T00:00:00Z".into(),
                end: "2026-12-07T00:00:00Z".into(),
            },
            run_id: "r1".into(),
            format: FileFormat::Csv,
            gzip: true,
            columns: vec![Column {
                name: "id".into(),
                db_type: "int8".into(),
                kind: ValueKind::Integer,
            }],
            files: vec![FileEntry {
                name: "orders-20261206-1.csv.gz".into(),
                part: 1,
                rows: 3,
                bytes: 40,
                sha256: "00".repeat(32),
            }],
            created_at: DateTime::parse_from_rfc3339("2026-12-07T02:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn reads_back_what_it_writes() {
        let m = manifest();
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        assert_eq!(m.rows(), 3);
    }

    #[test]
    fn refuses_unknown_versions_and_fields() {
        let mut m = manifest();
        m.format_version = 2;
        assert!(matches!(
            Manifest::parse(&m.to_bytes()),
            Err(ManifestError::Version(2))
        ));
        let text = String::from_utf8(manifest().to_bytes()).unwrap().replacen(
            "\"job\"",
            "\"extra\": 1, \"job\"",
            1,
        );
        assert!(matches!(
            Manifest::parse(text.as_bytes()),
            Err(ManifestError::Malformed(_))
        ));
    }

    #[test]
    fn names_manifests_after_their_batch() {
        assert_eq!(Manifest::file_name("b"), "b.manifest.json");
        assert_eq!(Manifest::batch_of("b.manifest.json"), Some("b"));
        assert_eq!(Manifest::batch_of(".manifest.json"), None);
        assert_eq!(Manifest::batch_of("b.csv"), None);
    }
}

/// Property tests (issue 13): every manifest reads back from its bytes, and
/// any bytes are a manifest or an error, never a panic; a missing or
/// unknown field is named.
#[cfg(test)]
mod props {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

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

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "\\PC{0,12}", any::<String>()]
    }

    fn manifest() -> impl Strategy<Value = Manifest> {
        let column = (text(), text(), 0..KINDS.len()).prop_map(|(name, db_type, k)| Column {
            name,
            db_type,
            kind: KINDS[k],
        });
        let file = (text(), any::<u32>(), any::<u64>(), any::<u64>(), text()).prop_map(
            |(name, part, rows, bytes, sha256)| FileEntry {
                name,
                part,
                rows,
                bytes,
                sha256,
            },
        );
        (
            text(),
            (text(), text()),
            text(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(column, 0..4),
            proptest::collection::vec(file, 0..3),
            // Years 1 to 9999, any nanosecond.
            -62_135_596_800i64..253_402_300_799,
            0u32..1_000_000_000,
        )
            .prop_map(
                |(job, (start, end), run_id, jsonl, gzip, columns, files, secs, nanos)| Manifest {
                    format_version: FORMAT_VERSION,
                    job,
                    window: Window { start, end },
                    run_id,
                    format: if jsonl {
                        FileFormat::Jsonl
                    } else {
                        FileFormat::Csv
                    },
                    gzip,
                    columns,
                    files,
                    created_at: Utc.timestamp_opt(secs, nanos).unwrap(),
                },
            )
    }

    const FIELDS: [&str; 9] = [
        "format_version",
        "job",
        "window",
        "run_id",
        "format",
        "gzip",
        "columns",
        "files",
        "created_at",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_manifest_reads_back_from_its_bytes(m in manifest()) {
            let back = Manifest::parse(&m.to_bytes())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, m);
        }

        #[test]
        fn any_bytes_parse_or_fail(bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "\\{( ?\"(format_version|job|files|x)\" ?: ?(1|2|\"a\"|\\[\\]|\\{\\}|null|-1|4294967296) ?,?){0,4}\\}"
                .prop_map(String::into_bytes),
        ]) {
            match Manifest::parse(&bytes) {
                Ok(m) => prop_assert_eq!(m.format_version, FORMAT_VERSION),
                Err(ManifestError::Version(v)) => prop_assert_ne!(v, FORMAT_VERSION),
                Err(ManifestError::Malformed(_)) => {}
            }
        }

        #[test]
        fn a_missing_or_unknown_field_is_named(m in manifest(), which in 0..FIELDS.len(), unknown in "[a-z_]{1,8}") {
            let field = FIELDS[which];
            let mut without = serde_json::to_value(&m).unwrap();
            without.as_object_mut().unwrap().remove(field);
            let err = Manifest::parse(&serde_json::to_vec(&without).unwrap()).unwrap_err().to_string();
            prop_assert!(err.contains(field), "{} does not name {}", err, field);
            if !FIELDS.contains(&unknown.as_str()) {
                let mut with = serde_json::to_value(&m).unwrap();
                with.as_object_mut().unwrap().insert(unknown.clone(), serde_json::Value::Null);
                let err = Manifest::parse(&serde_json::to_vec(&with).unwrap()).unwrap_err().to_string();
                prop_assert!(err.contains(&unknown), "{} does not name {}", err, unknown);
            }
        }
    }
}
