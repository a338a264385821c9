//! Start-up steps every subcommand shares: connecting to a database with
//! retries, preparing its schema, and checking sink settings as the
//! configuration file is read. A leaf: it uses none of the subcommand
//! modules, which all use it.

use anyhow::{bail, Context};
use ferry_adapters::SinkConfig;
use ferry_core::RetryPolicy;
use ferry_relay::{CancellationToken, Health};
use ferry_store::{redact, Database, StoreError};
use serde::{Deserialize, Deserializer};

pub(crate) use ferry_core::error_chain;

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

/// Reads a sink table and validates it, so that a bad setting is an error
/// of the file, with its line.
pub(crate) fn valid_sink<'de, D: Deserializer<'de>>(d: D) -> Result<SinkConfig, D::Error> {
    let sink = SinkConfig::deserialize(d)?;
    sink.validate()
        .map_err(|e| serde::de::Error::custom(error_chain(&e)))?;
    Ok(sink)
}

/// Reads a `retry` table and validates it.
pub(crate) fn valid_retry<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
    let retry = RetryPolicy::deserialize(d)?;
    retry.validate().map_err(serde::de::Error::custom)?;
    Ok(retry)
}

/// The line (from 1) of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
