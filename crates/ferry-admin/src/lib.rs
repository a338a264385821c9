//! Ferry's operations surface: what an operator sees and does.
//!
//! * The **admin API** under `/v1/admin/…` (JSON, described by the OpenAPI
//!   document it serves): an [`Overview`] of everything the daemon runs,
//!   the outbox browser, one dead-letter view over every kind (outbox,
//!   consumer, forwarder, executor task) grouped by cause with replay and
//!   discard of one, a selection or everything matching a filter, pause and
//!   resume of a relay, and the audit log.
//! * The **web console** under `/ui`, embedded in the binary (no CDN, no
//!   build step), over the same operations.
//!
//! Both answer only to a caller with a token ([`access`]): an admin token
//! may change things, a read-only one may only look. Every change is
//! written to the audit log of the store it changed, with the token's name.
//!
//! The process that serves them (the `ferry` daemon, or a test) describes
//! itself through [`Daemon`]: its databases, what it runs, and how a
//! consumer dead letter or a forwarder's failed event is sent again.

pub mod access;
pub mod api;
mod console;
mod daemon;
mod error;
pub mod overview;
mod service;

pub use access::{AdminConfig, ApiToken, Caller, Role};
pub use daemon::{Daemon, NamedStore, ReplayError};
pub use error::{AdminError, ErrorBody};
pub use overview::{Component, ComponentKind, ComponentState, History, Overview, Sample};
pub use service::{
    Admin, BulkAction, ComponentView, FilterView, JobId, JobView, OverviewView, Replayed,
};

/// Everything the admin layer serves: the API under `/v1/admin` and the
/// console under `/ui`.
pub fn router(admin: Admin) -> axum::Router {
    api::routes(admin.clone()).merge(console::routes(admin))
}
