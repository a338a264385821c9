//! The overview: every component the daemon runs, by kind, with its
//! state, rate, backlog and lag and their sparklines. The page refreshes
//! its table in place every few seconds when JavaScript runs (the script
//! fetches `/ui/overview/fragment`); without it, the Refresh link does.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::layout::{self, count, dash, Section};
use super::query::{segment, Fields, PageError};
use super::session::{self, Session};
use super::sparkline::sparkline;
use super::Ui;
use crate::overview::{ComponentKind, ComponentState};
use crate::{ComponentView, OverviewView};

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
    (ComponentKind::Relay, "Relays", "backlog: pending messages"),
    (
        ComponentKind::Consumer,
        "Consumers",
        "per topic · backlog: waiting, lag: in flight",
    ),
    (
        ComponentKind::Forwarder,
        "Forwarders",
        "backlog and lag: events behind the head",
    ),
    (
        ComponentKind::Capture,
        "CDC captures",
        "lag in seconds · retained WAL",
    ),
    (ComponentKind::Export, "Exports", "rate: rows · last run"),
    (ComponentKind::Import, "Imports", "rate: rows · batches"),
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
                th.c-name { "Name" } th.c-state { "State" } th.num.c-rate { "Rate" }
                th.num.c-n { "Backlog" } th.c-spark {}
                th.num.c-n { "Lag" } th.c-spark {} th.num.c-n { "Failed" } th { "Details" }
                th.c-act {}
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
                                span.fact { span.key { (label(k)) } " " (fact(k, v)) }
                            }
                        }
                        td {
                            @if relay && session.caller.may_change() {
                                (pause_button(&comp.name, c.paused, session))
                            }
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
        form.inline method="post" action={"/ui/pipelines/" (segment(pipeline)) "/" (action)} {
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

/// A detail's key as words: `dead_lettered_total` → `dead lettered`,
/// `oldest_age_seconds` → `oldest age` (the value carries the unit).
fn label(key: &str) -> String {
    let key = key.strip_suffix("_total").unwrap_or(key);
    let key = key.strip_suffix("_seconds").unwrap_or(key);
    let key = key.strip_suffix("_bytes").unwrap_or(key);
    key.replace('_', " ")
}

/// A detail's value: sizes (`…bytes…` keys) in KiB/MiB/GiB, durations
/// (`…_seconds`) in s/min/h, counts grouped, maps as `name: value` pairs.
fn fact(key: &str, v: &serde_json::Value) -> Markup {
    match v {
        serde_json::Value::String(s) => html! { (s) },
        serde_json::Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if key.ends_with("_seconds") {
                html! { (duration(f)) }
            } else if key.contains("bytes") {
                html! { (bytes(f as i64)) }
            } else if let Some(i) = n.as_i64() {
                html! { (count(i)) }
            } else {
                html! { (format!("{f:.2}")) }
            }
        }
        serde_json::Value::Object(map) => html! {
            @for (k, v) in map { span.sub { (k) ": " (fact(k, v)) } " " }
        },
        other => html! { (other) },
    }
}

/// Seconds as `850 ms`, `12.5 s`, `4.2 min`, `3.1 h` or `2.0 d`.
fn duration(secs: f64) -> String {
    match secs.abs() {
        s if s < 1.0 => format!("{:.0} ms", secs * 1000.0),
        s if s < 60.0 => format!("{secs:.1} s"),
        s if s < 3600.0 => format!("{:.1} min", secs / 60.0),
        s if s < 86_400.0 => format!("{:.1} h", secs / 3600.0),
        _ => format!("{:.1} d", secs / 86_400.0),
    }
}

/// A size in bytes, in the largest binary unit that keeps it at least 1.
fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n.abs() < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value.abs() < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// `POST /ui/pipelines/{name}/pause`.
pub(crate) async fn pause(
    State(ui): State<Ui>,
    headers: HeaderMap,
    session: Session,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Fields::parse(&body);
    session::check_change(&ui, &headers, &session, &form, true)?;
    ui.admin.pause(&session.caller, &name).await?;
    Ok(Redirect::to("/ui").into_response())
}

/// `POST /ui/pipelines/{name}/resume`.
pub(crate) async fn resume(
    State(ui): State<Ui>,
    headers: HeaderMap,
    session: Session,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = Fields::parse(&body);
    session::check_change(&ui, &headers, &session, &form, true)?;
    ui.admin.resume(&session.caller, &name).await?;
    Ok(Redirect::to("/ui").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(7_340_032), "7.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
        assert_eq!(
            fact("bytes_total", &serde_json::json!(2048)).into_string(),
            "2.0 KiB"
        );
        assert_eq!(label("retained_wal_bytes"), "retained wal");
        assert_eq!(label("dead_lettered_total"), "dead lettered");
    }

    #[test]
    fn durations_and_fractions_read_in_their_units() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.54), "12.5 s");
        assert_eq!(duration(252.0), "4.2 min");
        assert_eq!(duration(11_160.0), "3.1 h");
        assert_eq!(
            fact("oldest_age_seconds", &serde_json::json!(3.27189)).into_string(),
            "3.3 s"
        );
        assert_eq!(
            fact("ratio", &serde_json::json!(0.123456)).into_string(),
            "0.12"
        );
        let lag = serde_json::json!({"billing-eu": 40000});
        assert_eq!(
            fact("lag_by_group", &lag).into_string(),
            "<span class=\"sub\">billing-eu: 40\u{202f}000</span> "
        );
    }
}
