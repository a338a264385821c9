//! Consumer dead letters: messages a consumer gave up on (its handler kept
//! failing, or refused them), kept whole in `ferry_dead_letters` so that an
//! operator can look at them and replay them. The outbox's own dead
//! messages (a sink refused them) stay in `ferry_outbox`; see
//! [`crate::outbox::admin`].

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferry_core::{Kind, Message, MessageId};
use sqlx::Row;
use uuid::Uuid;

use crate::outbox::{headers_to_json, parse_headers, sqlite::format_time};
use crate::{text_columns, Database, StoreError};

/// A message a consumer gave up on.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// Identifies this dead letter: a UUIDv7 chosen by [`DeadLetter::new`],
    /// so that recording it again (a retry after a lost answer) stores it once.
    pub id: Uuid,
    /// The consumer that gave up (its name or group).
    pub consumer: String,
    /// The message, whole.
    pub message: Message,
    /// Why the consumer gave up: its last error.
    pub error: String,
    /// Attempts the consumer made.
    pub attempts: u32,
    /// When it gave up.
    pub dead_at: DateTime<Utc>,
}

impl DeadLetter {
    /// A dead letter made now, with a fresh id.
    pub fn new(
        consumer: impl Into<String>,
        message: Message,
        error: impl Into<String>,
        attempts: u32,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            consumer: consumer.into(),
            message,
            error: error.into(),
            attempts,
            dead_at: Utc::now(),
        }
    }
}

const COLUMNS: &str = "id, consumer, message_id, kind, topic, message_key, headers, content_type, payload, created_at, error, attempts, dead_at";

/// The columns as each database stores them: ids and times as text on
/// SQLite and as native types elsewhere, hence the small per-database
/// decoding below.
struct Stored {
    id: Uuid,
    consumer: String,
    message_id: Uuid,
    kind: String,
    topic: String,
    key: Option<String>,
    headers: String,
    content_type: String,
    payload: Vec<u8>,
    created_at: DateTime<Utc>,
    error: String,
    attempts: i64,
    dead_at: DateTime<Utc>,
}

impl Stored {
    fn into_dead_letter(self) -> Result<DeadLetter, StoreError> {
        let corrupt = |e: String| StoreError::Database(sqlx::Error::Decode(e.into()));
        let kind: Kind = self
            .kind
            .parse()
            .map_err(|e: ferry_core::ParseKindError| corrupt(e.to_string()))?;
        Ok(DeadLetter {
            id: self.id,
            consumer: self.consumer,
            message: Message {
                id: MessageId(self.message_id),
                kind,
                topic: self.topic,
                key: self.key,
                headers: parse_headers(&self.headers).map_err(corrupt)?,
                content_type: self.content_type,
                payload: Bytes::from(self.payload),
                created_at: self.created_at,
            },
            error: self.error,
            attempts: u32::try_from(self.attempts.max(0)).unwrap_or(u32::MAX),
            dead_at: self.dead_at,
        })
    }
}

fn from_sqlite(r: &sqlx::sqlite::SqliteRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        id: text_columns::uuid("id", r.try_get("id")?)?,
        consumer: r.try_get("consumer")?,
        message_id: text_columns::uuid("message_id", r.try_get("message_id")?)?,
        kind: r.try_get("kind")?,
        topic: r.try_get("topic")?,
        key: r.try_get("message_key")?,
        headers: r.try_get("headers")?,
        content_type: r.try_get("content_type")?,
        payload: r.try_get("payload")?,
        created_at: text_columns::time("created_at", r.try_get("created_at")?)?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        dead_at: text_columns::time("dead_at", r.try_get("dead_at")?)?,
    })
}

fn from_postgres(r: &sqlx::postgres::PgRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        id: r.try_get("id")?,
        consumer: r.try_get("consumer")?,
        message_id: r.try_get("message_id")?,
        kind: r.try_get("kind")?,
        topic: r.try_get("topic")?,
        key: r.try_get("message_key")?,
        headers: r.try_get("headers")?,
        content_type: r.try_get("content_type")?,
        payload: r.try_get("payload")?,
        created_at: r.try_get("created_at")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        dead_at: r.try_get("dead_at")?,
    })
}

fn from_mysql(r: &sqlx::mysql::MySqlRow) -> Result<Stored, sqlx::Error> {
    Ok(Stored {
        id: text_columns::uuid("id", r.try_get("id")?)?,
        consumer: r.try_get("consumer")?,
        message_id: text_columns::uuid("message_id", r.try_get("message_id")?)?,
        kind: r.try_get("kind")?,
        topic: r.try_get("topic")?,
        key: r.try_get("message_key")?,
        headers: r.try_get("headers")?,
        content_type: r.try_get("content_type")?,
        payload: r.try_get("payload")?,
        created_at: r.try_get("created_at")?,
        error: r.try_get("error")?,
        attempts: r.try_get("attempts")?,
        dead_at: r.try_get("dead_at")?,
    })
}

/// On MariaDB text is read as CHAR: `UUID` and binary-collated columns
/// reach the client flagged as binary, which sqlx will not decode as text.
const MYSQL_COLUMNS: &str = "CAST(id AS CHAR) AS id, CAST(consumer AS CHAR) AS consumer,
    CAST(message_id AS CHAR) AS message_id, CAST(kind AS CHAR) AS kind, CAST(topic AS CHAR) AS topic,
    CAST(message_key AS CHAR) AS message_key, CAST(headers AS CHAR) AS headers,
    CAST(content_type AS CHAR) AS content_type, payload, created_at, CAST(error AS CHAR) AS error,
    attempts, dead_at";

fn decode_all<R>(
    rows: Vec<R>,
    decode: impl Fn(&R) -> Result<Stored, sqlx::Error>,
) -> Result<Vec<DeadLetter>, StoreError> {
    rows.iter().map(|r| decode(r)?.into_dead_letter()).collect()
}

impl Database {
    /// Stores a dead letter, in a transaction of its own. Recording the same
    /// dead letter (same [`DeadLetter::id`]) again changes nothing.
    pub async fn record_dead_letter(&self, dead: &DeadLetter) -> Result<(), StoreError> {
        let m = &dead.message;
        let headers = headers_to_json(m).to_string();
        let attempts = i64::from(dead.attempts);
        match self {
            Database::Postgres(pool) => {
                sqlx::query(&format!(
                    "INSERT INTO ferry_dead_letters ({COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     ON CONFLICT (id) DO NOTHING"
                ))
                .bind(dead.id)
                .bind(&dead.consumer)
                .bind(m.id.0)
                .bind(m.kind.as_str())
                .bind(&m.topic)
                .bind(m.key.as_deref())
                .bind(headers)
                .bind(&m.content_type)
                .bind(m.payload.as_ref())
                .bind(m.created_at)
                .bind(&dead.error)
                .bind(attempts)
                .bind(dead.dead_at)
                .execute(pool)
                .await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query(&format!(
                    "INSERT INTO ferry_dead_letters ({COLUMNS})
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON CONFLICT (id) DO NOTHING"
                ))
                .bind(dead.id.to_string())
                .bind(&dead.consumer)
                .bind(m.id.to_string())
                .bind(m.kind.as_str())
                .bind(&m.topic)
                .bind(m.key.as_deref())
                .bind(headers)
                .bind(&m.content_type)
                .bind(m.payload.as_ref())
                .bind(format_time(m.created_at))
                .bind(&dead.error)
                .bind(attempts)
                .bind(format_time(dead.dead_at))
                .execute(pool)
                .await?;
            }
            Database::Mysql(pool) => {
                sqlx::query(&format!(
                    "INSERT INTO ferry_dead_letters ({COLUMNS})
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                     ON DUPLICATE KEY UPDATE id = id"
                ))
                .bind(dead.id.to_string())
                .bind(&dead.consumer)
                .bind(m.id.to_string())
                .bind(m.kind.as_str())
                .bind(&m.topic)
                .bind(m.key.as_deref())
                .bind(headers)
                .bind(&m.content_type)
                .bind(m.payload.as_ref())
                .bind(m.created_at)
                .bind(&dead.error)
                .bind(attempts)
                .bind(dead.dead_at)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Dead letters, oldest first, at most `limit`: of one consumer, or of
    /// all (`None`).
    pub async fn dead_letters(
        &self,
        consumer: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = i64::from(limit);
        match self {
            Database::Postgres(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM ferry_dead_letters
                     WHERE ($1::text IS NULL OR consumer = $1)
                     ORDER BY dead_at, id LIMIT $2"
                ))
                .bind(consumer)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                decode_all(rows, from_postgres)
            }
            Database::Sqlite(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM ferry_dead_letters
                     WHERE (?1 IS NULL OR consumer = ?1)
                     ORDER BY dead_at, id LIMIT ?2"
                ))
                .bind(consumer)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                decode_all(rows, from_sqlite)
            }
            Database::Mysql(pool) => {
                let rows = sqlx::query(&format!(
                    "SELECT {MYSQL_COLUMNS} FROM ferry_dead_letters
                     WHERE (? IS NULL OR consumer = ?)
                     ORDER BY dead_at, id LIMIT ?"
                ))
                .bind(consumer)
                .bind(consumer)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                decode_all(rows, from_mysql)
            }
        }
    }

    /// One dead letter by id, or `None`.
    pub async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        let stored = match self {
            Database::Postgres(pool) => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM ferry_dead_letters WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|r| from_postgres(&r))
            .transpose()?,
            Database::Sqlite(pool) => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM ferry_dead_letters WHERE id = ?"
            ))
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
            .map(|r| from_sqlite(&r))
            .transpose()?,
            Database::Mysql(pool) => sqlx::query(&format!(
                "SELECT {MYSQL_COLUMNS} FROM ferry_dead_letters WHERE id = ?"
            ))
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
            .map(|r| from_mysql(&r))
            .transpose()?,
        };
        stored.map(Stored::into_dead_letter).transpose()
    }

    /// Deletes a dead letter and returns it (to replay it), or `None` when
    /// there is no such dead letter (already taken or deleted).
    pub async fn take_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        let stored = match self {
            Database::Postgres(pool) => sqlx::query(&format!(
                "DELETE FROM ferry_dead_letters WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?
            .map(|r| from_postgres(&r))
            .transpose()?,
            Database::Sqlite(pool) => sqlx::query(&format!(
                "DELETE FROM ferry_dead_letters WHERE id = ? RETURNING {COLUMNS}"
            ))
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?
            .map(|r| from_sqlite(&r))
            .transpose()?,
            Database::Mysql(pool) => {
                // MariaDB's DELETE … RETURNING drops column aliases, which the
                // casts need: read the row locked, then delete it.
                let mut tx = pool.begin().await?;
                let row = sqlx::query(&format!(
                    "SELECT {MYSQL_COLUMNS} FROM ferry_dead_letters WHERE id = ? FOR UPDATE"
                ))
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM ferry_dead_letters WHERE id = ?")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                row.map(|r| from_mysql(&r)).transpose()?
            }
        };
        stored.map(Stored::into_dead_letter).transpose()
    }

    /// Deletes a dead letter for good; says whether there was one.
    pub async fn delete_dead_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        let sql = "DELETE FROM ferry_dead_letters WHERE id = ";
        let done = match self {
            Database::Postgres(pool) => sqlx::query(&format!("{sql}$1"))
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected(),
            Database::Sqlite(pool) => sqlx::query(&format!("{sql}?"))
                .bind(id.to_string())
                .execute(pool)
                .await?
                .rows_affected(),
            Database::Mysql(pool) => sqlx::query(&format!("{sql}?"))
                .bind(id.to_string())
                .execute(pool)
                .await?
                .rows_affected(),
        };
        Ok(done > 0)
    }
}
