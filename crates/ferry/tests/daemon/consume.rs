//! `ferry consume` as a process: from a private NATS JetStream server to a
//! real HTTP receiver, killed mid-POST, with a poison message, with the
//! broker restarted mid-stream, and given bad URLs.

use std::sync::Arc;

use ferry_adapters::{NatsSink, NatsSinkConfig};
use ferry_core::Sink;
use ferry_testkit::nats_server::NatsServer;

use super::*;

const TOPIC: &str = "order.placed";

fn nats_url(server: &NatsServer) -> String {
    format!(
        "{}?stream=CONSUME&subject_prefix=t.&ack_wait=2s",
        server.url()
    )
}

async fn publish(server: &NatsServer, messages: &[Message]) {
    let mut config = NatsSinkConfig::new(server.url().parse().unwrap());
    config.stream = Some("CONSUME".to_owned());
    config.subject_prefix = "t.".to_owned();
    let sink: Arc<dyn Sink> = Arc::new(NatsSink::connect(config).await.unwrap());
    // One message per key and call, as the relay does.
    for m in messages {
        let results = sink.deliver(std::slice::from_ref(m)).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
}

/// `ferry consume` from `from` to `to`, its dead letters in the SQLite
/// database `dead` (created if need be).
fn consume(level: &str, from: &str, to: &str, topic: &str, group: &str, dead: &str) -> Command {
    let mut command = ferry_command(level, &["consume", "--from", from, "--to", to]);
    command
        .args(["--topic", topic, "--group", group, "--database"])
        .arg(format!("{dead}?mode=rwc"));
    command
}

/// Starts `command` (a `ferry consume`) serving `/metrics` on a free port
/// and waits until it has subscribed: its queue, stream group, durable
/// consumer or Kafka group membership (with the group's start pinned)
/// exists, so it gets every message published after this returns. A Kafka
/// group join can take 20 s and more on this machine; no fixed sleep fits.
async fn spawn_subscribed(command: &mut Command) -> Reaped {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Reaped(command.args(["--listen", &addr]).spawn().unwrap());
    let start = std::time::Instant::now();
    loop {
        let page = http_get(&addr, "/metrics").await.unwrap_or_default();
        if metric(&page, "ferry_consumer_subscribed").is_some_and(|v| v >= 1.0) {
            return child;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("ferry consume exited ({status}) before it subscribed");
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "ferry consume did not subscribe within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a broker test of `ferry consume` starts from: an SQLite outbox
/// (written by plain SQL), a database for dead letters, a receiver, and a
/// group and topic of the test's own (`topic` is `{kind}.{group}`).
struct Through {
    outbox: SqliteTestDb,
    dead: SqliteTestDb,
    db: Database,
    r: Receiver,
    group: String,
    topic: String,
}

impl Through {
    async fn new(kind: &str) -> Self {
        let outbox = SqliteTestDb::create();
        let db = migrated(&format!("{}?mode=rwc", outbox.url)).await;
        let group = format!("g{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        Self {
            topic: format!("{kind}.{group}"),
            outbox,
            dead: SqliteTestDb::create(),
            db,
            r: Receiver::start().await,
            group,
        }
    }

    /// `ferry consume --from from` of this group and topic to the receiver.
    fn consume(&self, from: &str) -> Command {
        consume(
            "warn",
            from,
            &self.r.url(),
            &self.topic,
            &self.group,
            &self.dead.url,
        )
    }

    /// Writes `sent` to the outbox and starts `ferry relay` into `to`.
    async fn relay(&self, sent: &[Message], to: &str) -> Reaped {
        enqueue(&self.db, sent).await;
        Reaped(spawn_relay(&self.outbox.url, to, &[]))
    }
}

/// The tests' Kafka: the services' tansu, topics of their own prefix.
const KAFKA: &str = "kafka://127.0.0.1:19092?topic_prefix=ferrydaemontest.";

fn spawn_consume(server: &NatsServer, to: &str, database: &str, extra: &[&str]) -> Reaped {
    let from = nats_url(server);
    Reaped(
        consume("warn", &from, to, TOPIC, "billing", database)
            .args(extra)
            .spawn()
            .expect("start ferry consume"),
    )
}

/// A private NATS server, a receiver answering after `delay`, and `ferry
/// consume` between them (its dead letters in a fresh SQLite database),
/// given the time to create its durable consumer: it gets the messages
/// published after that.
async fn consuming(
    delay: Duration,
    extra: &[&str],
) -> (NatsServer, SqliteTestDb, Receiver, Reaped) {
    let server = NatsServer::start().await;
    let db = SqliteTestDb::create();
    let r = Receiver::start().await;
    r.set_delay(delay);
    let child = spawn_consume(&server, &r.url(), &db.url, extra);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (server, db, r, child)
}

/// Waits until `part` of the `n` messages are applied, restarts the broker
/// (`restart`), and waits until all of them are.
async fn applied_across_a_restart(
    r: &Receiver,
    n: usize,
    part: usize,
    restart: impl std::future::Future<Output = ()>,
) {
    wait_until("a part applied", Duration::from_secs(30), || {
        r.applied().len() >= part
    })
    .await;
    restart.await;
    assert!(r.applied().len() < n, "restarted mid-stream");
    wait_until(
        "every message applied after the restart",
        Duration::from_secs(90),
        || r.applied().len() == n,
    )
    .await;
}

fn orders(n: usize, keys: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::event(TOPIC, format!("{}:{}", i % keys, i)).with_key(format!("k{}", i % keys))
        })
        .collect()
}

/// The consumer is SIGKILLed while POSTs are in flight (the receiver has
/// applied them but not answered): a second consumer gets them again from
/// the broker, the receiver drops the duplicates by `ce-id`, and every
/// message is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_post_redelivers_and_the_receiver_applies_once() {
    // Create the group before publishing, as a consumer deployed first would.
    let (server, db, r, mut child) =
        consuming(Duration::from_millis(300), &["--prefetch", "8"]).await;
    let n = 40;
    let sent = orders(n, 5);
    publish(&server, &sent).await;
    wait_until("some POSTs in flight", Duration::from_secs(30), || {
        r.requests().len() >= 5
    })
    .await;
    sigkill(&mut child.0); // answers still pending
    let before = r.applied().len();
    assert!(before < n, "killed while work remained ({before}/{n})");

    r.set_delay(Duration::ZERO);
    let mut child = spawn_consume(&server, &r.url(), &db.url, &[]);
    wait_until("every message applied", Duration::from_secs(60), || {
        r.applied().len() == n
    })
    .await;
    stop(&mut child.0);

    let applied: HashSet<String> = r.applied().iter().map(|m| m.id.clone()).collect();
    let sent_ids: HashSet<String> = sent.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(applied, sent_ids, "every message applied, exactly once");
    assert!(
        r.requests().len() > n,
        "the messages in flight at the kill were delivered again ({} requests for {n})",
        r.requests().len()
    );
}

/// A message the endpoint refuses for good (400) is dead-lettered with the
/// reason; the others flow past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_rest_flows() {
    let (server, db, r, mut child) = consuming(Duration::ZERO, &[]).await;
    let mut sent = orders(10, 2);
    sent.insert(3, Message::event(TOPIC, "poison").with_key("k0"));
    publish(&server, &sent).await;
    wait_until("the good messages applied", Duration::from_secs(30), || {
        r.applied().len() == 10
    })
    .await;
    let store = Database::connect(&db.url).await.unwrap();
    let mut dead = Vec::new();
    let started = Instant::now();
    while dead.is_empty() && started.elapsed() < Duration::from_secs(10) {
        dead = store.dead_letters(None, 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message.id, sent[3].id);
    assert_eq!(dead[0].consumer, "billing");
    assert!(
        dead[0].error.contains("400"),
        "the reason is kept: {}",
        dead[0].error
    );

    // An operator sees it, replays it to the broker (the consumer takes it
    // again and, the endpoint still refusing it, buries it again), then
    // discards it.
    let out = ferry(&["dead-letters", "list", "--database", &db.url, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(listed["message_id"], sent[3].id.to_string());
    assert_eq!(listed["payload"], "poison");
    let poison_requests = || {
        r.requests()
            .iter()
            .filter(|q| q.id == sent[3].id.to_string())
            .count()
    };
    let before = poison_requests();
    let first = dead[0].id.to_string();
    let out = ferry(&[
        "dead-letters",
        "replay",
        &first,
        "--database",
        &db.url,
        "--to",
        &nats_url(&server),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the replayed message reaches the endpoint",
        Duration::from_secs(30),
        || poison_requests() > before,
    )
    .await;
    let started = Instant::now();
    let again = loop {
        let letters = store.dead_letters(None, 10).await.unwrap();
        // Buried again: the same letter id (it comes from the consumer and
        // the message), a later burial.
        if letters.len() == 1 && letters[0].dead_at > dead[0].dead_at {
            break letters;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{letters:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        again[0].message.id, sent[3].id,
        "the same message, buried again"
    );
    assert_eq!(again[0].id, dead[0].id, "under the same letter id");
    let out = ferry(&[
        "dead-letters",
        "discard",
        &again[0].id.to_string(),
        "--database",
        &db.url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(store.dead_letters(None, 10).await.unwrap().is_empty());
    let out = ferry(&["dead-letters", "discard", &first, "--database", &db.url]);
    assert!(!out.status.success(), "discarding it twice fails");
    stop(&mut child.0);
}

/// The broker is killed and restarted while the consumer works: it
/// resubscribes by itself and every message is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let (server, _db, r, mut child) = consuming(Duration::from_millis(10), &[]).await;
    let n = 300;
    let sent = orders(n, 7);
    publish(&server, &sent).await;
    applied_across_a_restart(&r, n, 30, server.restart()).await;
    stop(&mut child.0);
}

#[test]
fn bad_urls_are_clear_errors() {
    for (from, to, says) in [
        ("bogus://x", "http://127.0.0.1:1/", &["--from", "bogus"][..]),
        (
            "nats://127.0.0.1:4222?strem=X",
            "http://127.0.0.1:1/",
            &["unknown parameter `strem`"],
        ),
        ("nats://127.0.0.1:4222", "ftp://x", &["--to"]),
    ] {
        let out = ferry(&["consume", "--from", from, "--to", to, "--topic", "t"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(says.iter().all(|said| err.contains(said)), "{err}");
    }
}

/// GETs `http://addr/path` with a raw HTTP/1.0 request (no client crate
/// needed for one line of text).
pub(crate) async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    Some(out)
}

pub(crate) fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A `[[consumer]]` in the file, with a circuit breaker: while the endpoint
/// is down the circuit opens and the consumer stops pulling (a handful of
/// probes, not a retry storm), messages wait on the broker, `/metrics`
/// shows the lag; once the endpoint is back the circuit closes and
/// everything is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_while_the_endpoint_is_down_and_closes_after() {
    let server = NatsServer::start().await;
    let db = SqliteTestDb::create();
    let r = Receiver::start().await;
    r.set_mode(ferry_testkit::Mode::Down);
    let port = free_port();
    let dir = TempDir::new();
    let path = dir.0.join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[http]
listen = "127.0.0.1:{port}"

[[consumer]]
name = "billing"
topics = ["{TOPIC}"]
database = "{db}?mode=rwc"
migrate = true
from = {{ type = "nats", url = "{nats}", stream = "CONSUME", subject_prefix = "t.", ack_wait = "5s" }}
to = {{ type = "http", url = "{to}" }}

[consumer.router]
prefetch = 8

[consumer.router.circuit_breaker]
failures = 3
cool_down = "1s"

# One attempt per delivery, and deliveries enough not to dead-letter
# anything: every failure reaches the breaker, and without it each message
# in flight would come back after 0.1, 0.2, 0.4 … s.
[consumer.router.retry]
max_deliveries = 1000
backoff = {{ max_attempts = 1, initial_backoff = "100ms", max_backoff = "2s" }}

[consumer.router.lag]
interval = "200ms"
warn_waiting = 10
"#,
            db = db.url,
            nats = server.url(),
            to = r.url(),
        ),
    )
    .unwrap();
    let check = ferry(&["check", "--config", path.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut child = Reaped(spawn_ferry(&["run", "--config", path.to_str().unwrap()]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = 50;
    publish(&server, &orders(n, 5)).await;
    let addr = format!("127.0.0.1:{port}");

    // Down for 4 s: 3 failures open the circuit (the other messages in
    // flight fail too), then one probe per second; without the breaker the
    // five keys' messages would be tried some 30 times in those 4 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let while_down = r.requests_while_down();
    assert!(while_down >= 3, "the endpoint was tried ({while_down})");
    assert!(
        while_down <= 12,
        "the open circuit stops pulling: {while_down} requests in 4 s"
    );
    let mut waiting = None;
    let started = Instant::now();
    while waiting.is_none_or(|w| w < 10.0) && started.elapsed() < Duration::from_secs(10) {
        let page = http_get(&addr, "/metrics").await.unwrap_or_default();
        waiting = metric(&page, "ferry_consumer_lag_waiting_messages");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        waiting.is_some_and(|w| w >= 10.0),
        "/metrics shows the messages waiting: {waiting:?}"
    );

    r.set_mode(ferry_testkit::Mode::Up);
    wait_until(
        "every message applied once the endpoint is back",
        Duration::from_secs(60),
        || r.applied().len() == n,
    )
    .await;
    let started = Instant::now();
    let handled = loop {
        let page = http_get(&addr, "/metrics").await.unwrap_or_default();
        let handled = metric(&page, "ferry_consumer_handled_total");
        if handled == Some(n as f64) || started.elapsed() > Duration::from_secs(10) {
            break handled;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        handled,
        Some(n as f64),
        "/metrics counts the handled messages"
    );
    assert!(http_get(&addr, "/health")
        .await
        .unwrap_or_default()
        .ends_with("ok\n"));
    stop(&mut child.0);
}

/// `ferry relay --to URL` and `ferry consume --from URL` through each broker
/// other than NATS: an SQLite outbox written by plain SQL, a relay into the
/// broker, a consumer out of it to an HTTP receiver; every message arrives
/// with its id and key.
async fn relay_and_consume_through(broker_url: &str) {
    let t = Through::new("relayed").await;
    let consumer = spawn_subscribed(&mut t.consume(broker_url)).await;
    let sent: Vec<Message> = (0..20)
        .map(|i| Message::event(&t.topic, format!("{{\"n\":{i}}}")).with_key(format!("k{}", i % 4)))
        .collect();
    let relay = t.relay(&sent, broker_url).await;
    wait_until(
        "every message relayed and consumed",
        Duration::from_secs(90),
        || t.r.applied().len() == sent.len(),
    )
    .await;
    let mut got: Vec<(String, Option<String>)> =
        t.r.applied().into_iter().map(|m| (m.id, m.key)).collect();
    let mut want: Vec<(String, Option<String>)> = sent
        .iter()
        .map(|m| (m.id.to_string(), m.key.clone()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    drop((relay, consumer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consume_through_rabbitmq() {
    relay_and_consume_through("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=ferry-daemon-test")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consume_through_redis() {
    relay_and_consume_through("redis://127.0.0.1:6379/0?stream_prefix=ferrydaemontest.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consume_through_kafka() {
    relay_and_consume_through(KAFKA).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consume_through_sqs() {
    relay_and_consume_through(
        "sqs+http://test:test@127.0.0.1:19325?region=us-east-1&queue_prefix=ferrydaemontest-",
    )
    .await;
}

/// A private persistent Redis (`appendonly yes`, `appendfsync always`), for
/// killing and restarting under a running consumer.
struct PrivateRedis {
    /// Killed on drop, before its directory is removed.
    child: Option<Reaped>,
    port: u16,
    dir: TempDir,
}

impl PrivateRedis {
    async fn start() -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
            dir: TempDir::new(),
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(Reaped(child));
        let port = self.port;
        wait_for(
            "redis to come up",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// SIGKILL, then the same port and data directory again.
    async fn restart(&mut self) {
        drop(self.child.take());
        self.spawn().await;
    }
}

/// Redis killed (SIGKILL) and restarted while `ferry consume` reads from it
/// and the relay writes to it: the consumer group, its pending entries and
/// every acknowledged XADD survive, and every message is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_stream_loses_nothing() {
    let mut redis = PrivateRedis::start().await;
    let url = format!(
        "redis://127.0.0.1:{}/0?stream_prefix=midstream.&claim_idle=2s",
        redis.port
    );
    let outbox = SqliteTestDb::create();
    let dead = SqliteTestDb::create();
    let db = migrated(&format!("{}?mode=rwc", outbox.url)).await;
    let r = Receiver::start().await;
    r.set_delay(Duration::from_millis(5));
    let consumer = Reaped(
        consume("error", &url, &r.url(), TOPIC, "billing", &dead.url)
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = 400;
    let sent = orders(n, 7);
    enqueue(&db, &sent).await;
    let relay = Reaped(spawn_relay(&outbox.url, &url, &["--batch-size", "20"]));
    applied_across_a_restart(&r, n, 40, redis.restart()).await;
    let stats = db.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    drop((relay, consumer));
}

/// The consumer's database is unreachable at start (a closed PostgreSQL
/// port): `ferry consume` keeps retrying with backoff, logs that once, and
/// stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_retried_not_fatal() {
    assert_an_unreachable_database_is_retried(&[
        "consume",
        "--from",
        "nats://127.0.0.1:4222?stream=FERRY&subject_prefix=ferry.",
        "--to",
        "http://127.0.0.1:1/",
        "--topic",
        "t",
    ])
    .await;
}

/// A Kafka consumer SIGKILLed after acknowledging every message and before
/// its next periodic commit (`commit_interval=1h`: nothing committed past
/// the group's pinned start): the next consumer of the group is handed
/// them all again, with the same ids, so the receiver, deduplicating by
/// `ce-id`, applies each exactly once. (With commits before each ack,
/// `commit_interval=0s`, nothing would come again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_consumer_killed_between_commits_redelivers_and_the_receiver_applies_once() {
    let t = Through::new("killed").await;
    // A dead member leaves the group after 6 s rather than librdkafka's 45.
    let from =
        format!("{KAFKA}&commit_interval=1h&session.timeout.ms=6000&heartbeat.interval.ms=1000");
    let mut first = spawn_subscribed(&mut t.consume(&from)).await;
    let sent: Vec<Message> = (0..20)
        .map(|i| Message::event(&t.topic, format!("{{\"n\":{i}}}")).with_key(format!("k{}", i % 4)))
        .collect();
    let relay = t.relay(&sent, KAFKA).await;
    wait_until("every message applied", Duration::from_secs(90), || {
        t.r.applied().len() == sent.len()
    })
    .await;
    let before = t.r.requests().len();
    sigkill(&mut first.0);
    let second = Reaped(t.consume(&from).spawn().unwrap());
    wait_until(
        "the acknowledged messages handed out again",
        Duration::from_secs(120),
        || t.r.requests().len() >= before + sent.len(),
    )
    .await;
    let applied: Vec<String> = t.r.applied().into_iter().map(|m| m.id).collect();
    let applied_set: HashSet<String> = applied.iter().cloned().collect();
    let sent_ids: HashSet<String> = sent.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(applied.len(), sent.len(), "applied once each");
    assert_eq!(applied_set, sent_ids, "every message applied, exactly once");
    drop((relay, second));
}

/// `ferry consume` from Kafka to an endpoint that is down for a while:
/// every message fails, and the ones of a key behind it are already in the
/// consumer's prefetch window. A failing keyed message is tried again in
/// place, its key's later messages waiting (a nack would seek the
/// partition back, but the messages already handed out would then be
/// handled first, out of order: the chaos soak's violation of
/// 2026-12-07), so once the endpoint is back each key's messages are
/// applied in the order they were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_keeps_each_keys_order_across_a_downstream_outage() {
    let t = Through::new("outage").await;
    t.r.set_mode(ferry_testkit::Mode::Down);
    let consumer = spawn_subscribed(t.consume(KAFKA).args(["--prefetch", "64"])).await;
    let n = 200;
    let sent: Vec<Message> = (0..n)
        .map(|i| Message::event(&t.topic, format!("{}:{i}", i % 4)).with_key(format!("k{}", i % 4)))
        .collect();
    let relay = t.relay(&sent, KAFKA).await;
    wait_until("the endpoint tried", Duration::from_secs(60), || {
        t.r.requests_while_down() >= 8
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.r.set_mode(ferry_testkit::Mode::Up);
    wait_until("every message applied", Duration::from_secs(90), || {
        t.r.applied().len() == n
    })
    .await;
    assert_in_order_per_key(&t.r);
    drop((relay, consumer));
}
