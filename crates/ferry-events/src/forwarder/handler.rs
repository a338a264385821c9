//! What a forwarder hands events to: an [`EventHandler`] (at least once),
//! or a [`TransactionalHandler`] whose writes commit together with the
//! forwarder's offset (exactly once for those writes).

use std::future::Future;
use std::marker::PhantomData;

use ferry_core::{BoxFuture, SinkError, SinkErrorKind};
use ferry_store::event_store::StoredEvent;
use ferry_store::StoreError;

/// Handles the events a forwarder reads from the event store.
///
/// # Delivery contract
///
/// * **In order, one at a time.** The forwarder calls [`EventHandler::handle`]
///   for one event at a time, in sequence order; the next event waits until
///   this one is handled or given up on.
/// * **At least once.** The forwarder's offset moves past an event only
///   after `handle` returned `Ok` for it (or the event was skipped), and it
///   is saved after each page of events. After a crash, events after the
///   saved offset are handled again, with the same [`StoredEvent::id`]:
///   a handler must be idempotent by event id. Events at or below the
///   saved offset are never handed out again by that forwarder.
/// * **Errors** say what happens next: [`HandlerErrorKind::Transient`] is
///   retried with the forwarder's retry policy; [`HandlerErrorKind::Permanent`]
///   is not retried. Once retries are spent (or at once when permanent),
///   the forwarder stops or skips the event, as its
///   [`OnFailure`](crate::forwarder::OnFailure) says.
/// * **Panics** count as a permanent error.
/// * **Shutdown.** A call still running when shutdown is requested may
///   finish within the forwarder's grace; after that it is dropped at an
///   `.await` and the event is handled again after the restart.
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event.
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Whether it handles `event` at all (all events by default). The
    /// forwarder passes by the events it does not want: they count as
    /// handled, and the offset moves past them.
    fn wants(&self, event: &StoredEvent) -> bool {
        let _ = event;
        true
    }
}

impl<H: EventHandler + ?Sized> EventHandler for std::sync::Arc<H> {
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        (**self).handle(event)
    }
    fn wants(&self, event: &StoredEvent) -> bool {
        (**self).wants(event)
    }
}

/// Handles events inside the transaction in which the forwarder also saves
/// its offset.
///
/// # Delivery contract
///
/// * **Exactly once for the handler's writes on `conn`.** The forwarder
///   begins a transaction, gives each event a savepoint of its own in it,
///   calls [`TransactionalHandler::handle`] with that savepoint's connection,
///   then saves its offset in the same transaction and commits. Either the
///   writes and the new offset both commit, or neither does (a crash or a
///   failed commit leaves the offset before the events, and their writes
///   undone). Before any event, the transaction takes the stored offset
///   row ([`EventDatabase::lock_offset`](crate::EventDatabase::lock_offset))
///   and passes by the events at or below it: a COMMIT that succeeded but
///   whose answer was lost, or a second forwarder of the same name, does
///   not make them run again. So each event's writes are applied once.
/// * **Anything else is at least once.** A call to another system made from
///   `handle` is not rolled back: it is repeated when the event is handled
///   again (after an error, a failed commit or a crash).
/// * **Errors** roll back the event's savepoint (its writes only; events
///   handled before it in the same transaction commit), then the event is
///   retried in a transaction of its own, as for [`EventHandler`]. A
///   statement that fails inside `handle` must make it return an error: on
///   PostgreSQL, the rest of the transaction cannot be used after it.
/// * In order, one at a time, as for [`EventHandler`]. Panics count as a
///   permanent error.
pub trait TransactionalHandler<DB: sqlx::Database>: Send + Sync + 'static {
    /// Handles one event with `conn`, the forwarder's open transaction.
    fn handle<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Whether it handles `event` at all (all events by default). The
    /// forwarder passes by the events it does not want, without a
    /// savepoint: they count as handled, and the offset moves past them.
    fn wants(&self, event: &StoredEvent) -> bool {
        let _ = event;
        true
    }
}

impl<DB: sqlx::Database, H: TransactionalHandler<DB> + ?Sized> TransactionalHandler<DB>
    for std::sync::Arc<H>
{
    fn handle<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        (**self).handle(conn, event)
    }
    fn wants(&self, event: &StoredEvent) -> bool {
        (**self).wants(event)
    }
}

/// An [`EventHandler`] from an async closure that takes its own copy of
/// the event: `handler_fn(|event| async move { … })`.
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(StoredEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    FnHandler {
        f,
        _fut: PhantomData,
    }
}

/// The handler [`handler_fn`] makes.
pub struct FnHandler<F> {
    f: F,
    _fut: PhantomData<fn()>,
}

impl<F, Fut> EventHandler for FnHandler<F>
where
    F: Fn(StoredEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin((self.f)(event.clone()))
    }
}

/// Whether retrying a failed event can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerErrorKind {
    /// It may succeed later (a timeout, a deadlock, a service that is down):
    /// retried with backoff, counting an attempt.
    Transient,
    /// It never will (the payload is malformed, the handler rejects it):
    /// no more attempts; the forwarder stops or skips the event at once.
    Permanent,
}

/// A handler's failure, with what to do next.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// Whether a retry can help.
    pub kind: HandlerErrorKind,
    /// What went wrong, short and lowercase; recorded as the failure's
    /// last error.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: HandlerErrorKind::Transient,
            message: message.into(),
            source: None,
        }
    }

    /// A failure no retry will fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: HandlerErrorKind::Permanent,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether a retry can help.
    pub fn is_transient(&self) -> bool {
        self.kind == HandlerErrorKind::Transient
    }

    /// The message followed by its chain of causes, for logs and the
    /// failure store.
    pub fn describe(&self) -> String {
        ferry_core::error_chain(self)
    }
}

/// A database error is worth retrying (a deadlock, a lost connection).
impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::transient("database error").with_source(e)
    }
}

/// A store error is worth retrying.
impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        HandlerError::transient("store error").with_source(e)
    }
}

/// A payload that does not decode never will.
impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        HandlerError::permanent("malformed event payload").with_source(e)
    }
}

/// A sink's refusal: permanent stays permanent, anything else is transient
/// (a sink that is unavailable as a whole is handled before this, without
/// counting attempts).
impl From<SinkError> for HandlerError {
    fn from(e: SinkError) -> Self {
        let (kind, message) = match e.kind {
            SinkErrorKind::Permanent => (HandlerErrorKind::Permanent, "the sink refused the event"),
            SinkErrorKind::Transient | SinkErrorKind::Unavailable => (
                HandlerErrorKind::Transient,
                "the sink did not take the event",
            ),
        };
        Self {
            kind,
            message: message.to_owned(),
            source: Some(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_kind_and_the_cause() {
        let e = HandlerError::from(
            SinkError::permanent("http 400").with_source(std::io::Error::other("bad")),
        );
        assert_eq!(e.kind, HandlerErrorKind::Permanent);
        assert_eq!(e.describe(), "the sink refused the event: http 400: bad");
        let e = HandlerError::from(SinkError::unavailable("connection refused"));
        assert!(e.is_transient());
        let bad: Result<u8, _> = serde_json::from_str("{");
        assert_eq!(
            HandlerError::from(bad.unwrap_err()).kind,
            HandlerErrorKind::Permanent
        );
        assert!(HandlerError::from(sqlx::Error::PoolTimedOut).is_transient());
    }
}
