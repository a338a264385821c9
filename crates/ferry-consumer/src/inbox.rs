//! The inbox: apply each message once, although brokers deliver at least
//! once.
//!
//! An [`InboxHandler`] does its work inside a database transaction it is
//! given. [`Inbox`] wraps it into a [`Handler`]: for each message it begins
//! a transaction on its pool, records (consumer, message id) in Ferry's
//! inbox table ([`InboxDatabase::record`]), skips the handler when the id
//! was already recorded by a committed transaction, else runs it, then
//! commits the inbox row and the handler's writes together. A redelivered
//! message is therefore applied once in effect; a handler error or a crash
//! rolls both back, so the retry applies it.
//!
//! The consumer name is the delivery's consumer group unless set with
//! [`Inbox::consumer`]: each group applies a message once. Rows are kept
//! for a window ([`prune`]); keep it longer than any redelivery can come
//! (broker retention, the relay's retries), or an old duplicate is applied
//! again.
//!
//! Generic over the database: SQLite, PostgreSQL and MariaDB/MySQL. The
//! inbox table comes with Ferry's migrations (`ferry migrate`).

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use ferry_core::{HandlerFuture, Message};
pub use ferry_store::inbox::{InboxDatabase, Recorded};
use ferry_store::StoreError;
use tracing::Instrument;

use crate::{Context, Handler, HandlerError};

/// The transaction an [`InboxHandler`] writes in.
pub type Tx<DB> = sqlx::Transaction<'static, DB>;

/// A handler that applies a message inside a database transaction.
///
/// Everything it writes through `tx` commits together with the inbox row,
/// or not at all. It must not commit or roll back `tx` itself. Errors mean
/// what they mean for any [`Handler`]: transient is retried, permanent is
/// dead-lettered; both roll the transaction back.
pub trait InboxHandler<DB: InboxDatabase>: Send + Sync + 'static {
    /// Applies `message` in `tx`.
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<DB>,
        message: &'a Message,
        cx: &'a Context,
    ) -> HandlerFuture<'a>;
}

/// An [`InboxHandler`] made of a closure; see [`inbox_fn`].
pub struct InboxFn<DB, F> {
    f: F,
    _db: PhantomData<fn() -> DB>,
}

/// Makes an [`InboxHandler`] of a closure returning a boxed future:
///
/// ```no_run
/// use ferry_consumer::inbox::{inbox_fn, Inbox};
/// # fn wire(pool: sqlx::PgPool) {
/// let handler = Inbox::new(pool, inbox_fn(|tx, message, _cx| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO coupons (message_id) VALUES ($1)")
///             .bind(message.id.0)
///             .execute(&mut **tx)
///             .await
///             .map_err(|e| ferry_consumer::HandlerError::transient("insert failed").with_source(e))?;
///         Ok(())
///     })
/// }));
/// # let _ = handler; }
/// ```
pub fn inbox_fn<DB, F>(f: F) -> InboxFn<DB, F>
where
    DB: InboxDatabase,
    F: for<'a> Fn(&'a mut Tx<DB>, &'a Message, &'a Context) -> HandlerFuture<'a>
        + Send
        + Sync
        + 'static,
{
    InboxFn {
        f,
        _db: PhantomData,
    }
}

impl<DB, F> InboxHandler<DB> for InboxFn<DB, F>
where
    DB: InboxDatabase,
    F: for<'a> Fn(&'a mut Tx<DB>, &'a Message, &'a Context) -> HandlerFuture<'a>
        + Send
        + Sync
        + 'static,
{
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx<DB>,
        message: &'a Message,
        cx: &'a Context,
    ) -> HandlerFuture<'a> {
        (self.f)(tx, message, cx)
    }
}

/// Wraps an [`InboxHandler`] into a [`Handler`] that applies each message
/// once; see the [module docs](self).
pub struct Inbox<DB: InboxDatabase, H> {
    pool: sqlx::Pool<DB>,
    handler: H,
    consumer: Option<String>,
}

impl<DB: InboxDatabase, H: InboxHandler<DB>> Inbox<DB, H> {
    /// Runs `handler` in transactions on `pool`, whose Ferry migrations
    /// have run.
    pub fn new(pool: sqlx::Pool<DB>, handler: H) -> Self {
        Self {
            pool,
            handler,
            consumer: None,
        }
    }

    /// Records messages under `consumer` instead of the delivery's group.
    pub fn consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = Some(consumer.into());
        self
    }
}

fn store_error(what: &'static str, e: StoreError) -> HandlerError {
    HandlerError::transient(what).with_source(e)
}

impl<DB: InboxDatabase, H: InboxHandler<DB>> Handler for Inbox<DB, H> {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        let consumer = self.consumer.as_deref().unwrap_or(cx.group());
        // Inside the router's span of this message, a child of it;
        // elsewhere, a child of the producer's span.
        let span = tracing::info_span!(target: "ferry::consumer", "ferry.inbox",
            messaging.message.id = %message.id, ferry.consumer = consumer,
            ferry.duplicate = tracing::field::Empty);
        ferry_core::trace::continue_trace(&span, message);
        let traced = span.clone();
        Box::pin(
            async move {
                let mut tx = self.pool.begin().await.map_err(|e| {
                    store_error("could not begin the inbox transaction", StoreError::from(e))
                })?;
                let recorded = DB::record(&mut tx, consumer, message.id)
                    .await
                    .map_err(|e| store_error("could not record the message in the inbox", e))?;
                traced.record("ferry.duplicate", recorded == Recorded::Duplicate);
                if recorded == Recorded::Duplicate {
                    tracing::debug!(message_id = %message.id, consumer, "already applied; skipped");
                    // Nothing was written: a failed rollback changes nothing.
                    let _ = tx.rollback().await;
                    return Ok(());
                }
                // On an error `tx` is dropped here, rolling back the inbox row
                // with the handler's writes.
                self.handler.handle(&mut tx, message, cx).await?;
                tx.commit().await.map_err(|e| {
                    store_error(
                        "could not commit the inbox transaction",
                        StoreError::from(e),
                    )
                })?;
                Ok(())
            }
            .instrument(span),
        )
    }
}

/// How long inbox rows are kept, and how often old ones are deleted.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneConfig {
    /// Rows older than this are deleted, e.g. `"7d"`. Longer than any
    /// redelivery can come, or an old duplicate is applied again.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Interval between two prunes, e.g. `"1h"`.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

impl Default for PruneConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(7 * 86_400),
            every: Duration::from_secs(3600),
        }
    }
}

impl PruneConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        if self.window.is_zero() {
            return Err(crate::ConfigError::invalid(
                "inbox.window",
                "must be above zero",
            ));
        }
        if self.every.is_zero() {
            return Err(crate::ConfigError::invalid(
                "inbox.every",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

/// Deletes inbox rows older than the window, at once and then every
/// interval, until `shutdown` resolves. Errors are logged once per change
/// and the next round tries again.
pub async fn prune<DB: InboxDatabase>(
    pool: sqlx::Pool<DB>,
    config: PruneConfig,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(config.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let pruned = tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick() => tokio::select! {
                _ = &mut shutdown => return,
                pruned = DB::prune(&pool, config.window) => pruned,
            },
        };
        match pruned {
            Ok(n) => {
                if failing {
                    failing = false;
                    tracing::info!("inbox pruning works again");
                }
                if n > 0 {
                    tracing::debug!(rows = n, "pruned inbox");
                }
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(error = %ferry_core::error_chain(&e), "could not prune the inbox");
                }
            }
        }
    }
}
