//! Runs a [`Relay`] on its own task, from whichever database the
//! application opened.

use std::sync::Arc;
use std::time::Instant;

use ferry_core::Sink;
use ferry_store::outbox::{mysql::MysqlOutbox, postgres::PgOutbox, sqlite::SqliteOutbox};
use ferry_store::Database;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Relay, RelayConfig, RelayError, RelayStats};

/// A relay running on its own task. Dropping it leaves the relay running
/// until its token is cancelled.
pub struct Running {
    token: CancellationToken,
    name: String,
    handle: JoinHandle<Result<(), RelayError>>,
    /// Its counters.
    pub stats: Arc<RelayStats>,
    /// When its task was spawned (after the outbox was set up).
    pub started: Instant,
}

/// Starts a relay from `db`'s outbox to `sink` on its own task; it runs
/// until [`Running::stop`].
///
/// The outbox keeps delivered messages as `config.retention` says (the
/// relay purges them by the same setting). On PostgreSQL and MariaDB, open `db` with
/// [`RelayConfig::connect_options`] so that the lease matches.
pub fn spawn(db: &Database, sink: Arc<dyn Sink>, config: RelayConfig) -> Running {
    spawn_until(db, sink, config, &CancellationToken::new())
}

/// Like [`spawn`], and the relay also stops when `shutdown` is cancelled.
/// A relay that stops on its own (a worker panicked) does not cancel
/// `shutdown`.
pub fn spawn_until(
    db: &Database,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    shutdown: &CancellationToken,
) -> Running {
    let token = shutdown.child_token();
    let name = config.name.clone();
    let retention = config.retention;
    let (stats, handle) = match db {
        Database::Postgres(pool) => {
            let outbox = Arc::new(PgOutbox::new(pool.clone(), retention));
            let relay = Relay::new(outbox, sink, config);
            (relay.stats(), tokio::spawn(relay.run(token.clone())))
        }
        Database::Sqlite(pool) => {
            let outbox = Arc::new(SqliteOutbox::new(pool.clone(), retention));
            let relay = Relay::new(outbox, sink, config);
            (relay.stats(), tokio::spawn(relay.run(token.clone())))
        }
        Database::Mysql(pool) => {
            let outbox = Arc::new(MysqlOutbox::new(pool.clone(), retention));
            let relay = Relay::new(outbox, sink, config);
            (relay.stats(), tokio::spawn(relay.run(token.clone())))
        }
    };
    Running {
        token,
        name,
        handle,
        stats,
        started: Instant::now(),
    }
}

impl Running {
    /// Whether the relay's task has ended (on its own only after a panic).
    pub fn has_ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// The token that stops it (a child of the one given to
    /// [`spawn_until`]); the relay cancels it itself when a worker panics.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Asks it to stop and waits until it has (within its shutdown grace).
    pub async fn stop(self) -> Result<(), RelayError> {
        self.token.cancel();
        self.finished().await
    }

    /// Waits until it stops: on shutdown, or on its own after a panic.
    pub async fn finished(self) -> Result<(), RelayError> {
        match self.handle.await {
            Ok(result) => result,
            Err(source) => Err(RelayError::Task {
                relay: self.name,
                source,
            }),
        }
    }
}
