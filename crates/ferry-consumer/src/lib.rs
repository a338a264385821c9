//! Ferry's consumer side: take messages from a broker and handle each one
//! reliably.
//!
//! * [`Handler`]: what your code implements (or [`handler_fn`] for an async
//!   closure), and [`HandlerError`], which says whether a failure is worth
//!   retrying. Delivery is at least once: a handler may see a message
//!   again unless it is wrapped in the [`inbox`].
//! * [`Router`]: subscribes handlers to topics (`event` for fan-out to
//!   every group, `command` for exactly one handler), pulls with bounded
//!   prefetch, keeps per-key order, settles each message, shuts down
//!   gracefully and keeps [`Stats`].
//! * [`middleware`]: retry, timeout, circuit breaker, dead letters,
//!   correlation ids and dedup, composable as [`Layer`]s.
//! * [`inbox`]: apply each message once, in the handler's own database
//!   transaction, on SQLite, PostgreSQL or MariaDB.
//! * [`memory`]: an in-process broker for tests and in-process wiring.
//!
//! Each handling runs in a `ferry.consume` span whose parent is the
//! producer's span, read from the message's `traceparent` header
//! ([`ferry_core::trace`]); the inbox adds a `ferry.inbox` span. With a
//! `tracing-opentelemetry` layer in your subscriber, a handler's spans
//! join the trace that started where the message was built.

mod config;
mod handler;
pub mod inbox;
pub mod memory;
pub mod middleware;
mod router;
mod stats;
mod trace;

pub use config::{ConfigError, LagConfig, RouterConfig};
pub use handler::{
    handler_fn, Context, Forward, Handler, HandlerError, HandlerErrorKind, HandlerExt, HandlerFn,
    Layer,
};
pub use middleware::{DeadLetter, DeadLetters, SinkDeadLetters, StoreDeadLetters};
pub use router::{
    command_group, BuildError, Route, Router, RouterBuilder, RouterError, ShutdownReport,
    SubscriptionReport,
};
pub use stats::{Stats, SubscriptionStats};
