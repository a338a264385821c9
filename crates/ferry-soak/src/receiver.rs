//! The soak's HTTP receivers, one axum server:
//!
//! - `POST /effects/{path}`: the endpoint `ferry consume` hands each
//!   message to. It applies the message's effect (a row of `soak_effects`)
//!   and its inbox row (`ferry_inbox`, consumer = path) in one transaction,
//!   on PostgreSQL or MariaDB by path; poison is refused for good (400); a
//!   database error answers 503 (retried).
//! - `POST /webhook`: the relays' webhook sink, applying the same way into
//!   PostgreSQL, and which the fault schedule can make stall (apply after the
//!   sender's timeout, then answer) or answer 500 / 503.
//! - `POST /webhook/{path}`: the same webhook (and faults) for another
//!   path: the event store's forwarder posts to `/webhook/fwd`, the CDC
//!   captures their change events to `/webhook/cdc`, `/webhook/binlog`
//!   and `/webhook/triggers`
//!   (the effect's id is the change's own, see `cdc.rs`; the inbox keys on
//!   `ce-id`).
//!
//! The effect tables have no unique constraint: a message applied twice
//! shows as two rows, which is what the checker counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use ferry_core::MessageId;
use ferry_store::inbox::{self, Recorded};
use sqlx::{MySqlPool, PgPool};
use uuid::Uuid;

/// Where a path's effects go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffectDb {
    /// The private PostgreSQL's `soak_effects` database.
    Postgres,
    /// MariaDB, through the proxy.
    Mariadb,
}

/// How the webhook answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Webhook {
    /// Applies and answers 200.
    Up,
    /// Waits this long, then applies and answers (the sender has given up).
    Stall(Duration),
    /// Answers this status without applying.
    Fail(u16),
}

/// Counters for the summary.
#[derive(Default)]
pub struct Counts {
    /// Requests that were a first application.
    pub applied: AtomicU64,
    /// Requests the inbox recognised as already applied.
    pub duplicates: AtomicU64,
    /// Requests answered 5xx because a database failed.
    pub db_errors: AtomicU64,
    /// Requests the webhook failed or stalled on purpose.
    pub faulted: AtomicU64,
}

/// The receivers' shared state.
pub struct Receivers {
    pg: PgPool,
    mariadb: MySqlPool,
    routes: HashMap<String, EffectDb>,
    webhook: Mutex<Webhook>,
    /// Counters.
    pub counts: Counts,
}

impl Receivers {
    /// Serves on `listener`.
    pub fn serve(
        listener: tokio::net::TcpListener,
        pg: PgPool,
        mariadb: MySqlPool,
        routes: HashMap<String, EffectDb>,
    ) -> Arc<Self> {
        let state = Arc::new(Self {
            pg,
            mariadb,
            routes,
            webhook: Mutex::new(Webhook::Up),
            counts: Counts::default(),
        });
        let app = axum::Router::new()
            .route("/effects/{path}", post(effect))
            .route("/webhook", post(webhook))
            .route("/webhook/{path}", post(webhook_path))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        state
    }

    /// Switches the webhook's behaviour.
    pub fn set_webhook(&self, mode: Webhook) {
        *self.webhook.lock().unwrap() = mode;
    }

    async fn apply(
        &self,
        path: &str,
        db: EffectDb,
        headers: &HeaderMap,
        body: &[u8],
    ) -> StatusCode {
        let Some(m) = parse(path, headers, body) else {
            return StatusCode::BAD_REQUEST;
        };
        if m.poison {
            // Refused for good: the sender dead-letters it.
            return StatusCode::UNPROCESSABLE_ENTITY;
        }
        let applied = match db {
            EffectDb::Postgres => apply_pg(&self.pg, path, &m).await,
            EffectDb::Mariadb => apply_mariadb(&self.mariadb, path, &m).await,
        };
        match applied {
            Ok(Recorded::First) => {
                self.counts.applied.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            }
            Ok(Recorded::Duplicate) => {
                self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            }
            Err(_) => {
                self.counts.db_errors.fetch_add(1, Ordering::Relaxed);
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

struct Incoming {
    /// The delivery's id (`ce-id`): the inbox's key.
    inbox_id: Uuid,
    /// The effect's id: the message's, or a change's own (CDC).
    id: Uuid,
    key: String,
    n: i64,
    poison: bool,
}

fn parse(path: &str, headers: &HeaderMap, body: &[u8]) -> Option<Incoming> {
    let id = headers.get("ce-id")?.to_str().ok()?.parse().ok()?;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if [
        crate::cdc::PATH,
        crate::cdc::BINLOG_PATH,
        crate::cdc::TRIGGERS_PATH,
    ]
    .contains(&path)
    {
        let c = crate::cdc::parse_event(&v)?;
        return Some(Incoming {
            inbox_id: id,
            id: c.id,
            key: c.row.to_string(),
            n: c.seq,
            poison: false,
        });
    }
    Some(Incoming {
        inbox_id: id,
        id,
        key: v.get("key")?.as_str()?.to_owned(),
        n: v.get("n")?.as_i64()?,
        poison: v.get("poison")?.as_bool()?,
    })
}

async fn apply_pg(pool: &PgPool, path: &str, m: &Incoming) -> anyhow::Result<Recorded> {
    let mut tx = pool.begin().await?;
    let r = inbox::postgres::record(&mut tx, path, MessageId(m.inbox_id)).await?;
    if r == Recorded::First {
        sqlx::query(
            "INSERT INTO soak_effects (path, message_id, msg_key, n) VALUES ($1, $2, $3, $4)",
        )
        .bind(path)
        .bind(m.id)
        .bind(&m.key)
        .bind(m.n)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(r)
}

async fn apply_mariadb(pool: &MySqlPool, path: &str, m: &Incoming) -> anyhow::Result<Recorded> {
    let mut tx = pool.begin().await?;
    let r = inbox::mysql::record(&mut tx, path, MessageId(m.inbox_id)).await?;
    if r == Recorded::First {
        sqlx::query("INSERT INTO soak_effects (path, message_id, msg_key, n) VALUES (?, ?, ?, ?)")
            .bind(path)
            .bind(m.id.to_string())
            .bind(&m.key)
            .bind(m.n)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(r)
}

async fn effect(
    State(s): State<Arc<Receivers>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(db) = s.routes.get(&path).copied() else {
        return StatusCode::NOT_FOUND;
    };
    s.apply(&path, db, &headers, &body).await
}

async fn webhook(State(s): State<Arc<Receivers>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    faulty_webhook(&s, "http", EffectDb::Postgres, &headers, &body).await
}

async fn webhook_path(
    State(s): State<Arc<Receivers>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(db) = s.routes.get(&path).copied() else {
        return StatusCode::NOT_FOUND;
    };
    faulty_webhook(&s, &path, db, &headers, &body).await
}

/// The webhook's current fault, then the application.
async fn faulty_webhook(
    s: &Receivers,
    path: &str,
    db: EffectDb,
    headers: &HeaderMap,
    body: &[u8],
) -> StatusCode {
    let mode = *s.webhook.lock().unwrap();
    match mode {
        Webhook::Up => {}
        Webhook::Fail(status) => {
            s.counts.faulted.fetch_add(1, Ordering::Relaxed);
            return StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        }
        Webhook::Stall(d) => {
            s.counts.faulted.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d).await;
        }
    }
    s.apply(path, db, headers, body).await
}
