//! Test helpers shared by Ferry's crates: a fresh PostgreSQL or MariaDB
//! database per test, a SQLite file per test, a webhook receiver that
//! records what it gets and applies each message id once, and the broker
//! adapters' stream and naming helpers ([`broker`]).

pub mod broker;
pub mod nats_server;
pub mod otlp;
pub mod private_pg;
pub mod s3;
pub mod sftp;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use sqlx::{Connection, Executor, MySqlConnection, PgConnection};

/// The server tests create their databases on; `FERRY_TEST_PG` overrides it.
pub fn pg_admin_url() -> String {
    std::env::var("FERRY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A PostgreSQL database of its own for one test, dropped afterwards.
pub struct PgTestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl PgTestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> Self {
        let admin = pg_admin_url();
        let name = format!("ferry_t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to PostgreSQL (is it running?)");
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        Self {
            url: database_url(&admin, &name),
            name,
        }
    }
}

/// `server` with its database replaced by `name`: same host, user and
/// parameters.
fn database_url(server: &str, name: &str) -> String {
    let mut url = url::Url::parse(server).expect("FERRY_TEST_PG is a URL");
    url.set_path(name);
    url.into()
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee; use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&pg_admin_url()).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// The MariaDB server tests create their databases on; `FERRY_TEST_MYSQL`
/// overrides it.
pub fn mysql_admin_url() -> String {
    std::env::var("FERRY_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A MariaDB database of its own for one test, dropped afterwards.
pub struct MysqlTestDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl MysqlTestDb {
    /// Creates a fresh, empty database.
    pub async fn create() -> Self {
        let admin = mysql_admin_url();
        let name = format!("ferry_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = MySqlConnection::connect(&admin)
            .await
            .expect("connect to MariaDB (is it running?)");
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin).expect("FERRY_TEST_MYSQL is a URL");
        url.set_path(&name);
        Self {
            url: url.into(),
            name,
        }
    }
}

impl Drop for MysqlTestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = MySqlConnection::connect(&mysql_admin_url()).await.ok()?;
                // Sessions still open on the database (a pool not closed
                // yet, a claim held) would make DROP wait for their locks.
                let sessions: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM information_schema.processlist WHERE db = ?",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .ok()?;
                for id in sessions {
                    let _ = conn.execute(format!("KILL {id}").as_str()).await;
                }
                let _ = conn.execute("SET SESSION lock_wait_timeout = 30").await;
                let dropped = conn
                    .execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                    .await
                    .ok();
                let _ = conn.close().await;
                dropped
            })
        })
        .join();
    }
}

/// A SQLite database file in a temporary directory of its own.
pub struct SqliteTestDb {
    /// Its URL.
    pub url: String,
    /// The file's path.
    pub path: std::path::PathBuf,
    _dir: TempDir,
}

impl SqliteTestDb {
    /// A path for a new database file (created on first connect).
    pub fn create() -> Self {
        let dir = TempDir::new();
        let path = dir.0.join("ferry.db");
        Self {
            url: format!("sqlite://{}", path.display()),
            path,
            _dir: dir,
        }
    }
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system's temp dir.
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("ferry-test-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the receiver answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// 200 for everything (but 400 for payloads containing `poison`, and 503
    /// for payloads containing `refuse`: one message the service refuses as
    /// if it were down).
    #[default]
    Up,
    /// 503 for everything: the service is down.
    Down,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// `ce-id`.
    pub id: String,
    /// `ce-partitionkey`, if any.
    pub key: Option<String>,
    /// The body.
    pub body: Bytes,
    /// All headers, lowercased names.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    mode: Mode,
    requests: Vec<Received>,
    applied: Vec<Received>,
    seen: HashSet<String>,
    requests_while_down: usize,
    delay: std::time::Duration,
}

/// A webhook receiver on 127.0.0.1 that records requests and applies each
/// `ce-id` once (an idempotent consumer), answering per its [`Mode`].
#[derive(Clone)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// Starts a receiver on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Self::serve(listener)
    }

    /// Starts a receiver on `listener`.
    pub fn serve(listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/", post(handle))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Switches how it answers.
    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    /// Makes every answer wait this long (a slow receiver).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.inner.lock().unwrap().delay = delay;
    }

    /// Every request, duplicates included.
    pub fn requests(&self) -> Vec<Received> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Messages applied (first delivery of each id, answered 200), in order.
    pub fn applied(&self) -> Vec<Received> {
        self.inner.lock().unwrap().applied.clone()
    }

    /// Requests answered 503 while down.
    pub fn requests_while_down(&self) -> usize {
        self.inner.lock().unwrap().requests_while_down
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let Some(id) = headers.get("ce-id").cloned() else {
        return StatusCode::BAD_REQUEST;
    };
    let received = Received {
        id,
        key: headers.get("ce-partitionkey").cloned(),
        body,
        headers,
    };
    let (status, delay) = {
        let mut inner = inner.lock().unwrap();
        let status = apply(&mut inner, received);
        (status, inner.delay)
    };
    // Applied first, answered later: a sender cut off in between sends again.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    status
}

fn apply(inner: &mut Inner, received: Received) -> StatusCode {
    inner.requests.push(received.clone());
    if inner.mode == Mode::Down {
        inner.requests_while_down += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if received.body.windows(6).any(|w| w == b"poison") {
        return StatusCode::BAD_REQUEST;
    }
    if received.body.windows(6).any(|w| w == b"refuse") {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if inner.seen.insert(received.id.clone()) {
        inner.applied.push(received);
    }
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_database_url_keeps_the_parameters() {
        assert_eq!(
            super::database_url("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(
            super::database_url("postgres://u@h", "t1"),
            "postgres://u@h/t1"
        );
    }
}
