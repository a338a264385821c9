//! The overview, bulk jobs, pausing pipelines, the audit log and the
//! OpenAPI document.

use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use ferry_store::admin::AuditRecord;
use serde::Serialize;

use super::params::Params;
use crate::service::{JobId, JobView, OverviewView};
use crate::{Admin, AdminError, Caller};

/// The parameters of the routes that take none.
pub(crate) const NONE: &[&str] = &[];
/// The parameters `GET /audit` takes.
pub(crate) const AUDIT: &[&str] = &["before", "limit", "store"];

pub(super) async fn overview(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Json<OverviewView>, AdminError> {
    Params::parse(raw.as_deref(), NONE, &[])?;
    Ok(Json(admin.overview().await))
}

/// The answer of `GET /jobs`.
#[derive(Serialize)]
pub(super) struct Jobs {
    jobs: Vec<JobView>,
}

pub(super) async fn jobs(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Jobs>, AdminError> {
    Params::parse(raw.as_deref(), NONE, &[])?;
    Ok(Json(Jobs { jobs: admin.jobs() }))
}

pub(super) async fn job(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<JobView>, AdminError> {
    Params::parse(raw.as_deref(), NONE, &[])?;
    let id: JobId = id
        .parse()
        .map_err(|_| AdminError::bad("id", format!("must be a job id (a UUID), not `{id}`")))?;
    admin
        .job(id)
        .map(Json)
        .ok_or_else(|| AdminError::NotFound(format!("no job {id}")))
}

/// The answer of pause and resume.
#[derive(Serialize)]
pub(super) struct PipelineState {
    pipeline: String,
    paused: bool,
}

pub(super) async fn pause(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<PipelineState>, AdminError> {
    Params::parse(raw.as_deref(), NONE, &[])?;
    admin.pause(&caller, &name).await?;
    Ok(Json(PipelineState {
        pipeline: name,
        paused: true,
    }))
}

pub(super) async fn resume(
    State(admin): State<Admin>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<PipelineState>, AdminError> {
    Params::parse(raw.as_deref(), NONE, &[])?;
    admin.resume(&caller, &name).await?;
    Ok(Json(PipelineState {
        pipeline: name,
        paused: false,
    }))
}

/// The answer of `GET /audit`.
#[derive(Serialize)]
pub(super) struct Audit {
    entries: Vec<AuditRecord>,
}

pub(super) async fn audit(
    State(admin): State<Admin>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Audit>, AdminError> {
    let p = Params::parse(raw.as_deref(), AUDIT, &[])?;
    let before = p.seq("before")?;
    let limit = p.limit()?;
    let store = admin.store(p.text("store"))?;
    Ok(Json(Audit {
        entries: admin.audit(&store, before, limit).await?,
    }))
}

pub(super) async fn openapi() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], super::OPENAPI)
}
