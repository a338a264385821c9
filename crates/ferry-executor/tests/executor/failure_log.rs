//! The failure log on SQLite, PostgreSQL and MariaDB: every test runs on
//! each (a fresh, migrated database), in real time with short backoffs.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ferry_executor::{
    DatabaseFailureLog, Executor, ExecutorConfig, OverloadPolicy, RerunError, TaskFailure,
    TaskOutcome, UnfinishedState,
};
use ferry_store::Database;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{next_start, started, Latch};

/// Each test as `sqlite::…`, `postgres::…` and `mysql::…`, on a fresh
/// database of its own.
macro_rules! each_db {
    ($($name:ident),* $(,)?) => {
        each_db!(@on sqlite, ferry_testkit::SqliteTestDb::create(), $($name),*);
        each_db!(@on postgres, ferry_testkit::PgTestDb::create().await, $($name),*);
        each_db!(@on mysql, ferry_testkit::MysqlTestDb::create().await, $($name),*);
    };
    (@on $module:ident, $create:expr, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $name() {
                    let t = $create;
                    let db = super::connect(&t.url).await;
                    super::$name(db.clone()).await;
                    db.close().await;
                }
            )*
        }
    };
}

each_db!(
    spent_retries_are_recorded_with_name_input_error_and_attempts,
    an_ad_hoc_failure_is_recorded_but_cannot_be_rerun,
    a_failure_is_listed_and_rerun_until_it_succeeds,
    shutdown_records_what_outran_the_deadline_for_a_rerun,
    recording_a_failure_again_updates_its_row,
);

async fn connect(url: &str) -> Database {
    let db = Database::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    db
}

/// 1 ms, 2 ms, 4 ms… between attempts: real time, but short.
fn fast(max_attempts: u32) -> ExecutorConfig {
    let mut c = crate::config(2, 16, OverloadPolicy::Wait, max_attempts);
    c.retry.initial_backoff = Duration::from_millis(1);
    c.retry.max_backoff = Duration::from_millis(5);
    c
}

fn executor(db: &Database, config: ExecutorConfig) -> Executor {
    Executor::new(config, Arc::new(DatabaseFailureLog::new(db.clone()))).unwrap()
}

/// Registers `charge_card`, which fails while `broken` is set and records
/// the inputs it was called with.
fn register_charge(
    executor: &Executor,
    broken: Arc<AtomicBool>,
) -> Arc<std::sync::Mutex<Vec<Value>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = seen.clone();
    executor
        .register("charge_card", move |input: Value| {
            calls.lock().unwrap().push(input);
            let broken = broken.load(Ordering::SeqCst);
            async move {
                if broken {
                    Err(std::io::Error::other("payment provider unavailable"))
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
    seen
}

async fn spent_retries_are_recorded_with_name_input_error_and_attempts(db: Database) {
    let executor = executor(&db, fast(3));
    let seen = register_charge(&executor, Arc::new(AtomicBool::new(true)));
    let before = Utc::now();
    let handle = executor
        .submit_registered_async("charge_card", json!({"order": 7, "cents": 1250}))
        .await
        .unwrap();
    let id = handle.id();
    assert_eq!(
        handle.await,
        TaskOutcome::Failed {
            attempts: 3,
            error: "payment provider unavailable".to_owned(),
            recorded: true,
        }
    );
    assert_eq!(seen.lock().unwrap().len(), 3);

    let failures = executor.failures(None, 10).await.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let f = &failures[0];
    assert_eq!(f.id, id);
    assert_eq!(f.task, "charge_card");
    assert_eq!(f.input, Some(json!({"order": 7, "cents": 1250})));
    assert!(f.is_rerunnable());
    assert_eq!(f.error, "payment provider unavailable");
    assert_eq!(f.attempts, 3);
    // Stored times keep at least milliseconds.
    assert!(
        f.first_failed_at >= before - chrono::Duration::milliseconds(1),
        "{f:?}"
    );
    assert!(f.last_failed_at > f.first_failed_at, "{f:?}");
    assert_eq!(db.task_failure(id).await.unwrap().as_ref(), Some(f));
    // Filtered by name.
    assert_eq!(
        executor
            .failures(Some("charge_card"), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(executor
        .failures(Some("other"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_metrics!(executor, failed: 1, retried: 2);
}

async fn an_ad_hoc_failure_is_recorded_but_cannot_be_rerun(db: Database) {
    let executor = executor(&db, fast(1));
    let handle = executor
        .submit_async("inline_cleanup", || crate::panics("cleanup blew up"))
        .await
        .unwrap();
    let id = handle.id();
    assert!(matches!(
        handle.await,
        TaskOutcome::Failed { recorded: true, .. }
    ));
    let f = db.task_failure(id).await.unwrap().expect("recorded");
    assert_eq!(f.task, "inline_cleanup");
    assert_eq!(f.input, None);
    assert!(!f.is_rerunnable());
    assert_eq!(f.error, "task panicked: cleanup blew up");
    assert_eq!(f.attempts, 1);
    let err = executor.rerun_failure(id).await.unwrap_err();
    assert!(
        matches!(&err, RerunError::NotRerunnable { id: i, task } if *i == id && task == "inline_cleanup"),
        "{err:?}"
    );
    assert!(
        db.task_failure(id).await.unwrap().is_some(),
        "kept for an operator"
    );
}

/// The ids of the first ten failures the executor lists.
async fn listed_ids(executor: &Executor) -> Vec<Uuid> {
    let failures = executor.failures(None, 10).await.unwrap();
    failures.iter().map(|f| f.id).collect()
}

async fn a_failure_is_listed_and_rerun_until_it_succeeds(db: Database) {
    let executor = executor(&db, fast(2));
    let broken = Arc::new(AtomicBool::new(true));
    let seen = register_charge(&executor, broken.clone());
    let mut ids = Vec::new();
    for order in [1, 2] {
        let h = executor
            .submit_registered_async("charge_card", json!({"order": order}))
            .await
            .unwrap();
        ids.push(h.id());
        assert!(matches!(h.await, TaskOutcome::Failed { attempts: 2, .. }));
    }
    let listed = listed_ids(&executor).await;
    let mut expected = ids.clone();
    expected.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, expected);
    assert_eq!(
        executor.failures(None, 1).await.unwrap().len(),
        1,
        "limit holds"
    );

    // Still broken: the re-run fails, the row stays with one more attempt.
    let err = executor.rerun_failure(ids[0]).await.unwrap_err();
    match &err {
        RerunError::Failed { id, task, source } => {
            assert_eq!((*id, task.as_str()), (ids[0], "charge_card"));
            assert_eq!(source.to_string(), "payment provider unavailable");
        }
        other => panic!("unexpected {other:?}"),
    }
    let row = db.task_failure(ids[0]).await.unwrap().expect("kept");
    assert_eq!(row.attempts, 3);
    assert_eq!(row.input, Some(json!({"order": 1})));

    // Fixed: the re-run succeeds with the kept input and removes the row.
    broken.store(false, Ordering::SeqCst);
    seen.lock().unwrap().clear();
    executor.rerun_failure(ids[0]).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![json!({"order": 1})]);
    assert!(db.task_failure(ids[0]).await.unwrap().is_none());
    let left = listed_ids(&executor).await;
    assert_eq!(left, vec![ids[1]]);
    assert!(matches!(
        executor.rerun_failure(ids[0]).await,
        Err(RerunError::NotFound { id }) if id == ids[0]
    ));

    // Another executor on the same database without the handler cannot.
    let other = self::executor(&db, fast(1));
    let err = other.rerun_failure(ids[1]).await.unwrap_err();
    assert!(
        matches!(&err, RerunError::UnknownTask { task, .. } if task == "charge_card"),
        "{err:?}"
    );
}

async fn shutdown_records_what_outran_the_deadline_for_a_rerun(db: Database) {
    let mut config = fast(1);
    config.concurrency = 1;
    let executor = executor(&db, config);
    let never = Latch::new();
    let (tx, mut rx) = started();
    let stuck_calls = Arc::new(AtomicU32::new(0));
    {
        let (never, calls) = (never.clone(), stuck_calls.clone());
        executor
            .register("export_report", move |input: Value| {
                let (never, tx) = (never.clone(), tx.clone());
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _ = tx.send(input.to_string());
                    never.wait().await;
                    Ok::<_, std::io::Error>(())
                }
            })
            .unwrap();
    }
    let running = executor
        .submit_registered_async("export_report", json!({"month": "2026-11"}))
        .await
        .unwrap();
    let queued = executor
        .submit_registered_async("export_report", json!({"month": "2026-12"}))
        .await
        .unwrap();
    let finished = executor
        .submit_async("quick", crate::succeeds)
        .await
        .unwrap();
    assert_eq!(next_start(&mut rx).await, r#"{"month":"2026-11"}"#);

    let report = executor.shutdown(Duration::from_millis(300)).await;
    let mut unfinished = report.unfinished.clone();
    unfinished.sort_by_key(|u| u.attempts);
    assert_eq!(unfinished.len(), 3, "{report:?}");
    // Two queued (never started), one running.
    assert_eq!(
        unfinished
            .iter()
            .map(|u| (u.state, u.attempts, u.recorded))
            .collect::<Vec<_>>(),
        vec![
            (UnfinishedState::Queued, 0, true),
            (UnfinishedState::Queued, 0, true),
            (UnfinishedState::Running, 1, true),
        ]
    );
    assert_eq!(unfinished[2].id, running.id());
    assert_eq!(running.await, crate::cancelled(1, true));
    assert_eq!(queued.await, crate::cancelled(0, true));
    assert_eq!(finished.await, crate::cancelled(0, true));
    assert_eq!(executor.metrics().cancelled, 3);

    let rows = db.task_failures(Some("export_report"), 10).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert!(row.error.starts_with("cancelled by shutdown"), "{row:?}");
        assert!(row.is_rerunnable());
    }
    let quick = db.task_failures(Some("quick"), 10).await.unwrap();
    assert_eq!(quick.len(), 1, "the ad-hoc task is recorded too");
    assert!(!quick[0].is_rerunnable());

    // Nothing lost: after a restart, the recorded tasks are re-run.
    let restarted = self::executor(&db, fast(1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    restarted
        .register("export_report", move |input: Value| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(input);
                Ok::<_, std::io::Error>(())
            }
        })
        .unwrap();
    for row in &rows {
        restarted.rerun_failure(row.id).await.unwrap();
    }
    let mut months = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    months.sort_by_key(|v| v.to_string());
    assert_eq!(
        months,
        vec![json!({"month": "2026-11"}), json!({"month": "2026-12"})]
    );
    assert!(db
        .task_failures(Some("export_report"), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        stuck_calls.load(Ordering::SeqCst),
        1,
        "the stuck one was cancelled, not restarted"
    );
}

async fn recording_a_failure_again_updates_its_row(db: Database) {
    let first = Utc::now() - chrono::Duration::minutes(5);
    let failure = TaskFailure {
        id: Uuid::now_v7(),
        task: "sync_crm".to_owned(),
        input: Some(json!({"customer": "c-1", "tags": ["a", "ü"]})),
        error: "timeout".to_owned(),
        attempts: 5,
        first_failed_at: first,
        last_failed_at: first,
    };
    db.record_task_failure(&failure).await.unwrap();
    let later = Utc::now();
    db.record_task_failure(&TaskFailure {
        input: None,
        error: "connection reset".to_owned(),
        attempts: 6,
        first_failed_at: later,
        last_failed_at: later,
        ..failure.clone()
    })
    .await
    .unwrap();
    let row = db.task_failure(failure.id).await.unwrap().unwrap();
    assert_eq!(row.input, failure.input, "input kept");
    assert_eq!((row.error.as_str(), row.attempts), ("connection reset", 6));
    let millis = |t: chrono::DateTime<Utc>| t.timestamp_millis();
    assert_eq!(
        millis(row.first_failed_at),
        millis(first),
        "first failure kept"
    );
    assert_eq!(millis(row.last_failed_at), millis(later));
    assert_eq!(db.task_failures(None, 10).await.unwrap().len(), 1);
    assert!(db.delete_task_failure(failure.id).await.unwrap());
    assert!(!db.delete_task_failure(failure.id).await.unwrap());
    assert!(db.task_failure(failure.id).await.unwrap().is_none());
}
