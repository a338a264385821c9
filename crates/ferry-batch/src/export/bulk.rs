//! The HTTP bulk alternative: an export POSTed to an endpoint as JSON
//! Lines chunks instead of files at a location.
//!
//! Each chunk is one request: `Content-Type: application/x-ndjson`, the
//! rows as JSON Lines, and an `Idempotency-Key` derived from the job, the
//! window, the part and the chunk, so a chunk sent again (a retry, a
//! re-run of the window) carries the key it had the first time and the
//! receiver can apply it once. Headers `Ferry-Job`, `Ferry-Window-Start`,
//! `Ferry-Window-End`, `Ferry-Chunk` (from 1) and, on the last chunk,
//! `Ferry-Last-Chunk: true` say where a chunk belongs.
//!
//! A 2xx answer delivers the chunk. 408, 429 and 5xx (with their
//! `Retry-After`) and connection failures are retried with the job's
//! backoff; any other answer is permanent and fails the run at once.
//! A run holds at most one part's bytes in memory.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ferry_core::Failure;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::job::ExportJob;
use super::write::Written;
use crate::{FileEntry, FileFormat, Window};

/// An `[export.bulk]` table.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BulkConfig {
    /// The endpoint, `http://…` or `https://…`.
    pub url: String,
    /// Rows per request; default one request per data part (at most
    /// `max_rows_per_file` rows).
    #[serde(default)]
    pub rows_per_request: Option<u64>,
    /// How long one request may take (default 30s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra headers on every request (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl BulkConfig {
    /// An endpoint with the default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            rows_per_request: None,
            timeout: default_timeout(),
            headers: BTreeMap::new(),
        }
    }

    /// Checks the URL and that the job writes uncompressed JSON Lines.
    pub fn validate(&self, job: &ExportJob) -> Result<(), Failure> {
        let url = url::Url::parse(&self.url).map_err(|e| {
            Failure::permanent(format!("bulk.url = {:?} is not a URL: {e}", self.url))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::permanent(format!(
                "bulk.url = {:?}: only http:// and https:// endpoints",
                ferry_core::redact_url(&self.url)
            )));
        }
        if job.format != FileFormat::Jsonl || job.gzip {
            return Err(Failure::permanent(
                "bulk sends JSON Lines: set format = \"jsonl\" and gzip = false",
            ));
        }
        if self.rows_per_request == Some(0) {
            return Err(Failure::permanent(
                "bulk.rows_per_request must be at least 1",
            ));
        }
        for name in self.headers.keys() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(Failure::permanent(format!(
                    "bulk.headers: {name:?} is not a header name"
                )));
            }
        }
        Ok(())
    }
}

/// The stable key of chunk `chunk` (from 1) of part `part` of `job`'s
/// `window`: hex SHA-256 of the four, 32 characters.
pub fn idempotency_key(job: &str, window: &Window, part: u32, chunk: u32) -> String {
    let mut h = Sha256::new();
    for piece in [job, &window.start, &window.end] {
        h.update(piece.as_bytes());
        h.update([0]);
    }
    h.update(part.to_be_bytes());
    h.update(chunk.to_be_bytes());
    hex::encode(h.finalize())[..32].to_owned()
}

/// Sends runs' rows to one endpoint.
#[derive(Clone, Debug)]
pub(crate) struct BulkSender {
    client: reqwest::Client,
    config: BulkConfig,
}

/// One request's body and what it is.
struct Chunk {
    part: u32,
    chunk: u32,
    rows: u64,
    body: Vec<u8>,
}

impl BulkSender {
    pub(crate) fn new(config: &BulkConfig) -> Result<Self, Failure> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| Failure::permanent("bulk: cannot build the HTTP client").with_source(e))?;
        Ok(Self {
            client,
            config: config.clone(),
        })
    }

    pub(crate) fn describe(&self) -> String {
        ferry_core::redact_url(&self.config.url)
    }

    /// Sends every chunk of `written` not in `sent` (keys), adding each
    /// delivered key; returns one entry per chunk, in order. Stops at the
    /// first failure.
    pub(crate) async fn send(
        &self,
        job: &str,
        window: &Window,
        written: &Written,
        sent: &mut HashSet<String>,
    ) -> Result<Vec<FileEntry>, Failure> {
        let mut entries = Vec::new();
        let mut seq = 0u32;
        let last_part = written.parts.last().map(|p| p.part);
        for part in &written.parts {
            let bytes = tokio::fs::read(&part.path).await.map_err(|e| {
                Failure::transient(format!("bulk: cannot read {}", part.path.display()))
                    .with_source(e)
            })?;
            let chunks = self.split(part.part, &bytes);
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                seq += 1;
                let key = idempotency_key(job, window, chunk.part, chunk.chunk);
                let last = Some(part.part) == last_part && i + 1 == n;
                if !sent.contains(&key) {
                    self.post(job, window, &key, seq, last, &chunk).await?;
                    sent.insert(key.clone());
                }
                entries.push(FileEntry {
                    name: key,
                    part: seq,
                    rows: chunk.rows,
                    bytes: chunk.body.len() as u64,
                    sha256: hex::encode(Sha256::digest(&chunk.body)),
                });
            }
        }
        Ok(entries)
    }

    fn split(&self, part: u32, bytes: &[u8]) -> Vec<Chunk> {
        let per = self.config.rows_per_request.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut body = Vec::new();
        let mut rows = 0u64;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            body.extend_from_slice(line);
            rows += 1;
            if rows == per {
                out.push(Chunk {
                    part,
                    chunk: out.len() as u32 + 1,
                    rows,
                    body: std::mem::take(&mut body),
                });
                rows = 0;
            }
        }
        if rows > 0 || out.is_empty() {
            out.push(Chunk {
                part,
                chunk: out.len() as u32 + 1,
                rows,
                body,
            });
        }
        out
    }

    async fn post(
        &self,
        job: &str,
        window: &Window,
        key: &str,
        seq: u32,
        last: bool,
        chunk: &Chunk,
    ) -> Result<(), Failure> {
        let mut request = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .header("Idempotency-Key", key)
            .header("Ferry-Job", job)
            .header("Ferry-Window-Start", &window.start)
            .header("Ferry-Window-End", &window.end)
            .header("Ferry-Chunk", seq.to_string());
        if last {
            request = request.header("Ferry-Last-Chunk", "true");
        }
        for (name, value) in &self.config.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let what = format!("bulk: chunk {seq} to {}", self.describe());
        let response = request.body(chunk.body.clone()).send().await.map_err(|e| {
            let f = if e.is_timeout() {
                Failure::transient(format!("{what}: timed out"))
            } else {
                Failure::unavailable(format!("{what}: no answer"))
            };
            f.with_source(e)
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v.trim()));
        let code = status.as_u16();
        let mut f = match code {
            503 => Failure::unavailable(format!("{what}: answered {status}")),
            408 | 429 | 500..=599 => Failure::transient(format!("{what}: answered {status}")),
            _ => Failure::permanent(format!(
                "{what}: answered {status}, which a retry will not change"
            )),
        };
        if let Some(wait) = retry_after {
            f = f.with_retry_after(wait);
        }
        Err(f)
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3); a
/// date already past means now.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        let w = Window {
            start: "a".into(),
            end: "b".into(),
        };
        let k = idempotency_key("j", &w, 1, 1);
        assert_eq!(k, idempotency_key("j", &w, 1, 1));
        assert_eq!(k.len(), 32);
        assert_ne!(k, idempotency_key("j", &w, 1, 2));
        assert_ne!(k, idempotency_key("j", &w, 2, 1));
        assert_ne!(k, idempotency_key("k", &w, 1, 1));
    }
}
