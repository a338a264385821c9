//! The producers: transactions that write business rows (`soak_business`)
//! and outbox messages together, on PostgreSQL and on SQLite; half through
//! ferry-store's outbox API, half with the documented plain SQL `INSERT`.
//! A third producer appends to the event store (`ferry_events`) instead,
//! with a row of `soak_event_business` in the same transaction.
//! Some transactions are rolled back on purpose; a few messages are poison
//! (the consumer refuses them for good). Each key belongs to one producer
//! task, which writes it in order, so per-key order is defined.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ferry_core::{Message, MessageId};
use ferry_store::event_store::NewEvent;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{PgPool, SqlitePool};
use uuid::Uuid;

/// Business rows, on PostgreSQL.
pub const PG_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS soak_business (
    message_id UUID PRIMARY KEY, path TEXT NOT NULL, msg_key TEXT NOT NULL,
    n BIGINT NOT NULL, poison BOOLEAN NOT NULL)";
/// Business rows of the event-store producer, on PostgreSQL (the event
/// store is in the same database as the outbox).
pub const EVENTS_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS soak_event_business (
    event_id UUID PRIMARY KEY, msg_key TEXT NOT NULL, n BIGINT NOT NULL)";
/// Business rows, on SQLite.
pub const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS soak_business (
    message_id TEXT PRIMARY KEY, path TEXT NOT NULL, msg_key TEXT NOT NULL,
    n INTEGER NOT NULL, poison INTEGER NOT NULL)";

/// The outbox a producer writes to.
#[derive(Clone)]
pub enum Outbox {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL's event store: events appended with
    /// `ferry_store::event_store::postgres::append`.
    Events(PgPool),
}

/// What the producers did.
#[derive(Default)]
pub struct Produced {
    /// Transactions committed.
    pub committed_tx: u64,
    /// Messages in committed transactions (as far as the producer knows: a
    /// commit whose answer was lost counts as failed).
    pub committed_messages: u64,
    /// Transactions rolled back on purpose.
    pub rolled_back_tx: u64,
    /// Transactions that failed (the database was down or cut).
    pub failed_tx: u64,
    /// Ids of messages in rolled-back or failed transactions.
    pub not_committed: Vec<Uuid>,
    /// When each message's transaction ended (its commit or rollback
    /// returned, or it failed), committed or not: the checker shows the
    /// faults around a violation's time.
    pub ended: HashMap<Uuid, SystemTime>,
}

impl Produced {
    /// Notes that the transaction of `ids` ended now.
    pub fn ended_now(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        let now = SystemTime::now();
        self.ended.extend(ids.into_iter().map(|id| (id, now)));
    }
}

/// One producer task's job.
pub struct Job {
    /// Its name, also the prefix of its keys.
    pub name: String,
    /// Where it writes.
    pub outbox: Outbox,
    /// (path name, topic) pairs it writes to.
    pub paths: Vec<(&'static str, String)>,
    /// Keys it owns.
    pub keys: usize,
    /// Messages to write (committed or not).
    pub messages: u64,
    /// Pace: messages per second.
    pub rate: f64,
    /// Plain SQL instead of the Rust API (SQLite alternates).
    pub plain_sql: bool,
    /// Its random stream's seed.
    pub seed: u64,
    /// Share of transactions rolled back on purpose.
    pub rollback: f64,
    /// Share of poison messages.
    pub poison: f64,
}

struct Planned {
    id: Uuid,
    path: &'static str,
    topic: String,
    key: String,
    n: i64,
    poison: bool,
}

impl Planned {
    fn payload(&self) -> String {
        serde_json::json!({"path": self.path, "key": self.key, "n": self.n, "poison": self.poison})
            .to_string()
    }
}

/// Runs `job` to its end.
pub async fn run(job: Job, out: Arc<Mutex<Produced>>) {
    let mut rng = StdRng::seed_from_u64(job.seed);
    let mut next_n: HashMap<String, i64> = HashMap::new();
    let started = Instant::now();
    let mut written = 0u64;
    let mut tx_index = 0u64;
    while written < job.messages {
        let due = Duration::from_secs_f64(written as f64 / job.rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let size = rng.gen_range(1..=4u64).min(job.messages - written);
        let batch: Vec<Planned> = (0..size)
            .map(|_| {
                let (path, topic) = job.paths[rng.gen_range(0..job.paths.len())].clone();
                let key = format!("{}-k{}", job.name, rng.gen_range(0..job.keys));
                let n = next_n.entry(key.clone()).or_default();
                *n += 1;
                Planned {
                    id: Uuid::now_v7(),
                    path,
                    topic,
                    n: *n,
                    key,
                    poison: rng.gen_bool(job.poison),
                }
            })
            .collect();
        let roll_back = rng.gen_bool(job.rollback);
        let plain = match job.outbox {
            Outbox::Postgres(_) | Outbox::Events(_) => job.plain_sql,
            Outbox::Sqlite(_) => tx_index % 2 == 1,
        };
        tx_index += 1;
        written += size;
        let result = match &job.outbox {
            Outbox::Postgres(pool) => pg_tx(pool, &batch, plain, roll_back).await,
            Outbox::Sqlite(pool) => sqlite_tx(pool, &batch, plain, roll_back).await,
            Outbox::Events(pool) => events_tx(pool, &batch, roll_back).await,
        };
        let failed = result.is_err();
        {
            let mut o = out.lock().unwrap();
            o.ended_now(batch.iter().map(|m| m.id));
            match (failed, roll_back) {
                (false, false) => {
                    o.committed_tx += 1;
                    o.committed_messages += size;
                }
                (false, true) => {
                    o.rolled_back_tx += 1;
                    o.not_committed.extend(batch.iter().map(|m| m.id));
                }
                (true, _) => {
                    o.failed_tx += 1;
                    o.not_committed.extend(batch.iter().map(|m| m.id));
                }
            }
        }
        if failed {
            // The database is down or cut: try again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn pg_tx(
    pool: &PgPool,
    batch: &[Planned],
    plain: bool,
    roll_back: bool,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for m in batch {
        sqlx::query(
            "INSERT INTO soak_business (message_id, path, msg_key, n, poison) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(m.id)
        .bind(m.path)
        .bind(&m.key)
        .bind(m.n)
        .bind(m.poison)
        .execute(&mut *tx)
        .await?;
    }
    if plain {
        for m in batch {
            sqlx::query(
                "INSERT INTO ferry_outbox (message_id, topic, message_key, payload) VALUES ($1, $2, $3, $4)",
            )
            .bind(m.id)
            .bind(&m.topic)
            .bind(&m.key)
            .bind(m.payload())
            .execute(&mut *tx)
            .await?;
        }
    } else {
        let messages: Vec<Message> = batch.iter().map(message).collect();
        ferry_store::outbox::postgres::enqueue_many(&mut tx, &messages).await?;
    }
    if roll_back {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

async fn sqlite_tx(
    pool: &SqlitePool,
    batch: &[Planned],
    plain: bool,
    roll_back: bool,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for m in batch {
        sqlx::query(
            "INSERT INTO soak_business (message_id, path, msg_key, n, poison) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(m.id.to_string())
        .bind(m.path)
        .bind(&m.key)
        .bind(m.n)
        .bind(m.poison)
        .execute(&mut *tx)
        .await?;
        if plain {
            sqlx::query(
                "INSERT INTO ferry_outbox (message_id, topic, message_key, payload) VALUES (?, ?, ?, ?)",
            )
            .bind(m.id.to_string())
            .bind(&m.topic)
            .bind(&m.key)
            .bind(m.payload())
            .execute(&mut *tx)
            .await?;
        } else {
            ferry_store::outbox::sqlite::enqueue(&mut tx, &message(m)).await?;
        }
    }
    if roll_back {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

async fn events_tx(pool: &PgPool, batch: &[Planned], roll_back: bool) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for m in batch {
        sqlx::query("INSERT INTO soak_event_business (event_id, msg_key, n) VALUES ($1, $2, $3)")
            .bind(m.id)
            .bind(&m.key)
            .bind(m.n)
            .execute(&mut *tx)
            .await?;
    }
    // Appended last, as docs/event-store.md advises (the append holds the
    // store-wide lock until the transaction ends).
    let events: Vec<NewEvent> = batch
        .iter()
        .map(|m| {
            NewEvent::new(m.topic.clone(), m.payload())
                .with_id(m.id)
                .with_source("soak", m.key.clone())
        })
        .collect();
    ferry_store::event_store::postgres::append(&mut tx, &events).await?;
    if roll_back {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

fn message(m: &Planned) -> Message {
    let mut msg = Message::event(m.topic.clone(), m.payload()).with_key(m.key.clone());
    msg.id = MessageId(m.id);
    msg
}
