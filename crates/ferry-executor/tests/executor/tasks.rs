//! Errors, panics, retries, registration and metrics (log-only failure log).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_executor::{
    ExecutorMetrics, OverloadPolicy, RegisterError, RerunError, SubmitError, TaskOutcome,
};
use serde_json::json;

use crate::{always_fails, config, counted, log_only, panics, CapturedLog};

#[derive(Debug, thiserror::Error)]
#[error("sending the mail failed")]
struct MailError(#[source] std::io::Error);

#[tokio::test(start_paused = true)]
async fn an_error_is_logged_with_the_task_name_and_reported() {
    let (log, _guard) = CapturedLog::installed();
    let executor = log_only(config(2, 10, OverloadPolicy::Wait, 2));
    let handle = executor
        .submit_async("send_welcome_mail", || async {
            Err::<(), _>(MailError(std::io::Error::other("smtp said 451")))
        })
        .await
        .unwrap();
    let outcome = handle.await;
    assert_eq!(
        outcome,
        TaskOutcome::Failed {
            attempts: 2,
            error: "sending the mail failed: smtp said 451".to_owned(),
            recorded: false,
        }
    );
    let text = log.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("send_welcome_mail"))
        .collect();
    // The retry (warn), then the failure for good (error): both name the
    // task and carry the error.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("smtp said 451")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("smtp said 451")),
        "{text}"
    );
    assert_eq!(executor.metrics().failed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_caught_logged_and_the_executor_keeps_going() {
    let (log, _guard) = CapturedLog::installed();
    let executor = log_only(config(1, 10, OverloadPolicy::Wait, 1));
    let handle = executor
        .submit_async("resize_avatar", || panics("index out of bounds in resize"))
        .await
        .unwrap();
    match handle.await {
        TaskOutcome::Failed {
            attempts: 1,
            error,
            recorded: false,
        } => {
            assert_eq!(error, "task panicked: index out of bounds in resize");
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    assert!(
        log.text().lines().any(|l| l.contains("ERROR")
            && l.contains("resize_avatar")
            && l.contains("index out of bounds")),
        "{}",
        log.text()
    );
    // A panic while making the attempt's future is caught too.
    let handle = executor
        .submit_async(
            "eager_panic",
            || -> std::future::Ready<Result<(), std::io::Error>> {
                panic!("before the future");
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(handle.await, TaskOutcome::Failed { ref error, .. } if error == "task panicked: before the future")
    );
    // The slot was given back: the next task runs.
    let next = executor
        .submit_async("next", crate::succeeds)
        .await
        .unwrap();
    assert!(next.await.is_success());
    assert_metrics!(executor, failed: 2, done: 1, running: 0);
}

#[tokio::test(start_paused = true)]
async fn a_task_is_retried_with_backoff_then_succeeds() {
    let executor = log_only(config(1, 10, OverloadPolicy::Wait, 5));
    let calls = Arc::new(AtomicU32::new(0));
    let started = tokio::time::Instant::now();
    let flaky = counted(&calls, |n| async move {
        if n < 3 {
            Err(std::io::Error::other(format!("attempt {n} failed")))
        } else {
            Ok(())
        }
    });
    let handle = executor.submit_async("flaky", flaky).await.unwrap();
    assert_eq!(handle.await, TaskOutcome::Succeeded { attempts: 3 });
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Waited 100 ms, then 200 ms (no jitter) on the paused clock.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_metrics!(executor, retried: 2, done: 1, failed: 0);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts() {
    let executor = log_only(config(1, 10, OverloadPolicy::Wait, 4));
    let calls = Arc::new(AtomicU32::new(0));
    let hopeless = counted(&calls, |_| always_fails());
    let handle = executor.submit_async("hopeless", hopeless).await.unwrap();
    assert!(matches!(
        handle.await,
        TaskOutcome::Failed { attempts: 4, .. }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(executor.metrics().retried, 3);
}

#[tokio::test(start_paused = true)]
async fn registered_tasks_get_their_input_and_names_are_checked() {
    let executor = log_only(config(1, 10, OverloadPolicy::Wait, 1));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    executor
        .register("refund", move |input: serde_json::Value| {
            let tx = tx.clone();
            async move {
                tx.send(input).map_err(|_| "test gone")?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }
        })
        .unwrap();
    assert!(executor.is_registered("refund"));
    assert_eq!(
        executor.register("refund", |_| crate::succeeds()),
        Err(RegisterError::AlreadyRegistered {
            task: "refund".into()
        })
    );
    let handle = executor
        .submit_registered_async("refund", json!({"order": 42}))
        .await
        .unwrap();
    assert_eq!(handle.name(), "refund");
    assert!(handle.await.is_success());
    assert_eq!(rx.recv().await, Some(json!({"order": 42})));

    let err = executor
        .submit_registered_async("refnud", json!(null))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SubmitError::UnknownTask { task } if task == "refnud"),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // A log-only failure log keeps nothing to re-run.
    let id = uuid::Uuid::now_v7();
    assert!(
        matches!(executor.rerun_failure(id).await, Err(RerunError::NotFound { id: i }) if i == id)
    );
    assert!(executor.failures(None, 10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_handle_does_not_stop_the_task() {
    let executor = log_only(config(1, 10, OverloadPolicy::Wait, 1));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let handle = executor
        .submit_async("fire_and_forget", move || {
            let tx = tx.take();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(tx) = tx {
                    let _ = tx.send("done");
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .await
        .unwrap();
    drop(handle);
    assert_eq!(rx.await, Ok("done"));
}

#[tokio::test(start_paused = true)]
async fn metrics_count_what_happened() {
    let executor = log_only(config(2, 10, OverloadPolicy::Reject, 2));
    assert_eq!(executor.metrics(), ExecutorMetrics::default());
    let mut handles = Vec::new();
    for i in 0..3 {
        handles.push(
            executor
                .submit_async(format!("ok {i}"), crate::succeeds)
                .await
                .unwrap(),
        );
    }
    handles.push(executor.submit_async("bad", always_fails).await.unwrap());
    for h in handles {
        let _ = h.await;
    }
    let report = executor.shutdown(Duration::from_secs(1)).await;
    assert!(report.is_complete());
    assert!(executor
        .submit_async("late", crate::succeeds)
        .await
        .is_err());
    let m = executor.metrics();
    assert_eq!(
        m,
        ExecutorMetrics {
            queued: 0,
            running: 0,
            submitted: 4,
            done: 3,
            failed: 1,
            retried: 1,
            rejected: 1,
            cancelled: 0,
            ran_in_caller: 0,
        }
    );
    let text = m.to_prometheus("jobs");
    for line in [
        "ferry_executor_done_total{executor=\"jobs\"} 3\n",
        "ferry_executor_failed_total{executor=\"jobs\"} 1\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
}
