//! The outbox on PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Message;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::Notify;

use super::{
    claimed, headers_to_json, ClaimFilter, Claimed, ClaimedBatch, OrderPolicy, Outbox, Outcome,
    Retention,
};
use crate::StoreError;

/// The NOTIFY channel the outbox's insert trigger signals.
pub const CHANNEL: &str = "ferry_outbox";

/// Writes `message` to the outbox on `conn`, which should be the caller's
/// open transaction (`&mut *tx`): the message then commits or rolls back
/// with the caller's own changes. Returns the message's sequence number.
///
/// A payload that is valid UTF-8 without NUL bytes is stored in `payload`
/// (PostgreSQL text cannot hold a NUL), anything else in `payload_bytes`.
pub async fn enqueue(conn: &mut PgConnection, message: &Message) -> Result<i64, StoreError> {
    let (text, bytes) = split_payload(&message.payload);
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO ferry_outbox
            (message_id, kind, topic, message_key, headers, content_type, payload, payload_bytes, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING seq",
    )
    .bind(message.id.0)
    .bind(message.kind.as_str())
    .bind(&message.topic)
    .bind(message.key.as_deref())
    .bind(headers_to_json(message))
    .bind(&message.content_type)
    .bind(text)
    .bind(bytes)
    .bind(message.created_at)
    .fetch_one(conn)
    .await?;
    Ok(seq)
}

/// Writes many messages with one statement; see [`enqueue`].
pub async fn enqueue_many(conn: &mut PgConnection, messages: &[Message]) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    let n = messages.len();
    let mut ids = Vec::with_capacity(n);
    let mut kinds: Vec<&str> = Vec::with_capacity(n);
    let mut topics: Vec<&str> = Vec::with_capacity(n);
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut headers = Vec::with_capacity(n);
    let mut types: Vec<&str> = Vec::with_capacity(n);
    let mut texts: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut blobs: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut times = Vec::with_capacity(n);
    for m in messages {
        let (text, bytes) = split_payload(&m.payload);
        ids.push(m.id.0);
        kinds.push(m.kind.as_str());
        topics.push(&m.topic);
        keys.push(m.key.as_deref());
        headers.push(headers_to_json(m));
        types.push(&m.content_type);
        texts.push(text);
        blobs.push(bytes);
        times.push(m.created_at);
    }
    sqlx::query(
        "INSERT INTO ferry_outbox
            (message_id, kind, topic, message_key, headers, content_type, payload, payload_bytes, created_at)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::text[], $8::bytea[], $9::timestamptz[])",
    )
    .bind(ids)
    .bind(kinds)
    .bind(topics)
    .bind(keys)
    .bind(headers)
    .bind(types)
    .bind(texts)
    .bind(blobs)
    .bind(times)
    .execute(conn)
    .await?;
    Ok(())
}

fn split_payload(payload: &[u8]) -> (Option<&str>, Option<&[u8]>) {
    match std::str::from_utf8(payload) {
        Ok(text) if !text.contains('\0') => (Some(text), None),
        _ => (None, Some(payload)),
    }
}

/// Claim, in one statement:
/// 1. `cand`: pending, due messages in sequence order, skipping rows another
///    relay has locked; in ordered mode also skipping messages whose key has
///    an earlier message waiting for a retry.
/// 2. `gaps`: per key in `cand`, the first earlier pending message that is
///    *not* in `cand` (locked by another relay, or held back); messages of
///    that key from the gap on are left out, so a key never overtakes itself.
///    Skipped when no pending message before the batch's end is outside it.
///
/// The batch's transaction keeps the row locks until it is settled.
const CLAIM: &str = "
WITH cand AS (
    SELECT o.seq, o.message_key
    FROM ferry_outbox o
    WHERE o.status = 'pending'
      AND o.next_attempt_at <= now()
      AND ($3::text[] IS NULL OR o.topic = ANY($3))
      AND (NOT $2 OR o.message_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM ferry_outbox r
            WHERE r.status = 'pending' AND r.attempts > 0
              AND r.message_key = o.message_key AND r.seq < o.seq
              AND ($3::text[] IS NULL OR r.topic = ANY($3))))
      AND (NOT $4 OR o.message_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM ferry_outbox h
            WHERE h.status = 'pending' AND h.next_attempt_at <= now()
              AND h.message_key = o.message_key AND h.seq < o.seq
              AND ($3::text[] IS NULL OR h.topic = ANY($3))))
    ORDER BY o.seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), gaps AS (
    SELECT k.message_key,
           (SELECT min(e.seq) FROM ferry_outbox e
             WHERE e.status = 'pending' AND e.message_key = k.message_key AND e.seq < k.hi
               AND ($2 OR e.attempts = 0)
               AND ($3::text[] IS NULL OR e.topic = ANY($3))
               AND e.seq NOT IN (SELECT seq FROM cand)) AS gap
    FROM (SELECT message_key, max(seq) AS hi FROM cand WHERE message_key IS NOT NULL GROUP BY message_key) k
    -- Shortcut, evaluated once: when every pending message up to the batch's
    -- last one is in the batch, no key can have a gap; skip the probes.
    WHERE (SELECT count(*) FROM ferry_outbox p
            WHERE p.status = 'pending' AND p.seq <= (SELECT max(seq) FROM cand))
          > (SELECT count(*) FROM cand)
)
SELECT o.seq, o.message_id, o.kind, o.topic, o.message_key, o.headers::text AS headers, o.content_type,
       o.payload, o.payload_bytes, o.attempts, o.created_at
FROM cand c
JOIN ferry_outbox o ON o.seq = c.seq
LEFT JOIN gaps g ON g.message_key = c.message_key
WHERE g.gap IS NULL OR c.seq < g.gap
ORDER BY o.seq";

/// The outbox in a PostgreSQL database.
///
/// Open the pool with a lease ([`crate::ConnectOptions::lease`])
/// so that a hung relay's claims are released by the server.
pub struct PgOutbox {
    pool: PgPool,
    retention: Retention,
    wake: Arc<Notify>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgOutbox {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgOutbox {
    /// An outbox on `pool`, listening for the insert trigger's NOTIFY.
    pub fn new(pool: PgPool, retention: Retention) -> Self {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(pool.clone(), wake.clone()));
        Self {
            pool,
            retention,
            wake,
            listener,
        }
    }
}

impl PgOutbox {
    fn batch(&self, tx: Option<Transaction<'static, Postgres>>, messages: Vec<Claimed>) -> PgBatch {
        PgBatch {
            tx,
            messages,
            retention: self.retention,
        }
    }
}

/// Forwards NOTIFYs to the relay's workers. Logs once per state change.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let mut healthy = true;
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            if !healthy {
                tracing::info!(
                    channel = CHANNEL,
                    "listening for outbox notifications again"
                );
                healthy = true;
            }
            // Anything committed while we were not listening is found by this wake-up.
            wake.notify_one();
            loop {
                match listener.try_recv().await? {
                    Some(_) => wake.notify_one(),
                    None => {
                        // Connection lost; sqlx reconnects and listens again on
                        // the next call. Anything committed meanwhile is found
                        // by this wake-up.
                        wake.notify_one();
                    }
                }
            }
        }
        .await;
        if let Err(error) = result {
            if healthy {
                tracing::warn!(channel = CHANNEL, error = %error, "outbox notifications unavailable; relying on polling");
                healthy = false;
            }
            wake.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// A batch claimed from a [`PgOutbox`]; holds its row locks until settled.
pub struct PgBatch {
    tx: Option<Transaction<'static, Postgres>>,
    messages: Vec<Claimed>,
    retention: Retention,
}

impl Outbox for PgOutbox {
    type Batch = PgBatch;

    async fn claim(&self, filter: &ClaimFilter) -> Result<PgBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(CLAIM)
            .bind(i64::from(filter.limit))
            .bind(filter.order == OrderPolicy::Ordered)
            .bind(filter.topics.as_deref())
            .bind(filter.one_per_key)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(self.batch(None, Vec::new()));
        }
        let messages = claimed::<Postgres>(&rows)?;
        Ok(self.batch(Some(tx), messages))
    }

    async fn next_retry_in(
        &self,
        topics: Option<&[String]>,
    ) -> Result<Option<Duration>, StoreError> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8 FROM ferry_outbox
             WHERE status = 'pending' AND attempts > 0 AND ($1::text[] IS NULL OR topic = ANY($1))",
        )
        .bind(topics)
        .fetch_one(&self.pool)
        .await?;
        Ok(secs.map(super::seconds_until))
    }

    async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    async fn purge_delivered(&self, older_than: Duration) -> Result<u64, StoreError> {
        super::purge_delivered(&self.pool, older_than).await
    }
}

impl ClaimedBatch for PgBatch {
    fn messages(&self) -> &[Claimed] {
        &self.messages
    }

    async fn settle(mut self, outcomes: &[Outcome]) -> Result<(), StoreError> {
        let Some(mut tx) = self.tx.take() else {
            return Ok(());
        };
        debug_assert_eq!(outcomes.len(), self.messages.len());
        let mut delivered = Vec::new();
        let (mut failed, mut errors, mut retry_at) = (Vec::new(), Vec::new(), Vec::new());
        let mut causes: Vec<Option<String>> = Vec::new();
        for (claimed, outcome) in self.messages.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => delivered.push(claimed.seq),
                Outcome::Failed {
                    error,
                    retry_at: at,
                } => {
                    failed.push(claimed.seq);
                    errors.push(error.clone());
                    retry_at.push(*at);
                    causes.push(at.is_none().then(|| crate::admin::cause_of(error)));
                }
                Outcome::Released => {}
            }
        }
        if !delivered.is_empty() {
            let sql = match self.retention {
                Retention::Delete => "DELETE FROM ferry_outbox WHERE seq = ANY($1)",
                Retention::Keep(_) => {
                    "UPDATE ferry_outbox SET status = 'delivered', delivered_at = clock_timestamp(), attempts = attempts + 1
                     WHERE seq = ANY($1)"
                }
            };
            sqlx::query(sql).bind(&delivered).execute(&mut *tx).await?;
        }
        if !failed.is_empty() {
            sqlx::query(
                "UPDATE ferry_outbox AS o SET
                    attempts = o.attempts + 1,
                    status = CASE WHEN f.retry_at IS NULL THEN 'dead' ELSE 'pending' END,
                    next_attempt_at = COALESCE(f.retry_at, o.next_attempt_at),
                    last_error = f.error,
                    dead_at = CASE WHEN f.retry_at IS NULL THEN clock_timestamp() ELSE o.dead_at END,
                    cause = COALESCE(f.cause, o.cause)
                 FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[])
                    AS f(seq, error, retry_at, cause)
                 WHERE o.seq = f.seq",
            )
            .bind(&failed)
            .bind(&errors)
            .bind(&retry_at)
            .bind(&causes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
