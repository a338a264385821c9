//! POSTing a verified batch to an HTTP endpoint in JSON Lines chunks.
//!
//! Every row of the batch is read (and counted against the manifest)
//! before the first request, so a malformed file sends nothing. Chunks are
//! numbered from 1 across the batch's files; each request carries
//! `Idempotency-Key: <hex SHA-256 of job, batch key and chunk number>`, so
//! a batch sent again (after a crash, or re-sent by its sender with a new
//! run id) repeats the same keys and the endpoint can apply each chunk
//! once. A 5xx, a 429 or a connection failure is retried with backoff up
//! to `attempts` times, then the batch is left for the next poll; any other
//! 4xx refuses the batch (chunks before it may have been applied).

use std::time::Duration;

use ferry_core::Failure;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::batch::{Batch, Problem};
use super::config::HttpTarget;
use super::stream;
use crate::ValueKind;

/// An HTTP target.
pub(crate) struct HttpLoader {
    target: HttpTarget,
    client: reqwest::Client,
}

/// The `Idempotency-Key` of chunk `chunk` (from 1) of the batch keyed
/// `batch_key` imported by `job`: lower-case hex SHA-256.
pub fn idempotency_key(job: &str, batch_key: &str, chunk: u64) -> String {
    let mut h = Sha256::new();
    h.update(job.as_bytes());
    h.update([0]);
    h.update(batch_key.as_bytes());
    h.update([0]);
    h.update(chunk.to_string().as_bytes());
    hex::encode(h.finalize())
}

impl HttpLoader {
    pub(crate) fn new(target: HttpTarget) -> Result<Self, Failure> {
        let client = reqwest::Client::builder()
            .timeout(target.timeout)
            .build()
            .map_err(|e| Failure::permanent("cannot build the HTTP client").with_source(e))?;
        Ok(Self { target, client })
    }

    /// Sends `batch`; returns its rows.
    pub(crate) async fn send(&self, job: &str, batch: &Batch) -> Result<u64, Problem> {
        // First pass: every row readable and counted as the manifest says.
        let mut total = 0;
        for (entry, path) in &batch.files {
            let mut rx = stream::rows(
                path.clone(),
                batch.manifest.clone(),
                1000,
                entry.name.clone(),
            );
            let mut n = 0u64;
            while let Some(chunk) = rx.recv().await {
                n += chunk?.len() as u64;
            }
            if n != entry.rows {
                return Err(Problem::Refused(format!(
                    "file {} has {n} rows, the manifest says {}",
                    entry.name, entry.rows
                )));
            }
            total += n;
        }
        // Second pass: send.
        let names: Vec<String> = batch
            .manifest
            .columns
            .iter()
            .map(|c| serde_json::to_string(&c.name).unwrap_or_default())
            .collect();
        let kinds: Vec<ValueKind> = batch.manifest.columns.iter().map(|c| c.kind).collect();
        let mut chunk_no = 0u64;
        let mut body = Vec::new();
        let mut in_body = 0usize;
        for (entry, path) in &batch.files {
            let mut rx = stream::rows(
                path.clone(),
                batch.manifest.clone(),
                self.target.chunk_rows,
                entry.name.clone(),
            );
            while let Some(rows) = rx.recv().await {
                for row in rows? {
                    json_line(&mut body, &names, &kinds, &row);
                    in_body += 1;
                    if in_body == self.target.chunk_rows {
                        chunk_no += 1;
                        self.post(job, batch, chunk_no, std::mem::take(&mut body))
                            .await?;
                        in_body = 0;
                    }
                }
            }
        }
        if in_body > 0 {
            chunk_no += 1;
            self.post(job, batch, chunk_no, body).await?;
        }
        Ok(total)
    }

    async fn post(
        &self,
        job: &str,
        batch: &Batch,
        chunk: u64,
        body: Vec<u8>,
    ) -> Result<(), Problem> {
        let key = idempotency_key(job, &batch.key, chunk);
        let body = bytes::Bytes::from(body);
        let mut wait = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=self.target.attempts {
            let mut request = self
                .client
                .post(&self.target.url)
                .header("Content-Type", "application/x-ndjson")
                .header("Idempotency-Key", &key)
                .body(body.clone());
            for (name, value) in &self.target.headers {
                request = request.header(name, value);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(());
                    }
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        last = format!("answered {status}");
                    } else {
                        let text = response.text().await.unwrap_or_default();
                        let excerpt: String = text.chars().take(200).collect();
                        return Err(Problem::Refused(format!(
                            "the endpoint answered {status} to chunk {chunk} of batch {}: {excerpt}",
                            batch.name
                        )));
                    }
                }
                Err(e) => last = format!("cannot be reached: {e}"),
            }
            if attempt < self.target.attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
        Err(Problem::Retry(Failure::unavailable(format!(
            "the endpoint {} {last} (chunk {chunk} of batch {}, {} attempts)",
            ferry_core::redact_url(&self.target.url),
            batch.name,
            self.target.attempts
        ))))
    }
}

/// Appends `row` as one JSON object and `\n`: numbers and booleans as
/// JSON numbers and booleans, JSON values as themselves, the rest (and
/// any value that is not what its kind says) as strings.
fn json_line(out: &mut Vec<u8>, names: &[String], kinds: &[ValueKind], row: &[Option<String>]) {
    out.push(b'{');
    for (i, ((name, kind), cell)) in names.iter().zip(kinds).zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        match cell {
            None => out.extend_from_slice(b"null"),
            Some(text) => {
                let raw = match kind {
                    ValueKind::Integer | ValueKind::Decimal | ValueKind::Float => {
                        is_json_number(text)
                    }
                    ValueKind::Boolean => text == "true" || text == "false",
                    ValueKind::Json => serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
                    _ => false,
                };
                if raw {
                    out.extend_from_slice(text.as_bytes());
                } else {
                    out.extend_from_slice(
                        serde_json::to_string(text).unwrap_or_default().as_bytes(),
                    );
                }
            }
        }
    }
    out.extend_from_slice(b"}\n");
}

/// Whether `text` is a JSON number (`-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?`).
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(c) if c.is_ascii_digit() => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers() {
        for ok in [
            "0",
            "-1",
            "12345678901234567890123",
            "1.5",
            "1e10",
            "-0.5E-3",
        ] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "NaN", "inf", "1e", "1 "] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }

    #[test]
    fn rows_become_json_lines() {
        let names: Vec<String> = ["id", "ok", "doc", "t", "f"]
            .iter()
            .map(|n| serde_json::to_string(n).unwrap())
            .collect();
        let kinds = [
            ValueKind::Integer,
            ValueKind::Boolean,
            ValueKind::Json,
            ValueKind::Text,
            ValueKind::Float,
        ];
        let mut out = Vec::new();
        json_line(
            &mut out,
            &names,
            &kinds,
            &[
                Some("12345678901234567890123".into()),
                Some("true".into()),
                Some("{\"a\":[1]}".into()),
                Some("line\n\"q\"".into()),
                Some("NaN".into()),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":12345678901234567890123,\"ok\":true,\"doc\":{\"a\":[1]},\"t\":\"line\\n\\\"q\\\"\",\"f\":\"NaN\"}\n"
        );
    }

    #[test]
    fn keys_differ_by_chunk_and_batch() {
        let a = idempotency_key("j", "k", 1);
        assert_eq!(a, idempotency_key("j", "k", 1));
        assert_ne!(a, idempotency_key("j", "k", 2));
        assert_ne!(a, idempotency_key("j", "k2", 1));
        assert_ne!(a, idempotency_key("j2", "k", 1));
    }
}
