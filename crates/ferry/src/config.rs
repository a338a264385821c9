//! The daemon's configuration file (`ferry run --config ferry.toml`).
//!
//! Every field's doc comment is its user documentation; docs/config.md
//! shows a complete file. Unknown keys, wrong types and missing values are
//! errors that name the key and its line.

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_relay::{OrderPolicy, RelayConfig, Retention, SinkBackoff};
use ferry_sinks::SinkConfig;
use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FerryConfig {
    /// One `[[pipeline]]` table per relay: an outbox, a sink, and how to
    /// get messages from one to the other.
    #[serde(rename = "pipeline", default)]
    pub pipelines: Vec<PipelineConfig>,
    /// One `[[consumer]]` table per consumer: a broker, the topics to take
    /// from it, and the sink each message is handed to.
    #[serde(rename = "consumer", default)]
    pub consumers: Vec<crate::consume::ConsumerConfig>,
    /// The daemon's HTTP port (`/metrics`, `/health`); none when omitted.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// `[events_api]`: the event store's HTTP offset API (`GET /v1/events`),
    /// served on the `[http]` port; none when omitted.
    #[serde(default)]
    pub events_api: Option<EventsApiConfig>,
    /// One `[[forwarder]]` table per forwarder: an event store, and the
    /// sink its events go to, in order.
    #[serde(rename = "forwarder", default)]
    pub forwarders: Vec<crate::forward::ForwarderFileConfig>,
}

/// `[http]`: where the daemon serves `/metrics` and `/health`.
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

/// `[events_api]`: the HTTP offset API over one event store, served on the
/// `[http]` port (docs/events-api.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsApiConfig {
    /// The event store's database: `postgres://…`, `mysql://…` (MariaDB)
    /// or `sqlite://path/to/file.db`.
    pub database: String,
    /// Apply Ferry's migrations at startup (default `false`).
    #[serde(default)]
    pub migrate: bool,
    /// The largest `limit` a request may ask for (default 1000, at most
    /// 10000).
    #[serde(default = "default_max_limit")]
    pub max_limit: u32,
    /// The longest `wait` (long poll) a request may ask for (default
    /// `"30s"`).
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

fn default_max_limit() -> u32 {
    ferry_events::api::DEFAULT_MAX_LIMIT
}
fn default_max_wait() -> Duration {
    ferry_events::api::DEFAULT_MAX_WAIT
}

impl EventsApiConfig {
    /// How the API is served, with `http`'s token.
    pub fn api_config(&self, http: &HttpConfig) -> Result<ferry_events::api::ApiConfig, String> {
        let api = ferry_events::api::ApiConfig {
            token: http.token()?,
            max_limit: self.max_limit,
            max_wait: self.max_wait,
            ..Default::default()
        };
        api.validate()
            .map_err(|e| format!("key `events_api.max_limit`: {e}"))?;
        if let Err(e) = api.check_listen(http.listen) {
            return Err(format!(
                "key `http.token`: {e} (set `token` or `token_env` in [http])"
            ));
        }
        Ok(api)
    }
}

/// A relay from one outbox to one sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name in logs; unique in the file.
    pub name: toml::Spanned<String>,
    /// The outbox's database: `postgres://user@host:port/db`,
    /// `mysql://user@host:port/db` (MariaDB 10.10 or newer) or
    /// `sqlite://path/to/file.db`.
    pub database: String,
    /// Apply Ferry's migrations at startup (default `false`: run
    /// `ferry migrate` yourself).
    #[serde(default)]
    pub migrate: bool,
    /// Only deliver these topics (default: all). Pipelines on one database
    /// compete for its messages, so each must list its topics, with no topic
    /// in common (checked at load).
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    /// `"ordered"` (default): a failing message holds back the later
    /// messages of its key until it is delivered or dead. `"unordered"`:
    /// they go ahead while it waits for its retry.
    #[serde(default)]
    pub order: OrderPolicy,
    /// Most messages claimed and sent per batch (default 1000).
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroU32,
    /// Batches in flight at once (default 1; SQLite always uses 1). Raise it
    /// for a slow sink or an unkeyed stream; with ordering keys, batches in
    /// flight hold back each other's keys.
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroU32,
    /// Longest wait between two looks at the outbox when no wake-up arrives
    /// (default `"500ms"`). PostgreSQL wakes the relay by NOTIFY at once; the
    /// poll covers poolers that drop notifications.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claimed batch may stay unsettled (default `"60s"`; at
    /// most 2147483647ms, about 24.8 days). On PostgreSQL the server then
    /// ends the relay's session and frees the messages for another relay. A
    /// batch gets half of it to be delivered, so half of it must exceed the
    /// sink's longest call ([`SinkConfig::longest_call`]: HTTP 4 x `timeout`,
    /// NATS `ack_timeout`), checked at load; otherwise a call still running
    /// is cut short and requests that succeeded count as failed.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How long delivered messages are kept (status `delivered`), e.g.
    /// `"7d"`; `"0s"` (default) deletes them on delivery.
    #[serde(default, with = "humantime_serde")]
    pub retention: Duration,
    /// After SIGINT/SIGTERM, how long batches in flight may finish before
    /// they are abandoned (and later delivered again). Default `"10s"`.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Retries of a failing message; see `[pipeline.retry]`.
    #[serde(default, deserialize_with = "valid_retry")]
    pub retry: RetryPolicy,
    /// Pause while the sink as a whole is unreachable: `initial` (default
    /// `"100ms"`) doubling up to `max` (default `"30s"`).
    #[serde(default)]
    pub sink_backoff: SinkBackoff,
    /// Where messages go: `type = "http"`, `"nats"` or `"null"` and that
    /// sink's settings.
    #[serde(deserialize_with = "valid_sink")]
    pub sink: SinkConfig,
}

// Defaults come from the relay's own, so that the file, `ferry relay` and
// the library agree.
fn default_batch_size() -> NonZeroU32 {
    NonZeroU32::new(RelayConfig::default().batch_size).unwrap_or(NonZeroU32::MIN)
}
fn default_concurrency() -> NonZeroU32 {
    NonZeroU32::new(RelayConfig::default().concurrency as u32).unwrap_or(NonZeroU32::MIN)
}
fn default_poll() -> Duration {
    RelayConfig::default().poll_interval
}
fn default_lease() -> Duration {
    RelayConfig::default().lease
}
fn default_grace() -> Duration {
    RelayConfig::default().shutdown_grace
}

fn valid_retry<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
    let retry = RetryPolicy::deserialize(d)?;
    retry.validate().map_err(serde::de::Error::custom)?;
    Ok(retry)
}

pub(crate) fn valid_sink<'de, D: Deserializer<'de>>(d: D) -> Result<SinkConfig, D::Error> {
    let sink = SinkConfig::deserialize(d)?;
    sink.validate()
        .map_err(|e| serde::de::Error::custom(error_chain(&e)))?;
    Ok(sink)
}

pub(crate) use ferry_core::error_chain;

/// PostgreSQL's `idle_in_transaction_session_timeout` is an int of
/// milliseconds; the lease is set there.
const MAX_LEASE: Duration = Duration::from_millis(i32::MAX as u64);

impl PipelineConfig {
    /// Durations that would spin, stall or overflow.
    fn check_durations(&self) -> Result<(), String> {
        let ms = Duration::from_millis;
        if self.poll_interval < ms(1) {
            return Err("key `poll_interval` must be at least 1ms".to_owned());
        }
        if self.lease < Duration::from_secs(1) {
            return Err("key `lease` must be at least 1s".to_owned());
        }
        if self.lease > MAX_LEASE {
            return Err(format!(
                "key `lease` must be at most {} ({}ms, PostgreSQL's largest \
                 idle_in_transaction_session_timeout)",
                humantime::format_duration(MAX_LEASE),
                MAX_LEASE.as_millis()
            ));
        }
        let (budget, longest) = (self.lease / 2, self.sink.longest_call());
        if budget <= longest {
            return Err(format!(
                "key `lease`: a batch gets half of it ({}) to be delivered, which must exceed \
                 the longest call to the {} sink ({}); raise `lease` or lower the sink's timeout",
                humantime::format_duration(budget),
                self.sink.kind(),
                humantime::format_duration(longest)
            ));
        }
        if self.sink_backoff.initial < ms(1) || self.sink_backoff.initial > self.sink_backoff.max {
            return Err(
                "key `sink_backoff`: `initial` must be at least 1ms and at most `max`".to_owned(),
            );
        }
        if self.retention > Duration::from_secs(100 * 365 * 86_400) {
            return Err("key `retention` must be at most 100 years".to_owned());
        }
        Ok(())
    }

    /// What delivered messages become.
    pub fn retention(&self) -> Retention {
        Retention::from_duration(self.retention)
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema; the message names
    /// the key, the line and the column.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, and where.
        message: String,
    },
}

impl FerryConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: FerryConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        if config.pipelines.is_empty()
            && config.consumers.is_empty()
            && config.events_api.is_none()
            && config.forwarders.is_empty()
        {
            return Err(
                "no [[pipeline]], [[consumer]] or [[forwarder]] defined: nothing to run".to_owned(),
            );
        }
        let mut consumers = std::collections::HashMap::new();
        for c in &config.consumers {
            let line = line_of(text, c.name.span().start);
            let name = c.name.get_ref();
            if let Some(first) = consumers.insert(name.clone(), line) {
                return Err(format!(
                    "line {line}: key `consumer.name`: consumer `{name}` is defined twice (first at line {first})"
                ));
            }
            if c.topics.is_empty() {
                return Err(format!(
                    "line {line}: consumer `{name}`: key `topics` must list at least one topic"
                ));
            }
            if let Err(e) = ferry_store::DatabaseKind::of(&c.database) {
                return Err(format!(
                    "line {line}: consumer `{name}`: key `database`: {}",
                    error_chain(&e)
                ));
            }
        }
        let mut seen = std::collections::HashMap::new();
        for p in &config.pipelines {
            let line = line_of(text, p.name.span().start);
            if let Some(first) = seen.insert(p.name.get_ref().clone(), line) {
                return Err(format!(
                    "line {line}: key `pipeline.name`: pipeline `{}` is defined twice (first at line {first})",
                    p.name.get_ref()
                ));
            }
            let name = p.name.get_ref();
            if p.topics.as_ref().is_some_and(|t| t.is_empty()) {
                return Err(format!(
                    "line {line}: pipeline `{name}`: key `topics` is empty; leave it out to deliver every topic"
                ));
            }
            if let Err(problem) = p.check_durations() {
                return Err(format!("line {line}: pipeline `{name}`: {problem}"));
            }
            if let Err(e) = ferry_store::DatabaseKind::of(&p.database) {
                return Err(format!(
                    "line {line}: pipeline `{name}`: key `database`: {}",
                    error_chain(&e)
                ));
            }
        }
        // Pipelines on one outbox compete for its messages: each would get
        // an arbitrary share. They must split the topics between them.
        let outboxes: Vec<String> = config
            .pipelines
            .iter()
            .map(|p| same_outbox_key(&p.database))
            .collect();
        for (i, a) in config.pipelines.iter().enumerate() {
            for (j, b) in config.pipelines.iter().enumerate().skip(i + 1) {
                if outboxes[i] != outboxes[j] {
                    continue;
                }
                let (x, y) = (a.name.get_ref(), b.name.get_ref());
                let line = line_of(text, b.name.span().start);
                match (&a.topics, &b.topics) {
                    (Some(ta), Some(tb)) => {
                        if let Some(t) = ta.iter().find(|t| tb.contains(t)) {
                            return Err(format!(
                                "line {line}: pipelines `{x}` and `{y}` share a database and both take topic `{t}`: \
                                 each would receive only some of its messages; give each topic to one pipeline"
                            ));
                        }
                    }
                    _ => {
                        return Err(format!(
                            "line {line}: pipelines `{x}` and `{y}` share a database: each would receive only some of \
                             its messages; give both a `topics` list, without a topic in common"
                        ))
                    }
                }
            }
        }
        config.check_http()?;
        crate::forward::check(text, &config.forwarders)?;
        Ok(config)
    }

    /// `[http]`'s token, and `[events_api]` with what it needs.
    fn check_http(&self) -> Result<(), String> {
        let Some(http) = &self.http else {
            if self.events_api.is_some() {
                return Err("[events_api] is served on the daemon's HTTP port: \
                            add [http] with `listen`"
                    .to_owned());
            }
            return Ok(());
        };
        http.token()?;
        if let Some(api) = &self.events_api {
            if let Err(e) = ferry_store::DatabaseKind::of(&api.database) {
                return Err(format!("key `events_api.database`: {}", error_chain(&e)));
            }
            api.api_config(http)?;
        }
        Ok(())
    }
}

/// What makes two database URLs the same outbox, whatever their spelling.
/// SQLite: the file's canonical path, without the query (`?mode=rwc`).
/// PostgreSQL: host, port and database name, without credentials or query.
/// Anything else: the URL as written.
fn same_outbox_key(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    if let Some(path) = without_query.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() || path.starts_with(':') {
            // `sqlite::memory:` and the like: private to each connection.
            return url.to_owned();
        }
        return format!("sqlite:{}", canonical_path(Path::new(path)).display());
    }
    let rest = without_query
        .strip_prefix("postgres://")
        .or_else(|| without_query.strip_prefix("postgresql://"));
    let Some(rest) = rest else {
        return url.to_owned();
    };
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host_port) = match authority.rsplit_once('@') {
        Some((credentials, host_port)) => (credentials.split(':').next().unwrap_or(""), host_port),
        None => ("", authority),
    };
    // `[::1]:5432`, `host:5432` or `host`.
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port),
        _ => (host_port, ""),
    };
    let host = if host.is_empty() { "localhost" } else { host };
    let port = if port.is_empty() { "5432" } else { port };
    // PostgreSQL's default database is the user's name.
    let database = if database.is_empty() { user } else { database };
    format!("postgres://{}:{port}/{database}", host.to_ascii_lowercase())
}

/// `path` made absolute with `.` and `..` resolved and symbolic links
/// followed as far as the path exists (the file may not exist yet).
fn canonical_path(path: &Path) -> std::path::PathBuf {
    if let Ok(path) = std::fs::canonicalize(path) {
        return path;
    }
    let absolute = std::env::current_dir().unwrap_or_default().join(path);
    let mut out = std::path::PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    match (out.parent(), out.file_name()) {
        (Some(dir), Some(file)) => std::fs::canonicalize(dir)
            .map(|dir| dir.join(file))
            .unwrap_or(out),
        _ => out,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[pipeline]]
name = "coupons"
database = "sqlite://ferry.db"
topics = ["user.signed_up"]
order = "unordered"
batch_size = 100
retention = "7d"

[pipeline.retry]
max_attempts = 5
initial_backoff = "1s"

[pipeline.sink]
type = "http"
url = "http://127.0.0.1:8080/hooks"
timeout = "5s"

[[pipeline]]
name = "events"
database = "postgres://postgres@127.0.0.1/app"
[pipeline.sink]
type = "nats"
url = "nats://127.0.0.1:4222"
"#;

    #[test]
    fn a_full_file_parses_with_defaults() {
        let c = FerryConfig::parse(GOOD).unwrap();
        assert_eq!(c.pipelines.len(), 2);
        let p = &c.pipelines[0];
        assert_eq!(p.order, OrderPolicy::Unordered);
        assert_eq!(p.batch_size.get(), 100);
        assert_eq!(p.retry.max_attempts, 5);
        assert_eq!(p.retry.max_backoff, RetryPolicy::default().max_backoff);
        assert_eq!(
            p.retention(),
            Retention::Keep(Duration::from_secs(7 * 86400))
        );
        let q = &c.pipelines[1];
        assert_eq!(q.order, OrderPolicy::Ordered);
        assert_eq!(q.concurrency.get(), 1);
        assert_eq!(q.retention(), Retention::Delete);
    }

    fn err(text: &str) -> String {
        FerryConfig::parse(text).unwrap_err()
    }

    /// Each change to GOOD, and what the error must say (its line first).
    #[test]
    fn bad_values_name_key_and_line() {
        for (from, to, says) in [
            (
                "batch_size = 100",
                "bach_size = 100",
                &["line 7", "bach_size"][..],
            ),
            (
                "batch_size = 100",
                "batch_size = \"lots\"",
                &["line 7", "batch_size"],
            ),
            ("batch_size = 100", "batch_size = 0", &["line 7", "nonzero"]),
            (
                "retention = \"7d\"",
                "retention = \"soon\"",
                &["line 8", "retention"],
            ),
            (
                "order = \"unordered\"",
                "order = \"random\"",
                &["line 6", "random"],
            ),
            (
                "database = \"sqlite://ferry.db\"\n",
                "",
                &["missing field `database`"],
            ),
            (
                "max_attempts = 5",
                "max_attempts = 0",
                &["line 10", "max_attempts must be at least 1"],
            ),
            (
                "type = \"http\"",
                "type = \"carrier-pigeon\"",
                &["line 15", "carrier-pigeon"],
            ),
            (
                "timeout = \"5s\"",
                "timeout = \"5s\"\nretries = 3",
                &["line 14", "retries"],
            ),
            (
                "topics = [\"user.signed_up\"]",
                "topics = []",
                &["line 3:", "pipeline `coupons`", "`topics` is empty"],
            ),
            (
                "sqlite://ferry.db",
                "mongodb://x",
                &["line 3:", "pipeline `coupons`", "key `database`"],
            ),
            (
                "batch_size = 100",
                "batch_size = 100\nlease = \"10ms\"",
                &[
                    "line 3:",
                    "pipeline `coupons`",
                    "`lease` must be at least 1s",
                ],
            ),
        ] {
            let changed = GOOD.replacen(from, to, 1);
            assert_ne!(changed, GOOD, "{from}");
            let e = err(&changed);
            for said in says {
                assert!(e.contains(said), "{to}: {e} lacks {said}");
            }
            if says[0].ends_with(':') {
                assert!(e.starts_with(says[0]), "{e}");
            }
        }
    }

    #[test]
    fn duplicate_names_and_empty_files_are_rejected() {
        let e = err(&GOOD.replace("name = \"events\"", "name = \"coupons\""));
        assert!(e.contains("defined twice") && e.contains("line 20"), "{e}");
        assert!(err("").contains("no [[pipeline]]"));
        assert!(err("[[pipeline]\n").contains("line 1"));
    }

    #[test]
    fn durations_that_would_spin_or_overflow_are_refused() {
        for (from, to, says) in [
            (
                "batch_size = 100",
                "batch_size = 100\npoll_interval = \"0s\"",
                "poll_interval",
            ),
            (
                "batch_size = 100",
                "batch_size = 100\nlease = \"10ms\"",
                "lease",
            ),
            (
                "batch_size = 100",
                "batch_size = 100\nretention = \"1000years\"",
                "retention",
            ),
            (
                "max_attempts = 5",
                "max_attempts = 5\nmax_backoff = \"1000years\"",
                "max_backoff",
            ),
            (
                "batch_size = 100",
                "batch_size = 100\nlease = \"25days\"",
                "`lease` must be at most 24days 20h 31m 23s 647ms",
            ),
        ] {
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_lease_must_outlast_the_sinks_longest_call() {
        let http = |extra: &str| {
            format!(
                "[[pipeline]]\nname = \"a\"\ndatabase = \"sqlite://x.db\"\n{extra}\n\
                 [pipeline.sink]\ntype = \"http\"\nurl = \"http://127.0.0.1/hook\"\n"
            )
        };
        // The defaults keep the rule.
        let c = FerryConfig::parse(&http("")).unwrap();
        let p = &c.pipelines[0];
        assert!(p.lease / 2 > p.sink.longest_call());
        // 4 x 10s = 40s, not within 30s.
        let e = err(&http("").replace("/hook\"", "/hook\"\ntimeout = \"10s\""));
        assert!(e.starts_with("line 2: pipeline `a`: key `lease`"), "{e}");
        assert!(e.contains("(30s)") && e.contains("http sink (40s)"), "{e}");
        assert!(FerryConfig::parse(
            &http("lease = \"81s\"").replace("/hook\"", "/hook\"\ntimeout = \"10s\"")
        )
        .is_ok());
        // Equal is not enough: the call must end before the budget does.
        let e = err(&http("lease = \"40s\""));
        assert!(e.contains("(20s)") && e.contains("(20s)"), "{e}");
        let nats = "[[pipeline]]\nname = \"n\"\ndatabase = \"sqlite://x.db\"\nlease = \"4s\"\n\
                    [pipeline.sink]\ntype = \"nats\"\nurl = \"nats://127.0.0.1\"\nack_timeout = \"2s\"\n";
        assert!(err(nats).contains("nats sink (2s)"));
    }

    #[test]
    fn pipelines_sharing_a_database_must_split_topics() {
        let two_on = |da: &str, db: &str, ta: &str, tb: &str| {
            format!(
                "[[pipeline]]\nname = \"a\"\ndatabase = \"{da}\"\n{ta}\n[pipeline.sink]\ntype = \"null\"\n\
                 [[pipeline]]\nname = \"b\"\ndatabase = \"{db}\"\n{tb}\n[pipeline.sink]\ntype = \"null\"\n"
            )
        };
        let two = |ta: &str, tb: &str| two_on("sqlite://x.db", "sqlite://x.db", ta, tb);
        let e = err(&two("", ""));
        assert!(
            e.starts_with("line 8: ") && e.contains("share a database"),
            "{e}"
        );
        // Other spellings of the same outbox.
        for (da, db) in [
            ("sqlite://x.db", "sqlite://x.db?mode=rwc"),
            ("sqlite://x.db", "sqlite://./sub/../x.db"),
            ("sqlite:x.db", "sqlite://x.db"),
            (
                "postgres://u:p@db.local/app",
                "postgresql://other@DB.local:5432/app?sslmode=disable",
            ),
        ] {
            let e = err(&two_on(da, db, "", ""));
            assert!(e.contains("share a database"), "{da} {db}: {e}");
        }
        for (da, db) in [
            ("sqlite://x.db", "sqlite://y.db"),
            ("postgres://db.local/app", "postgres://db.local/other"),
            ("postgres://db.local/app", "postgres://db.local:5433/app"),
        ] {
            assert!(
                FerryConfig::parse(&two_on(da, db, "", "")).is_ok(),
                "{da} {db}"
            );
        }
        assert!(err(&two("topics = [\"x\"]", "")).contains("share a database"));
        assert!(err(&two("topics = [\"x\", \"y\"]", "topics = [\"y\"]")).contains("topic `y`"));
        assert!(FerryConfig::parse(&two("topics = [\"x\"]", "topics = [\"y\"]")).is_ok());
    }

    #[test]
    fn the_documented_files_parse() {
        let doc = include_str!("../../../docs/config.md");
        let block = doc
            .split("```toml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let c = FerryConfig::parse(block).unwrap();
        assert_eq!(c.pipelines[0].name.get_ref(), "coupons");
        let consumers = doc.split("## Consumers").nth(1).unwrap();
        let block = consumers
            .split("```toml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let c = FerryConfig::parse(block).unwrap_or_else(|e| panic!("{e}"));
        let consumer = &c.consumers[0];
        assert_eq!(consumer.name.get_ref(), "billing");
        assert!(consumer.router.circuit_breaker.is_some() && consumer.router.dedup.is_some());
        assert_eq!(consumer.router.retry.as_ref().unwrap().max_deliveries, 5);
        assert_eq!(c.http.unwrap().listen.port(), 9464);
        let example = include_str!("../../../examples/ferry.toml");
        assert_eq!(FerryConfig::parse(example).unwrap().pipelines.len(), 2);
    }

    #[test]
    fn consumer_errors_name_the_key_and_line() {
        let base = |extra: &str| {
            format!(
                "[[consumer]]\nname = \"c\"\ntopics = [\"t\"]\ndatabase = \"sqlite://x.db\"\n\
                 from = {{ type = \"nats\", url = \"nats://127.0.0.1:4222\" }}\n\
                 to = {{ type = \"http\", url = \"http://127.0.0.1:1/\" }}\n{extra}"
            )
        };
        assert!(FerryConfig::parse(&base("")).is_ok());
        let err = |text: &str| FerryConfig::parse(text).unwrap_err();
        let e = err(&base("[consumer.router]\nprefetsh = 3\n"));
        assert!(e.contains("prefetsh") && e.contains("line 8"), "{e}");
        let e = err(&base("[consumer.router]\nprefetch = 0\n"));
        assert!(e.contains("prefetch"), "{e}");
        let e = err(&base("").replace("topics = [\"t\"]", "topics = []"));
        assert!(e.contains("line 2") && e.contains("topics"), "{e}");
        let e = err(&base("").replace("type = \"nats\"", "type = \"natz\""));
        assert!(e.contains("natz"), "{e}");
        let twice = format!("{}{}", base(""), base(""));
        assert!(err(&twice).contains("defined twice"), "{}", err(&twice));
    }

    #[test]
    fn the_events_api_needs_http_and_a_token_off_loopback() {
        let with =
            |http: &str| format!("{http}\n[events_api]\ndatabase = \"sqlite://events.db\"\n");
        let open = "[http]\nlisten = \"0.0.0.0:9464\"";
        // On loopback without a token, and with nothing else to run: fine.
        let c = FerryConfig::parse(&with("[http]\nlisten = \"127.0.0.1:9464\"")).unwrap();
        let api = c.events_api.unwrap();
        assert_eq!((api.max_limit, api.migrate), (1000, false));
        let e = err(&with(""));
        assert!(e.contains("[events_api]") && e.contains("[http]"), "{e}");
        let e = err(&with(open));
        assert!(
            e.starts_with("key `http.token`") && e.contains("0.0.0.0:9464"),
            "{e}"
        );
        let c = FerryConfig::parse(&with(&format!("{open}\ntoken = \"s3cret\""))).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        // A variable that is set wherever tests run.
        let c = FerryConfig::parse(&with(&format!("{open}\ntoken_env = \"PATH\""))).unwrap();
        let token = c.http.unwrap().token().unwrap().unwrap();
        assert_eq!(token.expose(), std::env::var("PATH").unwrap());
        for (extra, says) in [
            (
                "token_env = \"FERRY_TEST_NO_SUCH_VARIABLE\"",
                "key `http.token_env`: the environment variable `FERRY_TEST_NO_SUCH_VARIABLE` is not set",
            ),
            ("token = \"a\"\ntoken_env = \"PATH\"", "set one, not both"),
            ("token = \"two words\"", "visible ASCII"),
            ("token = \"\"", "must not be empty"),
        ] {
            let e = err(&with(&format!("{open}\n{extra}")));
            assert!(e.contains(says), "{extra}: {e}");
        }
        let e = err(&with("[http]\nlisten = \"127.0.0.1:1\"").replace("sqlite://", "mongodb://"));
        assert!(e.contains("key `events_api.database`"), "{e}");
        let e = err(&format!(
            "{}max_limit = 0\n",
            with("[http]\nlisten = \"127.0.0.1:1\"")
        ));
        assert!(e.contains("key `events_api.max_limit`"), "{e}");
        let e = err(&format!(
            "{}limit = 5\n",
            with("[http]\nlisten = \"127.0.0.1:1\"")
        ));
        assert!(e.contains("unknown field `limit`"), "{e}");
        // Without [events_api], [http] serves /metrics only: no token needed.
        let metrics_only = format!(
            "{open}\n[[pipeline]]\nname = \"p\"\ndatabase = \"sqlite://x.db\"\n[pipeline.sink]\ntype = \"null\"\n"
        );
        assert!(FerryConfig::parse(&metrics_only).is_ok());
        // The documented table (its variable swapped for one that is set).
        let doc = include_str!("../../../docs/config.md");
        let block = doc.split("## The events API").nth(1).unwrap();
        let block = block
            .split("```toml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let c = FerryConfig::parse(&block.replace("FERRY_API_TOKEN", "PATH"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.events_api.unwrap().max_limit, 1000);
        let e = err(block
            .replace("token_env = \"FERRY_API_TOKEN\"", "")
            .as_str());
        assert!(e.contains("key `http.token`"), "{e}");
        let example = include_str!("../../../examples/ferry.toml");
        assert!(FerryConfig::parse(example).unwrap().events_api.is_some());
    }
}
