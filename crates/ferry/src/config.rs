//! The daemon's configuration file (`ferry run --config ferry.toml`).
//!
//! Each section belongs to the module that runs it and is documented
//! there, field by field: `[[pipeline]]` in pipeline.rs, `[[consumer]]` in
//! consume.rs, `[[forwarder]]` in forward.rs, `[events_api]` in
//! events_api.rs, `[http]` in metrics.rs. This module only puts them
//! together and checks the file as a whole; docs/config.md shows a complete
//! file. Unknown keys, wrong types and missing values are errors that name
//! the key and its line.

use std::path::Path;

use serde::Deserialize;

use crate::batch::{self, BatchConfig};
use crate::cdc::{self, CdcFileConfig};
use crate::consume::{self, ConsumerConfig};
use crate::events_api::EventsApiConfig;
use crate::forward::{self, ForwarderFileConfig};
use crate::metrics::HttpConfig;
use crate::pipeline::{self, PipelineConfig};

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
    pub consumers: Vec<ConsumerConfig>,
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
    pub forwarders: Vec<ForwarderFileConfig>,
    /// One `[[cdc]]` table per change data capture: a database whose
    /// committed row changes go to a sink.
    #[serde(rename = "cdc", default)]
    pub cdcs: Vec<CdcFileConfig>,
    /// `[batch]`: settings shared by the batch jobs (where export run
    /// history is kept).
    #[serde(default)]
    pub batch: Option<BatchConfig>,
    /// One `[[export]]` table per export job: a query run for each window
    /// of a schedule, its rows written to files handed to a folder, SFTP,
    /// S3 or an HTTP bulk endpoint ([`ferry_batch::export::ExportJob`]).
    #[serde(rename = "export", default)]
    pub exports: Vec<toml::Spanned<ferry_batch::export::ExportJob>>,
    /// One `[[import]]` table per import job: batches taken from a folder,
    /// SFTP or S3 and loaded once into a table or posted to an HTTP
    /// endpoint ([`ferry_batch::import::ImportJob`]).
    #[serde(rename = "import", default)]
    pub imports: Vec<toml::Spanned<ferry_batch::import::ImportJob>>,
    /// `[telemetry]`: export the daemon's spans over OTLP (docs/tracing.md);
    /// off when omitted.
    #[serde(default)]
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
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
            && config.cdcs.is_empty()
            && config.exports.is_empty()
            && config.imports.is_empty()
        {
            return Err(
                "no [[pipeline]], [[consumer]], [[forwarder]], [[cdc]], [[export]] or [[import]] defined: nothing to run"
                    .to_owned(),
            );
        }
        consume::check(text, &config.consumers)?;
        pipeline::check(text, &config.pipelines)?;
        if let Some(telemetry) = &config.telemetry {
            telemetry.validate().map_err(|e| match e {
                crate::telemetry::TelemetryError::Invalid { key, reason } => {
                    format!("key `telemetry.{key}`: {reason}")
                }
                other => other.to_string(),
            })?;
        }
        if let Some(http) = &config.http {
            http.token()?;
            crate::admin::tokens(&http.tokens)?;
        }
        if let Some(events_api) = &config.events_api {
            events_api.check(config.http.as_ref())?;
        }
        forward::check(text, &config.forwarders)?;
        cdc::check(text, &config.cdcs)?;
        batch::check(
            text,
            config.batch.as_ref(),
            &config.exports,
            &config.imports,
        )?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_core::RetryPolicy;
    use ferry_relay::{OrderPolicy, Retention};

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
        assert_eq!(q.concurrency.get(), 2);
        assert_eq!(q.retention(), Retention::Delete);
    }

    /// The first TOML block of docs/config.md after the heading `after`
    /// (`""`: the first of the file).
    fn documented(after: &str) -> &'static str {
        let doc = include_str!("../../../docs/config.md");
        let (_, section) = doc.split_once(after).unwrap();
        let (_, block) = section.split_once("```toml\n").unwrap();
        block.split("```").next().unwrap()
    }

    fn err(text: &str) -> String {
        FerryConfig::parse(text).unwrap_err()
    }

    /// Makes each change `(from, to, says)` to `base` (the first `from`
    /// becomes `to`); the file must be refused with an error that says
    /// each of `says`. The errors, in order.
    fn refusals(base: &str, changes: &[(&str, &str, &[&str])]) -> Vec<String> {
        changes
            .iter()
            .map(|(from, to, says)| {
                let changed = base.replacen(from, to, 1);
                assert_ne!(changed, base, "{from}");
                let e = err(&changed);
                for said in *says {
                    assert!(e.contains(said), "{to}: {e} lacks {said}");
                }
                e
            })
            .collect()
    }

    /// Each change to GOOD, and what the error must say (its line first).
    #[test]
    fn bad_values_name_key_and_line() {
        let changes = [
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
        ];
        for (e, (_, _, says)) in refusals(GOOD, &changes).iter().zip(changes) {
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
        let c = FerryConfig::parse(documented("")).unwrap();
        assert_eq!(c.pipelines[0].name.get_ref(), "coupons");
        // Its token is read from a variable the test does not set.
        let consumers = documented("## Consumers").replacen(
            "token_env = \"FERRY_OPS_ALICE\"",
            "token = \"s3cret\"",
            1,
        );
        let c = FerryConfig::parse(&consumers).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.telemetry.as_ref().map(|t| t.service_name.as_str()),
            Some("ferry")
        );
        assert_eq!(c.http.as_ref().map(|h| h.tokens.len()), Some(1));
        let consumer = &c.consumers[0];
        assert_eq!(consumer.name.get_ref(), "billing");
        assert!(consumer.router.circuit_breaker.is_some() && consumer.router.dedup.is_some());
        assert_eq!(consumer.router.retry.as_ref().unwrap().max_deliveries, 5);
        assert_eq!(c.http.unwrap().listen.port(), 9464);
        let example = include_str!("../../../examples/ferry.toml");
        assert_eq!(FerryConfig::parse(example).unwrap().pipelines.len(), 2);
    }

    #[test]
    fn the_batch_example_and_the_readme_batch_config_are_valid() {
        let example = FerryConfig::parse(include_str!("../../../examples/batch.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((example.exports.len(), example.imports.len()), (1, 1));
        let export = example.exports[0].get_ref();
        assert!(
            export.gzip
                && export
                    .destination
                    .as_ref()
                    .is_some_and(|d| d.url.starts_with("sftp://"))
        );
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("```toml\n[[export]]")
            .expect("README's batch example")
            + 8;
        let end = start + readme[start..].find("```").unwrap();
        let parsed = FerryConfig::parse(&readme[start..end]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((parsed.exports.len(), parsed.imports.len()), (1, 1));
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
        let block = documented("## The events API");
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

    /// The doc comment above `field` (a line such as `pub sink: SinkConfig,`)
    /// in a module's source, attributes in between skipped.
    fn doc_above(source: &str, field: &str) -> String {
        let lines: Vec<&str> = source.lines().map(str::trim).collect();
        let at = lines
            .iter()
            .position(|line| *line == field)
            .unwrap_or_else(|| panic!("no `{field}`"));
        let mut doc: Vec<&str> = lines[..at]
            .iter()
            .rev()
            .skip_while(|line| line.starts_with("#["))
            .take_while(|line| line.starts_with("///"))
            .copied()
            .collect();
        doc.reverse();
        doc.join("\n")
    }

    /// The doc comments of the fields that hold a sink or a broker are the
    /// user's reference: each names every `type` the enum accepts, and so
    /// does docs/config.md.
    #[test]
    fn sink_and_source_docs_name_every_type() {
        use ferry_adapters::{SinkConfig, SubscriberConfig};
        let fields = [
            (
                include_str!("pipeline.rs"),
                "pub sink: SinkConfig,",
                SinkConfig::KINDS,
            ),
            (
                include_str!("forward.rs"),
                "pub sink: SinkConfig,",
                SinkConfig::KINDS,
            ),
            (
                include_str!("consume.rs"),
                "pub to: SinkConfig,",
                SinkConfig::KINDS,
            ),
            (
                include_str!("consume.rs"),
                "pub from: SubscriberConfig,",
                SubscriberConfig::KINDS,
            ),
        ];
        for (source, field, kinds) in fields {
            let doc = doc_above(source, field);
            for kind in kinds {
                assert!(
                    doc.contains(&format!("\"{kind}\"")),
                    "the doc of `{field}` lacks \"{kind}\": {doc}"
                );
            }
        }
        let doc = include_str!("../../../docs/config.md");
        let listing = doc
            .lines()
            .find(|line| line.starts_with("type = \"http\"") && line.contains('#'))
            .expect("the sink line of the example pipeline");
        let headings: String = doc
            .lines()
            .filter(|line| line.starts_with("### `type = "))
            .collect();
        for kind in SinkConfig::KINDS {
            let quoted = format!("\"{kind}\"");
            assert!(
                listing.contains(&quoted),
                "config.md: {listing} lacks {quoted}"
            );
            assert!(
                headings.contains(&quoted),
                "config.md: no section for {quoted}"
            );
        }
        let brokers = include_str!("../../../docs/brokers.md");
        for kind in SubscriberConfig::KINDS {
            let quoted = format!("\"{kind}\"");
            assert!(brokers.contains(&quoted), "brokers.md lacks {quoted}");
        }
    }

    /// The `[[forwarder]]` tables (forward.rs), read as part of a file.
    mod cdcs {
        use super::{documented, err, FerryConfig};

        #[test]
        fn the_documented_captures_parse() {
            let c = FerryConfig::parse(documented("<a id=\"cdc\"></a>"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.cdcs.len(), 1);
            let cdc = crate::cdc::Cdc::from(&c.cdcs[0]);
            assert_eq!(cdc.filter.exclude_columns, ["customers.email"]);
            assert_eq!(cdc.ship.retry.max_attempts, 10);
            let target = documented("`[cdc.target]` instead of");
            let with_target =
                format!("[[cdc]]\nname = \"copy\"\nfrom = \"sqlite://a.db\"\n{target}");
            let c = FerryConfig::parse(&with_target).unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(
                crate::cdc::Cdc::from(&c.cdcs[0]).to,
                crate::cdc::To::Database { .. }
            ));
        }

        #[test]
        fn refusals_name_key_and_line() {
            let base =
                "[[cdc]]\nname = \"shop\"\nfrom = \"sqlite://a.db\"\n[cdc.sink]\ntype = \"null\"\n";
            let e = err(&base.replace("\"shop\"", "\"bad-name\""));
            assert!(e.contains("line 2") && e.contains("`name`"), "{e}");
            let e = err(&base.replace("from = ", "mode = \"log\"\nfrom = "));
            assert!(e.contains("`mode`") && e.contains("SQLite"), "{e}");
            let e = err(&base.replace("[cdc.sink]\ntype = \"null\"\n", ""));
            assert!(
                e.contains("[cdc.sink]") && e.contains("[cdc.target]"),
                "{e}"
            );
            let e = err(&format!("{base}[cdc.target]\nurl = \"sqlite://b.db\"\n"));
            assert!(e.contains("not both"), "{e}");
            let e = err(&base.replace("from = ", "formt = \"x\"\nfrom = "));
            assert!(e.contains("formt") && e.contains("line 3"), "{e}");
            let e = err(&format!("{base}[[cdc]]\nname = \"shop\"\nfrom = \"sqlite://c.db\"\n[cdc.sink]\ntype = \"null\"\n"));
            assert!(e.contains("shop"), "{e}");
        }
    }

    mod forwarders {
        use super::{documented, err, refusals, FerryConfig};

        const ONE: &str = r#"
    [[forwarder]]
    name = "billing"
    database = "sqlite://events.db"
    on_failure = "skip"
    batch_size = 50
    [forwarder.retry]
    max_attempts = 4
    [forwarder.sink]
    type = "http"
    url = "http://127.0.0.1:8080/events"
    "#;

        #[test]
        fn a_forwarder_table_parses_with_defaults() {
            let c = FerryConfig::parse(ONE).unwrap();
            let f = c.forwarders[0].forwarder();
            assert_eq!(f.name, "billing");
            assert_eq!(f.on_failure, ferry_events::forwarder::OnFailure::Skip);
            assert_eq!((f.batch_size, f.retry.max_attempts), (50, 4));
            assert_eq!(f.poll_interval, std::time::Duration::from_millis(500));
            assert!(!c.forwarders[0].migrate);
        }

        #[test]
        fn the_documented_forwarder_parses() {
            let c =
                FerryConfig::parse(documented("## Forwarders")).unwrap_or_else(|e| panic!("{e}"));
            let f = c.forwarders[0].forwarder();
            assert_eq!(
                (f.name.as_str(), f.retry.max_attempts),
                ("orders-to-billing", 5)
            );
            let example = FerryConfig::parse(include_str!("../../../examples/ferry.toml")).unwrap();
            assert_eq!(example.forwarders.len(), 1);
        }

        #[test]
        fn forwarder_errors_name_the_key_and_line() {
            refusals(
                ONE,
                &[
                    (
                        "batch_size = 50",
                        "bach_size = 50",
                        &["line 6", "bach_size"][..],
                    ),
                    (
                        "on_failure = \"skip\"",
                        "on_failure = \"retry\"",
                        &["line 5", "retry"],
                    ),
                    (
                        "max_attempts = 4",
                        "max_attempts = 0",
                        &["line 7", "max_attempts must be at least 1"],
                    ),
                    (
                        "batch_size = 50",
                        "batch_size = 10001",
                        &["line 3:", "forwarder `billing`", "key `batch_size"],
                    ),
                    (
                        "batch_size = 50",
                        "poll_interval = \"0s\"",
                        &["line 3:", "key `poll_interval"],
                    ),
                    (
                        "sqlite://events.db",
                        "redis://x",
                        &["line 3:", "key `database`"],
                    ),
                    (
                        "type = \"http\"",
                        "type = \"pigeon\"",
                        &["line 10", "pigeon"],
                    ),
                    ("name = \"billing\"\n", "", &["missing field `name`"]),
                ],
            );
            let e = err(&format!("{ONE}{ONE}"));
            assert!(e.contains("defined twice") && e.contains("line 14"), "{e}");
        }
    }
}

/// Property tests (issue 13): any text, and any file made from the
/// documented ones by changing, renaming, removing or repeating lines, is
/// a configuration or an error, never a panic; an unknown key is named in
/// the error with its line.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// Every complete TOML block of docs/config.md and docs/batch.md.
    fn documented() -> &'static [&'static str] {
        static FILES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
        FILES.get_or_init(|| {
            let docs = [
                include_str!("../../../docs/config.md"),
                include_str!("../../../docs/batch.md"),
            ];
            let files: Vec<&'static str> = docs
                .iter()
                .flat_map(|doc| doc.split("```toml\n").skip(1))
                .filter_map(|block| block.split("```").next())
                .filter(|block| FerryConfig::parse(block).is_ok())
                .collect();
            assert!(
                files.len() >= 3,
                "the docs' complete files: {}",
                files.len()
            );
            files
        })
    }

    /// Values a key may be given: of every TOML type, durations too short,
    /// too long or malformed, URLs of every kind, and arbitrary strings.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_owned()),
            Just("-1".to_owned()),
            Just("1".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("1.5".to_owned()),
            Just("true".to_owned()),
            Just("[]".to_owned()),
            Just("[\"a\", 1]".to_owned()),
            Just("{}".to_owned()),
            Just("{ x = 1 }".to_owned()),
            Just("\"\"".to_owned()),
            Just("\"0s\"".to_owned()),
            Just("\"1ms\"".to_owned()),
            Just("\"999999999999999999d\"".to_owned()),
            Just("\"1 fortnight\"".to_owned()),
            Just("1979-05-27T07:32:00Z".to_owned()),
            "\"(postgres|mysql|sqlite|nats|kafka|amqp|redis|sqs|http|https|null|mongodb)://[a-z0-9:@./?=&%-]{0,20}\"",
            "\"(\\*|[0-9,/-]){0,6}( (\\*|[0-9,/-]){0,4}){0,5}\"",
            "\"[a-z0-9._ {}*/-]{0,12}\"",
            any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
        ]
    }

    #[derive(Clone, Debug)]
    enum Edit {
        /// Give the key of the line a new value.
        Value(String),
        /// Add a key no section has beside the line's key.
        Rename(String),
        /// Remove the line.
        Remove,
        /// Repeat the line.
        Repeat,
        /// Replace the line with any text.
        Text(String),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            6 => value().prop_map(Edit::Value),
            2 => "zz_[a-z]{1,6}".prop_map(Edit::Rename),
            2 => Just(Edit::Remove),
            1 => Just(Edit::Repeat),
            1 => prop_oneof!["\\PC{0,20}", "\\[+[a-z._]{0,12}\\]+"].prop_map(Edit::Text),
        ]
    }

    /// `text` with `edit` made at line `at` (modulo the line count); for a
    /// rename, the new key and its line (1-based).
    fn apply(text: &str, at: usize, edit: &Edit) -> (String, Option<(String, usize)>) {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.is_empty() {
            return (text.to_owned(), None);
        }
        let i = at % lines.len();
        let key_value = lines[i]
            .split_once(" = ")
            .filter(|(k, _)| !k.trim_start().starts_with('#') && !k.contains('"'));
        let mut renamed = None;
        match edit {
            Edit::Value(v) => {
                if let Some((k, _)) = key_value {
                    lines[i] = format!("{k} = {v}");
                }
            }
            Edit::Rename(name) => {
                // A key of the same table beside the line's (not within a
                // multi-line array or inline table).
                if let Some((k, v)) = key_value {
                    if !k.contains(['{', '.'])
                        && !v.contains(['[', '{', '\''])
                        && !v.contains("\"\"\"")
                    {
                        let indent = &k[..k.len() - k.trim_start().len()];
                        lines.insert(i + 1, format!("{indent}{name} = {v}"));
                        renamed = Some((name.clone(), i + 2));
                    }
                }
            }
            Edit::Remove => {
                lines.remove(i);
            }
            Edit::Repeat => {
                let line = lines[i].clone();
                lines.insert(i, line);
            }
            Edit::Text(t) => lines[i] = t.clone(),
        }
        (lines.join("\n") + "\n", renamed)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(384))]

        #[test]
        fn any_text_is_a_config_or_an_error(text in prop_oneof![any::<String>(), "(\\[\\[?[a-z_.]{0,12}\\]\\]?\n|[a-z_]{1,8} = [0-9\"\\[\\]{}a-z]{0,6}\n){0,8}"]) {
            if let Err(e) = FerryConfig::parse(&text) {
                prop_assert!(!e.is_empty());
            }
        }

        #[test]
        fn an_edited_documented_file_is_a_config_or_an_error(
            which in any::<proptest::sample::Index>(),
            edits in proptest::collection::vec((any::<usize>(), edit()), 1..4),
        ) {
            let files = documented();
            prop_assume!(!files.is_empty());
            let mut text = files[which.index(files.len())].to_owned();
            for (at, edit) in &edits {
                text = apply(&text, *at, edit).0;
            }
            if let Err(e) = FerryConfig::parse(&text) {
                prop_assert!(!e.is_empty());
            }
        }

        #[test]
        fn an_unknown_key_is_named_with_its_line(
            which in any::<proptest::sample::Index>(),
            at in any::<usize>(),
            name in "zz_[a-z]{1,6}",
        ) {
            let files = documented();
            prop_assume!(!files.is_empty());
            let (text, renamed) = apply(files[which.index(files.len())], at, &Edit::Rename(name));
            let Some((name, line)) = renamed else {
                return Ok(());
            };
            let e = FerryConfig::parse(&text).expect_err("an unknown key is refused");
            prop_assert!(e.contains(&name), "{}\n{}", e, text);
            // The key's line; within a table read as a tagged enum (a
            // `sink`, a `source`: `type = …` chooses the fields) serde
            // keeps no position per key, and the line is the table's.
            let table = text
                .lines()
                .take(line)
                .enumerate()
                .filter(|(_, l)| l.starts_with('['))
                .map(|(i, _)| i + 1)
                .last();
            let at_key = e.contains(&format!("line {line},"));
            let at_table = table.is_some_and(|t| e.contains(&format!("line {t},")));
            prop_assert!(at_key || at_table, "{}\n{}", e, text);
        }
    }
}
