//! What the admin layer needs from the process that serves it.

use ferry_store::event_store::StoredEvent;
use ferry_store::{Database, DeadLetter};
use futures::future::BoxFuture;

use crate::Overview;

/// A database the daemon uses, under the name the API and console show
/// (`?store=NAME`). Every store has Ferry's migrations applied, so it holds
/// an outbox, dead letters, the event store's failures, task failures, the
/// audit log and pause flags, any of them possibly empty.
#[derive(Clone, Debug)]
pub struct NamedStore {
    /// Its name: the first component that uses it, e.g. `orders`.
    pub name: String,
    /// The connection pool.
    pub db: Database,
}

/// The running process, as the admin layer sees it.
///
/// Contract: [`overview`](Daemon::overview) answers from memory (no
/// database round trip per call: the console polls it); the replay methods
/// deliver at least once — they return `Ok` only once the destination has
/// accepted the message, and the admin layer deletes the dead letter only
/// after that, so a crash in between sends it again with the same message
/// id, which receivers drop by id.
pub trait Daemon: Send + Sync + 'static {
    /// Everything the process runs, now.
    fn overview(&self) -> Overview;

    /// The databases the process uses; the first is the default store.
    fn stores(&self) -> Vec<NamedStore>;

    /// Publishes a consumer's dead letter again where that consumer reads
    /// it (its broker), with the same message id.
    fn republish<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReplayError>>;

    /// Delivers an event the forwarder `reader` gave up on through that
    /// forwarder's sink, with the same event id.
    fn redeliver_event<'a>(
        &'a self,
        reader: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ReplayError>>;
}

/// A dead letter that could not be sent again.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// This process does not run the consumer or forwarder it belongs to,
    /// so it does not know where to send it: replay it from the process
    /// that does, or with `ferry dead-letters replay --to URL`.
    #[error("`{0}` is not run by this process, so it does not know where to send it")]
    UnknownOwner(String),
    /// The destination refused it or could not be reached; a retry may help
    /// once it is back.
    #[error("sending it again failed")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}
