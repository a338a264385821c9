//! The forwarder: pushes stored events, in sequence order, to a handler or
//! a sink, and keeps its offset in the event store.
//!
//! # Guarantees
//!
//! * **Order.** Events go out in sequence order. A handler gets one event
//!   at a time; a sink gets *waves*, runs of consecutive events with no
//!   source (key) twice, and the next wave only after every event of this
//!   one is accepted or given up on. Events of one source therefore reach
//!   the sink in order; events of different sources within a wave may be
//!   delivered concurrently.
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
//!   ([`ForwarderConfig::batch_size`]) is delivered again.
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
//!   [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) for a whole
//!   call costs no attempts: the forwarder pauses with capped backoff and
//!   probes with one event until the sink takes it, logging once when the
//!   sink goes down and once when it is back. In a call where nothing was
//!   accepted, the other refusals (a permanent one) still count. The same
//!   holds for the database.
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
//!     ) -> ferry_core::BoxFuture<'a, Result<(), HandlerError>> {
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
mod sink;
mod stats;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{error_chain, BoxFuture, Message, Sink, SinkError, SinkErrorKind};
use ferry_relay::Health;
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
        let Some(mut offset) = self.load_offset(run).await else {
            return Ok(());
        };
        let mut saved = offset;
        self.stats.set_offset(offset);
        tracing::info!(
            forwarder = name,
            offset,
            target = self.target_name(),
            on_failure = self.config.on_failure.as_str(),
            "forwarder started"
        );
        let result = loop {
            if run.shutdown.is_cancelled() {
                break Ok(());
            }
            if let Some(pause) = run.store.pause_left() {
                run.sleep(pause).await;
                continue;
            }
            let query = EventQuery {
                offset,
                limit: self.config.batch_size,
                ..EventQuery::default()
            };
            let page = match self.db.read_events(&query).await {
                Ok(page) => {
                    run.store.succeeded();
                    page
                }
                Err(e) if is_decode_error(&e) => match self.read_up_to_bad_row(offset).await {
                    // Deliver the events before the bad row first.
                    Ok(events) if !events.is_empty() => EventPage {
                        next_offset: events[events.len() - 1].seq,
                        events,
                    },
                    Ok(_) => {
                        let e = ForwarderError::Undecodable {
                            forwarder: name.to_owned(),
                            after: offset,
                            source: e,
                        };
                        tracing::error!(forwarder = name, after = offset, error = %error_chain(&e),
                            "forwarder stopped at an event store row it cannot decode");
                        break Err(e);
                    }
                    Err(e) => {
                        run.store
                            .failed(&format!("reading events failed: {}", error_chain(&e)));
                        continue;
                    }
                },
                Err(e) => {
                    run.store
                        .failed(&format!("reading events failed: {}", error_chain(&e)));
                    continue;
                }
            };
            self.stats.set_head(page.next_offset);
            if page.events.len() as u64 >= u64::from(self.config.batch_size) {
                if let Ok(head) = self.db.event_head().await {
                    self.stats.set_head(head);
                }
            }
            if page.events.is_empty() {
                offset = offset.max(page.next_offset);
                self.stats.set_offset(offset);
                saved = self.save(run, offset, saved).await;
                if run.shutdown.is_cancelled() {
                    continue;
                }
                ForwarderStats::add(&self.stats.idle, 1);
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = run.shutdown.cancelled() => {}
                }
                continue;
            }
            let end = match &self.target {
                Target::Handler(handler) => {
                    self.to_handler_page(run, &**handler, &page.events).await
                }
                Target::Sink(sink) => self.to_sink_page(run, &**sink, &page.events).await,
                Target::Transactional(tx) => {
                    self.to_transactional_page(run, &**tx, &page.events).await
                }
            };
            if end.done > 0 {
                offset = offset.max(page.events[end.done - 1].seq);
            }
            if let Some(through) = end.saved {
                // What the store holds, even when another instance of this
                // name or a COMMIT whose answer we lost put it there.
                saved = saved.max(through);
                offset = offset.max(through);
            }
            if end.done == page.events.len() && matches!(end.how, How::Continue) {
                offset = offset.max(page.next_offset);
            }
            self.stats.set_offset(offset);
            saved = self.save(run, offset, saved).await;
            match end.how {
                How::Continue => {}
                How::Interrupted => break Ok(()),
                How::Stop {
                    at,
                    attempts,
                    error,
                } => {
                    let event = &page.events[at];
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
                    break Err(e);
                }
            }
        };
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

    async fn to_handler_page(
        &self,
        run: &Run,
        handler: &dyn EventHandler,
        events: &[StoredEvent],
    ) -> PageEnd {
        for (done, event) in events.iter().enumerate() {
            if run.shutdown.is_cancelled() {
                return PageEnd::interrupted(done);
            }
            if !handler.wants(event) {
                continue;
            }
            let settled = self
                .settle(run, event, 0, None, || {
                    Box::pin(async move { Ok(guarded(handler.handle(event)).await) })
                })
                .await;
            match settled {
                Settled::Delivered => ForwarderStats::add(&self.stats.delivered, 1),
                Settled::Skipped => {}
                Settled::Stop { attempts, error } => {
                    return PageEnd::stop(done, done, attempts, error)
                }
                Settled::Interrupted => return PageEnd::interrupted(done),
            }
        }
        PageEnd::all(events.len())
    }

    /// For each event: its work outside the transaction first, if any
    /// (settled like a handler's), then its transactional work, batched
    /// with the following events that have none outside.
    async fn to_transactional_page(
        &self,
        run: &Run,
        tx: &dyn Transact,
        events: &[StoredEvent],
    ) -> PageEnd {
        let name = self.config.name.as_str();
        let mut done = 0;
        let mut saved: Option<i64> = None;
        let note = |saved: &mut Option<i64>, seq: i64| {
            *saved = Some(saved.map_or(seq, |s| s.max(seq)));
        };
        // The event whose outside work succeeded.
        let mut outside_done = None;
        while done < events.len() {
            if run.shutdown.is_cancelled() {
                return PageEnd {
                    saved,
                    ..PageEnd::interrupted(done)
                };
            }
            if let Some(pause) = run.store.pause_left() {
                run.sleep(pause).await;
                continue;
            }
            let event = &events[done];
            if outside_done != Some(done) && tx.outside(event).is_some() {
                let settled = self
                    .settle(run, event, 0, None, || {
                        Box::pin(async move {
                            Ok(match tx.outside(event) {
                                Some(work) => guarded(work).await,
                                None => Ok(()),
                            })
                        })
                    })
                    .await;
                match settled {
                    Settled::Delivered => {
                        outside_done = Some(done);
                        if !tx.wants(event) {
                            ForwarderStats::add(&self.stats.delivered, 1);
                        }
                    }
                    Settled::Skipped => {
                        done += 1;
                        continue;
                    }
                    Settled::Stop { attempts, error } => {
                        return PageEnd {
                            saved,
                            ..PageEnd::stop(done, done, attempts, error)
                        }
                    }
                    Settled::Interrupted => {
                        return PageEnd {
                            saved,
                            ..PageEnd::interrupted(done)
                        }
                    }
                }
            }
            let mut end = done + 1;
            while end < events.len() && tx.outside(&events[end]).is_none() {
                end += 1;
            }
            let Some(batch) = run
                .within_grace(&self.config, tx.batch(name, &events[done..end]))
                .await
            else {
                return PageEnd {
                    saved,
                    ..PageEnd::interrupted(done)
                };
            };
            let Batch {
                handled,
                wanted,
                failure,
                stored,
            } = match batch {
                Ok(result) => {
                    run.store.succeeded();
                    result
                }
                Err(e) => {
                    run.store.failed(&format!(
                        "a transaction of the forwarder failed: {}",
                        error_chain(&e)
                    ));
                    continue;
                }
            };
            ForwarderStats::add(&self.stats.delivered, wanted as u64);
            done += handled;
            if let Some(stored) = stored {
                note(&mut saved, stored);
            }
            let Some(error) = failure else { continue };
            let event = &events[done];
            let settled = self
                .settle(run, event, 1, Some(error), || tx.single(name, event))
                .await;
            match settled {
                Settled::Delivered => {
                    ForwarderStats::add(&self.stats.delivered, 1);
                    note(&mut saved, event.seq);
                    done += 1;
                }
                Settled::Skipped => done += 1,
                Settled::Stop { attempts, error } => {
                    return PageEnd {
                        saved,
                        ..PageEnd::stop(done, done, attempts, error)
                    }
                }
                Settled::Interrupted => {
                    return PageEnd {
                        saved,
                        ..PageEnd::interrupted(done)
                    }
                }
            }
        }
        PageEnd {
            saved,
            ..PageEnd::all(done)
        }
    }

    async fn to_sink_page(&self, run: &Run, sink: &dyn Sink, events: &[StoredEvent]) -> PageEnd {
        let messages: Vec<Message> = events.iter().map(event_message).collect();
        let per_call = sink.max_per_call().unwrap_or(usize::MAX).max(1);
        let mut start = 0;
        while start < events.len() {
            let end = sink::wave_end(&messages, start, per_call);
            let n = end - start;
            // Indexes into the wave of the events not yet accepted or given up on.
            let mut pending: Vec<usize> = (0..n).collect();
            let mut attempts = vec![0u32; n];
            let mut settled = vec![false; n];
            let prefix = |settled: &[bool]| start + settled.iter().take_while(|s| **s).count();
            while !pending.is_empty() {
                if run.shutdown.is_cancelled() {
                    return PageEnd::interrupted(prefix(&settled));
                }
                if let Some(pause) = run.sink.pause_left().or_else(|| run.store.pause_left()) {
                    run.sleep(pause).await;
                    continue;
                }
                // While the sink is down, probe it with one event.
                let sending = if run.sink.failures() > 0 {
                    1
                } else {
                    pending.len()
                };
                let call: Vec<Message> = pending[..sending]
                    .iter()
                    .map(|&i| messages[start + i].clone())
                    .collect();
                let Some(results) = run.within_grace(&self.config, sink.deliver(&call)).await
                else {
                    return PageEnd::interrupted(prefix(&settled));
                };
                // Down: nothing accepted and some refused as unavailable.
                // Those cost no attempt; the call's other refusals (a
                // permanent one, say) still count.
                let some_ok = results.iter().any(Result::is_ok);
                let down = results.iter().find_map(|r| match r {
                    Err(e) if e.kind == SinkErrorKind::Unavailable && !some_ok => {
                        Some(e.describe())
                    }
                    _ => None,
                });
                match &down {
                    Some(error) => {
                        ForwarderStats::add(&self.stats.sink_unavailable, 1);
                        run.sink.failed(error);
                    }
                    None => run.sink.succeeded(),
                }
                let mut results = results.into_iter();
                let mut retrying = Vec::new();
                let mut wait = Duration::ZERO;
                for &i in &pending[..sending] {
                    let result = results.next().unwrap_or_else(|| {
                        Err(SinkError::transient(format!(
                            "sink `{}` returned no result for this event",
                            sink.name()
                        )))
                    });
                    let error = match result {
                        Ok(()) => {
                            ForwarderStats::add(&self.stats.delivered, 1);
                            settled[i] = true;
                            continue;
                        }
                        Err(e) if down.is_some() && e.kind == SinkErrorKind::Unavailable => {
                            retrying.push(i);
                            continue;
                        }
                        Err(e) => e,
                    };
                    attempts[i] += 1;
                    ForwarderStats::add(&self.stats.failed, 1);
                    let retry_after = error.retry_after;
                    let error = HandlerError::from(error);
                    let event = &events[start + i];
                    if error.is_transient() && self.config.retry.allows_another(attempts[i]) {
                        self.log_attempt(event, attempts[i], &error);
                        let delay = self.config.retry.delay(attempts[i]);
                        let asked = retry_after
                            .unwrap_or_default()
                            .min(self.config.retry.max_backoff);
                        wait = wait.max(delay.max(asked));
                        retrying.push(i);
                        continue;
                    }
                    match self.give_up(run, event, attempts[i], error).await {
                        Settled::Skipped => settled[i] = true,
                        Settled::Stop { attempts, error } => {
                            return PageEnd::stop(prefix(&settled), start + i, attempts, error)
                        }
                        Settled::Interrupted | Settled::Delivered => {
                            return PageEnd::interrupted(prefix(&settled))
                        }
                    }
                }
                retrying.extend_from_slice(&pending[sending..]);
                pending = retrying;
                if !wait.is_zero() && !run.sleep(wait).await {
                    return PageEnd::interrupted(prefix(&settled));
                }
            }
            start = end;
        }
        PageEnd::all(events.len())
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
                if !error.is_transient() || !self.config.retry.allows_another(attempts) {
                    return self.give_up(run, event, attempts, error).await;
                }
                self.log_attempt(event, attempts, &error);
                if !run.sleep(self.config.retry.delay(attempts)).await {
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

/// How a page ended: `done` events (a prefix) are delivered or skipped;
/// `saved` is the offset a transactional target committed, if any.
struct PageEnd {
    done: usize,
    saved: Option<i64>,
    how: How,
}

enum How {
    Continue,
    Interrupted,
    /// Gave up on the page's event `at` (at or after `done`).
    Stop {
        at: usize,
        attempts: u32,
        error: HandlerError,
    },
}

impl PageEnd {
    fn all(done: usize) -> Self {
        Self {
            done,
            saved: None,
            how: How::Continue,
        }
    }
    fn interrupted(done: usize) -> Self {
        Self {
            done,
            saved: None,
            how: How::Interrupted,
        }
    }
    fn stop(done: usize, at: usize, attempts: u32, error: HandlerError) -> Self {
        Self {
            done,
            saved: None,
            how: How::Stop {
                at,
                attempts,
                error,
            },
        }
    }
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

/// A transactional target, without its database type.
trait Transact: Send + Sync {
    /// Whether `event` has work to do in a transaction.
    fn wants(&self, event: &StoredEvent) -> bool;

    /// The part of `event`'s handling that runs before its transaction and
    /// outside any (at least once), if it has one.
    fn outside<'a>(
        &'a self,
        event: &'a StoredEvent,
    ) -> Option<BoxFuture<'a, Result<(), HandlerError>>>;

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
struct Batch {
    /// Events handled or passed by, from the first.
    handled: usize,
    /// Of those, the ones the handler wanted and handled here.
    wanted: usize,
    /// The error of the event after them, if one failed.
    failure: Option<HandlerError>,
    /// The offset stored when the transaction ended, if one was opened:
    /// as it found it (locked), or as it committed it.
    stored: Option<i64>,
}

/// Work a transactional target does outside the transaction, before it
/// (the bus's plain durable handlers).
pub(crate) trait OutsideWork: Send + Sync + 'static {
    /// Whether `event` has such work.
    fn wants(&self, event: &StoredEvent) -> bool;
    /// Does it; at least once.
    fn run<'a>(&'a self, event: &'a StoredEvent) -> BoxFuture<'a, Result<(), HandlerError>>;
}

struct InTransaction<DB: EventDatabase> {
    pool: sqlx::Pool<DB>,
    handler: Arc<dyn TransactionalHandler<DB>>,
    outside: Option<Arc<dyn OutsideWork>>,
}

impl<DB: EventDatabase> Transact for InTransaction<DB> {
    fn wants(&self, event: &StoredEvent) -> bool {
        self.handler.wants(event)
    }

    fn outside<'a>(
        &'a self,
        event: &'a StoredEvent,
    ) -> Option<BoxFuture<'a, Result<(), HandlerError>>> {
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

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes the forwarder on the event store's NOTIFY. Logs once per change
/// of state; polling covers the gaps.
async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>, forwarder: String) {
    use ferry_store::event_store::postgres::CHANNEL;
    let mut healthy = true;
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            if !healthy {
                tracing::info!(forwarder = %forwarder, channel = CHANNEL, "listening for event notifications again");
                healthy = true;
            }
            // Anything committed while we were not listening.
            wake.notify_one();
            loop {
                // `None`: the connection was lost and is re-established on
                // the next call; a wake-up covers what committed meanwhile.
                let _ = listener.try_recv().await?;
                wake.notify_one();
            }
        }
        .await;
        if let Err(error) = result {
            if healthy {
                tracing::warn!(forwarder = %forwarder, channel = CHANNEL, error = %error,
                    "event notifications unavailable; relying on polling");
                healthy = false;
            }
            wake.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
