//! The outbox browser: messages newest first, filtered by status, topic,
//! key, id and time, paged by "older" links (keyset on `seq`); a message
//! whole.

use axum::extract::{Path, RawQuery, State};
use ferry_store::admin::{OutboxFilter, OutboxRow, OutboxStatus, PayloadView};
use ferry_store::outbox::MessageRef;
use maud::{html, Markup};

use super::layout::{self, ago, clipped, count, dash, exact, Section};
use super::query::{query_string, segment, time_input, Fields, PageError};
use super::session::Session;
use super::Ui;

/// Messages per page.
const PAGE: u32 = 50;

const STATUSES: [OutboxStatus; 4] = [
    OutboxStatus::Pending,
    OutboxStatus::Retrying,
    OutboxStatus::Delivered,
    OutboxStatus::Dead,
];

/// `GET /ui/outbox`.
pub(crate) async fn list(
    State(ui): State<Ui>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let q = Fields::query(raw);
    let picked = ui.store(&q).await?;
    let filter = OutboxFilter {
        status: q.parsed("status", str::parse::<OutboxStatus>)?,
        topic: q.string("topic"),
        key: q.string("key"),
        message_id: q.parsed("id", uuid::Uuid::parse_str)?,
        created_from: q.time("from")?,
        created_to: q.time("to")?,
    };
    let before = q.parsed("before", str::parse::<i64>)?;
    let page = ui
        .admin
        .outbox(&picked.store, &filter, before, PAGE)
        .await?;
    let store = &picked.store.name;
    let older = page.next_before.map(|b| {
        query_string([
            ("store", Some(store.clone())),
            ("status", filter.status.map(|s| s.to_string())),
            ("topic", filter.topic.clone()),
            ("key", filter.key.clone()),
            ("id", filter.message_id.map(|i| i.to_string())),
            ("from", filter.created_from.map(|t| t.to_rfc3339())),
            ("to", filter.created_to.map(|t| t.to_rfc3339())),
            ("before", Some(b.to_string())),
        ])
    });
    let body = html! {
        div.title { h1 { "Outbox" } span.muted { "store " (store) } }
        form.filters method="get" action="/ui/outbox" {
            (layout::store_picker(&picked.names, store))
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES {
                        option value=(s.as_str()) selected[filter.status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Topic" input name="topic" value=[filter.topic.as_deref()] size="18"; }
            label { "Key" input name="key" value=[filter.key.as_deref()] size="12"; }
            label { "Message id" input name="id" value=[filter.message_id.map(|i| i.to_string())] size="24" placeholder="uuid"; }
            label { "Written from (UTC)" input type="datetime-local" step="1" name="from" value=(time_input(filter.created_from)); }
            label { "to" input type="datetime-local" step="1" name="to" value=(time_input(filter.created_to)); }
            button.primary type="submit" { "Filter" }
            a.button href={"/ui/outbox?store=" (segment(store))} { "Clear" }
        }
        @if page.rows.is_empty() {
            p.empty { "No message matches." }
        } @else {
            table.messages {
                thead { tr {
                    th.num { "Seq" } th { "Message id" } th { "Topic" } th { "Key" }
                    th { "Status" } th.num { "Attempts" } th { "Written" } th { "Last error" }
                } }
                tbody {
                    @for r in &page.rows { (row(r, store)) }
                }
            }
        }
        div.pager {
            @if before.is_some() { a href={"/ui/outbox?store=" (segment(store))} { "← Newest" } }
            @if let Some(q) = older { a href={"/ui/outbox?" (q)} { "Older →" } }
        }
    };
    Ok(layout::page(&session, Section::Outbox, "Outbox", body))
}

fn row(r: &OutboxRow, store: &str) -> Markup {
    let href = format!("/ui/outbox/{}?store={}", r.seq, segment(store));
    html! {
        tr {
            td.num { a href=(href) { (r.seq) } }
            td.id { a href=(href) { (r.message_id) } }
            td { (r.topic) }
            td { @match &r.key { Some(k) => (k), None => (dash()) } }
            td { (status(r.status)) }
            td.num { (r.attempts) }
            td.when { (ago(r.created_at)) }
            td.cause { @match &r.last_error { Some(e) => span.text { (clipped(e, 90)) }, None => (dash()) } }
        }
    }
}

/// A status badge.
pub(crate) fn status(s: OutboxStatus) -> Markup {
    let class = match s {
        OutboxStatus::Pending => "pending",
        OutboxStatus::Retrying => "warn",
        OutboxStatus::Delivered => "ok",
        OutboxStatus::Dead => "bad",
    };
    html! { span class={"state " (class)} data-status=(s.as_str()) { (s.as_str()) } }
}

/// `GET /ui/outbox/{message}`: by sequence number or message id.
pub(crate) async fn detail(
    State(ui): State<Ui>,
    session: Session,
    Path(message): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let q = Fields::query(raw);
    let store = ui.admin.store(q.get("store"))?;
    let which: MessageRef = message
        .parse()
        .map_err(|e: ferry_store::StoreError| crate::AdminError::bad("message", e.to_string()))?;
    let m = ui.admin.outbox_message(&store, &which).await?;
    let r = &m.row;
    let title = format!("Message {}", r.seq);
    let body = html! {
        @if q.get("done") == Some("replayed") {
            p.notice role="status" { "Replayed: the message is pending again with a fresh attempt budget; the relay delivers it next." }
        }
        div.title {
            h1 { "Outbox message " (r.seq) }
            (status(r.status))
            div.actions {
                @if r.status == OutboxStatus::Dead {
                    a.button href={"/ui/dead/item/" (segment(&format!("outbox:{}", r.seq))) "?store=" (segment(&store.name))} { "Dead letter →" }
                }
                a.button href={"/ui/outbox?store=" (segment(&store.name))} { "Back to the outbox" }
            }
        }
        div.cols {
            div {
                h2 { "Message" }
                dl.facts {
                    dt { "Message id" } dd.mono { (r.message_id) }
                    dt { "Kind" } dd { (r.kind) }
                    dt { "Topic" } dd { (r.topic) }
                    dt { "Key" } dd { @match &r.key { Some(k) => (k), None => (dash()) } }
                    dt { "Status" } dd { (r.status.as_str()) }
                    dt { "Attempts" } dd { (count(r.attempts)) }
                    dt { "Written" } dd { (exact(r.created_at)) }
                    dt { "Next attempt" } dd { (exact(r.next_attempt_at)) }
                    dt { "Delivered" } dd { @match r.delivered_at { Some(t) => (exact(t)), None => (dash()) } }
                    dt { "Store" } dd { (store.name) }
                }
                h2 { "Headers" }
                (headers(&m.headers))
            }
            div {
                @if let Some(e) = &r.last_error {
                    h2 { "Last error" }
                    pre.error-text { (e) }
                }
                h2 { "Payload " span.hint { (m.content_type) } }
                (payload(&m.payload))
            }
        }
    };
    Ok(layout::page(&session, Section::Outbox, &title, body))
}

/// A headers table.
pub(crate) fn headers(h: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        @if h.is_empty() {
            p.muted { "No headers." }
        } @else {
            table.headers {
                tbody { @for (k, v) in h { tr { th { (k) } td.mono { (v) } } } }
            }
        }
    }
}

/// A payload: text (JSON pretty-printed), or base64 marked as such.
pub(crate) fn payload(p: &PayloadView) -> Markup {
    match p {
        PayloadView::Text(t) => {
            let pretty = serde_json::from_str::<serde_json::Value>(t)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok());
            html! { pre.payload { (pretty.as_deref().unwrap_or(t)) } }
        }
        PayloadView::Base64(b) => html! {
            p.muted.small { "Not UTF-8; shown in base64." }
            pre.payload { (b) }
        },
    }
}
