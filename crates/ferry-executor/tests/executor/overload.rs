//! The three overload policies, on one slot and one queue place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_executor::{Executor, OverloadPolicy, SubmitError, TaskHandle, TaskOutcome};

use crate::{config, log_only, next_start, started, submit_blocked, Latch};

/// A task that sets `ran` when it runs.
async fn mark(ran: Arc<AtomicBool>) -> Result<(), std::io::Error> {
    ran.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn wait_blocks_the_submitter_until_there_is_room() {
    let (executor, latch, first, second) = crate::full(OverloadPolicy::Wait).await;

    let third_ran = Arc::new(AtomicBool::new(false));
    let submit = {
        let (executor, ran) = (executor.clone(), third_ran.clone());
        tokio::spawn(async move {
            executor
                .submit_async("third", move || mark(ran.clone()))
                .await
        })
    };
    // Paused time only moves on when every task is idle: if the submission
    // could finish, it would have before this times out.
    let mut submit = submit;
    assert!(
        tokio::time::timeout(Duration::from_secs(5), &mut submit)
            .await
            .is_err(),
        "the submission must wait while the queue is full"
    );
    assert_eq!(executor.metrics().queued, 1);

    latch.open();
    let third = submit.await.unwrap().expect("taken once there is room");
    assert_eq!(first.await, TaskOutcome::Succeeded { attempts: 1 });
    assert_eq!(second.await, TaskOutcome::Succeeded { attempts: 1 });
    assert_eq!(third.await, TaskOutcome::Succeeded { attempts: 1 });
    assert!(third_ran.load(Ordering::SeqCst));
    assert_metrics!(executor, submitted: 3, done: 3, rejected: 0, ran_in_caller: 0);
}

#[tokio::test(start_paused = true)]
async fn reject_refuses_with_an_error_when_full() {
    let (executor, latch, first, second) = crate::full(OverloadPolicy::Reject).await;

    let ran = Arc::new(AtomicBool::new(false));
    let refused = {
        let ran = ran.clone();
        executor
            .submit_async("third", move || mark(ran.clone()))
            .await
    };
    let err = refused.expect_err("the queue is full");
    assert!(
        matches!(&err, SubmitError::Full { task, capacity: 1 } if task == "third"),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains("full"), "{err}");

    latch.open();
    assert!(first.await.is_success());
    assert!(second.await.is_success());
    assert!(!ran.load(Ordering::SeqCst), "a rejected task never runs");
    assert_metrics!(executor, submitted: 2, done: 2, rejected: 1);

    // With room again, the same submission is taken.
    let again = executor
        .submit_async("third", crate::succeeds)
        .await
        .unwrap();
    assert!(again.await.is_success());
}

tokio::task_local! {
    /// Set around a submission: a task sees it only when it runs inside
    /// the submitter's own task.
    static SUBMITTER: &'static str;
}

/// What a task saw of `SUBMITTER`: `None` until it ran, then `Some(None)`
/// outside the submitter's task.
type Seen = Arc<std::sync::Mutex<Option<Option<&'static str>>>>;

/// Submits `name` with `SUBMITTER` set to "the test", as a task that notes
/// in `seen` what it sees of it.
async fn submit_as_the_test(executor: &Executor, name: &str, seen: &Seen) -> TaskHandle {
    let seen = seen.clone();
    SUBMITTER
        .scope(
            "the test",
            executor.submit_async(name, move || {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap() = Some(SUBMITTER.try_with(|s| *s).ok());
                    Ok::<_, std::io::Error>(())
                }
            }),
        )
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn run_in_caller_runs_the_task_inline_in_the_submitter() {
    let (executor, latch, first, second) = crate::full(OverloadPolicy::RunInCaller).await;

    let seen = Seen::default();
    let handle = submit_as_the_test(&executor, "third", &seen).await;
    // Ran before the submission returned, on the submitter's task, while
    // the slot and the queue were still full.
    assert_eq!(*seen.lock().unwrap(), Some(Some("the test")));
    assert_eq!(handle.await, TaskOutcome::Succeeded { attempts: 1 });
    assert_metrics!(executor, running: 1, queued: 1, ran_in_caller: 1);

    // A queued task runs on the executor, not in its submitter.
    latch.open();
    assert!(first.await.is_success());
    assert!(second.await.is_success());
    let seen_queued = Seen::default();
    let handle = submit_as_the_test(&executor, "fourth", &seen_queued).await;
    assert!(handle.await.is_success());
    assert_eq!(*seen_queued.lock().unwrap(), Some(None));
    assert_eq!(executor.metrics().ran_in_caller, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_bounded() {
    let executor = log_only(config(3, 100, OverloadPolicy::Wait, 1));
    let latch = Latch::new();
    let (tx, mut rx) = started();
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(submit_blocked(&executor, &format!("task {i}"), &latch, &tx).await);
    }
    for _ in 0..3 {
        next_start(&mut rx).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .is_err(),
        "a fourth task started on three slots"
    );
    assert_metrics!(executor, running: 3, queued: 7);
    latch.open();
    for h in handles {
        assert!(h.await.is_success());
    }
    assert_metrics!(executor, running: 0, queued: 0, done: 10);
}
