//! The three overload policies, on one slot and one queue place.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_executor::{Executor, OverloadPolicy, SubmitError, TaskHandle, TaskOutcome};

use crate::{config, log_only, next_start, started, Latch};

/// Fills the executor: `first` running (blocked at `latch`), `second`
/// queued. Returns their handles.
async fn fill(executor: &Executor, latch: &Latch) -> (TaskHandle, TaskHandle) {
    let (tx, mut rx) = started();
    let mut handles = Vec::new();
    for name in ["first", "second"] {
        let (latch, tx) = (latch.clone(), tx.clone());
        handles.push(
            executor
                .submit_async(name, move || {
                    let (latch, tx) = (latch.clone(), tx.clone());
                    async move {
                        let _ = tx.send(name.to_owned());
                        latch.wait().await;
                        Ok::<_, std::io::Error>(())
                    }
                })
                .await
                .unwrap(),
        );
        if name == "first" {
            assert_eq!(next_start(&mut rx).await, "first");
        }
    }
    let m = executor.metrics();
    assert_eq!((m.running, m.queued), (1, 1), "{m:?}");
    let second = handles.pop().unwrap();
    (handles.pop().unwrap(), second)
}

#[tokio::test(start_paused = true)]
async fn wait_blocks_the_submitter_until_there_is_room() {
    let executor = log_only(config(1, 1, OverloadPolicy::Wait, 1));
    let latch = Latch::new();
    let (first, second) = fill(&executor, &latch).await;

    let third_ran = Arc::new(AtomicBool::new(false));
    let submit = {
        let (executor, ran) = (executor.clone(), third_ran.clone());
        tokio::spawn(async move {
            executor
                .submit_async("third", move || {
                    let ran = ran.clone();
                    async move {
                        ran.store(true, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(())
                    }
                })
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
    let m = executor.metrics();
    assert_eq!(
        (m.submitted, m.done, m.rejected, m.ran_in_caller),
        (3, 3, 0, 0),
        "{m:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reject_refuses_with_an_error_when_full() {
    let executor = log_only(config(1, 1, OverloadPolicy::Reject, 1));
    let latch = Latch::new();
    let (first, second) = fill(&executor, &latch).await;

    let ran = Arc::new(AtomicBool::new(false));
    let refused = {
        let ran = ran.clone();
        executor
            .submit_async("third", move || {
                let ran = ran.clone();
                async move {
                    ran.store(true, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(())
                }
            })
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
    let m = executor.metrics();
    assert_eq!((m.submitted, m.done, m.rejected), (2, 2, 1), "{m:?}");

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

#[tokio::test(start_paused = true)]
async fn run_in_caller_runs_the_task_inline_in_the_submitter() {
    let executor = log_only(config(1, 1, OverloadPolicy::RunInCaller, 1));
    let latch = Latch::new();
    let (first, second) = fill(&executor, &latch).await;

    let seen = Arc::new(std::sync::Mutex::new(None));
    let handle = {
        let seen = seen.clone();
        SUBMITTER
            .scope(
                "the test",
                executor.submit_async("third", move || {
                    let seen = seen.clone();
                    async move {
                        *seen.lock().unwrap() = Some(SUBMITTER.try_with(|s| *s).ok());
                        Ok::<_, std::io::Error>(())
                    }
                }),
            )
            .await
            .unwrap()
    };
    // Ran before the submission returned, on the submitter's task, while
    // the slot and the queue were still full.
    assert_eq!(*seen.lock().unwrap(), Some(Some("the test")));
    assert_eq!(handle.await, TaskOutcome::Succeeded { attempts: 1 });
    let m = executor.metrics();
    assert_eq!((m.running, m.queued, m.ran_in_caller), (1, 1, 1), "{m:?}");

    // A queued task runs on the executor, not in its submitter.
    latch.open();
    assert!(first.await.is_success());
    assert!(second.await.is_success());
    let seen_queued = Arc::new(std::sync::Mutex::new(None));
    let handle = {
        let seen = seen_queued.clone();
        SUBMITTER
            .scope(
                "the test",
                executor.submit_async("fourth", move || {
                    let seen = seen.clone();
                    async move {
                        *seen.lock().unwrap() = Some(SUBMITTER.try_with(|s| *s).ok());
                        Ok::<_, std::io::Error>(())
                    }
                }),
            )
            .await
            .unwrap()
    };
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
        let (latch, tx) = (latch.clone(), tx.clone());
        handles.push(
            executor
                .submit_async(format!("task {i}"), move || {
                    let (latch, tx) = (latch.clone(), tx.clone());
                    async move {
                        let _ = tx.send(format!("task {i}"));
                        latch.wait().await;
                        Ok::<_, std::io::Error>(())
                    }
                })
                .await
                .unwrap(),
        );
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
    let m = executor.metrics();
    assert_eq!((m.running, m.queued), (3, 7), "{m:?}");
    latch.open();
    for h in handles {
        assert!(h.await.is_success());
    }
    let m = executor.metrics();
    assert_eq!((m.running, m.queued, m.done), (0, 0, 10), "{m:?}");
}
