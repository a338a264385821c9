//! The audit log: every change made through the API or the console, newest
//! first.

use axum::extract::{RawQuery, State};
use maud::{html, Markup};

use super::layout::{self, ago, count, dash, Section};
use super::query::{segment, Fields, PageError};
use super::session::Session;
use super::Ui;

const PAGE: u32 = 50;

/// `GET /ui/audit`.
pub(crate) async fn page(
    State(ui): State<Ui>,
    session: Session,
    RawQuery(raw): RawQuery,
) -> Result<Markup, PageError> {
    let q = Fields::query(raw);
    let picked = ui.store(&q).await?;
    let store = &picked.store.name;
    let before = q.parsed("before", str::parse::<i64>)?;
    let records = ui.admin.audit(&picked.store, before, PAGE).await?;
    let older = (records.len() == PAGE as usize)
        .then(|| records.last().map(|r| r.id))
        .flatten();
    let body = html! {
        div.title { h1 { "Audit log" } span.muted { "every change, with the token that made it · store " (store) } }
        @if picked.names.len() > 1 {
            form.filters method="get" action="/ui/audit" {
                (layout::store_picker(&picked.names, store))
                button type="submit" { "Show" }
            }
        }
        @if records.is_empty() {
            p.empty { "No change recorded yet." }
        } @else {
            table.audit {
                thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Target" } th.num { "Count" } th { "Detail" } } }
                tbody {
                    @for r in &records {
                        tr {
                            td.when { (ago(r.at)) }
                            td.name { (r.entry.actor) }
                            td { code { (r.entry.action) } }
                            td.mono.small { (r.entry.target) }
                            td.num { (count(r.entry.count)) }
                            td.mono.small { @match &r.entry.detail { Some(d) => (d), None => (dash()) } }
                        }
                    }
                }
            }
        }
        div.pager {
            @if before.is_some() { a href={"/ui/audit?store=" (segment(store))} { "← Newest" } }
            @if let Some(b) = older { a href={"/ui/audit?store=" (segment(store)) "&before=" (b)} { "Older →" } }
        }
    };
    Ok(layout::page(&session, Section::Audit, "Audit log", body))
}
