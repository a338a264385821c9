//! The forwarder: pushes stored events, in sequence order, to a handler or
//! a sink, and keeps its offset in the event store.
//!
//! # Guarantees
//!
//! * **Order.** Events go out in sequence order per source. A handler
//!   gets one event at a time, in sequence order. A sink gets them through
//!   the delivery engine ([`ferry_delivery`], the relay's): in *waves*
//!   holding at most one event per source (the key `<source_type>:<source_id>`;
//!   an event without a source is a key of its own), the next wave only
//!   after this one is settled. Events of one source therefore reach the
//!   sink in order; events of different sources may be delivered
//!   concurrently, and an event waiting for a retry holds back its own
//!   source only: the others go on (see [`WINDOW_PAGES`]).
//! * **Offset.** The forwarder's offset (`ferry_event_offsets`, under its
//!   name) is the sequence number up to which every event is delivered or
//!   skipped. It only moves forward, is saved after each page of events
//!   (the next page waits until the save succeeded), and is where the
//!   forwarder resumes after a restart. Events at or below
//!   it are never delivered again by that forwarder (they are recognised by
//!   their sequence number), even after an offset is saved twice or a page
//!   read again.
//! * **At least once** to an [`EventHandler`] and to a sink: a crash after
//!   delivering events and before saving the offset delivers them again on
//!   restart, with the same event id. Handlers and receivers must be
//!   idempotent by event id (the sink's receivers get it as `ce-id`,
//!   `Nats-Msg-Id`, `Idempotency-Key`). At most one page
//!   ([`ForwarderConfig::batch_size`]) is delivered again to a handler; to
//!   a sink, at most [`WINDOW_PAGES`] pages (the events other sources
//!   delivered past one waiting for a retry).
//! * **Exactly once** for the database writes of a [`TransactionalHandler`]:
//!   they commit in the transaction that saves the offset, and that
//!   transaction first takes the stored offset
//!   ([`EventDatabase::lock_offset`]) and passes by the events at or below
//!   it, so a COMMIT whose answer was lost, or a second forwarder of the
//!   same name, does not apply them again.
//! * **Failures.** A failing event is retried with
//!   [`ForwarderConfig::retry`] (backoff with jitter, capped, up to
//!   `max_attempts`); a permanent error is not retried. Then
//!   [`OnFailure::Stop`] stops the forwarder with
//!   [`ForwarderError::Stopped`], its offset before the event, so a restart
//!   tries it again; [`OnFailure::Skip`] records it in `ferry_event_failures`
//!   ([`ferry_store::Database::event_failures`]) and goes on. Attempts are
//!   counted in memory: a restart gives an event fresh attempts.
//! * **Unavailable sink.** A sink that answers
//!   [`Unavailable`](ferry_core::ErrorKind::Unavailable) for a whole call
//!   costs no attempts: the forwarder pauses with capped backoff and
//!   probes with 1, 2, 4 … 16 events, one per source, until the sink takes
//!   them, logging once when the sink goes down and once when it is back
//!   (the engine's rule, as for the relay). In a call where nothing was
//!   accepted, the other refusals (a permanent one) still count; an event
//!   refused as unavailable while others of its call were accepted is a
//!   transient failure of that event. The same pause holds for the database.
//! * **Undecodable rows.** A row that cannot be decoded is not an outage:
//!   the forwarder delivers the events before it and stops with
//!   [`ForwarderError::Undecodable`].
//! * **Wake-up.** On PostgreSQL the forwarder LISTENs on
//!   [`CHANNEL`](ferry_store::event_store::postgres::CHANNEL) and reads as
//!   soon as events commit; otherwise it polls every
//!   [`ForwarderConfig::poll_interval`] (and a forwarder built by an
//!   [`EventBus`](crate::unit_of_work::EventBus) is woken by the bus's units
//!   of work in the same process).
//! * **Shutdown.** When the token is cancelled the forwarder finishes the
//!   delivery in flight (for up to [`ForwarderConfig::shutdown_grace`]),
//!   saves its offset and returns.
//!
//! ```no_run
//! use ferry_events::forwarder::{
//!     handler_fn, Forwarder, ForwarderConfig, ForwarderError, HandlerError, OnFailure,
//!     TransactionalHandler,
//! };
//! use ferry_store::event_store::StoredEvent;
//! # use tokio_util::sync::CancellationToken;
//!
//! // At least once: idempotent by event id.
//! async fn billing(db: ferry_store::Database, shutdown: CancellationToken) -> Result<(), ForwarderError> {
//!     let config = ForwarderConfig {
//!         on_failure: OnFailure::Skip,
//!         ..ForwarderConfig::named("billing")
//!     };
//!     let handler = handler_fn(|event: StoredEvent| async move {
//!         if event.payload.is_empty() {
//!             return Err(HandlerError::permanent("empty payload"));
//!         }
//!         Ok(())
//!     });
//!     Forwarder::to_handler(&db, handler, config).run(shutdown).await
//! }
//!
//! // Exactly once for the writes: they commit with the offset.
//! struct Refunds;
//! impl TransactionalHandler<sqlx::Postgres> for Refunds {
//!     fn handle<'a>(
//!         &'a self,
//!         conn: &'a mut sqlx::PgConnection,
//!         event: &'a StoredEvent,
//!     ) -> ferry_core::HandlerFuture<'a> {
//!         Box::pin(async move {
//!             sqlx::query("INSERT INTO refunds (event_id) VALUES ($1)")
//!                 .bind(event.id)
//!                 .execute(conn)
//!                 .await?;
//!             Ok(())
//!         })
//!     }
//! }
//! # async fn refunds(pool: sqlx::PgPool, shutdown: CancellationToken) -> Result<(), ForwarderError> {
//! Forwarder::to_transactional(&pool, Refunds, ForwarderConfig::named("refunds"))
//!     .run(shutdown)
//!     .await
//! # }
//! ```

mod config;
mod handler;
mod listen;
mod pages;
mod sink;
mod stats;
mod to_sink;
mod trace;
mod transactional;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{error_chain, BoxFuture, Sink};
use ferry_delivery::{decide, Decision, Health};
use ferry_store::event_store::{EventPage, EventQuery, StoredEvent};
use ferry_store::{Database, StoreError};
use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ForwarderConfig, InvalidForwarderConfig, OnFailure};
pub use handler::{
    handler_fn, EventHandler, FnHandler, HandlerError, HandlerErrorKind, TransactionalHandler,
};
pub use sink::{event_message, SEQ_HEADER};
pub use stats::ForwarderStats;
pub use to_sink::WINDOW_PAGES;
pub(crate) use transactional::OutsideWork;

use listen::{listen, AbortOnDrop};
use transactional::{InTransaction, Transact};

use crate::EventDatabase;

/// Why a forwarder stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// Its configuration is invalid; fix it (no retry helps).
    #[error(transparent)]
    Config(#[from] InvalidForwarderConfig),
    /// It gave up on an event under [`OnFailure::Stop`]. Its offset stays
    /// before the event: restarting retries it (with fresh attempts); fix
    /// the handler or the receiver first, or run with [`OnFailure::Skip`].
    #[error(
        "forwarder `{forwarder}` stopped at event {seq} (id {event_id}, type `{event_type}`) \
         after {attempts} attempt(s); its offset stays at {offset}"
    )]
    Stopped {
        /// The forwarder's name.
        forwarder: String,
        /// The event's sequence number.
        seq: i64,
        /// The event's id.
        event_id: uuid::Uuid,
        /// The event's type.
        event_type: String,
        /// Attempts made.
        attempts: u32,
        /// The offset saved, below `seq`.
        offset: i64,
        /// The last attempt's error.
        #[source]
        error: HandlerError,
    },
    /// A row of the event store cannot be decoded (an `event_id` that is
    /// not a UUID, written by plain SQL, say): the forwarder delivered
    /// every event before it and stops, its offset at `after`. Retrying
    /// does not help until the row is repaired; see
    /// `docs/forwarder.md#a-row-that-cannot-be-read`.
    #[error(
        "forwarder `{forwarder}` stopped: the first event store row after seq {after} cannot be decoded"
    )]
    Undecodable {
        /// The forwarder's name.
        forwarder: String,
        /// Its offset: the bad row is the first one with a sequence
        /// number above it.
        after: i64,
        /// The decoding error.
        #[source]
        source: StoreError,
    },
    /// The forwarder's task panicked or was aborted (a bug).
    #[error("the task of forwarder `{forwarder}` failed")]
    Task {
        /// The forwarder's name.
        forwarder: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Where a forwarder delivers.
enum Target {
    Handler(Arc<dyn EventHandler>),
    Sink(Arc<dyn Sink>),
    Transactional(Box<dyn Transact>),
}

/// Delivers stored events to a handler or a sink; see the
/// [module docs](self) for the guarantees.
pub struct Forwarder {
    db: Database,
    target: Target,
    config: ForwarderConfig,
    stats: Arc<ForwarderStats>,
    wake: Arc<Notify>,
}

impl Forwarder {
    /// A forwarder from `db`'s event store to `handler` (at least once).
    pub fn to_handler(db: &Database, handler: impl EventHandler, config: ForwarderConfig) -> Self {
        Self::new(db.clone(), Target::Handler(Arc::new(handler)), config)
    }

    /// A forwarder from `db`'s event store to `sink` (a webhook, a broker):
    /// each event as [`event_message`] makes it (at least once).
    pub fn to_sink(db: &Database, sink: Arc<dyn Sink>, config: ForwarderConfig) -> Self {
        Self::new(db.clone(), Target::Sink(sink), config)
    }

    /// A forwarder from the event store in `pool` to `handler`, which
    /// writes in the transaction that also saves the offset (exactly once
    /// for those writes).
    pub fn to_transactional<DB: EventDatabase>(
        pool: &sqlx::Pool<DB>,
        handler: impl TransactionalHandler<DB>,
        config: ForwarderConfig,
    ) -> Self {
        let target = Target::Transactional(Box::new(InTransaction {
            pool: pool.clone(),
            handler: Arc::new(handler),
            outside: None,
        }));
        Self::new(DB::database(pool), target, config)
    }

    /// As [`Forwarder::to_transactional`], with `outside` run for an event
    /// before its transaction and outside any.
    pub(crate) fn to_transactional_with<DB: EventDatabase>(
        pool: &sqlx::Pool<DB>,
        handler: impl TransactionalHandler<DB>,
        outside: impl OutsideWork,
        config: ForwarderConfig,
    ) -> Self {
        let target = Target::Transactional(Box::new(InTransaction {
            pool: pool.clone(),
            handler: Arc::new(handler),
            outside: Some(Arc::new(outside)),
        }));
        Self::new(DB::database(pool), target, config)
    }

    fn new(db: Database, target: Target, config: ForwarderConfig) -> Self {
        Self {
            db,
            target,
            config,
            stats: Arc::default(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Also wakes up when `wake` is notified (the units of work of a bus
    /// in this process, say).
    pub(crate) fn woken_by(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its counters, offset and lag, readable while it runs.
    pub fn stats(&self) -> Arc<ForwarderStats> {
        self.stats.clone()
    }

    /// Runs it on a task of its own until `shutdown` is cancelled (or it
    /// stops on its own).
    pub fn spawn(self, shutdown: &CancellationToken) -> Running {
        let token = shutdown.child_token();
        Running {
            name: self.config.name.clone(),
            stats: self.stats(),
            token: token.clone(),
            handle: tokio::spawn(self.run(token)),
        }
    }

    /// Runs until `shutdown` is cancelled (then returns `Ok` once the
    /// delivery in flight is finished or abandoned and the offset saved),
    /// or until it gives up on an event under [`OnFailure::Stop`].
    ///
    /// An unreachable database is not an error: the forwarder pauses with
    /// backoff and tries again, logging once per change of state.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ForwarderError> {
        self.config.validate()?;
        let listener = match &self.db {
            Database::Postgres(pool) => Some(AbortOnDrop(tokio::spawn(listen(
                pool.clone(),
                self.wake.clone(),
                self.config.name.clone(),
            )))),
            _ => None,
        };
        let run = Run {
            shutdown,
            store: Health::new("database", &self.config.name, &self.config.backoff)
                .with_words("unreachable", "reachable"),
            sink: Health::new("sink", &self.config.name, &self.config.backoff),
        };
        let result = self.forward(&run).await;
        drop(listener);
        result
    }

    async fn forward(&self, run: &Run) -> Result<(), ForwarderError> {
        let name = self.config.name.as_str();
        let Some(offset) = self.load_offset(run).await else {
            return Ok(());
        };
        self.stats.set_offset(offset);
        tracing::info!(
            forwarder = name,
            offset,
            target = self.target_name(),
            on_failure = self.config.on_failure.as_str(),
            "forwarder started"
        );
        let mut at = Position {
            offset,
            saved: offset,
        };
        let result = match &self.target {
            Target::Sink(sink) => self.deliver_to_sink(run, &**sink, &mut at).await,
            _ => self.page_by_page(run, &mut at).await,
        };
        if let Target::Sink(sink) = &self.target {
            if let Err(e) = sink.shutdown().await {
                tracing::warn!(forwarder = name, error = %e.describe(), "flushing the sink at shutdown failed");
            }
        }
        let Position { offset, saved } = at;
        if offset > saved {
            // One last try at shutdown; what is not saved is delivered again.
            if let Err(e) = self.db.save_offset(name, offset).await {
                tracing::warn!(forwarder = name, offset, error = %error_chain(&e),
                    "saving the offset at shutdown failed; the events after the saved one will be delivered again");
            }
        }
        tracing::info!(
            forwarder = name,
            offset,
            delivered = self.stats.delivered(),
            skipped = self.stats.skipped(),
            "forwarder stopped"
        );
        result
    }

    /// Reads the page after `from`, with the read's failures handled: an
    /// unreachable database pauses (`None`: try again), a row that does
    /// not decode gives the events before it, or [`ForwarderError::Undecodable`]
    /// when it is the very next one.
    async fn read_page(&self, run: &Run, from: i64) -> Option<Result<EventPage, ForwarderError>> {
        let name = self.config.name.as_str();
        let query = EventQuery {
            offset: from,
            limit: self.config.batch_size,
            ..EventQuery::default()
        };
        let page = match self.db.read_events(&query).await {
            Ok(page) => {
                run.store.succeeded();
                page
            }
            Err(e) if is_decode_error(&e) => match self.read_up_to_bad_row(from).await {
                // Deliver the events before the bad row first.
                Ok(events) if !events.is_empty() => EventPage {
                    next_offset: events[events.len() - 1].seq,
                    events,
                },
                Ok(_) => {
                    let e = ForwarderError::Undecodable {
                        forwarder: name.to_owned(),
                        after: from,
                        source: e,
                    };
                    tracing::error!(forwarder = name, after = from, error = %error_chain(&e),
                        "forwarder stopped at an event store row it cannot decode");
                    return Some(Err(e));
                }
                Err(e) => {
                    run.store
                        .failed(&format!("reading events failed: {}", error_chain(&e)));
                    return None;
                }
            },
            Err(e) => {
                run.store
                    .failed(&format!("reading events failed: {}", error_chain(&e)));
                return None;
            }
        };
        self.stats.set_head(page.next_offset);
        if page.events.len() as u64 >= u64::from(self.config.batch_size) {
            if let Ok(head) = self.db.event_head().await {
                self.stats.set_head(head);
            }
        }
        Some(Ok(page))
    }

    /// Waits for new events: a wake-up, the poll interval, or shutdown.
    async fn idle(&self, run: &Run, longest: Duration) {
        ForwarderStats::add(&self.stats.idle, 1);
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(longest.min(self.config.poll_interval)) => {}
            _ = run.shutdown.cancelled() => {}
        }
    }

    /// The stop error for the event it gave up on, logged.
    fn stopped(
        &self,
        event: &StoredEvent,
        attempts: u32,
        offset: i64,
        error: HandlerError,
    ) -> ForwarderError {
        let name = self.config.name.as_str();
        let e = ForwarderError::Stopped {
            forwarder: name.to_owned(),
            seq: event.seq,
            event_id: event.id,
            event_type: event.event_type.clone(),
            attempts,
            offset,
            error,
        };
        tracing::error!(forwarder = name, seq = event.seq, event_id = %event.id,
            attempts, offset, error = %error_chain(&e), "forwarder stopped at an event it gave up on");
        e
    }

    fn target_name(&self) -> &str {
        match &self.target {
            Target::Handler(_) => "handler",
            Target::Sink(sink) => sink.name(),
            Target::Transactional(_) => "transactional handler",
        }
    }

    /// The stored offset, retrying while the database is unreachable;
    /// `None` when shut down first.
    async fn load_offset(&self, run: &Run) -> Option<i64> {
        loop {
            match self.db.load_offset(&self.config.name).await {
                Ok(offset) => {
                    run.store.succeeded();
                    return Some(offset);
                }
                Err(e) => {
                    run.store
                        .failed(&format!("loading the offset failed: {}", error_chain(&e)));
                    if !run.pause(&run.store).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Saves `offset` if it is past `saved`; returns what is saved now.
    /// A failure is retried with the database's backoff before anything
    /// else is delivered, so that at most one page is ever delivered
    /// again; only shutdown ends the retries (then `saved` is returned and
    /// [`Forwarder::forward`] makes one last try).
    async fn save(&self, run: &Run, offset: i64, saved: i64) -> i64 {
        if offset <= saved {
            return saved;
        }
        loop {
            match self.db.save_offset(&self.config.name, offset).await {
                Ok(now) => {
                    run.store.succeeded();
                    return now;
                }
                Err(e) => {
                    run.store
                        .failed(&format!("saving the offset failed: {}", error_chain(&e)));
                    if !run.pause(&run.store).await {
                        return saved;
                    }
                }
            }
        }
    }

    /// After a page failed to decode: the events after `offset` read one
    /// at a time, up to the first row that does not decode (or a page's
    /// worth). Empty when the very next row is the bad one.
    async fn read_up_to_bad_row(&self, offset: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events: Vec<StoredEvent> = Vec::new();
        while events.len() < self.config.batch_size as usize {
            let query = EventQuery {
                offset: events.last().map_or(offset, |e| e.seq),
                limit: 1,
                ..EventQuery::default()
            };
            match self.db.read_events(&query).await {
                Ok(page) if page.events.is_empty() => break,
                Ok(page) => events.extend(page.events),
                Err(e) if is_decode_error(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(events)
    }

    /// Makes attempts at one event until it is delivered or given up on.
    /// `attempts` were made already, the last failing with `last`. An
    /// attempt's outer error is the database's, not the handler's: it
    /// pauses without counting.
    async fn settle<'a>(
        &self,
        run: &Run,
        event: &StoredEvent,
        mut attempts: u32,
        mut last: Option<HandlerError>,
        attempt: impl Fn() -> BoxFuture<'a, Result<Result<(), HandlerError>, StoreError>>,
    ) -> Settled {
        loop {
            if let Some(error) = last.take() {
                ForwarderStats::add(&self.stats.failed, 1);
                let decision = decide(error.kind, attempts, error.retry_after, &self.config.retry);
                let Decision::Retry { after } = decision else {
                    return self.give_up(run, event, attempts, error).await;
                };
                self.log_attempt(event, attempts, &error);
                if !run.sleep(after).await {
                    return Settled::Interrupted;
                }
            }
            if run.shutdown.is_cancelled() {
                return Settled::Interrupted;
            }
            match run.within_grace(&self.config, attempt()).await {
                None => return Settled::Interrupted,
                Some(Err(e)) => {
                    run.store.failed(&format!(
                        "a transaction of the forwarder failed: {}",
                        error_chain(&e)
                    ));
                    if !run.pause(&run.store).await {
                        return Settled::Interrupted;
                    }
                }
                Some(Ok(Ok(()))) => {
                    run.store.succeeded();
                    return Settled::Delivered;
                }
                Some(Ok(Err(error))) => {
                    attempts += 1;
                    last = Some(error);
                }
            }
        }
    }

    fn log_attempt(&self, event: &StoredEvent, attempts: u32, error: &HandlerError) {
        if attempts == 1 {
            tracing::warn!(forwarder = %self.config.name, seq = event.seq, event_id = %event.id,
                error = %error.describe(), "delivering an event failed; retrying with backoff");
        } else {
            tracing::debug!(forwarder = %self.config.name, seq = event.seq, attempts,
                error = %error.describe(), "delivering an event failed again");
        }
    }

    /// The event's attempts are spent: stop, or record it and skip it.
    async fn give_up(
        &self,
        run: &Run,
        event: &StoredEvent,
        attempts: u32,
        error: HandlerError,
    ) -> Settled {
        if self.config.on_failure == OnFailure::Stop {
            return Settled::Stop { attempts, error };
        }
        let name = self.config.name.as_str();
        let described = error.describe();
        let attempts_i32 = i32::try_from(attempts).unwrap_or(i32::MAX);
        loop {
            match self
                .db
                .record_event_failure(name, event, attempts_i32, &described)
                .await
            {
                Ok(()) => {
                    run.store.succeeded();
                    break;
                }
                Err(e) => {
                    // Never step over an event without a record of it.
                    run.store.failed(&format!(
                        "recording a failed event failed: {}",
                        error_chain(&e)
                    ));
                    if !run.pause(&run.store).await {
                        return Settled::Interrupted;
                    }
                }
            }
        }
        ForwarderStats::add(&self.stats.skipped, 1);
        tracing::warn!(forwarder = name, seq = event.seq, event_id = %event.id, event_type = %event.event_type,
            attempts, error = %described, "event skipped and recorded in ferry_event_failures");
        Settled::Skipped
    }
}

/// A forwarder running on its own task ([`Forwarder::spawn`]).
pub struct Running {
    name: String,
    token: CancellationToken,
    handle: JoinHandle<Result<(), ForwarderError>>,
    /// Its counters.
    pub stats: Arc<ForwarderStats>,
}

impl Running {
    /// Whether it has stopped (on shutdown, or on its own).
    pub fn has_ended(&self) -> bool {
        self.handle.is_finished()
    }

    /// Asks it to stop and waits until it has.
    pub async fn stop(self) -> Result<(), ForwarderError> {
        self.token.cancel();
        self.finished().await
    }

    /// Waits until it stops: on shutdown, or on its own (under
    /// [`OnFailure::Stop`]).
    pub async fn finished(self) -> Result<(), ForwarderError> {
        match self.handle.await {
            Ok(result) => result,
            Err(source) => Err(ForwarderError::Task {
                forwarder: self.name,
                source,
            }),
        }
    }
}

/// Where the forwarder is: every event up to `offset` is delivered or
/// skipped; `saved` is what the store holds.
struct Position {
    offset: i64,
    saved: i64,
}

/// One run's shutdown token and the health of its dependencies.
struct Run {
    shutdown: CancellationToken,
    store: Health,
    sink: Health,
}

impl Run {
    /// Sleeps for `d`; false when shutdown came first.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }

    /// Sleeps for `health`'s pause; false when shutdown came first.
    async fn pause(&self, health: &Health) -> bool {
        self.sleep(health.pause_left().unwrap_or_default()).await
    }

    /// `work`'s output, or `None` when shutdown was requested and the
    /// grace ran out first.
    async fn within_grace<T>(
        &self,
        config: &ForwarderConfig,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let grace = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(config.shutdown_grace).await;
        };
        tokio::select! {
            out = work => Some(out),
            _ = grace => {
                tracing::warn!(forwarder = %config.name, "shutdown grace expired; abandoning a delivery in flight (it will be delivered again)");
                None
            }
        }
    }
}

/// How one event ended.
enum Settled {
    Delivered,
    Skipped,
    Stop { attempts: u32, error: HandlerError },
    Interrupted,
}

/// Whether `e` says a row could not be decoded (as opposed to the
/// database being unreachable): reading it again will fail again.
fn is_decode_error(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Database(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_))
    )
}

/// A handler's result, with a panic turned into a permanent error.
pub(crate) async fn guarded(
    work: impl std::future::Future<Output = Result<(), HandlerError>>,
) -> Result<(), HandlerError> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(HandlerError::permanent(format!(
                "the handler panicked: {what}"
            )))
        }
    }
}
