//! The transactional target: a handler's writes commit with the offset.

use std::sync::Arc;

use ferry_core::{BoxFuture, HandlerFuture};
use ferry_store::event_store::StoredEvent;
use ferry_store::StoreError;

use super::{guarded, HandlerError, TransactionalHandler};
use crate::EventDatabase;

/// A transactional target, without its database type.
pub(super) trait Transact: Send + Sync {
    /// Whether `event` has work to do in a transaction.
    fn wants(&self, event: &StoredEvent) -> bool;

    /// The part of `event`'s handling that runs before its transaction and
    /// outside any (at least once), if it has one.
    fn outside<'a>(&'a self, event: &'a StoredEvent) -> Option<HandlerFuture<'a>>;

    /// Handles `events` in order in one transaction, a savepoint each,
    /// until one fails; saves the offset of the last one handled and
    /// commits. First it takes the stored offset
    /// ([`EventDatabase::lock_offset`]) and passes by the events at or
    /// below it. Opens no transaction when no event wants one.
    fn batch<'a>(
        &'a self,
        reader: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<Batch, StoreError>>;

    /// One attempt at `event` in a transaction of its own, saving its
    /// offset with it (passing it by when the stored offset is at or past
    /// it).
    fn single<'a>(
        &'a self,
        reader: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<Result<(), HandlerError>, StoreError>>;
}

/// What [`Transact::batch`] did.
pub(super) struct Batch {
    /// Events handled or passed by, from the first.
    pub(super) handled: usize,
    /// Of those, the ones the handler wanted and handled here.
    pub(super) wanted: usize,
    /// The error of the event after them, if one failed.
    pub(super) failure: Option<HandlerError>,
    /// The offset stored when the transaction ended, if one was opened:
    /// as it found it (locked), or as it committed it.
    pub(super) stored: Option<i64>,
}

/// Work a transactional target does outside the transaction, before it
/// (the bus's plain durable handlers).
pub(crate) trait OutsideWork: Send + Sync + 'static {
    /// Whether `event` has such work.
    fn wants(&self, event: &StoredEvent) -> bool;
    /// Does it; at least once.
    fn run<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a>;
}

pub(super) struct InTransaction<DB: EventDatabase> {
    pub(super) pool: sqlx::Pool<DB>,
    pub(super) handler: Arc<dyn TransactionalHandler<DB>>,
    pub(super) outside: Option<Arc<dyn OutsideWork>>,
}

impl<DB: EventDatabase> Transact for InTransaction<DB> {
    fn wants(&self, event: &StoredEvent) -> bool {
        self.handler.wants(event)
    }

    fn outside<'a>(&'a self, event: &'a StoredEvent) -> Option<HandlerFuture<'a>> {
        let outside = self.outside.as_ref()?;
        outside.wants(event).then(|| outside.run(event))
    }

    fn batch<'a>(
        &'a self,
        reader: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<Batch, StoreError>> {
        Box::pin(async move {
            if !events.iter().any(|e| self.handler.wants(e)) {
                // Nothing to write: the offset is saved after the page.
                return Ok(Batch {
                    handled: events.len(),
                    wanted: 0,
                    failure: None,
                    stored: None,
                });
            }
            let mut tx = self.pool.begin().await?;
            // Held until commit: our in-memory offset may be stale (a lost
            // COMMIT acknowledgement, another instance of this name), the
            // locked row is not.
            let stored = DB::lock_offset(&mut tx, reader).await?;
            let mut handled = 0;
            let mut wanted = 0;
            let mut failure = None;
            for event in events {
                if event.seq <= stored || !self.handler.wants(event) {
                    handled += 1;
                    continue;
                }
                let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
                match guarded(self.handler.handle(&mut savepoint, event)).await {
                    Ok(()) => {
                        savepoint.commit().await?;
                        handled += 1;
                        wanted += 1;
                    }
                    Err(error) => {
                        savepoint.rollback().await?;
                        failure = Some(error);
                        break;
                    }
                }
            }
            let stored = if wanted > 0 {
                let now = DB::save_offset(&mut tx, reader, events[handled - 1].seq).await?;
                tx.commit().await?;
                now
            } else {
                tx.rollback().await?;
                stored
            };
            Ok(Batch {
                handled,
                wanted,
                failure,
                stored: Some(stored),
            })
        })
    }

    fn single<'a>(
        &'a self,
        reader: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<Result<(), HandlerError>, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            if DB::lock_offset(&mut tx, reader).await? >= event.seq {
                tx.rollback().await?;
                return Ok(Ok(()));
            }
            if let Err(error) = guarded(self.handler.handle(&mut tx, event)).await {
                tx.rollback().await?;
                return Ok(Err(error));
            }
            DB::save_offset(&mut tx, reader, event.seq).await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
    }
}
