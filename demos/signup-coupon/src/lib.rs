//! Signup and coupon: why a hand-off to another service must be asynchronous.
//!
//! A signup service writes each new user together with a `user.signed_up`
//! message in one SQLite transaction, through Ferry's outbox, and answers at
//! once. A coupon service, slow and unreliable, gives every new user a
//! welcome coupon. Nothing calls it during a signup: a Ferry relay running in
//! the same process delivers the messages to it as CloudEvents webhooks,
//! retrying until each is accepted. The coupon service drops redeliveries by
//! message id, so every user ends up with exactly one coupon.
//!
//! [`run`] does it all in one process and returns a [`Report`].

mod coupon;
mod latency;
mod load;
mod report;
mod signup;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_adapters::SinkConfig;
use ferry_core::RetryPolicy;
use ferry_relay::{CancellationToken, Relay, RelayConfig, Retention, SinkBackoff};
use ferry_store::outbox::sqlite::SqliteOutbox;
use ferry_store::{ConnectOptions, Database};
use std::sync::atomic::Ordering;

pub use coupon::{CouponBehaviour, CouponLedger};
pub use latency::{Latency, Millis};
pub use report::{RelaySummary, Report};

/// What the demo does.
#[derive(Clone, Debug)]
pub struct Options {
    /// The SQLite database, `sqlite://path`; a file in a fresh temporary
    /// directory (removed afterwards) when `None`.
    pub database: Option<String>,
    /// Signups to send.
    pub users: usize,
    /// Signups in flight at once.
    pub concurrency: usize,
    /// How slow and unreliable the coupon service is.
    pub coupon: CouponBehaviour,
    /// The relay's retries of a failed delivery.
    pub retry: RetryPolicy,
    /// How long to wait, after the last signup, for every message to be
    /// delivered.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            database: None,
            users: 200,
            concurrency: 16,
            coupon: CouponBehaviour::default(),
            retry: RetryPolicy {
                max_attempts: 20,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                multiplier: 2.0,
                jitter: 0.2,
            },
            timeout: Duration::from_secs(120),
        }
    }
}

impl Options {
    /// Checks that the numbers make sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.users >= 1, "users must be at least 1");
        anyhow::ensure!(self.concurrency >= 1, "concurrency must be at least 1");
        if let Some(url) = &self.database {
            anyhow::ensure!(
                url.starts_with("sqlite:"),
                "the demo runs on SQLite only; expected sqlite://path, got `{url}`"
            );
        }
        self.coupon.validate()?;
        self.retry.validate().context("invalid retry policy")?;
        Ok(())
    }
}

/// Runs the demo: starts both services and the relay, sends the signups,
/// waits until the outbox is drained (or the timeout passes), stops
/// everything and reports.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    options.validate()?;
    let temp_dir;
    let url = match &options.database {
        Some(url) => url.clone(),
        None => {
            temp_dir = TempDir::new()?;
            format!("sqlite://{}", temp_dir.0.join("signup-coupon.db").display())
        }
    };
    // One connection: SQLite has one writer at a time, and sqlx's pool queue
    // hands the connection over at once, where competing connections would
    // wait in SQLite's busy handler, which sleeps in steps of up to 100 ms
    // (measured: signup p99 ~100 ms with 8 connections, ~10 ms with 1).
    let db = Database::connect_with(
        &url,
        &ConnectOptions {
            max_connections: 1,
            lease: None,
        },
    )
    .await
    .with_context(|| format!("could not open {url}"))?;
    let Database::Sqlite(pool) = &db else {
        anyhow::bail!("the demo runs on SQLite only");
    };
    db.migrate().await.context("ferry migrations failed")?;
    signup::create_schema(pool).await?;

    // Cancelled on every way out, so no server or relay outlives the run.
    let shutdown = CancellationToken::new();
    let _stop_on_error = shutdown.clone().drop_guard();

    let coupons = coupon::CouponService::start(options.coupon.clone(), shutdown.clone()).await?;
    let outbox = Arc::new(SqliteOutbox::new(pool.clone(), Retention::Delete));
    let waker = outbox.waker();
    let sink = SinkConfig::from_url(&coupons.url())?.build().await?;
    let relay = Relay::new(outbox, sink, relay_config(&options.retry));
    let relay_stats = relay.stats();
    let relay_stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(relay_stop.clone()));
    let _stop_relay_on_error = relay_stop.clone().drop_guard();
    let signups = signup::SignupService::start(pool.clone(), waker, shutdown.clone()).await?;

    let load_started = Instant::now();
    let load = load::sign_up(&signups.url(), options.users, options.concurrency).await?;
    let load_finished = Instant::now();

    // Wait until every committed message is settled: with `Retention::Delete`
    // a delivered message is gone, a dead one stays with status `dead`.
    let users = signup::user_ids(pool).await?;
    let mut coupons_complete_after = None;
    let drained_after = loop {
        if coupons_complete_after.is_none() && coupons.users_served() >= users.len() {
            coupons_complete_after = Some(load_finished.elapsed());
        }
        let stats = db.outbox_stats().await?;
        if stats.pending == 0 {
            break Some(load_finished.elapsed());
        }
        if load_finished.elapsed() > options.timeout {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    relay_stop.cancel();
    relay_task.await.context("relay task failed")??;
    // After the relay stopped, so that the batch it finished during its
    // shutdown grace is counted.
    let outbox_after = db.outbox_stats().await?;
    shutdown.cancel();
    signups.finish().await.context("signup service failed")?;
    let ledger = coupons.finish().await.context("coupon service failed")?;
    db.close().await;

    let users_with_one_coupon = users
        .iter()
        .filter(|id| ledger.coupons.get(id).is_some_and(|c| c.len() == 1))
        .count() as u64;
    let users_without_coupon = users
        .iter()
        .filter(|id| !ledger.coupons.contains_key(id))
        .count() as u64;
    Ok(Report {
        database: match &options.database {
            Some(url) => url.clone(),
            None => "a temporary SQLite file".to_owned(),
        },
        signups_sent: options.users as u64,
        concurrency: options.concurrency,
        seed: options.coupon.seed,
        load_time: load_finished - load_started,
        signups_failed: load.failed,
        first_signup_error: load.first_error,
        signup_latency: Latency::of(load.latencies),
        coupon_latency: Latency::of(ledger.call_latencies.clone()),
        coupon_calls: ledger.calls(),
        coupon_failed_calls: ledger.failed_calls(),
        coupon_failed_before: ledger.failed_before,
        coupon_lost_responses: ledger.lost_responses,
        users: users.len() as u64,
        coupons_issued: ledger.issued(),
        users_with_one_coupon,
        users_without_coupon,
        duplicates_suppressed: ledger.duplicates_suppressed,
        relay: RelaySummary {
            delivered: relay_stats.delivered.load(Ordering::Relaxed),
            retried: relay_stats.failed.load(Ordering::Relaxed),
            dead: relay_stats.dead.load(Ordering::Relaxed),
            sink_paused: relay_stats.sink_unavailable.load(Ordering::Relaxed),
        },
        pending_left: outbox_after.pending as u64,
        dead_left: outbox_after.dead as u64,
        coupons_complete_after,
        drained_after,
        timeout: options.timeout,
    })
}

/// Fast settings for a demo: a production relay would back off for longer.
fn relay_config(retry: &RetryPolicy) -> RelayConfig {
    RelayConfig {
        name: "coupons".to_owned(),
        batch_size: 100,
        poll_interval: Duration::from_millis(200),
        retry: retry.clone(),
        sink_backoff: SinkBackoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        },
        retention: Retention::Delete,
        shutdown_grace: Duration::from_secs(2),
        ..RelayConfig::default()
    }
}

/// Serves `app` on a random port of 127.0.0.1 until `shutdown` is
/// cancelled; returns the address and the server's task.
async fn serve(
    app: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok((addr, task))
}

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "signup-coupon-demo-{}",
            ferry_core::MessageId::new().0.simple()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("could not create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
