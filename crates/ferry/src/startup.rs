//! Start-up steps every subcommand shares: connecting to a database with
//! retries, preparing its schema, and checking sink settings as the
//! configuration file is read. A leaf: it uses none of the subcommand
//! modules, which all use it.

use std::collections::HashMap;

use anyhow::{bail, Context};
use ferry_adapters::{SinkConfig, SinkConfigError};
use ferry_core::RetryPolicy;
use ferry_relay::{CancellationToken, Health, SinkBackoff};
use ferry_store::{redact, ConnectOptions, Database, StoreError};
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

/// Connects to `url` ([`connect_retrying`]), then migrates or checks its
/// schema ([`prepare_schema`]). `None` when shut down before connecting.
pub async fn open_retrying(
    url: &str,
    options: &ConnectOptions,
    migrate: bool,
    what: &str,
    name: &str,
    backoff: &SinkBackoff,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Database>> {
    let Some(db) = connect_retrying(url, options, what, name, backoff, shutdown).await? else {
        return Ok(None);
    };
    prepare_schema(&db, migrate, what, url).await?;
    Ok(Some(db))
}

/// Connects to `url`, retrying with `backoff` while the database is
/// unreachable (logged when it goes down and when it is back), failing at
/// once on errors no retry fixes. `None` when shut down before connecting.
/// `what` names the pipeline or consumer in errors, `name` in logs.
pub async fn connect_retrying(
    url: &str,
    options: &ConnectOptions,
    what: &str,
    name: &str,
    backoff: &SinkBackoff,
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

/// What `build` gave, or the error `{what}: cannot start the {thing}: …`
/// (`thing` a sink or a subscriber).
pub(crate) fn started<T>(
    built: Result<T, SinkConfigError>,
    what: &str,
    thing: &str,
) -> anyhow::Result<T> {
    built.map_err(|e| anyhow::anyhow!("{what}: cannot start the {thing}: {}", error_chain(&e)))
}

/// Reads a table and checks it with `check`, so that a bad setting is an
/// error of the file, with its line.
pub(crate) fn validated<'de, D, T, E>(
    d: D,
    check: impl FnOnce(&T) -> Result<(), E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
    E: std::fmt::Display,
{
    let table = T::deserialize(d)?;
    check(&table).map_err(serde::de::Error::custom)?;
    Ok(table)
}

/// Reads a sink table and validates it.
pub(crate) fn valid_sink<'de, D: Deserializer<'de>>(d: D) -> Result<SinkConfig, D::Error> {
    validated(d, |sink: &SinkConfig| {
        sink.validate().map_err(|e| error_chain(&e))
    })
}

/// Reads a `retry` table and validates it.
pub(crate) fn valid_retry<'de, D: Deserializer<'de>>(d: D) -> Result<RetryPolicy, D::Error> {
    validated(d, RetryPolicy::validate)
}

/// The line (from 1) of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The names of one kind of table in a file (`pipeline`, `consumer`,
/// `forwarder`), checked as they are read: each must be unique.
pub(crate) struct Names<'a> {
    kind: &'static str,
    text: &'a str,
    seen: HashMap<String, usize>,
}

impl<'a> Names<'a> {
    /// The `kind` tables of the file whose text is `text`.
    pub fn new(kind: &'static str, text: &'a str) -> Self {
        Self {
            kind,
            text,
            seen: HashMap::new(),
        }
    }

    /// The line of `name`, or an error if a table before it had that name.
    pub fn line(&mut self, name: &toml::Spanned<String>) -> Result<usize, String> {
        let line = line_of(self.text, name.span().start);
        let kind = self.kind;
        match self.seen.insert(name.get_ref().clone(), line) {
            Some(first) => Err(format!(
                "line {line}: key `{kind}.name`: {kind} `{}` is defined twice (first at line {first})",
                name.get_ref()
            )),
            None => Ok(line),
        }
    }

    /// Checks that `database`, of the table `name` at `line`, is a URL
    /// Ferry knows.
    pub fn database(&self, line: usize, name: &str, database: &str) -> Result<(), String> {
        ferry_store::DatabaseKind::of(database)
            .map(drop)
            .map_err(|e| {
                format!(
                    "line {line}: {} `{name}`: key `database`: {}",
                    self.kind,
                    error_chain(&e)
                )
            })
    }
}
