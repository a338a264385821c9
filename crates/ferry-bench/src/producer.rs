//! An open-loop producer: one message per transaction at a steady rate,
//! recording when each send started and when its commit returned.
//!
//! Send `i` fires at `t0 + i / rate` whatever happened to the earlier ones
//! (at most `max_in_flight` outstanding; a send that finds them all busy
//! waits and is counted as late), as the bench-peers producers do.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ferry_core::Message;
use ferry_store::outbox::postgres::enqueue;
use ferry_store::{ConnectOptions, Database};
use sqlx::PgPool;

use crate::handoff::Stamp;
use crate::workload::{self, PayloadShape};

/// How to produce.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// The outbox database (PostgreSQL).
    pub url: String,
    /// Messages per second.
    pub rate: f64,
    /// For how long.
    pub secs: f64,
    /// Distinct ordering keys (0: none).
    pub keys: u32,
    /// Payload size.
    pub shape: PayloadShape,
    /// `BEGIN; INSERT; COMMIT` (Ferry's intended use: the outbox write
    /// rides on the caller's transaction) rather than one autocommit INSERT.
    pub in_transaction: bool,
    /// Most sends outstanding at once (the pool holds as many connections).
    pub max_in_flight: usize,
}

/// One message's send.
#[derive(Clone, Copy, Debug)]
pub struct Commit {
    /// Its sequence number (in the payload).
    pub seq: u64,
    /// When the send started.
    pub sent: Stamp,
    /// When the commit returned to the producer.
    pub committed: Stamp,
}

/// What a producer did.
#[derive(Clone, Debug)]
pub struct Produced {
    /// Every send, by sequence number.
    pub commits: Vec<Commit>,
    /// Sends that found `max_in_flight` sends outstanding.
    pub late: u64,
    /// From the first scheduled send to the last commit.
    pub secs: f64,
}

/// Runs the producer on a thread of its own with a current-thread runtime
/// (and its own connections), so that it does not share the relay's
/// runtime workers.
pub async fn produce_on_own_thread(config: ProducerConfig) -> anyhow::Result<Produced> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("producer".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("producer runtime")
                .and_then(|rt| rt.block_on(produce(config)));
            let _ = tx.send(result);
        })
        .context("start producer thread")?;
    rx.await.context("the producer thread died")?
}

/// Runs the producer on the current runtime.
pub async fn produce(config: ProducerConfig) -> anyhow::Result<Produced> {
    let db = Database::connect_with(
        &config.url,
        &ConnectOptions {
            max_connections: config.max_in_flight as u32,
            lease: None,
        },
    )
    .await
    .context("producer: cannot connect")?;
    let Database::Postgres(pool) = &db else {
        bail!("the producer needs a postgres:// database");
    };
    let result = paced(pool, &config).await;
    db.close().await;
    result
}

async fn paced(pool: &PgPool, config: &ProducerConfig) -> anyhow::Result<Produced> {
    // Open every connection before the clock starts.
    let mut warm = Vec::new();
    for _ in 0..config.max_in_flight {
        warm.push(pool.acquire().await?);
    }
    drop(warm);

    let n = (config.rate * config.secs).round() as u64;
    let mut rng = rand::thread_rng();
    let messages: Vec<Arc<Message>> = (0..n)
        .map(|i| Arc::new(workload::message(i, config.keys, config.shape, &mut rng)))
        .collect();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight));
    let mut late = 0;
    let mut tasks = Vec::with_capacity(n as usize);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    for (i, message) in messages.into_iter().enumerate() {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / config.rate)).await;
        if slots.available_permits() == 0 {
            late += 1;
        }
        let slot = slots.clone().acquire_owned().await?;
        let pool = pool.clone();
        let in_transaction = config.in_transaction;
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            let sent = Stamp::now();
            if in_transaction {
                let mut tx = pool.begin().await?;
                enqueue(&mut tx, &message).await?;
                tx.commit().await?;
            } else {
                let mut conn = pool.acquire().await?;
                enqueue(&mut conn, &message).await?;
            }
            let committed = Stamp::now();
            anyhow::Ok(Commit {
                seq: i as u64,
                sent,
                committed,
            })
        }));
    }
    let mut commits = Vec::with_capacity(tasks.len());
    for t in tasks {
        commits.push(t.await.context("a send panicked")??);
    }
    let secs = (tokio::time::Instant::now() - t0).as_secs_f64();
    Ok(Produced {
        commits,
        late,
        secs,
    })
}
