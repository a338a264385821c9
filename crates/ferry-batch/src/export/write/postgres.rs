//! PostgreSQL: `COPY (…) TO STDOUT WITH (FORMAT csv)` of the query
//! (timestamptz columns converted to UTC), parsed, each value brought to
//! its canonical text and written again by the same
//! [`RowWriter`](crate::format::RowWriter) as every other source (so the
//! bytes are the same as theirs), on a thread of its own while the next
//! rows arrive.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_core::Failure;
use futures::StreamExt;
use sqlx::postgres::{PgConnection, PgPool, PgTypeInfo, PgTypeKind};
use sqlx::{Column as _, Connection, Executor, Statement, TypeInfo};

use super::sql::{db_failure, param, pg_literal, translate, Dialect};
use super::{row_failure, Parts, PartsSpec, Query, Written};
use crate::{Column, ValueKind};

/// COPY output gathered before it is handed to the writing thread.
const BATCH: usize = 256 * 1024;

/// Session settings the canonical texts rest on (local to the transaction).
const SETTINGS: &str = "SELECT set_config('extra_float_digits', '1', true), \
     set_config('DateStyle', 'ISO, YMD', true), \
     set_config('bytea_output', 'hex', true), \
     set_config('standard_conforming_strings', 'on', true)";

pub(super) async fn write_parts(
    pool: &PgPool,
    query: &Query,
    spec: &PartsSpec,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Written, Failure> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| db_failure("cannot connect to PostgreSQL", e))?;
    let result = run(&mut conn, query, spec, dir, progress).await;
    if result.is_err() {
        // It may be in the middle of a COPY: do not hand it to anyone else.
        conn.close_on_drop();
    }
    result
}

/// The planner's estimate of the query's rows (`EXPLAIN`'s top `Plan
/// Rows`); `None` when it cannot tell.
pub(super) async fn estimate_rows(pool: &sqlx::PgPool, query: &Query) -> Option<u64> {
    let sql = format!("EXPLAIN (FORMAT JSON) {}", inlined(query).ok()?);
    let plan: serde_json::Value = sqlx::query_scalar(&sql).fetch_one(pool).await.ok()?;
    let rows = plan.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64()?;
    (rows.is_finite() && rows >= 0.0).then(|| rows.round() as u64)
}

/// The query with its parameters as literals (COPY takes no bind
/// parameters), without a trailing `;`.
fn inlined(query: &Query) -> Result<String, Failure> {
    let sql = query.sql.trim_end().trim_end_matches(';');
    translate(sql, Dialect::Postgres, |name, out| {
        pg_literal(param(&query.params, name)?, out)
    })
}

/// A column's kind from its type (a domain's from its base type).
fn kind(ty: &PgTypeInfo) -> ValueKind {
    let base = match ty.kind() {
        PgTypeKind::Domain(base) => base,
        _ => ty,
    };
    match base.name().to_ascii_uppercase().as_str() {
        "INT2" | "INT4" | "INT8" => ValueKind::Integer,
        "NUMERIC" => ValueKind::Decimal,
        "FLOAT4" | "FLOAT8" => ValueKind::Float,
        "BOOL" => ValueKind::Boolean,
        "TIMESTAMPTZ" => ValueKind::Timestamp,
        "TIMESTAMP" => ValueKind::DateTime,
        "DATE" => ValueKind::Date,
        "TIME" => ValueKind::Time,
        "JSON" | "JSONB" => ValueKind::Json,
        "BYTEA" => ValueKind::Bytes,
        _ => ValueKind::Text,
    }
}

/// The expression that prints column `i` (`q.c<i>`) in a text that
/// [`canonical_text`] makes canonical cheaply (`to_char` would cost the
/// server more than the whole export).
fn canonical(i: usize, kind: ValueKind) -> String {
    match kind {
        ValueKind::Timestamp => format!("(q.c{i} AT TIME ZONE 'UTC')"),
        _ => format!("q.c{i}"),
    }
}

/// PostgreSQL's text of a value (DateStyle ISO) in its canonical text:
/// `t`/`f` as `true`/`false`, timestamps with `T`, six fractional digits
/// (and `Z` for a timestamptz, printed in UTC), times with six
/// fractional digits. Texts of no such shape (`infinity`, BC dates) stay
/// as PostgreSQL prints them.
fn canonical_text<'a>(kind: ValueKind, raw: &'a str, out: &'a mut String) -> &'a str {
    match kind {
        ValueKind::Boolean => match raw {
            "t" => "true",
            "f" => "false",
            _ => raw,
        },
        ValueKind::Timestamp | ValueKind::DateTime => {
            let Some((date, time)) = raw.split_once(' ') else {
                return raw;
            };
            if time.contains(' ') || time.as_bytes().get(2) != Some(&b':') {
                return raw;
            }
            out.clear();
            out.push_str(date);
            out.push('T');
            six_digits(time, out);
            if kind == ValueKind::Timestamp {
                out.push('Z');
            }
            out
        }
        ValueKind::Time => {
            out.clear();
            six_digits(raw, out);
            out
        }
        _ => raw,
    }
}

/// `HH:MM:SS[.f]` with the fraction padded to six digits.
fn six_digits(time: &str, out: &mut String) {
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    out.push_str(hms);
    out.push('.');
    out.push_str(fraction);
    for _ in fraction.len()..6 {
        out.push('0');
    }
}

async fn run(
    conn: &mut PgConnection,
    query: &Query,
    spec: &PartsSpec,
    dir: &Path,
    progress: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<Written, Failure> {
    let inner = inlined(query)?;
    let mut tx = conn
        .begin()
        .await
        .map_err(|e| db_failure("cannot start a transaction", e))?;
    sqlx::query(SETTINGS)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_failure("cannot set the session up", e))?;
    let columns: Vec<Column> = {
        let statement = (&mut *tx)
            .prepare(inner.as_str())
            .await
            .map_err(|e| db_failure("export query", e))?;
        statement
            .columns()
            .iter()
            .map(|c| {
                let ty = c.type_info();
                let builtin = ty.oid().is_some_and(|o| o.0 < 16384);
                Column {
                    name: c.name().to_owned(),
                    db_type: if builtin {
                        ty.name().to_ascii_lowercase()
                    } else {
                        ty.name().to_owned()
                    },
                    kind: kind(ty),
                }
            })
            .collect()
    };
    if columns.is_empty() {
        return Err(Failure::permanent("export query returns no columns"));
    }
    let names: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    let select: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| canonical(i, c.kind))
        .collect();
    let copy = format!(
        "COPY (SELECT {} FROM (\n{inner}\n) AS q({})) TO STDOUT WITH (FORMAT csv)",
        select.join(", "),
        names.join(", ")
    );

    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let counters = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let writer = {
        let counters = counters.clone();
        let mut parts = Parts::new(dir, spec, columns);
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut parser = CopyParser {
                pending: Vec::new(),
                scratch: Scratch {
                    field: Vec::new(),
                    text: String::new(),
                    kinds: parts.columns.iter().map(|c| c.kind).collect(),
                },
            };
            while let Some(chunk) = receiver.blocking_recv() {
                parser.feed(&chunk, &mut parts, &dir)?;
                let (rows, bytes) = parts.progress();
                counters[0].store(rows, Ordering::Relaxed);
                counters[1].store(bytes, Ordering::Relaxed);
            }
            if !parser.pending.is_empty() {
                return Err(Failure::permanent(
                    "PostgreSQL's COPY output ended inside a record",
                ));
            }
            parts.finish()
        })
    };

    let streamed: Result<(), Failure> = async {
        let mut stream = tx
            .copy_out_raw(&copy)
            .await
            .map_err(|e| db_failure("export query", e))?;
        let mut batch = Vec::with_capacity(BATCH + 64 * 1024);
        while let Some(chunk) = stream.next().await {
            batch.extend_from_slice(&chunk.map_err(|e| db_failure("export query", e))?);
            if batch.len() >= BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH + 64 * 1024));
                if sender.send(full).await.is_err() {
                    // The writer stopped; its result says why.
                    return Ok(());
                }
                progress(
                    counters[0].load(Ordering::Relaxed),
                    counters[1].load(Ordering::Relaxed),
                );
            }
        }
        if !batch.is_empty() {
            let _ = sender.send(batch).await;
        }
        Ok(())
    }
    .await;
    drop(sender);
    let written = writer
        .await
        .map_err(|e| Failure::transient("the part writer stopped").with_source(e))?;
    streamed?;
    let written = written?;
    tx.rollback()
        .await
        .map_err(|e| db_failure("cannot end the transaction", e))?;
    progress(
        written.parts.iter().map(|p| p.rows).sum(),
        written.parts.iter().map(|p| p.bytes).sum(),
    );
    Ok(written)
}

/// Splits PostgreSQL's CSV output (LF after each record, NULL an empty
/// unquoted field) into records, whatever the chunk boundaries.
struct CopyParser {
    /// The start of a record whose end has not arrived yet.
    pending: Vec<u8>,
    scratch: Scratch,
}

/// What parsing a record needs besides the record.
struct Scratch {
    /// A quoted field's text with its doubled quotes undone.
    field: Vec<u8>,
    /// A value rewritten in its canonical text.
    text: String,
    /// Each column's kind.
    kinds: Vec<ValueKind>,
}

impl CopyParser {
    fn feed(&mut self, chunk: &[u8], parts: &mut Parts, dir: &Path) -> Result<(), Failure> {
        if self.pending.is_empty() {
            let used = records(chunk, &mut self.scratch, parts, dir)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut data = std::mem::take(&mut self.pending);
            data.extend_from_slice(chunk);
            let used = records(&data, &mut self.scratch, parts, dir)?;
            data.drain(..used);
            self.pending = data;
        }
        Ok(())
    }
}

/// Writes every complete record of `data`; returns how many bytes they
/// took.
fn records(
    data: &[u8],
    scratch: &mut Scratch,
    parts: &mut Parts,
    dir: &Path,
) -> Result<usize, Failure> {
    let mut start = 0;
    while let Some(end) = record_end(data, start) {
        record(&data[start..end], scratch, parts, dir)?;
        start = end + 1;
    }
    Ok(start)
}

/// The position of the LF that ends the record starting at `from`.
fn record_end(data: &[u8], from: usize) -> Option<usize> {
    let mut quoted = false;
    let mut i = from;
    loop {
        let p = i + memchr::memchr2(b'"', b'\n', data.get(i..)?)?;
        if data[p] == b'"' {
            quoted = !quoted;
        } else if !quoted {
            return Some(p);
        }
        i = p + 1;
    }
}

fn unexpected(what: &str) -> Failure {
    Failure::permanent(format!("unexpected COPY output from PostgreSQL: {what}"))
}

fn utf8(b: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(b).map_err(|_| unexpected("a value is not UTF-8"))
}

/// One record (without its LF) to a row.
fn record(
    body: &[u8],
    scratch: &mut Scratch,
    parts: &mut Parts,
    dir: &Path,
) -> Result<(), Failure> {
    let w = parts.row()?;
    let Scratch { field, text, kinds } = scratch;
    let mut i = 0;
    let mut col = 0;
    let mut cell = |w: &mut crate::format::RowWriter<crate::format::PartFile>,
                    value: Option<&str>| {
        let kind = kinds.get(col).copied().unwrap_or(ValueKind::Text);
        col += 1;
        w.cell(value.map(|v| canonical_text(kind, v, text)));
    };
    loop {
        if body.get(i) == Some(&b'"') {
            i += 1;
            let mut q =
                i + memchr::memchr(b'"', &body[i..]).ok_or_else(|| unexpected("an open quote"))?;
            if body.get(q + 1) == Some(&b'"') {
                field.clear();
                loop {
                    field.extend_from_slice(&body[i..=q]);
                    i = q + 2;
                    q = i + memchr::memchr(b'"', &body[i..])
                        .ok_or_else(|| unexpected("an open quote"))?;
                    if body.get(q + 1) != Some(&b'"') {
                        break;
                    }
                }
                field.extend_from_slice(&body[i..q]);
                cell(w, Some(utf8(field)?));
            } else {
                cell(w, Some(utf8(&body[i..q])?));
            }
            i = q + 1;
            match body.get(i) {
                None => break,
                Some(b',') => i += 1,
                Some(_) => return Err(unexpected("text after a closing quote")),
            }
        } else {
            let end = memchr::memchr(b',', &body[i..]).map_or(body.len(), |e| i + e);
            cell(
                w,
                if end == i {
                    None
                } else {
                    Some(utf8(&body[i..end])?)
                },
            );
            if end == body.len() {
                break;
            }
            i = end + 1;
        }
    }
    w.end_row().map_err(|e| row_failure(e, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_postgresql_texts_to_canonical_ones() {
        let mut out = String::new();
        let cases = [
            (
                ValueKind::Timestamp,
                "2026-12-07 02:00:00",
                "2026-12-07T02:00:00.000000Z",
            ),
            (
                ValueKind::Timestamp,
                "2026-12-07 02:00:00.5",
                "2026-12-07T02:00:00.500000Z",
            ),
            (
                ValueKind::DateTime,
                "12026-01-01 00:00:00.000001",
                "12026-01-01T00:00:00.000001",
            ),
            (
                ValueKind::DateTime,
                "0044-03-15 12:00:00 BC",
                "0044-03-15 12:00:00 BC",
            ),
            (ValueKind::Timestamp, "infinity", "infinity"),
            (ValueKind::Time, "23:59:59.99", "23:59:59.990000"),
            (ValueKind::Boolean, "t", "true"),
            (ValueKind::Boolean, "f", "false"),
            (ValueKind::Text, "t", "t"),
        ];
        for (kind, raw, expected) in cases {
            assert_eq!(canonical_text(kind, raw, &mut out), expected);
        }
    }

    #[test]
    fn finds_record_ends_outside_quotes() {
        let data = b"1,\"a\nb\"\"\n\"\n2,x\n3,\"open\n";
        let first = record_end(data, 0).unwrap();
        assert_eq!(&data[..first], b"1,\"a\nb\"\"\n\"");
        let second = record_end(data, first + 1).unwrap();
        assert_eq!(&data[first + 1..second], b"2,x");
        assert_eq!(record_end(data, second + 1), None);
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;
    use crate::{Column, FileFormat};

    /// The part file written from `chunks` of COPY output.
    fn written(dir: &Path, chunks: &[&[u8]]) -> Vec<u8> {
        let columns: Vec<Column> = [ValueKind::Integer, ValueKind::Text, ValueKind::Boolean]
            .iter()
            .enumerate()
            .map(|(i, k)| Column {
                name: format!("c{i}"),
                db_type: "x".into(),
                kind: *k,
            })
            .collect();
        let spec = PartsSpec {
            format: FileFormat::Csv,
            gzip: false,
            max_rows_per_file: 0,
        };
        let mut parts = Parts::new(dir, &spec, columns);
        let mut parser = CopyParser {
            pending: Vec::new(),
            scratch: Scratch {
                field: Vec::new(),
                text: String::new(),
                kinds: vec![ValueKind::Integer, ValueKind::Text, ValueKind::Boolean],
            },
        };
        for chunk in chunks {
            parser.feed(chunk, &mut parts, dir).unwrap();
        }
        assert!(parser.pending.is_empty());
        let written = parts.finish().unwrap();
        std::fs::read(&written.parts[0].path).unwrap()
    }

    #[test]
    fn records_split_anywhere_between_chunks_give_the_same_file() {
        let dir = std::env::temp_dir().join(format!("ferry-copy-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: &[u8] = b"1,\"a,\"\"b\"\"\nc\",t\n,\"\",f\n3,,\n-4,\"\\.\",t\n";
        let whole = written(&dir, &[data]);
        assert_eq!(
            whole,
            b"c0,c1,c2\r\n1,\"a,\"\"b\"\"\nc\",true\r\n,\"\",false\r\n3,,\r\n-4,\\.,true\r\n"
        );
        for cut in 1..data.len() {
            assert_eq!(
                written(&dir, &[&data[..cut], &data[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(written(&dir, &bytes), whole);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
