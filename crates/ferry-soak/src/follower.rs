//! The events API follower: `ferry_events::client::EventsClient` reading
//! the event store's HTTP API (`[events_api]` of the soak's `events`
//! process) page by page, applying each event's effect and inbox row in one
//! PostgreSQL transaction, then committing the page's `next_offset` in
//! `ferry_event_offsets` (reader `api`). Any failed call drops the client
//! and starts over from the committed offset, as a restarted follower
//! would; now and then (seeded) it also drops the client after applying a
//! page and before committing it, a crash at the worst moment: the page
//! comes again and the inbox absorbs it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::MessageId;
use ferry_events::client::{ClientConfig, DatabaseOffsetStore, EventsClient};
use ferry_store::event_store::StoredEvent;
use ferry_store::inbox::{self, Recorded};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

/// The follower's reader name (its offset row) and inbox consumer.
pub const READER: &str = "api";

/// What the follower did.
#[derive(Default)]
pub struct FollowerCounts {
    /// Events applied for the first time.
    pub applied: AtomicU64,
    /// Events the inbox recognised as applied before.
    pub duplicates: AtomicU64,
    /// Times the client was dropped after a failed call.
    pub restarts: AtomicU64,
    /// Times it was dropped on purpose between applying and committing.
    pub crashes: AtomicU64,
}

/// Follows the API at `url` until `stop`, applying into `effects` and
/// keeping its offset in `offsets`.
pub async fn run(
    url: url::Url,
    effects: PgPool,
    offsets: ferry_store::Database,
    seed: u64,
    counts: Arc<FollowerCounts>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x0f01_10e4);
    while !stop.load(Ordering::SeqCst) {
        // Failures are expected under faults; only their count is reported.
        if follow(&url, &effects, &offsets, &mut rng, &counts, &stop)
            .await
            .is_err()
        {
            counts.restarts.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One life of the client: from the committed offset until an error, a
/// simulated crash (`Ok`) or `stop`.
async fn follow(
    url: &url::Url,
    effects: &PgPool,
    offsets: &ferry_store::Database,
    rng: &mut StdRng,
    counts: &FollowerCounts,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let config = ClientConfig {
        limit: 200,
        wait: Some(Duration::from_millis(500)),
        timeout: Duration::from_secs(5),
        ..ClientConfig::new(url.clone())
    };
    let store = DatabaseOffsetStore::new(offsets.clone(), READER);
    let mut client = EventsClient::new(config, store).await?;
    while !stop.load(Ordering::SeqCst) {
        let page = client.next_page().await?;
        for event in &page.events {
            match apply(effects, event).await? {
                Recorded::First => counts.applied.fetch_add(1, Ordering::Relaxed),
                Recorded::Duplicate => counts.duplicates.fetch_add(1, Ordering::Relaxed),
            };
        }
        if !page.events.is_empty() && rng.gen_bool(0.02) {
            counts.crashes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        client.commit(&page).await?;
    }
    Ok(())
}

async fn apply(pool: &PgPool, event: &StoredEvent) -> anyhow::Result<Recorded> {
    let v: serde_json::Value = serde_json::from_slice(&event.payload)?;
    let key = v.get("key").and_then(|k| k.as_str()).unwrap_or_default();
    let n = v.get("n").and_then(|n| n.as_i64()).unwrap_or_default();
    let mut tx = pool.begin().await?;
    let r = inbox::postgres::record(&mut tx, READER, MessageId(event.id)).await?;
    if r == Recorded::First {
        sqlx::query(
            "INSERT INTO soak_effects (path, message_id, msg_key, n) VALUES ($1, $2, $3, $4)",
        )
        .bind(READER)
        .bind(event.id)
        .bind(key)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(r)
}
