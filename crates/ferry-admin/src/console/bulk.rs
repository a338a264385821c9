//! Replay or discard everything matching a filter: a confirmation that
//! shows how many items match, then a job page that follows the chunks.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use ferry_store::admin::DeadFilter;
use maud::{html, Markup};

use super::dead::{describe, filter_fields, filter_of, filter_pairs};
use super::layout::{self, count, exact, Section};
use super::query::{query_string, segment, Fields, PageError};
use super::session::{self, Session};
use super::Ui;
use crate::{AdminError, BulkAction, JobId, JobView, NamedStore};

fn action_of(q: &Fields) -> Result<BulkAction, AdminError> {
    match q.get("action") {
        Some("replay") => Ok(BulkAction::Replay),
        Some("discard") => Ok(BulkAction::Discard),
        _ => Err(AdminError::bad("action", "must be replay or discard")),
    }
}

fn verb(a: BulkAction) -> &'static str {
    match a {
        BulkAction::Replay => "Replay",
        BulkAction::Discard => "Discard",
    }
}

/// `GET /ui/dead/confirm?action=…&<filter>`: the count, and the button.
pub(crate) async fn confirm(
    State(ui): State<Ui>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let q = Fields::query(raw);
    let action = action_of(&q)?;
    let store = ui.admin.store(q.get("store"))?;
    let filter = filter_of(&q)?;
    let n = ui.admin.dead_count(&store, &filter).await?;
    Ok(confirm_page(&session, &store, action, &filter, n, None))
}

fn confirm_page(
    session: &Session,
    store: &NamedStore,
    action: BulkAction,
    filter: &DeadFilter,
    n: u64,
    changed_from: Option<u64>,
) -> Markup {
    let back = format!(
        "/ui/dead/items?{}",
        query_string(filter_pairs(&store.name, filter))
    );
    let body = html! {
        div.title { h1 { (verb(action)) " all matching" } }
        @if let Some(was) = changed_from {
            p.notice role="status" { "The count changed since you looked (" (count(was as i64)) " then): confirm the current count." }
        }
        div.confirm {
            p { "Dead items in store " b { (store.name) } " matching " (describe(filter)) ":" }
            p.big #match-count data-count=(n) { (count(n as i64)) }
            @if n == 0 {
                p { "Nothing to do." }
            } @else {
                @match action {
                    BulkAction::Replay => p.muted {
                        "Each is sent again and removed from the dead letters, in chunks, so the sink never gets more than one chunk at a time. "
                        "Outbox messages become pending and the relay delivers them; consumer dead letters are republished; forwarder failures are delivered through the forwarder's sink. "
                        "Task failures are skipped: only their application can run them again."
                    },
                    BulkAction::Discard => p.muted { "Each is deleted for good, in chunks. This cannot be undone." },
                }
                @if session.caller.may_change() {
                    form method="post" action="/ui/dead/bulk" {
                        (layout::csrf_field(session))
                        input type="hidden" name="action" value=(match action { BulkAction::Replay => "replay", BulkAction::Discard => "discard" });
                        input type="hidden" name="count" value=(n);
                        (filter_fields(&store.name, filter))
                        div.bar {
                            button #confirm type="submit" class=(if action == BulkAction::Replay { "primary" } else { "danger" }) {
                                (verb(action)) " " (count(n as i64)) " items"
                            }
                            a.button href=(back) { "Cancel" }
                        }
                    }
                } @else {
                    p.error { "Your token is read-only: it may look but not change." }
                }
            }
        }
    };
    layout::page(session, Section::Dead, "Confirm", body)
}

/// `POST /ui/dead/bulk`: starts the job if the count still matches.
pub(crate) async fn start(
    State(ui): State<Ui>,
    headers: HeaderMap,
    session: Session,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Fields::parse(&body);
    session::check_change(&ui, &headers, &session, &form, true)?;
    let action = action_of(&form)?;
    let store = ui.admin.store(form.get("store"))?;
    let filter = filter_of(&form)?;
    let confirmed = form
        .parsed("count", str::parse::<u64>)?
        .ok_or_else(|| AdminError::bad("count", "the confirmed count is missing"))?;
    match ui
        .admin
        .start_bulk(&session.caller, &store, action, filter.clone(), confirmed)
        .await
    {
        Ok(id) => Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response()),
        Err(AdminError::StaleCount { current, .. }) => Ok((
            StatusCode::CONFLICT,
            confirm_page(&session, &store, action, &filter, current, Some(confirmed)),
        )
            .into_response()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /ui/jobs`: the recent bulk jobs.
pub(crate) async fn list(State(ui): State<Ui>, session: Session) -> Markup {
    let jobs = ui.admin.jobs();
    let body = html! {
        div.title { h1 { "Bulk jobs" } span.muted { "this process, newest first" } }
        @if jobs.is_empty() {
            p.empty { "No bulk job yet. Start one from a dead-letter list: “Replay all matching…”." }
        } @else {
            table.jobs {
                thead { tr { th { "Job" } th { "Action" } th { "Store" } th { "Filter" } th { "Progress" } th { "State" } th { "Started" } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td.id { a href={"/ui/jobs/" (j.id)} { (j.id.to_string()[..8]) "…" } }
                            td { (verb(j.action)) }
                            td { (j.store) }
                            td { (describe(&filter(j))) }
                            td.num { (count(j.done as i64)) " / " (count(j.total as i64)) }
                            td { (state(j)) }
                            td.when { (layout::ago(j.started_at)) }
                        }
                    }
                }
            }
        }
    };
    layout::page(&session, Section::Jobs, "Bulk jobs", body)
}

fn filter(j: &JobView) -> DeadFilter {
    DeadFilter {
        kinds: j.filter.kinds.clone(),
        name: j.filter.name.clone(),
        cause: j.filter.cause.clone(),
        failed_from: j.filter.failed_from,
        failed_to: j.filter.failed_to,
    }
}

fn job_of(ui: &Ui, id: &str) -> Result<JobView, PageError> {
    let id: JobId = id
        .parse()
        .map_err(|_| AdminError::bad("job", format!("not a job id: `{id}`")))?;
    ui.admin
        .job(id)
        .ok_or_else(|| AdminError::NotFound(format!("no job {id} in this process")).into())
}

/// `GET /ui/jobs/{id}`.
pub(crate) async fn page(
    State(ui): State<Ui>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let job = job_of(&ui, &id)?;
    let body = html! {
        div.title {
            h1 { (verb(job.action)) " job" }
            span.muted.mono { (job.id) }
            div.actions {
                a.button href={"/ui/jobs/" (job.id)} { "Refresh" }
                a.button href={"/ui/dead?store=" (segment(&job.store))} { "Dead letters" }
            }
        }
        div #job data-refresh={"/ui/jobs/" (job.id) "/fragment"} data-every="1000" data-until-done {
            (progress(&job))
        }
    };
    Ok(layout::page(&session, Section::Jobs, "Bulk job", body))
}

/// `GET /ui/jobs/{id}/fragment`: what the script refreshes.
pub(crate) async fn fragment(
    State(ui): State<Ui>,
    _session: Session,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    Ok(progress(&job_of(&ui, &id)?))
}

fn state(j: &JobView) -> Markup {
    match (j.finished_at, &j.last_error) {
        (None, _) => html! { span.state.pending data-state="running" { "running" } },
        (Some(_), None) => html! { span.state.ok data-state="done" { "done" } },
        (Some(_), Some(_)) if j.done + j.skipped >= j.total => {
            html! { span.state.warn data-state="done" { "done, with notes" } }
        }
        (Some(_), Some(_)) => html! { span.state.bad data-state="stopped" { "stopped" } },
    }
}

fn progress(j: &JobView) -> Markup {
    let handled = j.done + j.skipped + j.failed;
    let pct = if j.total == 0 {
        100.0
    } else {
        (handled as f64 / j.total as f64 * 100.0).min(100.0)
    };
    html! {
        div.progress-block data-finished=(j.finished_at.is_some()) {
            p { (state(j)) " " b #done { (count(j.done as i64)) } " of " b { (count(j.total as i64)) } " " (match j.action { BulkAction::Replay => "replayed", BulkAction::Discard => "discarded" }) }
            div.progress { div style={"width:" (format!("{pct:.1}")) "%"} {} }
            dl.facts {
                dt { "Store" } dd { (j.store) }
                dt { "Which" } dd { (describe(&filter(j))) }
                dt { "Confirmed count" } dd { (count(j.total as i64)) }
                dt { "Done" } dd { (count(j.done as i64)) }
                dt { "Skipped" } dd { (count(j.skipped as i64)) }
                dt { "Failed" } dd { (count(j.failed as i64)) }
                dt { "Chunks" } dd { (count(j.chunks as i64)) }
                dt { "Started" } dd { (exact(j.started_at)) }
                dt { "Finished" } dd { @match j.finished_at { Some(t) => (exact(t)), None => "still running" } }
                @if let Some(e) = &j.last_error { dt { "Last note" } dd.mono { (e) } }
            }
        }
    }
}
