//! Ferry's stores, on SQLite, PostgreSQL and MariaDB.
//!
//! * [`Database`]: connects from a URL and runs Ferry's migrations (its own
//!   `ferry_schema_migrations` table, so it never collides with the
//!   application's migration tool).
//! * [`outbox`]: the transactional outbox — enqueue inside the caller's
//!   transaction, and the claim/settle protocol the relay runs on.
//!   [`OutboxSink`] and [`OutboxSubscriber`] make the outbox a broker that
//!   consumers read directly (`outbox::as_broker`).
//! * [`inbox`]: the idempotent inbox — a consumer records each message id
//!   in the transaction that applies it, and skips redeliveries.
//! * [`dead_letters`]: messages a consumer gave up on, kept for replay.
//! * [`event_store`]: the append-only event log, reader offsets and the
//!   events readers gave up on.
//! * [`task_failures`]: the executor's failure log.
//! * [`admin`]: what the operations console reads and changes: the
//!   outbox browser, one dead-letter view over every kind of failure with
//!   grouping by cause, the audit log and pause flags.
//! * [`dialect`]: what differs between the databases' SQL; everything
//!   the same on all of them is written once over it.

pub mod admin;
mod database;
pub mod dead_letters;
pub mod dialect;
mod error;
pub mod event_store;
pub mod inbox;
mod log_table;
mod migrate;
pub mod outbox;
pub mod task_failures;
mod text_columns;

pub use database::{redact, ConnectOptions, Database, DatabaseKind};
pub use dead_letters::DeadLetter;
pub use error::StoreError;
pub use outbox::as_broker::{OutboxSink, OutboxSubscriber};
