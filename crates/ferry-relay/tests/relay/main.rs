//! The relay against real databases (SQLite, PostgreSQL) and a real HTTP
//! receiver.
#![allow(missing_docs, dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::{Message, RetryPolicy, Sink};
use ferry_relay::{CancellationToken, OrderPolicy, Relay, RelayConfig, Retention, SinkBackoff};
use ferry_sinks::SinkConfig;
use ferry_store::outbox::{postgres::PgOutbox, sqlite::SqliteOutbox, Outbox};
use ferry_store::{ConnectOptions, Database};
use ferry_testkit::{Mode, PgTestDb, Receiver, SqliteTestDb};

enum Db {
    Pg(PgTestDb),
    Sqlite(SqliteTestDb),
}

struct Env {
    db: Database,
    _t: Db,
}

async fn env(pg: bool) -> Env {
    let (url, t) = if pg {
        let t = PgTestDb::create().await;
        (t.url.clone(), Db::Pg(t))
    } else {
        let t = SqliteTestDb::create();
        (t.url.clone(), Db::Sqlite(t))
    };
    let db = Database::connect_with(
        &url,
        &ConnectOptions {
            max_connections: 8,
            lease: Some(Duration::from_secs(30)),
        },
    )
    .await
    .unwrap();
    db.migrate().await.unwrap();
    Env { db, _t: t }
}

impl Env {
    async fn enqueue(&self, ms: &[Message]) {
        self.db.enqueue(ms).await.unwrap();
    }

    /// Starts a relay in the background; returns its stop token and task.
    fn start(
        &self,
        sink: Arc<dyn Sink>,
        config: RelayConfig,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), ferry_relay::RelayError>>,
    ) {
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = match &self.db {
            Database::Postgres(p) => {
                let relay = Relay::new(
                    Arc::new(PgOutbox::new(p.clone(), config.retention)),
                    sink,
                    config,
                );
                tokio::spawn(relay.run(t))
            }
            Database::Sqlite(p) => {
                let relay = Relay::new(
                    Arc::new(SqliteOutbox::new(p.clone(), config.retention)),
                    sink,
                    config,
                );
                tokio::spawn(relay.run(t))
            }
        };
        (token, handle)
    }
}

fn config() -> RelayConfig {
    RelayConfig {
        batch_size: 50,
        poll_interval: Duration::from_millis(100),
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        sink_backoff: SinkBackoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..RelayConfig::default()
    }
}

async fn http_sink(r: &Receiver) -> Arc<dyn Sink> {
    SinkConfig::from_url(&r.url())
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn keyed(n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::event("t", format!("{}:{}", i % keys, i)).with_key(format!("k{}", i % keys))
        })
        .collect()
}

/// Per key, the applied payload numbers must be strictly increasing.
fn assert_in_order_per_key(r: &Receiver) {
    let mut last = std::collections::HashMap::<String, i64>::new();
    for m in r.applied() {
        let body = String::from_utf8(m.body.to_vec()).unwrap();
        let (k, i) = body.split_once(':').unwrap();
        let i: i64 = i.parse().unwrap();
        let prev = last.insert(k.to_owned(), i).unwrap_or(-1);
        assert!(i > prev, "key {k}: {i} came after {prev}");
    }
}

macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)(env(false).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(env(true).await).await;
            }
        }
    };
}

both!(
    delivers_everything_once_in_order_per_key,
    |env: Env| async move {
        let r = Receiver::start().await;
        let (stop, task) = env.start(http_sink(&r).await, config());
        env.enqueue(&keyed(300, 7)).await;
        wait_until("all applied", Duration::from_secs(30), || {
            r.applied().len() == 300
        })
        .await;
        assert_eq!(r.requests().len(), 300, "no duplicate in normal operation");
        assert_in_order_per_key(&r);
        // The last batch is recorded just after its messages arrive.
        let mut pending = -1;
        for _ in 0..100 {
            pending = env.db.outbox_stats().await.unwrap().pending;
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pending, 0);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("stops within the grace")
            .unwrap()
            .unwrap();
    }
);

both!(several_workers_keep_order_per_key, |env: Env| async move {
    let r = Receiver::start().await;
    let (stop, task) = env.start(
        http_sink(&r).await,
        RelayConfig {
            concurrency: 3,
            batch_size: 20,
            ..config()
        },
    );
    env.enqueue(&keyed(600, 11)).await;
    wait_until("all applied", Duration::from_secs(30), || {
        r.applied().len() == 600
    })
    .await;
    assert_eq!(r.requests().len(), 600, "no duplicate in normal operation");
    assert_in_order_per_key(&r);
    stop.cancel();
    task.await.unwrap().unwrap();
});

both!(
    poison_message_is_dead_lettered_and_others_flow,
    |env: Env| async move {
        let r = Receiver::start().await;
        let (stop, task) = env.start(http_sink(&r).await, config());
        env.enqueue(&[
            Message::event("t", "a:0").with_key("a"),
            Message::event("t", "poison").with_key("a"),
            Message::event("t", "a:2").with_key("a"),
            Message::event("t", "b:3").with_key("b"),
        ])
        .await;
        wait_until("three applied", Duration::from_secs(30), || {
            r.applied().len() == 3
        })
        .await;
        // The outcomes are recorded when the batch settles, just after.
        let mut dead = Vec::new();
        for _ in 0..100 {
            dead = env.db.dead_messages(10).await.unwrap();
            if !dead.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].last_error.as_deref().unwrap().contains("400"),
            "{:?}",
            dead[0].last_error
        );
        assert_eq!(dead[0].attempts, 1, "a permanent error burns no retries");
        stop.cancel();
        task.await.unwrap().unwrap();
    }
);

both!(
    one_refused_message_ahead_of_its_key_does_not_stall_other_keys,
    |env: Env| async move {
        // The first batch holds only key `a`, so its first wave is the
        // refused message alone and the sink looks down. Probing with one
        // message per key sends it beside `b`, which is accepted: the refusal
        // is then counted as a failure of that message, and `b` flows (when
        // probes were claimed in sequence order they held only `a`'s
        // messages, and nothing got through at all).
        let r = Receiver::start().await;
        let (stop, task) = env.start(
            http_sink(&r).await,
            RelayConfig {
                batch_size: 8,
                ..config()
            },
        );
        let mut ms = vec![Message::event("t", "refuse").with_key("a")];
        ms.extend((1..=20).map(|i| Message::event("t", format!("a:{i}")).with_key("a")));
        ms.push(Message::event("t", "b:21").with_key("b"));
        env.enqueue(&ms).await;
        wait_until(
            "the other key's message applied",
            Duration::from_secs(30),
            || r.applied().len() == 1,
        )
        .await;
        assert_eq!(&r.applied()[0].body[..], b"b:21");
        // The refusal is recorded against the message (when the batch
        // settles, just after), which waits for a retry at the head of its
        // key (ordered mode), neither lost nor dead.
        let mut stats = env.db.outbox_stats().await.unwrap();
        for _ in 0..100 {
            if stats.pending == 21 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            stats = env.db.outbox_stats().await.unwrap();
        }
        assert_eq!((stats.pending, stats.retrying, stats.dead), (21, 1, 0));
        stop.cancel();
        task.await.unwrap().unwrap();
    }
);

both!(
    down_receiver_idles_the_relay_then_everything_arrives,
    |env: Env| async move {
        let r = Receiver::start().await;
        r.set_mode(Mode::Down);
        let (stop, task) = env.start(http_sink(&r).await, config());
        env.enqueue(&keyed(200, 5)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let while_down = r.requests_while_down();
        // A spinning relay would send hundreds of requests a second; a pausing one
        // probes with one message at a capped backoff (50 ms doubling to 500 ms).
        assert!(while_down >= 2, "the relay kept probing ({while_down})");
        assert!(
            while_down <= 60,
            "relay was not idle while the sink was down: {while_down} requests in 3 s"
        );
        let stats = env.db.outbox_stats().await.unwrap();
        assert_eq!(stats.dead, 0, "an outage burns no attempts");
        r.set_mode(Mode::Up);
        wait_until("all applied", Duration::from_secs(30), || {
            r.applied().len() == 200
        })
        .await;
        assert_in_order_per_key(&r);
        stop.cancel();
        task.await.unwrap().unwrap();
    }
);

both!(kept_messages_show_their_delivery, |env: Env| async move {
    let r = Receiver::start().await;
    let cfg = RelayConfig {
        retention: Retention::Keep(Duration::from_secs(3600)),
        order: OrderPolicy::Unordered,
        ..config()
    };
    let (stop, task) = env.start(http_sink(&r).await, cfg);
    env.enqueue(&keyed(10, 2)).await;
    wait_until("all applied", Duration::from_secs(30), || {
        r.applied().len() == 10
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let stats = env.db.outbox_stats().await.unwrap();
    assert_eq!(stats.delivered, 10);
});

/// An in-process producer wakes the SQLite relay without waiting for a poll.
#[tokio::test]
async fn sqlite_waker_beats_the_poll_interval() {
    let env = env(false).await;
    let Database::Sqlite(pool) = &env.db else {
        unreachable!()
    };
    let outbox = Arc::new(SqliteOutbox::new(pool.clone(), Retention::Delete));
    let waker = outbox.waker();
    let r = Receiver::start().await;
    let cfg = RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..config()
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(Relay::new(outbox.clone(), http_sink(&r).await, cfg).run(stop.clone()));
    // let the relay reach its idle wait
    tokio::time::sleep(Duration::from_millis(300)).await;
    outbox.wait_for_work(Duration::ZERO).await;
    env.enqueue(&[Message::event("t", "x")]).await;
    waker.wake();
    wait_until(
        "delivered long before the 60 s poll",
        Duration::from_secs(10),
        || r.applied().len() == 1,
    )
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// Outbox → relay → NATS JetStream: every message stored once, in order per
/// key; delivering the same messages again (as after a crash) is dropped by
/// the server's `Nats-Msg-Id` deduplication.
async fn to_nats(pg: bool) {
    use async_nats::jetstream;
    use futures::StreamExt;
    let env = env(pg).await;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (stream, prefix) = (format!("FERRYRELAY_{id}"), format!("ferryrelay.{id}."));
    let sink = SinkConfig::from_url(&format!(
        "nats://127.0.0.1:4222?subject_prefix={prefix}&stream={stream}"
    ))
    .unwrap()
    .build()
    .await
    .unwrap();
    let cfg = RelayConfig {
        retention: Retention::Keep(Duration::from_secs(3600)),
        ..config()
    };
    let (stop, task) = env.start(sink.clone(), cfg.clone());
    let n = 300;
    env.enqueue(&keyed(n, 7)).await;
    let js = jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await.unwrap());
    let count = |js: jetstream::Context, stream: String| async move {
        js.get_stream(&stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages
    };
    let start = Instant::now();
    while count(js.clone(), stream.clone()).await < n as u64 {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    // Deliver everything a second time.
    let again = "UPDATE ferry_outbox SET status = 'pending'";
    match &env.db {
        Database::Postgres(p) => drop(sqlx::query(again).execute(p).await.unwrap()),
        Database::Sqlite(p) => drop(sqlx::query(again).execute(p).await.unwrap()),
    }
    let (stop, task) = env.start(sink, cfg);
    let start = Instant::now();
    while env.db.outbox_stats().await.unwrap().pending > 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        count(js.clone(), stream.clone()).await,
        n as u64,
        "duplicates dropped by Nats-Msg-Id"
    );
    // Per key, stream order follows outbox order.
    let consumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut msgs = consumer.fetch().max_messages(n).messages().await.unwrap();
    let mut last = std::collections::HashMap::<String, i64>::new();
    let mut seen = 0;
    while let Some(m) = msgs.next().await {
        let m = m.unwrap();
        let body = String::from_utf8(m.payload.to_vec()).unwrap();
        let (k, i) = body.split_once(':').unwrap();
        let i: i64 = i.parse().unwrap();
        assert!(
            i > last.insert(k.to_owned(), i).unwrap_or(-1),
            "key {k} out of order"
        );
        assert!(m.headers.as_ref().unwrap().get("ce-id").is_some());
        seen += 1;
    }
    assert_eq!(seen, n);
    js.delete_stream(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_nats_sqlite() {
    to_nats(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_nats_postgres() {
    to_nats(true).await;
}

/// A retry that is due but that this relay may not claim (another
/// pipeline's topic, or a row another relay holds) must not make it spin:
/// empty claims back off up to the poll interval.
async fn idles_beside_an_unclaimable_due_retry(pg: bool, hold_it: bool) {
    let env = env(pg).await;
    let topic = if hold_it { "mine" } else { "other" };
    env.enqueue(&[Message::event(topic, "x")]).await;
    let due_retry =
        "UPDATE ferry_outbox SET attempts = 1, next_attempt_at = '2000-01-01T00:00:00.000Z'";
    let _held = match &env.db {
        Database::Postgres(p) => {
            sqlx::query(due_retry).execute(p).await.unwrap();
            if hold_it {
                // Another relay's claim: the row stays locked by this transaction.
                let mut tx = p.begin().await.unwrap();
                sqlx::query("SELECT seq FROM ferry_outbox FOR UPDATE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                Some(tx)
            } else {
                None
            }
        }
        Database::Sqlite(p) => {
            sqlx::query(due_retry).execute(p).await.unwrap();
            None
        }
    };
    let cfg = RelayConfig {
        topics: Some(vec!["mine".to_owned()]),
        poll_interval: Duration::from_millis(200),
        ..config()
    };
    let r = Receiver::start().await;
    let token = CancellationToken::new();
    let (stats, task) = match &env.db {
        Database::Postgres(p) => {
            let relay = Relay::new(
                Arc::new(PgOutbox::new(p.clone(), cfg.retention)),
                http_sink(&r).await,
                cfg,
            );
            (relay.stats(), tokio::spawn(relay.run(token.clone())))
        }
        Database::Sqlite(p) => {
            let relay = Relay::new(
                Arc::new(SqliteOutbox::new(p.clone(), cfg.retention)),
                http_sink(&r).await,
                cfg,
            );
            (relay.stats(), tokio::spawn(relay.run(token.clone())))
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.unwrap().unwrap();
    let claims = stats.claims.load(std::sync::atomic::Ordering::Relaxed);
    // Backing off 10, 20, 40 … up to 200 ms makes about a dozen claims in
    // 2 s; a relay spinning on the due retry makes thousands.
    assert!(claims <= 40, "{claims} claims in 2 s: the relay spins");
    assert!(r.requests().is_empty());
}

#[tokio::test]
async fn idles_beside_another_pipelines_due_retry_sqlite() {
    idles_beside_an_unclaimable_due_retry(false, false).await;
}

#[tokio::test]
async fn idles_beside_another_pipelines_due_retry_postgres() {
    idles_beside_an_unclaimable_due_retry(true, false).await;
}

#[tokio::test]
async fn idles_beside_a_due_retry_another_relay_holds() {
    idles_beside_an_unclaimable_due_retry(true, true).await;
}

/// A sink that panics: a bug. The relay stops and says so.
struct Panicking;

impl Sink for Panicking {
    fn name(&self) -> &str {
        "panicking"
    }
    fn deliver<'a>(
        &'a self,
        _batch: &'a [Message],
    ) -> ferry_core::BoxFuture<'a, Vec<ferry_core::Delivery>> {
        Box::pin(async { panic!("bug in a sink") })
    }
}

#[tokio::test]
async fn a_worker_panic_stops_the_relay_with_an_error() {
    let env = env(false).await;
    env.enqueue(&[Message::event("t", "x")]).await;
    let (stop, task) = env.start(Arc::new(Panicking), config());
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops by itself")
        .unwrap();
    assert!(
        matches!(result, Err(ferry_relay::RelayError::WorkerPanicked(_))),
        "{result:?}"
    );
    assert!(stop.is_cancelled(), "the other workers are told to stop");
    assert_eq!(
        env.db.outbox_stats().await.unwrap().pending,
        1,
        "the message stays pending"
    );
}
