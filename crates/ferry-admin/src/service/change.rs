//! Changing: replay or discard one dead item, pause and resume a pipeline.
//! Each change is refused to a read-only caller and written to the audit
//! log of the store it changed.

use ferry_store::admin::{AuditEntry, DeadId, DeadKey};
use serde::Serialize;

use super::{may_change, Admin};
use crate::{AdminError, Caller, NamedStore};

/// What replaying one dead item did.
#[derive(Clone, Debug, Serialize)]
pub struct Replayed {
    /// The item.
    pub id: String,
    /// Where it went: `outbox` (pending again, the relay delivers it),
    /// `broker` (republished where its consumer reads) or `sink` (the
    /// forwarder's sink accepted the event).
    pub to: &'static str,
}

impl Admin {
    /// Sends one dead item again and removes it from the dead items: an
    /// outbox message becomes pending (fresh attempts), a consumer letter is
    /// republished, a forwarder's event is delivered through its sink. A
    /// task failure is refused (409): only the application that registered
    /// the task can re-run it.
    pub async fn replay(
        &self,
        caller: &Caller,
        store: &NamedStore,
        id: &DeadId,
    ) -> Result<Replayed, AdminError> {
        may_change(caller)?;
        let to = self.replay_item(store, id).await?;
        self.record(store, caller, "dead.replay", id.to_string(), 1, None)
            .await?;
        Ok(Replayed {
            id: id.to_string(),
            to,
        })
    }

    /// Replays one item without checks or audit (also a bulk job's step).
    pub(super) async fn replay_item(
        &self,
        store: &NamedStore,
        id: &DeadId,
    ) -> Result<&'static str, AdminError> {
        let missing = || AdminError::NotFound(format!("no dead item `{id}`"));
        let db = &store.db;
        match &id.0 {
            DeadKey::Outbox { seq } => {
                if !db.replay_outbox_dead_item(*seq).await? {
                    return Err(missing());
                }
                Ok("outbox")
            }
            DeadKey::Consumer { id: letter } => {
                let letter = db.dead_letter(*letter).await?.ok_or_else(missing)?;
                self.daemon
                    .republish(&letter)
                    .await
                    .map_err(|source| AdminError::Replay {
                        id: id.to_string(),
                        source,
                    })?;
                // Only once the broker has it (at least once: a crash before
                // this line publishes it again, with the same message id).
                db.delete_dead_letter(letter.id).await?;
                Ok("broker")
            }
            DeadKey::Forwarder { reader, seq } => {
                let event = db
                    .event_failure_event(reader, *seq)
                    .await?
                    .ok_or_else(missing)?;
                self.daemon
                    .redeliver_event(reader, &event)
                    .await
                    .map_err(|source| AdminError::Replay {
                        id: id.to_string(),
                        source,
                    })?;
                db.discard_event_failure(reader, *seq).await?;
                Ok("sink")
            }
            DeadKey::Task { .. } => {
                if db.dead_detail(id).await?.is_none() {
                    return Err(missing());
                }
                Err(AdminError::Conflict(TASK_REPLAY.to_owned()))
            }
        }
    }

    /// Deletes one dead item for good; 404 when there is none.
    pub async fn discard(
        &self,
        caller: &Caller,
        store: &NamedStore,
        id: &DeadId,
    ) -> Result<(), AdminError> {
        may_change(caller)?;
        if !store.db.discard_dead_item(id).await? {
            return Err(AdminError::NotFound(format!("no dead item `{id}`")));
        }
        self.record(store, caller, "dead.discard", id.to_string(), 1, None)
            .await
    }

    /// Pauses the relay of `pipeline` (a flag in its store that the relay
    /// honours); 404 for an unknown pipeline.
    pub async fn pause(&self, caller: &Caller, pipeline: &str) -> Result<(), AdminError> {
        may_change(caller)?;
        let store = self.pipeline_store(pipeline)?;
        store.db.pause(pipeline, &caller.name).await?;
        self.record(
            &store,
            caller,
            "pipeline.pause",
            pipeline.to_owned(),
            1,
            None,
        )
        .await
    }

    /// Resumes the relay of `pipeline`; 404 for an unknown pipeline.
    pub async fn resume(&self, caller: &Caller, pipeline: &str) -> Result<(), AdminError> {
        may_change(caller)?;
        let store = self.pipeline_store(pipeline)?;
        store.db.resume(pipeline).await?;
        self.record(
            &store,
            caller,
            "pipeline.resume",
            pipeline.to_owned(),
            1,
            None,
        )
        .await
    }

    /// The store of the relay called `pipeline`.
    fn pipeline_store(&self, pipeline: &str) -> Result<NamedStore, AdminError> {
        let relay = self.relay(pipeline)?;
        self.store(relay.store.as_deref())
    }

    /// Writes one change to `store`'s audit log.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record(
        &self,
        store: &NamedStore,
        caller: &Caller,
        action: &str,
        target: String,
        count: u64,
        detail: Option<String>,
    ) -> Result<(), AdminError> {
        let entry = AuditEntry {
            actor: caller.name.clone(),
            action: action.to_owned(),
            target,
            count: i64::try_from(count).unwrap_or(i64::MAX),
            detail,
        };
        Ok(store.db.record_audit(&entry).await?)
    }
}

/// Why a task failure is not replayed here.
pub(super) const TASK_REPLAY: &str = "a task failure cannot be replayed by the daemon: \
     only the application that registered the task can re-run it (ferry-executor's rerun)";
