#![allow(missing_docs)]
//! The store conformance suite: every test runs on SQLite, PostgreSQL and
//! MariaDB (a fresh database each), plus concurrency tests for the servers,
//! and the broker conformance suite on the outbox used as a broker
//! (`outbox_broker`).

use std::time::Duration;

use chrono::Utc;
use ferry_core::Message;
use ferry_store::outbox::{
    mysql::MysqlOutbox, postgres::PgOutbox, sqlite::SqliteOutbox, ClaimFilter, ClaimedBatch,
    MessageRef, OrderPolicy, Outbox, Outcome, Retention,
};
use ferry_store::{ConnectOptions, Database, DatabaseKind, StoreError};
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};

mod admin;
mod admin_props;
mod conformance;
mod consumer;
mod events;
mod mysql_only;
mod outbox_broker;
mod postgres_only;
mod sqlite_open;

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

/// The options of the servers' test pools: a lease, so that a hung claim
/// is released.
fn server_options() -> ConnectOptions {
    ConnectOptions {
        max_connections: 8,
        lease: Some(Duration::from_secs(30)),
    }
}

pub async fn pg_env(retention: Retention) -> Env {
    pg_env_with(retention, server_options()).await
}

pub async fn pg_env_with(retention: Retention, options: ConnectOptions) -> Env {
    env_on(FreshDb::Pg(PgTestDb::create().await), retention, options).await
}

pub async fn mysql_env(retention: Retention) -> Env {
    mysql_env_with(retention, server_options()).await
}

pub async fn mysql_env_with(retention: Retention, options: ConnectOptions) -> Env {
    env_on(
        FreshDb::Mysql(MysqlTestDb::create().await),
        retention,
        options,
    )
    .await
}

pub async fn sqlite_env(retention: Retention) -> Env {
    let t = FreshDb::Sqlite(SqliteTestDb::create());
    env_on(t, retention, ConnectOptions::default()).await
}

/// `t` migrated, with an outbox on it.
async fn env_on(t: FreshDb, retention: Retention, options: ConnectOptions) -> Env {
    let db = Database::connect_with(t.url(), &options).await.unwrap();
    db.migrate().await.unwrap();
    let outbox = match &db {
        Database::Postgres(p) => AnyOutbox::Pg(PgOutbox::new(p.clone(), retention)),
        Database::Sqlite(p) => AnyOutbox::Sqlite(SqliteOutbox::new(p.clone(), retention)),
        Database::Mysql(p) => AnyOutbox::Mysql(MysqlOutbox::new(p.clone(), retention)),
    };
    Env { db, outbox, _t: t }
}

/// `$body` with `$x` bound to the value of whichever of the variants of
/// `$enum` `$e` is.
#[macro_export]
macro_rules! each_variant {
    ($e:expr, $enum:ident { $($variant:ident),* }, |$x:ident| $body:expr) => {
        match $e {
            $($enum::$variant($x) => $body,)*
        }
    };
}

/// `$body` with `$pool` bound to the pool of the [`Database`] `$db`.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        $crate::each_variant!(
            $db,
            Database {
                Postgres,
                Sqlite,
                Mysql
            },
            |$pool| $body
        )
    };
}

/// `$body` with `$o` bound to the outbox of `$outbox`, an [`AnyOutbox`].
macro_rules! with_outbox {
    ($outbox:expr, |$o:ident| $body:expr) => {
        each_variant!($outbox, AnyOutbox { Pg, Sqlite, Mysql }, |$o| $body)
    };
}

/// Enqueues `$messages` one by one with the `enqueue` of the outbox module
/// of the [`Database`] `$db`, in a transaction of its pool that ends with
/// `$end` (`commit` or `rollback`).
#[macro_export]
macro_rules! enqueue_each {
    ($db:expr, $messages:expr, $end:ident) => {
        match $db {
            Database::Postgres(p) => $crate::enqueue_each!(@ p, postgres, $messages, $end),
            Database::Sqlite(p) => $crate::enqueue_each!(@ p, sqlite, $messages, $end),
            Database::Mysql(p) => $crate::enqueue_each!(@ p, mysql, $messages, $end),
        }
    };
    (@ $pool:expr, $module:ident, $messages:expr, $end:ident) => {{
        let mut tx = $pool.begin().await.unwrap();
        for m in $messages {
            ferry_store::outbox::$module::enqueue(&mut tx, m)
                .await
                .unwrap();
        }
        tx.$end().await.unwrap();
    }};
}

impl Env {
    /// Runs plain SQL, as a producer in another language would.
    pub async fn exec(&self, sql: &str) {
        on_pool!(&self.db, |p| {
            sqlx::raw_sql(sql).execute(p).await.unwrap();
        })
    }

    /// Enqueues messages in one committed transaction of their own
    /// ([`Database::enqueue`], which uses `enqueue_many` on PostgreSQL).
    pub async fn enqueue(&self, messages: &[Message]) {
        self.db.enqueue(messages).await.unwrap();
    }

    /// Enqueues messages one by one inside a transaction of the test's own,
    /// as a producer does with its business change.
    pub async fn enqueue_in_tx(&self, messages: &[Message]) {
        enqueue_each!(&self.db, messages, commit)
    }

    /// Claims a batch and settles it with `decide`; returns the topics/payloads claimed.
    pub async fn round(
        &self,
        filter: &ClaimFilter,
        decide: impl Fn(&Message) -> Outcome,
    ) -> Vec<Message> {
        with_outbox!(&self.outbox, |o| round(o, filter, decide).await)
    }

    pub async fn next_retry_in(&self, topics: Option<&[String]>) -> Option<Duration> {
        with_outbox!(&self.outbox, |o| o.next_retry_in(topics).await.unwrap())
    }

    pub async fn claim_raw(&self, filter: &ClaimFilter) -> Vec<ferry_store::outbox::Claimed> {
        with_outbox!(&self.outbox, |o| {
            let b = o.claim(filter).await.unwrap();
            let m = b.messages().to_vec();
            b.settle(&vec![Outcome::Released; m.len()]).await.unwrap();
            m
        })
    }

    /// Claims a batch and drops it without settling.
    pub async fn claim_and_drop(&self, filter: &ClaimFilter) -> Vec<ferry_store::outbox::Claimed> {
        with_outbox!(&self.outbox, |o| o
            .claim(filter)
            .await
            .unwrap()
            .messages()
            .to_vec())
    }

    pub async fn purge(&self, older_than: Duration) -> u64 {
        with_outbox!(&self.outbox, |o| o
            .purge_delivered(older_than)
            .await
            .unwrap())
    }

    /// Moves every inbox row's `received_at` two hours into the past, so a
    /// retention test does not depend on how fast the machine runs.
    pub async fn age_inbox_two_hours(&self) {
        let sql = match &self.db {
            Database::Postgres(_) => {
                "UPDATE ferry_inbox SET received_at = now() - interval '2 hours'"
            }
            Database::Mysql(_) => {
                "UPDATE ferry_inbox SET received_at = CURRENT_TIMESTAMP(6) - INTERVAL 2 HOUR"
            }
            Database::Sqlite(_) => {
                "UPDATE ferry_inbox SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')"
            }
        };
        self.exec(sql).await
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        on_pool!(&self.db, |p| sqlx::query_scalar(sql)
            .fetch_one(p)
            .await
            .unwrap())
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

/// A transaction (`slow`, committed by `commit`) that took the lower
/// sequence number `low` but commits after a higher one is still
/// delivered. Returns `low`.
#[macro_export]
macro_rules! late_committing_lower_sequence_is_not_skipped {
    ($env:expr, $variant:ident, $module:ident) => {{
        let env = $env;
        let Database::$variant(p) = &env.db else {
            unreachable!()
        };
        let mut slow = p.begin().await.unwrap();
        let low = ferry_store::outbox::$module::enqueue(&mut slow, &Message::event("t", "slow"))
            .await
            .unwrap();
        env.enqueue(&[Message::event("t", "fast")]).await;
        let f = filter(OrderPolicy::Ordered);
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["fast"]
        );
        slow.commit().await.unwrap();
        let late = env.round(&f, |_| Outcome::Delivered).await;
        assert_eq!(payloads(&late), ["slow"]);
        low
    }};
}

/// Two relays claiming at the same time never get the same message, and a
/// key is never split across them: a later claim leaves out the keys an
/// earlier, unsettled claim holds (the gap probes), and takes the others.
pub async fn concurrent_claims_are_disjoint_and_keep_keys_whole<O: Outbox>(env: &Env, o: &O) {
    // seq 1-20: keys a0-a3; seq 21-40: keys b0-b3; seq 41-50: a0 again and c0.
    let mut ms: Vec<Message> = (0..20)
        .map(|i| Message::event("t", i.to_string()).with_key(format!("a{}", i % 4)))
        .collect();
    ms.extend((20..40).map(|i| Message::event("t", i.to_string()).with_key(format!("b{}", i % 4))));
    ms.extend((40..50).map(|i| {
        Message::event("t", i.to_string()).with_key(if i % 2 == 0 { "a0" } else { "c0" })
    }));
    env.enqueue(&ms).await;
    let f = |limit| ClaimFilter {
        limit,
        ..filter(OrderPolicy::Ordered)
    };
    let keys = |x: &O::Batch| {
        x.messages()
            .iter()
            .map(|c| c.message.as_ref().unwrap().key.clone().unwrap())
            .collect::<std::collections::HashSet<_>>()
    };
    let seqs = |x: &O::Batch| x.messages().iter().map(|c| c.seq).collect::<Vec<_>>();
    let a = o.claim(&f(20)).await.unwrap();
    let b = o.claim(&f(20)).await.unwrap();
    let c = o.claim(&f(20)).await.unwrap();
    assert_eq!(seqs(&a).len(), 20);
    assert_eq!(seqs(&b).len(), 20, "b takes keys a does not hold");
    assert!(keys(&b).iter().all(|k| k.starts_with('b')));
    // c's candidates are seq 41-50: a0 is held by a, so only c0 comes back.
    assert_eq!(keys(&c), ["c0".to_owned()].into_iter().collect());
    assert_eq!(seqs(&c).len(), 5);
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c)] {
        assert!(seqs(x).iter().all(|s| !seqs(y).contains(s)), "disjoint");
        assert!(keys(x).is_disjoint(&keys(y)), "no key split across relays");
    }
    for batch in [a, b, c] {
        let n = batch.messages().len();
        batch.settle(&vec![Outcome::Delivered; n]).await.unwrap();
    }
    // a0's later messages are claimable now, after a0's earlier ones.
    let rest = env.round(&f(50), |_| Outcome::Delivered).await;
    assert_eq!(payloads(&rest), ["40", "42", "44", "46", "48"]);
}

/// A claim whose session `kill` ends is released at once: the message is
/// claimed again, and the dead claim cannot settle.
pub async fn a_dead_session_releases_its_claim<O: Outbox, F: std::future::Future<Output = ()>>(
    env: &Env,
    o: &O,
    kill: impl FnOnce() -> F,
) {
    env.enqueue(&[Message::event("t", "x")]).await;
    let f = filter(OrderPolicy::Ordered);
    let held = o.claim(&f).await.unwrap();
    assert_eq!(held.messages().len(), 1);
    assert!(
        o.claim(&f).await.unwrap().messages().is_empty(),
        "locked by the first claim"
    );
    kill().await;
    let mut got = Vec::new();
    for _ in 0..50 {
        got = env.round(&f, |_| Outcome::Delivered).await;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(payloads(&got), ["x"]);
    assert!(
        held.settle(&[Outcome::Delivered]).await.is_err(),
        "the dead claim cannot settle"
    );
}

/// The lease: a claim left idle is ended by the server, so that its message
/// is claimable again `expired_after` the claim (and, when `held_at` is
/// given, still held that long after it).
pub async fn an_idle_claim_expires_after_the_lease<O: Outbox>(
    env: &Env,
    o: &O,
    held_at: Option<Duration>,
    expired_after: Duration,
) {
    env.enqueue_in_tx(&[Message::event("t", "x")]).await;
    let f = filter(OrderPolicy::Ordered);
    let held = o.claim(&f).await.unwrap();
    assert_eq!(held.messages().len(), 1);
    if let Some(held_at) = held_at {
        tokio::time::sleep(held_at).await;
        assert!(
            o.claim(&f).await.unwrap().messages().is_empty(),
            "still held within the lease"
        );
    }
    tokio::time::sleep(expired_after).await;
    let again = o.claim(&f).await.unwrap();
    assert_eq!(
        again.messages().len(),
        1,
        "lease expired, message claimable again"
    );
    again.settle(&[Outcome::Delivered]).await.unwrap();
    assert!(held.settle(&[Outcome::Delivered]).await.is_err());
}

/// The options of a pool with a short lease (300 ms).
pub fn short_lease() -> ConnectOptions {
    ConnectOptions {
        max_connections: 4,
        lease: Some(Duration::from_millis(300)),
    }
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
