//! The overview: every component the daemon runs, by kind, with its
//! state, rate, backlog and lag and their sparklines. The page refreshes
//! its table in place every few seconds when JavaScript runs (the script
//! fetches `/ui/overview/fragment`); without it, the Refresh link does.

use axum::extract::State;
use maud::{html, Markup};

use super::layout::{self, count, dash, Section};
use super::session::Session;
use super::sparkline::sparkline;
use super::Ui;
use crate::overview::{ComponentKind, ComponentState};
use crate::service::{ComponentView, OverviewView};

/// `GET /ui`.
pub(crate) async fn page(State(ui): State<Ui>, session: Session) -> Markup {
    let view = ui.admin.overview().await;
    let body = html! {
        div.title {
            h1 { "Overview" }
            a.refresh href="/ui" { "Refresh" }
        }
        div #overview data-refresh="/ui/overview/fragment" data-every="5000" {
            (fragment_of(&view, &session))
        }
    };
    layout::page(&session, Section::Overview, "Overview", body)
}

/// `GET /ui/overview/fragment`: the part of the page the script refreshes.
pub(crate) async fn fragment(State(ui): State<Ui>, session: Session) -> Markup {
    fragment_of(&ui.admin.overview().await, &session)
}

const KINDS: [(ComponentKind, &str, &str); 6] = [
    (ComponentKind::Relay, "Relays", "pending messages"),
    (ComponentKind::Consumer, "Consumers", "lag per group"),
    (ComponentKind::Forwarder, "Forwarders", "events behind"),
    (ComponentKind::Capture, "CDC captures", "retained WAL"),
    (ComponentKind::Export, "Exports", "last window"),
    (ComponentKind::Import, "Imports", "last window"),
];

fn fragment_of(view: &OverviewView, session: &Session) -> Markup {
    html! {
        p.muted.small { "As of " (view.at.format("%Y-%m-%d %H:%M:%S UTC")) }
        @if view.components.is_empty() {
            p.empty { "This process runs no relay, consumer, forwarder, capture or batch job." }
        }
        @for (kind, title, hint) in KINDS {
            @let of_kind: Vec<&ComponentView> = view.components.iter().filter(|c| c.component.kind == kind).collect();
            @if !of_kind.is_empty() {
                section.kind {
                    h2 { (title) span.hint { (hint) } }
                    (table(kind, &of_kind, session))
                }
            }
        }
    }
}

fn table(kind: ComponentKind, rows: &[&ComponentView], session: &Session) -> Markup {
    let relay = kind == ComponentKind::Relay;
    html! {
        table.components {
            thead { tr {
                th { "Name" } th { "State" } th.num { "Rate" } th.num { "Backlog" } th {}
                th.num { "Lag" } th {} th.num { "Failed" } th { "Details" }
                @if relay && session.caller.may_change() { th {} }
            } }
            tbody {
                @for c in rows {
                    @let comp = &c.component;
                    tr data-component=(comp.name) {
                        td.name {
                            (comp.name)
                            @if let Some(store) = &comp.store { span.store { (store) } }
                        }
                        td { (state(comp.state, c.paused)) }
                        td.num { @match c.rate { Some(r) => { (format!("{r:.1}")) "/s" }, None => (dash()) } }
                        td.num.backlog { @match comp.backlog { Some(b) => (count(b)), None => (dash()) } }
                        td.spark { (sparkline("backlog", &c.samples.iter().map(|s| s.backlog).collect::<Vec<_>>())) }
                        td.num { @match comp.lag { Some(l) => (count(l)), None => (dash()) } }
                        td.spark { (sparkline("lag", &c.samples.iter().map(|s| s.lag).collect::<Vec<_>>())) }
                        td.num { (count(comp.failed_total as i64)) }
                        td.detail {
                            @for (k, v) in &comp.detail {
                                span.fact { span.key { (k) } " " (fact(v)) }
                            }
                        }
                        @if relay && session.caller.may_change() {
                            td { (pause_button(&comp.name, c.paused, session)) }
                        }
                    }
                }
            }
        }
    }
}

fn pause_button(pipeline: &str, paused: Option<bool>, session: &Session) -> Markup {
    let (action, label) = match paused {
        Some(true) => ("resume", "Resume"),
        _ => ("pause", "Pause"),
    };
    html! {
        form.inline method="post" action={"/ui/pipelines/" (pipeline) "/" (action)} {
            (layout::csrf_field(session))
            button.small type="submit" { (label) }
        }
    }
}

fn state(state: ComponentState, paused: Option<bool>) -> Markup {
    let (class, text) = match (state, paused) {
        (_, Some(true)) | (ComponentState::Paused, _) => ("paused", "paused"),
        (ComponentState::Running, _) => ("ok", "running"),
        (ComponentState::SinkDown, _) => ("warn", "sink down"),
        (ComponentState::Stopped, _) => ("bad", "stopped"),
        (ComponentState::Failed, _) => ("bad", "failed"),
    };
    html! { span class={"state " (class)} { (text) } }
}

fn fact(v: &serde_json::Value) -> Markup {
    match v {
        serde_json::Value::String(s) => html! { (s) },
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => html! { (count(i)) },
            None => html! { (n) },
        },
        serde_json::Value::Object(map) => html! {
            @for (k, v) in map { span.sub { (k) ": " (fact(v)) } " " }
        },
        other => html! { (other) },
    }
}
