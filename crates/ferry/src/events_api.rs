//! The event store's HTTP offset API in the daemon: `ferry serve`, and
//! `[events_api]` on the `[http]` port of `ferry run`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use ferry_events::api::{self, ApiConfig};
use ferry_relay::CancellationToken;
use ferry_store::Database;
use serde::Deserialize;

use crate::metrics::HttpConfig;
use crate::startup::{error_chain, open_retrying};

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

    /// Checks the table against `http`, the file's `[http]`: the API is
    /// served there, so it must be present, and its token must fit.
    pub fn check(&self, http: Option<&HttpConfig>) -> Result<(), String> {
        let Some(http) = http else {
            return Err("[events_api] is served on the daemon's HTTP port: \
                        add [http] with `listen`"
                .to_owned());
        };
        if let Err(e) = ferry_store::DatabaseKind::of(&self.database) {
            return Err(format!("key `events_api.database`: {}", error_chain(&e)));
        }
        self.api_config(http).map(drop)
    }
}

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
///
/// With `admin_tokens`, the admin API (`/v1/admin`) and the console
/// (`/ui`) over the same database are served beside it.
pub async fn serve(
    database: &str,
    migrate: bool,
    listen: SocketAddr,
    config: ApiConfig,
    admin_tokens: Vec<ferry_admin::ApiToken>,
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
    if admin_tokens.is_empty() {
        api::serve(listener, db, config).await?;
        return Ok(());
    }
    let shutdown = config.shutdown.clone();
    let admin = ferry_admin::Admin::new(
        std::sync::Arc::new(crate::admin::StoreView::new(db.clone())),
        ferry_admin::AdminConfig::with_tokens(admin_tokens),
    );
    drop(admin.spawn_sampler(shutdown.clone()));
    let app = api::router(db, config)?
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .merge(ferry_admin::router(admin.clone()));
    tracing::info!(%listen, "serving the events api, the admin api on /v1/admin and the console on /ui");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("the http server failed")?;
    admin.finish_jobs(crate::admin::BULK_JOB_GRACE).await;
    Ok(())
}

async fn connect(
    url: &str,
    migrate: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Database>> {
    open_retrying(
        url,
        &ferry_store::ConnectOptions::default(),
        migrate,
        "events api",
        "events-api",
        &ferry_relay::SinkBackoff::default(),
        shutdown,
    )
    .await
}
