//! The daemon's HTTP port: `/metrics` in the Prometheus text format and
//! `/health`.
//!
//! One collector per kind: consumers, forwarders, change data captures,
//! batch export and import jobs, relays (`[[pipeline]]`). docs/metrics.md
//! lists every metric with its type, unit, labels and meaning; the tests
//! below render `/metrics` and check its names against the naming scheme,
//! that page and the Grafana dashboard in docs/grafana.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use ferry_cdc::ShipStats;
use ferry_consumer::Stats;
use ferry_events::forwarder::ForwarderStats;
use ferry_relay::CancellationToken;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::batch::{ExportStats, ImportStats};
use crate::pipeline::Backlog;

/// `[http]`: where the daemon serves `/metrics` and `/health` (and the
/// events API, with `[events_api]`; the admin API and console, with
/// `[[http.tokens]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port, e.g. `"127.0.0.1:9464"`.
    pub listen: std::net::SocketAddr,
    /// The bearer token the events API requires (`Authorization: Bearer
    /// …`): visible ASCII, no spaces. Required with `[events_api]` when
    /// `listen` is not a loopback address. `/metrics` and `/health` stay
    /// open. Prefer `token_env`, which keeps it out of the file.
    #[serde(default)]
    pub token: Option<ferry_events::api::BearerToken>,
    /// The name of an environment variable that holds the token, e.g.
    /// `"FERRY_API_TOKEN"` (read at load); instead of `token`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// `[[http.tokens]]`: named tokens for the admin API (`/v1/admin`) and
    /// the console (`/ui`), each `"admin"` or `"read-only"`. Both are
    /// served only when at least one is set; `token` above never opens
    /// them. See docs/console.md.
    #[serde(default)]
    pub tokens: Vec<crate::admin::TokenConfig>,
}

impl HttpConfig {
    /// The events API's token, from `token` or the variable `token_env`
    /// names; the error names the key.
    pub fn token(&self) -> Result<Option<ferry_events::api::BearerToken>, String> {
        match (&self.token, &self.token_env) {
            (Some(_), Some(_)) => {
                Err("keys `http.token` and `http.token_env`: set one, not both".to_owned())
            }
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(var)) => {
                let value = std::env::var(var).map_err(|_| {
                    format!("key `http.token_env`: the environment variable `{var}` is not set")
                })?;
                ferry_events::api::BearerToken::new(value)
                    .map(Some)
                    .map_err(|e| format!("key `http.token_env`: `{var}`: {e}"))
            }
            (None, None) => Ok(None),
        }
    }
}

/// The consumers whose counters `/metrics` shows, by name.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    consumers: Shown<Stats>,
    forwarders: Shown<Arc<ForwarderStats>>,
    cdcs: Shown<Arc<ShipStats>>,
    exports: Shown<Arc<ExportStats>>,
    imports: Shown<Arc<ImportStats>>,
    relays: Shown<Relayed>,
}

/// A relay's counters and its outbox's backlog.
type Relayed = (Arc<ferry_relay::RelayStats>, Arc<Backlog>);

/// Something shown under a name.
pub(crate) type Named<T> = (String, T);

/// What `/metrics` shows of one kind, by name.
#[derive(Debug)]
struct Shown<T>(Arc<Mutex<Vec<Named<T>>>>);

impl<T> Clone for Shown<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Shown<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: Clone> Shown<T> {
    fn add(&self, name: &str, item: T) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), item));
    }

    /// What is shown now.
    fn snapshot(&self) -> Vec<Named<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Metrics {
    /// Shows `stats` under the consumer `name`.
    pub fn add_consumer(&self, name: &str, stats: Stats) {
        self.consumers.add(name, stats);
    }

    /// Shows `stats` under the forwarder `name`.
    pub fn add_forwarder(&self, name: &str, stats: Arc<ForwarderStats>) {
        self.forwarders.add(name, stats);
    }

    /// Shows `stats` under the capture `name`.
    pub fn add_cdc(&self, name: &str, stats: Arc<ShipStats>) {
        self.cdcs.add(name, stats);
    }

    /// Shows `stats` under the export job `name`.
    pub fn add_export(&self, name: &str, stats: Arc<ExportStats>) {
        self.exports.add(name, stats);
    }

    /// Shows `stats` under the import job `name`.
    pub fn add_import(&self, name: &str, stats: Arc<ImportStats>) {
        self.imports.add(name, stats);
    }

    /// Shows `stats` and `backlog` under the pipeline `name`.
    pub fn add_relay(
        &self,
        name: &str,
        stats: Arc<ferry_relay::RelayStats>,
        backlog: Arc<Backlog>,
    ) {
        self.relays.add(name, (stats, backlog));
    }

    /// The relays shown, with their counters and backlog.
    pub(crate) fn relays(&self) -> Vec<(String, Arc<ferry_relay::RelayStats>, Arc<Backlog>)> {
        let relays = self.relays.snapshot();
        relays.into_iter().map(|(n, (s, b))| (n, s, b)).collect()
    }

    /// The consumers shown.
    pub(crate) fn consumers(&self) -> Vec<Named<Stats>> {
        self.consumers.snapshot()
    }

    /// The forwarders shown.
    pub(crate) fn forwarders(&self) -> Vec<Named<Arc<ForwarderStats>>> {
        self.forwarders.snapshot()
    }

    /// The captures shown.
    pub(crate) fn cdcs(&self) -> Vec<Named<Arc<ShipStats>>> {
        self.cdcs.snapshot()
    }

    /// The export jobs shown.
    pub(crate) fn exports(&self) -> Vec<Named<Arc<ExportStats>>> {
        self.exports.snapshot()
    }

    /// The import jobs shown.
    pub(crate) fn imports(&self) -> Vec<Named<Arc<ImportStats>>> {
        self.imports.snapshot()
    }

    fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ConsumerCollector(self.clone())));
        registry.register_collector(Box::new(ForwarderCollector(self.clone())));
        registry.register_collector(Box::new(CdcCollector(self.clone())));
        registry.register_collector(Box::new(ExportCollector(self.clone())));
        registry.register_collector(Box::new(ImportCollector(self.clone())));
        registry.register_collector(Box::new(RelayCollector(self.clone())));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[derive(Debug)]
struct ConsumerCollector(Metrics);

type Labels = [(&'static str, String); 3];

impl Collector for ConsumerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let consumers = self.0.consumers.snapshot();
        let rows: Vec<(Labels, ferry_consumer::SubscriptionStats)> = consumers
            .iter()
            .flat_map(|(name, stats)| {
                stats.snapshot().into_iter().map(move |s| {
                    (
                        [
                            ("consumer", name.clone()),
                            ("topic", s.topic.clone()),
                            ("group", s.group.clone()),
                        ],
                        s,
                    )
                })
            })
            .collect();
        type Pick = fn(&ferry_consumer::SubscriptionStats) -> u64;
        let counters: [(&str, &str, Pick); 4] = [
            (
                "ferry_consumer_handled",
                "Messages handled and acknowledged.",
                |s| s.handled,
            ),
            (
                "ferry_consumer_failed",
                "Deliveries that failed and went back to the broker.",
                |s| s.failed,
            ),
            (
                "ferry_consumer_dead_lettered",
                "Messages dead-lettered.",
                |s| s.dead_lettered,
            ),
            (
                "ferry_consumer_retried",
                "Handler attempts repeated in process.",
                |s| s.retried,
            ),
        ];
        encode_counters(&mut encoder, &rows, &counters)?;
        type Gauge = fn(&ferry_consumer::SubscriptionStats) -> Option<f64>;
        let gauges: [(&str, &str, Gauge); 5] = [
            (
                "ferry_consumer_in_flight",
                "Messages taken from the broker and not settled yet.",
                |s| Some(s.in_flight as f64),
            ),
            (
                "ferry_consumer_subscribed",
                "1 while the subscription is established.",
                |s| Some(if s.subscribed { 1.0 } else { 0.0 }),
            ),
            (
                "ferry_consumer_lag_waiting_messages",
                "Messages waiting for the group, as the broker reports it.",
                |s| s.lag.and_then(|l| l.waiting).map(|n| n as f64),
            ),
            (
                "ferry_consumer_lag_unacked_messages",
                "Messages handed out and not acknowledged, as the broker reports it.",
                |s| s.lag.and_then(|l| l.in_flight).map(|n| n as f64),
            ),
            (
                "ferry_consumer_lag_oldest_age_seconds",
                "Age of the oldest message the group has not acknowledged.",
                |s| s.lag.and_then(|l| l.oldest_age).map(|d| d.as_secs_f64()),
            ),
        ];
        encode_gauges(&mut encoder, &rows, &gauges)
    }
}

/// A metric family: its name, its help, and how to pick a sample's value
/// from a row's stats.
type Family<'a, S, V> = (&'a str, &'a str, fn(&S) -> V);

/// One counter family per `(name, help, pick)`, with a sample per row of
/// labels and stats.
fn encode_counters<L: EncodeLabelSet, S>(
    encoder: &mut DescriptorEncoder<'_>,
    rows: &[(L, S)],
    families: &[Family<'_, S, u64>],
) -> Result<(), std::fmt::Error> {
    for (name, help, pick) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, s) in rows {
            ConstCounter::new(pick(s)).encode(family.encode_family(labels)?)?;
        }
    }
    Ok(())
}

/// One gauge family per `(name, help, pick)`, with a sample per row for
/// which `pick` has a value.
fn encode_gauges<L: EncodeLabelSet, S, N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    rows: &[(L, S)],
    families: &[Family<'_, S, Option<N>>],
) -> Result<(), std::fmt::Error> {
    for (name, help, pick) in families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, s) in rows {
            if let Some(value) = pick(s) {
                ConstGauge::new(value).encode(family.encode_family(labels)?)?;
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
struct ForwarderCollector(Metrics);

type ForwarderLabels = [(&'static str, String); 1];

impl Collector for ForwarderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let rows: Vec<(ForwarderLabels, Arc<ForwarderStats>)> = self
            .0
            .forwarders
            .snapshot()
            .into_iter()
            .map(|(forwarder, stats)| ([("forwarder", forwarder)], stats))
            .collect();
        type Pick = fn(&Arc<ForwarderStats>) -> u64;
        let counters: [(&str, &str, Pick); 4] = [
            (
                "ferry_forwarder_delivered",
                "Events the sink accepted.",
                |s| s.delivered(),
            ),
            (
                "ferry_forwarder_failed",
                "Failed attempts; each retry counts.",
                |s| s.failed(),
            ),
            (
                "ferry_forwarder_skipped",
                "Events given up on and recorded in ferry_event_failures.",
                |s| s.skipped(),
            ),
            (
                "ferry_forwarder_sink_unavailable",
                "Calls the sink refused as a whole, without counting attempts.",
                |s| {
                    s.sink_unavailable
                        .load(std::sync::atomic::Ordering::Relaxed)
                },
            ),
        ];
        encode_counters(&mut encoder, &rows, &counters)?;
        type Gauge = fn(&Arc<ForwarderStats>) -> Option<i64>;
        let gauges: [(&str, &str, Gauge); 2] = [
            ("ferry_forwarder_offset", "The forwarder's offset.", |s| {
                Some(s.offset())
            }),
            (
                "ferry_forwarder_lag_events",
                "The store's head minus the forwarder's offset.",
                |s| Some(s.lag()),
            ),
        ];
        encode_gauges(&mut encoder, &rows, &gauges)
    }
}

#[derive(Debug)]
struct CdcCollector(Metrics);

impl Collector for CdcCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let captures = self.0.cdcs.snapshot();
        let rows: Vec<(ForwarderLabels, Arc<ShipStats>)> = captures
            .iter()
            .map(|(name, stats)| ([("capture", name.clone())], stats.clone()))
            .collect();
        type Pick = fn(&Arc<ShipStats>) -> u64;
        let counters: [(&str, &str, Pick); 6] = [
            (
                "ferry_cdc_snapshot_rows",
                "Rows read by snapshots and backfills (r changes).",
                |s| {
                    s.snapshot
                        .lock()
                        .ok()
                        .and_then(|p| p.as_ref().map(|p| p.get().rows))
                        .unwrap_or(0)
                },
            ),
            ("ferry_cdc_read", "Changes read from the database.", |s| {
                s.read.load(Relaxed)
            }),
            ("ferry_cdc_delivered", "Changes the sink accepted.", |s| {
                s.delivered.load(Relaxed)
            }),
            (
                "ferry_cdc_failed",
                "Failed attempts; each retry counts.",
                |s| s.failed.load(Relaxed),
            ),
            ("ferry_cdc_dead_lettered", "Changes dead-lettered.", |s| {
                s.dead.load(Relaxed)
            }),
            (
                "ferry_cdc_acknowledged",
                "Times the position was acknowledged to the database.",
                |s| s.acknowledged.load(Relaxed),
            ),
        ];
        encode_counters(&mut encoder, &rows, &counters)?;
        type Gauge = fn(&Arc<ShipStats>) -> Option<f64>;
        let gauges: [(&str, &str, Gauge); 3] = [
            (
                "ferry_cdc_snapshot_running",
                "1 while a snapshot or backfill is read, else 0.",
                |s| {
                    s.snapshot
                        .lock()
                        .ok()
                        .and_then(|p| p.as_ref().map(|p| f64::from(u8::from(p.get().running))))
                },
            ),
            (
                "ferry_cdc_lag_seconds",
                "Seconds between the last delivered change's commit and now.",
                |s| s.lag_seconds(),
            ),
            (
                "ferry_cdc_retained_wal_bytes",
                "WAL the capture's replication slot makes the server keep (PostgreSQL log mode).",
                |s| {
                    s.retained_wal_bytes
                        .lock()
                        .ok()
                        .and_then(|r| *r)
                        .map(|b| b as f64)
                },
            ),
        ];
        encode_gauges(&mut encoder, &rows, &gauges)?;
        let per_table: Vec<([(&'static str, String); 2], u64)> = captures
            .iter()
            .flat_map(|(name, stats)| {
                stats.tables().into_iter().map(move |(table, n)| {
                    ([("capture", name.clone()), ("table", table.to_string())], n)
                })
            })
            .collect();
        let table_counters: [Family<'_, u64, u64>; 1] = [(
            "ferry_cdc_table_delivered",
            "Changes the sink accepted, per table.",
            |n| *n,
        )];
        encode_counters(&mut encoder, &per_table, &table_counters)
    }
}

#[derive(Debug)]
struct ExportCollector(Metrics);

impl Collector for ExportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let jobs = self.0.exports.snapshot();
        let by_status: Vec<([(&'static str, String); 2], u64)> = jobs
            .iter()
            .flat_map(|(name, s)| {
                [
                    (
                        [("job", name.clone()), ("outcome", "succeeded".to_owned())],
                        s.succeeded.load(Relaxed),
                    ),
                    (
                        [("job", name.clone()), ("outcome", "failed".to_owned())],
                        s.failed.load(Relaxed),
                    ),
                ]
            })
            .collect();
        let runs: [Family<'_, u64, u64>; 1] = [(
            "ferry_batch_export_runs",
            "Export runs finished, by outcome (a failed run counts once, after its retries).",
            |n| *n,
        )];
        encode_counters(&mut encoder, &by_status, &runs)?;
        let rows: Vec<(ForwarderLabels, Arc<ExportStats>)> = jobs
            .iter()
            .map(|(name, stats)| ([("job", name.clone())], stats.clone()))
            .collect();
        type Pick = fn(&Arc<ExportStats>) -> u64;
        let counters: [(&str, &str, Pick); 2] = [
            (
                "ferry_batch_export_rows",
                "Rows exported by successful runs.",
                |s| s.rows.load(Relaxed),
            ),
            (
                "ferry_batch_export_bytes",
                "Bytes handed over by successful runs.",
                |s| s.bytes.load(Relaxed),
            ),
        ];
        encode_counters(&mut encoder, &rows, &counters)?;
        type Gauge = fn(&Arc<ExportStats>) -> Option<f64>;
        let gauges: [(&str, &str, Gauge); 2] = [
            (
                "ferry_batch_export_last_run_duration_seconds",
                "How long the last run took (retries included).",
                |s| s.last_duration(),
            ),
            (
                "ferry_batch_export_last_success_age_seconds",
                "Seconds since the last successful run finished (absent before the first).",
                |s| s.since_success(),
            ),
        ];
        encode_gauges(&mut encoder, &rows, &gauges)
    }
}

#[derive(Debug)]
struct ImportCollector(Metrics);

impl Collector for ImportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let jobs = self.0.imports.snapshot();
        let by_outcome: Vec<([(&'static str, String); 2], u64)> = jobs
            .iter()
            .flat_map(|(name, s)| {
                [
                    ("imported", s.imported.load(Relaxed)),
                    ("skipped", s.skipped.load(Relaxed)),
                    ("refused", s.refused.load(Relaxed)),
                ]
                .map(|(outcome, n)| ([("job", name.clone()), ("outcome", outcome.to_owned())], n))
            })
            .collect();
        let batches: [Family<'_, u64, u64>; 1] = [(
            "ferry_batch_import_batches",
            "Batches taken, by outcome: imported, skipped (imported before), refused (moved to the error folder).",
            |n| *n,
        )];
        encode_counters(&mut encoder, &by_outcome, &batches)?;
        let rows: Vec<(ForwarderLabels, Arc<ImportStats>)> = jobs
            .iter()
            .map(|(name, stats)| ([("job", name.clone())], stats.clone()))
            .collect();
        type Pick = fn(&Arc<ImportStats>) -> u64;
        let counters: [(&str, &str, Pick); 1] =
            [("ferry_batch_import_rows", "Rows loaded.", |s| {
                s.rows.load(Relaxed)
            })];
        encode_counters(&mut encoder, &rows, &counters)?;
        type Gauge = fn(&Arc<ImportStats>) -> Option<f64>;
        let gauges: [(&str, &str, Gauge); 1] = [(
            "ferry_batch_import_last_pass_age_seconds",
            "Seconds since the last pass that did not fail (absent before the first).",
            |s| s.since_pass(),
        )];
        encode_gauges(&mut encoder, &rows, &gauges)
    }
}

#[derive(Debug)]
struct RelayCollector(Metrics);

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let rows: Vec<(ForwarderLabels, Relayed)> = self
            .0
            .relays
            .snapshot()
            .into_iter()
            .map(|(pipeline, shown)| ([("pipeline", pipeline)], shown))
            .collect();
        type Pick = fn(&Relayed) -> u64;
        let counters: [(&str, &str, Pick); 4] = [
            (
                "ferry_relay_delivered",
                "Messages the sink accepted.",
                |(s, _)| s.delivered(),
            ),
            (
                "ferry_relay_failed",
                "Failed attempts that will be retried.",
                |(s, _)| s.failed.load(Relaxed),
            ),
            (
                "ferry_relay_dead_lettered",
                "Messages dead-lettered.",
                |(s, _)| s.dead.load(Relaxed),
            ),
            ("ferry_relay_batches", "Batches settled.", |(s, _)| {
                s.batches.load(Relaxed)
            }),
        ];
        encode_counters(&mut encoder, &rows, &counters)?;
        type Gauge = fn(&Relayed) -> Option<i64>;
        let gauges: [(&str, &str, Gauge); 1] = [(
            "ferry_relay_backlog_messages",
            "Messages of the outbox waiting to be delivered, retries included (absent before the first read).",
            |(_, backlog)| backlog.get(),
        )];
        encode_gauges(&mut encoder, &rows, &gauges)
    }
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
}

/// Serves `/metrics` and `/health` on `listen` until `shutdown`. Binding
/// happens before this returns, so a port in use is an error at startup.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    serve_with(listen, metrics, axum::Router::new(), shutdown).await
}

/// [`serve`], with the routes of `more` (the events API, say) on the same
/// port.
pub async fn serve_with(
    listen: SocketAddr,
    metrics: Metrics,
    more: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let app = axum::Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(metrics)
        .merge(more);
    tracing::info!(%listen, "serving /metrics and /health");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the http server stopped");
        }
    }))
}

#[cfg(test)]
mod tests {
    //! The metric names `/metrics` renders, checked against the naming
    //! scheme, docs/metrics.md and the Grafana dashboard in docs/grafana.

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
    const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana/ferry.json");

    /// The label names the scheme allows, across all kinds.
    const LABELS: [&str; 9] = [
        "consumer",
        "topic",
        "group",
        "forwarder",
        "capture",
        "table",
        "job",
        "outcome",
        "pipeline",
    ];

    /// `/metrics` with one stats object of each kind registered.
    fn rendered() -> String {
        let metrics = Metrics::default();
        metrics.add_consumer("mail", Stats::default());
        metrics.add_forwarder("billing", Arc::default());
        let cdc = Arc::new(ShipStats::default());
        let table = ferry_cdc::TableId {
            schema: "public".to_owned(),
            name: "orders".to_owned(),
        };
        if let Ok(mut per_table) = cdc.per_table.lock() {
            per_table.insert(table, 1);
        }
        if let Ok(mut retained) = cdc.retained_wal_bytes.lock() {
            *retained = Some(1024);
        }
        metrics.add_cdc("shop", cdc);
        metrics.add_export("orders", Arc::default());
        metrics.add_import("orders", Arc::default());
        let backlog = Arc::new(Backlog::default());
        metrics.add_relay("outbox", Arc::default(), backlog.clone());
        let before = metrics.render();
        assert!(
            !before.contains("ferry_relay_backlog_messages{"),
            "the backlog is absent before the first read: {before}"
        );
        backlog.set(Some(3));
        metrics.render()
    }

    /// Every metric the text exposes, by the name a query uses (a counter's
    /// samples end in `_total`), with its type.
    fn exposed(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').expect("a # TYPE line has a type");
                let name = match kind {
                    "counter" => format!("{name}_total"),
                    _ => name.to_owned(),
                };
                (name, kind.to_owned())
            })
            .collect()
    }

    /// Every `ferry_…` name in `text`.
    fn ferry_names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("ferry_") {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
        names
    }

    /// Every `expr` string in a Grafana dashboard.
    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_name_follows_the_scheme() {
        let text = rendered();
        let exposed = exposed(&text);
        assert!(exposed.len() >= 30, "{text}");
        for (name, kind) in &exposed {
            assert!(name.starts_with("ferry_"), "{name}: no ferry_ prefix");
            match kind.as_str() {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "gauge" => assert!(!name.ends_with("_total"), "gauge {name} ends in _total"),
                other => panic!("{name}: type {other} is neither counter nor gauge"),
            }
            for bad in [
                "_milliseconds",
                "_ms",
                "_minutes",
                "_kb",
                "_mb",
                "_megabytes",
            ] {
                assert!(!name.contains(bad), "{name}: not in base units");
            }
            if name.contains("_seconds") || name.contains("_bytes") {
                assert!(
                    name.ends_with("_seconds")
                        || name.ends_with("_bytes")
                        || name.ends_with("_seconds_total")
                        || name.ends_with("_bytes_total"),
                    "{name}: the unit comes last"
                );
            }
        }
        let mut samples = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((_, labels)) = line.split_once('{') else {
                continue;
            };
            samples += 1;
            let labels = labels.split_once('}').map_or(labels, |(l, _)| l);
            for pair in labels.split(',') {
                let label = pair.split_once('=').map_or(pair, |(l, _)| l);
                assert!(LABELS.contains(&label), "{line}: label {label}");
            }
        }
        assert!(samples > 0, "{text}");
    }

    #[test]
    fn the_dashboard_queries_only_exposed_metrics_and_all_of_them() {
        let exposed = exposed(&rendered());
        let json = std::fs::read_to_string(DASHBOARD).expect("docs/grafana/ferry.json");
        let dashboard: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let mut queries = Vec::new();
        exprs(&dashboard, &mut queries);
        assert!(!queries.is_empty(), "the dashboard has no queries");
        let mut queried = BTreeSet::new();
        for query in &queries {
            let names = ferry_names(query);
            assert!(!names.is_empty(), "query `{query}` names no ferry_ metric");
            for name in names {
                assert!(
                    exposed.contains_key(&name),
                    "the dashboard queries `{name}` (in `{query}`), which Ferry does not expose"
                );
                queried.insert(name);
            }
        }
        let unqueried: Vec<_> = exposed.keys().filter(|n| !queried.contains(*n)).collect();
        assert!(unqueried.is_empty(), "no panel shows {unqueried:?}");
    }

    #[test]
    fn docs_list_every_exposed_metric_with_its_type_and_nothing_else() {
        let exposed = exposed(&rendered());
        let docs = std::fs::read_to_string(DOCS).expect("docs/metrics.md");
        // Table rows `| `name` | type | …` before the "Renamed" section,
        // the executor library's own metrics left aside.
        let current = docs.split("\n## Renamed").next().unwrap_or(&docs);
        let documented: BTreeMap<String, String> = current
            .lines()
            .filter_map(|l| {
                let mut cells = l.split('|').map(str::trim).skip(1);
                let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
                let kind = cells.next()?;
                Some((name.to_owned(), kind.to_owned()))
            })
            .filter(|(name, _)| name.starts_with("ferry_") && !name.starts_with("ferry_executor_"))
            .collect();
        for (name, kind) in &exposed {
            assert_eq!(
                documented.get(name),
                Some(kind),
                "docs/metrics.md has no table row `| `{name}` | {kind} | …`"
            );
        }
        for name in documented.keys() {
            assert!(
                exposed.contains_key(name),
                "docs/metrics.md lists `{name}`, which Ferry does not expose"
            );
        }
    }
}
