//! `GET /outbox` and `GET /outbox/{seq or id}`.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use ferry_store::admin::{OutboxFilter, OutboxMessage, OutboxPage, OutboxStatus};
use ferry_store::outbox::admin::MessageRef;
use uuid::Uuid;

use super::params::{self, Params};
use crate::{Admin, AdminError};

/// The parameters `GET /outbox` takes.
pub(crate) const LIST: &[&str] = &[
    "status",
    "topic",
    "key",
    "id",
    "created_from",
    "created_to",
    "before",
    "limit",
    "store",
];

pub(super) async fn list(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Json<OutboxPage>, AdminError> {
    let p = Params::parse(raw.as_deref(), LIST, &[])?;
    let filter = OutboxFilter {
        status: p.get("status", |v| {
            v.parse::<OutboxStatus>()
                .map_err(|_| format!("must be pending, retrying, delivered or dead, not `{v}`"))
        })?,
        topic: p.text("topic").map(str::to_owned),
        key: p.text("key").map(str::to_owned),
        message_id: p.get("id", |v| {
            Uuid::parse_str(v).map_err(|_| format!("must be a message id (a UUID), not `{v}`"))
        })?,
        created_from: p.time("created_from")?,
        created_to: p.time("created_to")?,
    };
    let before = p.seq("before")?;
    let limit = p.limit()?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(admin.outbox(&store, &filter, before, limit).await?))
}

/// The parameters `GET /outbox/{message}` takes.
pub(crate) const DETAIL: &[&str] = &["store"];

pub(super) async fn detail(
    State(admin): State<Admin>,
    Path(message): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<OutboxMessage>, AdminError> {
    let p = Params::parse(raw.as_deref(), DETAIL, &[])?;
    let which = message_ref(&message)?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(admin.outbox_message(&store, &which).await?))
}

fn message_ref(v: &str) -> Result<MessageRef, AdminError> {
    match v.parse::<MessageRef>() {
        Ok(MessageRef::Seq(seq)) if params::seq(v).is_err() => Err(AdminError::bad(
            "message",
            format!("must be a positive sequence number or a message id, not `{seq}`"),
        )),
        Ok(r) => Ok(r),
        Err(_) => Err(AdminError::bad(
            "message",
            format!("must be a sequence number or a message id (a UUID), not `{v}`"),
        )),
    }
}
