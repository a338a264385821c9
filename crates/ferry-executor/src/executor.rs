//! The executor: slots, a queue, the overload policy, retries, the failure
//! log and shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_core::{error_chain, BoxFuture};
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Counters;
use crate::{
    BoxError, ExecutorConfig, ExecutorMetrics, FailureLog, FailureLogError, InvalidExecutorConfig,
    OverloadPolicy, RegisterError, RerunError, ShutdownReport, SubmitError, TaskFailure,
    TaskHandle, TaskOutcome, TaskPanicked, UnfinishedState, UnfinishedTask,
};

/// How long after its deadline a shutdown waits for the failure log to
/// record the tasks it cancelled. A failure log that has not answered by
/// then (a database down, each insert waiting for the pool's timeout) is
/// abandoned: each task it did not record is written to the application's
/// log at error level, with its name, id and input, and reported with
/// `recorded: false`. A shutdown thus returns within `deadline` plus this.
pub const SHUTDOWN_RECORD_GRACE: Duration = Duration::from_secs(5);

/// How many queued tasks cancelled by a shutdown are handed to the failure
/// log at once (running ones record themselves, one per slot).
const RECORD_CONCURRENCY: usize = 16;

type TaskFuture = BoxFuture<'static, Result<(), BoxError>>;
/// Makes one attempt's future; called once per attempt.
type Attempt = Box<dyn FnMut() -> TaskFuture + Send>;
type Handler = Arc<dyn Fn(Value) -> TaskFuture + Send + Sync>;

/// A bounded in-process executor: `concurrency` tasks run at once, at most
/// `queue_capacity` wait, and a submission that finds the queue full
/// follows the [`OverloadPolicy`].
///
/// A task's error or panic is never lost: each failed attempt is logged
/// (warn) with the task's name, the task is retried per the
/// [`ferry_core::RetryPolicy`] (keeping its slot while it waits), and when
/// retries are spent it is logged (error) and recorded in the
/// [`FailureLog`]. Tasks are either *registered* (a handler under a name,
/// submitted with a JSON input: re-runnable from the failure log) or
/// *ad-hoc* closures (recorded, but not re-runnable).
///
/// Tasks live in memory: a process crash loses queued and running tasks
/// (use the outbox or the event store for work that must survive a crash).
/// [`Executor::shutdown`] drains within a deadline and records in the
/// failure log what it had to cancel.
///
/// Functions that return before the task is done end in `_async` and
/// return a [`TaskHandle`]; see the crate documentation.
///
/// Cloning gives another handle on the same executor. Dropping every
/// handle without a shutdown lets queued and running tasks finish while
/// the runtime lives, with no deadline and no report.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// What the dispatcher and the running tasks share (not the queue's
/// sender: the dispatcher stops once every [`Executor`] handle is gone).
struct Shared {
    config: ExecutorConfig,
    log: Arc<dyn FailureLog>,
    handlers: RwLock<HashMap<String, Handler>>,
    /// Whether the executor is closed, and how many tasks (and re-runs) are
    /// in flight; shutdown waits for zero.
    gate: watch::Sender<Gate>,
    /// Shutdown began: wakes submitters waiting for room.
    closing: CancellationToken,
    /// The shutdown deadline passed: cancels everything in flight.
    cancel: CancellationToken,
    /// The recording grace after the deadline ran out: failure log calls
    /// still pending are abandoned (the failure goes to the application's
    /// log instead).
    give_up: CancellationToken,
    slots: Arc<Semaphore>,
    counters: Counters,
    unfinished: Mutex<Vec<UnfinishedTask>>,
    reruns: Mutex<HashSet<Uuid>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Gate {
    closed: bool,
    in_flight: usize,
}

/// Counts one task (or re-run) in flight until dropped.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.gate.send_modify(|g| g.in_flight -= 1);
    }
}

struct Job {
    task: TaskInfo,
    attempt: Attempt,
    outcome: oneshot::Sender<TaskOutcome>,
    _in_flight: InFlight,
}

/// What identifies a task (shareable, unlike its `Attempt`).
struct TaskInfo {
    id: Uuid,
    name: Arc<str>,
    input: Option<Value>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("config", &self.inner.shared.config)
            .field("failure_log", &self.inner.shared.log)
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Starts an executor that hands spent failures to `failure_log`.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: its dispatcher is a task on the current
    /// runtime.
    pub fn new(
        config: ExecutorConfig,
        failure_log: Arc<dyn FailureLog>,
    ) -> Result<Self, InvalidExecutorConfig> {
        config.validate()?;
        let (queue, rx) = mpsc::channel(config.queue_capacity);
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.concurrency)),
            config,
            log: failure_log,
            handlers: RwLock::default(),
            gate: watch::Sender::new(Gate::default()),
            closing: CancellationToken::new(),
            cancel: CancellationToken::new(),
            give_up: CancellationToken::new(),
            counters: Counters::default(),
            unfinished: Mutex::default(),
            reruns: Mutex::default(),
        });
        tokio::spawn(dispatch(shared.clone(), rx));
        Ok(Self {
            inner: Arc::new(Inner { queue, shared }),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ExecutorConfig {
        &self.inner.shared.config
    }

    /// The failure log it records in.
    pub fn failure_log(&self) -> &Arc<dyn FailureLog> {
        &self.inner.shared.log
    }

    /// Registers a re-runnable task: `handler` runs with the input given to
    /// [`Executor::submit_registered_async`] (once per attempt), and again
    /// with the input kept in the failure log by [`Executor::rerun_failure`].
    /// One name, one handler.
    pub fn register<F, Fut, E>(
        &self,
        name: impl Into<String>,
        handler: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let name = name.into();
        let mut handlers = self
            .inner
            .shared
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if handlers.contains_key(&name) {
            return Err(RegisterError::AlreadyRegistered { task: name });
        }
        let handler: Handler = Arc::new(move |input| {
            let attempt = handler(input);
            async move { attempt.await.map_err(Into::into) }.boxed()
        });
        handlers.insert(name, handler);
        Ok(())
    }

    /// Whether a handler is registered under `name`.
    pub fn is_registered(&self, name: &str) -> bool {
        self.inner.shared.handler(name).is_some()
    }

    /// Submits an ad-hoc task: `task` is called once per attempt and its
    /// future run. Returns once the task is queued (or, under
    /// `run_in_caller` with a full queue, once it has run), before it is
    /// done: await the handle for the outcome or drop it. Under `wait` this
    /// waits for room in the queue. A failure of an ad-hoc task is recorded
    /// but cannot be re-run (its code is not in the log).
    pub async fn submit_async<F, Fut, E>(
        &self,
        name: impl Into<String>,
        mut task: F,
    ) -> Result<TaskHandle, SubmitError>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let attempt: Attempt = Box::new(move || {
            let attempt = task();
            async move { attempt.await.map_err(Into::into) }.boxed()
        });
        self.submit(Arc::from(name.into()), None, attempt).await
    }

    /// Submits a registered task with its input; like
    /// [`Executor::submit_async`], but its failure keeps `input` in the
    /// failure log and can be re-run.
    pub async fn submit_registered_async(
        &self,
        name: &str,
        input: Value,
    ) -> Result<TaskHandle, SubmitError> {
        let Some(handler) = self.inner.shared.handler(name) else {
            return Err(SubmitError::UnknownTask {
                task: name.to_owned(),
            });
        };
        let kept = input.clone();
        let attempt: Attempt = Box::new(move || handler(input.clone()));
        self.submit(Arc::from(name), Some(kept), attempt).await
    }

    async fn submit(
        &self,
        name: Arc<str>,
        input: Option<Value>,
        attempt: Attempt,
    ) -> Result<TaskHandle, SubmitError> {
        let shared = &self.inner.shared;
        let refused = |name: &str| {
            Counters::add(&shared.counters.rejected);
            SubmitError::ShuttingDown {
                task: name.to_owned(),
            }
        };
        let Some(in_flight) = shared.enter() else {
            return Err(refused(&name));
        };
        let (tx, rx) = oneshot::channel();
        let id = Uuid::now_v7();
        let handle = TaskHandle {
            id,
            name: name.clone(),
            outcome: rx,
        };
        let job = Job {
            task: TaskInfo { id, name, input },
            attempt,
            outcome: tx,
            _in_flight: in_flight,
        };
        let queue = &self.inner.queue;
        let permit = match shared.config.overload {
            OverloadPolicy::Wait => {
                tokio::select! {
                    biased;
                    _ = shared.closing.cancelled() => return Err(refused(&job.task.name)),
                    permit = queue.reserve() => match permit {
                        Ok(p) => p,
                        Err(_) => return Err(refused(&job.task.name)),
                    },
                }
            }
            OverloadPolicy::Reject | OverloadPolicy::RunInCaller => match queue.try_reserve() {
                Ok(p) => p,
                Err(mpsc::error::TrySendError::Closed(())) => return Err(refused(&job.task.name)),
                Err(mpsc::error::TrySendError::Full(())) => {
                    if shared.config.overload == OverloadPolicy::Reject {
                        Counters::add(&shared.counters.rejected);
                        return Err(SubmitError::Full {
                            task: job.task.name.to_string(),
                            capacity: shared.config.queue_capacity,
                        });
                    }
                    Counters::add(&shared.counters.submitted);
                    Counters::add(&shared.counters.ran_in_caller);
                    tracing::debug!(task = %job.task.name, task_id = %job.task.id, "queue full: running the task in the caller");
                    run(shared.clone(), job).await;
                    return Ok(handle);
                }
            },
        };
        Counters::add(&shared.counters.submitted);
        // Counted before it is sent, so the dispatcher never takes it off
        // the gauge before it is on.
        Counters::add(&shared.counters.queued);
        permit.send(job);
        Ok(handle)
    }

    /// Failures kept in the failure log, oldest first, at most `limit`: of
    /// one task name, or all.
    pub async fn failures(
        &self,
        task: Option<&str>,
        limit: u32,
    ) -> Result<Vec<TaskFailure>, FailureLogError> {
        self.inner.shared.log.list(task, limit).await
    }

    /// Runs a recorded failure again, once, in the caller's task (not on a
    /// slot, with no retries), with the handler registered under its name
    /// and the input kept in the log. On success the failure is removed
    /// from the log; on failure its row is updated (one more attempt, the
    /// new error) and kept. Returns when done.
    pub async fn rerun_failure(&self, id: Uuid) -> Result<(), RerunError> {
        let shared = &self.inner.shared;
        let Some(_in_flight) = shared.enter() else {
            return Err(RerunError::ShuttingDown { id });
        };
        let Some(_claim) = RerunClaim::take(shared, id) else {
            return Err(RerunError::InProgress { id });
        };
        let failure = shared
            .or_give_up(shared.log.get(id))
            .await
            .ok_or(RerunError::ShuttingDown { id })??
            .ok_or(RerunError::NotFound { id })?;
        let Some(input) = failure.input.clone() else {
            return Err(RerunError::NotRerunnable {
                id,
                task: failure.task,
            });
        };
        let Some(handler) = shared.handler(&failure.task) else {
            return Err(RerunError::UnknownTask {
                id,
                task: failure.task,
            });
        };
        let mut attempt: Attempt = Box::new(move || handler(input.clone()));
        Counters::add(&shared.counters.running);
        let result = unless_cancelled(&shared.cancel, run_attempt(&mut attempt)).await;
        Counters::sub(&shared.counters.running);
        let attempts = failure.attempts.saturating_add(1);
        let was_cancelled = result.is_none();
        let error = match result {
            Some(Ok(())) => {
                Counters::add(&shared.counters.done);
                tracing::info!(task = %failure.task, task_id = %id, "re-run of a failed task succeeded");
                if shared
                    .or_give_up(shared.log.remove(id))
                    .await
                    .transpose()?
                    .is_none()
                {
                    tracing::warn!(task = %failure.task, task_id = %id, "the failure log did not remove the re-run failure before the shutdown's grace ran out: it stays, and a later re-run runs it again");
                }
                return Ok(());
            }
            Some(Err(e)) => e,
            None => Box::<dyn std::error::Error + Send + Sync>::from("cancelled by shutdown"),
        };
        let text = error_chain(&*error);
        tracing::error!(task = %failure.task, task_id = %id, attempts, error = %text, "re-run of a failed task failed again");
        let updated = TaskFailure {
            error: text,
            attempts,
            last_failed_at: Utc::now(),
            ..failure
        };
        if shared
            .or_give_up(shared.log.record(&updated))
            .await
            .transpose()?
            .is_none()
        {
            tracing::warn!(task = %updated.task, task_id = %id, "the failure log did not update the re-run failure before the shutdown's grace ran out: it stays as it was");
        }
        if was_cancelled {
            return Err(RerunError::Cancelled {
                id,
                task: updated.task,
            });
        }
        Err(RerunError::Failed {
            id,
            task: updated.task,
            source: error,
        })
    }

    /// Shuts down: from now on submissions (and submitters still waiting
    /// for room) get [`SubmitError::ShuttingDown`]; queued and running
    /// tasks have until `deadline` to finish; then whatever is left is
    /// cancelled, recorded in the failure log (registered tasks with their
    /// input, so they can be re-run; several at once) and reported.
    /// Recording gets at most [`SHUTDOWN_RECORD_GRACE`] more: what the
    /// failure log has not recorded by then is logged at error level (name,
    /// id, input) and reported with `recorded: false`. Returns when done,
    /// within `deadline` plus that grace (unless a task is stuck in
    /// blocking code, which nothing can cancel). Calling it again returns
    /// an empty report.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let shared = &self.inner.shared;
        shared.gate.send_modify(|g| g.closed = true);
        shared.closing.cancel();
        let mut gate = shared.gate.subscribe();
        let drained = tokio::time::timeout(deadline, gate.wait_for(|g| g.in_flight == 0))
            .await
            .is_ok();
        // Also stops the dispatcher when everything finished in time.
        shared.cancel.cancel();
        if !drained {
            // Everything in flight now stops at its next await and records
            // itself, within the grace.
            let recorded =
                tokio::time::timeout(SHUTDOWN_RECORD_GRACE, gate.wait_for(|g| g.in_flight == 0))
                    .await
                    .is_ok();
            if !recorded {
                tracing::error!(
                    grace = ?SHUTDOWN_RECORD_GRACE,
                    "the failure log did not record every cancelled task in time; the rest are logged here instead"
                );
            }
        }
        // Failure log calls still pending now give up at once (and any
        // made later, by a shutdown that found nothing to cancel, too).
        shared.give_up.cancel();
        // This cannot fail while `shared.gate` lives.
        let _ = gate.wait_for(|g| g.in_flight == 0).await;
        let unfinished =
            std::mem::take(&mut *shared.unfinished.lock().unwrap_or_else(|e| e.into_inner()));
        if unfinished.is_empty() {
            tracing::info!("executor shut down, every task finished");
        } else {
            tracing::warn!(
                unfinished = unfinished.len(),
                "executor shut down, tasks cancelled at the deadline"
            );
        }
        ShutdownReport { unfinished }
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shared.gate.borrow().closed
    }

    /// A snapshot of the metrics.
    pub fn metrics(&self) -> ExecutorMetrics {
        self.inner.shared.counters.snapshot()
    }
}

impl Shared {
    /// Counts a task in flight, unless the executor is closed.
    fn enter(self: &Arc<Self>) -> Option<InFlight> {
        let mut entered = false;
        self.gate.send_if_modified(|g| {
            if !g.closed {
                g.in_flight += 1;
                entered = true;
            }
            entered
        });
        entered.then(|| InFlight(self.clone()))
    }

    /// `f`'s output, or `None` once the shutdown's recording grace has run
    /// out.
    async fn or_give_up<T>(&self, f: impl Future<Output = T>) -> Option<T> {
        unless_cancelled(&self.give_up, f).await
    }

    fn handler(&self, name: &str) -> Option<Handler> {
        self.handlers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Hands a failure to the failure log; says whether it is kept there.
    /// Gives up when the shutdown's recording grace runs out. When it is
    /// not kept because of an error or that grace, the failure is logged
    /// with its input, so that it can still be re-run by hand.
    async fn record(&self, failure: &TaskFailure) -> bool {
        let recorded = self.or_give_up(self.log.record(failure)).await;
        let input = failure
            .input
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default();
        let (why, log_error) = match recorded {
            Some(Ok(kept)) => return kept,
            Some(Err(e)) => (
                "failure log unavailable: this task failure is kept only in this log line",
                Some(error_chain(&e)),
            ),
            None => (
                "failure log did not record this task before the shutdown's grace ran out: it is kept only in this log line",
                None,
            ),
        };
        // Without a `log_error` field when there is none.
        tracing::error!(
            task = %failure.task,
            task_id = %failure.id,
            attempts = failure.attempts,
            error = %failure.error,
            input = %input,
            log_error = log_error.as_ref().map(tracing::field::display),
            "{why}"
        );
        false
    }
}

/// Marks one failure as being re-run, until dropped.
struct RerunClaim<'a>(&'a Shared, Uuid);

impl<'a> RerunClaim<'a> {
    fn take(shared: &'a Shared, id: Uuid) -> Option<Self> {
        let fresh = shared
            .reruns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        fresh.then_some(Self(shared, id))
    }
}

impl Drop for RerunClaim<'_> {
    fn drop(&mut self) {
        self.0
            .reruns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Takes a slot, then a queued task, and runs it on a task of its own;
/// when the shutdown deadline passes, cancels what is still queued.
async fn dispatch(shared: Arc<Shared>, mut queue: mpsc::Receiver<Job>) {
    loop {
        // The slot first: a task taken off the queue starts at once, so the
        // queue holds exactly the tasks waiting.
        let slot = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            slot = shared.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
        };
        let job = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            job = queue.recv() => match job {
                Some(job) => job,
                // Every Executor handle is gone and the queue is empty.
                None => return,
            },
        };
        Counters::sub(&shared.counters.queued);
        let shared = shared.clone();
        tokio::spawn(async move {
            run(shared, job).await;
            drop(slot);
        });
    }
    queue.close();
    // Several at once, so that a slow failure log does not take a round
    // trip per queued task; the shutdown's grace bounds the whole.
    let queued = futures::stream::poll_fn(|cx| queue.poll_recv(cx));
    queued
        .for_each_concurrent(RECORD_CONCURRENCY, |job| {
            let shared = &shared;
            async move {
                // The whole job, its in-flight count included, lives until
                // the task is recorded and reported.
                let job = job;
                Counters::sub(&shared.counters.queued);
                let outcome =
                    cancelled(shared, &job.task, UnfinishedState::Queued, 0, None, None).await;
                let _ = job.outcome.send(outcome);
            }
        })
        .await;
}

/// Runs a task's attempts per the retry policy, then reports its outcome.
async fn run(shared: Arc<Shared>, mut job: Job) {
    Counters::add(&shared.counters.running);
    let policy = &shared.config.retry;
    let mut attempts = 0u32;
    let mut first_failed_at: Option<DateTime<Utc>> = None;
    let mut last_error: Option<String> = None;
    // `None`: cancelled by the shutdown deadline while running.
    let outcome = loop {
        attempts += 1;
        let error = match unless_cancelled(&shared.cancel, run_attempt(&mut job.attempt)).await {
            None => break None,
            Some(Ok(())) => {
                Counters::add(&shared.counters.done);
                if attempts > 1 {
                    tracing::info!(task = %job.task.name, task_id = %job.task.id, attempts, "task succeeded after retrying");
                }
                break Some(TaskOutcome::Succeeded { attempts });
            }
            Some(Err(e)) => error_chain(&*e),
        };
        let now = Utc::now();
        let first = *first_failed_at.get_or_insert(now);
        if policy.allows_another(attempts) {
            let delay = policy.delay(attempts);
            tracing::warn!(task = %job.task.name, task_id = %job.task.id, attempt = attempts, error = %error, retry_in = ?delay, "task failed, retrying");
            Counters::add(&shared.counters.retried);
            last_error = Some(error);
            let waited = unless_cancelled(&shared.cancel, tokio::time::sleep(delay)).await;
            if waited.is_none() {
                break None;
            }
            continue;
        }
        tracing::error!(task = %job.task.name, task_id = %job.task.id, attempts, error = %error, "task failed and its retries are spent, recording it in the failure log");
        let failure = TaskFailure {
            id: job.task.id,
            task: job.task.name.to_string(),
            input: job.task.input.clone(),
            error: error.clone(),
            attempts,
            first_failed_at: first,
            last_failed_at: now,
        };
        let recorded = shared.record(&failure).await;
        Counters::add(&shared.counters.failed);
        break Some(TaskOutcome::Failed {
            attempts,
            error,
            recorded,
        });
    };
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => {
            cancelled(
                &shared,
                &job.task,
                UnfinishedState::Running,
                attempts,
                first_failed_at,
                last_error,
            )
            .await
        }
    };
    Counters::sub(&shared.counters.running);
    // The submitter may have dropped its handle: nobody to tell.
    let _ = job.outcome.send(outcome);
}

/// `f`'s output, or `None` once `token` is cancelled (checked first, so a
/// cancelled token wins over a ready `f`).
async fn unless_cancelled<T>(token: &CancellationToken, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = token.cancelled() => None,
        r = f => Some(r),
    }
}

/// One attempt, with a panic (while making the future or polling it)
/// caught and turned into a [`TaskPanicked`] error.
async fn run_attempt(attempt: &mut Attempt) -> Result<(), BoxError> {
    let future = match std::panic::catch_unwind(AssertUnwindSafe(attempt)) {
        Ok(future) => future,
        Err(payload) => return Err(TaskPanicked::from_payload(payload).into()),
    };
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(TaskPanicked::from_payload(payload).into()),
    }
}

/// Records a task cancelled by the shutdown deadline and notes it for the
/// report.
async fn cancelled(
    shared: &Shared,
    job: &TaskInfo,
    state: UnfinishedState,
    attempts: u32,
    first_failed_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
) -> TaskOutcome {
    let now = Utc::now();
    let error = match (state, last_error) {
        (UnfinishedState::Queued, _) => "cancelled by shutdown before it started".to_owned(),
        (UnfinishedState::Running, None) => "cancelled by shutdown while running".to_owned(),
        (UnfinishedState::Running, Some(e)) => {
            format!("cancelled by shutdown while running; last error: {e}")
        }
    };
    tracing::warn!(task = %job.name, task_id = %job.id, attempts, ?state, "task cancelled at the shutdown deadline, recording it in the failure log");
    let failure = TaskFailure {
        id: job.id,
        task: job.name.to_string(),
        input: job.input.clone(),
        error,
        attempts,
        first_failed_at: first_failed_at.unwrap_or(now),
        last_failed_at: now,
    };
    let recorded = shared.record(&failure).await;
    Counters::add(&shared.counters.cancelled);
    shared
        .unfinished
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(UnfinishedTask {
            id: job.id,
            name: job.name.to_string(),
            state,
            attempts,
            recorded,
        });
    TaskOutcome::Cancelled { attempts, recorded }
}
