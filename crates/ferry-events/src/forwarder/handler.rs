//! What a forwarder hands events to: an [`EventHandler`] (at least once),
//! or a [`TransactionalHandler`] whose writes commit together with the
//! forwarder's offset (exactly once for those writes).

use std::future::Future;
use std::marker::PhantomData;

use ferry_core::HandlerFuture;
use ferry_store::event_store::StoredEvent;

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
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a>;

    /// Whether it handles `event` at all (all events by default). The
    /// forwarder passes by the events it does not want: they count as
    /// handled, and the offset moves past them.
    fn wants(&self, event: &StoredEvent) -> bool {
        let _ = event;
        true
    }
}

impl<H: EventHandler + ?Sized> EventHandler for std::sync::Arc<H> {
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a> {
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
    ) -> HandlerFuture<'a>;

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
    ) -> HandlerFuture<'a> {
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
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a> {
        Box::pin((self.f)(event.clone()))
    }
}

/// Whether retrying a failed event can help: the core
/// [`ErrorKind`](ferry_core::ErrorKind). Transient (and unavailable: a
/// handler holds one event, so its caller cannot tell a down service from
/// a refused event) are retried with backoff, counting an attempt;
/// permanent is not retried: the forwarder stops or skips the event at once.
pub type HandlerErrorKind = ferry_core::ErrorKind;

/// A handler's failure, with what to do next: the core
/// [`HandlerError`](ferry_core::HandlerError), shared with the consumer's
/// handlers. `?` works on `sqlx::Error` and `StoreError` (transient) and
/// `serde_json::Error` (permanent).
pub use ferry_core::HandlerError;
