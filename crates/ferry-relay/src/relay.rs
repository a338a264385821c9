use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{error_chain, Sink};
use ferry_store::outbox::{ClaimFilter, ClaimedBatch, Outbox, Outcome, Retention};
use tokio_util::sync::CancellationToken;

use ferry_delivery::{
    deliver, probe_limit, tally, AfterGiveUp, BatchResult, Claimed, Health, OrderPolicy,
};
use tokio::sync::watch;

use crate::{PauseSwitch, RelayConfig};

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
    /// Claims made, empty ones included (how busy an idle relay is).
    pub claims: AtomicU64,
    /// Times a worker beyond the first sat out because the last batch of
    /// an ordered relay carried ordering keys (see
    /// [`RelayConfig::concurrency`](crate::RelayConfig::concurrency)).
    pub sat_out: AtomicU64,
}

impl RelayStats {
    /// Messages the sink accepted so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// Why a relay stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A worker panicked (a bug); the relay stopped its other workers.
    #[error("a worker of relay `{0}` panicked")]
    WorkerPanicked(String),
    /// The relay's own task failed (it panicked or was aborted).
    #[error("the task of relay `{relay}` failed")]
    Task {
        /// The relay's name.
        relay: String,
        /// Why the task failed.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Delivers an outbox's messages to a sink. See the crate docs for the
/// guarantees.
pub struct Relay<O: Outbox> {
    outbox: Arc<O>,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    pause: PauseSwitch,
}

struct Shared<O: Outbox> {
    outbox: Arc<O>,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    pause: PauseSwitch,
    sink_health: Health,
    store_health: Health,
    /// Whether the last batch claimed carried ordering keys, on an ordered
    /// relay with more than one worker: the workers beyond the first sit
    /// out while it does (they would hold back each other's keys).
    keyed: watch::Sender<bool>,
}

impl<O: Outbox> Relay<O> {
    /// A relay from `outbox` to `sink`.
    pub fn new(outbox: Arc<O>, sink: Arc<dyn Sink>, config: RelayConfig) -> Self {
        Self {
            outbox,
            sink,
            pause: config.pause.clone(),
            config,
            stats: Arc::default(),
        }
    }

    /// Its pause switch ([`RelayConfig::pause`]).
    pub fn pause_switch(&self) -> PauseSwitch {
        self.pause.clone()
    }

    /// Its counters, readable while it runs.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then returns once the batches in
    /// flight are settled or abandoned (within the configured grace).
    ///
    /// A worker that panics cancels `shutdown` (stopping the others) and
    /// makes this return an error, so a supervisor sees a failed process.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let workers = match self.outbox.max_workers() {
            Some(max) => self.config.concurrency.clamp(1, max),
            None => self.config.concurrency.max(1),
        };
        let shared = Arc::new(Shared {
            keyed: watch::Sender::new(false),
            sink_health: Health::new("sink", &self.config.name, &self.config.sink_backoff),
            store_health: Health::new("database", &self.config.name, &self.config.sink_backoff),
            outbox: self.outbox,
            sink: self.sink,
            config: self.config,
            stats: self.stats,
            pause: self.pause,
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
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    tracing::error!(relay = %shared.config.name, "relay worker panicked: {e}");
                    shutdown.cancel();
                    result = Err(RelayError::WorkerPanicked(shared.config.name.clone()));
                }
            }
        }
        if let Err(e) = shared.sink.shutdown().await {
            tracing::warn!(relay = %shared.config.name, error = %e.describe(), "flushing the sink at shutdown failed");
        }
        tracing::info!(relay = %shared.config.name, delivered = shared.stats.delivered(), "relay stopped");
        result
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
        one_per_key: false,
    };
    // Consecutive empty claims: the wait before the next one grows from 10 ms
    // to the poll interval, so a due retry this relay cannot claim (another
    // relay holds it) does not turn into a busy loop.
    let mut idle_streak: u32 = 0;
    let mut over_budget_logged = false;
    while !shutdown.is_cancelled() {
        if s.pause.is_paused() {
            if worker == 0 {
                tracing::info!(relay, "paused by an operator");
            }
            s.pause.resumed(&shutdown).await;
            if worker == 0 && !shutdown.is_cancelled() {
                tracing::info!(relay, "resumed by an operator");
            }
            continue;
        }
        if let Some(pause) = s
            .sink_health
            .pause_left()
            .or_else(|| s.store_health.pause_left())
        {
            sleep_or_cancel(pause, &shutdown).await;
            continue;
        }
        // The workers beyond the first sit out while batches carry keys
        // (see `Shared::keyed`).
        if worker > 0 && s.config.order == OrderPolicy::Ordered && *s.keyed.borrow() {
            s.stats.sat_out.fetch_add(1, Ordering::Relaxed);
            let mut keyed = s.keyed.subscribe();
            tokio::select! {
                _ = keyed.wait_for(|keyed| !keyed) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        // While the sink is down, probe it with a few messages of different
        // keys, doubling per failed probe: one message the sink keeps refusing
        // then shares a wave with others, and is retried on its own (see
        // `delivery`) instead of holding the whole pipeline.
        filter.one_per_key = s.sink_health.failures() > 0;
        filter.limit = probe_limit(s.sink_health.failures(), s.config.batch_size);
        s.stats.claims.fetch_add(1, Ordering::Relaxed);
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
            let floor = Duration::from_millis(10).saturating_mul(1 << idle_streak.min(10));
            idle_streak = idle_streak.saturating_add(1);
            let wait = match s.outbox.next_retry_in(filter.topics.as_deref()).await {
                Ok(Some(due)) => due.max(floor),
                _ => s.config.poll_interval,
            }
            .min(s.config.poll_interval);
            tokio::select! {
                _ = s.outbox.wait_for_work(wait) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        idle_streak = 0;
        if s.config.order == OrderPolicy::Ordered && s.config.concurrency > 1 {
            let keyed = batch
                .messages()
                .iter()
                .any(|c| c.message.as_ref().is_ok_and(|m| m.key.is_some()));
            s.keyed
                .send_if_modified(|was| std::mem::replace(was, keyed) != keyed);
        }
        let process = async {
            let spans = crate::trace::delivery_spans(relay, batch.messages());
            let result = deliver(
                &*s.sink,
                batch.messages(),
                s.config.order,
                AfterGiveUp::Continue,
                &s.config.retry,
                Some(s.config.batch_budget()),
            )
            .await;
            crate::trace::record_outcomes(spans, &result);
            log_outcomes(relay, batch.messages(), &result);
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
        if result.over_budget != over_budget_logged {
            over_budget_logged = result.over_budget;
            if result.over_budget {
                tracing::warn!(relay, worker, budget = ?s.config.batch_budget(),
                    "batches run out of their time budget: the slowest part of each is retried later \
                     (slow sink: lower batch_size, raise the sink's concurrency or the lease)");
            } else {
                tracing::info!(relay, worker, "batches fit their time budget again");
            }
        }
        match &result.unavailable {
            Some(error) => {
                s.stats.sink_unavailable.fetch_add(1, Ordering::Relaxed);
                s.sink_health.failed(error);
            }
            // Any answer but "unavailable" (even a refusal) means it is up.
            None if result.sink_answered => s.sink_health.succeeded(),
            None => {}
        }
        if result.outcomes.iter().all(|o| *o == Outcome::Released) {
            drop(batch);
            continue;
        }
        match batch.settle(&result.outcomes).await {
            Ok(()) => {
                s.store_health.succeeded();
                let (delivered, failed, dead) = tally(&result.outcomes);
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

/// Logs what the engine decided for each message: a dead letter at warn
/// level, a retry at debug level.
fn log_outcomes(relay: &str, claimed: &[Claimed], result: &BatchResult) {
    let outcomes = claimed.iter().zip(&result.outcomes).zip(&result.kinds);
    for ((c, outcome), kind) in outcomes {
        let Outcome::Failed { error, retry_at } = outcome else {
            continue;
        };
        let attempts = c.attempts + 1;
        match (&c.message, retry_at) {
            (Err(reason), _) => {
                tracing::warn!(relay, seq = c.seq, reason = %reason, "malformed message dead-lettered");
            }
            (Ok(m), None) => {
                let permanent = kind.is_some_and(|k| !k.is_retryable());
                tracing::warn!(relay, seq = c.seq, message_id = %m.id, attempts, error = %error,
                    reason = if permanent { "permanent error" } else { "attempts exhausted" }, "message dead-lettered");
            }
            (Ok(_), Some(at)) => {
                let wait = (*at - chrono::Utc::now()).to_std().unwrap_or_default();
                tracing::debug!(relay, seq = c.seq, attempts, error = %error, ?wait, "delivery failed; will retry");
            }
        }
    }
}

async fn purge<O: Outbox>(s: Arc<Shared<O>>, keep: Duration, shutdown: CancellationToken) {
    let every = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut failing = false;
    while !shutdown.is_cancelled() {
        match s.outbox.purge_delivered(keep).await {
            Ok(n) => {
                if failing {
                    tracing::info!(relay = %s.config.name, "purging delivered messages works again");
                    failing = false;
                }
                if n > 0 {
                    tracing::debug!(relay = %s.config.name, purged = n, "purged delivered messages past retention");
                }
            }
            Err(e) if !failing => {
                tracing::warn!(relay = %s.config.name, error = %error_chain(&e), "purging delivered messages fails; will retry");
                failing = true;
            }
            Err(_) => {}
        }
        sleep_or_cancel(every, &shutdown).await;
    }
}
