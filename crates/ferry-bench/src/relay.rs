//! The relay's settings on the command line, with the relay's own defaults
//! ([`RelayConfig::default`]), so a benchmark measures what a user gets
//! unless told otherwise.

use ferry_relay::{RelayConfig, Retention};
use ferry_store::outbox::postgres::PgOutbox;
use ferry_store::outbox::sqlite::SqliteOutbox;
use ferry_store::outbox::Outbox;
use ferry_store::Database;

/// `--batch-size` and `--concurrency`, shared by `drain`, `latency` and `all`.
#[derive(clap::Args, Clone, Debug)]
pub struct RelayArgs {
    /// The relay's batch size (also the SQL drain's).
    #[arg(long, default_value_t = RelayConfig::default().batch_size)]
    pub batch_size: u32,
    /// The relay's workers, capped to what the outbox allows (SQLite: 1);
    /// also the SQL drain's clients.
    #[arg(long, default_value_t = RelayConfig::default().concurrency)]
    pub concurrency: usize,
}

impl RelayArgs {
    /// The relay's configuration: these settings, the rest the defaults.
    pub fn config(&self, name: &str) -> RelayConfig {
        RelayConfig {
            name: name.to_owned(),
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            ..RelayConfig::default()
        }
    }
}

/// How many workers a relay asked for `asked` runs on `db`: the outbox's
/// own limit ([`Outbox::max_workers`]), applied as the relay applies it.
pub fn workers(db: &Database, asked: usize) -> usize {
    // Only asked for its limit: dropped at once (PgOutbox's listener task
    // is aborted with it).
    let max = match db {
        // Server::parse refuses MariaDB.
        Database::Mysql(_) => None,
        Database::Postgres(pool) => PgOutbox::new(pool.clone(), Retention::Delete).max_workers(),
        Database::Sqlite(pool) => SqliteOutbox::new(pool.clone(), Retention::Delete).max_workers(),
    };
    max.map_or(asked.max(1), |max| asked.clamp(1, max))
}
