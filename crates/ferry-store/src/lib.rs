//! Ferry's stores.
//!
//! * [`Database`]: connects to SQLite or PostgreSQL from a URL and runs
//!   Ferry's migrations (its own `ferry_schema_migrations` table, so it
//!   never collides with the application's migration tool).
//! * [`outbox`]: the transactional outbox — enqueue inside the caller's
//!   transaction, and the claim/settle protocol the relay runs on.

mod database;
mod error;
mod migrate;
pub mod outbox;

pub use database::{redact, ConnectOptions, Database, DatabaseKind};
pub use error::StoreError;
