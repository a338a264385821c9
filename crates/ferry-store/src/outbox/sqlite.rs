//! The outbox on SQLite.
//!
//! SQLite has one writer at a time, so the relay does not hold a transaction
//! while the sink works (that would stall producers): it reads a batch, hands
//! it over, then records the outcomes in a short write transaction. One
//! relay process per database file; a crash before the outcomes are recorded
//! leaves the messages pending and they are delivered again.

use std::time::Duration;

use chrono::Utc;
use ferry_core::Message;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};

pub use super::Waker;
use super::{
    bind_outbox_message, claimed, delivered, insert_columns, record_failures, ClaimFilter, Claimed,
    ClaimedBatch, OrderPolicy, Outbox, Outcome, PollingOutbox, Retention,
};
use crate::dialect::{ReadFirst, Stmt};
use crate::StoreError;

pub(crate) use crate::dialect::format_time;

/// Writes `message` to the outbox on `conn`, which should be the caller's
/// open transaction (`&mut *tx`). Returns the message's sequence number.
/// Call [`Waker::wake`] after the commit so an in-process relay sends it at
/// once instead of at its next poll.
pub async fn enqueue(conn: &mut SqliteConnection, message: &Message) -> Result<i64, StoreError> {
    let sql = concat!(
        "INSERT INTO ferry_outbox (",
        insert_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq"
    );
    Ok(bind_outbox_message(Stmt::<Sqlite>::new(sql), message)
        .fetch_one(conn)
        .await?
        .read_first()?)
}

/// The outbox in a SQLite database file.
pub type SqliteOutbox = PollingOutbox<Sqlite>;

/// A batch read from a [`SqliteOutbox`].
pub struct SqliteBatch {
    pool: SqlitePool,
    messages: Vec<Claimed>,
    retention: Retention,
}

impl Outbox for SqliteOutbox {
    type Batch = SqliteBatch;

    async fn claim(&self, filter: &ClaimFilter) -> Result<SqliteBatch, StoreError> {
        let topics = filter.topics.as_deref().unwrap_or_default();
        let topic_list = vec!["?"; topics.len()].join(", ");
        let topic_filter = |alias: &str| {
            if filter.topics.is_some() {
                format!("AND {alias}.topic IN ({topic_list})")
            } else {
                String::new()
            }
        };
        let hold_back = if filter.order == OrderPolicy::Ordered {
            format!(
                "AND (o.message_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM ferry_outbox r
                    WHERE r.status = 'pending' AND r.attempts > 0
                      AND r.message_key = o.message_key AND r.seq < o.seq {}))",
                topic_filter("r")
            )
        } else {
            String::new()
        };
        let one_per_key = if filter.one_per_key {
            format!(
                "AND (o.message_key IS NULL OR NOT EXISTS (
                    SELECT 1 FROM ferry_outbox h
                    WHERE h.status = 'pending' AND h.next_attempt_at <= ?
                      AND h.message_key = o.message_key AND h.seq < o.seq {}))",
                topic_filter("h")
            )
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT seq, message_id, kind, topic, message_key, headers, content_type,
                    CAST(payload AS BLOB) AS payload, attempts, created_at
             FROM ferry_outbox o
             WHERE o.status = 'pending' AND o.next_attempt_at <= ? {} {} {}
             ORDER BY o.seq LIMIT ?",
            topic_filter("o"),
            hold_back,
            one_per_key
        );
        let now = format_time(Utc::now());
        let mut query = sqlx::query(&sql).bind(&now);
        for t in topics {
            query = query.bind(t);
        }
        if filter.order == OrderPolicy::Ordered {
            for t in topics {
                query = query.bind(t);
            }
        }
        if filter.one_per_key {
            query = query.bind(&now);
            for t in topics {
                query = query.bind(t);
            }
        }
        let rows = query
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        let messages = claimed::<Sqlite>(&rows)?;
        Ok(SqliteBatch {
            pool: self.pool.clone(),
            messages,
            retention: self.retention,
        })
    }

    async fn next_retry_in(
        &self,
        topics: Option<&[String]>,
    ) -> Result<Option<Duration>, StoreError> {
        let topic_filter = match topics {
            Some(t) => format!("AND topic IN ({})", vec!["?"; t.len()].join(", ")),
            None => String::new(),
        };
        let sql = format!(
            "SELECT (julianday(min(next_attempt_at)) - julianday('now')) * 86400.0 FROM ferry_outbox
             WHERE status = 'pending' AND attempts > 0 {topic_filter}"
        );
        let mut query = sqlx::query_scalar::<_, Option<f64>>(&sql);
        for t in topics.unwrap_or_default() {
            query = query.bind(t);
        }
        let secs = query.fetch_one(&self.pool).await?;
        Ok(secs.map(super::seconds_until))
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.waker.wait(timeout).await;
    }

    fn max_workers(&self) -> Option<usize> {
        Some(1)
    }

    async fn purge_delivered(&self, older_than: Duration) -> Result<u64, StoreError> {
        super::purge_delivered(&self.pool, older_than).await
    }
}

impl ClaimedBatch for SqliteBatch {
    fn messages(&self) -> &[Claimed] {
        &self.messages
    }

    async fn settle(self, outcomes: &[Outcome]) -> Result<(), StoreError> {
        if outcomes.iter().all(|o| *o == Outcome::Released) {
            return Ok(());
        }
        let now = format_time(Utc::now());
        let mut tx = self.pool.begin().await?;
        for chunk in delivered(&self.messages, outcomes).chunks(500) {
            let list = vec!["?"; chunk.len()].join(", ");
            let sql = match self.retention {
                Retention::Delete => format!("DELETE FROM ferry_outbox WHERE seq IN ({list})"),
                Retention::Keep(_) => format!(
                    "UPDATE ferry_outbox SET status = 'delivered', delivered_at = ?, attempts = attempts + 1
                     WHERE seq IN ({list})"
                ),
            };
            let mut q = sqlx::query(&sql);
            if matches!(self.retention, Retention::Keep(_)) {
                q = q.bind(&now);
            }
            for seq in chunk {
                q = q.bind(seq);
            }
            q.execute(&mut *tx).await?;
        }
        record_failures::<Sqlite>(&mut tx, &self.messages, outcomes).await?;
        tx.commit().await?;
        Ok(())
    }
}
