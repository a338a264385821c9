use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::Sink;
use ferry_store::outbox::{ClaimFilter, ClaimedBatch, Outbox, Outcome, Retention};
use tokio_util::sync::CancellationToken;

use crate::delivery::deliver;
use crate::health::Health;
use crate::RelayConfig;

/// Counters of what a relay has done since it started.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Messages the sink accepted.
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried.
    pub failed: AtomicU64,
    /// Messages dead-lettered.
    pub dead: AtomicU64,
    /// Batches settled.
    pub batches: AtomicU64,
    /// Times the sink was found unavailable.
    pub sink_unavailable: AtomicU64,
}

impl RelayStats {
    /// Messages the sink accepted so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Delivers an outbox's messages to a sink. See the crate docs for the
/// guarantees.
pub struct Relay<O: Outbox> {
    outbox: Arc<O>,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

struct Shared<O: Outbox> {
    outbox: Arc<O>,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    sink_health: Health,
    store_health: Health,
}

impl<O: Outbox> Relay<O> {
    /// A relay from `outbox` to `sink`.
    pub fn new(outbox: Arc<O>, sink: Arc<dyn Sink>, config: RelayConfig) -> Self {
        Self {
            outbox,
            sink,
            config,
            stats: Arc::default(),
        }
    }

    /// Its counters, readable while it runs.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then returns once the batches in
    /// flight are settled or abandoned (within the configured grace).
    pub async fn run(self, shutdown: CancellationToken) {
        let workers = match self.outbox.max_workers() {
            Some(max) => self.config.concurrency.clamp(1, max),
            None => self.config.concurrency.max(1),
        };
        let shared = Arc::new(Shared {
            sink_health: Health::new(
                "sink",
                self.config.name.clone(),
                self.config.sink_backoff.clone(),
            ),
            store_health: Health::new(
                "database",
                self.config.name.clone(),
                self.config.sink_backoff.clone(),
            ),
            outbox: self.outbox,
            sink: self.sink,
            config: self.config,
            stats: self.stats,
        });
        tracing::info!(relay = %shared.config.name, sink = shared.sink.name(), workers,
            batch_size = shared.config.batch_size, order = ?shared.config.order, "relay started");
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..workers {
            tasks.spawn(work(shared.clone(), worker, shutdown.clone()));
        }
        if let Retention::Keep(keep) = shared.config.retention {
            tasks.spawn(purge(shared.clone(), keep, shutdown.clone()));
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    tracing::error!(relay = %shared.config.name, "relay worker panicked: {e}");
                    shutdown.cancel();
                }
            }
        }
        tracing::info!(relay = %shared.config.name, delivered = shared.stats.delivered(), "relay stopped");
    }
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}

async fn work<O: Outbox>(s: Arc<Shared<O>>, worker: usize, shutdown: CancellationToken) {
    let relay = s.config.name.as_str();
    let mut filter = ClaimFilter {
        limit: s.config.batch_size,
        order: s.config.order,
        topics: s.config.topics.clone(),
    };
    while !shutdown.is_cancelled() {
        if let Some(pause) = s
            .sink_health
            .pause_left()
            .or_else(|| s.store_health.pause_left())
        {
            sleep_or_cancel(pause, &shutdown).await;
            continue;
        }
        // While the sink is down, probe it with one message, not a batch.
        filter.limit = if s.sink_health.is_down() {
            1
        } else {
            s.config.batch_size
        };
        let batch = match s.outbox.claim(&filter).await {
            Ok(b) => {
                s.store_health.succeeded();
                b
            }
            Err(e) => {
                s.store_health.failed(&error_chain(&e));
                continue;
            }
        };
        if batch.messages().is_empty() {
            drop(batch);
            let wait = match s.outbox.next_retry_at().await {
                Ok(Some(at)) => (at - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(s.config.poll_interval),
                _ => s.config.poll_interval,
            };
            tokio::select! {
                _ = s.outbox.wait_for_work(wait) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        let process = async {
            let result = deliver(
                &*s.sink,
                batch.messages(),
                s.config.order,
                &s.config.retry,
                s.config.batch_budget,
                relay,
            )
            .await;
            (batch, result)
        };
        let grace = async {
            shutdown.cancelled().await;
            tokio::time::sleep(s.config.shutdown_grace).await;
        };
        let (batch, result) = tokio::select! {
            r = process => r,
            _ = grace => {
                tracing::warn!(relay, worker, "shutdown grace expired; abandoning a batch in flight (it will be delivered again)");
                return;
            }
        };
        if result.over_budget {
            tracing::warn!(relay, worker, budget = ?s.config.batch_budget,
                "a batch ran out of its time budget; its unfinished messages will be delivered again (slow sink: lower batch_size or raise lease)");
        }
        match &result.unavailable {
            Some(error) => {
                s.stats.sink_unavailable.fetch_add(1, Ordering::Relaxed);
                s.sink_health.failed(error);
            }
            None => s.sink_health.succeeded(),
        }
        let (delivered, failed, dead) = (result.delivered, result.failed, result.dead);
        if result.outcomes.iter().all(|o| *o == Outcome::Released) {
            drop(batch);
            continue;
        }
        match batch.settle(&result.outcomes).await {
            Ok(()) => {
                s.store_health.succeeded();
                s.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
                s.stats.failed.fetch_add(failed, Ordering::Relaxed);
                s.stats.dead.fetch_add(dead, Ordering::Relaxed);
                s.stats.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // The outcomes are lost; the messages stay pending and go out again.
                s.store_health.failed(&format!(
                    "recording a batch's outcomes failed: {}",
                    error_chain(&e)
                ));
            }
        }
    }
}

async fn purge<O: Outbox>(s: Arc<Shared<O>>, keep: Duration, shutdown: CancellationToken) {
    let every = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    while !shutdown.is_cancelled() {
        match s.outbox.purge_delivered(keep).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(relay = %s.config.name, purged = n, "purged delivered messages past retention")
            }
            Err(e) => {
                tracing::debug!(relay = %s.config.name, error = %error_chain(&e), "purge failed; will retry")
            }
        }
        sleep_or_cancel(every, &shutdown).await;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
