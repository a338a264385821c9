//! What the forwarder and domain-event tests share: a fresh, migrated
//! database of each kind, and a little SQL that differs between them.

use std::time::{Duration, Instant};

use ferry_core::BoxFuture;
use ferry_events::EventDatabase;
use ferry_store::event_store::NewEvent;
use ferry_store::{ConnectOptions, Database};
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};

/// A migrated database of its own, as a typed pool and as a [`Database`].
pub struct Env<DB: EventDatabase> {
    pub pool: sqlx::Pool<DB>,
    pub db: Database,
    pub url: String,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn connect(url: &str) -> Database {
    let db = Database::connect_with(
        url,
        &ConnectOptions {
            max_connections: 8,
            lease: None,
        },
    )
    .await
    .unwrap();
    db.migrate().await.unwrap();
    db
}

/// An environment on the fresh database at `url`, migrated; `guard`
/// (the test database) lives as long as it.
async fn env<DB: Sql>(url: String, guard: Box<dyn std::any::Any + Send>) -> Env<DB> {
    let db = connect(&url).await;
    Env {
        pool: DB::pool(&db).clone(),
        url,
        db,
        _guard: guard,
    }
}

pub async fn pg() -> Env<sqlx::Postgres> {
    let t = PgTestDb::create().await;
    env(t.url.clone(), Box::new(t)).await
}

pub async fn sqlite() -> Env<sqlx::Sqlite> {
    let t = SqliteTestDb::create();
    env(t.url.clone(), Box::new(t)).await
}

pub async fn mysql() -> Env<sqlx::MySql> {
    let t = MysqlTestDb::create().await;
    env(t.url.clone(), Box::new(t)).await
}

/// Runs the generic test case `$case` on each database named, as one test
/// per database: `$case::postgres`, `$case::sqlite`, `$case::mariadb`.
#[macro_export]
macro_rules! on {
    ($case:ident: $($db:ident),+) => {
        mod $case {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $db() {
                    super::$case($crate::support::env::$db().await).await
                }
            )+
        }
    };
}

pub mod env {
    pub async fn postgres() -> super::Env<sqlx::Postgres> {
        super::pg().await
    }
    pub async fn sqlite() -> super::Env<sqlx::Sqlite> {
        super::sqlite().await
    }
    pub async fn mariadb() -> super::Env<sqlx::MySql> {
        super::mysql().await
    }
}

/// The SQL the tests run, per database: a table `name (id)` of strings.
pub trait Sql: EventDatabase {
    /// The typed pool of `db`, which is of this kind.
    fn pool(db: &Database) -> &sqlx::Pool<Self>;
    /// Runs `sql` (no parameters) on the pool.
    fn exec<'a>(pool: &'a sqlx::Pool<Self>, sql: &'a str) -> BoxFuture<'a, ()>;
    /// Inserts `id` into `table` on `conn`.
    fn insert<'a>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        id: String,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    /// The ids in `table`, sorted.
    fn ids<'a>(pool: &'a sqlx::Pool<Self>, table: &'a str) -> BoxFuture<'a, Vec<String>>;
}

macro_rules! sql_for {
    ($db:ty, $variant:ident, $placeholder:literal) => {
        impl Sql for $db {
            fn pool(db: &Database) -> &sqlx::Pool<Self> {
                let Database::$variant(pool) = db else {
                    unreachable!()
                };
                pool
            }
            fn exec<'a>(pool: &'a sqlx::Pool<Self>, sql: &'a str) -> BoxFuture<'a, ()> {
                Box::pin(async move {
                    sqlx::query(sql).execute(pool).await.unwrap();
                })
            }
            fn insert<'a>(
                conn: &'a mut Self::Connection,
                table: &'a str,
                id: String,
            ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
                Box::pin(async move {
                    sqlx::query(&format!(
                        concat!("INSERT INTO {} (id) VALUES (", $placeholder, ")"),
                        table
                    ))
                    .bind(id)
                    .execute(conn)
                    .await
                    .map(drop)
                })
            }
            fn ids<'a>(pool: &'a sqlx::Pool<Self>, table: &'a str) -> BoxFuture<'a, Vec<String>> {
                Box::pin(async move {
                    sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
                        .fetch_all(pool)
                        .await
                        .unwrap()
                })
            }
        }
    };
}

sql_for!(sqlx::Postgres, Postgres, "$1");
sql_for!(sqlx::Sqlite, Sqlite, "?");
sql_for!(sqlx::MySql, Mysql, "?");

/// Creates table `name (id VARCHAR(64))`.
pub async fn table<DB: Sql>(pool: &sqlx::Pool<DB>, name: &str) {
    DB::exec(
        pool,
        &format!("CREATE TABLE {name} (id VARCHAR(64) NOT NULL)"),
    )
    .await;
}

/// `n` events `e0`, `e1`, … of type `t`, their number as payload, about
/// source `s<i % sources>` (no source when `sources` is 0).
pub fn events(n: usize, sources: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            let e = NewEvent::new("t", format!("{{\"i\":{i}}}"));
            if sources == 0 {
                e
            } else {
                e.with_source("s", (i % sources).to_string())
            }
        })
        .collect()
}

/// Waits until `f` holds, up to `limit` (then fails, naming `what`).
pub async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
