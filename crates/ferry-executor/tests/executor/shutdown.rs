//! Graceful shutdown with the log-only failure log, on the paused clock.

use std::time::Duration;

use ferry_executor::{OverloadPolicy, SubmitError, TaskFailure, TaskOutcome, UnfinishedState};

use crate::{config, log_only, next_start, started, submit_blocked, Latch};

#[tokio::test(start_paused = true)]
async fn shutdown_drains_queued_and_running_tasks_within_the_deadline() {
    let executor = log_only(config(1, 10, OverloadPolicy::Wait, 1));
    let mut handles = Vec::new();
    for i in 0..4 {
        handles.push(
            executor
                .submit_async(format!("task {i}"), || async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, std::io::Error>(())
                })
                .await
                .unwrap(),
        );
    }
    let started = tokio::time::Instant::now();
    let report = executor.shutdown(Duration::from_secs(10)).await;
    assert!(report.is_complete(), "{report:?}");
    // One slot, four tasks of a second each: shutdown waited for them all.
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    for h in handles {
        assert_eq!(h.await, TaskOutcome::Succeeded { attempts: 1 });
    }
    assert_metrics!(executor, done: 4, cancelled: 0, queued: 0, running: 0);
}

#[tokio::test(start_paused = true)]
async fn tasks_that_outrun_the_deadline_are_cancelled_and_reported() {
    let executor = log_only(config(1, 10, OverloadPolicy::Wait, 1));
    let never = Latch::new();
    let (tx, mut rx) = started();
    let stuck = submit_blocked(&executor, "stuck", &never, &tx).await;
    let waiting = executor
        .submit_async("waiting", crate::succeeds)
        .await
        .unwrap();
    next_start(&mut rx).await;

    let started = tokio::time::Instant::now();
    let report = executor.shutdown(Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    let mut unfinished = report.unfinished.clone();
    unfinished.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(unfinished.len(), 2, "{report:?}");
    assert_eq!(
        (
            unfinished[0].name.as_str(),
            unfinished[0].state,
            unfinished[0].attempts
        ),
        ("stuck", UnfinishedState::Running, 1)
    );
    assert_eq!(unfinished[0].id, stuck.id());
    assert_eq!(
        (
            unfinished[1].name.as_str(),
            unfinished[1].state,
            unfinished[1].attempts
        ),
        ("waiting", UnfinishedState::Queued, 0)
    );
    assert!(
        !unfinished[0].recorded,
        "the log-only failure log keeps nothing"
    );
    assert_eq!(stuck.await, crate::cancelled(1, false));
    assert_eq!(waiting.await, crate::cancelled(0, false));
    assert_metrics!(executor, cancelled: 2, done: 0, queued: 0, running: 0);
}

#[tokio::test(start_paused = true)]
async fn a_task_waiting_to_retry_is_cancelled_at_the_deadline() {
    let mut c = config(1, 10, OverloadPolicy::Wait, 3);
    c.retry.initial_backoff = Duration::from_secs(60);
    c.retry.max_backoff = Duration::from_secs(60);
    let executor = log_only(c);
    let handle = executor
        .submit_async("slow_retry", crate::always_fails)
        .await
        .unwrap();
    let report = executor.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.unfinished.len(), 1, "{report:?}");
    assert_eq!(report.unfinished[0].state, UnfinishedState::Running);
    assert_eq!(handle.await, crate::cancelled(1, false));
}

#[tokio::test(start_paused = true)]
async fn submissions_after_shutdown_are_refused() {
    let executor = log_only(config(1, 1, OverloadPolicy::Wait, 1));
    executor
        .register("registered", |_| crate::succeeds())
        .unwrap();
    assert!(!executor.is_shutting_down());
    let report = executor.shutdown(Duration::from_secs(1)).await;
    assert!(report.is_complete());
    assert!(executor.is_shutting_down());
    let err = executor
        .submit_async("late", crate::succeeds)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SubmitError::ShuttingDown { task } if task == "late"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("shutting down"), "{err}");
    let err = executor
        .submit_registered_async("registered", serde_json::json!(1))
        .await
        .unwrap_err();
    assert!(matches!(err, SubmitError::ShuttingDown { .. }), "{err:?}");
    assert!(executor
        .shutdown(Duration::from_secs(1))
        .await
        .is_complete());
    assert_eq!(executor.metrics().rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn a_submitter_waiting_for_room_is_refused_when_shutdown_begins() {
    let (executor, latch, running, queued) = crate::full(OverloadPolicy::Wait).await;
    let mut blocked = {
        let executor = executor.clone();
        tokio::spawn(async move { executor.submit_async("blocked", crate::succeeds).await })
    };
    // The submitter waits for room (paused time: it would have finished).
    assert!(tokio::time::timeout(Duration::from_secs(5), &mut blocked)
        .await
        .is_err());
    let shutdown = {
        let executor = executor.clone();
        tokio::spawn(async move { executor.shutdown(Duration::from_secs(30)).await })
    };
    let err = blocked.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, SubmitError::ShuttingDown { task } if task == "blocked"),
        "{err:?}"
    );
    // The tasks already taken still finish: the shutdown drains them.
    latch.open();
    assert!(shutdown.await.unwrap().is_complete());
    for h in [running, queued] {
        assert!(h.await.is_success());
    }
}

/// A failure log that never answers (a database down, each insert
/// waiting for ever): failure injection for the shutdown's bound.
#[derive(Debug)]
struct HangingFailureLog;

/// What a [`FailureLog`](ferry_executor::FailureLog) call returns.
type Answer<'a, T> = ferry_core::BoxFuture<'a, Result<T, ferry_executor::FailureLogError>>;

fn never<'a, T: 'a>() -> Answer<'a, T> {
    Box::pin(std::future::pending())
}

impl ferry_executor::FailureLog for HangingFailureLog {
    fn record<'a>(&'a self, _failure: &'a TaskFailure) -> Answer<'a, bool> {
        never()
    }

    fn list<'a>(&'a self, _task: Option<&'a str>, _limit: u32) -> Answer<'a, Vec<TaskFailure>> {
        never()
    }

    fn get(&self, _id: uuid::Uuid) -> Answer<'_, Option<TaskFailure>> {
        never()
    }

    fn remove(&self, _id: uuid::Uuid) -> Answer<'_, bool> {
        never()
    }
}

#[tokio::test(start_paused = true)]
async fn a_failure_log_that_never_answers_delays_shutdown_by_the_grace_only() {
    let (log, _guard) = crate::CapturedLog::installed();
    let executor = ferry_executor::Executor::new(
        config(1, 1000, OverloadPolicy::Wait, 1),
        std::sync::Arc::new(HangingFailureLog),
    )
    .unwrap();
    let never = Latch::new();
    {
        let never = never.clone();
        executor
            .register("stuck", move |_| {
                let never = never.clone();
                async move {
                    never.wait().await;
                    Ok::<_, std::io::Error>(())
                }
            })
            .unwrap();
    }
    let mut handles = Vec::new();
    for n in 0..1000 {
        handles.push(
            executor
                .submit_registered_async("stuck", serde_json::json!({ "n": n }))
                .await
                .unwrap(),
        );
    }
    let deadline = Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    let report = tokio::time::timeout(
        deadline + ferry_executor::SHUTDOWN_RECORD_GRACE + Duration::from_secs(60),
        executor.shutdown(deadline),
    )
    .await
    .expect("shutdown should return within its deadline and the recording grace");
    let took = started.elapsed();
    assert!(
        took >= deadline && took <= deadline + ferry_executor::SHUTDOWN_RECORD_GRACE,
        "{took:?}"
    );
    // Every task is reported, none recorded: one running, the rest queued.
    assert_eq!(report.unfinished.len(), 1000);
    assert!(report.unfinished.iter().all(|t| !t.recorded), "{report:?}");
    assert_eq!(
        report
            .unfinished
            .iter()
            .filter(|t| t.state == UnfinishedState::Running)
            .count(),
        1
    );
    let last = handles.pop().unwrap();
    let last_id = last.id();
    assert_eq!(last.await, crate::cancelled(0, false));
    // What the failure log did not keep is in the application's log, with
    // the input needed to run it again by hand.
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains(&last_id.to_string()) && l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line for {last_id} in:\n{text}"));
    assert!(line.contains("stuck"), "{line}");
    assert!(line.contains(r#"{"n":999}"#), "{line}");
    assert_eq!(executor.metrics().cancelled, 1000);
}
