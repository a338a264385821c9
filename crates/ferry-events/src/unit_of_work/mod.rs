//! Domain events raised in a unit of work (a database transaction), with
//! handlers that run inside the transaction, after it commits, on the
//! executor, or durably through the event store and a forwarder — and
//! never when it rolls back.
//!
//! Events are Rust types implementing [`DomainEvent`] (a type name and a
//! serde JSON form); handlers subscribe by type and get an [`Event`] with
//! the value, its id and its source. Handlers are registered once at
//! startup on an [`EventBus`] (see there for the four kinds and what each
//! guarantees).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use ferry_events::forwarder::{ForwarderConfig, HandlerError};
//! # use ferry_events::unit_of_work::{DomainEvent, Event, EventBus};
//! # #[derive(serde::Serialize, serde::Deserialize)]
//! # struct OrderCancelled { order_id: i64 }
//! # impl DomainEvent for OrderCancelled { const TYPE: &'static str = "order.cancelled"; }
//! # async fn notify(_: &OrderCancelled) -> Result<(), HandlerError> { Ok(()) }
//! # async fn refund(_: uuid::Uuid, _: &OrderCancelled) -> Result<(), HandlerError> { Ok(()) }
//! # async fn demo(pool: sqlx::PgPool, shutdown: tokio_util::sync::CancellationToken) -> Result<(), Box<dyn std::error::Error>> {
//! let bus = EventBus::<sqlx::Postgres>::builder()
//!     .after_commit("notify", |e: Arc<Event<OrderCancelled>>| async move { notify(&e.data).await })
//!     .durable("refund", |e: Arc<Event<OrderCancelled>>| async move { refund(e.id, &e.data).await })
//!     .build(pool.clone())?;
//! tokio::spawn(bus.forwarder(ForwarderConfig::named("refunds")).run(shutdown));
//!
//! let mut uow = bus.begin().await?;
//! sqlx::query("UPDATE orders SET state = 'cancelled' WHERE id = $1").bind(42).execute(uow.conn()).await?;
//! uow.raise(OrderCancelled { order_id: 42 }).await?;
//! let committed = uow.commit().await?; // appends the event, commits, then runs `notify`
//! assert!(committed.failures.is_empty());
//! # Ok(()) }
//! ```
//!
//! # When handlers do not run
//!
//! A unit of work that is rolled back ([`UnitOfWork::rollback`]), fails
//! (an in-transaction handler's error, a failed append or commit), or is
//! dropped without [`UnitOfWork::commit`] rolls its transaction back, and
//! no after-commit, executor or durable handler runs for its events (durable
//! events are appended in the transaction, so they are rolled back too).
//!
//! A commit whose outcome is unknown (the connection broke during COMMIT)
//! returns an error and runs no after-commit or executor handler even if
//! it did commit; durable handlers run if it committed. Use durable
//! handlers for work that must follow every commit.

mod bus;
mod event;

use std::sync::Arc;

use ferry_executor::TaskHandle;
use ferry_store::event_store::NewEvent;
use ferry_store::StoreError;
use uuid::Uuid;

pub use bus::{BuildError, EventBus, EventBusBuilder};
pub use event::{DomainEvent, Event, Source};

use crate::forwarder::{guarded, HandlerError};
use crate::EventDatabase;
use bus::{AnyEvent, Registry};

/// A database transaction in which domain events are raised; see the
/// [module docs](self).
///
/// Dropping it without [`commit`](Self::commit) rolls the transaction back
/// and runs no handler after it.
pub struct UnitOfWork<DB: EventDatabase> {
    tx: sqlx::Transaction<'static, DB>,
    registry: Arc<Registry<DB>>,
    raised: Vec<Raised>,
    /// Set when an in-transaction handler failed: the unit of work can
    /// only roll back.
    failed: Option<(&'static str, String)>,
}

/// An event raised in a unit of work.
struct Raised {
    event_type: &'static str,
    id: Uuid,
    type_id: std::any::TypeId,
    event: AnyEvent,
    /// Its JSON form, when it is stored or goes to the executor.
    json: Option<serde_json::Value>,
    source: Source,
}

impl<DB: EventDatabase> UnitOfWork<DB> {
    pub(crate) fn new(tx: sqlx::Transaction<'static, DB>, registry: Arc<Registry<DB>>) -> Self {
        Self {
            tx,
            registry,
            raised: Vec::new(),
            failed: None,
        }
    }

    /// The transaction's connection, for the business writes:
    /// `sqlx::query(…).execute(uow.conn())`.
    pub fn conn(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }

    /// The transaction itself.
    pub fn transaction(&mut self) -> &mut sqlx::Transaction<'static, DB> {
        &mut self.tx
    }

    /// Raises `data`: runs its in-transaction handlers now, in the order
    /// they were registered, and keeps it for the handlers that run after
    /// the commit. Returns the event's id.
    ///
    /// An in-transaction handler's error is returned (as
    /// [`UnitOfWorkError::Handler`]) and dooms the unit of work: it can
    /// only roll back, and [`commit`](Self::commit) rolls it back.
    pub async fn raise<E: DomainEvent>(&mut self, data: E) -> Result<Uuid, UnitOfWorkError> {
        if let Some((event_type, handler)) = &self.failed {
            return Err(UnitOfWorkError::Doomed {
                event_type,
                handler: handler.clone(),
            });
        }
        let registry = self.registry.clone();
        let handlers = registry.by_type.get(&std::any::TypeId::of::<E>());
        let wants_json = handlers.is_some_and(|h| h.stored || !h.on_executor.is_empty());
        let source = data.source();
        let event = Event {
            id: Uuid::now_v7(),
            source: source.clone(),
            seq: None,
            data,
        };
        let json = if wants_json {
            Some(
                serde_json::to_value(&event).map_err(|source| UnitOfWorkError::Serialize {
                    event_type: E::TYPE,
                    source,
                })?,
            )
        } else {
            None
        };
        let id = event.id;
        let event: AnyEvent = Arc::new(event);
        for (name, handler) in handlers.map(|h| &h.in_transaction[..]).unwrap_or_default() {
            if let Err(source) = guarded(handler.call(&mut self.tx, &event)).await {
                self.failed = Some((E::TYPE, name.clone()));
                return Err(UnitOfWorkError::Handler {
                    event_type: E::TYPE,
                    handler: name.clone(),
                    source,
                });
            }
        }
        self.raised.push(Raised {
            event_type: E::TYPE,
            id,
            type_id: std::any::TypeId::of::<E>(),
            event,
            json,
            source,
        });
        Ok(id)
    }

    /// Commits: appends the stored events to the event store (last, to
    /// hold the store's append lock briefly), commits the transaction,
    /// then submits the executor handlers and runs the after-commit
    /// handlers, event by event in the order raised.
    ///
    /// Returns when the transaction is committed and the inline
    /// after-commit handlers have run; their failures are in
    /// [`Committed::failures`], not an error, because the commit stands.
    /// It does not wait for the executor handlers: they run on the
    /// executor's tasks, and their handles are in [`Committed::tasks`]
    /// (durable handlers run later, from the forwarder).
    /// An error means the transaction did not commit (or, for
    /// [`UnitOfWorkError::Database`] from COMMIT itself, that its outcome
    /// is unknown); no handler runs after it.
    pub async fn commit(mut self) -> Result<Committed, UnitOfWorkError> {
        if let Some((event_type, handler)) = self.failed.take() {
            self.tx
                .rollback()
                .await
                .map_err(UnitOfWorkError::Database)?;
            return Err(UnitOfWorkError::Doomed {
                event_type,
                handler,
            });
        }
        let stored: Vec<NewEvent> = self
            .raised
            .iter()
            .filter(|r| {
                self.registry
                    .by_type
                    .get(&r.type_id)
                    .is_some_and(|h| h.stored)
            })
            .map(|r| {
                let payload = r
                    .json
                    .as_ref()
                    .map(|j| j["data"].to_string())
                    .unwrap_or_default();
                NewEvent::new(r.event_type, payload)
                    .with_id(r.id)
                    .with_source(r.source.source_type.clone(), r.source.source_id.clone())
            })
            .collect();
        let mut seqs = Vec::new();
        if !stored.is_empty() {
            match DB::append(&mut self.tx, &stored).await {
                Ok(s) => seqs = s,
                Err(source) => {
                    // Dropping the transaction rolls it back.
                    return Err(UnitOfWorkError::Append(source));
                }
            }
        }
        let UnitOfWork {
            tx,
            registry,
            raised,
            ..
        } = self;
        tx.commit().await.map_err(UnitOfWorkError::Database)?;
        if !seqs.is_empty() {
            registry.wake.notify_one();
        }
        let mut committed = Committed {
            events: raised.len(),
            stored: seqs,
            tasks: Vec::new(),
            failures: Vec::new(),
        };
        for raised in raised {
            after_commit(&registry, raised, &mut committed).await;
        }
        Ok(committed)
    }

    /// Rolls back: nothing of the unit of work is kept, and no handler runs
    /// after it.
    pub async fn rollback(self) -> Result<(), UnitOfWorkError> {
        self.tx.rollback().await.map_err(UnitOfWorkError::Database)
    }
}

/// Submits the executor handlers of `raised` and runs its after-commit
/// handlers; failures go to `committed`.
async fn after_commit<DB: EventDatabase>(
    registry: &Registry<DB>,
    raised: Raised,
    committed: &mut Committed,
) {
    let Some(handlers) = registry.by_type.get(&raised.type_id) else {
        return;
    };
    let mut failures = Vec::new();
    if !handlers.on_executor.is_empty() {
        if let (Some(executor), Some(json)) = (&registry.executor, &raised.json) {
            for task in &handlers.on_executor {
                match executor.submit_registered_async(task, json.clone()).await {
                    Ok(handle) => committed.tasks.push(handle),
                    Err(e) => failures.push((task.as_str(), ferry_core::error_chain(&e))),
                }
            }
        }
    }
    for (name, handler) in &handlers.after_commit {
        if let Err(e) = guarded(handler.call(raised.event.clone())).await {
            failures.push((name.as_str(), e.describe()));
        }
    }
    for (handler, error) in failures {
        tracing::error!(event_type = raised.event_type, event_id = %raised.id, handler, error = %error,
                "an after-commit handler failed; the commit stands");
        committed.failures.push(AfterCommitFailure {
            event_type: raised.event_type,
            event_id: raised.id,
            handler: handler.to_owned(),
            error,
        });
    }
}

/// What a commit did.
#[derive(Debug)]
#[must_use = "after-commit failures are reported here"]
pub struct Committed {
    /// Events raised in the unit of work.
    pub events: usize,
    /// The sequence numbers of the events appended to the event store, in
    /// the order raised.
    pub stored: Vec<i64>,
    /// The executor tasks submitted: await one for its outcome, or drop
    /// them (the tasks run either way).
    pub tasks: Vec<TaskHandle>,
    /// After-commit handlers that failed or panicked, and executor
    /// submissions refused (the executor full or shutting down). The
    /// commit stands; each is also logged.
    pub failures: Vec<AfterCommitFailure>,
}

/// An after-commit handler that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfterCommitFailure {
    /// The event's type.
    pub event_type: &'static str,
    /// The event's id.
    pub event_id: Uuid,
    /// The handler's name.
    pub handler: String,
    /// What went wrong, with its causes.
    pub error: String,
}

/// Why a unit of work did not commit.
#[derive(Debug, thiserror::Error)]
pub enum UnitOfWorkError {
    /// Beginning, committing or rolling back failed. From COMMIT, the
    /// outcome is unknown; otherwise nothing was committed. A retry of the
    /// whole unit of work may help.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// An in-transaction handler failed; the unit of work rolls back.
    #[error(
        "in-transaction handler `{handler}` of `{event_type}` failed; the unit of work rolls back"
    )]
    Handler {
        /// The event's type.
        event_type: &'static str,
        /// The handler's name.
        handler: String,
        /// Its error.
        #[source]
        source: HandlerError,
    },
    /// An in-transaction handler failed earlier in this unit of work, which
    /// can only roll back.
    #[error("the unit of work was doomed by in-transaction handler `{handler}` of `{event_type}` and rolled back")]
    Doomed {
        /// The event's type.
        event_type: &'static str,
        /// The handler's name.
        handler: String,
    },
    /// Appending the stored events failed; the transaction rolls back.
    #[error("appending events to the event store failed; the unit of work rolls back")]
    Append(#[source] StoreError),
    /// The event does not serialize to JSON (a bug in its `Serialize`).
    #[error("event `{event_type}` does not serialize to JSON")]
    Serialize {
        /// The event's type.
        event_type: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}
