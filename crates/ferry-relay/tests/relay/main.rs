//! The relay against real databases (SQLite, PostgreSQL, MariaDB) and a
//! real HTTP receiver.
#![allow(missing_docs, dead_code)]

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_adapters::SinkConfig;
use ferry_core::{Message, RetryPolicy, Sink};
use ferry_relay::{
    CancellationToken, OrderPolicy, Relay, RelayConfig, Retention, Running, SinkBackoff,
};
use ferry_store::outbox::{sqlite::SqliteOutbox, Outbox, OutboxStats};
use ferry_store::{ConnectOptions, Database, DatabaseKind};
use ferry_testkit::{Mode, MysqlTestDb, PgTestDb, Receiver, SqliteTestDb};

enum Db {
    Pg(PgTestDb),
    Sqlite(SqliteTestDb),
    Mysql(MysqlTestDb),
}

struct Env {
    db: Database,
    _t: Db,
}

async fn env(kind: DatabaseKind) -> Env {
    let (url, t) = match kind {
        DatabaseKind::Postgres => {
            let t = PgTestDb::create().await;
            (t.url.clone(), Db::Pg(t))
        }
        DatabaseKind::Sqlite => {
            let t = SqliteTestDb::create();
            (t.url.clone(), Db::Sqlite(t))
        }
        DatabaseKind::Mysql => {
            let t = MysqlTestDb::create().await;
            (t.url.clone(), Db::Mysql(t))
        }
    };
    // The relay's lease, with room for the test's own queries.
    let db = Database::connect_with(
        &url,
        &ConnectOptions {
            max_connections: 8,
            ..config().connect_options()
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

    /// Starts a relay in the background.
    fn start(&self, sink: Arc<dyn Sink>, config: RelayConfig) -> Running {
        ferry_relay::spawn(&self.db, sink, config)
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

/// Polls `done` until it is true; fails the test after `limit`.
async fn wait_for<F: Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    wait_for(what, limit, || std::future::ready(done())).await;
}

/// Waits until the outbox's counters satisfy `done` (a batch's outcomes are
/// recorded just after its messages arrive), and returns them.
async fn wait_for_stats(env: &Env, what: &str, done: impl Fn(&OutboxStats) -> bool) -> OutboxStats {
    let last = std::sync::Mutex::new(None);
    let (last_ref, done) = (&last, &done);
    wait_for(what, Duration::from_secs(2), || async move {
        let stats = env.db.outbox_stats().await.unwrap();
        let ok = done(&stats);
        *last_ref.lock().unwrap() = Some(stats);
        ok
    })
    .await;
    last.into_inner().unwrap().unwrap()
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
                ($body)(env(DatabaseKind::Sqlite).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)(env(DatabaseKind::Postgres).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                ($body)(env(DatabaseKind::Mysql).await).await;
            }
        }
    };
}

both!(
    delivers_everything_once_in_order_per_key,
    |env: Env| async move {
        let r = Receiver::start().await;
        let relay = env.start(http_sink(&r).await, config());
        env.enqueue(&keyed(300, 7)).await;
        wait_until("all applied", Duration::from_secs(30), || {
            r.applied().len() == 300
        })
        .await;
        assert_eq!(r.requests().len(), 300, "no duplicate in normal operation");
        assert_in_order_per_key(&r);
        let stats = wait_for_stats(&env, "all recorded", |s| s.pending == 0).await;
        assert_eq!(stats.pending, 0);
        tokio::time::timeout(Duration::from_secs(15), relay.stop())
            .await
            .expect("stops within the grace")
            .unwrap();
    }
);

/// Several workers need several connections: PostgreSQL and MariaDB (on
/// SQLite the relay runs one worker, which the other tests cover).
async fn several_workers_keep_order_per_key(kind: DatabaseKind) {
    let env = env(kind).await;
    let r = Receiver::start().await;
    let relay = env.start(
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
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_keep_order_per_key_postgres() {
    several_workers_keep_order_per_key(DatabaseKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_keep_order_per_key_mysql() {
    several_workers_keep_order_per_key(DatabaseKind::Mysql).await;
}

/// The default two workers of an ordered relay: while the batches carry
/// ordering keys the second sits out (two would hold back each other's
/// keys); unkeyed batches, or an unordered relay, keep both working.
async fn second_worker(kind: DatabaseKind, order: OrderPolicy, keys: Option<usize>) -> u64 {
    let env = env(kind).await;
    let r = Receiver::start().await;
    let cfg = RelayConfig {
        order,
        batch_size: 20,
        ..config()
    };
    assert_eq!(cfg.concurrency, 2, "the default");
    let relay = env.start(http_sink(&r).await, cfg);
    let messages = match keys {
        Some(keys) => keyed(400, keys),
        None => (0..400)
            .map(|i| Message::event("t", format!("u:{i}")))
            .collect(),
    };
    env.enqueue(&messages).await;
    wait_until("all applied", Duration::from_secs(30), || {
        r.applied().len() == 400
    })
    .await;
    assert_eq!(r.requests().len(), 400, "no duplicate in normal operation");
    if keys.is_some() && order == OrderPolicy::Ordered {
        assert_in_order_per_key(&r);
    }
    let sat_out = relay.stats.sat_out.load(Ordering::Relaxed);
    relay.stop().await.unwrap();
    sat_out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_worker_sits_out_keyed_batches_postgres() {
    let sat_out = second_worker(DatabaseKind::Postgres, OrderPolicy::Ordered, Some(13)).await;
    assert!(sat_out > 0, "the second worker never sat out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_worker_sits_out_keyed_batches_mysql() {
    let sat_out = second_worker(DatabaseKind::Mysql, OrderPolicy::Ordered, Some(13)).await;
    assert!(sat_out > 0, "the second worker never sat out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_worker_works_on_unkeyed_batches() {
    let sat_out = second_worker(DatabaseKind::Postgres, OrderPolicy::Ordered, None).await;
    assert_eq!(sat_out, 0, "unkeyed batches made the second worker sit out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_worker_of_an_unordered_relay_works_on_keyed_batches() {
    let sat_out = second_worker(DatabaseKind::Postgres, OrderPolicy::Unordered, Some(13)).await;
    assert_eq!(sat_out, 0, "an unordered relay's second worker sat out");
}

both!(
    poison_message_is_dead_lettered_and_others_flow,
    |env: Env| async move {
        let r = Receiver::start().await;
        let relay = env.start(http_sink(&r).await, config());
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
        wait_for_stats(&env, "the dead letter recorded", |s| s.dead == 1).await;
        let dead = env.db.dead_messages(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(
            dead[0].last_error.as_deref().unwrap().contains("400"),
            "{:?}",
            dead[0].last_error
        );
        assert_eq!(dead[0].attempts, 1, "a permanent error burns no retries");
        relay.stop().await.unwrap();
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
        let relay = env.start(
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
        // The refusal is recorded against the message, which waits for a
        // retry at the head of its key (ordered mode), neither lost nor dead.
        let stats = wait_for_stats(&env, "b recorded", |s| s.pending == 21).await;
        assert_eq!((stats.pending, stats.retrying, stats.dead), (21, 1, 0));
        relay.stop().await.unwrap();
    }
);

both!(
    down_receiver_idles_the_relay_then_everything_arrives,
    |env: Env| async move {
        let r = Receiver::start().await;
        r.set_mode(Mode::Down);
        let relay = env.start(http_sink(&r).await, config());
        env.enqueue(&keyed(200, 5)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let while_down = r.requests_while_down();
        // A spinning relay would send hundreds of requests a second; a
        // pausing one probes with 1, 2, 4 … messages (one per key, so here at
        // most 5) at a capped backoff (50 ms doubling to 500 ms).
        assert!(while_down >= 2, "the relay kept probing ({while_down})");
        assert!(
            while_down <= 60,
            "relay was not idle while the sink was down: {while_down} requests in 3 s"
        );
        let stats = env.db.outbox_stats().await.unwrap();
        assert_eq!(stats.dead, 0, "an outage burns no attempts");
        assert_eq!(stats.retrying, 0, "an outage counts no attempt");
        r.set_mode(Mode::Up);
        wait_until("all applied", Duration::from_secs(30), || {
            r.applied().len() == 200
        })
        .await;
        assert_in_order_per_key(&r);
        relay.stop().await.unwrap();
    }
);

both!(
    a_sink_answering_again_is_up_even_if_it_refuses,
    |env: Env| async move {
        // The receiver comes back refusing every message (HTTP 400): it
        // answers, so it is up, and the relay goes back to full batches
        // instead of probing one message (of the one key) per claim.
        let r = Receiver::start().await;
        r.set_mode(Mode::Down);
        let relay = env.start(http_sink(&r).await, config());
        env.enqueue(
            &(0..200)
                .map(|i| Message::event("t", format!("poison {i}")).with_key("k"))
                .collect::<Vec<_>>(),
        )
        .await;
        wait_until("probes while down", Duration::from_secs(10), || {
            r.requests_while_down() >= 3
        })
        .await;
        let claims_before = relay.stats.claims.load(Ordering::Relaxed);
        r.set_mode(Mode::Up);
        wait_for("all dead-lettered", Duration::from_secs(30), || async {
            env.db.outbox_stats().await.unwrap().dead == 200
        })
        .await;
        let claims = relay.stats.claims.load(Ordering::Relaxed) - claims_before;
        // Batches of 50: a handful of claims. A relay that still thinks the
        // sink is down claims one message at a time: 200.
        assert!(claims <= 40, "{claims} claims for 200 messages");
        relay.stop().await.unwrap();
    }
);

both!(
    shutdown_abandons_a_batch_past_the_grace,
    |env: Env| async move {
        let r = Receiver::start().await;
        r.set_delay(Duration::from_secs(5));
        let relay = env.start(
            http_sink(&r).await,
            RelayConfig {
                shutdown_grace: Duration::from_millis(200),
                ..config()
            },
        );
        env.enqueue(&[Message::event("t", "slow")]).await;
        wait_until("the message sent", Duration::from_secs(10), || {
            r.requests().len() == 1
        })
        .await;
        let asked = Instant::now();
        relay.stop().await.unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "stopped after {:?}, not within the grace",
            asked.elapsed()
        );
        let stats = env.db.outbox_stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.retrying, stats.delivered, stats.dead),
            (1, 0, 0, 0),
            "abandoned unrecorded: still pending, no attempt counted"
        );
    }
);

both!(kept_messages_show_their_delivery, |env: Env| async move {
    let r = Receiver::start().await;
    let cfg = RelayConfig {
        retention: Retention::Keep(Duration::from_secs(3600)),
        order: OrderPolicy::Unordered,
        ..config()
    };
    let relay = env.start(http_sink(&r).await, cfg);
    env.enqueue(&keyed(10, 2)).await;
    wait_until("all applied", Duration::from_secs(30), || {
        r.applied().len() == 10
    })
    .await;
    relay.stop().await.unwrap();
    let stats = env.db.outbox_stats().await.unwrap();
    assert_eq!(stats.delivered, 10);
});

/// An in-process producer wakes the SQLite relay without waiting for a poll.
#[tokio::test]
async fn sqlite_waker_beats_the_poll_interval() {
    let env = env(DatabaseKind::Sqlite).await;
    let Database::Sqlite(pool) = &env.db else {
        unreachable!()
    };
    let cfg = RelayConfig {
        poll_interval: Duration::from_secs(60),
        ..config()
    };
    // Built by hand for its waker.
    let outbox = Arc::new(SqliteOutbox::new(pool.clone(), cfg.retention));
    let waker = outbox.waker();
    let r = Receiver::start().await;
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
async fn to_nats(kind: DatabaseKind) {
    use async_nats::jetstream;
    use futures::StreamExt;
    let env = env(kind).await;
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
    let relay = env.start(sink.clone(), cfg.clone());
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
    wait_for("all in the stream", Duration::from_secs(30), || {
        let counted = count(js.clone(), stream.clone());
        async move { counted.await >= n as u64 }
    })
    .await;
    relay.stop().await.unwrap();
    // Deliver everything a second time.
    let again = "UPDATE ferry_outbox SET status = 'pending'";
    match &env.db {
        Database::Postgres(p) => drop(sqlx::query(again).execute(p).await.unwrap()),
        Database::Sqlite(p) => drop(sqlx::query(again).execute(p).await.unwrap()),
        Database::Mysql(p) => drop(sqlx::query(again).execute(p).await.unwrap()),
    }
    let relay = env.start(sink, cfg);
    wait_for("delivered again", Duration::from_secs(30), || async {
        env.db.outbox_stats().await.unwrap().pending == 0
    })
    .await;
    relay.stop().await.unwrap();
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
    to_nats(DatabaseKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_nats_postgres() {
    to_nats(DatabaseKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_nats_mysql() {
    to_nats(DatabaseKind::Mysql).await;
}

/// A retry that is due but that this relay may not claim (another
/// pipeline's topic, or a row another relay holds) must not make it spin:
/// empty claims back off up to the poll interval.
async fn idles_beside_an_unclaimable_due_retry(kind: DatabaseKind, hold_it: bool) {
    let env = env(kind).await;
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
        Database::Mysql(p) => {
            sqlx::query(
                "UPDATE ferry_outbox SET attempts = 1, next_attempt_at = '2000-01-01 00:00:00'",
            )
            .execute(p)
            .await
            .unwrap();
            None
        }
    };
    let cfg = RelayConfig {
        topics: Some(vec!["mine".to_owned()]),
        poll_interval: Duration::from_millis(200),
        ..config()
    };
    let r = Receiver::start().await;
    let relay = env.start(http_sink(&r).await, cfg);
    let stats = relay.stats.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.stop().await.unwrap();
    let claims = stats.claims.load(Ordering::Relaxed);
    // Backing off 10, 20, 40 … up to 200 ms makes about a dozen claims in
    // 2 s; a relay spinning on the due retry makes thousands.
    assert!(claims <= 40, "{claims} claims in 2 s: the relay spins");
    assert!(r.requests().is_empty());
}

#[tokio::test]
async fn idles_beside_another_pipelines_due_retry_sqlite() {
    idles_beside_an_unclaimable_due_retry(DatabaseKind::Sqlite, false).await;
}

#[tokio::test]
async fn idles_beside_another_pipelines_due_retry_postgres() {
    idles_beside_an_unclaimable_due_retry(DatabaseKind::Postgres, false).await;
}

#[tokio::test]
async fn idles_beside_another_pipelines_due_retry_mysql() {
    idles_beside_an_unclaimable_due_retry(DatabaseKind::Mysql, false).await;
}

#[tokio::test]
async fn idles_beside_a_due_retry_another_relay_holds() {
    idles_beside_an_unclaimable_due_retry(DatabaseKind::Postgres, true).await;
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
    let env = env(DatabaseKind::Sqlite).await;
    env.enqueue(&[Message::event("t", "x")]).await;
    let relay = env.start(Arc::new(Panicking), config());
    let stop = relay.token();
    let result = tokio::time::timeout(Duration::from_secs(10), relay.finished())
        .await
        .expect("stops by itself");
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

both!(
    a_paused_relay_delivers_nothing_until_resumed,
    |env: Env| async move {
        let r = Receiver::start().await;
        let cfg = config();
        let switch = cfg.pause.clone();
        let relay = env.start(http_sink(&r).await, cfg);
        env.enqueue(&keyed(20, 3)).await;
        wait_until("the first 20 applied", Duration::from_secs(30), || {
            r.applied().len() == 20
        })
        .await;
        assert!(switch.pause());
        // A batch claimed just before the switch may still settle; then nothing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = r.requests().len();
        // Numbered on from the first 20, so per-key order holds across both.
        let more: Vec<Message> = keyed(50, 3).into_iter().skip(20).collect();
        env.enqueue(&more).await;
        // Several poll intervals (100 ms) and wake-ups go by.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(r.requests().len(), before, "a paused relay sent something");
        let stats = env.db.outbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.retrying), (30, 0), "{stats:?}");
        assert!(switch.resume());
        wait_until("all 50 applied", Duration::from_secs(30), || {
            r.applied().len() == 50
        })
        .await;
        assert_eq!(r.requests().len(), 50, "no duplicate across the pause");
        assert_in_order_per_key(&r);
        tokio::time::timeout(Duration::from_secs(15), relay.stop())
            .await
            .expect("stops within the grace")
            .unwrap();
    }
);

#[tokio::test]
async fn a_paused_relay_stops_on_shutdown() {
    let env = env(DatabaseKind::Sqlite).await;
    let r = Receiver::start().await;
    let cfg = config();
    cfg.pause.pause();
    let relay = env.start(http_sink(&r).await, cfg);
    env.enqueue(&keyed(5, 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.requests().is_empty());
    tokio::time::timeout(Duration::from_secs(15), relay.stop())
        .await
        .expect("a paused relay stops on shutdown")
        .unwrap();
}
