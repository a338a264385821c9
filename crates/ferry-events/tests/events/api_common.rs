//! What the API and client tests share: a migrated database of each kind
//! and the API served on a loopback port.
#![allow(dead_code)]

use std::net::SocketAddr;

use ferry_events::api::{self, ApiConfig, ServeError};
use ferry_store::event_store::NewEvent;
use ferry_store::Database;
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A fresh, migrated database; dropped with the test.
pub struct Env {
    pub db: Database,
    _fresh: Fresh,
}

enum Fresh {
    Pg(PgTestDb),
    Sqlite(SqliteTestDb),
    Mysql(MysqlTestDb),
}

impl Env {
    pub async fn sqlite() -> Self {
        let t = SqliteTestDb::create();
        Self::migrated(&t.url.clone(), Fresh::Sqlite(t)).await
    }

    pub async fn postgres() -> Self {
        let t = PgTestDb::create().await;
        Self::migrated(&t.url.clone(), Fresh::Pg(t)).await
    }

    pub async fn mysql() -> Self {
        let t = MysqlTestDb::create().await;
        Self::migrated(&t.url.clone(), Fresh::Mysql(t)).await
    }

    /// A SQLite database without Ferry's tables.
    pub async fn sqlite_unmigrated() -> Self {
        let t = SqliteTestDb::create();
        let db = Database::connect(&t.url).await.unwrap();
        Self {
            db,
            _fresh: Fresh::Sqlite(t),
        }
    }

    async fn migrated(url: &str, fresh: Fresh) -> Self {
        let db = Database::connect(url).await.unwrap();
        db.migrate().await.unwrap();
        Self { db, _fresh: fresh }
    }

    /// Appends `events` in batches of at most 200; returns their `seq`s.
    pub async fn append(&self, events: &[NewEvent]) -> Vec<i64> {
        let mut seqs = Vec::with_capacity(events.len());
        for chunk in events.chunks(200) {
            seqs.extend(self.db.append_events(chunk).await.unwrap());
        }
        seqs
    }
}

/// Runs the test body on SQLite, PostgreSQL and MariaDB, a fresh database
/// each.
#[macro_export]
macro_rules! each_db {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::api_common::Env::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::api_common::Env::postgres().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                ($body)($crate::api_common::Env::mysql().await).await;
            }
        }
    };
}

/// `n` events of types `a`, `b`, `c` in turn, about orders 0..5.
pub fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::new(
                ["a", "b", "c"][i % 3],
                format!(r#"{{"i":{i}}}"#).into_bytes(),
            )
            .with_source("order", (i % 5).to_string())
        })
        .collect()
}

/// The API served by [`api::serve`] on a loopback port.
pub struct Served {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// The server's long polls, as it counts them.
    pub waiting: api::WaitingPolls,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Served {
    /// Serves `db` on a free loopback port.
    pub async fn start(db: &Database, config: ApiConfig) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), db, config).await
    }

    /// Serves `db` on `addr`.
    pub async fn start_on(addr: SocketAddr, db: &Database, config: ApiConfig) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = config.shutdown.clone();
        let waiting = config.waiting.clone();
        let task = tokio::spawn(api::serve(listener, db.clone(), config));
        Self {
            addr,
            shutdown,
            waiting,
            task,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// Waits (30 s at most) until `done` says so of the server's long
    /// polls.
    pub async fn until(&self, what: &str, done: impl Fn(&api::WaitingPolls) -> bool) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while !done(&self.waiting) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting until {what}");
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}
