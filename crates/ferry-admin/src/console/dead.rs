//! Dead letters of every kind: grouped by cause, listed with a filter and
//! checkboxes, one whole; replay or discard of one or of a selection.
//! Everything matching a filter is acted on in [`super::bulk`].

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use ferry_store::admin::{CauseGroup, DeadCursor, DeadFilter, DeadId, DeadItem, DeadKey, DeadKind};
use maud::{html, Markup};

use super::layout::{self, ago, clipped, count, dash, exact, Section};
use super::outbox::{headers, payload};
use super::query::{query_string, segment, time_input, Fields, PageError};
use super::session::{self, Session};
use super::Ui;
use crate::AdminError;

/// Items per page.
const PAGE: u32 = 50;
/// The most items one selection may hold.
const MAX_SELECTED: usize = 500;

/// The dead-letter filter of a query string or form.
pub(crate) fn filter_of(q: &Fields) -> Result<DeadFilter, AdminError> {
    let mut kinds = Vec::new();
    for k in q.all("kind") {
        let kind: DeadKind = k
            .parse()
            .map_err(|e: ferry_store::StoreError| AdminError::bad("kind", e.to_string()))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(DeadFilter {
        kinds,
        name: q.string("name"),
        cause: q.string("cause"),
        failed_from: q.time("from")?,
        failed_to: q.time("to")?,
    })
}

/// The query-string pairs of `filter` in `store`.
pub(crate) fn filter_pairs(store: &str, f: &DeadFilter) -> Vec<(&'static str, Option<String>)> {
    let mut pairs = vec![("store", Some(store.to_owned()))];
    pairs.extend(f.kinds.iter().map(|k| ("kind", Some(k.to_string()))));
    pairs.extend([
        ("name", f.name.clone()),
        ("cause", f.cause.clone()),
        ("from", f.failed_from.map(|t| t.to_rfc3339())),
        ("to", f.failed_to.map(|t| t.to_rfc3339())),
    ]);
    pairs
}

/// The filter as hidden form fields (the bulk confirmation).
pub(crate) fn filter_fields(store: &str, f: &DeadFilter) -> Markup {
    html! {
        @for (name, value) in filter_pairs(store, f) {
            @if let Some(v) = value { input type="hidden" name=(name) value=(v); }
        }
    }
}

/// The filter in words.
pub(crate) fn describe(f: &DeadFilter) -> Markup {
    html! {
        @if f.kinds.is_empty() && f.name.is_none() && f.cause.is_none() && f.failed_from.is_none() && f.failed_to.is_none() {
            "every dead item"
        } @else {
            span.filter {
                @if !f.kinds.is_empty() {
                    "kind " b { (f.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")) } " "
                }
                @if let Some(n) = &f.name { "name " b { (n) } " " }
                @if let Some(c) = &f.cause { "cause " code { (c) } " " }
                @if let Some(t) = f.failed_from { "failed from " b { (exact(t)) } " " }
                @if let Some(t) = f.failed_to { "failed before " b { (exact(t)) } }
            }
        }
    }
}

fn filter_form(
    action: &str,
    stores: &[String],
    store: &str,
    f: &DeadFilter,
    with_cause: bool,
) -> Markup {
    let kind = f.kinds.first().copied();
    html! {
        form.filters method="get" action=(action) {
            (layout::store_picker(stores, store))
            label { "Kind"
                select name="kind" {
                    option value="" { "any" }
                    @for k in DeadKind::ALL {
                        option value=(k.as_str()) selected[kind == Some(k)] { (k.as_str()) }
                    }
                }
            }
            label { "Name" input name="name" value=[f.name.as_deref()] size="16" placeholder="topic, consumer, reader, task"; }
            @if with_cause {
                label { "Cause" input name="cause" value=[f.cause.as_deref()] size="30"; }
            }
            label { "Failed from (UTC)" input type="datetime-local" step="1" name="from" value=(time_input(f.failed_from)); }
            label { "to" input type="datetime-local" step="1" name="to" value=(time_input(f.failed_to)); }
            button.primary type="submit" { "Filter" }
            a.button href={(action) "?store=" (segment(store))} { "Clear" }
        }
    }
}

fn kind_badge(k: DeadKind) -> Markup {
    html! { span.badge.kind { (k.as_str()) } }
}

/// `GET /ui/dead`: the dead items grouped by kind, name and cause.
pub(crate) async fn groups(
    State(ui): State<Ui>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let q = Fields::query(raw);
    let picked = ui.store(&q).await?;
    let store = &picked.store.name;
    let filter = filter_of(&q)?;
    let groups = ui.admin.dead_causes(&picked.store, &filter).await?;
    let total: u64 = groups.iter().map(|g| g.count).sum();
    let items_link = format!(
        "/ui/dead/items?{}",
        query_string(filter_pairs(store, &filter))
    );
    let body = html! {
        div.title {
            h1 { "Dead letters" }
            span.muted { (count(total as i64)) " in " (groups.len()) " groups by cause · store " (store) }
            div.actions { a.button href=(items_link) { "List every item" } }
        }
        (filter_form("/ui/dead", &picked.names, store, &filter, false))
        @if groups.is_empty() {
            p.empty { "No dead letters. Everything was delivered or is still being tried." }
        } @else {
            table.groups {
                thead { tr {
                    th { "Kind" } th { "Name" } th { "Cause" } th.num { "Count" } th { "Latest" } th {}
                } }
                tbody { @for g in &groups { (group_row(g, store, &filter)) } }
            }
        }
    };
    Ok(layout::page(&session, Section::Dead, "Dead letters", body))
}

fn group_row(g: &CauseGroup, store: &str, base: &DeadFilter) -> Markup {
    let f = DeadFilter {
        kinds: vec![g.kind],
        name: Some(g.name.clone()),
        cause: Some(g.cause.clone()),
        ..base.clone()
    };
    let href = format!("/ui/dead/items?{}", query_string(filter_pairs(store, &f)));
    html! {
        tr.group {
            td { (kind_badge(g.kind)) }
            td.name { (g.name) }
            td.cause {
                div.text { (g.cause) }
                @if g.example != g.cause { div.muted.small title="an example of these errors" { "e.g. " (clipped(&g.example, 140)) } }
            }
            td.num { b { (count(g.count as i64)) } }
            td.when { (ago(g.latest)) }
            td { a.button.show href=(href) { "Show" } }
        }
    }
}

/// `GET /ui/dead/items`: dead items matching a filter, newest first, with
/// checkboxes for a selection and the bulk actions.
pub(crate) async fn items(
    State(ui): State<Ui>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let q = Fields::query(raw);
    let picked = ui.store(&q).await?;
    let store = &picked.store.name;
    let filter = filter_of(&q)?;
    let after = q.parsed("after", str::parse::<DeadCursor>)?;
    let page = ui
        .admin
        .dead(&picked.store, &filter, after.as_ref(), PAGE)
        .await?;
    let admin = session.caller.may_change();
    let pairs = filter_pairs(store, &filter);
    let older = page.next.as_ref().map(|c| {
        let mut p = pairs.clone();
        p.push(("after", Some(c.to_string())));
        query_string(p)
    });
    let bulk = |action: &str| {
        let mut p = pairs.clone();
        p.insert(0, ("action", Some(action.to_owned())));
        format!("/ui/dead/confirm?{}", query_string(p))
    };
    let body = html! {
        (done_notice(&q))
        div.title {
            h1 { "Dead letters" }
            span.muted { (describe(&filter)) " · store " (store) }
            div.actions { a.button href={"/ui/dead?" (query_string(pairs.clone()))} { "Group by cause" } }
        }
        (filter_form("/ui/dead/items", &picked.names, store, &filter, true))
        @if page.items.is_empty() {
            p.empty { "No dead item matches." }
        } @else {
            form #selection method="post" action="/ui/dead/selected" {
                (layout::csrf_field(&session))
                input type="hidden" name="store" value=(store);
                @if admin {
                    div.bar {
                        button type="submit" name="action" value="replay" { "Replay selected" }
                        button.danger type="submit" name="action" value="discard" { "Discard selected" }
                        span.spacer {}
                        a.button #replay-all href=(bulk("replay")) { "Replay all matching…" }
                        a.button.danger #discard-all href=(bulk("discard")) { "Discard all matching…" }
                    }
                }
                table.items {
                    thead { tr {
                        @if admin { th.check { input type="checkbox" data-select-all title="select all on this page"; } }
                        th { "Item" } th { "Kind" } th { "Name" } th { "Error" } th.num { "Attempts" } th { "Failed" }
                    } }
                    tbody { @for item in &page.items { (item_row(item, store, admin)) } }
                }
            }
        }
        div.pager {
            @if after.is_some() { a href={"/ui/dead/items?" (query_string(pairs.clone()))} { "← Newest" } }
            @if let Some(q) = older { a href={"/ui/dead/items?" (q)} { "Older →" } }
        }
    };
    Ok(layout::page(&session, Section::Dead, "Dead letters", body))
}

fn item_href(id: &DeadId, store: &str) -> String {
    format!(
        "/ui/dead/item/{}?store={}",
        segment(&id.to_string()),
        segment(store)
    )
}

fn item_row(item: &DeadItem, store: &str, admin: bool) -> Markup {
    let id = item.id.to_string();
    html! {
        tr data-id=(id) {
            @if admin { td.check { input type="checkbox" name="id" value=(id) aria-label={"select " (id)}; } }
            td.id { a href=(item_href(&item.id, store)) { (clipped(&id, 30)) } }
            td { (kind_badge(item.kind)) }
            td.name { (item.name) }
            td.cause { span.text { (clipped(&item.error, 110)) } }
            td.num { (item.attempts) }
            td.when { (ago(item.failed_at)) }
        }
    }
}

/// The notice after a change, from the redirect's query.
fn done_notice(q: &Fields) -> Markup {
    let item = q.get("item").unwrap_or("");
    html! {
        @match q.get("done") {
            Some("replayed") => p.notice role="status" { "Replayed " code { (item) } ": sent again and removed from the dead letters." },
            Some("discarded") => p.notice role="status" { "Discarded " code { (item) } "." },
            _ => {},
        }
    }
}

fn parse_id(raw: &str) -> Result<DeadId, AdminError> {
    raw.parse()
        .map_err(|e: ferry_store::StoreError| AdminError::bad("id", e.to_string()))
}

/// `GET /ui/dead/item/{id}`: one dead item whole.
pub(crate) async fn detail(
    State(ui): State<Ui>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let q = Fields::query(raw);
    let store = ui.admin.store(q.get("store"))?;
    let id = parse_id(&id)?;
    let d = ui.admin.dead_detail(&store, &id).await?;
    let it = &d.item;
    let action = |what: &str| format!("/ui/dead/item/{}/{what}", segment(&id.to_string()));
    let same_cause = DeadFilter {
        kinds: vec![it.kind],
        name: Some(it.name.clone()),
        cause: Some(it.cause.clone()),
        ..DeadFilter::default()
    };
    let body = html! {
        div.title {
            h1 { "Dead letter " code { (id) } }
            div.actions {
                a.button href={"/ui/dead/items?" (query_string(filter_pairs(&store.name, &same_cause)))} { "Same cause" }
                @if let DeadKey::Outbox { seq } = &id.0 {
                    a.button href={"/ui/outbox/" (seq) "?store=" (segment(&store.name))} { "Outbox message" }
                }
            }
        }
        @if session.caller.may_change() {
            div.bar {
                @if it.kind != DeadKind::Task {
                    form.inline method="post" action=(action("replay")) {
                        (layout::csrf_field(&session))
                        input type="hidden" name="store" value=(store.name);
                        button.primary #replay type="submit" { "Replay" }
                    }
                }
                form.inline method="post" action=(action("discard")) {
                    (layout::csrf_field(&session))
                    input type="hidden" name="store" value=(store.name);
                    button.danger #discard type="submit" { "Discard" }
                }
                @if it.kind == DeadKind::Task {
                    span.muted.small { "A task failure cannot be replayed from here: only the application that registered the task can run it again." }
                }
            }
        }
        div.cols {
            div {
                h2 { "Failure" }
                dl.facts {
                    dt { "Kind" } dd { (kind_badge(it.kind)) }
                    dt { "Name" } dd { (it.name) }
                    dt { "Topic" } dd { @match &it.topic { Some(t) => (t), None => (dash()) } }
                    dt { "Key" } dd { @match &it.key { Some(k) => (k), None => (dash()) } }
                    dt { "Message id" } dd.mono { @match &it.message_id { Some(m) => (m), None => (dash()) } }
                    dt { "Attempts" } dd { (it.attempts) }
                    dt { "Failed" } dd { (exact(it.failed_at)) }
                    dt { "Cause" } dd.mono { (it.cause) }
                    dt { "Store" } dd { (store.name) }
                }
                h2 { "Error" }
                pre.error-text { (it.error) }
                h2 { "Headers" }
                (headers(&d.headers))
            }
            div {
                @if let Some(p) = &d.payload {
                    h2 { "Payload " @if let Some(ct) = &d.content_type { span.hint { (ct) } } }
                    (payload(p))
                }
                @if let Some(input) = &d.input {
                    h2 { "Task input" }
                    pre.payload { (serde_json::to_string_pretty(input).unwrap_or_default()) }
                }
                @if d.payload.is_none() && d.input.is_none() {
                    h2 { "Payload" }
                    p.muted { "Not stored any more." }
                }
            }
        }
    };
    Ok(layout::page(
        &session,
        Section::Dead,
        &format!("Dead letter {id}"),
        body,
    ))
}

/// `POST /ui/dead/item/{id}/replay`.
pub(crate) async fn replay(
    State(ui): State<Ui>,
    headers: HeaderMap,
    session: Session,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Fields::parse(&body);
    session::check_change(&ui, &headers, &session, &form, true)?;
    let store = ui.admin.store(form.get("store"))?;
    let id = parse_id(&id)?;
    ui.admin.replay(&session.caller, &store, &id).await?;
    let to = match &id.0 {
        // The message is pending again: its page shows it on its way.
        DeadKey::Outbox { seq } => format!(
            "/ui/outbox/{seq}?store={}&done=replayed",
            segment(&store.name)
        ),
        _ => format!(
            "/ui/dead/items?{}",
            query_string([
                ("store", Some(store.name.clone())),
                ("done", Some("replayed".to_owned())),
                ("item", Some(id.to_string())),
            ])
        ),
    };
    Ok(Redirect::to(&to).into_response())
}

/// `POST /ui/dead/item/{id}/discard`.
pub(crate) async fn discard(
    State(ui): State<Ui>,
    headers: HeaderMap,
    session: Session,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Fields::parse(&body);
    session::check_change(&ui, &headers, &session, &form, true)?;
    let store = ui.admin.store(form.get("store"))?;
    let id = parse_id(&id)?;
    ui.admin.discard(&session.caller, &store, &id).await?;
    let to = format!(
        "/ui/dead/items?{}",
        query_string([
            ("store", Some(store.name.clone())),
            ("done", Some("discarded".to_owned())),
            ("item", Some(id.to_string())),
        ])
    );
    Ok(Redirect::to(&to).into_response())
}

/// `POST /ui/dead/selected`: replay or discard the checked items, one by
/// one; the page says what happened to each.
pub(crate) async fn selected(
    State(ui): State<Ui>,
    headers: HeaderMap,
    session: Session,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Fields::parse(&body);
    session::check_change(&ui, &headers, &session, &form, true)?;
    let store = ui.admin.store(form.get("store"))?;
    let replay = match form.get("action") {
        Some("replay") => true,
        Some("discard") => false,
        _ => return Err(AdminError::bad("action", "must be replay or discard").into()),
    };
    let ids = form.all("id");
    if ids.is_empty() {
        return Err(AdminError::bad("id", "select at least one dead item").into());
    }
    if ids.len() > MAX_SELECTED {
        return Err(AdminError::bad(
            "id",
            format!("at most {MAX_SELECTED} items at once; use \"all matching\" for more"),
        )
        .into());
    }
    let mut outcomes = Vec::with_capacity(ids.len());
    for raw in ids {
        let outcome = match parse_id(raw) {
            Err(e) => Err(e),
            Ok(id) if replay => ui
                .admin
                .replay(&session.caller, &store, &id)
                .await
                .map(|r| format!("sent again ({})", r.to)),
            Ok(id) => ui
                .admin
                .discard(&session.caller, &store, &id)
                .await
                .map(|()| "discarded".to_owned()),
        };
        outcomes.push((
            raw.to_owned(),
            outcome.map_err(|e| match e {
                AdminError::Store(_) => e.to_string(),
                other => crate::overview::chain(&other),
            }),
        ));
    }
    let ok = outcomes.iter().filter(|(_, o)| o.is_ok()).count();
    let verb = if replay { "Replayed" } else { "Discarded" };
    let body = html! {
        div.title { h1 { (verb) " " (ok) " of " (outcomes.len()) } }
        table.outcomes {
            thead { tr { th { "Item" } th { "Outcome" } } }
            tbody {
                @for (id, o) in &outcomes {
                    tr {
                        td.id { (id) }
                        @match o {
                            Ok(text) => td { span.state.ok { (text) } },
                            Err(e) => td.cause { span.state.bad { "failed" } " " span.text { (e) } },
                        }
                    }
                }
            }
        }
        p { a.button href={"/ui/dead?store=" (segment(&store.name))} { "Back to the dead letters" } }
    };
    Ok(layout::page(&session, Section::Dead, verb, body).into_response())
}
