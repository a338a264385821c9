use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_delivery::{OrderPolicy, SinkBackoff};
use ferry_store::outbox::Retention;
use ferry_store::ConnectOptions;

use crate::PauseSwitch;

/// How a relay runs.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Name in logs.
    pub name: String,
    /// Most messages claimed and sent in one batch.
    pub batch_size: u32,
    /// Workers claiming and delivering batches at the same time (capped to
    /// what the outbox allows: 1 on SQLite). Default 2: a second batch is
    /// claimed while the first is with the sink, which helps every sink
    /// on unkeyed streams. On an ordered relay, workers of one relay hold
    /// back each other's ordering keys, so the workers beyond the first
    /// sit out while the last batch claimed carried keys, and join in again
    /// once one does not ([`RelayStats::sat_out`](crate::RelayStats::sat_out)
    /// counts it). Measured on PostgreSQL, 100,000 messages to a null sink,
    /// 1,000 keys: 1 worker 87.5k msg/s, 2 working together 55.9k; no keys
    /// 77.4k and 99.4k; to NATS JetStream, no keys: 35.5k and 43.9k
    /// (bench/README.md, 2026-12-07). An unordered relay's workers always
    /// work, keys or not.
    pub concurrency: usize,
    /// Per-key ordering policy.
    pub order: OrderPolicy,
    /// Only these topics; `None` for all.
    pub topics: Option<Vec<String>>,
    /// Longest wait between two looks at the outbox when no wake-up comes.
    pub poll_interval: Duration,
    /// Retries of a failed message.
    pub retry: RetryPolicy,
    /// Pause while the sink as a whole, or the database, is unavailable.
    pub sink_backoff: SinkBackoff,
    /// What happens to delivered messages.
    pub retention: Retention,
    /// The lease on a claimed batch (on PostgreSQL and MariaDB, open the pool with
    /// [`RelayConfig::connect_options`], which sets the same value). A batch gets
    /// half of it to be delivered, so that no other relay takes over a
    /// batch still being sent: a sink call not finished by then counts as a
    /// failed attempt, and the rest of the batch waits for the next claim.
    pub lease: Duration,
    /// How long batches in flight may finish after shutdown is requested.
    pub shutdown_grace: Duration,
    /// The switch an operator pauses and resumes the relay with (see
    /// [`PauseSwitch`]); keep a clone to use it. Default: a switch of its
    /// own, resumed.
    pub pause: PauseSwitch,
}

impl RelayConfig {
    /// How long delivering one batch may take: half the lease.
    pub fn batch_budget(&self) -> Duration {
        self.lease / 2
    }

    /// How to open the database for this relay: its [`lease`](Self::lease)
    /// (the server's idle-in-transaction timeout, so that a batch's budget
    /// stays half of it), and a connection per worker plus two (the
    /// purger, start-up and the wait for work).
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            max_connections: u32::try_from(self.concurrency.max(1))
                .unwrap_or(u32::MAX)
                .saturating_add(2),
            lease: Some(self.lease),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            name: "relay".to_owned(),
            batch_size: 1000,
            concurrency: 2,
            order: OrderPolicy::Ordered,
            topics: None,
            poll_interval: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            sink_backoff: SinkBackoff::default(),
            retention: Retention::Delete,
            lease: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            pause: PauseSwitch::default(),
        }
    }
}
