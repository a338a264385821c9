//! Consumer dead letters: messages a consumer gave up on (its handler kept
//! failing, or refused them), kept whole in `ferry_dead_letters` so that an
//! operator can look at them and replay them. The outbox's own dead
//! messages (a sink refused them) stay in `ferry_outbox`; see
//! [`crate::outbox::admin`].

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferry_core::{Kind, Message, MessageId};
use uuid::Uuid;

use crate::admin::cause_of;
use crate::dialect::{with_pool, Dialect, PerDialect, Read, Stmt};
use crate::log_table::{self, Keyed, LogTable, Record};
use crate::outbox::{bind_message, parse_headers};
use crate::{Database, StoreError};

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

impl Record for DeadLetter {
    fn table() -> &'static LogTable {
        static TABLE: LogTable = LogTable {
            table: "ferry_dead_letters",
            columns: &[
                "id",
                "consumer",
                "message_id",
                "kind",
                "topic",
                "message_key",
                "headers",
                "content_type",
                "payload",
                "created_at",
                "error",
                "attempts",
                "dead_at",
                "cause",
            ],
            plain: &["payload", "created_at", "attempts", "dead_at"],
            filter: "consumer",
            order: "dead_at, id",
            replace: &[],
            statements: PerDialect::new(),
        };
        &TABLE
    }

    fn bind<'q, DB: Dialect>(&'q self, stmt: Stmt<'q, DB>) -> Stmt<'q, DB> {
        let m = &self.message;
        let stmt = stmt.bind(DB::id(self.id)).bind(self.consumer.as_str());
        bind_message(stmt, m, DB::time(m.created_at))
            .bind(self.error.as_str())
            .bind(i64::from(self.attempts))
            .bind(DB::time(self.dead_at))
            .bind(cause_of(&self.error))
    }

    fn read<DB: Dialect>(r: &DB::Row) -> Result<Self, StoreError> {
        let corrupt = |e: String| StoreError::Database(sqlx::Error::Decode(e.into()));
        let kind: String = r.read("kind")?;
        let kind: Kind = kind
            .parse()
            .map_err(|e: ferry_core::ParseKindError| corrupt(e.to_string()))?;
        let headers: String = r.read("headers")?;
        let payload: Vec<u8> = r.read("payload")?;
        let attempts: i64 = r.read("attempts")?;
        Ok(DeadLetter {
            id: DB::read_uuid(r, "id")?,
            consumer: r.read("consumer")?,
            message: Message {
                id: MessageId(DB::read_uuid(r, "message_id")?),
                kind,
                topic: r.read("topic")?,
                key: r.read("message_key")?,
                headers: parse_headers(&headers).map_err(corrupt)?,
                content_type: r.read("content_type")?,
                payload: Bytes::from(payload),
                created_at: DB::read_time(r, "created_at")?,
            },
            error: r.read("error")?,
            attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
            dead_at: DB::read_time(r, "dead_at")?,
        })
    }
}

impl Keyed for DeadLetter {
    fn id(&self) -> Uuid {
        self.id
    }
}

impl Database {
    /// Stores a dead letter, in a transaction of its own. Recording the same
    /// dead letter (same [`DeadLetter::id`]) again changes nothing.
    pub async fn record_dead_letter(&self, dead: &DeadLetter) -> Result<(), StoreError> {
        with_pool!(self, |pool| log_table::insert(pool, dead).await)
    }

    /// Dead letters, oldest first, at most `limit`: of one consumer, or of
    /// all (`None`).
    pub async fn dead_letters(
        &self,
        consumer: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        with_pool!(self, |pool| log_table::list(pool, consumer, limit).await)
    }

    /// The dead letters `ids` that exist, in the order of `ids`.
    pub async fn dead_letters_by_id(&self, ids: &[Uuid]) -> Result<Vec<DeadLetter>, StoreError> {
        with_pool!(self, |pool| log_table::get_many(pool, ids).await)
    }

    /// One dead letter by id, or `None`.
    pub async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        with_pool!(self, |pool| log_table::get(pool, id).await)
    }

    /// Deletes a dead letter and returns it (to replay it), or `None` when
    /// there is no such dead letter (already taken or deleted).
    pub async fn take_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        with_pool!(self, |pool| log_table::take(pool, id).await)
    }

    /// Deletes a dead letter for good; says whether there was one.
    pub async fn delete_dead_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        with_pool!(self, |pool| log_table::delete::<_, DeadLetter>(pool, id)
            .await)
    }
}
