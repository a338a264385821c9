//! Configuration of the Kafka sink and subscriber.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::topic::MAX_TOPIC_LEN;

/// Where and how [`KafkaSink`](crate::KafkaSink) publishes and
/// [`KafkaSubscriber`](crate::KafkaSubscriber) consumes.
///
/// ```toml
/// type = "kafka"
/// brokers = ["10.0.0.1:9092", "10.0.0.2:9092"]
/// topic_prefix = "ferry."
/// partitions = 3
/// delivery_timeout = "10s"
/// ```
///
/// This build of librdkafka speaks plaintext only (no TLS, no SASL: those
/// need OpenSSL and Cyrus SASL at build time).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The bootstrap brokers, `host:port` each (port 9092 when left out).
    /// The client learns the rest of the cluster from them.
    pub brokers: Vec<String>,
    /// Put before a message's topic to make the Kafka topic: with `ferry.`,
    /// a message on `order.placed` goes to `ferry.order.placed`. Empty by
    /// default. Characters Kafka does not allow in a topic name (anything
    /// but ASCII letters, digits, `.`, `_` and `-`) become `_`, so topics
    /// that differ only there share a Kafka topic.
    #[serde(default)]
    pub topic_prefix: String,
    /// Whether the sink and the subscriber create a missing topic with the
    /// admin API (with `partitions` and `replication_factor`). On by
    /// default; when off, the topic must exist (or the cluster must create
    /// it on first use).
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// The partition count of the topics Ferry creates. A key always maps
    /// to one partition, so more partitions let more consumers of a group
    /// share a topic without breaking per-key order. Default 1.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// The replication factor of the topics Ferry creates; unset (the
    /// default) takes the cluster's `default.replication.factor`.
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// How long a publish may take until the broker has acknowledged it
    /// (librdkafka's `message.timeout.ms`, retries included), and the limit
    /// of any other request (topic creation, offset commit, metadata), e.g.
    /// `"10s"`.
    #[serde(default = "default_delivery_timeout", with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// How long [`subscribe`](ferry_core::Subscriber::subscribe) waits for
    /// the group coordinator to assign the consumer its partitions, e.g.
    /// `"60s"`.
    #[serde(default = "default_join_timeout", with = "humantime_serde")]
    pub join_timeout: Duration,
    /// How often the subscriber commits the consumer group's position
    /// after acknowledgements, e.g. `"1s"` (the default). An ack records
    /// the message as handled and returns; the position committed is
    /// always below the lowest offset still unacknowledged, and it is also
    /// committed when a partition is revoked and when the consumer closes.
    /// A consumer that is killed redelivers what it acknowledged since its
    /// last commit (at least once: consumers dedup). `"0s"` commits before
    /// each ack returns, which caps consumption at what the acks in flight
    /// can do per commit round trip.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Extra librdkafka properties for both producer and consumer, such as
    /// `client.id` or `linger.ms`. The properties Ferry sets itself
    /// (`bootstrap.servers`, `enable.idempotence`, `acks`, `group.id`,
    /// `enable.auto.commit`, `enable.auto.offset.store`,
    /// `auto.offset.reset`, `message.timeout.ms`) are refused here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The CloudEvents `source` attribute, sent as the `ce-source` header.
    #[serde(default = "default_source")]
    pub source: String,
}

/// The librdkafka properties Ferry sets and a user may not override.
const RESERVED: [&str; 8] = [
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "message.timeout.ms",
];

fn yes() -> bool {
    true
}

fn default_partitions() -> i32 {
    1
}

fn default_delivery_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_join_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_source() -> String {
    crate::DEFAULT_SOURCE.to_owned()
}

impl KafkaConfig {
    /// The defaults, with the given bootstrap brokers.
    pub fn new<I, S>(brokers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            brokers: brokers.into_iter().map(Into::into).collect(),
            topic_prefix: String::new(),
            create_topics: true,
            partitions: default_partitions(),
            replication_factor: None,
            delivery_timeout: default_delivery_timeout(),
            join_timeout: default_join_timeout(),
            commit_interval: default_commit_interval(),
            properties: BTreeMap::new(),
            source: default_source(),
        }
    }

    /// Reads a URL such as
    /// `kafka://10.0.0.1:9092,10.0.0.2:9092?topic_prefix=ferry.&partitions=3`.
    ///
    /// The authority is a comma-separated list of bootstrap brokers
    /// (`host:port`, port 9092 when left out). The query may set
    /// `topic_prefix`, `create_topics` (`true`/`false`), `partitions`,
    /// `replication_factor`, `delivery_timeout`, `join_timeout` and
    /// `commit_interval` (e.g. `10s`) and `source`; any other name is a librdkafka property (e.g.
    /// `client.id=ferry`), see [`KafkaConfig::properties`]. The result is
    /// validated.
    pub fn from_url(url: &str) -> Result<Self, KafkaConfigError> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or(KafkaConfigError::Scheme)?;
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains(['/', '#', '@']) {
            return Err(invalid(
                "url",
                "must be kafka://host:port[,host:port...][?settings], without a path or credentials",
            ));
        }
        let mut config = Self::new(
            authority
                .split(',')
                .filter(|b| !b.is_empty())
                .map(with_default_port),
        );
        let mut seen = HashSet::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let (name, value) = (name.into_owned(), value.into_owned());
            if !seen.insert(name.clone()) {
                return Err(KafkaConfigError::RepeatedParameter(name));
            }
            match name.as_str() {
                "topic_prefix" => config.topic_prefix = value,
                "create_topics" => {
                    config.create_topics = value
                        .parse()
                        .map_err(|_| invalid("create_topics", "must be true or false"))?;
                }
                "partitions" => {
                    config.partitions = value
                        .parse()
                        .map_err(|_| invalid("partitions", "must be a number"))?;
                }
                "replication_factor" => {
                    config.replication_factor = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("replication_factor", "must be a number"))?,
                    );
                }
                "delivery_timeout" => {
                    config.delivery_timeout = duration("delivery_timeout", &value)?
                }
                "join_timeout" => config.join_timeout = duration("join_timeout", &value)?,
                "commit_interval" => config.commit_interval = duration("commit_interval", &value)?,
                "source" => config.source = value,
                _ => {
                    config.properties.insert(name, value);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; [`KafkaSink::connect`](crate::KafkaSink::connect)
    /// and [`KafkaSubscriber::connect`](crate::KafkaSubscriber::connect) call
    /// it.
    pub fn validate(&self) -> Result<(), KafkaConfigError> {
        if self.brokers.is_empty() {
            return Err(invalid("brokers", "at least one broker is required"));
        }
        for broker in &self.brokers {
            let ok = broker.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains([',', ' ', '/'])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(invalid("brokers", "each must be host:port"));
            }
        }
        if !self.topic_prefix.chars().all(crate::topic::is_legal) {
            return Err(invalid(
                "topic_prefix",
                "may hold only ASCII letters, digits, `.`, `_` and `-`",
            ));
        }
        if self.topic_prefix.len() >= MAX_TOPIC_LEN {
            return Err(invalid(
                "topic_prefix",
                "must leave room for the topic (kafka allows 249 characters)",
            ));
        }
        if self.partitions < 1 {
            return Err(invalid("partitions", "must be at least 1"));
        }
        if self.replication_factor.is_some_and(|r| r < 1) {
            return Err(invalid("replication_factor", "must be at least 1"));
        }
        if self.delivery_timeout < Duration::from_millis(1)
            || self.delivery_timeout > Duration::from_millis(i32::MAX as u64)
        {
            return Err(invalid(
                "delivery_timeout",
                "must be between 1ms and 2147483647ms",
            ));
        }
        if self.join_timeout.is_zero() {
            return Err(invalid("join_timeout", "must be more than zero"));
        }
        if let Some(name) = self
            .properties
            .keys()
            .find(|name| RESERVED.contains(&name.as_str()))
        {
            return Err(KafkaConfigError::ReservedProperty(name.clone()));
        }
        if self.source.is_empty() {
            return Err(invalid("source", "must not be empty"));
        }
        Ok(())
    }

    /// The longest one [`Sink::deliver`](ferry_core::Sink::deliver) call can
    /// take: creating a missing topic, then publishing the batch, each
    /// within `delivery_timeout`. The relay's batch budget must exceed it.
    pub fn longest_call(&self) -> Duration {
        self.delivery_timeout.saturating_mul(2)
    }

    /// The librdkafka settings shared by every client: the brokers, the
    /// request timeout and the user's properties.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.brokers.join(","));
        config.set("client.id", "ferry");
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }
}

fn with_default_port(broker: &str) -> String {
    // An IPv6 literal keeps its brackets: `[::1]` or `[::1]:9092`.
    let has_port = match broker.rfind(']') {
        Some(end) => broker[end..].contains(':'),
        None => broker.contains(':'),
    };
    if has_port {
        broker.to_owned()
    } else {
        format!("{broker}:9092")
    }
}

fn duration(field: &'static str, value: &str) -> Result<Duration, KafkaConfigError> {
    humantime::parse_duration(value).map_err(|e| KafkaConfigError::Invalid {
        field,
        reason: format!("`{value}` is not a duration such as `10s`"),
        source: Some(Box::new(e)),
    })
}

fn invalid(field: &'static str, reason: &str) -> KafkaConfigError {
    KafkaConfigError::Invalid {
        field,
        reason: reason.to_owned(),
        source: None,
    }
}

/// The Kafka settings are wrong, or a client could not be created. Trying
/// again with the same settings does not help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaConfigError {
    /// The URL does not start with `kafka://`.
    #[error("a kafka url starts with kafka://")]
    Scheme,
    /// The URL gives a query parameter more than once.
    #[error("parameter `{0}` given more than once in kafka url")]
    RepeatedParameter(String),
    /// A librdkafka property that Ferry sets itself.
    #[error("librdkafka property `{0}` is set by ferry and cannot be configured")]
    ReservedProperty(String),
    /// A setting has a value the adapter cannot use.
    #[error("invalid `{field}` for kafka: {reason}")]
    Invalid {
        /// The setting, e.g. `partitions`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// librdkafka refused the settings (an unknown property, say).
    #[error("could not create the kafka client")]
    Client(#[source] rdkafka::error::KafkaError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_url_reads_brokers_and_settings() {
        let config = KafkaConfig::from_url(
            "kafka://a:9093,b,[::1]?topic_prefix=ferry.&partitions=3&delivery_timeout=2s&linger.ms=1&create_topics=false",
        )
        .unwrap();
        assert_eq!(config.brokers, ["a:9093", "b:9092", "[::1]:9092"]);
        assert_eq!(config.topic_prefix, "ferry.");
        assert_eq!(config.partitions, 3);
        assert!(!config.create_topics);
        assert_eq!(config.delivery_timeout, Duration::from_secs(2));
        assert_eq!(config.longest_call(), Duration::from_secs(4));
        assert_eq!(config.properties["linger.ms"], "1");
        assert_eq!(config.source, "/ferry");
    }

    #[test]
    fn from_url_refuses_bad_input() {
        for (url, says) in [
            ("nats://a:1", "kafka://"),
            ("kafka://", "at least one broker"),
            ("kafka://a:x", "host:port"),
            ("kafka://a:1/path", "without a path"),
            ("kafka://u:p@a:1", "without a path or credentials"),
            ("kafka://a:1?partitions=0", "at least 1"),
            ("kafka://a:1?partitions=1&partitions=2", "more than once"),
            ("kafka://a:1?topic_prefix=a/b", "topic_prefix"),
            ("kafka://a:1?acks=1", "set by ferry"),
            ("kafka://a:1?delivery_timeout=soon", "not a duration"),
            ("kafka://a:1?source=", "source"),
        ] {
            let err = KafkaConfig::from_url(url).unwrap_err();
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn deserializes_with_defaults_and_refuses_unknown_fields() {
        let config: KafkaConfig = serde_json::from_str(r#"{"brokers":["k:9092"]}"#).unwrap();
        assert_eq!(config, KafkaConfig::new(["k:9092"]));
        config.validate().unwrap();
        let err = serde_json::from_str::<KafkaConfig>(r#"{"brokers":[],"nope":1}"#).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
