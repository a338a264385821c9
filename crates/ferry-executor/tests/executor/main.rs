#![allow(missing_docs)]
//! The executor's integration tests: overload policies, error and panic
//! capture, retries, shutdown and metrics (paused time, log-only failure
//! log), and the failure log on SQLite, PostgreSQL and MariaDB (a fresh
//! database each, real time).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_executor::{
    Executor, ExecutorConfig, LogOnlyFailureLog, OverloadPolicy, TaskHandle, TaskOutcome,
};
use tokio::sync::{mpsc, watch};

/// Asserts the executor's metrics named, all at once, showing every metric
/// when they differ.
macro_rules! assert_metrics {
    ($executor:expr, $($field:ident: $value:expr),+ $(,)?) => {{
        let m = $executor.metrics();
        assert_eq!(($(m.$field),+), ($($value),+), "{m:?}");
    }};
}

mod failure_log;
mod overload;
mod shutdown;
mod tasks;

/// A configuration with `concurrency` slots, `queue` places, `overload`,
/// and `max_attempts` attempts 100 ms, 200 ms, 400 ms… apart (no jitter).
pub fn config(
    concurrency: usize,
    queue: usize,
    overload: OverloadPolicy,
    max_attempts: u32,
) -> ExecutorConfig {
    ExecutorConfig {
        concurrency,
        queue_capacity: queue,
        overload,
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
        },
        shutdown_deadline: Duration::from_secs(10),
    }
}

/// An executor that logs failures only.
pub fn log_only(config: ExecutorConfig) -> Executor {
    Executor::new(config, Arc::new(LogOnlyFailureLog)).unwrap()
}

/// A gate tasks wait at until the test opens it.
#[derive(Clone, Default)]
pub struct Latch(Arc<watch::Sender<bool>>);

impl Latch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Names of tasks as they start, for the test to await.
pub fn started() -> (
    mpsc::UnboundedSender<String>,
    mpsc::UnboundedReceiver<String>,
) {
    mpsc::unbounded_channel()
}

/// Waits (bounded) for the next task to start and returns its name.
pub async fn next_start(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a task should have started")
        .expect("senders alive")
}

/// Submits a task `name` that sends its name to `tx` when it starts, then
/// waits at `latch`.
pub async fn submit_blocked(
    executor: &Executor,
    name: &str,
    latch: &Latch,
    tx: &mpsc::UnboundedSender<String>,
) -> TaskHandle {
    let (latch, tx, announce) = (latch.clone(), tx.clone(), name.to_owned());
    executor
        .submit_async(name, move || {
            let (latch, tx, announce) = (latch.clone(), tx.clone(), announce.clone());
            async move {
                let _ = tx.send(announce);
                latch.wait().await;
                Ok::<_, std::io::Error>(())
            }
        })
        .await
        .unwrap()
}

/// An executor of one slot and one queue place with `overload`, full:
/// `first` running (blocked at the latch), `second` queued. Returns it,
/// the latch and their handles.
pub async fn full(overload: OverloadPolicy) -> (Executor, Latch, TaskHandle, TaskHandle) {
    let (executor, latch) = (log_only(config(1, 1, overload, 1)), Latch::new());
    let (tx, mut rx) = started();
    let first = submit_blocked(&executor, "first", &latch, &tx).await;
    assert_eq!(next_start(&mut rx).await, "first");
    let second = submit_blocked(&executor, "second", &latch, &tx).await;
    assert_metrics!(executor, running: 1, queued: 1);
    (executor, latch, first, second)
}

/// A task that counts its attempts in `calls` and makes the n-th (from 1)
/// with `attempt(n)`.
pub fn counted<Fut>(
    calls: &Arc<AtomicU32>,
    attempt: impl Fn(u32) -> Fut + Send + 'static,
) -> impl FnMut() -> Fut + Send + 'static {
    let calls = calls.clone();
    move || attempt(calls.fetch_add(1, Ordering::SeqCst) + 1)
}

/// Log lines written while `f` runs on this thread (current-thread
/// runtimes only), as text.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    /// A new capture, installed until the guard drops.
    pub fn installed() -> (Self, tracing::subscriber::DefaultGuard) {
        let log = Self::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A task that never succeeds, for `submit_async`.
pub async fn always_fails() -> Result<(), std::io::Error> {
    Err(std::io::Error::other("downstream refused"))
}

/// A task that panics with `message` when it runs (not while its future
/// is made).
pub async fn panics(message: &'static str) -> Result<(), std::io::Error> {
    panic!("{message}")
}

/// The outcome of a task the shutdown cancelled after `attempts`.
pub fn cancelled(attempts: u32, recorded: bool) -> TaskOutcome {
    TaskOutcome::Cancelled { attempts, recorded }
}

/// A successful task.
pub async fn succeeds() -> Result<(), std::io::Error> {
    Ok(())
}
