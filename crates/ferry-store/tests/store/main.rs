#![allow(missing_docs)]
//! The store conformance suite: every test runs on SQLite, PostgreSQL and
//! MariaDB (a fresh database each), plus concurrency tests for the servers.

use std::time::Duration;

use chrono::Utc;
use ferry_core::Message;
use ferry_store::outbox::{
    mysql::MysqlOutbox, postgres::PgOutbox, sqlite::SqliteOutbox, ClaimFilter, ClaimedBatch,
    MessageRef, OrderPolicy, Outbox, Outcome, Retention,
};
use ferry_store::{ConnectOptions, Database, DatabaseKind, StoreError};
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};

mod conformance;
mod consumer;
mod events;
mod mysql_only;
mod postgres_only;

/// A migrated database and an outbox on it, of either kind.
pub struct Env {
    pub db: Database,
    pub outbox: AnyOutbox,
    _t: FreshDb,
}

pub enum AnyOutbox {
    Pg(PgOutbox),
    Sqlite(SqliteOutbox),
    Mysql(MysqlOutbox),
}

pub async fn pg_env(retention: Retention) -> Env {
    pg_env_with(
        retention,
        ConnectOptions {
            max_connections: 8,
            lease: Some(Duration::from_secs(30)),
        },
    )
    .await
}

pub async fn pg_env_with(retention: Retention, options: ConnectOptions) -> Env {
    let t = PgTestDb::create().await;
    let db = Database::connect_with(&t.url, &options).await.unwrap();
    db.migrate().await.unwrap();
    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let outbox = AnyOutbox::Pg(PgOutbox::new(pool.clone(), retention));
    Env {
        db,
        outbox,
        _t: FreshDb::Pg(t),
    }
}

pub async fn mysql_env(retention: Retention) -> Env {
    mysql_env_with(
        retention,
        ConnectOptions {
            max_connections: 8,
            lease: Some(Duration::from_secs(30)),
        },
    )
    .await
}

pub async fn mysql_env_with(retention: Retention, options: ConnectOptions) -> Env {
    let t = MysqlTestDb::create().await;
    let db = Database::connect_with(&t.url, &options).await.unwrap();
    db.migrate().await.unwrap();
    let Database::Mysql(pool) = &db else {
        unreachable!()
    };
    let outbox = AnyOutbox::Mysql(MysqlOutbox::new(pool.clone(), retention));
    Env {
        db,
        outbox,
        _t: FreshDb::Mysql(t),
    }
}

pub async fn sqlite_env(retention: Retention) -> Env {
    let t = SqliteTestDb::create();
    let db = Database::connect(&t.url).await.unwrap();
    db.migrate().await.unwrap();
    let Database::Sqlite(pool) = &db else {
        unreachable!()
    };
    let outbox = AnyOutbox::Sqlite(SqliteOutbox::new(pool.clone(), retention));
    Env {
        db,
        outbox,
        _t: FreshDb::Sqlite(t),
    }
}

impl Env {
    /// Runs plain SQL, as a producer in another language would.
    pub async fn exec(&self, sql: &str) {
        match &self.db {
            Database::Postgres(p) => {
                sqlx::raw_sql(sql).execute(p).await.unwrap();
            }
            Database::Sqlite(p) => {
                sqlx::raw_sql(sql).execute(p).await.unwrap();
            }
            Database::Mysql(p) => {
                sqlx::raw_sql(sql).execute(p).await.unwrap();
            }
        }
    }

    /// Enqueues messages in one committed transaction of their own
    /// ([`Database::enqueue`], which uses `enqueue_many` on PostgreSQL).
    pub async fn enqueue(&self, messages: &[Message]) {
        self.db.enqueue(messages).await.unwrap();
    }

    /// Enqueues messages one by one inside a transaction of the test's own,
    /// as a producer does with its business change.
    pub async fn enqueue_in_tx(&self, messages: &[Message]) {
        match &self.db {
            Database::Postgres(p) => {
                let mut tx = p.begin().await.unwrap();
                for m in messages {
                    ferry_store::outbox::postgres::enqueue(&mut tx, m)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            Database::Sqlite(p) => {
                let mut tx = p.begin().await.unwrap();
                for m in messages {
                    ferry_store::outbox::sqlite::enqueue(&mut tx, m)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
            Database::Mysql(p) => {
                let mut tx = p.begin().await.unwrap();
                for m in messages {
                    ferry_store::outbox::mysql::enqueue(&mut tx, m)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
    }

    /// Claims a batch and settles it with `decide`; returns the topics/payloads claimed.
    pub async fn round(
        &self,
        filter: &ClaimFilter,
        decide: impl Fn(&Message) -> Outcome,
    ) -> Vec<Message> {
        match &self.outbox {
            AnyOutbox::Pg(o) => round(o, filter, decide).await,
            AnyOutbox::Sqlite(o) => round(o, filter, decide).await,
            AnyOutbox::Mysql(o) => round(o, filter, decide).await,
        }
    }

    pub async fn next_retry_in(&self, topics: Option<&[String]>) -> Option<Duration> {
        match &self.outbox {
            AnyOutbox::Pg(o) => o.next_retry_in(topics).await.unwrap(),
            AnyOutbox::Sqlite(o) => o.next_retry_in(topics).await.unwrap(),
            AnyOutbox::Mysql(o) => o.next_retry_in(topics).await.unwrap(),
        }
    }

    pub async fn claim_raw(&self, filter: &ClaimFilter) -> Vec<ferry_store::outbox::Claimed> {
        match &self.outbox {
            AnyOutbox::Pg(o) => {
                let b = o.claim(filter).await.unwrap();
                let m = b.messages().to_vec();
                b.settle(&vec![Outcome::Released; m.len()]).await.unwrap();
                m
            }
            AnyOutbox::Sqlite(o) => {
                let b = o.claim(filter).await.unwrap();
                let m = b.messages().to_vec();
                b.settle(&vec![Outcome::Released; m.len()]).await.unwrap();
                m
            }
            AnyOutbox::Mysql(o) => {
                let b = o.claim(filter).await.unwrap();
                let m = b.messages().to_vec();
                b.settle(&vec![Outcome::Released; m.len()]).await.unwrap();
                m
            }
        }
    }

    /// Claims a batch and drops it without settling.
    pub async fn claim_and_drop(&self, filter: &ClaimFilter) -> Vec<ferry_store::outbox::Claimed> {
        match &self.outbox {
            AnyOutbox::Pg(o) => o.claim(filter).await.unwrap().messages().to_vec(),
            AnyOutbox::Sqlite(o) => o.claim(filter).await.unwrap().messages().to_vec(),
            AnyOutbox::Mysql(o) => o.claim(filter).await.unwrap().messages().to_vec(),
        }
    }

    pub async fn purge(&self, older_than: Duration) -> u64 {
        match &self.outbox {
            AnyOutbox::Pg(o) => o.purge_delivered(older_than).await.unwrap(),
            AnyOutbox::Sqlite(o) => o.purge_delivered(older_than).await.unwrap(),
            AnyOutbox::Mysql(o) => o.purge_delivered(older_than).await.unwrap(),
        }
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        match &self.db {
            Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Database::Mysql(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }
}

async fn round<O: Outbox>(
    o: &O,
    filter: &ClaimFilter,
    decide: impl Fn(&Message) -> Outcome,
) -> Vec<Message> {
    let batch = o.claim(filter).await.unwrap();
    let messages: Vec<Message> = batch
        .messages()
        .iter()
        .map(|c| c.message.clone().unwrap())
        .collect();
    let outcomes: Vec<Outcome> = messages.iter().map(&decide).collect();
    batch.settle(&outcomes).await.unwrap();
    messages
}

pub fn filter(order: OrderPolicy) -> ClaimFilter {
    ClaimFilter {
        limit: 100,
        order,
        topics: None,
        one_per_key: false,
    }
}

pub fn payloads(ms: &[Message]) -> Vec<String> {
    ms.iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect()
}

pub fn retry_in(ms: i64) -> Outcome {
    Outcome::Failed {
        error: "boom".into(),
        retry_at: Some(Utc::now() + chrono::Duration::milliseconds(ms)),
    }
}

pub fn dead(error: &str) -> Outcome {
    Outcome::Failed {
        error: error.into(),
        retry_at: None,
    }
}

pub fn seq_ref(seq: i64) -> MessageRef {
    MessageRef::Seq(seq)
}

/// Defines a test that runs `body` against SQLite, PostgreSQL and MariaDB.
#[macro_export]
macro_rules! each_db {
    ($name:ident, $retention:expr, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                let env = $crate::sqlite_env($retention).await;
                ($body)(env).await;
            }
            #[tokio::test]
            async fn postgres() {
                let env = $crate::pg_env($retention).await;
                ($body)(env).await;
            }
            #[tokio::test]
            async fn mysql() {
                let env = $crate::mysql_env($retention).await;
                ($body)(env).await;
            }
        }
    };
}

/// A fresh, unmigrated database, dropped with this value.
pub enum FreshDb {
    Pg(PgTestDb),
    Sqlite(SqliteTestDb),
    Mysql(MysqlTestDb),
}

impl FreshDb {
    pub async fn create(kind: DatabaseKind) -> Self {
        match kind {
            DatabaseKind::Postgres => FreshDb::Pg(PgTestDb::create().await),
            DatabaseKind::Sqlite => FreshDb::Sqlite(SqliteTestDb::create()),
            DatabaseKind::Mysql => FreshDb::Mysql(MysqlTestDb::create().await),
        }
    }

    pub fn url(&self) -> &str {
        match self {
            FreshDb::Pg(t) => &t.url,
            FreshDb::Sqlite(t) => &t.url,
            FreshDb::Mysql(t) => &t.url,
        }
    }
}

/// Defines a test that runs `body` with a [`DatabaseKind`], for tests that
/// need fresh, unmigrated databases ([`FreshDb`]): once with each database.
#[macro_export]
macro_rules! each_fresh_db {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                ($body)(ferry_store::DatabaseKind::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                ($body)(ferry_store::DatabaseKind::Postgres).await;
            }
            #[tokio::test]
            async fn mysql() {
                ($body)(ferry_store::DatabaseKind::Mysql).await;
            }
        }
    };
}
