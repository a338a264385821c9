//! Ships a capture's changes to a sink: the delivery engine's waves,
//! retries, dead letters and down-sink probing, over a window whose
//! acknowledged position only ever passes settled changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::{RetryPolicy, Sink};
use ferry_delivery::{
    deliver, probe_limit, AfterGiveUp, Attempt, Health, OrderPolicy, SinkBackoff, Window,
};
use ferry_store::{Database, DeadLetter};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capture::{Capture, CaptureError, Checkpoint};
use crate::change::TableId;
use crate::encode::{Encoder, Format};

/// What becomes of a change the sink refused for good (a permanent error,
/// or its attempts spent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Parked in the dead letters (`ferry dead list`), the stream goes on:
    /// the capture's position does not wait on it, so the database's log
    /// is not held back by one bad change.
    #[default]
    DeadLetter,
    /// The capture stops at it (and exits with an error); nothing after
    /// it is acknowledged.
    Stop,
}

/// How changes are shipped.
#[derive(Clone, Debug)]
pub struct ShipConfig {
    /// The capture's name: in change ids, logs, metrics, dead letters
    /// (`cdc:<name>`).
    pub name: String,
    /// Topic prefix (`{prefix}.{schema}.{table}`).
    pub topic_prefix: String,
    /// The body's form.
    pub format: Format,
    /// Changes read at a time.
    pub batch_size: usize,
    /// Changes read past the acknowledged position at most (memory bound,
    /// and what a crash sends again).
    pub window: usize,
    /// Retries of a refused change.
    pub retry: RetryPolicy,
    /// Pause while the sink or the database is down.
    pub backoff: SinkBackoff,
    /// What a change given up on does.
    pub on_failure: OnFailure,
    /// At most this often the position is acknowledged to the source
    /// while it has more to read; at once when everything read is settled
    /// and the source had no more (its last read returned less than was
    /// asked). An acknowledgement is a write on the source (a slot
    /// confirmation, a saved snapshot chunk): once per read of a bulk read
    /// it cost a third of a snapshot's time.
    pub acknowledge_every: Duration,
}

impl ShipConfig {
    /// Defaults for a capture named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            topic_prefix: name.clone(),
            name,
            format: Format::Ferry,
            batch_size: 1000,
            window: 8000,
            retry: RetryPolicy::default(),
            backoff: SinkBackoff::default(),
            on_failure: OnFailure::DeadLetter,
            acknowledge_every: Duration::from_millis(200),
        }
    }
}

/// Why shipping ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The capture refused to go on (a server not set up for it, a table
    /// without a key): the message says what to change.
    #[error("capture {name}: {}", source.describe())]
    Capture {
        /// The capture.
        name: String,
        /// Why.
        source: CaptureError,
    },
    /// A change was given up on under [`OnFailure::Stop`].
    #[error("capture {name} stopped at change {id} of {table} after {attempts} attempts: {error}")]
    Stopped {
        /// The capture.
        name: String,
        /// The change's id (its message id).
        id: String,
        /// Its table.
        table: String,
        /// Attempts made.
        attempts: u32,
        /// The sink's last error.
        error: String,
    },
}

/// Counters of a running capture, for metrics and `ferry cdc status`.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Changes read from the source.
    pub read: AtomicU64,
    /// Changes the sink accepted.
    pub delivered: AtomicU64,
    /// Failed attempts (retried or given up).
    pub failed: AtomicU64,
    /// Changes dead-lettered.
    pub dead: AtomicU64,
    /// Times the position was acknowledged to the source.
    pub acknowledged: AtomicU64,
    /// Commit time (Unix ms) of the last change delivered: the lag is now
    /// minus this.
    pub last_commit_ms: AtomicI64,
    /// Changes delivered per table.
    pub per_table: Mutex<HashMap<TableId, u64>>,
    /// WAL the capture's replication slot makes the server keep, in bytes,
    /// when a monitor reads it (PostgreSQL log mode).
    pub retained_wal_bytes: Mutex<Option<u64>>,
    /// The capture's snapshot progress, when it reports one.
    pub snapshot: Mutex<Option<Arc<crate::capture::SnapshotProgress>>>,
}

impl ShipStats {
    /// Seconds between the last delivered change's commit and now.
    pub fn lag_seconds(&self) -> Option<f64> {
        let ms = self.last_commit_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0)
    }

    /// Changes delivered per table, sorted by table.
    pub fn tables(&self) -> Vec<(TableId, u64)> {
        let mut v: Vec<(TableId, u64)> = self
            .per_table
            .lock()
            .map(|m| m.iter().map(|(t, n)| (t.clone(), *n)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A change in flight: what the position needs once it is settled.
#[derive(Debug)]
struct InFlight {
    checkpoint: Option<Checkpoint>,
    table: TableId,
    commit_time: Option<DateTime<Utc>>,
}

/// The deliveries of a round, counted into [`ShipStats`] once for the
/// round rather than once per change (a lock and three atomics each).
#[derive(Default)]
struct Delivered {
    count: u64,
    last_commit_ms: Option<i64>,
    /// Per table, in the order first seen: a round holds few tables.
    tables: Vec<(TableId, u64)>,
}

impl Delivered {
    fn add(&mut self, change: &InFlight, stats: &ShipStats) {
        self.count += 1;
        if let Some(t) = change.commit_time {
            let ms = t.timestamp_millis();
            self.last_commit_ms = Some(self.last_commit_ms.map_or(ms, |m| m.max(ms)));
        }
        if let Some((_, n)) = self.tables.iter_mut().find(|(t, _)| *t == change.table) {
            *n += 1;
            return;
        }
        match self.tables.len() {
            0..16 => self.tables.push((change.table.clone(), 1)),
            _ => {
                // Many tables in one round: counted at once, as they come.
                if let Ok(mut m) = stats.per_table.lock() {
                    *m.entry(change.table.clone()).or_default() += 1;
                }
            }
        }
    }

    /// Adds what was counted to `stats`, and starts again from nothing.
    fn count(&mut self, stats: &ShipStats) {
        let Delivered {
            count,
            last_commit_ms,
            tables,
        } = std::mem::take(self);
        if count == 0 {
            return;
        }
        if let Some(ms) = last_commit_ms {
            stats.last_commit_ms.fetch_max(ms, Ordering::Relaxed);
        }
        if let Ok(mut m) = stats.per_table.lock() {
            for (table, n) in tables {
                match m.get_mut(&table) {
                    Some(total) => *total += n,
                    None => {
                        m.insert(table, n);
                    }
                }
            }
        }
        // Last, so that a reader that sees every change delivered sees
        // their tables and times too.
        stats.delivered.fetch_add(count, Ordering::Relaxed);
    }
}

/// Ships `capture`'s changes to `sink` until `shutdown` (then returns
/// `Ok`) or a refusal (an error).
///
/// # Guarantee
///
/// At least once, in commit order per row: changes go through the
/// delivery engine keyed by table and primary key; the source is
/// acknowledged up to a checkpoint only once every change before it was
/// delivered or dead-lettered. After a crash the capture reads the
/// unacknowledged changes again, with the same ids.
///
/// Dead letters go to `dead_letters` (under [`OnFailure::DeadLetter`]);
/// without one, a change given up on stops the capture as under
/// [`OnFailure::Stop`].
pub async fn ship<C: Capture>(
    mut capture: C,
    sink: Arc<dyn Sink>,
    config: ShipConfig,
    dead_letters: Option<Database>,
    stats: Arc<ShipStats>,
    shutdown: CancellationToken,
) -> Result<(), ShipError> {
    let name = config.name.clone();
    let encoder = Encoder {
        capture: config.name.clone(),
        topic_prefix: config.topic_prefix.clone(),
        format: config.format,
        connector: capture.connector(),
    };
    let sink_health = Health::new("sink", &name, &config.backoff);
    let source_health = Health::new("database", &name, &config.backoff);
    let stop_on_give_up = config.on_failure == OnFailure::Stop || dead_letters.is_none();
    let after_give_up = if stop_on_give_up {
        AfterGiveUp::Stop
    } else {
        AfterGiveUp::Continue
    };
    let batch = config.batch_size.max(1);
    let mut window: Window<InFlight> = Window::new(config.window.max(batch));
    let mut seq: i64 = 0;
    // The last checkpoint settled, and whether the source has it yet.
    let mut settled: Option<Checkpoint> = None;
    let mut acknowledged_at = Instant::now();
    // Whether the last read filled the room it was given: the source has
    // more, and acknowledging can wait for `acknowledge_every`.
    let mut source_had_more = false;
    let mut next_due: Option<Instant> = None;
    tracing::info!(capture = %name, sink = sink.name(), "capture started");
    loop {
        if shutdown.is_cancelled() {
            acknowledge(&mut capture, &mut settled, &source_health, &stats).await;
            tracing::info!(capture = %name, delivered = stats.delivered.load(Ordering::Relaxed), "capture stopped");
            return Ok(());
        }
        if let Some(pause) = source_health.pause_left() {
            sleep_or(pause, &shutdown).await;
            continue;
        }
        // Read while there is room; wait for changes only when nothing is
        // in flight (or until the next retry is due).
        if !window.is_full() {
            let room = (config.window.max(batch) - window.len()).min(batch);
            let wait = if window.is_empty() {
                Duration::from_millis(200)
            } else {
                next_due
                    .map(|d| d.saturating_duration_since(Instant::now()))
                    .unwrap_or_default()
                    .min(Duration::from_millis(200))
            };
            // A settled position waiting for its acknowledgement is not
            // held back by a wait for more changes.
            let wait = match settled {
                Some(_) => wait.min(
                    config
                        .acknowledge_every
                        .saturating_sub(acknowledged_at.elapsed()),
                ),
                None => wait,
            };
            let read = tokio::select! {
                r = capture.read(room, wait) => Some(r),
                _ = shutdown.cancelled() => None,
            };
            match read {
                None => continue,
                Some(Ok(changes)) => {
                    source_health.succeeded();
                    source_had_more = changes.len() >= room;
                    stats
                        .read
                        .fetch_add(changes.len() as u64, Ordering::Relaxed);
                    let messages = encoder.messages(changes.iter().map(|c| &c.change));
                    for (c, message) in changes.into_iter().zip(messages) {
                        seq += 1;
                        window.push(
                            seq,
                            InFlight {
                                checkpoint: c.checkpoint,
                                table: c.change.source.table,
                                commit_time: c.change.source.commit_time,
                            },
                            message,
                        );
                    }
                }
                Some(Err(e)) if e.is_retryable() => {
                    source_health.failed(&e.describe());
                    source_had_more = false;
                    continue;
                }
                Some(Err(source)) => {
                    acknowledge(&mut capture, &mut settled, &source_health, &stats).await;
                    return Err(ShipError::Capture { name, source });
                }
            }
        }
        if let Some(pause) = sink_health.pause_left() {
            acknowledge(&mut capture, &mut settled, &source_health, &stats).await;
            sleep_or(pause, &shutdown).await;
            continue;
        }
        let failures = sink_health.failures();
        let round = window.round(
            Instant::now(),
            probe_limit(failures, u32::try_from(batch).unwrap_or(u32::MAX)) as usize,
            failures > 0,
        );
        next_due = round.next_due();
        if !round.is_empty() {
            let result = deliver(
                &*sink,
                &window.entries(&round),
                OrderPolicy::Ordered,
                after_give_up,
                &config.retry,
                None,
            )
            .await;
            match &result.unavailable {
                Some(error) => sink_health.failed(error),
                None if result.sink_answered => sink_health.succeeded(),
                None => {}
            }
            let mut delivered = Delivered::default();
            for attempt in window.apply(&round, result) {
                match attempt {
                    Attempt::Delivered { index } => {
                        let e = window.get(index);
                        delivered.add(&e.item, &stats);
                    }
                    Attempt::Retrying(f) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        let e = window.get(f.index);
                        tracing::debug!(capture = %name, change = %e.message.id, attempts = f.attempts,
                            error = %f.error, "delivery failed; will retry");
                    }
                    Attempt::GivenUp(f) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        let e = window.get(f.index);
                        let table = e.item.table.to_string();
                        match (&dead_letters, stop_on_give_up) {
                            (Some(db), false) => {
                                delivered.count(&stats);
                                let dead = DeadLetter::new(
                                    format!("cdc:{name}"),
                                    e.message.clone(),
                                    f.error.clone(),
                                    f.attempts,
                                );
                                match db.record_dead_letter(&dead).await {
                                    Ok(()) => {
                                        stats.dead.fetch_add(1, Ordering::Relaxed);
                                        tracing::warn!(capture = %name, change = %e.message.id, %table,
                                            attempts = f.attempts, error = %f.error, "change dead-lettered");
                                        window.settle(f.index);
                                    }
                                    Err(err) => {
                                        // Not settled: it goes out again, and
                                        // the position waits for it.
                                        source_health.failed(&format!(
                                            "recording a dead letter failed: {err}"
                                        ));
                                    }
                                }
                            }
                            _ => {
                                delivered.count(&stats);
                                acknowledge(&mut capture, &mut settled, &source_health, &stats)
                                    .await;
                                return Err(ShipError::Stopped {
                                    name,
                                    id: e.message.id.to_string(),
                                    table,
                                    attempts: f.attempts,
                                    error: f.error,
                                });
                            }
                        }
                    }
                }
            }
            delivered.count(&stats);
        } else if !window.is_empty() && (window.is_full() || next_due.is_some()) {
            // Everything in flight waits for a retry.
            let until = next_due.map_or(Duration::from_millis(50), |d| {
                d.saturating_duration_since(Instant::now())
            });
            sleep_or(until.min(Duration::from_millis(200)), &shutdown).await;
        }
        for e in window.pop_settled() {
            if e.item.checkpoint.is_some() {
                settled = e.item.checkpoint;
            }
        }
        if settled.is_some()
            && ((window.is_empty() && !source_had_more)
                || acknowledged_at.elapsed() >= config.acknowledge_every)
        {
            acknowledge(&mut capture, &mut settled, &source_health, &stats).await;
            acknowledged_at = Instant::now();
        }
    }
}

/// Acknowledges the last settled checkpoint, if any; on failure it is kept
/// for the next time.
async fn acknowledge<C: Capture>(
    capture: &mut C,
    settled: &mut Option<Checkpoint>,
    health: &Health,
    stats: &ShipStats,
) {
    let Some(cp) = settled.take() else {
        return;
    };
    match capture.acknowledge(&cp).await {
        Ok(()) => {
            stats.acknowledged.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            health.failed(&format!(
                "acknowledging the position failed: {}",
                e.describe()
            ));
            *settled = Some(cp);
        }
    }
}

async fn sleep_or(d: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = shutdown.cancelled() => {}
    }
}
