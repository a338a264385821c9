//! The event store's HTTP offset API in the daemon: `ferry serve`, and
//! `[events_api]` on the `[http]` port of `ferry run`.

use std::net::SocketAddr;

use anyhow::Context;
use ferry_events::api::{self, ApiConfig};
use ferry_relay::CancellationToken;
use ferry_store::Database;

use crate::config::{EventsApiConfig, HttpConfig};
use crate::pipeline::{connect_retrying, prepare_schema};

/// Connects to the event store (retrying while it is unreachable), checks
/// or migrates its schema, and returns the API's routes; `None` when shut
/// down before the database was reached.
pub async fn router(
    events: &EventsApiConfig,
    http: &HttpConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<axum::Router>> {
    let config = ApiConfig {
        shutdown: shutdown.clone(),
        ..events.api_config(http).map_err(anyhow::Error::msg)?
    };
    let Some(db) = connect(&events.database, events.migrate, shutdown).await? else {
        return Ok(None);
    };
    tracing::info!(listen = %http.listen, "serving the events api on /v1/events");
    Ok(Some(api::router(db, config)?))
}

/// `ferry serve`: the events API and `/health` on `listen` until
/// `shutdown`.
pub async fn serve(
    database: &str,
    migrate: bool,
    listen: SocketAddr,
    config: ApiConfig,
) -> anyhow::Result<()> {
    config.validate().context("--max-limit")?;
    // Refused before anything else: a daemon that would come up open to the
    // network must not come up at all.
    config.check_listen(listen)?;
    let Some(db) = connect(database, migrate, &config.shutdown).await? else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    api::serve(listener, db, config).await?;
    Ok(())
}

async fn connect(
    url: &str,
    migrate: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Database>> {
    let Some(db) = connect_retrying(
        url,
        &ferry_store::ConnectOptions::default(),
        "events api",
        "events-api",
        &ferry_relay::SinkBackoff::default(),
        shutdown,
    )
    .await?
    else {
        return Ok(None);
    };
    prepare_schema(&db, migrate, "events api", url).await?;
    Ok(Some(db))
}
