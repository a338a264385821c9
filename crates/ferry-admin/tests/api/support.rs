//! What the API tests run against: real databases (PostgreSQL, and a
//! SQLite second store), a real HTTP receiver, real relays and HTTP sinks,
//! and a [`Daemon`] built from them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use ferry_admin::{
    Admin, AdminConfig, ApiToken, Component, ComponentKind, ComponentState, Daemon, NamedStore,
    Overview, ReplayError, Role,
};
use ferry_core::{Message, MessageId, RetryPolicy, Sink};
use ferry_events::api::BearerToken;
use ferry_relay::{RelayConfig, Running, SinkBackoff};
use ferry_store::event_store::{NewEvent, StoredEvent};
use ferry_store::task_failures::TaskFailure;
use ferry_store::DatabaseKind;
use ferry_store::{ConnectOptions, Database, DeadLetter};
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};
use futures::future::BoxFuture;
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "admin-secret-1";
pub const VIEWER_TOKEN: &str = "viewer-secret-1";
/// The relay pipeline the daemon reports.
pub const PIPELINE: &str = "orders-relay";
/// The consumer and forwarder this daemon runs (others are unknown to it).
pub const CONSUMER: &str = "billing";
pub const FORWARDER: &str = "audit-feed";

/// A webhook receiver that applies each `ce-id` once, refuses everything
/// with 400 while `refusing`, and counts requests in flight.
#[derive(Clone, Default)]
pub struct Receiver {
    inner: Arc<ReceiverInner>,
}

#[derive(Default)]
pub struct ReceiverInner {
    refusing: AtomicBool,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    applied: Mutex<Vec<String>>,
    seen: Mutex<HashSet<String>>,
    requests: AtomicUsize,
    bodies: Mutex<HashMap<String, String>>,
}

impl Receiver {
    pub async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = Self::default();
        let app = axum::Router::new()
            .route("/", axum::routing::post(receive))
            .with_state(me.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (me, addr)
    }

    pub fn refuse(&self, refusing: bool) {
        self.inner.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Ids applied, first delivery each.
    pub fn applied(&self) -> Vec<String> {
        self.inner.applied.lock().unwrap().clone()
    }

    pub fn body_of(&self, id: &str) -> Option<String> {
        self.inner.bodies.lock().unwrap().get(id).cloned()
    }

    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let inner = &r.inner;
    let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    inner.max_in_flight.fetch_max(now, Ordering::SeqCst);
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let status = match headers.get("ce-id").and_then(|v| v.to_str().ok()) {
        None => StatusCode::BAD_REQUEST,
        Some(_) if inner.refusing.load(Ordering::SeqCst) => StatusCode::BAD_REQUEST,
        Some(id) => {
            if inner.seen.lock().unwrap().insert(id.to_owned()) {
                inner.applied.lock().unwrap().push(id.to_owned());
                inner
                    .bodies
                    .lock()
                    .unwrap()
                    .insert(id.to_owned(), String::from_utf8_lossy(&body).into_owned());
            }
            StatusCode::OK
        }
    };
    inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    status
}

pub async fn http_sink(addr: SocketAddr) -> Arc<dyn Sink> {
    ferry_adapters::SinkConfig::from_url(&format!("http://{addr}/"))
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// The process under test: two stores, a relay, and a consumer and a
/// forwarder whose dead items it sends to the receiver through a real
/// HTTP sink.
pub struct TestDaemon {
    pub stores: Vec<NamedStore>,
    pub sink: Arc<dyn Sink>,
    pub relay_stats: Mutex<Option<Arc<ferry_relay::RelayStats>>>,
}

impl TestDaemon {
    async fn send(&self, message: Message) -> Result<(), ReplayError> {
        let mut results = self.sink.deliver(std::slice::from_ref(&message)).await;
        match results.pop() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ReplayError::Failed(Box::new(e))),
            None => Err(ReplayError::Failed("the sink answered nothing".into())),
        }
    }
}

impl Daemon for TestDaemon {
    fn overview(&self) -> Overview {
        let done = self
            .relay_stats
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| s.delivered())
            .unwrap_or_default();
        Overview {
            components: vec![
                Component {
                    kind: ComponentKind::Relay,
                    name: PIPELINE.to_owned(),
                    state: ComponentState::Running,
                    store: Some("orders".to_owned()),
                    done_total: done,
                    failed_total: 0,
                    backlog: Some(0),
                    lag: None,
                    detail: BTreeMap::new(),
                },
                Component {
                    kind: ComponentKind::Consumer,
                    name: CONSUMER.to_owned(),
                    state: ComponentState::Running,
                    store: Some("orders".to_owned()),
                    done_total: 0,
                    failed_total: 0,
                    backlog: None,
                    lag: Some(0),
                    detail: BTreeMap::new(),
                },
            ],
        }
    }

    fn stores(&self) -> Vec<NamedStore> {
        self.stores.clone()
    }

    fn republish<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move {
            if letter.consumer != CONSUMER {
                return Err(ReplayError::UnknownOwner(letter.consumer.clone()));
            }
            self.send(letter.message.clone()).await
        })
    }

    fn redeliver_event<'a>(
        &'a self,
        reader: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move {
            if reader != FORWARDER {
                return Err(ReplayError::UnknownOwner(reader.to_owned()));
            }
            let mut m = Message::event(event.event_type.clone(), event.payload.clone());
            m.id = MessageId(event.id);
            m.content_type = event.content_type.clone();
            self.send(m).await
        })
    }
}

/// Everything one test needs, served on a local port.
pub struct Env {
    pub admin: Admin,
    pub daemon: Arc<TestDaemon>,
    /// The default store, "orders", on PostgreSQL.
    pub db: Database,
    /// The second store, "ledger", on SQLite.
    pub ledger: Database,
    pub receiver: Receiver,
    pub receiver_addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    _orders: Fresh,
    _sqlite: SqliteTestDb,
}

pub fn relay_config() -> RelayConfig {
    RelayConfig {
        name: PIPELINE.to_owned(),
        batch_size: 100,
        poll_interval: Duration::from_millis(100),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..RetryPolicy::default()
        },
        sink_backoff: SinkBackoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..RelayConfig::default()
    }
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

pub async fn env_with(configure: impl FnOnce(&mut AdminConfig)) -> Env {
    env_on(DatabaseKind::Postgres, configure).await
}

/// A fresh database of `kind` for the default store (dropped with it).
#[allow(dead_code)]
enum Fresh {
    Pg(PgTestDb),
    Mysql(MysqlTestDb),
    Sqlite(SqliteTestDb),
}

/// An environment whose default store ("orders") is on `kind`.
pub async fn env_on(kind: DatabaseKind, configure: impl FnOnce(&mut AdminConfig)) -> Env {
    let (url, fresh) = match kind {
        DatabaseKind::Postgres => {
            let t = PgTestDb::create().await;
            (t.url.clone(), Fresh::Pg(t))
        }
        DatabaseKind::Mysql => {
            let t = MysqlTestDb::create().await;
            (t.url.clone(), Fresh::Mysql(t))
        }
        DatabaseKind::Sqlite => {
            let t = SqliteTestDb::create();
            (t.url.clone(), Fresh::Sqlite(t))
        }
    };
    let db = Database::connect_with(
        &url,
        &ConnectOptions {
            max_connections: 10,
            ..relay_config().connect_options()
        },
    )
    .await
    .unwrap();
    db.migrate().await.unwrap();
    let sqlite = SqliteTestDb::create();
    let ledger = Database::connect(&sqlite.url).await.unwrap();
    ledger.migrate().await.unwrap();
    let (receiver, receiver_addr) = Receiver::start().await;
    let daemon = Arc::new(TestDaemon {
        stores: vec![
            NamedStore {
                name: "orders".to_owned(),
                db: db.clone(),
            },
            NamedStore {
                name: "ledger".to_owned(),
                db: ledger.clone(),
            },
        ],
        sink: http_sink(receiver_addr).await,
        relay_stats: Mutex::new(None),
    });
    let token = |name: &str, role, secret: &str| ApiToken {
        name: name.to_owned(),
        role,
        token: BearerToken::new(secret).unwrap(),
    };
    let mut config = AdminConfig::with_tokens(vec![
        token("alice", Role::Admin, ADMIN_TOKEN),
        token("grafana", Role::ReadOnly, VIEWER_TOKEN),
    ]);
    configure(&mut config);
    let admin = Admin::new(daemon.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = ferry_admin::router(admin.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Env {
        admin,
        daemon,
        db,
        ledger,
        receiver,
        receiver_addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        _orders: fresh,
        _sqlite: sqlite,
    }
}

/// An answer: status, JSON body (Null when not JSON) and headers.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Env {
    /// Starts a relay from the orders store to the receiver.
    pub async fn start_relay(&self) -> Running {
        let running = ferry_relay::spawn(
            &self.db,
            http_sink(self.receiver_addr).await,
            relay_config(),
        );
        *self.daemon.relay_stats.lock().unwrap() = Some(running.stats.clone());
        running
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "get" => self.http.get(url),
            "post" => self.http.post(url),
            other => panic!("method {other}"),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            headers,
        }
    }

    /// GET as the admin, expecting 200.
    pub async fn get(&self, path: &str) -> Value {
        let a = self.call("get", path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.body
    }

    /// POST as the admin.
    pub async fn post(&self, path: &str, body: Option<Value>) -> Answer {
        self.call("post", path, Some(ADMIN_TOKEN), body).await
    }

    /// Outbox messages on `topic` made dead by the relay: the receiver
    /// refuses them (400, a permanent error) while a relay delivers them.
    pub async fn dead_outbox(&self, topic: &str, n: usize) -> Vec<Message> {
        let messages: Vec<Message> = (0..n)
            .map(|i| {
                Message::event(topic, format!("{topic} #{i}")).with_key(format!("k{}", i % 10))
            })
            .collect();
        for chunk in messages.chunks(1000) {
            self.db.enqueue(chunk).await.unwrap();
        }
        self.receiver.refuse(true);
        let relay = self.start_relay().await;
        wait_for(
            "the relay to dead-letter them",
            Duration::from_secs(60),
            || async {
                let s = self.db.outbox_stats().await.unwrap();
                s.pending == 0 && s.dead >= n as i64
            },
        )
        .await;
        relay.stop().await.unwrap();
        self.receiver.refuse(false);
        messages
    }

    /// A consumer dead letter of `consumer`.
    pub async fn dead_letter(&self, consumer: &str, error: &str) -> DeadLetter {
        let letter = DeadLetter::new(
            consumer,
            Message::event("payments", format!("payment for {consumer}")),
            error,
            5,
        );
        self.db.record_dead_letter(&letter).await.unwrap();
        letter
    }

    /// An event `reader` gave up on.
    pub async fn event_failure(&self, reader: &str, error: &str) -> StoredEvent {
        let seq = self
            .db
            .append_events(&[NewEvent::new("OrderShipped", b"{\"order\":7}".to_vec())
                .with_content_type("application/json")])
            .await
            .unwrap()[0];
        let page = self
            .db
            .read_events(&ferry_store::event_store::EventQuery {
                offset: seq - 1,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let event = page.events.into_iter().next().unwrap();
        self.db
            .record_event_failure(reader, &event, 3, error)
            .await
            .unwrap();
        event
    }

    /// A task failure.
    pub async fn task_failure(&self, task: &str, error: &str) -> TaskFailure {
        let failure = TaskFailure {
            id: uuid::Uuid::now_v7(),
            task: task.to_owned(),
            input: Some(serde_json::json!({"invoice": 12})),
            error: error.to_owned(),
            attempts: 4,
            first_failed_at: Utc::now(),
            last_failed_at: Utc::now(),
        };
        self.db.record_task_failure(&failure).await.unwrap();
        failure
    }

    /// The audit log of the orders store, newest first.
    pub async fn audit(&self) -> Vec<Value> {
        self.get("/v1/admin/audit").await["entries"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Polls `done` until true; fails the test after `limit`.
pub async fn wait_for<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
