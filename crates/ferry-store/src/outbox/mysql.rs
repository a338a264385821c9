//! The outbox on MariaDB (10.10 or newer).
//!
//! The same protocol as PostgreSQL: a batch is claimed with `SELECT … FOR
//! UPDATE SKIP LOCKED` in a transaction that stays open until the batch is
//! settled, so several relays share one outbox without taking the same
//! message, and a key is never split between them (the gap check below).
//! The transaction runs at `READ COMMITTED`: at InnoDB's default `REPEATABLE
//! READ` the claim's scan would take gap locks that block producers'
//! inserts until the batch is settled.
//!
//! The lease is the session's `idle_transaction_timeout`
//! ([`crate::ConnectOptions::lease`]): the server kills a connection left
//! idle inside a transaction longer than that, which rolls it back and
//! releases its row locks. MariaDB has no LISTEN/NOTIFY: relays poll, and a
//! producer in the same process can wake its relay with [`Waker::wake`].

use std::time::Duration;

use ferry_core::Message;
use sqlx::mysql::MySqlArguments;
use sqlx::{Arguments, MySql, MySqlConnection, Row, Transaction};

pub use super::Waker;
use super::{
    bind_outbox_message, claimed_from_row, delivered, insert_columns, record_failures, ClaimFilter,
    Claimed, ClaimedBatch, OrderPolicy, Outbox, Outcome, PollingOutbox, Retention,
};
use crate::dialect::{values, Stmt};
use crate::StoreError;

/// Columns of a claimed row, `o` being `ferry_outbox`. Text columns are
/// read through `CAST(… AS CHAR)`: with their binary collation (and the
/// `UUID` type) they reach the client flagged as binary, which sqlx will
/// not decode as a string.
const COLUMNS: &str =
    "o.seq, CAST(o.message_id AS CHAR) AS message_id, CAST(o.kind AS CHAR) AS kind,
    CAST(o.topic AS CHAR) AS topic, CAST(o.message_key AS CHAR) AS message_key,
    CAST(o.headers AS CHAR) AS headers, CAST(o.content_type AS CHAR) AS content_type,
    o.payload, o.attempts, o.created_at";

/// Rows per multi-row `INSERT` (eight placeholders each, well below the
/// protocol's 65,535).
const INSERT_CHUNK: usize = 1000;

/// Writes `message` to the outbox on `conn`, which should be the caller's
/// open transaction (`&mut tx`): the message then commits or rolls back with
/// the caller's own changes. Returns the message's sequence number. Call
/// the relay's [`Waker::wake`] after the commit when it runs in this
/// process, so it sends at once instead of at its next poll.
pub async fn enqueue(conn: &mut MySqlConnection, message: &Message) -> Result<i64, StoreError> {
    let sql = concat!(
        "INSERT INTO ferry_outbox (",
        insert_columns!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    );
    let done = bind_outbox_message(Stmt::<MySql>::new(sql), message)
        .execute_result(conn)
        .await?;
    // AUTO_INCREMENT values are positive and fit a BIGINT.
    Ok(i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX))
}

/// Writes many messages with one statement per thousand; see [`enqueue`].
pub async fn enqueue_many(
    conn: &mut MySqlConnection,
    messages: &[Message],
) -> Result<(), StoreError> {
    for chunk in messages.chunks(INSERT_CHUNK) {
        let sql = format!(
            concat!(
                "INSERT INTO ferry_outbox (",
                insert_columns!(),
                ") VALUES {}"
            ),
            values::<MySql>(chunk.len(), 8)
        );
        let mut stmt = Stmt::<MySql>::new(&sql);
        for m in chunk {
            stmt = bind_outbox_message(stmt, m);
        }
        stmt.execute(conn).await?;
    }
    Ok(())
}

/// The outbox in a MariaDB database.
///
/// Open the pool with a lease ([`crate::ConnectOptions::lease`]) so that a
/// hung relay's claims are released by the server.
pub type MysqlOutbox = PollingOutbox<MySql>;

impl MysqlOutbox {
    fn batch(&self, tx: Option<Transaction<'static, MySql>>, messages: Vec<Claimed>) -> MysqlBatch {
        MysqlBatch {
            tx,
            messages,
            retention: self.retention,
        }
    }
}

/// A batch claimed from a [`MysqlOutbox`]; holds its row locks until settled.
pub struct MysqlBatch {
    tx: Option<Transaction<'static, MySql>>,
    messages: Vec<Claimed>,
    retention: Retention,
}

/// SQL text with its arguments, built together so that placeholders and
/// values cannot drift apart.
struct Sql {
    text: String,
    args: MySqlArguments,
}

impl Sql {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            args: MySqlArguments::default(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind<'q, T>(&mut self, value: T) -> Result<&mut Self, StoreError>
    where
        T: sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + 'q,
    {
        self.args
            .add(value)
            .map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))?;
        Ok(self)
    }

    /// `?, ?, …` bound to `values`.
    fn list<'q, T>(&mut self, values: impl IntoIterator<Item = T>) -> Result<&mut Self, StoreError>
    where
        T: sqlx::Encode<'q, MySql> + sqlx::Type<MySql> + 'q,
    {
        for (i, v) in values.into_iter().enumerate() {
            self.push(if i == 0 { "?" } else { ", ?" });
            self.bind(v)?;
        }
        Ok(self)
    }

    /// `AND {alias}.topic IN (…)` for a topic filter, or nothing. An empty
    /// list matches no topic (`IN (NULL)`), as `= ANY('{}')` on PostgreSQL.
    fn topics(&mut self, alias: &str, topics: Option<&[String]>) -> Result<&mut Self, StoreError> {
        match topics {
            None => {}
            Some([]) => {
                self.push(&format!(" AND {alias}.topic IN (NULL)"));
            }
            Some(t) => {
                self.push(&format!(" AND {alias}.topic IN ("));
                self.list(t.iter().map(String::as_str))?.push(")");
            }
        }
        Ok(self)
    }

    /// Runs it for rows of a key and a sequence number.
    async fn key_seqs<C: FromIterator<(String, i64)>>(
        self,
        tx: &mut Transaction<'static, MySql>,
    ) -> Result<C, StoreError> {
        let rows = sqlx::query_with(&self.text, self.args)
            .fetch_all(&mut **tx)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// In ordered mode, leaves out the messages of each key after its
    /// first message waiting for a retry (`held`: key, seq of that message).
    fn hold_back(&mut self, held: &[(String, i64)]) -> Result<&mut Self, StoreError> {
        if held.is_empty() {
            return Ok(self);
        }
        self.push(" AND (o.message_key IS NULL OR o.message_key NOT IN (");
        self.list(held.iter().map(|(k, _)| k.as_str()))?;
        self.push(") OR o.seq <= CASE o.message_key");
        for (key, seq) in held {
            self.push(" WHEN ? THEN ?");
            self.bind(key.as_str())?.bind(*seq)?;
        }
        self.push(" END)");
        Ok(self)
    }
}

impl Outbox for MysqlOutbox {
    type Batch = MysqlBatch;

    /// No subquery on `ferry_outbox` may run inside the locking statement:
    /// MariaDB would take locks for it too (on index records of other
    /// relays' rows, stalling their settles). What the filters need is read
    /// first, without locks, then passed in as values; a failure recorded
    /// in between is caught by the gap check.
    async fn claim(&self, filter: &ClaimFilter) -> Result<MysqlBatch, StoreError> {
        let topics = filter.topics.as_deref();
        let mut tx = self
            .pool
            .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
            .await?;
        let held = if filter.order == OrderPolicy::Ordered {
            held_keys(&mut tx, topics).await?
        } else {
            Vec::new()
        };
        // Probes: the first due message of each key, read without locks and
        // generously (other relays may hold some), then locked below.
        let firsts = if filter.one_per_key {
            let firsts = first_per_key(&mut tx, filter, &held).await?;
            if firsts.is_empty() {
                tx.rollback().await?;
                return Ok(self.batch(None, Vec::new()));
            }
            Some(firsts)
        } else {
            None
        };
        // The (status, seq) index, forced: it yields rows in sequence order
        // so the scan stops at the limit. A plan that sorts (by way of
        // another index) would lock every due row, not just the batch.
        let mut sql = Sql::new(&format!(
            "SELECT {COLUMNS} FROM ferry_outbox o FORCE INDEX (ferry_outbox_status_seq)
             WHERE o.status = 'pending' AND o.next_attempt_at <= NOW(6)"
        ));
        sql.topics("o", topics)?.hold_back(&held)?;
        if let Some(firsts) = &firsts {
            sql.push(" AND o.seq IN (")
                .list(firsts.iter().copied())?
                .push(")");
        }
        sql.push(" ORDER BY o.seq LIMIT ? FOR UPDATE SKIP LOCKED")
            .bind(i64::from(filter.limit))?;
        let rows = sqlx::query_with(&sql.text, sql.args)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(self.batch(None, Vec::new()));
        }
        // (seq, key) from the columns, whether or not the row is a valid message.
        let keyed = rows
            .iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("message_key")?)))
            .collect::<Result<Vec<(i64, Option<String>)>, sqlx::Error>>()?;
        let gaps = gaps(&mut tx, &keyed, filter.order, topics).await?;
        let messages = rows
            .iter()
            .zip(&keyed)
            .filter(|(_, (seq, key))| {
                let gap = key.as_deref().and_then(|k| gaps.get(k));
                gap.is_none_or(|gap| seq < gap)
            })
            .map(|(row, _)| claimed_from_row::<MySql>(row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.batch(Some(tx), messages))
    }

    async fn next_retry_in(
        &self,
        topics: Option<&[String]>,
    ) -> Result<Option<Duration>, StoreError> {
        let mut sql = Sql::new(
            "SELECT TIMESTAMPDIFF(MICROSECOND, NOW(6), MIN(o.next_attempt_at)) FROM ferry_outbox o
             WHERE o.status = 'pending' AND o.attempts > 0",
        );
        sql.topics("o", topics)?;
        let micros: Option<i64> = sqlx::query_with(&sql.text, sql.args)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(micros.map(|us| super::seconds_until(us as f64 / 1e6)))
    }

    async fn wait_for_work(&self, timeout: Duration) {
        self.waker.wait(timeout).await;
    }

    /// In two steps, so that the purge takes no lock a batch could wait for:
    /// a plain read of delivered rows' numbers, then one `DELETE` per row by
    /// primary key (still delivered). A single ranged `DELETE` at InnoDB's
    /// default isolation takes next-key locks on the delivered index, and a
    /// batch settling at that moment (its rows moving into that index)
    /// deadlocks with it: its outcomes lost, its messages sent again.
    async fn purge_delivered(&self, older_than: Duration) -> Result<u64, StoreError> {
        const CHUNK: i64 = 1000;
        let cutoff = super::before_now(older_than);
        let mut purged = 0;
        loop {
            let seqs: Vec<i64> = sqlx::query_scalar(
                "SELECT seq FROM ferry_outbox FORCE INDEX (ferry_outbox_status_delivered)
                 WHERE status = 'delivered' AND delivered_at < ? LIMIT ?",
            )
            .bind(cutoff)
            .bind(CHUNK)
            .fetch_all(&self.pool)
            .await?;
            if seqs.is_empty() {
                return Ok(purged);
            }
            // The numbers are ours: sent together as text.
            let text: String = seqs
                .iter()
                .map(|seq| {
                    format!("DELETE FROM ferry_outbox WHERE seq = {seq} AND status = 'delivered';")
                })
                .collect();
            purged += sqlx::Executor::execute(&self.pool, text.as_str())
                .await?
                .rows_affected();
            if (seqs.len() as i64) < CHUNK {
                return Ok(purged);
            }
        }
    }
}

/// Per key, the first message waiting for a retry (ordered mode holds back
/// what comes after it). A plain read: it sees what is committed, and locks
/// nothing.
async fn held_keys(
    tx: &mut Transaction<'static, MySql>,
    topics: Option<&[String]>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut sql = Sql::new(
        "SELECT CAST(o.message_key AS CHAR), MIN(o.seq) FROM ferry_outbox o
         WHERE o.status = 'pending' AND o.attempts > 0 AND o.message_key IS NOT NULL",
    );
    sql.topics("o", topics)?.push(" GROUP BY o.message_key");
    sql.key_seqs(tx).await
}

/// Sequence numbers of the first due messages of each key (every keyless
/// message counts as a key of its own), four times the limit. A plain read.
async fn first_per_key(
    tx: &mut Transaction<'static, MySql>,
    filter: &ClaimFilter,
    held: &[(String, i64)],
) -> Result<Vec<i64>, StoreError> {
    let topics = filter.topics.as_deref();
    let mut sql = Sql::new(
        "SELECT o.seq FROM ferry_outbox o FORCE INDEX (ferry_outbox_status_seq)
         WHERE o.status = 'pending' AND o.next_attempt_at <= NOW(6)",
    );
    sql.topics("o", topics)?.hold_back(held)?.push(
        " AND (o.message_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM ferry_outbox h
            WHERE h.status = 'pending' AND h.next_attempt_at <= NOW(6)
              AND h.message_key = o.message_key AND h.seq < o.seq",
    );
    sql.topics("h", topics)?
        .push(")) ORDER BY o.seq LIMIT ?")
        .bind(i64::from(filter.limit).saturating_mul(4))?;
    Ok(sqlx::query_scalar_with(&sql.text, sql.args)
        .fetch_all(&mut **tx)
        .await?)
}

/// Per key in the batch, the first earlier pending message that is *not*
/// in it (locked by another relay's batch, or held back): messages of that
/// key from the gap on must be left out, so that a key never overtakes
/// itself. In unordered mode only never-attempted messages count, since a
/// failed one may be passed. A plain read.
async fn gaps(
    tx: &mut Transaction<'static, MySql>,
    batch: &[(i64, Option<String>)],
    order: OrderPolicy,
    topics: Option<&[String]>,
) -> Result<std::collections::HashMap<String, i64>, StoreError> {
    let mut keys: Vec<&str> = batch.iter().filter_map(|(_, k)| k.as_deref()).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(Default::default());
    }
    // The batch is in sequence order.
    let last = batch.last().map_or(i64::MAX, |(seq, _)| *seq);
    let mut sql = Sql::new(
        "SELECT CAST(o.message_key AS CHAR), MIN(o.seq) FROM ferry_outbox o
         WHERE o.status = 'pending' AND o.message_key IN (",
    );
    sql.list(keys)?
        .push(") AND o.seq < ?")
        .bind(last)?
        .push(" AND o.seq NOT IN (")
        .list(batch.iter().map(|(seq, _)| *seq))?
        .push(")");
    if order == OrderPolicy::Unordered {
        sql.push(" AND o.attempts = 0");
    }
    sql.topics("o", topics)?.push(" GROUP BY o.message_key");
    sql.key_seqs(tx).await
}

impl ClaimedBatch for MysqlBatch {
    fn messages(&self) -> &[Claimed] {
        &self.messages
    }

    async fn settle(mut self, outcomes: &[Outcome]) -> Result<(), StoreError> {
        let Some(mut tx) = self.tx.take() else {
            return Ok(());
        };
        debug_assert_eq!(outcomes.len(), self.messages.len());
        for chunk in delivered(&self.messages, outcomes).chunks(INSERT_CHUNK) {
            match self.retention {
                // One DELETE per row, sent together as text (the numbers
                // are ours): a DELETE … IN (…) reads past its last row and,
                // having no semi-consistent read, waits for the row after
                // it if another relay's batch holds it.
                Retention::Delete => {
                    let text: String = chunk
                        .iter()
                        .map(|seq| format!("DELETE FROM ferry_outbox WHERE seq = {seq};"))
                        .collect();
                    sqlx::Executor::execute(&mut *tx, text.as_str()).await?;
                }
                Retention::Keep(_) => {
                    let sql = format!(
                        "UPDATE ferry_outbox FORCE INDEX (PRIMARY)
                         SET status = 'delivered', delivered_at = NOW(6), attempts = attempts + 1
                         WHERE seq IN ({})",
                        vec!["?"; chunk.len()].join(", ")
                    );
                    let mut q = sqlx::query(&sql);
                    for seq in chunk {
                        q = q.bind(seq);
                    }
                    q.execute(&mut *tx).await?;
                }
            }
        }
        record_failures::<MySql>(&mut tx, &self.messages, outcomes).await?;
        tx.commit().await?;
        Ok(())
    }
}
