//! The signup service: writes the user and a `user.signed_up` outbox
//! message in one transaction, and never calls the coupon service.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ferry_core::Message;
use ferry_relay::CancellationToken;
use ferry_store::outbox::sqlite::{enqueue, Waker};
use sqlx::SqlitePool;
use tokio::task::JoinHandle;

/// The topic of the message a signup writes.
pub const TOPIC: &str = "user.signed_up";

/// Creates the demo's `users` table; fails if it already holds users, since
/// the demo's counts assume a fresh database.
pub async fn create_schema(pool: &SqlitePool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            email      TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        )",
    )
    .execute(pool)
    .await?;
    let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        existing == 0,
        "the database already has {existing} users from an earlier run; give a fresh file"
    );
    Ok(())
}

/// The ids of every user signed up so far.
pub async fn user_ids(pool: &SqlitePool) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar("SELECT id FROM users ORDER BY id")
        .fetch_all(pool)
        .await?)
}

#[derive(Clone)]
struct AppState {
    pool: SqlitePool,
    waker: Waker,
}

/// The running signup service.
pub struct SignupService {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl SignupService {
    /// Starts the service on a random port of 127.0.0.1. After each commit it
    /// wakes the in-process relay through `waker`. It stops when `shutdown`
    /// is cancelled.
    pub async fn start(
        pool: SqlitePool,
        waker: Waker,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let app = Router::new()
            .route("/signup", post(signup))
            .with_state(AppState { pool, waker });
        let (addr, task) = crate::serve(app, shutdown).await?;
        Ok(Self { addr, task })
    }

    /// The signup endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/signup", self.addr)
    }

    /// Waits for the server to stop.
    pub async fn finish(self) -> anyhow::Result<()> {
        Ok(self.task.await??)
    }
}

#[derive(serde::Deserialize)]
struct SignupRequest {
    email: String,
}

#[derive(serde::Serialize)]
struct SignupResponse {
    user_id: i64,
}

async fn signup(
    State(app): State<AppState>,
    Json(request): Json<SignupRequest>,
) -> Result<(StatusCode, Json<SignupResponse>), SignupError> {
    let email = request.email.trim();
    if email.is_empty() || !email.contains('@') {
        return Err(SignupError::InvalidEmail);
    }
    let mut tx = app.pool.begin().await.map_err(SignupError::internal)?;
    let user_id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES (?) RETURNING id")
        .bind(email)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => SignupError::EmailTaken,
            _ => SignupError::internal(e),
        })?;
    let payload = serde_json::json!({ "user_id": user_id, "email": email });
    let message = Message::event(TOPIC, payload.to_string()).with_key(format!("user-{user_id}"));
    enqueue(&mut tx, &message)
        .await
        .map_err(SignupError::internal)?;
    tx.commit().await.map_err(SignupError::internal)?;
    // After the commit, never before: the relay must find the row when it looks.
    app.waker.wake();
    Ok((StatusCode::CREATED, Json(SignupResponse { user_id })))
}

/// Why a signup was refused. Internal errors are logged here and reach the
/// client without details.
enum SignupError {
    InvalidEmail,
    EmailTaken,
    Internal,
}

impl SignupError {
    fn internal(e: impl std::error::Error) -> Self {
        tracing::error!(error = %e, "signup failed");
        SignupError::Internal
    }
}

impl IntoResponse for SignupError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            SignupError::InvalidEmail => (StatusCode::UNPROCESSABLE_ENTITY, "invalid email"),
            SignupError::EmailTaken => (StatusCode::CONFLICT, "email already signed up"),
            SignupError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
