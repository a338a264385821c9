//! Operator commands on the outbox: dead letters and counts.

use std::str::FromStr;

use sqlx::Row;
use uuid::Uuid;

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
        let rows = match self {
            Database::Postgres(pool) => {
                sqlx::query(
                    "SELECT seq, message_id::text AS message_id, topic, message_key, attempts::bigint AS attempts,
                            created_at::text AS created_at, last_error
                     FROM ferry_outbox WHERE status = 'dead' ORDER BY seq LIMIT $1",
                )
                .bind(limit)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| dead_from(&r))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Database::Sqlite(pool) => sqlx::query(
                "SELECT seq, message_id, topic, message_key, attempts, created_at, last_error
                 FROM ferry_outbox WHERE status = 'dead' ORDER BY seq LIMIT ?",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| dead_from(&r))
            .collect::<Result<Vec<_>, sqlx::Error>>()?,
            Database::Mysql(pool) => sqlx::query(
                // Text as CHAR: binary-collated columns would not decode as strings.
                "SELECT seq, CAST(message_id AS CHAR) AS message_id, CAST(topic AS CHAR) AS topic,
                        CAST(message_key AS CHAR) AS message_key, CAST(attempts AS SIGNED) AS attempts,
                        CAST(created_at AS CHAR) AS created_at, CAST(last_error AS CHAR) AS last_error
                 FROM ferry_outbox WHERE status = 'dead' ORDER BY seq LIMIT ?",
            )
            .bind(limit)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| dead_from(&r))
            .collect::<Result<Vec<_>, sqlx::Error>>()?,
        };
        Ok(rows)
    }

    /// Makes dead messages pending again with a fresh attempt budget: one
    /// (`Some`) or all (`None`). Returns how many.
    pub async fn replay_dead(&self, which: Option<&MessageRef>) -> Result<u64, StoreError> {
        let set = "SET status = 'pending', attempts = 0, next_attempt_at = ";
        let n = match self {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let n = pg_exec(&mut *tx, &format!("UPDATE ferry_outbox {set} now() WHERE status = 'dead'"), which).await?;
                sqlx::query("SELECT pg_notify($1, '')").bind(super::postgres::CHANNEL).execute(&mut *tx).await?;
                tx.commit().await?;
                n
            }
            Database::Sqlite(pool) => {
                sqlite_exec(
                    pool,
                    &format!("UPDATE ferry_outbox {set} strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE status = 'dead'"),
                    which,
                )
                .await?
            }
            Database::Mysql(pool) => {
                mysql_exec(
                    pool,
                    &format!("UPDATE ferry_outbox {set} NOW(6) WHERE status = 'dead'"),
                    which,
                )
                .await?
            }
        };
        not_found_if_zero(n, which)
    }

    /// Deletes one dead message for good.
    pub async fn discard_dead(&self, which: &MessageRef) -> Result<u64, StoreError> {
        let sql = "DELETE FROM ferry_outbox WHERE status = 'dead'";
        let n = match self {
            Database::Postgres(pool) => pg_exec(pool, sql, Some(which)).await?,
            Database::Sqlite(pool) => sqlite_exec(pool, sql, Some(which)).await?,
            Database::Mysql(pool) => mysql_exec(pool, sql, Some(which)).await?,
        };
        not_found_if_zero(n, Some(which))
    }

    /// Counts messages by status.
    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        // COUNT(CASE …) rather than SUM: a BIGINT on MariaDB too (its SUM is a DECIMAL).
        let sql = "SELECT
              COUNT(CASE WHEN status = 'pending' THEN 1 END),
              COUNT(CASE WHEN status = 'pending' AND attempts > 0 THEN 1 END),
              COUNT(CASE WHEN status = 'delivered' THEN 1 END),
              COUNT(CASE WHEN status = 'dead' THEN 1 END)
            FROM ferry_outbox";
        let (pending, retrying, delivered, dead): (i64, i64, i64, i64) = match self {
            Database::Postgres(pool) => sqlx::query_as(sql).fetch_one(pool).await?,
            Database::Sqlite(pool) => sqlx::query_as(sql).fetch_one(pool).await?,
            Database::Mysql(pool) => sqlx::query_as(sql).fetch_one(pool).await?,
        };
        Ok(OutboxStats {
            pending,
            retrying,
            delivered,
            dead,
        })
    }
}

fn not_found_if_zero(n: u64, which: Option<&MessageRef>) -> Result<u64, StoreError> {
    match which {
        Some(r) if n == 0 => Err(StoreError::NoSuchDeadMessage(r.to_string())),
        _ => Ok(n),
    }
}

fn dead_from<R: Row>(r: &R) -> Result<DeadMessage, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: sqlx::Type<R::Database> + for<'a> sqlx::Decode<'a, R::Database>,
    String: sqlx::Type<R::Database> + for<'a> sqlx::Decode<'a, R::Database>,
    Option<String>: sqlx::Type<R::Database> + for<'a> sqlx::Decode<'a, R::Database>,
{
    Ok(DeadMessage {
        seq: r.try_get("seq")?,
        message_id: r.try_get("message_id")?,
        topic: r.try_get("topic")?,
        key: r.try_get("message_key")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        last_error: r.try_get("last_error")?,
    })
}

async fn pg_exec(
    conn: impl sqlx::PgExecutor<'_>,
    base: &str,
    which: Option<&MessageRef>,
) -> Result<u64, StoreError> {
    let n = match which {
        None => sqlx::query(base).execute(conn).await?,
        Some(MessageRef::Seq(seq)) => {
            sqlx::query(&format!("{base} AND seq = $1"))
                .bind(*seq)
                .execute(conn)
                .await?
        }
        Some(MessageRef::Id(id)) => {
            sqlx::query(&format!("{base} AND message_id = $1"))
                .bind(*id)
                .execute(conn)
                .await?
        }
    };
    Ok(n.rows_affected())
}

async fn sqlite_exec(
    pool: &sqlx::SqlitePool,
    base: &str,
    which: Option<&MessageRef>,
) -> Result<u64, StoreError> {
    let n = match which {
        None => sqlx::query(base).execute(pool).await?,
        Some(MessageRef::Seq(seq)) => {
            sqlx::query(&format!("{base} AND seq = ?"))
                .bind(*seq)
                .execute(pool)
                .await?
        }
        Some(MessageRef::Id(id)) => {
            sqlx::query(&format!("{base} AND lower(message_id) = ?"))
                .bind(id.to_string())
                .execute(pool)
                .await?
        }
    };
    Ok(n.rows_affected())
}

async fn mysql_exec(
    pool: &sqlx::MySqlPool,
    base: &str,
    which: Option<&MessageRef>,
) -> Result<u64, StoreError> {
    let n = match which {
        None => sqlx::query(base).execute(pool).await?,
        Some(MessageRef::Seq(seq)) => {
            sqlx::query(&format!("{base} AND seq = ?"))
                .bind(*seq)
                .execute(pool)
                .await?
        }
        Some(MessageRef::Id(id)) => {
            sqlx::query(&format!("{base} AND message_id = ?"))
                .bind(id.to_string())
                .execute(pool)
                .await?
        }
    };
    Ok(n.rows_affected())
}
