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
    ($($name:ident: $db:ty, $variant:ident, $create:expr, $placeholder:literal;)*) => {$(
        mod $name {
            use super::*;

            async fn setup() -> (sqlx::Pool<$db>, Box<dyn std::any::Any>) {
                let test_db = $create;
                let db = ferry_store::Database::connect(&test_db.url).await.unwrap();
                db.migrate().await.unwrap();
                let ferry_store::Database::$variant(pool) = db else {
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
                            sqlx::query(concat!(
                                "INSERT INTO coupons (message_id) VALUES (",
                                $placeholder,
                                ")"
                            ))
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

            /// On a fresh database, delivers one message `copies` times
            /// (one after the other) to `handler(fail_first)` until
            /// `handled` deliveries were handled: the pool, the test
            /// database (dropped last) and how often the handler ran.
            async fn deliver_one(
                name: &str,
                fail_first: bool,
                copies: usize,
                handled: u64,
            ) -> (sqlx::Pool<$db>, Box<dyn std::any::Any>, u32) {
                let (pool, db) = setup().await;
                let broker = MemoryBroker::new();
                let t = topic(name);
                let calls = Arc::new(AtomicU32::new(0));
                let copies = vec![Message::event(&t, "{}"); copies];
                let h = handler(pool.clone(), fail_first, calls.clone());
                consume(&broker, &t, h, &copies, handled).await;
                (pool, db, calls.load(Ordering::SeqCst))
            }

            #[tokio::test]
            async fn a_message_delivered_twice_is_applied_once() {
                let (pool, _db, calls) = deliver_one("inbox", false, 2, 2).await;
                assert_eq!(count(&pool, "coupons").await, 1);
                assert_eq!(count(&pool, "ferry_inbox").await, 1);
                // The duplicate never reached the handler.
                assert_eq!(calls, 1);
            }

            #[tokio::test]
            async fn a_failed_handler_rolls_back_its_inbox_row_so_the_retry_applies_it() {
                let (pool, _db, calls) = deliver_one("inbox-fail", true, 1, 1).await;
                assert_eq!(calls, 2, "the redelivery ran the handler");
                assert_eq!(count(&pool, "coupons").await, 1);
                assert_eq!(count(&pool, "ferry_inbox").await, 1);
            }

            #[tokio::test]
            async fn pruning_deletes_old_rows() {
                let (pool, _db, _) = deliver_one("inbox-prune", false, 1, 1).await;
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
    )*};
}

inbox_tests! {
    sqlite: sqlx::Sqlite, Sqlite, SqliteTestDb::create(), "?";
    postgres: sqlx::Postgres, Postgres, PgTestDb::create().await, "$1";
    mariadb: sqlx::MySql, Mysql, MysqlTestDb::create().await, "?";
}
