//! Runs a [`Relay`] in the background of the benchmark process, as an
//! application embedding Ferry would.

use std::sync::Arc;
use std::time::Instant;

use ferry_core::Sink;
use ferry_relay::{CancellationToken, Relay, RelayConfig, RelayStats};
use ferry_store::outbox::{postgres::PgOutbox, sqlite::SqliteOutbox};
use ferry_store::Database;

/// A relay running on its own task.
pub struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), ferry_relay::RelayError>>,
    /// Its counters.
    pub stats: Arc<RelayStats>,
    /// When its task was spawned (after the outbox was set up).
    pub started: Instant,
}

/// Starts a relay from `db`'s outbox to `sink`.
pub fn spawn(db: &Database, sink: Arc<dyn Sink>, config: RelayConfig) -> Running {
    let token = CancellationToken::new();
    let retention = config.retention;
    let (stats, started, handle) = match db {
        Database::Postgres(pool) => {
            let relay = Relay::new(
                Arc::new(PgOutbox::new(pool.clone(), retention)),
                sink,
                config,
            );
            let stats = relay.stats();
            let started = Instant::now();
            (stats, started, tokio::spawn(relay.run(token.clone())))
        }
        Database::Sqlite(pool) => {
            let relay = Relay::new(
                Arc::new(SqliteOutbox::new(pool.clone(), retention)),
                sink,
                config,
            );
            let stats = relay.stats();
            let started = Instant::now();
            (stats, started, tokio::spawn(relay.run(token.clone())))
        }
    };
    Running {
        token,
        handle,
        stats,
        started,
    }
}

impl Running {
    /// Whether the relay's task ended on its own (it only does on a panic).
    pub fn has_ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// Asks it to stop and waits until it has.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.handle.await;
    }
}
