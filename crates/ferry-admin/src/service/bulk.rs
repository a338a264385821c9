//! Bulk actions: replay or discard everything matching a filter, in the
//! background, in chunks of [`AdminConfig::chunk`](crate::AdminConfig::chunk).
//!
//! A bulk replay of outbox dead letters never puts more than one chunk in
//! front of the sink: after making a chunk pending it waits until the
//! relay has delivered it (the outbox's pending count is back to what it
//! was before the chunk) before it releases the next, for at most
//! [`AdminConfig::chunk_drain_timeout`](crate::AdminConfig::chunk_drain_timeout);
//! a relay that does not deliver in that time (paused, its sink down) stops
//! the job with the count still left, rather than piling chunks up.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ferry_store::admin::{DeadCursor, DeadFilter, DeadKind, MAX_ADMIN_PAGE, MAX_CHUNK};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::change::TASK_REPLAY;
use super::{may_change, Admin};
use crate::overview::chain;
use crate::{AdminError, Caller, NamedStore};

/// Jobs remembered (finished ones beyond this are forgotten, oldest first).
const JOBS_KEPT: usize = 100;

/// How often a bulk replay looks whether the relay delivered a chunk, at
/// most: the pending count is a scan of the outbox, so the job waits at
/// least [`DRAIN_POLL_FACTOR`] times as long as the last count took (a
/// large outbox is counted less often, keeping the load on the database
/// to a small share of one connection).
const DRAIN_POLL: Duration = Duration::from_millis(50);
const DRAIN_POLL_FACTOR: u32 = 5;

/// What a bulk job does to every matching dead item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Send each again (task failures are skipped: only their
    /// application can re-run them).
    Replay,
    /// Delete each for good.
    Discard,
}

impl BulkAction {
    fn name(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Discard => "discard",
        }
    }
}

/// A bulk job's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// A bulk job and how far it got.
#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    /// Its id.
    pub id: JobId,
    /// What it does.
    pub action: BulkAction,
    /// The store it works on.
    pub store: String,
    /// Which dead items.
    pub filter: FilterView,
    /// The count the operator confirmed.
    pub total: u64,
    /// Items replayed or discarded so far.
    pub done: u64,
    /// Items it could not act on by design (task failures on replay).
    pub skipped: u64,
    /// Items whose replay failed (they stay dead).
    pub failed: u64,
    /// Chunks released so far.
    pub chunks: u64,
    /// The last failure or reason for skipping, or why the job stopped.
    pub last_error: Option<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished; `None` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A [`DeadFilter`] as a job shows it (and the audit log records it).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FilterView {
    /// Only these kinds; empty for all.
    pub kinds: Vec<DeadKind>,
    /// Only items of this relay topic, consumer, forwarder or task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only items with this cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Only items that failed at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_from: Option<DateTime<Utc>>,
    /// Only items that failed before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_to: Option<DateTime<Utc>>,
}

impl FilterView {
    fn of(f: &DeadFilter) -> Self {
        Self {
            kinds: f.kinds.clone(),
            name: f.name.clone(),
            cause: f.cause.clone(),
            failed_from: f.failed_from,
            failed_to: f.failed_to,
        }
    }
}

type Job = Arc<Mutex<JobView>>;

/// The jobs of this process, oldest first.
#[derive(Clone, Default)]
pub(super) struct Jobs(Arc<Mutex<VecDeque<Job>>>);

impl Jobs {
    /// Refuses a second job on a store while one runs there.
    fn check_idle(jobs: &VecDeque<Job>, store: &str) -> Result<(), AdminError> {
        let running_here = jobs.iter().find_map(|j| {
            let j = j.lock().unwrap_or_else(|e| e.into_inner());
            (j.finished_at.is_none() && j.store == store).then_some(j.id)
        });
        match running_here {
            Some(other) => Err(AdminError::Conflict(format!(
                "bulk job {other} is still running on store `{store}`; wait for it to finish"
            ))),
            None => Ok(()),
        }
    }

    fn idle(&self, store: &str) -> Result<(), AdminError> {
        Self::check_idle(&self.0.lock().unwrap_or_else(|e| e.into_inner()), store)
    }

    fn add(&self, view: JobView) -> Result<Job, AdminError> {
        let mut jobs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Self::check_idle(&jobs, &view.store)?;
        let job = Arc::new(Mutex::new(view));
        jobs.push_back(job.clone());
        while jobs.len() > JOBS_KEPT {
            let finished = jobs.iter().position(|j| {
                j.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .finished_at
                    .is_some()
            });
            match finished {
                Some(i) => {
                    jobs.remove(i);
                }
                None => break,
            }
        }
        Ok(job)
    }

    fn list(&self) -> Vec<JobView> {
        let jobs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().rev().map(snapshot).collect()
    }
}

fn snapshot(job: &Job) -> JobView {
    job.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn update(job: &Job, f: impl FnOnce(&mut JobView)) {
    f(&mut job.lock().unwrap_or_else(|e| e.into_inner()));
}

impl Admin {
    /// Starts replaying or discarding every dead item of `store` that
    /// matches `filter`, in the background. `confirm_count` is the count
    /// the operator was shown; when it no longer matches, nothing starts
    /// (409 with the current count). One bulk job runs per store at a
    /// time. The audit log gets the start (count confirmed) and the end
    /// (count done).
    pub async fn start_bulk(
        &self,
        caller: &Caller,
        store: &NamedStore,
        action: BulkAction,
        filter: DeadFilter,
        confirm_count: u64,
    ) -> Result<JobId, AdminError> {
        may_change(caller)?;
        if self.stopping.is_cancelled() {
            return Err(AdminError::Conflict(
                "the process is shutting down; no bulk job starts now".to_owned(),
            ));
        }
        self.jobs.idle(&store.name)?;
        let current = store.db.count_dead(&filter).await?;
        if current != confirm_count {
            return Err(AdminError::StaleCount {
                confirmed: confirm_count,
                current,
            });
        }
        let id = JobId(Uuid::now_v7());
        let job = self.jobs.add(JobView {
            id,
            action,
            store: store.name.clone(),
            filter: FilterView::of(&filter),
            total: current,
            done: 0,
            skipped: 0,
            failed: 0,
            chunks: 0,
            last_error: None,
            started_at: Utc::now(),
            finished_at: None,
        })?;
        let action_name = format!("dead.bulk_{}", action.name());
        let detail = Some(describe(&filter));
        if let Err(e) = self
            .record(
                store,
                caller,
                &action_name,
                format!("job:{id}"),
                current,
                detail,
            )
            .await
        {
            update(&job, |j| {
                j.last_error = Some("not started: the audit log could not be written".into());
                j.finished_at = Some(Utc::now());
            });
            return Err(e);
        }
        let admin = self.clone();
        let (caller, store) = (caller.clone(), store.clone());
        tokio::spawn(async move { admin.run(job, caller, store, action, filter).await });
        Ok(id)
    }

    /// Stops the bulk jobs running for the process's shutdown and waits, up
    /// to `grace`, for each to end: a job stops before its next chunk (a
    /// chunk already taken is finished; the items not reached stay dead
    /// letters), records why in `last_error` and writes its end to the
    /// audit log with the count done. No job starts afterwards.
    pub async fn finish_jobs(&self, grace: Duration) {
        self.stopping.cancel();
        let deadline = Instant::now() + grace;
        while self.jobs.list().iter().any(|j| j.finished_at.is_none()) {
            if Instant::now() >= deadline {
                tracing::warn!(grace = %humantime::format_duration(grace), "admin: a bulk job did not stop within the grace; its end is not audited");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The reason a job stops when the process shuts down, or `Ok`.
    fn go_on(&self, left: u64) -> Result<(), String> {
        if self.stopping.is_cancelled() {
            return Err(format!(
                "stopped by the shutdown of the process with {left} not done; start the job again for the rest"
            ));
        }
        Ok(())
    }

    /// One job, as far as it got.
    pub fn job(&self, id: JobId) -> Option<JobView> {
        let jobs = self.jobs.0.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter()
            .find(|j| j.lock().unwrap_or_else(|e| e.into_inner()).id == id)
            .map(snapshot)
    }

    /// The recent jobs, newest first.
    pub fn jobs(&self) -> Vec<JobView> {
        self.jobs.list()
    }

    async fn run(
        self,
        job: Job,
        caller: Caller,
        store: NamedStore,
        action: BulkAction,
        filter: DeadFilter,
    ) {
        let id = snapshot(&job).id;
        let outcome = match action {
            BulkAction::Replay => self.replay_all(&job, &store, &filter).await,
            BulkAction::Discard => self.discard_all(&job, &store, &filter).await,
        };
        if let Err(stopped) = outcome {
            tracing::warn!(job = %id, store = %store.name, error = %stopped, "admin: bulk job stopped");
            update(&job, |j| j.last_error = Some(stopped));
        }
        update(&job, |j| j.finished_at = Some(Utc::now()));
        let done = snapshot(&job).done;
        let action = format!("dead.bulk_{}_done", action.name());
        let target = format!("job:{id}");
        if let Err(e) = self
            .record(&store, &caller, &action, target, done, None)
            .await
        {
            tracing::warn!(job = %id, error = %chain(&e), "admin: could not write the end of a bulk job to the audit log");
        }
    }

    async fn replay_all(
        &self,
        job: &Job,
        store: &NamedStore,
        filter: &DeadFilter,
    ) -> Result<(), String> {
        for (kind, f) in by_kind(filter) {
            let left = store.db.count_dead(&f).await.map_err(|e| chain(&e))?;
            if left == 0 {
                continue;
            }
            match kind {
                DeadKind::Outbox => self.replay_outbox(job, store, &f, left).await?,
                DeadKind::Task => update(job, |j| {
                    j.skipped += left;
                    j.last_error = Some(TASK_REPLAY.to_owned());
                }),
                DeadKind::Consumer | DeadKind::Forwarder => {
                    self.replay_each(job, store, &f, left).await?
                }
            }
        }
        Ok(())
    }

    /// Outbox dead letters: a chunk made pending at once, then the wait for
    /// the relay to deliver it.
    async fn replay_outbox(
        &self,
        job: &Job,
        store: &NamedStore,
        filter: &DeadFilter,
        mut left: u64,
    ) -> Result<(), String> {
        let db = &store.db;
        while left > 0 {
            self.go_on(left)?;
            let before = db.outbox_pending().await.map_err(|e| chain(&e))?;
            let n = db
                .replay_outbox_dead_chunk(filter, chunk_of(self.config.chunk, left))
                .await
                .map_err(|e| chain(&e))?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
            update(job, |j| {
                j.done += n;
                j.chunks += 1;
            });
            let deadline = Instant::now() + self.config.chunk_drain_timeout;
            loop {
                let asked = Instant::now();
                let pending = db.outbox_pending().await.map_err(|e| chain(&e))?;
                let took = asked.elapsed();
                if pending <= before {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "the relay did not deliver the last chunk within {} ({} still pending; is the pipeline paused or its sink down?); stopped with {left} not replayed",
                        humantime::format_duration(self.config.chunk_drain_timeout),
                        pending - before
                    ));
                }
                tokio::select! {
                    _ = tokio::time::sleep(DRAIN_POLL.max(took * DRAIN_POLL_FACTOR)) => {}
                    _ = self.stopping.cancelled() => self.go_on(left)?,
                }
            }
        }
        Ok(())
    }

    async fn discard_all(
        &self,
        job: &Job,
        store: &NamedStore,
        filter: &DeadFilter,
    ) -> Result<(), String> {
        for (_, f) in by_kind(filter) {
            let mut left = store.db.count_dead(&f).await.map_err(|e| chain(&e))?;
            while left > 0 {
                self.go_on(left)?;
                let n = store
                    .db
                    .discard_dead_chunk(&f, chunk_of(self.config.chunk, left))
                    .await
                    .map_err(|e| chain(&e))?;
                if n == 0 {
                    break;
                }
                left = left.saturating_sub(n);
                update(job, |j| {
                    j.done += n;
                    j.chunks += 1;
                });
            }
        }
        Ok(())
    }

    /// Consumer letters and forwarder failures: each sent again by the
    /// daemon, then removed; a chunk is one page of them.
    async fn replay_each(
        &self,
        job: &Job,
        store: &NamedStore,
        filter: &DeadFilter,
        mut left: u64,
    ) -> Result<(), String> {
        let mut after: Option<DeadCursor> = None;
        while left > 0 {
            self.go_on(left)?;
            let page = store
                .db
                .dead_items(
                    filter,
                    after.as_ref(),
                    chunk_of(self.config.chunk, left).min(MAX_ADMIN_PAGE),
                )
                .await
                .map_err(|e| chain(&e))?;
            if page.items.is_empty() {
                break;
            }
            for item in &page.items {
                match self.replay_item(store, &item.id).await {
                    Ok(_) => update(job, |j| j.done += 1),
                    // Taken meanwhile (a single replay or discard).
                    Err(AdminError::NotFound(_)) => update(job, |j| j.skipped += 1),
                    Err(e) => update(job, |j| {
                        j.failed += 1;
                        j.last_error = Some(format!("{}: {}", item.id, chain(&e)));
                    }),
                }
            }
            left = left.saturating_sub(page.items.len() as u64);
            update(job, |j| j.chunks += 1);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(())
    }
}

/// `filter` narrowed to each kind it covers (all four when it names none).
/// Each kind's count is taken when its turn comes and bounds it, so items
/// that die again meanwhile are not replayed in a loop.
fn by_kind(filter: &DeadFilter) -> Vec<(DeadKind, DeadFilter)> {
    DeadKind::ALL
        .into_iter()
        .filter(|k| filter.kinds.is_empty() || filter.kinds.contains(k))
        .map(|k| {
            let mut f = filter.clone();
            f.kinds = vec![k];
            (k, f)
        })
        .collect()
}

/// The next chunk: `chunk` (within what the store accepts), or what is
/// left when that is less.
fn chunk_of(chunk: u32, left: u64) -> u32 {
    u32::try_from(left)
        .unwrap_or(u32::MAX)
        .min(chunk.clamp(1, MAX_CHUNK))
}

/// The filter as the audit log shows it.
fn describe(filter: &DeadFilter) -> String {
    serde_json::to_string(&FilterView::of(filter)).unwrap_or_else(|_| format!("{filter:?}"))
}
