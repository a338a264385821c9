//! Domain events in units of work against real databases: after-commit
//! handlers never run on rollback or drop, an in-transaction handler's
//! error rolls the business write back, executor handlers run on the
//! executor after commit, and durable events survive a crash between
//! commit and handling.

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_events::forwarder::{ForwarderConfig, HandlerError};
use ferry_events::unit_of_work::{
    BuildError, DomainEvent, Event, EventBus, EventBusBuilder, Source, UnitOfWorkError,
};
use ferry_executor::{DatabaseFailureLog, Executor, ExecutorConfig, TaskOutcome};
use ferry_store::Database;
use serde::{Deserialize, Serialize};
use support::{table, wait_until, Env, Sql};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderCancelled {
    order: i64,
}

impl DomainEvent for OrderCancelled {
    const TYPE: &'static str = "order.cancelled";
    fn source(&self) -> Source {
        Source::new("order", self.order.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
}

impl DomainEvent for OrderPlaced {
    const TYPE: &'static str = "order.placed";
}

/// What handlers saw, shared with the test.
type Seen = Arc<Mutex<Vec<(i64, Uuid, Option<i64>)>>>;

fn fast_forwarder(name: &str) -> ForwarderConfig {
    ForwarderConfig {
        poll_interval: Duration::from_millis(50),
        retry: RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            multiplier: 2.0,
            jitter: 0.0,
        },
        ..ForwarderConfig::named(name)
    }
}

/// Writes order `n` and raises its cancellation in one unit of work, then
/// ends it as `end` says; the event's id.
async fn cancel<DB: Sql>(bus: &EventBus<DB>, n: i64, end: End) -> Result<Uuid, UnitOfWorkError> {
    let mut uow = bus.begin().await?;
    DB::insert(uow.conn(), "orders", n.to_string())
        .await
        .unwrap();
    let id = uow.raise(OrderCancelled { order: n }).await?;
    match end {
        End::Commit => {
            let committed = uow.commit().await?;
            assert!(committed.failures.is_empty(), "{:?}", committed.failures);
        }
        End::Rollback => uow.rollback().await?,
        End::Drop => drop(uow),
    }
    Ok(id)
}

enum End {
    Commit,
    Rollback,
    Drop,
}

async fn orders<DB: Sql>(env: &Env<DB>) -> Vec<String> {
    DB::ids(&env.pool, "orders").await
}

/// After-commit handlers run once the transaction is committed (the order
/// is visible from another connection), before `commit` returns; never for
/// a unit of work rolled back or dropped. A failing or panicking one is
/// reported, and the commit stands.
async fn after_commit_handlers_run_after_commit_only<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "orders").await;
    let seen: Arc<Mutex<Vec<(i64, Uuid, bool)>>> = Arc::default();
    let pool = env.pool.clone();
    let record = seen.clone();
    let bus = EventBus::<DB>::builder()
        .after_commit("notify", move |e: Arc<Event<OrderCancelled>>| {
            let (pool, record) = (pool.clone(), record.clone());
            async move {
                let visible = DB::ids(&pool, "orders")
                    .await
                    .contains(&e.data.order.to_string());
                record.lock().unwrap().push((e.data.order, e.id, visible));
                Ok(())
            }
        })
        .after_commit("flaky", |e: Arc<Event<OrderCancelled>>| async move {
            match e.data.order {
                5 => Err(HandlerError::transient("mail server down")),
                6 => panic!("bug in flaky"),
                _ => Ok(()),
            }
        })
        .build(env.pool.clone())
        .unwrap();

    let id = cancel(&bus, 1, End::Commit).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [(1, id, true)],
        "ran after the commit"
    );
    cancel(&bus, 2, End::Rollback).await.unwrap();
    cancel(&bus, 3, End::Drop).await.unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "not for a rollback or a drop"
    );
    assert_eq!(orders(&env).await, ["1"]);

    for n in [5, 6] {
        let mut uow = bus.begin().await.unwrap();
        DB::insert(uow.conn(), "orders", n.to_string())
            .await
            .unwrap();
        let id = uow.raise(OrderCancelled { order: n }).await.unwrap();
        let committed = uow.commit().await.unwrap();
        assert_eq!(committed.failures.len(), 1);
        let failure = &committed.failures[0];
        assert_eq!((failure.handler.as_str(), failure.event_id), ("flaky", id));
        let says = if n == 5 {
            "mail server down"
        } else {
            "panicked: bug in flaky"
        };
        assert!(failure.error.contains(says), "{}", failure.error);
    }
    assert_eq!(orders(&env).await, ["1", "5", "6"], "the commit stands");
    assert_eq!(seen.lock().unwrap().len(), 3);
}
on!(after_commit_handlers_run_after_commit_only: postgres, sqlite, mariadb);

/// An in-transaction handler writes with the business write; its error
/// fails `raise`, and neither write commits (commit refuses, drop rolls
/// back); no after-commit handler runs.
async fn an_in_transaction_error_rolls_back_the_business_write<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "orders").await;
    table(&env.pool, "audit").await;
    let after = Arc::new(AtomicUsize::new(0));
    let counted = after.clone();
    let bus = EventBus::<DB>::builder()
        .in_transaction(
            "audit",
            |conn: &mut DB::Connection, e: &Event<OrderCancelled>| {
                Box::pin(async move {
                    DB::insert(conn, "audit", e.data.order.to_string()).await?;
                    if e.data.order == 13 {
                        return Err(HandlerError::permanent("order 13 cannot be cancelled"));
                    }
                    Ok(())
                })
            },
        )
        .after_commit("after", move |_: Arc<Event<OrderCancelled>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .build(env.pool.clone())
        .unwrap();

    cancel(&bus, 1, End::Commit).await.unwrap();
    assert_eq!(DB::ids(&env.pool, "audit").await, ["1"]);

    let e = cancel(&bus, 13, End::Commit).await.unwrap_err();
    let UnitOfWorkError::Handler {
        handler,
        ref source,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(handler, "audit");
    assert!(source.to_string().contains("cannot be cancelled"));
    // Commit after the failure: refused, rolled back.
    let mut uow = bus.begin().await.unwrap();
    DB::insert(uow.conn(), "orders", "14".to_owned())
        .await
        .unwrap();
    uow.raise(OrderCancelled { order: 13 }).await.unwrap_err();
    let again = uow.raise(OrderCancelled { order: 15 }).await.unwrap_err();
    assert!(matches!(again, UnitOfWorkError::Doomed { .. }), "{again}");
    let e = uow.commit().await.unwrap_err();
    assert!(matches!(e, UnitOfWorkError::Doomed { .. }), "{e}");

    assert_eq!(orders(&env).await, ["1"], "orders 13 and 14 rolled back");
    assert_eq!(
        DB::ids(&env.pool, "audit").await,
        ["1"],
        "the handler's write too"
    );
    assert_eq!(
        after.load(Ordering::SeqCst),
        1,
        "after-commit only for order 1"
    );
}
on!(an_in_transaction_error_rolls_back_the_business_write: postgres, sqlite, mariadb);

/// Executor handlers are submitted after the commit and run on the
/// executor (their handles come back from `commit`); never after a
/// rollback. A failure the executor records keeps the event as its input
/// and can be re-run from the failure log.
async fn executor_handlers_run_on_the_executor_after_commit<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "orders").await;
    let executor = Executor::new(
        ExecutorConfig {
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(10),
                multiplier: 2.0,
                jitter: 0.0,
            },
            ..ExecutorConfig::default()
        },
        Arc::new(DatabaseFailureLog::new(env.db.clone())),
    )
    .unwrap();
    let seen: Seen = Arc::default();
    let broken = Arc::new(Mutex::new(true));
    let (record, failing) = (seen.clone(), broken.clone());
    let bus = EventBus::<DB>::builder()
        .executor(executor.clone())
        .on_executor("refund_mail", move |e: Arc<Event<OrderCancelled>>| {
            let (record, failing) = (record.clone(), failing.clone());
            async move {
                if e.data.order == 8 && *failing.lock().unwrap() {
                    return Err(HandlerError::transient("mail server down"));
                }
                record.lock().unwrap().push((e.data.order, e.id, e.seq));
                Ok(())
            }
        })
        .build(env.pool.clone())
        .unwrap();

    let mut uow = bus.begin().await.unwrap();
    let id = uow.raise(OrderCancelled { order: 1 }).await.unwrap();
    let mut committed = uow.commit().await.unwrap();
    assert_eq!(committed.tasks.len(), 1);
    let outcome = committed.tasks.pop().unwrap().await;
    assert_eq!(outcome, TaskOutcome::Succeeded { attempts: 1 });
    assert_eq!(*seen.lock().unwrap(), [(1, id, None)]);

    cancel(&bus, 2, End::Rollback).await.unwrap();
    cancel(&bus, 3, End::Drop).await.unwrap();
    let metrics = executor.metrics();
    assert_eq!(
        (metrics.submitted, metrics.done),
        (1, 1),
        "nothing submitted for rolled-back work"
    );

    let mut uow = bus.begin().await.unwrap();
    let id = uow.raise(OrderCancelled { order: 8 }).await.unwrap();
    let mut committed = uow.commit().await.unwrap();
    let outcome = committed.tasks.pop().unwrap().await;
    assert!(
        matches!(
            outcome,
            TaskOutcome::Failed {
                attempts: 2,
                recorded: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    let failures = executor.failures(Some("refund_mail"), 10).await.unwrap();
    assert_eq!(failures.len(), 1);
    *broken.lock().unwrap() = false;
    executor.rerun_failure(failures[0].id).await.unwrap();
    assert_eq!(
        seen.lock().unwrap()[1],
        (8, id, None),
        "the same event, from the failure log"
    );
    executor.shutdown(Duration::from_secs(5)).await;
}
on!(executor_handlers_run_on_the_executor_after_commit: postgres, sqlite);

/// A durable event is appended in the unit of work's transaction. The
/// process "crashes" right after the commit (everything dropped before any
/// forwarder ran); a new process's forwarder hands it to the durable
/// handler, with its stored sequence number. Rolled-back events are never
/// stored.
async fn durable_events_survive_a_crash_between_commit_and_handling<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "orders").await;
    let (id, stored) = {
        let pool = sqlx::Pool::<DB>::connect(&sqlx_url(&env.url))
            .await
            .unwrap();
        let bus = EventBus::<DB>::builder()
            .durable("refund", |_: Arc<Event<OrderCancelled>>| async {
                panic!("no forwarder runs in this process")
            })
            .build(pool.clone())
            .unwrap();
        let mut uow = bus.begin().await.unwrap();
        DB::insert(uow.conn(), "orders", "1".to_owned())
            .await
            .unwrap();
        let id = uow.raise(OrderCancelled { order: 1 }).await.unwrap();
        uow.raise(OrderPlaced { order: 1 }).await.unwrap();
        let committed = uow.commit().await.unwrap();
        assert_eq!(
            (committed.events, committed.stored.len()),
            (2, 1),
            "only the durable type is stored"
        );
        cancel(&bus, 2, End::Rollback).await.unwrap();
        cancel(&bus, 3, End::Drop).await.unwrap();
        pool.close().await;
        (id, committed.stored[0])
    };

    let seen: Seen = Arc::default();
    let record = seen.clone();
    let bus = EventBus::<DB>::builder()
        .durable("refund", move |e: Arc<Event<OrderCancelled>>| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push((e.data.order, e.id, e.seq));
                Ok(())
            }
        })
        .build(env.pool.clone())
        .unwrap();
    let running = bus
        .forwarder(fast_forwarder("refunds"))
        .spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("the durable event handled", LONG, || {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let head = env.db.event_head().await.unwrap();
    wait_until("the offset at the head", LONG, || stats.offset() == head).await;
    running.stop().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [(1, id, Some(stored))]);
    assert_eq!(head, stored, "rolled-back events were never stored");
    let page = env
        .db
        .read_events(&ferry_store::event_store::EventQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let e = &page.events[0];
    assert_eq!(
        (
            e.event_type.as_str(),
            e.source_type.as_str(),
            e.source_id.as_str()
        ),
        ("order.cancelled", "order", "1")
    );
    assert_eq!(
        serde_json::from_slice::<OrderCancelled>(&e.payload).unwrap(),
        OrderCancelled { order: 1 }
    );
}
on!(durable_events_survive_a_crash_between_commit_and_handling: postgres, sqlite, mariadb);

/// sqlx wants `mysql://` for MariaDB.
fn sqlx_url(url: &str) -> String {
    url.replacen("mariadb:", "mysql:", 1)
}

/// Three durable handlers of one type, the middle one writing in the
/// forwarder's transaction. A failure of one is retried without calling
/// again the plain handlers that succeeded; the transactional handler's
/// writes are applied once per event, however often it runs.
async fn durable_handlers_retry_without_repeating_work<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "orders").await;
    table(&env.pool, "refunds").await;
    let mail: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let ledger: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let refund_fails_once = Arc::new(Mutex::new(Some(3)));
    let ledger_fails_once = Arc::new(Mutex::new(Some(5)));
    let (m, l, rf, lf) = (
        mail.clone(),
        ledger.clone(),
        refund_fails_once.clone(),
        ledger_fails_once.clone(),
    );
    let bus = EventBus::<DB>::builder()
        .durable("mail", move |e: Arc<Event<OrderCancelled>>| {
            *m.lock().unwrap().entry(e.data.order).or_default() += 1;
            async { Ok(()) }
        })
        .durable_in_transaction(
            "refund",
            move |conn: &mut DB::Connection, e: &Event<OrderCancelled>| {
                let rf = rf.clone();
                Box::pin(async move {
                    DB::insert(conn, "refunds", e.id.to_string()).await?;
                    if rf.lock().unwrap().take_if(|n| *n == e.data.order).is_some() {
                        return Err(HandlerError::transient("payment service timed out"));
                    }
                    Ok(())
                })
            },
        )
        .durable("ledger", move |e: Arc<Event<OrderCancelled>>| {
            *l.lock().unwrap().entry(e.data.order).or_default() += 1;
            let fail = lf.lock().unwrap().take_if(|n| *n == e.data.order).is_some();
            async move {
                if fail {
                    return Err(HandlerError::transient("ledger busy"));
                }
                Ok(())
            }
        })
        .store::<OrderPlaced>()
        .build(env.pool.clone())
        .unwrap();
    let mut ids = Vec::new();
    for n in 1..=6 {
        ids.push(cancel(&bus, n, End::Commit).await.unwrap());
        let mut uow = bus.begin().await.unwrap();
        uow.raise(OrderPlaced { order: n }).await.unwrap();
        assert_eq!(uow.commit().await.unwrap().stored.len(), 1);
    }
    let running = bus
        .forwarder(fast_forwarder("refunds"))
        .spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    let head = env.db.event_head().await.unwrap();
    wait_until("the offset at the head", LONG, || stats.offset() == head).await;
    running.stop().await.unwrap();
    assert_eq!(
        *mail.lock().unwrap(),
        (1..=6).map(|n| (n, 1)).collect(),
        "mail once each"
    );
    let ledger = ledger.lock().unwrap().clone();
    assert_eq!(ledger[&5], 2, "ledger failed once on order 5");
    assert!(
        (1..=6).filter(|n| *n != 5).all(|n| ledger[&n] == 1),
        "{ledger:?}"
    );
    let mut want: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    want.sort();
    assert_eq!(
        DB::ids(&env.pool, "refunds").await,
        want,
        "one refund per event"
    );
    assert_eq!(
        (stats.delivered(), stats.failed(), stats.skipped()),
        (6, 2, 0),
        "the placed events pass by"
    );
}
on!(durable_handlers_retry_without_repeating_work: postgres, sqlite, mariadb);

/// Plain durable handlers run outside any transaction, so one may write
/// through the pool while the forwarder's transactional handlers of
/// earlier events have written. On SQLite, whose single writer makes the
/// difference visible, that write would wait for the forwarder's
/// transaction (and fail with SQLITE_BUSY) if it ran inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_durable_handlers_run_outside_the_forwarder_transaction() {
    let env = support::sqlite().await;
    table(&env.pool, "orders").await;
    table(&env.pool, "refunds").await;
    table(&env.pool, "mails").await;
    let pool = env.pool.clone();
    let bus = EventBus::builder()
        .durable_in_transaction(
            "refund",
            |conn: &mut sqlx::SqliteConnection, e: &Event<OrderCancelled>| {
                Box::pin(async move {
                    sqlx::Sqlite::insert(conn, "refunds", e.id.to_string()).await?;
                    Ok(())
                })
            },
        )
        .durable("mail", move |e: Arc<Event<OrderCancelled>>| {
            let pool = pool.clone();
            async move {
                sqlx::query("INSERT INTO mails (id) VALUES (?)")
                    .bind(e.id.to_string())
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .build(env.pool.clone())
        .unwrap();
    let mut ids = Vec::new();
    for n in 1..=4 {
        ids.push(cancel(&bus, n, End::Commit).await.unwrap().to_string());
    }
    ids.sort();
    let config = ForwarderConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            ..fast_forwarder("").retry
        },
        ..fast_forwarder("handlers")
    };
    let running = bus.forwarder(config).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    let head = env.db.event_head().await.unwrap();
    wait_until("the offset at the head", LONG, || {
        stats.offset() == head || running.has_ended()
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(sqlx::Sqlite::ids(&env.pool, "mails").await, ids);
    assert_eq!(sqlx::Sqlite::ids(&env.pool, "refunds").await, ids);
}

/// On SQLite (no NOTIFY) the bus's units of work wake its forwarder in the
/// same process: with a poll interval of an hour, durable events still
/// arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_bus_forwarder() {
    let env = support::sqlite().await;
    table(&env.pool, "orders").await;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let bus = EventBus::builder()
        .durable("refund", move |e: Arc<Event<OrderCancelled>>| {
            record.lock().unwrap().push((e.data.order, e.id, e.seq));
            async { Ok(()) }
        })
        .build(env.pool.clone())
        .unwrap();
    let config = ForwarderConfig {
        poll_interval: Duration::from_secs(3600),
        ..fast_forwarder("refunds")
    };
    let running = bus.forwarder(config).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("the forwarder idle", LONG, || stats.idle() >= 1).await;
    for n in 1..=3 {
        let idle = stats.idle();
        cancel(&bus, n, End::Commit).await.unwrap();
        wait_until("the event", Duration::from_secs(20), || {
            seen.lock().unwrap().len() == n as usize
        })
        .await;
        // Idle again, waiting for an hour unless woken.
        wait_until("the forwarder idle", LONG, || stats.idle() > idle).await;
    }
    running.stop().await.unwrap();
}

/// Why `builder` does not build a bus on `pool`.
fn refused(builder: EventBusBuilder<sqlx::Sqlite>, pool: &sqlx::SqlitePool) -> BuildError {
    builder.build(pool.clone()).err().unwrap()
}

#[tokio::test]
async fn a_bus_refuses_two_types_of_one_name_and_executor_handlers_without_executor() {
    #[derive(Serialize, Deserialize)]
    struct Impostor;
    impl DomainEvent for Impostor {
        const TYPE: &'static str = "order.cancelled";
    }
    let env = support::sqlite().await;
    let builder = EventBus::builder().store::<OrderCancelled>();
    let e = refused(builder.store::<Impostor>(), &env.pool);
    assert!(
        matches!(e, BuildError::SameTypeName(ref n) if n == "order.cancelled"),
        "{e}"
    );
    let builder = EventBus::builder();
    let e = refused(
        builder.on_executor("x", |_: Arc<Event<OrderCancelled>>| async { Ok(()) }),
        &env.pool,
    );
    assert!(
        matches!(e, BuildError::NoExecutor(ref n) if n == "x"),
        "{e}"
    );
    let _: Database = env.db;
}

/// Units of work can be used from spawned tasks (an HTTP handler, say):
/// their futures are `Send`. A compile-time check, on every database.
#[allow(dead_code)]
fn units_of_work_are_send() {
    fn send<T: Send>(_: &T) {}
    fn check<DB: Sql>(bus: EventBus<DB>) {
        let work = async move {
            let mut uow = bus.begin().await?;
            uow.raise(OrderCancelled { order: 1 }).await?;
            uow.commit().await.map(drop)
        };
        send(&work);
    }
    let _ = check::<sqlx::Postgres>;
    let _ = check::<sqlx::Sqlite>;
    let _ = check::<sqlx::MySql>;
}
