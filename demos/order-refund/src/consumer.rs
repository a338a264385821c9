//! The external consumer: a program outside the shop (here, a task of the
//! demo's own process) that follows the `order.cancelled` events over the
//! shop's HTTP offset API with Ferry's `EventsClient`, keeping its offset
//! in a file.
//!
//! It records each event, then commits the page's offset to the file.
//! Whenever a request fails (the shop was killed during a long poll, or is
//! down), it drops its client and makes a new one, which starts from the
//! offset in the file, as a restarted program would.

use std::path::PathBuf;
use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_events::client::{ClientConfig, EventsClient, FileOffsetStore};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::orders::{OrderCancelled, ORDER_CANCELLED};

/// Where and how the consumer reads.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// The shop's base URL.
    pub url: Url,
    /// The file that keeps the offset.
    pub offset_file: PathBuf,
    /// Events per page.
    pub limit: u32,
}

/// An event as the consumer saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its sequence number.
    pub seq: i64,
    /// Its id.
    pub id: uuid::Uuid,
    /// The order, when the payload decoded.
    pub order_id: Option<i64>,
}

/// What the consumer did.
#[derive(Clone, Debug, Default)]
pub struct ConsumerLog {
    /// Every event handed to it, in the order it got them.
    pub seen: Vec<Seen>,
    /// Pages read (empty ones included).
    pub pages: u64,
    /// The offsets new clients started from after the shop went away,
    /// read from the offset file.
    pub resumed_from: Vec<i64>,
    /// The offset in the file at the end.
    pub committed: i64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Follows the events until its committed offset reaches the target sent
/// on `until`, or `cancel` is cancelled.
pub async fn follow(
    options: ConsumerOptions,
    mut until: watch::Receiver<Option<i64>>,
    cancel: CancellationToken,
) -> ConsumerLog {
    let mut log = ConsumerLog::default();
    if let Err(e) = follow_into(&options, &mut until, &cancel, &mut log).await {
        log.error = Some(format!("{e:#}"));
    }
    log
}

async fn follow_into(
    options: &ConsumerOptions,
    until: &mut watch::Receiver<Option<i64>>,
    cancel: &CancellationToken,
    log: &mut ConsumerLog,
) -> anyhow::Result<()> {
    let config = ClientConfig {
        limit: options.limit,
        event_type: Some(ORDER_CANCELLED.to_owned()),
        wait: Some(Duration::from_millis(500)),
        timeout: Duration::from_secs(5),
        // No retries inside the client: at the first failure the consumer
        // starts over from its offset file, as a restarted program would.
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        ..ClientConfig::new(options.url.clone())
    };
    let store = || FileOffsetStore::new(&options.offset_file);
    let mut client = EventsClient::new(config.clone(), store()).await?;
    loop {
        log.committed = client.committed();
        if until
            .borrow()
            .is_some_and(|target| client.committed() >= target)
        {
            return Ok(());
        }
        let page = tokio::select! {
            page = client.next_page() => page,
            _ = cancel.cancelled() => return Ok(()),
        };
        match page {
            Ok(page) => {
                log.pages += 1;
                for event in &page.events {
                    let order_id = serde_json::from_slice::<OrderCancelled>(&event.payload)
                        .ok()
                        .map(|c| c.order_id);
                    log.seen.push(Seen {
                        seq: event.seq,
                        id: event.id,
                        order_id,
                    });
                }
                client.commit(&page).await?;
            }
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %ferry_core::error_chain(&e), "events api unavailable; starting over from the offset file");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
                drop(client);
                client = EventsClient::new(config.clone(), store()).await?;
                log.resumed_from.push(client.committed());
            }
            Err(e) => return Err(e.into()),
        }
    }
}
