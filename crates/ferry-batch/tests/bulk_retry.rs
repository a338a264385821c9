//! The HTTP bulk export against a real local endpoint that answers 408,
//! 429 and `Retry-After` the way busy endpoints do (docs/batch.md, "HTTP
//! bulk"): a retried chunk carries the key it had the first time, the run
//! succeeds with every row received once, and the wait before a retry is
//! the one the endpoint asked for, up to the job's `max_backoff`.
//!
//! The 503 retry and the permanent 400 are in `export.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use ferry_batch::export::bulk::idempotency_key;
use ferry_batch::export::{ExportJob, Exporter, RunRecord, RunStatus, RunWindow, Trigger};
use ferry_batch::schedule::TimeWindow;
use ferry_batch::FileFormat;
use ferry_core::RetryPolicy;
use ferry_store::Database;
use ferry_testkit::{SqliteTestDb, TempDir};
use sqlx::Connection;

/// The rows of the source table, as the JSON objects the export sends.
const ROWS: [(i64, &str); 5] = [
    (1, "anvil"),
    (2, "bolt"),
    (3, "crate, \"big\""),
    (4, "drill"),
    (5, "ëmery"),
];

/// Five rows at 2 per request: three chunks (2 + 2 + 1 rows).
const ROWS_PER_REQUEST: u64 = 2;

async fn source_table(url: &str) {
    let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    for (id, name) in ROWS {
        sqlx::query("INSERT INTO items (id, name) VALUES (?, ?)")
            .bind(id)
            .bind(name)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

fn expected_rows() -> Vec<serde_json::Value> {
    ROWS.iter()
        .map(|(id, name)| serde_json::json!({ "id": id, "name": name }))
        .collect()
}

/// What `Retry-After` a scripted answer carries.
#[derive(Clone, Copy, Debug)]
enum RetryAfter {
    /// No header.
    Absent,
    /// `Retry-After: <seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP date>`, this long after the request arrived.
    DateIn(Duration),
}

/// An answer the endpoint gives to the first request of one chunk.
#[derive(Clone, Copy, Debug)]
struct Scripted {
    /// `Ferry-Chunk` of the request it answers (from 1).
    chunk: u32,
    status: StatusCode,
    retry_after: RetryAfter,
}

/// One request as the endpoint saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    key: String,
    chunk: u32,
    body: String,
    status: StatusCode,
}

#[derive(Default)]
struct ReceiverState {
    /// First-time answers still to give; each is used once.
    script: Vec<Scripted>,
    seen: Vec<Seen>,
    /// Applied chunks by `Idempotency-Key`: a key is applied once.
    applied: BTreeMap<String, String>,
    /// Requests whose key was already applied (dropped, answered 200).
    duplicates: u32,
}

/// A bulk endpoint that deduplicates by `Idempotency-Key`, like the
/// receivers docs/batch.md asks for, and gives scripted answers first.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<ReceiverState>>);

impl Receiver {
    fn with_script(script: Vec<Scripted>) -> Self {
        let r = Self::default();
        r.0.lock().unwrap().script = script;
        r
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().seen.clone()
    }

    /// The rows of every applied chunk, one JSON value per row.
    fn applied_rows(&self) -> Vec<serde_json::Value> {
        let state = self.0.lock().unwrap();
        state
            .applied
            .values()
            .flat_map(|body| body.lines().map(|l| serde_json::from_str(l).unwrap()))
            .collect()
    }

    fn answer(&self, headers: &HeaderMap, body: String) -> axum::response::Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let key = header("idempotency-key");
        let chunk: u32 = header("ferry-chunk").parse().unwrap_or(0);
        let at = Instant::now();
        let mut state = self.0.lock().unwrap();
        let scripted = state
            .script
            .iter()
            .position(|s| s.chunk == chunk)
            .map(|i| state.script.remove(i));
        let mut response_headers = HeaderMap::new();
        let status = match scripted {
            Some(s) => {
                let value = match s.retry_after {
                    RetryAfter::Absent => None,
                    RetryAfter::Seconds(n) => Some(n.to_string()),
                    RetryAfter::DateIn(d) => Some(http_date(
                        Utc::now() + chrono::Duration::from_std(d).unwrap(),
                    )),
                };
                if let Some(v) = value {
                    response_headers.insert("retry-after", HeaderValue::from_str(&v).unwrap());
                }
                s.status
            }
            None => {
                if state.applied.contains_key(&key) {
                    state.duplicates += 1;
                } else {
                    state.applied.insert(key.clone(), body.clone());
                }
                StatusCode::OK
            }
        };
        state.seen.push(Seen {
            at,
            key,
            chunk,
            body,
            status,
        });
        (status, response_headers).into_response()
    }
}

/// An IMF-fixdate (RFC 9110 §5.6.7), the form `Retry-After` dates take.
fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

async fn serve(receiver: Receiver) -> String {
    let app = axum::Router::new()
        .route(
            "/bulk",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Receiver>,
                 headers: HeaderMap,
                 body: String| async move { r.answer(&headers, body) },
            ),
        )
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/bulk")
}

fn window() -> RunWindow {
    let start = DateTime::parse_from_rfc3339("2026-12-06T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    RunWindow::Scheduled(TimeWindow {
        start,
        end: start + chrono::Duration::days(1),
    })
}

/// Exports the source table to `receiver` with `retry` and returns the
/// run's record. A run still going after 30 s fails the test (a wait of
/// an hour, honoured, would otherwise hang it).
async fn export(receiver: &Receiver, retry: RetryPolicy) -> RunRecord {
    let db = SqliteTestDb::create();
    source_table(&db.url).await;
    let state = Database::connect(&db.url).await.unwrap();
    let url = serve(receiver.clone()).await;
    let work = TempDir::new();
    let mut job = ExportJob::new(
        "items",
        &db.url,
        "SELECT id, name FROM items ORDER BY id",
        Duration::from_secs(86_400),
    );
    job.work_dir = Some(work.0.clone());
    job.format = FileFormat::Jsonl;
    job.retry = retry;
    job.bulk = Some(
        toml::from_str(&format!(
            "url = \"{url}\"\nrows_per_request = {ROWS_PER_REQUEST}"
        ))
        .unwrap(),
    );
    let exporter = Exporter::new(job, state).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        exporter.run_window(&window(), Trigger::Manual),
    )
    .await
    .expect("the run finishes within 30 s")
    .unwrap()
}

/// Retries with a negligible backoff of their own, so that a wait of a
/// second or more can only come from `Retry-After`.
fn policy(max_backoff: Duration) -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(1),
        max_backoff,
        multiplier: 2.0,
        jitter: 0.0,
    }
}

/// The run succeeded, every row was applied exactly once, no applied
/// chunk was sent again, and the record's chunks are the applied keys.
fn assert_delivered_once(receiver: &Receiver, record: &RunRecord) {
    assert_eq!(record.status, RunStatus::Succeeded, "{:?}", record.error);
    assert_eq!(record.rows, ROWS.len() as u64);
    let mut got = receiver.applied_rows();
    got.sort_by_key(|v| v["id"].as_i64());
    assert_eq!(got, expected_rows(), "every exported row, each once");
    let state = receiver.0.lock().unwrap();
    assert_eq!(state.duplicates, 0, "a delivered chunk is not sent again");
    assert!(state.script.is_empty(), "every scripted answer was given");
    let mut keys: Vec<&String> = record.files.iter().map(|f| &f.name).collect();
    keys.sort();
    assert_eq!(
        keys,
        state.applied.keys().collect::<Vec<_>>(),
        "the run's chunks are the applied keys"
    );
}

/// The one refused request and the retry of its chunk that followed.
fn refused_and_retry(seen: &[Seen], status: StatusCode) -> (Seen, Seen) {
    let i = seen
        .iter()
        .position(|s| s.status == status)
        .unwrap_or_else(|| panic!("no request answered {status}: {seen:?}"));
    let refused = seen[i].clone();
    let retry = seen[i + 1..]
        .iter()
        .find(|s| s.chunk == refused.chunk)
        .unwrap_or_else(|| panic!("chunk {} was not sent again: {seen:?}", refused.chunk))
        .clone();
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.key, refused.key, "a retry carries the same key");
    assert_eq!(retry.body, refused.body, "and the same rows");
    (refused, retry)
}

#[tokio::test]
async fn bulk_retries_a_408_with_the_same_idempotency_key() {
    let receiver = Receiver::with_script(vec![Scripted {
        chunk: 2,
        status: StatusCode::REQUEST_TIMEOUT,
        retry_after: RetryAfter::Absent,
    }]);
    let record = export(&receiver, policy(Duration::from_millis(5))).await;
    assert_delivered_once(&receiver, &record);
    assert_eq!(record.attempts, 2, "one failed attempt, then success");

    let seen = receiver.seen();
    let (refused, _) = refused_and_retry(&seen, StatusCode::REQUEST_TIMEOUT);
    // The key is the one derived from job, window, part and chunk: the
    // second chunk of the only part.
    assert_eq!(refused.key, idempotency_key("items", &record.window, 1, 2));
    assert_eq!(refused.key, record.files[1].name);
    // Chunk 1 went through before the 408 and is not sent again; chunk 3
    // follows the retry.
    let chunks: Vec<u32> = seen.iter().map(|s| s.chunk).collect();
    assert_eq!(chunks, [1, 2, 2, 3]);
}

#[tokio::test]
async fn bulk_waits_for_a_429s_retry_after_seconds() {
    let receiver = Receiver::with_script(vec![Scripted {
        chunk: 2,
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: RetryAfter::Seconds(2),
    }]);
    let record = export(&receiver, policy(Duration::from_secs(10))).await;
    assert_delivered_once(&receiver, &record);
    let (refused, retry) = refused_and_retry(&receiver.seen(), StatusCode::TOO_MANY_REQUESTS);
    let gap = retry.at - refused.at;
    // The job's own backoff is 1 ms: only the header makes it wait.
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(30), "retried after {gap:?}");
}

/// `Retry-After` may also be an HTTP date (RFC 9110 §10.2.3); docs/batch.md
/// says a `Retry-After` is heeded, without restricting it to seconds.
#[tokio::test]
async fn bulk_waits_for_a_429s_retry_after_http_date() {
    // Three seconds ahead at one-second resolution: at least two seconds
    // after the 429.
    let receiver = Receiver::with_script(vec![Scripted {
        chunk: 2,
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: RetryAfter::DateIn(Duration::from_secs(3)),
    }]);
    let record = export(&receiver, policy(Duration::from_secs(10))).await;
    assert_delivered_once(&receiver, &record);
    let (refused, retry) = refused_and_retry(&receiver.seen(), StatusCode::TOO_MANY_REQUESTS);
    let gap = retry.at - refused.at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(30), "retried after {gap:?}");
}

/// A `Retry-After` beyond the job's `max_backoff` is heeded up to
/// `max_backoff` (run.rs: "heeded up to the job's longest backoff"), so an
/// endpoint cannot hold a run for an hour.
#[tokio::test]
async fn bulk_caps_a_429s_retry_after_at_max_backoff() {
    let receiver = Receiver::with_script(vec![Scripted {
        chunk: 2,
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: RetryAfter::Seconds(3600),
    }]);
    let record = export(&receiver, policy(Duration::from_secs(1))).await;
    assert_delivered_once(&receiver, &record);
    let (refused, retry) = refused_and_retry(&receiver.seen(), StatusCode::TOO_MANY_REQUESTS);
    let gap = retry.at - refused.at;
    // Waited the cap (the header raised the 1 ms backoff to it) ...
    assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");
    // ... and not the hour asked for.
    assert!(gap < Duration::from_secs(10), "retried after {gap:?}");
}
