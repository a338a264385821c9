//! Looking: the outbox browser and the dead-letter view, over one store.

use ferry_store::admin::{
    AuditRecord, CauseGroup, DeadCursor, DeadDetail, DeadFilter, DeadId, DeadPage, OutboxFilter,
    OutboxMessage, OutboxPage,
};
use ferry_store::outbox::admin::MessageRef;

use super::Admin;
use crate::{AdminError, NamedStore};

impl Admin {
    /// Outbox messages matching `filter`, newest first, with `seq <
    /// before` when given, at most `limit`.
    pub async fn outbox(
        &self,
        store: &NamedStore,
        filter: &OutboxFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<OutboxPage, AdminError> {
        Ok(store.db.browse_outbox(filter, before, limit).await?)
    }

    /// One outbox message, whole; 404 when there is none.
    pub async fn outbox_message(
        &self,
        store: &NamedStore,
        which: &MessageRef,
    ) -> Result<OutboxMessage, AdminError> {
        store
            .db
            .outbox_message(which)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no outbox message {which}")))
    }

    /// Dead items of every kind matching `filter`, after `after`, at most
    /// `limit`.
    pub async fn dead(
        &self,
        store: &NamedStore,
        filter: &DeadFilter,
        after: Option<&DeadCursor>,
        limit: u32,
    ) -> Result<DeadPage, AdminError> {
        Ok(store.db.dead_items(filter, after, limit).await?)
    }

    /// The dead items matching `filter`, grouped by cause.
    pub async fn dead_causes(
        &self,
        store: &NamedStore,
        filter: &DeadFilter,
    ) -> Result<Vec<CauseGroup>, AdminError> {
        Ok(store.db.dead_causes(filter).await?)
    }

    /// How many dead items match `filter` (what a bulk action confirms).
    pub async fn dead_count(
        &self,
        store: &NamedStore,
        filter: &DeadFilter,
    ) -> Result<u64, AdminError> {
        Ok(store.db.count_dead(filter).await?)
    }

    /// One dead item, whole; 404 when there is none.
    pub async fn dead_detail(
        &self,
        store: &NamedStore,
        id: &DeadId,
    ) -> Result<DeadDetail, AdminError> {
        store
            .db
            .dead_detail(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("no dead item `{id}`")))
    }

    /// The audit log of `store`, newest first, with ids below `before`.
    pub async fn audit(
        &self,
        store: &NamedStore,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, AdminError> {
        Ok(store.db.audit_log(before, limit).await?)
    }
}
