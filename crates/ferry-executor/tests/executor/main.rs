#![allow(missing_docs)]
//! The executor's integration tests: overload policies, error and panic
//! capture, retries, shutdown and metrics (paused time, log-only failure
//! log), and the failure log on SQLite, PostgreSQL and MariaDB (a fresh
//! database each, real time).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_executor::{Executor, ExecutorConfig, LogOnlyFailureLog, OverloadPolicy};
use tokio::sync::{mpsc, watch};

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

/// Log lines written while `f` runs on this thread (current-thread
/// runtimes only), as text.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
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

/// A successful task.
pub async fn succeeds() -> Result<(), std::io::Error> {
    Ok(())
}
