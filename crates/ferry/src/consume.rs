//! Runs one consumer: takes messages from a broker and hands each to a sink
//! (an HTTP endpoint as a CloudEvent, or another broker), with the
//! consumer router's retries, circuit breaker, dedup and dead letters, so a
//! service in any language consumes reliably without a broker client.
//! `ferry consume` and the `[[consumer]]` tables of `ferry run`.

use std::sync::Arc;

use ferry_adapters::{SinkConfig, SubscriberConfig};
use ferry_consumer::{Forward, Router, RouterConfig, Stats, StoreDeadLetters};
use ferry_core::{Kind, Sink, Subscriber};
use ferry_relay::CancellationToken;
use serde::{Deserialize, Deserializer};

use crate::startup::{error_chain, open_retrying, started, valid_sink, validated, Names};

/// A `[[consumer]]` table: from a broker to a sink.
///
/// ```toml
/// [[consumer]]
/// name = "billing"
/// topics = ["order.placed"]
/// database = "sqlite://ferry.db"
/// migrate = true
/// from = { type = "nats", url = "nats://127.0.0.1:4222", stream = "FERRY", subject_prefix = "ferry." }
/// to = { type = "http", url = "http://127.0.0.1:8080/events" }
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Name in logs and metrics, unique in the file; also the consumer
    /// group of event topics unless `group` is set.
    pub name: toml::Spanned<String>,
    /// The topics to consume, as producers set them.
    pub topics: Vec<String>,
    /// `"event"` (default): the consumer is one group among any number that
    /// each get every message. `"command"`: the topics are commands with
    /// one owner; their group is derived from the topic, so two consumers of
    /// one command share its messages instead of each doing the work.
    #[serde(default)]
    pub kind: Kind,
    /// The consumer group of event topics (default: `name`). It names a
    /// durable queue or consumer on the broker: keep it stable.
    #[serde(default)]
    pub group: Option<String>,
    /// Where dead letters are recorded (`ferry_dead_letters`):
    /// `sqlite://path.db`, `postgres://…` or `mysql://…`.
    pub database: String,
    /// Apply Ferry's migrations to `database` at startup (default `false`).
    #[serde(default)]
    pub migrate: bool,
    /// The broker: `type = "nats"`, `"amqp"`, `"redis"`, `"kafka"` or
    /// `"sqs"`, and that broker's settings (docs/brokers.md).
    #[serde(deserialize_with = "valid_subscriber")]
    pub from: SubscriberConfig,
    /// Where each message goes: `type = "http"` (a CloudEvent in binary mode
    /// with `Idempotency-Key`, so the endpoint can drop duplicates), another
    /// broker (`"nats"`, `"amqp"`, `"redis"`, `"kafka"`, `"sqs"`), or
    /// `"null"`; and that sink's settings.
    #[serde(deserialize_with = "valid_sink")]
    pub to: SinkConfig,
    /// Prefetch, retries, timeout, circuit breaker, in-memory dedup, lag
    /// warnings and shutdown deadline; see docs/consume.md.
    #[serde(default, deserialize_with = "valid_router")]
    pub router: RouterConfig,
}

fn valid_subscriber<'de, D: Deserializer<'de>>(d: D) -> Result<SubscriberConfig, D::Error> {
    validated(d, |from: &SubscriberConfig| {
        from.validate().map_err(|e| error_chain(&e))
    })
}

fn valid_router<'de, D: Deserializer<'de>>(d: D) -> Result<RouterConfig, D::Error> {
    validated(d, |router: &RouterConfig| {
        router.validate().map_err(|e| error_chain(&e))
    })
}

/// Checks the `[[consumer]]` tables of a file whose text is `text`: unique
/// names, at least one topic, a database URL Ferry knows. The error starts
/// with the line of the consumer's name and names the key.
pub fn check(text: &str, consumers: &[ConsumerConfig]) -> Result<(), String> {
    let mut names = Names::new("consumer", text);
    for c in consumers {
        let line = names.line(&c.name)?;
        let name = c.name.get_ref();
        if c.topics.is_empty() {
            return Err(format!(
                "line {line}: consumer `{name}`: key `topics` must list at least one topic"
            ));
        }
        names.database(line, name, &c.database)?;
    }
    Ok(())
}

/// Everything a consumer needs, from the file or from `ferry consume` flags.
pub struct Consumer {
    pub name: String,
    pub topics: Vec<String>,
    pub kind: Kind,
    pub group: String,
    pub database: String,
    pub migrate: bool,
    pub from: SubscriberConfig,
    pub to: SinkConfig,
    pub router: RouterConfig,
}

impl From<&ConsumerConfig> for Consumer {
    fn from(c: &ConsumerConfig) -> Self {
        let name = c.name.get_ref().clone();
        Consumer {
            group: c.group.clone().unwrap_or_else(|| name.clone()),
            name,
            topics: c.topics.clone(),
            kind: c.kind,
            database: c.database.clone(),
            migrate: c.migrate,
            from: c.from.clone(),
            to: c.to.clone(),
            router: c.router.clone(),
        }
    }
}

impl Consumer {
    /// Connects everything and builds the router; `stats` is where its
    /// counters show up while it runs. A database that cannot be reached
    /// is retried with capped backoff (logged once); `None` when shut down
    /// before it answered.
    pub async fn start(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(Router, Stats)>> {
        let name = &self.name;
        let what = format!("consumer `{name}`");
        let backoff = ferry_relay::SinkBackoff {
            initial: self.router.resubscribe.initial_backoff,
            max: self.router.resubscribe.max_backoff,
        };
        let Some(db) = open_retrying(
            &self.database,
            &ferry_store::ConnectOptions::default(),
            self.migrate,
            &what,
            name,
            &backoff,
            shutdown,
        )
        .await?
        else {
            return Ok(None);
        };
        let subscriber: Arc<dyn Subscriber> = started(
            self.from.build().await,
            &what,
            &format!("{} subscriber", self.from.kind()),
        )?;
        let sink: Arc<dyn Sink> = started(
            self.to.build().await,
            &what,
            &format!("{} sink", self.to.kind()),
        )?;
        let mut builder = Router::builder()
            .subscriber(subscriber)
            .dead_letters(Arc::new(StoreDeadLetters::new(db)))
            .config(&self.router);
        for topic in &self.topics {
            let forward = Forward::new(sink.clone());
            builder = match self.kind {
                Kind::Event => builder.event(topic.clone(), self.group.clone(), forward),
                Kind::Command => builder.command(topic.clone(), forward),
            };
        }
        let router = builder
            .build()
            .map_err(|e| anyhow::anyhow!("consumer `{name}`: {}", error_chain(&e)))?;
        let stats = router.stats();
        Ok(Some((router, stats)))
    }

    /// Runs `router` until `shutdown`, logging what was given back.
    pub async fn run(
        name: String,
        router: Router,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let report = router
            .run(shutdown.cancelled_owned())
            .await
            .map_err(|e| anyhow::anyhow!("consumer `{name}`: {}", error_chain(&e)))?;
        let nacked = report.nacked();
        if nacked > 0 {
            tracing::info!(consumer = %name, nacked, "gave unfinished messages back to the broker");
        }
        Ok(())
    }
}
