//! What the console tests run against: a real database (a SQLite file or a
//! fresh PostgreSQL database), a real ferry-relay relay delivering its
//! outbox over HTTP to a receiver on 127.0.0.1, the admin layer over a
//! test [`Daemon`], and the console and API served on a free port.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use ferry_admin::{
    Admin, AdminConfig, ApiToken, Component, ComponentKind, ComponentState, Daemon, NamedStore,
    Overview, ReplayError, Role,
};
use ferry_core::{Message, RetryPolicy};
use ferry_events::api::BearerToken;
use ferry_relay::{
    CancellationToken, PauseSwitch, RelayConfig, RelayStats, Retention, SinkBackoff,
};
use ferry_store::event_store::StoredEvent;
use ferry_store::{ConnectOptions, Database, DatabaseKind, DeadLetter};
use ferry_testkit::{PgTestDb, SqliteTestDb};
use futures::future::BoxFuture;
use serde_json::json;

/// The admin token's secret.
pub const ADMIN_TOKEN: &str = "console-admin-secret";
/// The read-only token's secret.
pub const VIEWER_TOKEN: &str = "console-viewer-secret";
/// The relay's pipeline name.
pub const PIPELINE: &str = "orders";
/// The store's name.
pub const STORE: &str = "orders";

/// Keeps the test database alive.
enum TestDb {
    Pg(PgTestDb),
    Sqlite(SqliteTestDb),
}

/// A local HTTP receiver that refuses payloads holding `bad` (400, a
/// missing field) or `negative` (422) until it is fixed, and records the
/// message ids (`ce-id`) it accepted.
#[derive(Clone, Default)]
pub struct Receiver {
    fixed: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    /// Accepts everything from now on (the operator fixed the cause).
    pub fn fix(&self) {
        self.fixed.store(true, Ordering::SeqCst);
    }

    /// The message ids accepted so far.
    pub fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }

    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/orders", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/hooks/orders", axum::routing::post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    if !r.fixed.load(Ordering::SeqCst) {
        if has(b"bad") {
            return (
                StatusCode::BAD_REQUEST,
                r#"{"error":"missing field `customer_id`"}"#,
            );
        }
        if has(b"negative") {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                r#"{"error":"amount must be positive"}"#,
            );
        }
    }
    let id = headers
        .get("ce-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    r.accepted.lock().unwrap().push(id);
    (StatusCode::OK, "ok")
}

/// The process the admin layer serves, as a test sets it up: one store,
/// the relay `orders` (its counters, its outbox's backlog read every
/// 100 ms, its pause switch following the store's pause flags), and
/// what the `ferry` daemon reports for the kinds this test does not run (a
/// consumer per topic with its group and lag, a forwarder's offset, a
/// capture's retained WAL, export and import runs), as fixed facts with
/// the daemon's detail keys.
pub struct TestDaemon {
    store: NamedStore,
    relay: Mutex<Option<Arc<RelayStats>>>,
    backlog: Arc<AtomicI64>,
    pause: PauseSwitch,
}

impl TestDaemon {
    fn relay_component(&self) -> Component {
        let stats = self.relay.lock().unwrap().clone();
        let load = |f: fn(&RelayStats) -> u64| stats.as_deref().map(f).unwrap_or(0);
        let mut detail = BTreeMap::new();
        detail.insert(
            "dead_lettered".to_owned(),
            json!(load(|s| s.dead.load(Ordering::Relaxed))),
        );
        Component {
            kind: ComponentKind::Relay,
            name: PIPELINE.to_owned(),
            state: if self.pause.is_paused() {
                ComponentState::Paused
            } else {
                ComponentState::Running
            },
            store: Some(STORE.to_owned()),
            done_total: load(|s| s.delivered()),
            failed_total: load(|s| s.failed.load(Ordering::Relaxed)),
            backlog: Some(self.backlog.load(Ordering::Relaxed)),
            lag: None,
            detail,
        }
    }
}

fn fixed(
    kind: ComponentKind,
    name: &str,
    backlog: Option<i64>,
    lag: Option<i64>,
    detail: serde_json::Value,
) -> Component {
    Component {
        kind,
        name: name.to_owned(),
        state: ComponentState::Running,
        store: Some(STORE.to_owned()),
        done_total: 0,
        failed_total: 0,
        backlog,
        lag,
        detail: serde_json::from_value(detail).unwrap(),
    }
}

impl Daemon for TestDaemon {
    fn overview(&self) -> Overview {
        Overview {
            components: vec![
                self.relay_component(),
                fixed(
                    ComponentKind::Consumer,
                    "billing/order.placed",
                    Some(3),
                    Some(1),
                    json!({
                        "topic": "order.placed", "group": "billing", "in_flight": 1,
                        "dead_lettered_total": 1, "oldest_age_seconds": 2.417
                    }),
                ),
                fixed(
                    ComponentKind::Consumer,
                    "billing/order.refunded",
                    Some(0),
                    Some(0),
                    json!({
                        "topic": "order.refunded", "group": "billing", "in_flight": 0,
                        "dead_lettered_total": 0
                    }),
                ),
                fixed(
                    ComponentKind::Forwarder,
                    "audit-events",
                    Some(12),
                    Some(12),
                    json!({"offset": 18234, "skipped_total": 0}),
                ),
                fixed(
                    ComponentKind::Capture,
                    "orders-cdc",
                    Some(0),
                    Some(1),
                    json!({"retained_wal_bytes": 7340032, "lag_seconds": 0.8, "dead_lettered_total": 0}),
                ),
                fixed(
                    ComponentKind::Export,
                    "nightly-orders",
                    None,
                    None,
                    json!({
                        "runs_succeeded_total": 31, "bytes_total": 48234496,
                        "last_success_age_seconds": 27000.0, "last_run_duration_seconds": 41.3
                    }),
                ),
                fixed(
                    ComponentKind::Import,
                    "orders-into-warehouse",
                    None,
                    None,
                    json!({
                        "batches_imported_total": 31, "batches_skipped_total": 1,
                        "batches_refused_total": 0, "last_pass_age_seconds": 95.0
                    }),
                ),
            ],
        }
    }

    fn stores(&self) -> Vec<NamedStore> {
        vec![self.store.clone()]
    }

    fn republish<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReplayError>> {
        // This process runs no consumer, as a relay-only daemon would.
        Box::pin(async move { Err(ReplayError::UnknownOwner(letter.consumer.clone())) })
    }

    fn redeliver_event<'a>(
        &'a self,
        reader: &'a str,
        _event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move { Err(ReplayError::UnknownOwner(reader.to_owned())) })
    }
}

/// One console under test.
pub struct Env {
    /// The store.
    pub db: Database,
    /// Where the console and API answer, e.g. `http://127.0.0.1:4321`.
    pub base: String,
    /// The relay's receiver.
    pub receiver: Receiver,
    receiver_url: String,
    daemon: Arc<TestDaemon>,
    /// The admin layer.
    pub admin: Admin,
    shutdown: CancellationToken,
    _db: TestDb,
}

impl Env {
    /// A console over a fresh database of `kind`; the relay is not started.
    pub async fn start(kind: DatabaseKind) -> Env {
        let (url, test_db) = match kind {
            DatabaseKind::Postgres => {
                let t = PgTestDb::create().await;
                (t.url.clone(), TestDb::Pg(t))
            }
            DatabaseKind::Sqlite => {
                let t = SqliteTestDb::create();
                (t.url.clone(), TestDb::Sqlite(t))
            }
            DatabaseKind::Mysql => panic!("the console tests run on SQLite and PostgreSQL"),
        };
        let db = Database::connect_with(
            &url,
            &ConnectOptions {
                max_connections: 8,
                ..relay_config(PauseSwitch::new()).connect_options()
            },
        )
        .await
        .unwrap();
        db.migrate().await.unwrap();
        let receiver = Receiver::default();
        let receiver_url = receiver.start().await;
        let shutdown = CancellationToken::new();
        let daemon = Arc::new(TestDaemon {
            store: NamedStore {
                name: STORE.to_owned(),
                db: db.clone(),
            },
            relay: Mutex::new(None),
            backlog: Arc::new(AtomicI64::new(0)),
            pause: PauseSwitch::new(),
        });
        spawn_watcher(db.clone(), daemon.clone(), shutdown.clone());
        let token = |name: &str, role, secret: &str| ApiToken {
            name: name.to_owned(),
            role,
            token: BearerToken::new(secret).unwrap(),
        };
        let mut config = AdminConfig::with_tokens(vec![
            token("ops-alice", Role::Admin, ADMIN_TOKEN),
            token("grafana", Role::ReadOnly, VIEWER_TOKEN),
        ]);
        config.sample_every = Duration::from_millis(250);
        config.chunk = 2;
        config.chunk_drain_timeout = Duration::from_secs(20);
        let admin = Admin::new(daemon.clone(), config);
        admin.spawn_sampler(shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = ferry_admin::router(admin.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        Env {
            db,
            base,
            receiver,
            receiver_url,
            daemon,
            admin,
            shutdown,
            _db: test_db,
        }
    }

    /// Starts the relay `orders`: the store's outbox to the receiver.
    pub async fn start_relay(&self) {
        let sink = ferry_adapters::SinkConfig::from_url(&self.receiver_url)
            .unwrap()
            .build()
            .await
            .unwrap();
        let running = ferry_relay::spawn_until(
            &self.db,
            sink,
            relay_config(self.daemon.pause.clone()),
            &self.shutdown,
        );
        *self.daemon.relay.lock().unwrap() = Some(running.stats.clone());
    }

    /// Writes messages to the outbox: `good` deliverable ones on `orders`,
    /// `bad` the receiver refuses for a missing field and `negative` it
    /// refuses for a negative amount (both on `payments`). Returns their
    /// ids in that order.
    pub async fn enqueue(&self, good: usize, bad: usize, negative: usize) -> Vec<String> {
        let mut messages = Vec::new();
        for i in 0..good {
            messages.push(
                Message::event(
                    "orders",
                    format!(r#"{{"order":{i},"total":"19.90","customer_id":7}}"#),
                )
                .with_key(format!("order-{}", i % 7))
                .with_header("tenant", "acme"),
            );
        }
        for i in 0..bad {
            messages.push(
                Message::event(
                    "payments",
                    format!(r#"{{"payment":{i},"note":"bad","amount":12}}"#),
                )
                .with_key(format!("payment-{i}")),
            );
        }
        for i in 0..negative {
            messages.push(
                Message::event(
                    "payments",
                    format!(r#"{{"payment":{i},"amount":-5,"note":"negative"}}"#),
                )
                .with_key(format!("refund-{i}")),
            );
        }
        self.db.enqueue(&messages).await.unwrap();
        messages.iter().map(|m| m.id.to_string()).collect()
    }

    /// Records a consumer dead letter, as a consumer of another process
    /// would have.
    pub async fn consumer_letter(&self) {
        let message = Message::event("invoices", r#"{"invoice":"INV-1042"}"#).with_key("INV-1042");
        let letter = DeadLetter::new(
            "billing",
            message,
            "handler failed: connection refused (os error 111) talking to http://10.0.4.17:8080/ledger",
            5,
        );
        self.db.record_dead_letter(&letter).await.unwrap();
    }

    /// Waits until the outbox holds `dead` dead and nothing pending.
    pub async fn settled(&self, dead: i64) {
        let start = Instant::now();
        loop {
            let s = self.db.outbox_stats().await.unwrap();
            if s.dead == dead && s.pending == 0 {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the outbox did not settle at {dead} dead: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the receiver has accepted `id`.
    pub async fn delivered(&self, id: &str) {
        let start = Instant::now();
        while !self.receiver.accepted().iter().any(|a| a == id) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the receiver never got {id}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the overview reports a backlog of `n` for the relay.
    pub async fn backlog(&self, n: i64) {
        let start = Instant::now();
        loop {
            let view = self.admin.overview().await;
            let relay = view
                .components
                .iter()
                .find(|c| c.component.name == PIPELINE)
                .and_then(|c| c.component.backlog);
            if relay == Some(n) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the overview's backlog stayed at {relay:?}, not {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A URL of the console or API.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The relay's settings: quick polls and retries, the test's pause switch.
fn relay_config(pause: PauseSwitch) -> RelayConfig {
    RelayConfig {
        name: PIPELINE.to_owned(),
        batch_size: 50,
        poll_interval: Duration::from_millis(100),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        sink_backoff: SinkBackoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        pause,
        // Delivered messages stay visible in the outbox browser.
        retention: Retention::Keep(Duration::from_secs(3600)),
        ..RelayConfig::default()
    }
}

/// What the daemon does beside its relays: reads the outbox's backlog for
/// the overview (it answers from memory) and follows the pause flags an
/// operator sets through the admin layer.
fn spawn_watcher(db: Database, daemon: Arc<TestDaemon>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            if let Ok(stats) = db.outbox_stats().await {
                daemon.backlog.store(stats.pending, Ordering::Relaxed);
            }
            if let Ok(paused) = db.paused().await {
                if paused.iter().any(|p| p.name == PIPELINE) {
                    daemon.pause.pause();
                } else {
                    daemon.pause.resume();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}
