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
}

/// A relay from one outbox to one sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name in logs; unique in the file.
    pub name: toml::Spanned<String>,
    /// The outbox's database: `postgres://user@host:port/db` or
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
    /// PostgreSQL: how long a claimed batch may stay unsettled before the
    /// server ends the relay's session and frees the messages for another
    /// relay (default `"60s"`). A batch gets half of it to be delivered;
    /// what is not sent by then waits for the next claim. Must exceed the
    /// sink's timeout.
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

fn valid_sink<'de, D: Deserializer<'de>>(d: D) -> Result<SinkConfig, D::Error> {
    let sink = SinkConfig::deserialize(d)?;
    sink.validate()
        .map_err(|e| serde::de::Error::custom(error_chain(&e)))?;
    Ok(sink)
}

pub(crate) use ferry_core::error_chain;

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
        if config.pipelines.is_empty() {
            return Err("no [[pipeline]] defined: nothing to run".to_owned());
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
            if p.topics.as_ref().is_some_and(|t| t.is_empty()) {
                return Err(format!(
                    "pipeline `{}`: key `topics` is empty; leave it out to deliver every topic",
                    p.name.get_ref()
                ));
            }
            if let Err(problem) = p.check_durations() {
                return Err(format!("pipeline `{}`: {problem}", p.name.get_ref()));
            }
            if let Err(e) = ferry_store::DatabaseKind::of(&p.database) {
                return Err(format!(
                    "pipeline `{}`: key `database`: {}",
                    p.name.get_ref(),
                    error_chain(&e)
                ));
            }
        }
        // Pipelines on one outbox compete for its messages: each would get
        // an arbitrary share. They must split the topics between them.
        for (i, a) in config.pipelines.iter().enumerate() {
            for b in &config.pipelines[i + 1..] {
                if a.database != b.database {
                    continue;
                }
                let (x, y) = (a.name.get_ref(), b.name.get_ref());
                match (&a.topics, &b.topics) {
                    (Some(ta), Some(tb)) => {
                        if let Some(t) = ta.iter().find(|t| tb.contains(t)) {
                            return Err(format!(
                                "pipelines `{x}` and `{y}` share a database and both take topic `{t}`: \
                                 each would receive only some of its messages; give each topic to one pipeline"
                            ));
                        }
                    }
                    _ => {
                        return Err(format!(
                            "pipelines `{x}` and `{y}` share a database: each would receive only some of \
                             its messages; give both a `topics` list, without a topic in common"
                        ))
                    }
                }
            }
        }
        Ok(config)
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

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err(&GOOD.replace("batch_size = 100", "bach_size = 100"));
        assert!(e.contains("line 7"), "{e}");
        assert!(e.contains("bach_size"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = err(&GOOD.replace("batch_size = 100", "batch_size = \"lots\""));
        assert!(e.contains("line 7") && e.contains("batch_size"), "{e}");
        let e = err(&GOOD.replace("batch_size = 100", "batch_size = 0"));
        assert!(e.contains("line 7") && e.contains("nonzero"), "{e}");
    }

    #[test]
    fn bad_duration_and_enum_name_line() {
        let e = err(&GOOD.replace("retention = \"7d\"", "retention = \"soon\""));
        assert!(e.contains("line 8") && e.contains("retention"), "{e}");
        let e = err(&GOOD.replace("order = \"unordered\"", "order = \"random\""));
        assert!(e.contains("line 6") && e.contains("random"), "{e}");
    }

    #[test]
    fn missing_value_is_named() {
        let e = err(&GOOD.replace("database = \"sqlite://ferry.db\"\n", ""));
        assert!(e.contains("missing field `database`"), "{e}");
    }

    #[test]
    fn bad_retry_and_sink_are_caught_at_load() {
        let e = err(&GOOD.replace("max_attempts = 5", "max_attempts = 0"));
        assert!(
            e.contains("max_attempts must be at least 1") && e.contains("line"),
            "{e}"
        );
        let e = err(&GOOD.replace("type = \"http\"", "type = \"carrier-pigeon\""));
        assert!(e.contains("carrier-pigeon") && e.contains("line"), "{e}");
        let e = err(&GOOD.replace("timeout = \"5s\"", "timeout = \"5s\"\nretries = 3"));
        assert!(e.contains("retries") && e.contains("line"), "{e}");
    }

    #[test]
    fn duplicate_names_and_bad_urls_are_rejected() {
        let e = err(&GOOD.replace("name = \"events\"", "name = \"coupons\""));
        assert!(e.contains("defined twice") && e.contains("line 20"), "{e}");
        let e = err(&GOOD.replace("sqlite://ferry.db", "mongodb://x"));
        assert!(e.contains("database"), "{e}");
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
        ] {
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn pipelines_sharing_a_database_must_split_topics() {
        let two = |ta: &str, tb: &str| {
            format!(
                "[[pipeline]]\nname = \"a\"\ndatabase = \"sqlite://x.db\"\n{ta}\n[pipeline.sink]\ntype = \"null\"\n\
                 [[pipeline]]\nname = \"b\"\ndatabase = \"sqlite://x.db\"\n{tb}\n[pipeline.sink]\ntype = \"null\"\n"
            )
        };
        assert!(err(&two("", "")).contains("share a database"));
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
        let example = include_str!("../../../examples/ferry.toml");
        assert_eq!(FerryConfig::parse(example).unwrap().pipelines.len(), 2);
    }
}
