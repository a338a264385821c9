//! The HTTP offset API: any program pages through the event store by
//! offset, in sequence order, and remembers where it stopped.
//!
//! * `GET /v1/events?offset=N&limit=M[&type=…][&source_type=…][&source_id=…][&wait=5s]`
//!   answers a [`PageBody`]: the events with `seq > offset` (at most
//!   `limit`, default 100, at most [`ApiConfig::max_limit`]) and the
//!   `next_offset` to ask for next. With `wait`, an empty page is held
//!   until an event arrives or the wait is over (long poll).
//! * `GET /v1/events/head`: the highest committed sequence number.
//!
//! A bad parameter is a 400 naming it (`{"error": "...", "parameter":
//! "limit"}`); a database failure is a 503 with a generic message (the
//! cause is logged, never sent). With a [`BearerToken`] set, every request
//! without it is a 401 with `WWW-Authenticate: Bearer`; [`serve`] and
//! [`ApiConfig::check_listen`] refuse a non-loopback address without one.
//!
//! Pages never show an event while a lower sequence number could still
//! commit (the event store's read horizon), so a reader that follows
//! `next_offset` sees every event once, in order; see
//! [`ferry_store::event_store`] and `docs/events-api.md`.

mod auth;
pub mod body;
pub mod params;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::header::RETRY_AFTER;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ferry_store::event_store::MAX_PAGE;
use ferry_store::{Database, StoreError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use auth::BearerToken;
pub use body::{ErrorBody, EventBody, HeadBody, PageBody};

/// `limit` when a request has none.
pub const DEFAULT_LIMIT: u32 = 100;
/// The default largest `limit`.
pub const DEFAULT_MAX_LIMIT: u32 = 1000;
/// The default longest `wait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);

/// How the API is served.
#[derive(Clone)]
pub struct ApiConfig {
    /// The token every request must carry as `Authorization: Bearer …`;
    /// `None` serves without authentication, which [`serve`] allows on a
    /// loopback address only.
    pub token: Option<BearerToken>,
    /// The largest `limit` a request may ask for (default
    /// [`DEFAULT_MAX_LIMIT`]; from 1 to [`MAX_PAGE`]). A request without
    /// `limit` gets [`DEFAULT_LIMIT`] or this, the smaller.
    pub max_limit: u32,
    /// The longest `wait` a request may ask for (default 30 s).
    pub max_wait: Duration,
    /// How often a waiting request looks for new events (default 100 ms).
    pub poll_interval: Duration,
    /// Cancelled when the server shuts down: waiting requests answer at
    /// once (with an empty page) instead of holding the shutdown up.
    pub shutdown: CancellationToken,
    /// Counts the requests held by `wait`; keep a clone to read it.
    pub waiting: WaitingPolls,
}

/// The long polls a server holds: how many wait right now, and how many
/// times they looked for new events and found none. Clones share the
/// counts.
#[derive(Clone, Debug, Default)]
pub struct WaitingPolls(Arc<WaitingCounts>);

#[derive(Debug, Default)]
struct WaitingCounts {
    held: AtomicUsize,
    empty_reads: AtomicU64,
}

impl WaitingPolls {
    /// Requests waiting for events now (they read an empty page and hold
    /// it until an event arrives, their wait is over or the server shuts
    /// down).
    pub fn held(&self) -> usize {
        self.0.held.load(Ordering::SeqCst)
    }

    /// Reads by waiting requests that found nothing, in total: it grows
    /// while requests wait.
    pub fn empty_reads(&self) -> u64 {
        self.0.empty_reads.load(Ordering::SeqCst)
    }

    fn hold(&self) -> Held {
        self.0.held.fetch_add(1, Ordering::SeqCst);
        Held(self.0.clone())
    }
}

/// One request counted in [`WaitingPolls::held`] until dropped (also when
/// the client goes away and the request's future is dropped).
struct Held(Arc<WaitingCounts>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_limit: DEFAULT_MAX_LIMIT,
            max_wait: DEFAULT_MAX_WAIT,
            poll_interval: Duration::from_millis(100),
            shutdown: CancellationToken::new(),
            waiting: WaitingPolls::default(),
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("token", &self.token)
            .field("max_limit", &self.max_limit)
            .field("max_wait", &self.max_wait)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

/// A configuration the API refuses to serve with. Fix the configuration;
/// retrying does not help.
#[derive(Debug, thiserror::Error)]
pub enum ApiConfigError {
    /// `max_limit` is 0 or above [`MAX_PAGE`].
    #[error("max_limit must be from 1 to {MAX_PAGE}, got {0}")]
    MaxLimit(u32),
    /// `poll_interval` is zero.
    #[error("poll_interval must be at least 1ms")]
    PollInterval,
    /// The token is empty.
    #[error("the bearer token must not be empty")]
    EmptyToken,
    /// The token has spaces or characters outside visible ASCII.
    #[error("the bearer token may hold only visible ASCII characters, without spaces")]
    TokenCharacters,
    /// No token, and an address other programs can reach.
    #[error(
        "refusing to serve the events api on {0} without a bearer token: \
         set a token, or listen on a loopback address"
    )]
    TokenRequired(SocketAddr),
}

impl ApiConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        if !(1..=MAX_PAGE).contains(&self.max_limit) {
            return Err(ApiConfigError::MaxLimit(self.max_limit));
        }
        if self.poll_interval.is_zero() {
            return Err(ApiConfigError::PollInterval);
        }
        Ok(())
    }

    /// Refuses to serve on `listen` without a token unless it is a loopback
    /// address (`127.0.0.0/8`, `::1`). An unspecified address (`0.0.0.0`,
    /// `::`) listens on every interface, so it needs a token too.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), ApiConfigError> {
        if self.token.is_none() && !listen.ip().to_canonical().is_loopback() {
            return Err(ApiConfigError::TokenRequired(listen));
        }
        Ok(())
    }

    fn bounds(&self) -> params::Bounds {
        params::Bounds {
            default_limit: DEFAULT_LIMIT.min(self.max_limit),
            max_limit: self.max_limit,
            max_wait: self.max_wait,
        }
    }
}

#[derive(Clone)]
struct ApiState {
    db: Database,
    config: Arc<ApiConfig>,
}

/// The API's routes (`/v1/events`, `/v1/events/head`), to serve alone or
/// merged into a bigger router. It does not know where it is served: call
/// [`ApiConfig::check_listen`] with the address (as [`serve`] does).
pub fn router(db: Database, config: ApiConfig) -> Result<Router, ApiConfigError> {
    config.validate()?;
    let token = Arc::new(config.token.clone());
    let state = ApiState {
        db,
        config: Arc::new(config),
    };
    Ok(Router::new()
        .route("/v1/events", get(list_events))
        .route("/v1/events/head", get(head))
        .with_state(state)
        .route_layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        )))
}

/// Why [`serve`] stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is refused; fix it.
    #[error("invalid events api configuration")]
    Config(#[from] ApiConfigError),
    /// The listener failed.
    #[error("the events api server failed")]
    Io(#[from] std::io::Error),
}

/// Serves the API, and `/health` (always open), on `listener` until
/// `config.shutdown` is cancelled. Refuses a non-loopback listener without
/// a token ([`ApiConfig::check_listen`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    db: Database,
    config: ApiConfig,
) -> Result<(), ServeError> {
    let listen = listener.local_addr()?;
    config.check_listen(listen)?;
    let shutdown = config.shutdown.clone();
    let app = router(db, config)?.route("/health", get(|| async { "ok\n" }));
    tracing::info!(%listen, "serving the events api");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn list_events(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let request = match params::parse(raw.as_deref().unwrap_or_default(), state.config.bounds()) {
        Ok(request) => request,
        Err(bad) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: bad.message,
                    parameter: Some(bad.parameter),
                }),
            )
                .into_response()
        }
    };
    let mut query = request.query;
    let deadline = Instant::now() + request.wait;
    let mut held = None;
    loop {
        let page = match state.db.read_events(&query).await {
            Ok(page) => page,
            Err(e) => return unavailable(&e),
        };
        let now = Instant::now();
        if !page.events.is_empty() || now >= deadline || state.config.shutdown.is_cancelled() {
            return Json(PageBody::from(page)).into_response();
        }
        // Nothing up to `next_offset` matches: look only past it.
        query.offset = page.next_offset;
        let waiting = &state.config.waiting;
        held.get_or_insert_with(|| waiting.hold());
        waiting.0.empty_reads.fetch_add(1, Ordering::SeqCst);
        let pause = state.config.poll_interval.min(deadline - now);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = state.config.shutdown.cancelled() => {}
        }
    }
}

async fn head(State(state): State<ApiState>) -> Response {
    match state.db.event_head().await {
        Ok(head) => Json(HeadBody { head }).into_response(),
        Err(e) => unavailable(&e),
    }
}

/// A 503 that says nothing of the cause, which is logged instead.
fn unavailable(e: &StoreError) -> Response {
    tracing::error!(error = %ferry_core::error_chain(e), "events api: cannot read the event store");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(RETRY_AFTER, "1")],
        Json(ErrorBody {
            error: "the event store is unavailable; try again later".to_owned(),
            parameter: None,
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_go_without_a_token() {
        let open = ApiConfig::default();
        for addr in [
            "127.0.0.1:80",
            "127.1.2.3:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(open.check_listen(addr.parse().unwrap()).is_ok(), "{addr}");
        }
        for addr in ["0.0.0.0:80", "[::]:80", "10.0.0.5:80", "[2001:db8::1]:80"] {
            let e = open.check_listen(addr.parse().unwrap()).unwrap_err();
            assert!(matches!(e, ApiConfigError::TokenRequired(_)), "{addr}");
            assert!(e.to_string().contains("without a bearer token"), "{e}");
        }
        let closed = ApiConfig {
            token: Some(BearerToken::new("t").unwrap()),
            ..ApiConfig::default()
        };
        assert!(closed.check_listen("0.0.0.0:80".parse().unwrap()).is_ok());
    }

    #[test]
    fn limits_are_bounded_by_the_store() {
        for bad in [0, MAX_PAGE + 1] {
            let c = ApiConfig {
                max_limit: bad,
                ..ApiConfig::default()
            };
            assert!(matches!(c.validate(), Err(ApiConfigError::MaxLimit(_))));
        }
        let c = ApiConfig {
            max_limit: 10,
            ..ApiConfig::default()
        };
        assert!(c.validate().is_ok());
        assert_eq!(c.bounds().default_limit, 10);
        assert!(!format!(
            "{:?}",
            ApiConfig {
                token: Some(BearerToken::new("hidden").unwrap()),
                ..ApiConfig::default()
            }
        )
        .contains("hidden"));
    }
}
