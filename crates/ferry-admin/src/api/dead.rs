//! The dead-letter view: list, causes, count, detail, and replay or
//! discard of one or of everything matching a filter.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use ferry_store::admin::{
    CauseGroup, DeadCursor, DeadDetail, DeadFilter, DeadId, DeadKind, DeadPage,
};
use serde::Serialize;
use serde_json::Value;

use super::params::{self, Params};
use crate::service::{BulkAction, JobView, Replayed};
use crate::{Admin, AdminError, Caller};

/// The filter parameters of the dead-letter routes.
const FILTER: [&str; 6] = ["kind", "name", "cause", "failed_from", "failed_to", "store"];

/// The parameters `GET /dead` takes.
pub(crate) const LIST: &[&str] = &[
    "kind",
    "name",
    "cause",
    "failed_from",
    "failed_to",
    "store",
    "after",
    "limit",
];
/// The parameters `GET /dead/causes` and `GET /dead/count` take.
pub(crate) const FILTER_ONLY: &[&str] = &FILTER;
/// The parameters of the routes on one item, and of the bulk actions.
pub(crate) const STORE_ONLY: &[&str] = &["store"];

const REPEATABLE: &[&str] = &["kind"];

fn filter(p: &Params) -> Result<DeadFilter, AdminError> {
    let kinds = p
        .list("kind")
        .iter()
        .map(|k| kind(k).map_err(|m| AdminError::bad("kind", m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeadFilter {
        kinds,
        name: p.text("name").map(str::to_owned),
        cause: p.text("cause").map(str::to_owned),
        failed_from: p.time("failed_from")?,
        failed_to: p.time("failed_to")?,
    })
}

fn kind(v: &str) -> Result<DeadKind, String> {
    v.parse::<DeadKind>()
        .map_err(|_| format!("must be outbox, consumer, forwarder or task, not `{v}`"))
}

fn dead_id(v: &str) -> Result<DeadId, AdminError> {
    v.parse::<DeadId>().map_err(|_| {
        AdminError::bad(
            "id",
            format!("must be outbox:<seq>, consumer:<uuid>, forwarder:<reader>:<seq> or task:<uuid>, not `{v}`"),
        )
    })
}

pub(super) async fn list(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeadPage>, AdminError> {
    let p = Params::parse(raw.as_deref(), LIST, REPEATABLE)?;
    let filter = filter(&p)?;
    let after = p.get("after", |v| {
        v.parse::<DeadCursor>()
            .map_err(|_| format!("must be the `next` cursor of a previous page, not `{v}`"))
    })?;
    let limit = p.limit()?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(
        admin.dead(&store, &filter, after.as_ref(), limit).await?,
    ))
}

pub(super) async fn causes(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<CauseGroup>>, AdminError> {
    let p = Params::parse(raw.as_deref(), FILTER_ONLY, REPEATABLE)?;
    let filter = filter(&p)?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(admin.dead_causes(&store, &filter).await?))
}

/// The answer of `GET /dead/count`.
#[derive(Serialize)]
pub(super) struct Count {
    count: u64,
}

pub(super) async fn count(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Count>, AdminError> {
    let p = Params::parse(raw.as_deref(), FILTER_ONLY, REPEATABLE)?;
    let filter = filter(&p)?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(Count {
        count: admin.dead_count(&store, &filter).await?,
    }))
}

pub(super) async fn detail(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<DeadDetail>, AdminError> {
    let p = Params::parse(raw.as_deref(), STORE_ONLY, &[])?;
    let id = dead_id(&id)?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(admin.dead_detail(&store, &id).await?))
}

pub(super) async fn replay(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Replayed>, AdminError> {
    let p = Params::parse(raw.as_deref(), STORE_ONLY, &[])?;
    let id = dead_id(&id)?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(admin.replay(&caller, &store, &id).await?))
}

/// The answer of `POST /dead/{id}/discard`.
#[derive(Serialize)]
pub(super) struct Discarded {
    id: String,
}

pub(super) async fn discard(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Discarded>, AdminError> {
    let p = Params::parse(raw.as_deref(), STORE_ONLY, &[])?;
    let id = dead_id(&id)?;
    let store = admin.store(p.text("store"))?;
    admin.discard(&caller, &store, &id).await?;
    Ok(Json(Discarded { id: id.to_string() }))
}

/// The answer of the bulk actions: the job started.
#[derive(Serialize)]
pub(super) struct Started {
    job: JobView,
}

pub(super) async fn bulk_replay(
    state: State<Admin>,
    caller: Extension<Caller>,
    raw: RawQuery,
    body: Bytes,
) -> Result<(StatusCode, Json<Started>), AdminError> {
    bulk(state, caller, raw, body, BulkAction::Replay).await
}

pub(super) async fn bulk_discard(
    state: State<Admin>,
    caller: Extension<Caller>,
    raw: RawQuery,
    body: Bytes,
) -> Result<(StatusCode, Json<Started>), AdminError> {
    bulk(state, caller, raw, body, BulkAction::Discard).await
}

async fn bulk(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    body: Bytes,
    action: BulkAction,
) -> Result<(StatusCode, Json<Started>), AdminError> {
    let p = Params::parse(raw.as_deref(), STORE_ONLY, &[])?;
    // Refused before the body is read: a read-only caller learns nothing.
    if !caller.may_change() {
        return Err(AdminError::Forbidden(format!(
            "the token `{}` is read-only: replay, discard, pause and resume need an admin token",
            caller.name
        )));
    }
    let (filter, confirm_count) = bulk_body(&body)?;
    let store = admin.store(p.text("store"))?;
    let id = admin
        .start_bulk(&caller, &store, action, filter, confirm_count)
        .await?;
    let job = admin
        .job(id)
        .ok_or_else(|| AdminError::NotFound(format!("no job {id}")))?;
    Ok((StatusCode::ACCEPTED, Json(Started { job })))
}

/// The keys a bulk body's `filter` takes.
pub(crate) const BODY_FILTER: &[&str] = &["kinds", "name", "cause", "failed_from", "failed_to"];

/// `{"filter": {…}, "confirm_count": N}`, each field checked and named.
fn bulk_body(body: &[u8]) -> Result<(DeadFilter, u64), AdminError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::bad("body", format!("must be a JSON object: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(AdminError::bad("body", "must be a JSON object"));
    };
    let confirm_count = match top.remove("confirm_count") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        Some(other) => {
            return Err(AdminError::bad(
                "confirm_count",
                format!("must be the count shown (a whole number), not {other}"),
            ))
        }
        None => return Err(AdminError::bad(
            "confirm_count",
            "required: the count of matching dead items you were shown (GET /v1/admin/dead/count)",
        )),
    };
    let filter = match top.remove("filter") {
        None => Default::default(),
        Some(Value::Object(f)) => {
            let mut filter = DeadFilter::default();
            for (key, value) in f {
                let name = format!("filter.{key}");
                let text = |v: &Value| -> Result<String, AdminError> {
                    match v {
                        Value::String(s) if !s.is_empty() => Ok(s.clone()),
                        _ => Err(AdminError::bad(&name, "must be a non-empty string")),
                    }
                };
                let time = |v: &Value| -> Result<DateTime<Utc>, AdminError> {
                    params::time(&text(v)?).map_err(|m| AdminError::bad(&name, m))
                };
                match key.as_str() {
                    "kinds" => {
                        let Value::Array(kinds) = value else {
                            return Err(AdminError::bad(&name, "must be a list of kinds"));
                        };
                        for k in &kinds {
                            let k = text(k)?;
                            filter
                                .kinds
                                .push(kind(&k).map_err(|m| AdminError::bad(&name, m))?);
                        }
                    }
                    "name" => filter.name = Some(text(&value)?),
                    "cause" => filter.cause = Some(text(&value)?),
                    "failed_from" => filter.failed_from = Some(time(&value)?),
                    "failed_to" => filter.failed_to = Some(time(&value)?),
                    _ => {
                        return Err(AdminError::bad(
                            &name,
                            format!("unknown filter key; known: {}", BODY_FILTER.join(", ")),
                        ))
                    }
                }
            }
            filter
        }
        Some(_) => return Err(AdminError::bad("filter", "must be a JSON object")),
    };
    if let Some(key) = top.keys().next() {
        return Err(AdminError::bad(
            key,
            "unknown key; the body takes `filter` and `confirm_count`",
        ));
    }
    Ok((filter, confirm_count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(body: &str) -> String {
        match bulk_body(body.as_bytes()) {
            Err(AdminError::BadParameter { parameter, .. }) => parameter,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_bulk_body_names_what_is_wrong() {
        assert_eq!(parameter("nope"), "body");
        assert_eq!(parameter("[]"), "body");
        assert_eq!(parameter("{}"), "confirm_count");
        assert_eq!(parameter(r#"{"confirm_count": -1}"#), "confirm_count");
        assert_eq!(parameter(r#"{"confirm_count": 1, "extra": 1}"#), "extra");
        assert_eq!(parameter(r#"{"confirm_count": 1, "filter": 3}"#), "filter");
        assert_eq!(
            parameter(r#"{"confirm_count": 1, "filter": {"kinds": ["inbox"]}}"#),
            "filter.kinds"
        );
        assert_eq!(
            parameter(r#"{"confirm_count": 1, "filter": {"failed_from": "today"}}"#),
            "filter.failed_from"
        );
        assert_eq!(
            parameter(r#"{"confirm_count": 1, "filter": {"colour": "red"}}"#),
            "filter.colour"
        );
        let (f, n) = bulk_body(
            br#"{"confirm_count": 7, "filter": {"kinds": ["outbox", "task"], "name": "orders"}}"#,
        )
        .unwrap();
        assert_eq!(n, 7);
        assert_eq!(f.kinds, [DeadKind::Outbox, DeadKind::Task]);
        assert_eq!(f.name.as_deref(), Some("orders"));
    }
}
