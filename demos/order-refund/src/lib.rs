//! Order cancel → refund: commit at once, refund after commit through the
//! event store, survive crashes, and let an outside program follow along.
//!
//! A shop cancels orders: each cancellation sets the order's status and
//! appends an `order.cancelled` event to Ferry's event store in one SQLite
//! transaction, and answers at once. The refund comes later: a Ferry
//! forwarder in the shop hands each event to a refund handler, which calls
//! a slow, flaky payment service with the event id as its idempotency key.
//!
//! The shop runs as a child process ([`supervisor`]) and is killed with
//! SIGKILL: once right after a batch of cancellations committed, before
//! any refund, and again at random moments while refunds are under way.
//! Meanwhile an external consumer ([`consumer`]) follows the same events
//! over the shop's HTTP offset API, keeping its offset in a file.
//!
//! [`run`] does it all and returns a [`Report`]: every cancelled order must
//! end with exactly one refund, no other order with any, and the consumer
//! must have seen every cancellation once, in sequence order.

pub mod cancels;
pub mod consumer;
pub mod orders;
pub mod payment;
pub mod refund;
mod report;
pub mod shop;
pub mod supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ferry_core::RetryPolicy;
use ferry_store::event_store::EventQuery;
use ferry_store::{ConnectOptions, Database};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use payment::{PaymentBehaviour, PaymentLedger};
pub use report::{ConsumerSummary, Crash, PaymentSummary, Report};
pub use signup_coupon_demo::{Latency, Millis};
pub use supervisor::ShopArgs;

use crate::cancels::Pace;
use crate::consumer::ConsumerOptions;
use crate::orders::{Status, ORDER_CANCELLED};
use crate::shop::{RefundOptions, ShopOptions, FORWARDER};
use crate::supervisor::{ShopCommand, ShopProcess};

/// What the demo does.
#[derive(Clone, Debug)]
pub struct Options {
    /// This demo's binary, started with `shop` as the shop's process.
    pub shop_program: PathBuf,
    /// The SQLite database, `sqlite://path` (must hold no orders yet); a
    /// file in a fresh temporary directory when `None`.
    pub database: Option<String>,
    /// Orders in the shop.
    pub orders: usize,
    /// Open orders to cancel.
    pub cancels: usize,
    /// Of those, how many are cancelled before the first crash (with no
    /// forwarder running, so none is refunded before it).
    pub cancels_before_crash: usize,
    /// Shipped orders, which the customers also try to cancel (refused).
    pub shipped: usize,
    /// Crashes at random moments while refunds are under way, after the
    /// first one.
    pub crashes: usize,
    /// Time between two cancel requests after the first crash, so that
    /// cancellations go on while the shop crashes.
    pub cancel_interval: Duration,
    /// Cancel requests in flight at once, at most.
    pub concurrency: usize,
    /// Seed of the orders, of which are cancelled, and of the crash
    /// moments.
    pub seed: u64,
    /// How slow and unreliable the payment service is.
    pub payment: PaymentBehaviour,
    /// The forwarder's retries of a failed refund call.
    pub retry: RetryPolicy,
    /// Events per forwarder page; its offset is saved after each page, so
    /// a crash hands up to this many events to the refund handler again.
    pub batch_size: u32,
    /// How long the whole run may take.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            shop_program: PathBuf::from("order-refund-demo"),
            database: None,
            orders: 150,
            cancels: 100,
            cancels_before_crash: 40,
            shipped: 10,
            crashes: 2,
            cancel_interval: Duration::from_millis(200),
            concurrency: 8,
            seed: rand::random(),
            payment: PaymentBehaviour::default(),
            retry: RetryPolicy {
                max_attempts: 50,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(500),
                multiplier: 2.0,
                jitter: 0.2,
            },
            batch_size: 20,
            timeout: Duration::from_secs(120),
        }
    }
}

impl Options {
    /// Checks that the numbers make sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.cancels >= 1, "cancels must be at least 1");
        anyhow::ensure!(
            self.cancels_before_crash >= 1 && self.cancels_before_crash < self.cancels,
            "cancels before the crash must be at least 1 and fewer than cancels"
        );
        anyhow::ensure!(
            self.cancels + self.shipped <= self.orders,
            "orders ({}) must be at least cancels ({}) plus shipped ({})",
            self.orders,
            self.cancels,
            self.shipped
        );
        anyhow::ensure!(self.concurrency >= 1, "concurrency must be at least 1");
        anyhow::ensure!(
            (1..=ferry_store::event_store::MAX_PAGE).contains(&self.batch_size),
            "batch size must be from 1 to {}",
            ferry_store::event_store::MAX_PAGE
        );
        if let Some(url) = &self.database {
            anyhow::ensure!(
                url.starts_with("sqlite:"),
                "the demo runs on SQLite only; expected sqlite://path, got `{url}`"
            );
        }
        self.payment.validate()?;
        self.retry.validate().context("invalid retry policy")?;
        Ok(())
    }
}

/// When to kill the shop mid-stream: once this many orders are refunded,
/// after a random delay shorter than the slowest refund call (so the kill
/// lands anywhere in a refund call or an offset save).
#[derive(Clone, Copy, Debug)]
struct KillPoint {
    after_refunds: usize,
    delay: Duration,
}

/// Which orders are cancelled when, and when the shop is killed.
struct Plan {
    before_crash: Vec<i64>,
    after_crash: Vec<i64>,
    to_cancel: BTreeSet<i64>,
    shipped: BTreeSet<i64>,
    kill_points: Vec<KillPoint>,
}

impl Plan {
    fn new(orders: &[orders::Order], options: &Options, rng: &mut StdRng) -> Self {
        let mut open: Vec<i64> = orders
            .iter()
            .filter(|o| o.status == Status::Open)
            .map(|o| o.id)
            .collect();
        open.shuffle(rng);
        open.truncate(options.cancels);
        let shipped: Vec<i64> = orders
            .iter()
            .filter(|o| o.status == Status::Shipped)
            .map(|o| o.id)
            .collect();
        let before_crash = open[..options.cancels_before_crash].to_vec();
        let mut after_crash = open[options.cancels_before_crash..].to_vec();
        after_crash.extend(&shipped);
        after_crash.shuffle(rng);
        let mut kill_points: Vec<KillPoint> = (0..options.crashes)
            .map(|_| KillPoint {
                after_refunds: ((rng.gen_range(0.15..0.75) * options.cancels as f64) as usize)
                    .max(1),
                delay: options.payment.max_latency.mul_f64(rng.gen::<f64>()),
            })
            .collect();
        kill_points.sort_by_key(|k| k.after_refunds);
        Self {
            before_crash,
            after_crash,
            to_cancel: open.into_iter().collect(),
            shipped: shipped.into_iter().collect(),
            kill_points,
        }
    }
}

/// Runs the demo: seeds the orders, starts the payment service and the
/// shop's process, cancels a first batch and kills the shop before any
/// refund, restarts it with its forwarder, cancels the rest while killing
/// and restarting it at random moments, waits until every cancelled order
/// is refunded and the consumer has caught up, and reports.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    options.validate()?;
    let dir = TempDir::new()?;
    let url = match &options.database {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", dir.0.join("order-refund.db").display()),
    };
    let db = Database::connect_with(
        &url,
        &ConnectOptions {
            max_connections: 2,
            lease: None,
        },
    )
    .await
    .with_context(|| format!("could not open {url}"))?;
    let Database::Sqlite(pool) = &db else {
        anyhow::bail!("the demo runs on SQLite only");
    };
    db.migrate().await.context("ferry migrations failed")?;
    orders::create_schema(pool).await?;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let seeded = orders::generate(options.orders, options.shipped, &mut rng);
    orders::insert(pool, &seeded).await?;
    let plan = Plan::new(&seeded, &options, &mut rng);

    // Cancelled on every way out, so no server outlives the run.
    let shutdown = CancellationToken::new();
    let _stop_on_error = shutdown.clone().drop_guard();
    let payment = payment::PaymentService::start(options.payment.clone(), shutdown.clone()).await?;
    let command = ShopCommand {
        program: options.shop_program.clone(),
        options: ShopOptions {
            database: url.clone(),
            listen: free_loopback_address()?,
            refunds: Some(RefundOptions {
                payment_url: payment.url(),
                batch_size: options.batch_size,
                retry: options.retry.clone(),
                call_timeout: Duration::from_secs(2),
            }),
        },
    };
    let listen = command.options.listen;
    let started = Instant::now();
    let deadline = started + options.timeout;

    // Phase 1: the shop without its forwarder; cancel, then kill it.
    let shop = command.start(false).await?;
    let (target, consumer_target) = watch::channel(None);
    let consumer_stop = CancellationToken::new();
    let _stop_consumer = consumer_stop.clone().drop_guard();
    let consumer = tokio::spawn(consumer::follow(
        ConsumerOptions {
            url: format!("http://{listen}").parse()?,
            offset_file: dir.0.join("consumer.offset"),
            limit: 16,
        },
        consumer_target,
        consumer_stop.clone(),
    ));
    let mut cancels = cancels::cancel(
        listen,
        plan.before_crash.clone(),
        Pace {
            concurrency: options.concurrency,
            interval: None,
            deadline,
        },
    )
    .await?;
    let mut crashes = Vec::new();
    crashes.push(kill(shop, &db, &payment, started).await?);

    // Phase 2: the shop with its forwarder; cancel the rest while it is
    // killed and restarted at random moments.
    let mut shop = command.start(true).await?;
    let restarted = Instant::now();
    let mut load = Some(tokio::spawn(cancels::cancel(
        listen,
        plan.after_crash.clone(),
        Pace {
            concurrency: options.concurrency,
            interval: Some(options.cancel_interval),
            deadline,
        },
    )));
    let mut kill_points = plan.kill_points.iter();
    let mut next_kill = kill_points.next();
    let mut refunded_at_start = payment.orders_refunded();
    let mut shop_died = None;
    let refunds_complete_after = loop {
        if let Some(status) = shop.exited()? {
            shop_died = Some(status.to_string());
            break None;
        }
        if load.as_ref().is_some_and(|l| l.is_finished()) {
            if let Some(done) = load.take() {
                cancels.extend(done.await.context("cancel task failed")??);
            }
        }
        let refunded = payment.orders_refunded();
        if let Some(point) = next_kill {
            if refunded >= point.after_refunds && refunded > refunded_at_start {
                tokio::time::sleep(point.delay).await;
                crashes.push(kill(shop, &db, &payment, started).await?);
                shop = command.start(true).await?;
                refunded_at_start = payment.orders_refunded();
                next_kill = kill_points.next();
                continue;
            }
        }
        if load.is_none() && next_kill.is_none() {
            let cancelled: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE status = 'cancelled'")
                    .fetch_one(pool)
                    .await?;
            if refunded as i64 >= cancelled
                && db.load_offset(FORWARDER).await? >= db.event_head().await?
            {
                break Some(restarted.elapsed());
            }
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if let Some(unfinished) = load.take() {
        unfinished.abort();
    }

    // The consumer reads up to the head, then everything stops.
    let head = db.event_head().await?;
    let _ = target.send(Some(head));
    let consumer_log = match tokio::time::timeout(
        Duration::from_secs(10).max(deadline.saturating_duration_since(Instant::now())),
        consumer,
    )
    .await
    {
        Ok(log) => log.context("consumer task failed")?,
        Err(_) => consumer::ConsumerLog {
            error: Some(format!("did not reach offset {head} in time")),
            ..consumer::ConsumerLog::default()
        },
    };
    let stop_error = if shop_died.is_some() {
        None
    } else {
        match shop.stop(Duration::from_secs(10)).await {
            Ok(status) if status.success() => None,
            Ok(status) => Some(format!("the shop exited with {status} at shutdown")),
            Err(e) => Some(format!("{e:#}")),
        }
    };
    shutdown.cancel();
    let ledger = payment.finish().await.context("payment service failed")?;

    let final_orders = orders::all(pool).await?;
    let events = all_events(&db).await?;
    let forwarder_offset = db.load_offset(FORWARDER).await?;
    let event_failures = db.event_failures(None).await?.len() as u64;
    db.close().await;

    Ok(report::build(report::Inputs {
        options: &options,
        database: match &options.database {
            Some(url) => url.clone(),
            None => "a temporary SQLite file".to_owned(),
        },
        to_cancel: &plan.to_cancel,
        shipped: &plan.shipped,
        cancels,
        ledger,
        crashes,
        shop_died,
        stop_error,
        final_orders,
        events,
        head,
        forwarder_offset,
        event_failures,
        consumer: consumer_log,
        refunds_complete_after,
        elapsed: started.elapsed(),
    }))
}

/// Kills the shop and notes what had happened by then.
async fn kill(
    shop: ShopProcess,
    db: &Database,
    payment: &payment::PaymentService,
    started: Instant,
) -> anyhow::Result<Crash> {
    let status = shop.kill().await?;
    Ok(Crash {
        after: started.elapsed(),
        status: status.to_string(),
        events_committed: db.event_head().await?,
        orders_refunded: payment.orders_refunded(),
        refund_calls: payment.calls(),
        forwarder_offset: db.load_offset(FORWARDER).await?,
    })
}

/// The `order.cancelled` events in the store, in sequence order, as
/// (seq, id, order id from the source id).
async fn all_events(db: &Database) -> anyhow::Result<Vec<report::StoredCancel>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = db
            .read_events(&EventQuery {
                offset,
                limit: 1000,
                event_type: Some(ORDER_CANCELLED.to_owned()),
                ..EventQuery::default()
            })
            .await?;
        if page.events.is_empty() {
            return Ok(out);
        }
        for e in &page.events {
            out.push(report::StoredCancel {
                seq: e.seq,
                id: e.id,
                order_id: e.source_id.parse().ok(),
            });
        }
        offset = page.next_offset;
    }
}

/// A loopback address with a port that is free now, for the shop to listen
/// on across its restarts (so the consumer's URL stays the same).
fn free_loopback_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Counts per key.
fn tally<K: Ord>(keys: impl IntoIterator<Item = K>) -> BTreeMap<K, usize> {
    let mut counts = BTreeMap::new();
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
    counts
}

/// A directory of its own under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "order-refund-demo-{}",
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
