//! Runs one relay pipeline: connect (retrying while the database is down),
//! migrate or check the schema, start the sink, relay until shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_core::{RetryPolicy, Sink};
use ferry_relay::{CancellationToken, Health, OrderPolicy, RelayConfig, Retention};
use ferry_sinks::SinkConfig;
use ferry_store::{redact, Database, StoreError};

use crate::config::{error_chain, PipelineConfig};

/// Everything a pipeline needs, from the file or from `ferry relay` flags.
pub struct Pipeline {
    pub database: String,
    pub migrate: bool,
    pub sink: SinkConfig,
    pub relay: RelayConfig,
}

impl From<&PipelineConfig> for Pipeline {
    fn from(p: &PipelineConfig) -> Self {
        Pipeline {
            database: p.database.clone(),
            migrate: p.migrate,
            sink: p.sink.clone(),
            relay: RelayConfig {
                name: p.name.get_ref().clone(),
                batch_size: p.batch_size.get(),
                concurrency: p.concurrency.get() as usize,
                order: p.order,
                topics: p.topics.clone(),
                poll_interval: p.poll_interval,
                retry: p.retry.clone(),
                sink_backoff: p.sink_backoff.clone(),
                retention: p.retention(),
                lease: p.lease,
                shutdown_grace: p.shutdown_grace,
            },
        }
    }
}

impl Pipeline {
    /// A pipeline from `ferry relay` flags.
    #[allow(clippy::too_many_arguments)]
    pub fn quick(
        database: String,
        sink: SinkConfig,
        order: OrderPolicy,
        batch_size: u32,
        concurrency: usize,
        topics: Option<Vec<String>>,
        retry: RetryPolicy,
        retention: Duration,
        migrate: bool,
    ) -> Self {
        Pipeline {
            database,
            migrate,
            sink,
            relay: RelayConfig {
                batch_size,
                concurrency,
                order,
                topics,
                retry,
                retention: Retention::from_duration(retention),
                ..RelayConfig::default()
            },
        }
    }

    /// Runs until `shutdown`; an error means it could not start.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let name = self.relay.name.clone();
        let Some(db) = connect(&self, &shutdown).await? else {
            return Ok(());
        };
        prepare_schema(
            &db,
            self.migrate,
            &format!("pipeline `{name}`"),
            &self.database,
        )
        .await?;
        let sink: Arc<dyn Sink> = self.sink.build().await.map_err(|e| {
            anyhow::anyhow!(
                "pipeline `{name}`: cannot start the sink: {}",
                error_chain(&e)
            )
        })?;
        ferry_relay::spawn_until(&db, sink, self.relay, &shutdown)
            .finished()
            .await?;
        Ok(())
    }
}

/// Applies Ferry's migrations when `migrate` is set, else checks that the
/// schema is there and at the version this binary knows (neither older nor
/// newer). `what` names the pipeline or consumer in errors.
pub async fn prepare_schema(
    db: &Database,
    migrate: bool,
    what: &str,
    url: &str,
) -> anyhow::Result<()> {
    if migrate {
        let applied = db
            .migrate()
            .await
            .with_context(|| format!("{what}: migration failed"))?;
        if !applied.is_empty() {
            tracing::info!(%what, ?applied, "applied migrations");
        }
        return Ok(());
    }
    match db.check_schema().await {
        Err(StoreError::SchemaMissing) => bail!(
            "{what}: the database has no Ferry tables yet; run `ferry migrate --database {}` \
             or set `migrate = true`",
            redact(url)
        ),
        checked => checked.with_context(|| format!("{what}: schema check failed")),
    }
}

/// Connects, retrying with the pipeline's `sink_backoff` while the database
/// is unreachable (logged once), failing at once on errors no retry fixes.
/// `None` when shut down before connecting.
async fn connect(p: &Pipeline, shutdown: &CancellationToken) -> anyhow::Result<Option<Database>> {
    let options = p.relay.connect_options();
    connect_retrying(
        &p.database,
        &options,
        &format!("pipeline `{}`", p.relay.name),
        &p.relay.name,
        &p.relay.sink_backoff,
        shutdown,
    )
    .await
}

/// Connects to `url`, retrying with `backoff` while the database is
/// unreachable (logged when it goes down and when it is back), failing at
/// once on errors no retry fixes. `None` when shut down before connecting.
/// `what` names the pipeline or consumer in errors, `name` in logs.
pub async fn connect_retrying(
    url: &str,
    options: &ferry_store::ConnectOptions,
    what: &str,
    name: &str,
    backoff: &ferry_relay::SinkBackoff,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Database>> {
    let health = Health::new("database", name, backoff).with_words("unreachable", "reachable");
    loop {
        match Database::connect_with(url, options).await {
            Ok(db) => {
                health.succeeded();
                return Ok(Some(db));
            }
            Err(e) if e.is_retryable() => {
                health.failed(&format!("{} ({})", error_chain(&e), redact(url)));
                tokio::select! {
                    _ = tokio::time::sleep(health.pause_left().unwrap_or_default()) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
            Err(e) => bail!("{what}: {}", error_chain(&e)),
        }
    }
}
