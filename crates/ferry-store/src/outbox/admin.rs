//! Operator commands on the outbox: dead letters and counts.

use std::str::FromStr;

use sqlx::Pool;
use uuid::Uuid;

use crate::dialect::{select_text, sql, with_pool, Dialect, PerDialect, Read, Stmt};
use crate::{Database, StoreError};

/// A message named on the command line: its sequence number or its id.
#[derive(Clone, Debug, PartialEq)]
pub enum MessageRef {
    /// The `seq` column.
    Seq(i64),
    /// The `message_id` column.
    Id(Uuid),
}

impl FromStr for MessageRef {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        if let Ok(seq) = s.parse::<i64>() {
            return Ok(MessageRef::Seq(seq));
        }
        Uuid::parse_str(s)
            .map(MessageRef::Id)
            .map_err(|_| StoreError::InvalidMessageRef(s.to_owned()))
    }
}

impl std::fmt::Display for MessageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageRef::Seq(s) => write!(f, "{s}"),
            MessageRef::Id(id) => write!(f, "{id}"),
        }
    }
}

/// A dead-lettered message, as `ferry dead list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadMessage {
    /// Sequence number.
    pub seq: i64,
    /// Message id.
    pub message_id: String,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub key: Option<String>,
    /// Attempts made.
    pub attempts: i64,
    /// When it was written, as stored.
    pub created_at: String,
    /// Why it died.
    pub last_error: Option<String>,
}

/// Message counts by status.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    /// Waiting to be delivered (including retries).
    pub pending: i64,
    /// Of those, waiting for a retry after a failure.
    pub retrying: i64,
    /// Delivered and kept for retention.
    pub delivered: i64,
    /// Dead-lettered.
    pub dead: i64,
}

impl Database {
    /// Dead messages, oldest first, at most `limit`.
    pub async fn dead_messages(&self, limit: i64) -> Result<Vec<DeadMessage>, StoreError> {
        with_pool!(self, |pool| dead_messages(pool, limit).await)
    }

    /// Makes dead messages pending again with a fresh attempt budget: one
    /// (`Some`) or all (`None`). Returns how many.
    pub async fn replay_dead(&self, which: Option<&MessageRef>) -> Result<u64, StoreError> {
        let n = with_pool!(self, |pool| replay_dead(pool, which).await)?;
        not_found_if_zero(n, which)
    }

    /// Deletes one dead message for good.
    pub async fn discard_dead(&self, which: &MessageRef) -> Result<u64, StoreError> {
        let n = with_pool!(self, |pool| discard_dead(pool, which).await)?;
        not_found_if_zero(n, Some(which))
    }

    /// Messages waiting to be delivered (retries included): the
    /// [`OutboxStats::pending`] count alone, read over the pending rows'
    /// index rather than the whole outbox.
    pub async fn outbox_pending(&self) -> Result<i64, StoreError> {
        with_pool!(self, |pool| outbox_pending(pool).await)
    }

    /// Counts messages by status.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        with_pool!(self, |pool| outbox_stats(pool).await)
    }
}

/// A statement on dead messages: on all, or on one by sequence number or id.
struct Which {
    all: String,
    seq: String,
    id: String,
}

impl Which {
    fn new<DB: Dialect>(base: &str) -> Self {
        Self {
            all: base.to_owned(),
            seq: sql::<DB>(&format!("{base} AND seq = $1")),
            id: sql::<DB>(&format!("{base} AND {} = $1", DB::stored_id("message_id"))),
        }
    }

    fn pick(&self, which: Option<&MessageRef>) -> &str {
        match which {
            None => &self.all,
            Some(MessageRef::Seq(_)) => &self.seq,
            Some(MessageRef::Id(_)) => &self.id,
        }
    }
}

struct Statements {
    dead: String,
    replay: Which,
    discard: Which,
    stats: String,
}

fn statements<DB: Dialect>(_: &Pool<DB>) -> &'static Statements {
    static STATEMENTS: PerDialect<Statements> = PerDialect::new();
    STATEMENTS.get::<DB>(|| Statements {
        dead: sql::<DB>(&format!(
            "SELECT seq, {} AS message_id, {}, {}, {} AS attempts, {} AS created_at, {}
             FROM ferry_outbox WHERE status = 'dead' ORDER BY seq LIMIT $1",
            DB::cast_text("message_id"),
            select_text::<DB>("topic", "topic"),
            select_text::<DB>("message_key", "message_key"),
            DB::cast_bigint("attempts"),
            DB::cast_text("created_at"),
            select_text::<DB>("last_error", "last_error"),
        )),
        replay: Which::new::<DB>(&format!(
            "UPDATE ferry_outbox SET status = 'pending', attempts = 0, next_attempt_at = {}
             WHERE status = 'dead'",
            DB::NOW
        )),
        discard: Which::new::<DB>("DELETE FROM ferry_outbox WHERE status = 'dead'"),
        // COUNT(CASE …) rather than SUM: a BIGINT on MariaDB too (its SUM is a DECIMAL).
        stats: "SELECT
              COUNT(CASE WHEN status = 'pending' THEN 1 END) AS pending,
              COUNT(CASE WHEN status = 'pending' AND attempts > 0 THEN 1 END) AS retrying,
              COUNT(CASE WHEN status = 'delivered' THEN 1 END) AS delivered,
              COUNT(CASE WHEN status = 'dead' THEN 1 END) AS dead
            FROM ferry_outbox"
            .to_owned(),
    })
}

async fn dead_messages<DB: Dialect>(
    pool: &Pool<DB>,
    limit: i64,
) -> Result<Vec<DeadMessage>, StoreError> {
    let rows = Stmt::<DB>::new(&statements(pool).dead)
        .bind(limit)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
    let dead = |r: &DB::Row| -> Result<DeadMessage, sqlx::Error> {
        Ok(DeadMessage {
            seq: r.read("seq")?,
            message_id: r.read("message_id")?,
            topic: r.read("topic")?,
            key: r.read("message_key")?,
            attempts: r.read("attempts")?,
            created_at: r.read("created_at")?,
            last_error: r.read("last_error")?,
        })
    };
    Ok(rows.iter().map(dead).collect::<Result<_, _>>()?)
}

/// Replays, and tells the relays (where the database can) in the same
/// transaction.
async fn replay_dead<DB: Dialect>(
    pool: &Pool<DB>,
    which: Option<&MessageRef>,
) -> Result<u64, StoreError> {
    let statement = statements(pool).replay.pick(which);
    let Some(notify) = DB::NOTIFY_OUTBOX else {
        return exec::<DB>(&mut *pool.acquire().await?, statement, which).await;
    };
    let mut tx = pool.begin().await?;
    let n = exec::<DB>(&mut tx, statement, which).await?;
    Stmt::<DB>::new(notify).execute(&mut tx).await?;
    tx.commit().await?;
    Ok(n)
}

async fn discard_dead<DB: Dialect>(pool: &Pool<DB>, which: &MessageRef) -> Result<u64, StoreError> {
    let statement = statements(pool).discard.pick(Some(which));
    exec::<DB>(&mut *pool.acquire().await?, statement, Some(which)).await
}

async fn outbox_stats<DB: Dialect>(pool: &Pool<DB>) -> Result<OutboxStats, StoreError> {
    let row = Stmt::<DB>::new(&statements(pool).stats)
        .fetch_one(&mut *pool.acquire().await?)
        .await?;
    Ok(OutboxStats {
        pending: row.read("pending")?,
        retrying: row.read("retrying")?,
        delivered: row.read("delivered")?,
        dead: row.read("dead")?,
    })
}

async fn outbox_pending<DB: Dialect>(pool: &Pool<DB>) -> Result<i64, StoreError> {
    let row =
        Stmt::<DB>::new("SELECT COUNT(*) AS pending FROM ferry_outbox WHERE status = 'pending'")
            .fetch_one(&mut *pool.acquire().await?)
            .await?;
    Ok(row.read("pending")?)
}

fn not_found_if_zero(n: u64, which: Option<&MessageRef>) -> Result<u64, StoreError> {
    match which {
        Some(r) if n == 0 => Err(StoreError::NoSuchDeadMessage(r.to_string())),
        _ => Ok(n),
    }
}

/// Runs `statement` (picked by [`Which::pick`]) with `which`'s value.
async fn exec<DB: Dialect>(
    conn: &mut DB::Connection,
    statement: &str,
    which: Option<&MessageRef>,
) -> Result<u64, StoreError> {
    let stmt = Stmt::<DB>::new(statement);
    let stmt = match which {
        None => stmt,
        Some(MessageRef::Seq(seq)) => stmt.bind(*seq),
        Some(MessageRef::Id(id)) => stmt.bind(DB::id(*id)),
    };
    Ok(stmt.execute(conn).await?)
}
