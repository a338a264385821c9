//! The shop: the process the demo crashes and restarts.
//!
//! It serves, on one address:
//!
//! * `POST /orders/{id}/cancel`: sets the order's status and appends an
//!   `order.cancelled` event to Ferry's event store, in one SQLite
//!   transaction, and answers at once. It never calls the payment service.
//!   Cancelling a cancelled order answers 200 again without a second event,
//!   so a client may repeat a request whose answer it lost.
//! * `GET /v1/events`, `GET /v1/events/head`: Ferry's HTTP offset API over
//!   the same event store, for consumers outside the process.
//!
//! With [`RefundOptions`], it also runs a forwarder named [`FORWARDER`]
//! that hands each event to the [`RefundHandler`], after commit, from the
//! offset it saved in the event store: whatever the process had committed
//! before a crash is refunded after the restart.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_core::RetryPolicy;
use ferry_events::api::ApiConfig;
use ferry_events::forwarder::{Forwarder, ForwarderConfig, OnFailure};
use ferry_relay::SinkBackoff;
use ferry_store::event_store::{sqlite::append, NewEvent};
use ferry_store::{ConnectOptions, Database};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

use crate::orders::{OrderCancelled, ORDER_CANCELLED, SOURCE_TYPE};
use crate::refund::RefundHandler;

/// The forwarder's name: its offset is kept under it in
/// `ferry_event_offsets`.
pub const FORWARDER: &str = "refunds";

/// The first word of the line the shop prints on stdout once it serves
/// (followed by its address).
pub const READY: &str = "ready";

/// How the shop runs.
#[derive(Clone, Debug)]
pub struct ShopOptions {
    /// The SQLite database, `sqlite://path`, migrated and seeded already.
    pub database: String,
    /// Where to serve.
    pub listen: SocketAddr,
    /// Refund cancelled orders (run the forwarder); `None` serves only.
    pub refunds: Option<RefundOptions>,
}

/// How the forwarder refunds.
#[derive(Clone, Debug)]
pub struct RefundOptions {
    /// The payment service's refund endpoint.
    pub payment_url: String,
    /// Events per page; the forwarder saves its offset after each page.
    pub batch_size: u32,
    /// Retries of a failed refund call.
    pub retry: RetryPolicy,
    /// Time limit of one refund call.
    pub call_timeout: Duration,
}

/// Runs the shop until `stop` completes, then shuts down gracefully (the
/// forwarder finishes the call in flight and saves its offset). Fails if
/// the forwarder stops on its own (it gave up on an event).
pub async fn run(options: ShopOptions, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    // One connection: SQLite has one writer at a time, and sqlx's pool
    // queue hands the connection over at once (see the signup-coupon demo).
    let db = Database::connect_with(
        &options.database,
        &ConnectOptions {
            max_connections: 1,
            lease: None,
        },
    )
    .await
    .with_context(|| format!("could not open {}", options.database))?;
    let Database::Sqlite(pool) = &db else {
        anyhow::bail!("the shop runs on SQLite only");
    };
    // Cancelled on every way out, so no task outlives the shop.
    let shutdown = CancellationToken::new();
    let _stop_on_error = shutdown.clone().drop_guard();

    let listener = bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let api_config = ApiConfig {
        poll_interval: Duration::from_millis(20),
        shutdown: shutdown.clone(),
        ..ApiConfig::default()
    };
    api_config.check_listen(addr)?;
    let app = Router::new()
        .route("/orders/{id}/cancel", post(cancel))
        .with_state(pool.clone())
        .merge(ferry_events::api::router(db.clone(), api_config)?)
        .route("/health", get(|| async { "ok\n" }));
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    });

    let forwarder = match &options.refunds {
        Some(refunds) => {
            let handler = RefundHandler::new(&refunds.payment_url, refunds.call_timeout)?;
            let forwarder = Forwarder::to_handler(&db, handler, forwarder_config(refunds));
            Some(forwarder.spawn(&shutdown))
        }
        None => None,
    };

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY} {addr}")?;
        out.flush()?;
    }

    let forwarded = match forwarder {
        Some(running) => {
            let finished = running.finished();
            tokio::pin!(finished);
            tokio::select! {
                _ = stop => {
                    shutdown.cancel();
                    finished.await.context("the refund forwarder failed")
                }
                ended = &mut finished => match ended {
                    Ok(()) => Err(anyhow::anyhow!("the refund forwarder stopped on its own")),
                    Err(e) => Err(anyhow::Error::new(e).context("the refund forwarder stopped")),
                },
            }
        }
        None => {
            stop.await;
            Ok(())
        }
    };
    shutdown.cancel();
    server.await.context("shop server task failed")??;
    db.close().await;
    forwarded
}

/// Fast settings for a demo: a production forwarder would back off longer.
fn forwarder_config(refunds: &RefundOptions) -> ForwarderConfig {
    ForwarderConfig {
        name: FORWARDER.to_owned(),
        batch_size: refunds.batch_size,
        poll_interval: Duration::from_millis(50),
        retry: refunds.retry.clone(),
        on_failure: OnFailure::Stop,
        backoff: SinkBackoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        },
        shutdown_grace: Duration::from_secs(2),
    }
}

/// Binds `addr`, trying for a few seconds: the shop's previous process may
/// have been killed a moment ago.
async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%addr, error = %e, "cannot listen yet; trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
        }
    }
}

/// The answer to a cancellation.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct CancelResponse {
    /// The order.
    pub order_id: i64,
    /// `cancelled` (by this request) or `already_cancelled`.
    pub outcome: String,
    /// The sequence number of the `order.cancelled` event this request
    /// appended; none when the order was cancelled already.
    pub event_seq: Option<i64>,
}

/// `cancelled`: this request cancelled the order.
pub const CANCELLED: &str = "cancelled";
/// `already_cancelled`: an earlier request had.
pub const ALREADY_CANCELLED: &str = "already_cancelled";

async fn cancel(
    State(pool): State<SqlitePool>,
    Path(order_id): Path<i64>,
) -> Result<Json<CancelResponse>, CancelError> {
    let mut tx = pool.begin().await.map_err(CancelError::internal)?;
    let amount: Option<i64> = sqlx::query_scalar(
        "UPDATE orders
         SET status = 'cancelled', cancelled_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE id = ? AND status = 'open'
         RETURNING amount_cents",
    )
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(CancelError::internal)?;
    let Some(amount_cents) = amount else {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = ?")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(CancelError::internal)?;
        // Nothing written: the transaction rolls back when dropped.
        return match status.as_deref() {
            None => Err(CancelError::NotFound),
            Some("cancelled") => Ok(Json(CancelResponse {
                order_id,
                outcome: ALREADY_CANCELLED.to_owned(),
                event_seq: None,
            })),
            Some(_) => Err(CancelError::NotCancellable),
        };
    };
    let payload = serde_json::to_vec(&OrderCancelled {
        order_id,
        amount_cents,
    })
    .map_err(CancelError::internal)?;
    let event =
        NewEvent::new(ORDER_CANCELLED, payload).with_source(SOURCE_TYPE, order_id.to_string());
    let seqs = append(&mut tx, &[event])
        .await
        .map_err(CancelError::internal)?;
    tx.commit().await.map_err(CancelError::internal)?;
    Ok(Json(CancelResponse {
        order_id,
        outcome: CANCELLED.to_owned(),
        event_seq: seqs.first().copied(),
    }))
}

/// Why a cancellation was refused. Internal errors are logged here and
/// reach the client without details.
enum CancelError {
    NotFound,
    NotCancellable,
    Internal,
}

impl CancelError {
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "cancellation failed");
        CancelError::Internal
    }
}

impl IntoResponse for CancelError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            CancelError::NotFound => (StatusCode::NOT_FOUND, "no such order"),
            CancelError::NotCancellable => (
                StatusCode::CONFLICT,
                "the order has shipped and can no longer be cancelled",
            ),
            CancelError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
