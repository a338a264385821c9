//! The outbox browser: messages newest first, filtered, paged by `seq`.
//!
//! Pages are keyset pages (`seq < before ORDER BY seq DESC LIMIT n`): no
//! `OFFSET`, no `COUNT(*)`, so a page costs the same on the first page and
//! the thousandth. Which filters an index backs (see
//! migrations/*/0001_outbox.sql and 0006_admin.sql):
//!
//! * none, or only `created_from`/`created_to`: the primary key, read
//!   backwards (the time bounds are checked on the rows read; rows are
//!   roughly in `created_at` order, so a range near the newest end is
//!   cheap, one far in the past reads the newer rows first);
//! * `status = pending`: `ferry_outbox_pending` (seq, partial), and with
//!   `key`, `ferry_outbox_pending_key`;
//! * `status = dead`: `ferry_outbox_dead` (seq, partial), with `topic`
//!   `ferry_outbox_dead_topic`, with `key` `ferry_outbox_dead_key`;
//! * `status = retrying`: the few retrying rows, through
//!   `ferry_outbox_retrying_due`;
//! * `message_id`: the unique index;
//! * `topic` or `key` across all statuses: no index of their own (one on
//!   the whole outbox would cost the relay on every insert and status
//!   change); the primary key is read backwards and the rows checked, which
//!   is fast for a topic or key that is frequent among recent rows and
//!   slow for a rare one (measured at 1M rows: a key among 10,000, p99
//!   85 ms on PostgreSQL). Give a status with the key to stay on an index.
//!   On MariaDB `key` uses `ferry_outbox_key_seq`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use sqlx::Pool;
use uuid::Uuid;

use super::PayloadView;
use crate::dialect::{select_text, sql, with_pool, Dialect, Read, Stmt};
use crate::outbox::{parse_headers, MessageRef};
use crate::{Database, DatabaseKind, StoreError};

/// The largest page of the admin lists.
pub const MAX_ADMIN_PAGE: u32 = 1000;

/// A message's state in the outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxStatus {
    /// Waiting for its first delivery attempt.
    Pending,
    /// Pending after a failed attempt (`attempts > 0`), waiting for its
    /// next attempt.
    Retrying,
    /// Delivered and kept for the retention.
    Delivered,
    /// Dead-lettered: the sink refused it, or its retries were spent.
    Dead,
}

impl OutboxStatus {
    /// The lowercase name, as in JSON and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Retrying => "retrying",
            OutboxStatus::Delivered => "delivered",
            OutboxStatus::Dead => "dead",
        }
    }

    /// The status of a row with `status` and `attempts`.
    fn of_row(status: &str, attempts: i64) -> Result<Self, sqlx::Error> {
        match status {
            "pending" if attempts > 0 => Ok(OutboxStatus::Retrying),
            "pending" => Ok(OutboxStatus::Pending),
            "delivered" => Ok(OutboxStatus::Delivered),
            "dead" => Ok(OutboxStatus::Dead),
            other => Err(sqlx::Error::Decode(
                format!("unknown outbox status `{other}`").into(),
            )),
        }
    }

    /// The SQL condition selecting the rows of this status.
    fn condition(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "status = 'pending' AND attempts = 0",
            OutboxStatus::Retrying => "status = 'pending' AND attempts > 0",
            OutboxStatus::Delivered => "status = 'delivered'",
            OutboxStatus::Dead => "status = 'dead'",
        }
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutboxStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(OutboxStatus::Pending),
            "retrying" => Ok(OutboxStatus::Retrying),
            "delivered" => Ok(OutboxStatus::Delivered),
            "dead" => Ok(OutboxStatus::Dead),
            _ => Err(StoreError::InvalidArgument {
                parameter: "outbox status",
                value: s.to_owned(),
                expected: "pending, retrying, delivered or dead",
            }),
        }
    }
}

/// Which outbox messages to list; every field set narrows the list (see
/// the [module docs](self) for the ones an index backs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutboxFilter {
    /// Only messages in this state.
    pub status: Option<OutboxStatus>,
    /// Only messages of this topic (exact).
    pub topic: Option<String>,
    /// Only messages of this ordering key (exact).
    pub key: Option<String>,
    /// Only the message with this id.
    pub message_id: Option<Uuid>,
    /// Only messages written at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only messages written before this time.
    pub created_to: Option<DateTime<Utc>>,
}

/// A message as the outbox browser lists it (without headers and payload).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutboxRow {
    /// Sequence number: its position in the outbox.
    pub seq: i64,
    /// Message id.
    pub message_id: String,
    /// `event` or `command`.
    pub kind: String,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub key: Option<String>,
    /// State.
    pub status: OutboxStatus,
    /// Delivery attempts made.
    pub attempts: i64,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// When it is (or was) due for its next attempt.
    pub next_attempt_at: DateTime<Utc>,
    /// When it was delivered (kept messages only).
    pub delivered_at: Option<DateTime<Utc>>,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
}

/// A page of the outbox browser.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutboxPage {
    /// The messages, newest (highest `seq`) first.
    pub rows: Vec<OutboxRow>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<i64>,
}

/// One outbox message whole.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutboxMessage {
    /// What the list shows.
    #[serde(flatten)]
    pub row: OutboxRow,
    /// Its headers.
    pub headers: BTreeMap<String, String>,
    /// MIME type of the payload.
    pub content_type: String,
    /// The payload.
    pub payload: PayloadView,
}

impl Database {
    /// A page of outbox messages matching `filter`, newest first, with
    /// `seq < before` (`None`: from the newest), at most `limit` (1 to
    /// [`MAX_ADMIN_PAGE`], else [`StoreError::InvalidPageLimit`]).
    pub async fn browse_outbox(
        &self,
        filter: &OutboxFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<OutboxPage, StoreError> {
        check_limit(limit)?;
        with_pool!(self, |pool| browse(pool, filter, before, limit).await)
    }

    /// One message, whatever its state, by sequence number or id.
    pub async fn outbox_message(
        &self,
        which: &MessageRef,
    ) -> Result<Option<OutboxMessage>, StoreError> {
        with_pool!(self, |pool| message(pool, which).await)
    }
}

/// Refuses a page limit of 0 or above [`MAX_ADMIN_PAGE`].
pub(crate) fn check_limit(limit: u32) -> Result<(), StoreError> {
    if limit == 0 || limit > MAX_ADMIN_PAGE {
        return Err(StoreError::InvalidPageLimit {
            limit,
            max: MAX_ADMIN_PAGE,
        });
    }
    Ok(())
}

/// The columns of an [`OutboxRow`].
fn row_columns<DB: Dialect>() -> String {
    format!(
        "seq, {} AS message_id, {}, {}, {}, {}, {} AS attempts,
         created_at, next_attempt_at, delivered_at, {}",
        DB::cast_text("message_id"),
        select_text::<DB>("kind", "kind"),
        select_text::<DB>("topic", "topic"),
        select_text::<DB>("message_key", "message_key"),
        select_text::<DB>("status", "status"),
        DB::cast_bigint("attempts"),
        select_text::<DB>("last_error", "last_error"),
    )
}

/// The condition matching `id` in `message_id`, and the values to bind:
/// SQLite's ids, text as a producer wrote them, in either case (both are
/// looked up so that the unique index still serves); elsewhere the id.
fn id_condition<DB: Dialect>(n: &mut usize, id: Uuid) -> (String, Vec<String>) {
    if DB::KIND == DatabaseKind::Sqlite {
        let lower = id.to_string();
        let sql = format!("message_id IN (${}, ${})", *n, *n + 1);
        *n += 2;
        (sql, vec![lower.to_uppercase(), lower])
    } else {
        let sql = format!("message_id = ${}", *n);
        *n += 1;
        (sql, Vec::new())
    }
}

async fn browse<DB: Dialect>(
    pool: &Pool<DB>,
    filter: &OutboxFilter,
    before: Option<i64>,
    limit: u32,
) -> Result<OutboxPage, StoreError> {
    // The WHERE clause has only the filters in use, so that each
    // combination gets a plan for its index.
    let mut conditions = Vec::new();
    let mut n = 1;
    let param = |n: &mut usize| {
        let p = format!("${n}");
        *n += 1;
        p
    };
    if before.is_some() {
        conditions.push(format!("seq < {}", param(&mut n)));
    }
    if let Some(status) = filter.status {
        conditions.push(status.condition().to_owned());
    }
    if filter.topic.is_some() {
        conditions.push(format!("topic = {}", param(&mut n)));
    }
    if filter.key.is_some() {
        conditions.push(format!("message_key = {}", param(&mut n)));
    }
    let mut ids = Vec::new();
    if let Some(id) = filter.message_id {
        let (condition, values) = id_condition::<DB>(&mut n, id);
        conditions.push(condition);
        ids = values;
    }
    if filter.created_from.is_some() {
        conditions.push(format!("created_at >= {}", param(&mut n)));
    }
    if filter.created_to.is_some() {
        conditions.push(format!("created_at < {}", param(&mut n)));
    }
    let where_ = match conditions.is_empty() {
        true => String::new(),
        false => format!("WHERE {}", conditions.join(" AND ")),
    };
    let text = sql::<DB>(&format!(
        "SELECT {} FROM ferry_outbox {where_} ORDER BY seq DESC LIMIT {}",
        row_columns::<DB>(),
        param(&mut n),
    ));
    let mut stmt = Stmt::<DB>::new(&text);
    if let Some(before) = before {
        stmt = stmt.bind(before);
    }
    if let Some(topic) = &filter.topic {
        stmt = stmt.bind(topic.as_str());
    }
    if let Some(key) = &filter.key {
        stmt = stmt.bind(key.as_str());
    }
    for id in ids {
        stmt = stmt.bind(id);
    }
    if let (Some(id), DatabaseKind::Postgres | DatabaseKind::Mysql) = (filter.message_id, DB::KIND)
    {
        stmt = stmt.bind(DB::id(id));
    }
    if let Some(from) = filter.created_from {
        stmt = stmt.bind(DB::precise_time(from));
    }
    if let Some(to) = filter.created_to {
        stmt = stmt.bind(DB::precise_time(to));
    }
    let rows = stmt
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *pool.acquire().await?)
        .await?;
    let mut rows = rows
        .iter()
        .map(outbox_row::<DB>)
        .collect::<Result<Vec<_>, _>>()?;
    let next_before = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.seq)
    } else {
        None
    };
    Ok(OutboxPage { rows, next_before })
}

async fn message<DB: Dialect>(
    pool: &Pool<DB>,
    which: &MessageRef,
) -> Result<Option<OutboxMessage>, StoreError> {
    let mut n = 1;
    let (condition, ids) = match which {
        MessageRef::Seq(_) => ("seq = $1".to_owned(), Vec::new()),
        MessageRef::Id(id) => id_condition::<DB>(&mut n, *id),
    };
    let text = sql::<DB>(&format!(
        "SELECT {}, {} AS headers, {}, {} FROM ferry_outbox o WHERE {condition}",
        row_columns::<DB>(),
        DB::cast_text("headers"),
        select_text::<DB>("content_type", "content_type"),
        DB::payload("o"),
    ));
    let mut stmt = Stmt::<DB>::new(&text);
    if let MessageRef::Seq(seq) = which {
        stmt = stmt.bind(*seq);
    }
    for id in ids {
        stmt = stmt.bind(id);
    }
    if let (MessageRef::Id(id), DatabaseKind::Postgres | DatabaseKind::Mysql) = (which, DB::KIND) {
        stmt = stmt.bind(DB::id(*id));
    }
    let Some(row) = stmt.fetch_optional(&mut *pool.acquire().await?).await? else {
        return Ok(None);
    };
    let headers: String = row.read("headers")?;
    let headers =
        parse_headers(&headers).map_err(|e| StoreError::Database(sqlx::Error::Decode(e.into())))?;
    Ok(Some(OutboxMessage {
        row: outbox_row::<DB>(&row)?,
        headers,
        content_type: row.read("content_type")?,
        payload: PayloadView::of(DB::read_payload(&row)?),
    }))
}

fn outbox_row<DB: Dialect>(r: &DB::Row) -> Result<OutboxRow, sqlx::Error> {
    let status: String = r.read("status")?;
    let attempts: i64 = r.read("attempts")?;
    Ok(OutboxRow {
        seq: r.read("seq")?,
        message_id: r.read("message_id")?,
        kind: r.read("kind")?,
        topic: r.read("topic")?,
        key: r.read("message_key")?,
        status: OutboxStatus::of_row(&status, attempts)?,
        attempts,
        created_at: DB::read_time(r, "created_at")?,
        next_attempt_at: DB::read_time(r, "next_attempt_at")?,
        delivered_at: DB::read_opt_time(r, "delivered_at")?,
        last_error: r.read("last_error")?,
    })
}
