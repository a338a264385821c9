//! The event bus: which handlers run for which event type, and how.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use ferry_core::{BoxFuture, HandlerFuture};
use ferry_executor::{Executor, RegisterError};
use ferry_store::event_store::StoredEvent;
use tokio::sync::Notify;

use super::{DomainEvent, Event, Source, UnitOfWork, UnitOfWorkError};
use crate::forwarder::{
    guarded, Forwarder, ForwarderConfig, HandlerError, OutsideWork, TransactionalHandler,
};
use crate::EventDatabase;

/// A raised event, type-erased: an `Arc<Event<E>>`.
pub(crate) type AnyEvent = Arc<dyn Any + Send + Sync>;

/// The handlers of one event type, set up once at startup
/// ([`EventBus::builder`]) and shared by every unit of work.
///
/// Four ways to handle an event of type `E`:
///
/// | registered with | runs | on failure | guarantee |
/// |---|---|---|---|
/// | [`in_transaction`](EventBusBuilder::in_transaction) | at [`UnitOfWork::raise`], inside the transaction | the unit of work rolls back | with the transaction |
/// | [`after_commit`](EventBusBuilder::after_commit) | in [`UnitOfWork::commit`], after the commit, awaited | logged and reported; the commit stands | at most once (lost on a crash) |
/// | [`on_executor`](EventBusBuilder::on_executor) | after the commit, on the [`Executor`] | retried, then kept in the executor's failure log (re-runnable) | at most once per attempt (lost on a crash) |
/// | [`durable`](EventBusBuilder::durable), [`durable_in_transaction`](EventBusBuilder::durable_in_transaction) | after the commit, by the bus's [forwarder](EventBus::forwarder): `durable` outside any transaction, `durable_in_transaction` in the one that saves the offset | retried, then stop or skip | stored with the transaction; at least once (exactly once for `durable_in_transaction`'s writes) |
///
/// None of them runs for a unit of work that rolls back.
pub struct EventBus<DB: EventDatabase> {
    registry: Arc<Registry<DB>>,
}

impl<DB: EventDatabase> Clone for EventBus<DB> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
        }
    }
}

pub(crate) struct Registry<DB: EventDatabase> {
    pub(crate) pool: sqlx::Pool<DB>,
    pub(crate) by_type: HashMap<TypeId, TypeHandlers<DB>>,
    durable: DurableHandlers<DB>,
    pub(crate) executor: Option<Executor>,
    pub(crate) wake: Arc<Notify>,
}

/// The in-process handlers of one Rust event type.
pub(crate) struct TypeHandlers<DB: EventDatabase> {
    pub(crate) in_transaction: Vec<(String, Arc<dyn InTx<DB>>)>,
    pub(crate) after_commit: Vec<(String, Arc<dyn AfterCommit>)>,
    /// Executor task names (registered with the executor at build).
    pub(crate) on_executor: Vec<String>,
    /// Appended to the event store at commit.
    pub(crate) stored: bool,
}

impl<DB: EventDatabase> Default for TypeHandlers<DB> {
    fn default() -> Self {
        Self {
            in_transaction: Vec::new(),
            after_commit: Vec::new(),
            on_executor: Vec::new(),
            stored: false,
        }
    }
}

impl<DB: EventDatabase> EventBus<DB> {
    /// A builder with no handlers.
    pub fn builder() -> EventBusBuilder<DB> {
        EventBusBuilder {
            by_type: HashMap::new(),
            names: HashMap::new(),
            durable: HashMap::new(),
            on_executor: Vec::new(),
            executor: None,
        }
    }

    /// Begins a unit of work: a transaction on the bus's pool.
    pub async fn begin(&self) -> Result<UnitOfWork<DB>, UnitOfWorkError> {
        let tx = self
            .registry
            .pool
            .begin()
            .await
            .map_err(UnitOfWorkError::Database)?;
        Ok(UnitOfWork::new(tx, self.registry.clone()))
    }

    /// A unit of work in a transaction the caller began.
    pub fn begin_with(&self, tx: sqlx::Transaction<'static, DB>) -> UnitOfWork<DB> {
        UnitOfWork::new(tx, self.registry.clone())
    }

    /// The forwarder that runs the durable handlers: it reads the event
    /// store in the bus's database from its offset under `config.name`,
    /// and for each event of a type with durable handlers:
    ///
    /// 1. calls its [`EventBusBuilder::durable`] handlers, in the order
    ///    registered, **outside any database transaction** (they may call
    ///    other systems for as long as they need; at least once);
    /// 2. then calls its [`EventBusBuilder::durable_in_transaction`]
    ///    handlers, in the order registered, in the transaction that also
    ///    saves the offset (exactly once for their writes). Consecutive
    ///    events without plain durable handlers share one transaction.
    ///
    /// Events of other types pass by. Units of work of this bus wake it
    /// when they commit stored events.
    ///
    /// When one handler of an event fails, the event is retried; `durable`
    /// handlers that already succeeded for it are not called again in this
    /// process (they are after a restart), `durable_in_transaction`
    /// handlers are (their writes were rolled back with the failing
    /// attempt).
    pub fn forwarder(&self, config: ForwarderConfig) -> Forwarder {
        let outside = Outside {
            durable: self.registry.durable.clone(),
            done: Mutex::default(),
        };
        let in_transaction = InTransaction {
            durable: self.registry.durable.clone(),
        };
        Forwarder::to_transactional_with(&self.registry.pool, in_transaction, outside, config)
            .woken_by(self.registry.wake.clone())
    }

    /// The executor the bus runs [`EventBusBuilder::on_executor`] handlers on.
    pub fn executor(&self) -> Option<&Executor> {
        self.registry.executor.as_ref()
    }
}

/// Sets up an [`EventBus`]; see there for the kinds of handlers.
pub struct EventBusBuilder<DB: EventDatabase> {
    by_type: HashMap<TypeId, TypeHandlers<DB>>,
    /// Type name of each Rust type registered, to refuse two types of one name.
    names: HashMap<TypeId, &'static str>,
    durable: HashMap<&'static str, Vec<DurableEntry<DB>>>,
    on_executor: Vec<(String, ExecutorRegistration)>,
    executor: Option<Executor>,
}

type ExecutorRegistration = Box<dyn FnOnce(&Executor) -> Result<(), RegisterError> + Send>;

impl<DB: EventDatabase> EventBusBuilder<DB> {
    fn of<E: DomainEvent>(&mut self) -> &mut TypeHandlers<DB> {
        self.names.insert(TypeId::of::<E>(), E::TYPE);
        self.by_type.entry(TypeId::of::<E>()).or_default()
    }

    /// Runs `handler` when an `E` is raised, inside the unit of work's
    /// transaction, before [`UnitOfWork::raise`] returns. Its error fails
    /// `raise` and rolls the unit of work back (nothing of it commits).
    ///
    /// ```
    /// # use ferry_events::unit_of_work::{DomainEvent, Event, EventBus};
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct OrderCancelled { order_id: i64 }
    /// # impl DomainEvent for OrderCancelled { const TYPE: &'static str = "order.cancelled"; }
    /// let builder = EventBus::<sqlx::Postgres>::builder().in_transaction(
    ///     "reserve_refund",
    ///     |conn: &mut sqlx::PgConnection, e: &Event<OrderCancelled>| {
    ///         Box::pin(async move {
    ///             sqlx::query("INSERT INTO refunds (order_id) VALUES ($1)")
    ///                 .bind(e.data.order_id)
    ///                 .execute(conn)
    ///                 .await?;
    ///             Ok(())
    ///         })
    ///     },
    /// );
    /// ```
    pub fn in_transaction<E, F>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        E: DomainEvent,
        F: for<'a> Fn(&'a mut DB::Connection, &'a Event<E>) -> HandlerFuture<'a>
            + Send
            + Sync
            + 'static,
    {
        let typed: Arc<dyn InTx<DB>> = Arc::new(TypedInTx(handler, PhantomData::<fn(E)>));
        self.of::<E>().in_transaction.push((name.into(), typed));
        self
    }

    /// Runs `handler` after the unit of work commits, inline: awaited
    /// before [`UnitOfWork::commit`] returns. Its error (or panic) is
    /// logged and reported in [`Committed::failures`](super::Committed::failures);
    /// the commit stands. Lost if the process dies before it ran.
    pub fn after_commit<E, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        E: DomainEvent,
        F: Fn(Arc<Event<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let typed: Arc<dyn AfterCommit> = Arc::new(TypedAfter(handler, PhantomData::<fn(E)>));
        self.of::<E>().after_commit.push((name.into(), typed));
        self
    }

    /// Runs `handler` after the unit of work commits, on the bus's
    /// [`Executor`] ([`EventBusBuilder::executor`]): [`UnitOfWork::commit`]
    /// submits it and returns its [`TaskHandle`](ferry_executor::TaskHandle)
    /// in [`Committed::tasks`](super::Committed::tasks). `name` is the
    /// executor task's name (one handler per name); the task's input is
    /// the event as JSON, so a failure the executor records can be re-run
    /// from its failure log. Retries follow the executor's policy. Lost if
    /// the process dies before it ran.
    pub fn on_executor<E, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        E: DomainEvent,
        F: Fn(Arc<Event<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let name = name.into();
        let handler = Arc::new(handler);
        let task = name.clone();
        let register: ExecutorRegistration = Box::new(move |executor: &Executor| {
            executor.register(task, move |input: serde_json::Value| {
                let handler = handler.clone();
                async move {
                    let event: Event<E> = serde_json::from_value(input)?;
                    handler(Arc::new(event)).await
                }
            })
        });
        self.on_executor.push((name.clone(), register));
        self.of::<E>().on_executor.push(name);
        self
    }

    /// Stores every `E` in the event store, appended in the unit of work's
    /// transaction just before it commits, even without a durable handler
    /// here (for other readers: the HTTP offset API, a forwarder to a sink).
    pub fn store<E: DomainEvent>(mut self) -> Self {
        self.of::<E>().stored = true;
        self
    }

    /// Stores every `E` (as [`store`](Self::store)) and runs `handler` for
    /// it from the bus's [forwarder](EventBus::forwarder): after the
    /// commit, surviving a crash (at least once, with [`Event::seq`] set),
    /// outside any database transaction, so a slow external call holds no
    /// lock. A handler sees an event again after a crash or a failed
    /// attempt: make it idempotent by [`Event::id`].
    pub fn durable<E, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        E: DomainEvent,
        F: Fn(Arc<Event<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.of::<E>().stored = true;
        let handler: Arc<dyn Plain> = Arc::new(DurableFn(handler, PhantomData::<fn(E)>));
        self.durable.entry(E::TYPE).or_default().push(DurableEntry {
            name: name.into(),
            handler: DurableKind::Plain(handler),
        });
        self
    }

    /// Like [`durable`](Self::durable), but `handler` writes with `conn`,
    /// the forwarder's transaction, which also saves the forwarder's
    /// offset: its writes are applied exactly once. It runs after the
    /// event's plain durable handlers succeeded. Keep it to database work:
    /// anything slow in it holds the transaction (and, if it appends
    /// events, the event store's append lock) open.
    pub fn durable_in_transaction<E, F>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        E: DomainEvent,
        F: for<'a> Fn(&'a mut DB::Connection, &'a Event<E>) -> HandlerFuture<'a>
            + Send
            + Sync
            + 'static,
    {
        self.of::<E>().stored = true;
        let handler: Arc<dyn Durable<DB>> = Arc::new(DurableInTx(handler, PhantomData::<fn(E)>));
        self.durable.entry(E::TYPE).or_default().push(DurableEntry {
            name: name.into(),
            handler: DurableKind::InTransaction(handler),
        });
        self
    }

    /// The executor that runs [`on_executor`](Self::on_executor) handlers.
    pub fn executor(mut self, executor: Executor) -> Self {
        self.executor = Some(executor);
        self
    }

    /// The bus, whose units of work run on `pool`. Fails when two Rust
    /// types share a type name, when an executor handler has no executor,
    /// or when its name is taken in the executor.
    pub fn build(self, pool: sqlx::Pool<DB>) -> Result<EventBus<DB>, BuildError> {
        let mut seen: HashMap<&'static str, TypeId> = HashMap::new();
        for (id, name) in &self.names {
            if seen.insert(name, *id).is_some_and(|other| other != *id) {
                return Err(BuildError::SameTypeName((*name).to_owned()));
            }
        }
        if let Some((name, _)) = self.on_executor.first() {
            let Some(executor) = &self.executor else {
                return Err(BuildError::NoExecutor(name.clone()));
            };
            for (_, register) in self.on_executor {
                register(executor)?;
            }
        }
        Ok(EventBus {
            registry: Arc::new(Registry {
                pool,
                by_type: self.by_type,
                durable: Arc::new(self.durable),
                executor: self.executor,
                wake: Arc::new(Notify::new()),
            }),
        })
    }
}

/// An [`EventBus`] that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Two Rust types have the same [`DomainEvent::TYPE`].
    #[error("two event types are named `{0}`; type names must be unique")]
    SameTypeName(String),
    /// A handler runs on the executor, but none was given.
    #[error(
        "handler `{0}` runs on the executor, but the bus has none (EventBusBuilder::executor)"
    )]
    NoExecutor(String),
    /// The executor refused to register a handler (its name is taken).
    #[error("registering an executor handler failed")]
    Register(#[from] RegisterError),
}

/// An in-transaction handler without its event type.
pub(crate) trait InTx<DB: sqlx::Database>: Send + Sync {
    fn call<'a>(&'a self, conn: &'a mut DB::Connection, event: &'a AnyEvent) -> HandlerFuture<'a>;
}

struct TypedInTx<F, E>(F, PhantomData<fn(E)>);

impl<DB, E, F> InTx<DB> for TypedInTx<F, E>
where
    DB: sqlx::Database,
    E: DomainEvent,
    F: for<'a> Fn(&'a mut DB::Connection, &'a Event<E>) -> HandlerFuture<'a> + Send + Sync,
{
    fn call<'a>(&'a self, conn: &'a mut DB::Connection, event: &'a AnyEvent) -> HandlerFuture<'a> {
        match event.downcast_ref::<Event<E>>() {
            Some(event) => (self.0)(conn, event),
            None => Box::pin(std::future::ready(Err(mismatch::<E>()))),
        }
    }
}

/// An after-commit (or executor) handler without its event type.
pub(crate) trait AfterCommit: Send + Sync {
    fn call(&self, event: AnyEvent) -> BoxFuture<'static, Result<(), HandlerError>>;
}

struct TypedAfter<F, E>(F, PhantomData<fn(E)>);

impl<E, F, Fut> AfterCommit for TypedAfter<F, E>
where
    E: DomainEvent,
    F: Fn(Arc<Event<E>>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, event: AnyEvent) -> BoxFuture<'static, Result<(), HandlerError>> {
        match event.downcast::<Event<E>>() {
            Ok(event) => Box::pin((self.0)(event)),
            Err(_) => Box::pin(std::future::ready(Err(mismatch::<E>()))),
        }
    }
}

/// Registries are keyed by the Rust type, so this does not happen; an
/// error rather than a panic all the same.
fn mismatch<E: DomainEvent>() -> HandlerError {
    HandlerError::permanent(format!(
        "a handler of `{}` got an event of another Rust type",
        E::TYPE
    ))
}

/// A durable handler without its event type: decodes the stored event.
trait Durable<DB: sqlx::Database>: Send + Sync {
    fn call<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: &'a StoredEvent,
    ) -> HandlerFuture<'a>;
}

/// A plain durable handler without its event type: decodes the stored
/// event; runs outside any transaction.
trait Plain: Send + Sync {
    fn call<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a>;
}

struct DurableEntry<DB: sqlx::Database> {
    name: String,
    handler: DurableKind<DB>,
}

enum DurableKind<DB: sqlx::Database> {
    /// [`EventBusBuilder::durable`]: outside any transaction.
    Plain(Arc<dyn Plain>),
    /// [`EventBusBuilder::durable_in_transaction`].
    InTransaction(Arc<dyn Durable<DB>>),
}

/// A stored event as its typed form; a payload that does not decode is a
/// permanent error.
fn decode<E: DomainEvent>(stored: &StoredEvent) -> Result<Event<E>, HandlerError> {
    let data: E = serde_json::from_slice(&stored.payload).map_err(|e| {
        HandlerError::permanent(format!(
            "the payload of event {} does not decode as `{}`",
            stored.seq,
            E::TYPE
        ))
        .with_source(e)
    })?;
    Ok(Event {
        id: stored.id,
        source: Source::new(stored.source_type.clone(), stored.source_id.clone()),
        seq: Some(stored.seq),
        data,
    })
}

struct DurableFn<F, E>(F, PhantomData<fn(E)>);

impl<E, F, Fut> Plain for DurableFn<F, E>
where
    E: DomainEvent,
    F: Fn(Arc<Event<E>>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a> {
        match decode::<E>(event) {
            Ok(event) => Box::pin((self.0)(Arc::new(event))),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

struct DurableInTx<F, E>(F, PhantomData<fn(E)>);

impl<DB, E, F> Durable<DB> for DurableInTx<F, E>
where
    DB: sqlx::Database,
    E: DomainEvent,
    F: for<'a> Fn(&'a mut DB::Connection, &'a Event<E>) -> HandlerFuture<'a> + Send + Sync,
{
    fn call<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: &'a StoredEvent,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let event = decode::<E>(event)?;
            (self.0)(conn, &event).await
        })
    }
}

/// The durable handlers by event type, shared by both halves of the
/// bus's forwarder.
type DurableHandlers<DB> = Arc<HashMap<&'static str, Vec<DurableEntry<DB>>>>;

/// Runs an event's plain durable handlers, outside any transaction.
struct Outside<DB: sqlx::Database> {
    durable: DurableHandlers<DB>,
    /// Per sequence number, the handlers that succeeded on an attempt
    /// that failed in a later handler, so a retry skips them.
    done: Mutex<HashMap<i64, HashSet<usize>>>,
}

impl<DB: EventDatabase> OutsideWork for Outside<DB> {
    fn wants(&self, event: &StoredEvent) -> bool {
        self.durable
            .get(event.event_type.as_str())
            .is_some_and(|hs| {
                hs.iter()
                    .any(|h| matches!(h.handler, DurableKind::Plain(_)))
            })
    }

    fn run<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a> {
        Box::pin(async move {
            let Some(handlers) = self.durable.get(event.event_type.as_str()) else {
                return Ok(());
            };
            let done_before = {
                let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
                // Events before this one are settled (delivered, skipped, or
                // the forwarder stopped and restarts from scratch).
                done.retain(|seq, _| *seq >= event.seq);
                done.get(&event.seq).cloned().unwrap_or_default()
            };
            for (i, entry) in handlers.iter().enumerate() {
                let DurableKind::Plain(handler) = &entry.handler else {
                    continue;
                };
                if done_before.contains(&i) {
                    continue;
                }
                guarded(handler.call(event))
                    .await
                    .map_err(|e| named(&entry.name, e))?;
                let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
                done.entry(event.seq).or_default().insert(i);
            }
            self.done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&event.seq);
            Ok(())
        })
    }
}

/// Runs an event's `durable_in_transaction` handlers in the forwarder's
/// transaction.
struct InTransaction<DB: sqlx::Database> {
    durable: DurableHandlers<DB>,
}

impl<DB: EventDatabase> TransactionalHandler<DB> for InTransaction<DB> {
    fn wants(&self, event: &StoredEvent) -> bool {
        self.durable
            .get(event.event_type.as_str())
            .is_some_and(|hs| {
                hs.iter()
                    .any(|h| matches!(h.handler, DurableKind::InTransaction(_)))
            })
    }

    fn handle<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: &'a StoredEvent,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let Some(handlers) = self.durable.get(event.event_type.as_str()) else {
                return Ok(());
            };
            for entry in handlers {
                if let DurableKind::InTransaction(handler) = &entry.handler {
                    guarded(handler.call(&mut *conn, event))
                        .await
                        .map_err(|e| named(&entry.name, e))?;
                }
            }
            Ok(())
        })
    }
}

/// `error` of durable handler `name`.
fn named(name: &str, error: HandlerError) -> HandlerError {
    let mut named = HandlerError::new(error.kind, format!("durable handler `{name}` failed"));
    named.retry_after = error.retry_after;
    named.with_source(error)
}
