//! The admin API and console in the daemon: what `ferry run` tells
//! `ferry-admin` about itself (its stores, what it runs and how it fares,
//! where a dead letter goes when it is replayed), and `[[http.tokens]]`.
//!
//! The admin API and the console are served on the `[http]` port when at
//! least one `[[http.tokens]]` entry is configured; the events API's
//! `token` never opens them (a partner pulling events must not be able to
//! replay or discard anything).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_adapters::SinkConfig;
use ferry_admin::{
    ApiToken, Component, ComponentKind, ComponentState, NamedStore, Overview, ReplayError, Role,
};
use ferry_core::Sink;
use ferry_events::api::BearerToken;
use ferry_relay::{CancellationToken, PauseSwitch};
use ferry_store::event_store::StoredEvent;
use ferry_store::{ConnectOptions, DeadLetter};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::config::FerryConfig;
use crate::metrics::Metrics;

/// `[[http.tokens]]`: a named token for the admin API (`/v1/admin`) and
/// the console (`/ui`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Its name, written to the audit log with every change it makes,
    /// e.g. `"ops-alice"`; unique in the file.
    pub name: String,
    /// `"admin"` (see and change: replay, discard, pause) or
    /// `"read-only"` (see only).
    pub role: Role,
    /// The secret: visible ASCII, no spaces. Prefer `token_env`.
    #[serde(default)]
    pub token: Option<BearerToken>,
    /// The name of an environment variable that holds the secret (read at
    /// load); instead of `token`.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl TokenConfig {
    /// The token, from `token` or `token_env`; the error names the key.
    pub fn resolve(&self, index: usize) -> Result<ApiToken, String> {
        let key = format!("http.tokens[{index}]");
        let token = match (&self.token, &self.token_env) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "keys `{key}.token` and `{key}.token_env`: set one, not both"
                ))
            }
            (None, None) => {
                return Err(format!(
                    "key `{key}`: set `token` or `token_env` for `{}`",
                    self.name
                ))
            }
            (Some(token), None) => token.clone(),
            (None, Some(var)) => {
                let value = std::env::var(var).map_err(|_| {
                    format!("key `{key}.token_env`: the environment variable `{var}` is not set")
                })?;
                BearerToken::new(value)
                    .map_err(|e| format!("key `{key}.token_env`: `{var}`: {e}"))?
            }
        };
        if self.name.trim().is_empty() {
            return Err(format!("key `{key}.name`: must not be empty"));
        }
        Ok(ApiToken {
            name: self.name.clone(),
            role: self.role,
            token,
        })
    }
}

/// Every `[[http.tokens]]` entry resolved; the error names the key. Names
/// must be unique, and so must the secrets.
pub fn tokens(entries: &[TokenConfig]) -> Result<Vec<ApiToken>, String> {
    let tokens = entries
        .iter()
        .enumerate()
        .map(|(i, t)| t.resolve(i))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in tokens.iter().enumerate() {
        for b in &tokens[..i] {
            if a.name == b.name {
                return Err(format!(
                    "key `http.tokens[{i}].name`: `{}` is used twice",
                    a.name
                ));
            }
            if a.token.expose() == b.token.expose() {
                return Err(format!(
                    "key `http.tokens[{i}]`: the same secret as `{}`",
                    b.name
                ));
            }
        }
    }
    Ok(tokens)
}

/// How long after a relay or forwarder last found its sink unavailable it
/// is shown as "sink down".
const SINK_DOWN_FOR: Duration = Duration::from_secs(15);

/// A sink-unavailable count as last seen, and when it last grew.
type SinkSeen = (u64, Option<Instant>);

/// A store of the daemon: its name, URL and, once reached, its pool.
struct StoreSlot {
    name: String,
    url: String,
    db: Option<ferry_store::Database>,
}

/// The running daemon as the admin layer sees it.
pub struct DaemonView {
    metrics: Metrics,
    /// Every store by name with its URL, in the file's order; the
    /// database once connected.
    stores: Arc<Mutex<Vec<StoreSlot>>>,
    /// Relay name → its pause switch and store name.
    relays: HashMap<String, (PauseSwitch, String)>,
    /// Consumer name or group, forwarder name → the store it uses.
    stores_of: BTreeMap<(ComponentKind, String), String>,
    /// Consumer name or group → its `to` sink; forwarder name → its sink.
    replay_to: BTreeMap<(ComponentKind, String), SinkConfig>,
    sinks: tokio::sync::Mutex<BTreeMap<(ComponentKind, String), Arc<dyn Sink>>>,
    /// Per relay or forwarder: the sink-unavailable count last seen, and
    /// when it last grew.
    sink_down: Mutex<BTreeMap<(ComponentKind, String), SinkSeen>>,
}

impl DaemonView {
    /// The view of the daemon that `config` describes. `pauses` holds the
    /// pause switch of each `[[pipeline]]`, by name.
    pub fn new(
        config: &FerryConfig,
        metrics: Metrics,
        pauses: HashMap<String, PauseSwitch>,
    ) -> Self {
        let mut urls: Vec<(String, String)> = Vec::new(); // (url, store name)
        let mut store_of = |url: &str, name: &str| -> String {
            if let Some((_, n)) = urls.iter().find(|(u, _)| u == url) {
                return n.clone();
            }
            let mut store = name.to_owned();
            while urls.iter().any(|(_, n)| *n == store) {
                store.push('_');
            }
            urls.push((url.to_owned(), store.clone()));
            store
        };
        let mut relays = HashMap::new();
        for p in &config.pipelines {
            let name = p.name.get_ref();
            let store = store_of(&p.database, name);
            let switch = pauses.get(name).cloned().unwrap_or_default();
            relays.insert(name.clone(), (switch, store));
        }
        let (mut stores_of, mut replay_to) = (BTreeMap::new(), BTreeMap::new());
        for c in &config.consumers {
            let consumer = crate::consume::Consumer::from(c);
            let store = store_of(&consumer.database, &consumer.name);
            for who in [&consumer.name, &consumer.group] {
                let key = (ComponentKind::Consumer, who.clone());
                stores_of.insert(key.clone(), store.clone());
                replay_to.insert(key, consumer.to.clone());
            }
        }
        for f in &config.forwarders {
            let name = f.name.get_ref();
            let store = store_of(&f.database, name);
            let key = (ComponentKind::Forwarder, name.clone());
            stores_of.insert(key.clone(), store);
            replay_to.insert(key, f.sink.clone());
        }
        if let Some(events) = &config.events_api {
            store_of(&events.database, "events");
        }
        let stores = urls
            .into_iter()
            .map(|(url, name)| StoreSlot {
                name,
                url,
                db: None,
            })
            .collect();
        Self {
            metrics,
            stores: Arc::new(Mutex::new(stores)),
            relays,
            stores_of,
            replay_to,
            sinks: Default::default(),
            sink_down: Default::default(),
        }
    }

    /// Connects to each store in the background (retrying while one is
    /// unreachable, logged once per state change); a store is listed once
    /// reached. The pools are small: the admin API's queries only.
    pub fn connect_stores(&self, shutdown: &CancellationToken) {
        let slots = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        for (i, slot) in slots.iter().enumerate() {
            let (url, name, stores, shutdown) = (
                slot.url.clone(),
                slot.name.clone(),
                self.stores.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                let options = ConnectOptions {
                    max_connections: 4,
                    lease: None,
                };
                let connected = crate::startup::connect_retrying(
                    &url,
                    &options,
                    &format!("admin store `{name}`"),
                    &name,
                    &ferry_relay::SinkBackoff::default(),
                    &shutdown,
                )
                .await;
                match connected {
                    Ok(Some(db)) => {
                        stores.lock().unwrap_or_else(|e| e.into_inner())[i].db = Some(db);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(store = %name, error = format!("{e:#}"),
                            "the admin api cannot use this store");
                    }
                }
            });
        }
    }

    fn store_of(&self, kind: ComponentKind, name: &str) -> Option<String> {
        match kind {
            ComponentKind::Relay => self.relays.get(name).map(|(_, s)| s.clone()),
            _ => self.stores_of.get(&(kind, name.to_owned())).cloned(),
        }
    }

    /// Whether the sink of `kind` `name` was found unavailable lately,
    /// given its count of such calls now.
    fn sink_down(&self, kind: ComponentKind, name: &str, unavailable: u64) -> bool {
        let mut seen = self.sink_down.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen
            .entry((kind, name.to_owned()))
            .or_insert((unavailable, None));
        if unavailable > entry.0 {
            *entry = (unavailable, Some(Instant::now()));
        }
        entry.1.is_some_and(|at| at.elapsed() < SINK_DOWN_FOR)
    }

    async fn sink(&self, kind: ComponentKind, owner: &str) -> Result<Arc<dyn Sink>, ReplayError> {
        let key = (kind, owner.to_owned());
        let mut sinks = self.sinks.lock().await;
        if let Some(sink) = sinks.get(&key) {
            return Ok(sink.clone());
        }
        let config = self
            .replay_to
            .get(&key)
            .ok_or_else(|| ReplayError::UnknownOwner(owner.to_owned()))?;
        let sink: Arc<dyn Sink> = config
            .build()
            .await
            .map_err(|e| ReplayError::Failed(Box::new(e)))?;
        sinks.insert(key, sink.clone());
        Ok(sink)
    }

    async fn send(
        &self,
        kind: ComponentKind,
        owner: &str,
        message: ferry_core::Message,
    ) -> Result<(), ReplayError> {
        let sink = self.sink(kind, owner).await?;
        let delivered = sink.deliver(std::slice::from_ref(&message)).await;
        match delivered.into_iter().next() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ReplayError::Failed(
                format!("{} refused it: {}", sink.name(), e.describe()).into(),
            )),
            None => Err(ReplayError::Failed(
                format!("{} returned no result", sink.name()).into(),
            )),
        }
    }

    fn component(
        &self,
        kind: ComponentKind,
        name: &str,
        state: ComponentState,
        (done_total, failed_total): (u64, u64),
        (backlog, lag): (Option<i64>, Option<i64>),
        detail: BTreeMap<String, serde_json::Value>,
    ) -> Component {
        Component {
            kind,
            name: name.to_owned(),
            state,
            store: self.store_of(kind, name),
            done_total,
            failed_total,
            backlog,
            lag,
            detail,
        }
    }
}

/// `detail` entries from `(key, value)` pairs, leaving out `None`s.
fn detail<const N: usize>(
    pairs: [(&str, Option<serde_json::Value>); N],
) -> BTreeMap<String, serde_json::Value> {
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
        .collect()
}

impl ferry_admin::Daemon for DaemonView {
    fn overview(&self) -> Overview {
        let mut components = Vec::new();
        for (name, stats, backlog) in self.metrics.relays() {
            let unavailable = stats.sink_unavailable.load(Relaxed);
            let paused = self.relays.get(&name).is_some_and(|(s, _)| s.is_paused());
            let state = if paused {
                ComponentState::Paused
            } else if self.sink_down(ComponentKind::Relay, &name, unavailable) {
                ComponentState::SinkDown
            } else {
                ComponentState::Running
            };
            components.push(self.component(
                ComponentKind::Relay,
                &name,
                state,
                (stats.delivered(), stats.failed.load(Relaxed)),
                (backlog.get(), None),
                detail([
                    ("dead_lettered_total", Some(stats.dead.load(Relaxed).into())),
                    ("sink_unavailable_total", Some(unavailable.into())),
                ]),
            ));
        }
        for (name, stats) in self.metrics.consumers() {
            for s in stats.snapshot() {
                let state = if s.subscribed {
                    ComponentState::Running
                } else {
                    ComponentState::SinkDown
                };
                let waiting = s.lag.and_then(|l| l.waiting).map(|n| n as i64);
                let mut c = self.component(
                    ComponentKind::Consumer,
                    &name,
                    state,
                    (s.handled, s.failed),
                    (waiting, s.lag.and_then(|l| l.in_flight).map(|n| n as i64)),
                    detail([
                        ("topic", Some(s.topic.clone().into())),
                        ("group", Some(s.group.clone().into())),
                        ("dead_lettered_total", Some(s.dead_lettered.into())),
                        ("in_flight", Some(s.in_flight.into())),
                        (
                            "oldest_age_seconds",
                            s.lag
                                .and_then(|l| l.oldest_age)
                                .map(|d| d.as_secs_f64().into()),
                        ),
                    ]),
                );
                c.name = format!("{name}/{}", s.topic);
                c.store = self.store_of(ComponentKind::Consumer, &name);
                components.push(c);
            }
        }
        for (name, s) in self.metrics.forwarders() {
            let unavailable = s.sink_unavailable.load(Relaxed);
            let state = if self.sink_down(ComponentKind::Forwarder, &name, unavailable) {
                ComponentState::SinkDown
            } else {
                ComponentState::Running
            };
            components.push(self.component(
                ComponentKind::Forwarder,
                &name,
                state,
                (s.delivered(), s.failed()),
                (Some(s.lag()), Some(s.lag())),
                detail([
                    ("offset", Some(s.offset().into())),
                    ("skipped_total", Some(s.skipped().into())),
                ]),
            ));
        }
        for (name, s) in self.metrics.cdcs() {
            let retained = *s
                .retained_wal_bytes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            components.push(
                self.component(
                    ComponentKind::Capture,
                    &name,
                    ComponentState::Running,
                    (s.delivered.load(Relaxed), s.failed.load(Relaxed)),
                    (
                        Some(
                            s.read
                                .load(Relaxed)
                                .saturating_sub(s.delivered.load(Relaxed))
                                as i64,
                        ),
                        s.lag_seconds().map(|l| l.round() as i64),
                    ),
                    detail([
                        ("retained_wal_bytes", retained.map(Into::into)),
                        ("dead_lettered_total", Some(s.dead.load(Relaxed).into())),
                        ("lag_seconds", s.lag_seconds().map(Into::into)),
                    ]),
                ),
            );
        }
        for (name, s) in self.metrics.exports() {
            let (succeeded, failed) = (s.succeeded.load(Relaxed), s.failed.load(Relaxed));
            let last = s.last_window();
            let state = match &last {
                Some((_, ferry_batch::export::RunStatus::Failed)) => ComponentState::Failed,
                _ => ComponentState::Running,
            };
            components.push(self.component(
                ComponentKind::Export,
                &name,
                state,
                (s.rows.load(Relaxed), failed),
                (None, None),
                detail([
                    ("runs_succeeded_total", Some(succeeded.into())),
                    ("last_window", last.as_ref().map(|(w, _)| w.clone().into())),
                    (
                        "last_run",
                        last.as_ref().map(|(_, status)| {
                            match status {
                                ferry_batch::export::RunStatus::Succeeded => "succeeded",
                                ferry_batch::export::RunStatus::Failed => "failed",
                                ferry_batch::export::RunStatus::Running => "running",
                            }
                            .into()
                        }),
                    ),
                    ("bytes_total", Some(s.bytes.load(Relaxed).into())),
                    (
                        "last_success_age_seconds",
                        s.since_success().map(Into::into),
                    ),
                    (
                        "last_run_duration_seconds",
                        s.last_duration().map(Into::into),
                    ),
                ]),
            ));
        }
        for (name, s) in self.metrics.imports() {
            components.push(self.component(
                ComponentKind::Import,
                &name,
                ComponentState::Running,
                (s.rows.load(Relaxed), s.refused.load(Relaxed)),
                (None, None),
                detail([
                    (
                        "batches_imported_total",
                        Some(s.imported.load(Relaxed).into()),
                    ),
                    (
                        "batches_skipped_total",
                        Some(s.skipped.load(Relaxed).into()),
                    ),
                    (
                        "batches_refused_total",
                        Some(s.refused.load(Relaxed).into()),
                    ),
                    ("last_pass_age_seconds", s.since_pass().map(Into::into)),
                ]),
            ));
        }
        components.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Overview { components }
    }

    fn stores(&self) -> Vec<NamedStore> {
        let slots = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter_map(|s| {
                s.db.as_ref().map(|db| NamedStore {
                    name: s.name.clone(),
                    db: db.clone(),
                })
            })
            .collect()
    }

    fn republish<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move {
            // The daemon's consumers hand each message to their `to` sink: a
            // replay hands it there again, with the same message id, so the
            // receiver drops it if the first hand-over did arrive after all.
            self.send(
                ComponentKind::Consumer,
                &letter.consumer,
                letter.message.clone(),
            )
            .await
        })
    }

    fn redeliver_event<'a>(
        &'a self,
        reader: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move {
            let message = ferry_events::forwarder::event_message(event);
            self.send(ComponentKind::Forwarder, reader, message).await
        })
    }
}

/// How long a bulk job may take to stop at shutdown ([`ferry_admin::Admin::finish_jobs`]).
pub const BULK_JOB_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The admin API's and console's routes for `ferry run` and the admin
/// layer behind them (to stop its bulk jobs at shutdown), or `None` when
/// `[http]` has no `[[http.tokens]]`. Stores are reached in the background,
/// so an unreachable database does not hold the daemon's start up.
pub fn router(
    config: &FerryConfig,
    http: &crate::metrics::HttpConfig,
    metrics: Metrics,
    pauses: HashMap<String, PauseSwitch>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(axum::Router, ferry_admin::Admin)>> {
    let tokens = tokens(&http.tokens).map_err(anyhow::Error::msg)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let view = DaemonView::new(config, metrics, pauses);
    view.connect_stores(shutdown);
    let admin = ferry_admin::Admin::new(
        Arc::new(view),
        ferry_admin::AdminConfig::with_tokens(tokens),
    );
    drop(admin.spawn_sampler(shutdown.clone()));
    tracing::info!(listen = %http.listen, "serving the admin api on /v1/admin and the console on /ui");
    Ok(Some((ferry_admin::router(admin.clone()), admin)))
}

/// `ferry serve`'s view: one event store, nothing running beside the
/// events API, so nothing to replay a consumer's or forwarder's dead
/// letter to (outbox dead letters are replayed in the store itself).
pub struct StoreView(NamedStore);

impl StoreView {
    /// The view of `db`, shown as store `events`.
    pub fn new(db: ferry_store::Database) -> Self {
        Self(NamedStore {
            name: "events".to_owned(),
            db,
        })
    }
}

impl ferry_admin::Daemon for StoreView {
    fn overview(&self) -> Overview {
        Overview::default()
    }

    fn stores(&self) -> Vec<NamedStore> {
        vec![self.0.clone()]
    }

    fn republish<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move { Err(ReplayError::UnknownOwner(letter.consumer.clone())) })
    }

    fn redeliver_event<'a>(
        &'a self,
        reader: &'a str,
        _event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move { Err(ReplayError::UnknownOwner(reader.to_owned())) })
    }
}

/// `ferry serve`'s admin tokens: `--admin-token` and `--read-only-token`,
/// named `admin` and `read-only` in the audit log.
pub fn serve_tokens(
    admin: Option<String>,
    read_only: Option<String>,
) -> anyhow::Result<Vec<ApiToken>> {
    let mut tokens = Vec::new();
    for (flag, role, name, secret) in [
        (
            "--admin-token (or FERRY_ADMIN_TOKEN)",
            Role::Admin,
            "admin",
            admin,
        ),
        (
            "--read-only-token (or FERRY_READ_ONLY_TOKEN)",
            Role::ReadOnly,
            "read-only",
            read_only,
        ),
    ] {
        if let Some(secret) = secret {
            let token = BearerToken::new(secret).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
            tokens.push(ApiToken {
                name: name.to_owned(),
                role,
                token,
            });
        }
    }
    if let [a, b] = &tokens[..] {
        if a.token.expose() == b.token.expose() {
            anyhow::bail!("--admin-token and --read-only-token must differ");
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: Role, token: Option<&str>, env: Option<&str>) -> TokenConfig {
        TokenConfig {
            name: name.to_owned(),
            role,
            token: token.map(|t| BearerToken::new(t).unwrap()),
            token_env: env.map(str::to_owned),
        }
    }

    #[test]
    fn tokens_are_resolved_and_checked_naming_the_key() {
        let ok = tokens(&[
            entry("alice", Role::Admin, Some("admin-secret"), None),
            entry("grafana", Role::ReadOnly, Some("viewer-secret"), None),
        ])
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            (ok[1].name.as_str(), ok[1].role),
            ("grafana", Role::ReadOnly)
        );

        let e = tokens(&[entry("alice", Role::Admin, None, None)]).unwrap_err();
        assert!(
            e.contains("http.tokens[0]") && e.contains("token_env"),
            "{e}"
        );
        let e = tokens(&[entry("a", Role::Admin, Some("x1"), Some("FERRY_X"))]).unwrap_err();
        assert!(e.contains("set one, not both"), "{e}");
        let e = tokens(&[entry(
            "a",
            Role::Admin,
            None,
            Some("FERRY_NO_SUCH_VARIABLE_42"),
        )])
        .unwrap_err();
        assert!(
            e.contains("FERRY_NO_SUCH_VARIABLE_42") && e.contains("not set"),
            "{e}"
        );
        let e = tokens(&[
            entry("a", Role::Admin, Some("s1"), None),
            entry("a", Role::ReadOnly, Some("s2"), None),
        ])
        .unwrap_err();
        assert!(
            e.contains("http.tokens[1].name") && e.contains("twice"),
            "{e}"
        );
        let e = tokens(&[
            entry("a", Role::Admin, Some("same"), None),
            entry("b", Role::ReadOnly, Some("same"), None),
        ])
        .unwrap_err();
        assert!(
            e.contains("http.tokens[1]") && e.contains("same secret"),
            "{e}"
        );
    }

    #[test]
    fn a_config_file_names_its_tokens_and_refuses_a_bad_role() {
        let base = r#"
            [[pipeline]]
            name = "orders"
            database = "sqlite://orders.db"

            [pipeline.sink]
            type = "http"
            url = "http://127.0.0.1:9/hook"

            [http]
            listen = "127.0.0.1:9464"
        "#;
        let good = format!(
            "{base}\n[[http.tokens]]\nname = \"alice\"\nrole = \"admin\"\ntoken = \"s3cret\"\n\
             [[http.tokens]]\nname = \"viewer\"\nrole = \"read-only\"\ntoken = \"v1ew\"\n"
        );
        let config = FerryConfig::parse(&good).unwrap();
        let http = config.http.unwrap();
        assert_eq!(tokens(&http.tokens).unwrap().len(), 2);
        let bad =
            format!("{base}\n[[http.tokens]]\nname = \"alice\"\nrole = \"root\"\ntoken = \"s\"\n");
        let e = FerryConfig::parse(&bad).unwrap_err();
        assert!(e.contains("root") && e.contains("line"), "{e}");
    }
}
