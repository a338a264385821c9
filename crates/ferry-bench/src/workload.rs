//! What the benchmarks write: outbox rows with a JSON payload that carries a
//! sequence number, keys drawn from a fixed set, and the multi-row INSERT
//! that fills the outbox (also the statement the ceiling times).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_core::Message;
use ferry_store::Database;
use rand::Rng;
use sqlx::{Postgres, QueryBuilder, Sqlite};
use uuid::Uuid;

/// The topic of every benchmark message.
pub const TOPIC: &str = "orders";

/// How large a payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadShape {
    /// An order event of about 220 bytes (the bench-peers ceiling's row).
    Order,
    /// `{"seq":N}`, as the bench-peers job queues enqueue.
    Tiny,
}

/// The payload of message `seq`. It starts with `{"seq":N` so that
/// [`seq_of`] finds the number without parsing the JSON.
pub fn payload(seq: u64, shape: PayloadShape) -> String {
    match shape {
        PayloadShape::Order => format!(
            r#"{{"seq":{seq},"type":"OrderPlaced","order_id":123456789,"customer_id":987654,"amount_cents":129900,"currency":"KRW","items":[{{"sku":"SKU-0001","qty":2}},{{"sku":"SKU-0002","qty":1}}],"note":"benchmark payload padding ......"}}"#
        ),
        PayloadShape::Tiny => format!(r#"{{"seq":{seq}}}"#),
    }
}

/// The sequence number a [`payload`] carries.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    const TAG: &[u8] = br#""seq":"#;
    let at = payload.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let digits = &payload[at..];
    let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A key out of `keys` distinct ones, or none when `keys` is 0.
pub fn key(rng: &mut impl Rng, keys: u32) -> Option<String> {
    (keys > 0).then(|| format!("k{}", rng.gen_range(0..keys)))
}

/// A message as the producer API writes it.
pub fn message(seq: u64, keys: u32, shape: PayloadShape, rng: &mut impl Rng) -> Message {
    let m = Message::event(TOPIC, payload(seq, shape));
    match key(rng, keys) {
        Some(k) => m.with_key(k),
        None => m,
    }
}

/// One outbox row, generated before the clock starts.
#[derive(Clone, Debug)]
pub struct Row {
    /// The message id (UUIDv7, made here as Ferry's producer API does).
    pub id: Uuid,
    /// The same, as SQLite stores it.
    pub id_text: String,
    /// The ordering key.
    pub key: Option<String>,
    /// The JSON payload.
    pub payload: String,
}

/// `n` rows numbered from 0, keys drawn uniformly from `keys` distinct ones.
pub fn rows(n: usize, keys: u32, shape: PayloadShape) -> Vec<Row> {
    let mut rng = rand::thread_rng();
    (0..n as u64)
        .map(|seq| {
            let id = Uuid::now_v7();
            Row {
                id,
                id_text: id.to_string(),
                key: key(&mut rng, keys),
                payload: payload(seq, shape),
            }
        })
        .collect()
}

/// Inserts `rows` with one multi-row `INSERT … VALUES (…), (…)` statement,
/// outside any explicit transaction (so one statement is one transaction).
/// Columns: `message_id`, `topic`, `message_key`, `payload`; the rest take
/// the schema's defaults.
pub async fn insert(db: &Database, rows: &[Row]) -> anyhow::Result<()> {
    const SQL: &str = "INSERT INTO ferry_outbox (message_id, topic, message_key, payload) ";
    match db {
        Database::Mysql(_) => anyhow::bail!("the benchmark does not run on MariaDB"),
        Database::Postgres(pool) => {
            let mut q = QueryBuilder::<Postgres>::new(SQL);
            q.push_values(rows, |mut b, r| {
                b.push_bind(r.id)
                    .push_bind(TOPIC)
                    .push_bind(r.key.as_deref())
                    .push_bind(r.payload.as_str());
            });
            q.build().execute(pool).await?;
        }
        Database::Sqlite(pool) => {
            // The payload as a blob, as `ferry_store::outbox::sqlite::enqueue` writes it.
            let mut q = QueryBuilder::<Sqlite>::new(SQL);
            q.push_values(rows, |mut b, r| {
                b.push_bind(r.id_text.as_str())
                    .push_bind(TOPIC)
                    .push_bind(r.key.as_deref())
                    .push_bind(r.payload.as_bytes());
            });
            q.build().execute(pool).await?;
        }
    }
    Ok(())
}

/// Inserts all `rows`, `per_statement` at a time, from `clients`
/// concurrent connections (each takes an equal share); returns the time
/// from the first statement to the last commit. The pool needs at least
/// `clients` connections.
pub async fn insert_all(
    db: &Database,
    rows: Arc<Vec<Row>>,
    per_statement: usize,
    clients: usize,
) -> anyhow::Result<Duration> {
    let per_statement = per_statement.max(1);
    let clients = clients.max(1);
    let share = rows.len().div_ceil(clients);
    warm(db, clients).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (db, rows) = (db.clone(), rows.clone());
        tasks.spawn(async move {
            let end = ((c + 1) * share).min(rows.len());
            let mut at = (c * share).min(end);
            while at < end {
                let to = (at + per_statement).min(end);
                insert(&db, &rows[at..to]).await?;
                at = to;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an insert client panicked")??;
    }
    Ok(started.elapsed())
}

/// Opens `n` connections of the pool before a clock starts, so that no
/// measurement includes connecting.
pub async fn warm(db: &Database, n: usize) -> anyhow::Result<()> {
    match db {
        Database::Mysql(_) => anyhow::bail!("the benchmark does not run on MariaDB"),
        Database::Postgres(pool) => {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(pool.acquire().await?);
            }
        }
        Database::Sqlite(pool) => {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(pool.acquire().await?);
            }
        }
    }
    Ok(())
}

/// Fills the outbox for a drain: `rows`, `per_statement` at a time from one
/// client, then [`settle`]; returns the fill's time (settling excluded).
pub async fn fill(
    db: &Database,
    rows: Arc<Vec<Row>>,
    per_statement: usize,
) -> anyhow::Result<Duration> {
    let took = insert_all(db, rows, per_statement, 1).await?;
    settle(db).await?;
    Ok(took)
}

/// What the peers' drivers do between filling and draining: PostgreSQL
/// `ANALYZE` and `CHECKPOINT` (so a checkpoint caused by the fill does not
/// land in the drain); SQLite: a WAL checkpoint (no `ANALYZE`, which SQLite
/// never runs on its own).
pub async fn settle(db: &Database) -> anyhow::Result<()> {
    match db {
        Database::Mysql(_) => anyhow::bail!("the benchmark does not run on MariaDB"),
        Database::Postgres(pool) => {
            sqlx::query("ANALYZE ferry_outbox").execute(pool).await?;
            if let Err(e) = sqlx::query("CHECKPOINT").execute(pool).await {
                eprintln!("warning: CHECKPOINT failed ({e}); continuing without it");
            }
        }
        Database::Sqlite(pool) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// Rows in the outbox, any status.
pub async fn count(db: &Database) -> anyhow::Result<i64> {
    let sql = "SELECT COUNT(*) FROM ferry_outbox";
    Ok(match db {
        Database::Mysql(_) => anyhow::bail!("the benchmark does not run on MariaDB"),
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_sequence_number() {
        let p = payload(12345, PayloadShape::Order);
        assert!((200..260).contains(&p.len()), "{}", p.len());
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        assert_eq!(seq_of(p.as_bytes()), Some(12345));
        assert_eq!(seq_of(payload(7, PayloadShape::Tiny).as_bytes()), Some(7));
        assert_eq!(seq_of(br#"{"i":1}"#), None);
    }

    #[test]
    fn keys_come_from_the_set() {
        let many = rows(1000, 10, PayloadShape::Order);
        assert!(many
            .iter()
            .all(|r| r.key.as_deref().is_some_and(|k| k.len() == 2)));
        assert!(rows(3, 0, PayloadShape::Tiny)
            .iter()
            .all(|r| r.key.is_none()));
    }
}
