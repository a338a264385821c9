//! The inbox on SQLite, PostgreSQL and MariaDB, each test on a fresh
//! database: a redelivered message is applied once, and a failed handler
//! rolls its inbox row back with its writes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_consumer::inbox::{inbox_fn, prune, Inbox, PruneConfig};
use ferry_consumer::memory::MemoryBroker;
use ferry_consumer::{Handler, HandlerError, Router, RouterConfig};
use ferry_core::{Message, Sink};
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};

use crate::support::{topic, wait_for, Graveyard, Running};

/// Runs `handler` under a router until `expected` messages were handled,
/// after publishing `messages`.
async fn consume(
    broker: &MemoryBroker,
    t: &str,
    handler: impl Handler,
    messages: &[Message],
    expected: u64,
) {
    let router = Router::builder()
        .subscriber(Arc::new(broker.clone()))
        .dead_letters(Graveyard::new())
        .config(&RouterConfig {
            retry: None,
            ..RouterConfig::default()
        })
        .event(t, "coupons", handler)
        .build()
        .unwrap();
    let stats = router.stats();
    let running = Running::start(router);
    wait_for("subscribed", || stats.get(t, "coupons").unwrap().subscribed).await;
    for m in messages {
        // One at a time: the second copy arrives after the first committed.
        broker.deliver(std::slice::from_ref(m)).await;
        let before = stats.get(t, "coupons").unwrap().handled;
        wait_for("the delivery", || {
            stats.get(t, "coupons").unwrap().handled > before
        })
        .await;
    }
    wait_for("every delivery", || {
        stats.get(t, "coupons").unwrap().handled == expected
    })
    .await;
    running.shut_down().await;
}

/// Fails the first call after writing (so the write must be rolled back),
/// if `fail_first`; counts calls.
macro_rules! inbox_tests {
    ($name:ident, $db:ty, $variant:path, $create:expr, $insert:literal) => {
        mod $name {
            use super::*;

            async fn setup() -> (sqlx::Pool<$db>, Box<dyn std::any::Any>) {
                let test_db = $create;
                let db = ferry_store::Database::connect(&test_db.url).await.unwrap();
                db.migrate().await.unwrap();
                let $variant(pool) = db else {
                    panic!("unexpected database kind")
                };
                sqlx::query("CREATE TABLE coupons (message_id VARCHAR(64) NOT NULL)")
                    .execute(&pool)
                    .await
                    .unwrap();
                (pool, Box::new(test_db))
            }

            fn handler(
                pool: sqlx::Pool<$db>,
                fail_first: bool,
                calls: Arc<AtomicU32>,
            ) -> impl Handler {
                Inbox::new(
                    pool,
                    inbox_fn(move |tx, message, _cx| {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        Box::pin(async move {
                            sqlx::query($insert)
                                .bind(message.id.to_string())
                                .execute(&mut **tx)
                                .await
                                .map_err(|e| {
                                    HandlerError::transient("insert failed").with_source(e)
                                })?;
                            if fail_first && n == 0 {
                                return Err(HandlerError::transient("lost the downstream answer"));
                            }
                            Ok(())
                        })
                    }),
                )
            }

            async fn count(pool: &sqlx::Pool<$db>, table: &str) -> i64 {
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }

            #[tokio::test]
            async fn a_message_delivered_twice_is_applied_once() {
                let (pool, _db) = setup().await;
                let broker = MemoryBroker::new();
                let t = topic("inbox");
                let calls = Arc::new(AtomicU32::new(0));
                let m = Message::event(&t, "{}");
                let h = handler(pool.clone(), false, calls.clone());
                consume(&broker, &t, h, &[m.clone(), m.clone()], 2).await;
                assert_eq!(count(&pool, "coupons").await, 1);
                assert_eq!(count(&pool, "ferry_inbox").await, 1);
                // The duplicate never reached the handler.
                assert_eq!(calls.load(Ordering::SeqCst), 1);
            }

            #[tokio::test]
            async fn a_failed_handler_rolls_back_its_inbox_row_so_the_retry_applies_it() {
                let (pool, _db) = setup().await;
                let broker = MemoryBroker::new();
                let t = topic("inbox-fail");
                let calls = Arc::new(AtomicU32::new(0));
                let m = Message::event(&t, "{}");
                let h = handler(pool.clone(), true, calls.clone());
                consume(&broker, &t, h, &[m], 1).await;
                assert_eq!(
                    calls.load(Ordering::SeqCst),
                    2,
                    "the redelivery ran the handler"
                );
                assert_eq!(count(&pool, "coupons").await, 1);
                assert_eq!(count(&pool, "ferry_inbox").await, 1);
            }

            #[tokio::test]
            async fn pruning_deletes_old_rows() {
                let (pool, _db) = setup().await;
                let broker = MemoryBroker::new();
                let t = topic("inbox-prune");
                let h = handler(pool.clone(), false, Arc::new(AtomicU32::new(0)));
                consume(&broker, &t, h, &[Message::event(&t, "{}")], 1).await;
                assert_eq!(count(&pool, "ferry_inbox").await, 1);
                let config = PruneConfig {
                    window: Duration::from_millis(1),
                    every: Duration::from_millis(20),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
                let stop = tokio_util::sync::CancellationToken::new();
                let task =
                    tokio::spawn(prune(pool.clone(), config, stop.clone().cancelled_owned()));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while count(&pool, "ferry_inbox").await != 0 {
                    assert!(tokio::time::Instant::now() < deadline, "rows not pruned");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                stop.cancel();
                task.await.unwrap();
            }
        }
    };
}

inbox_tests!(
    sqlite,
    sqlx::Sqlite,
    ferry_store::Database::Sqlite,
    SqliteTestDb::create(),
    "INSERT INTO coupons (message_id) VALUES (?)"
);
inbox_tests!(
    postgres,
    sqlx::Postgres,
    ferry_store::Database::Postgres,
    PgTestDb::create().await,
    "INSERT INTO coupons (message_id) VALUES ($1)"
);
inbox_tests!(
    mariadb,
    sqlx::MySql,
    ferry_store::Database::Mysql,
    MysqlTestDb::create().await,
    "INSERT INTO coupons (message_id) VALUES (?)"
);
