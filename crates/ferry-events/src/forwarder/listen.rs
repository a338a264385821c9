//! PostgreSQL wake-ups: LISTEN on the event store's channel.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes the forwarder on the event store's NOTIFY. Logs once per change
/// of state; polling covers the gaps.
pub(super) async fn listen(pool: sqlx::PgPool, wake: Arc<Notify>, forwarder: String) {
    use ferry_store::event_store::postgres::CHANNEL;
    let mut healthy = true;
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            if !healthy {
                tracing::info!(forwarder = %forwarder, channel = CHANNEL, "listening for event notifications again");
                healthy = true;
            }
            // Anything committed while we were not listening.
            wake.notify_one();
            loop {
                // `None`: the connection was lost and is re-established on
                // the next call; a wake-up covers what committed meanwhile.
                let _ = listener.try_recv().await?;
                wake.notify_one();
            }
        }
        .await;
        if let Err(error) = result {
            if healthy {
                tracing::warn!(forwarder = %forwarder, channel = CHANNEL, error = %error,
                    "event notifications unavailable; relying on polling");
                healthy = false;
            }
            wake.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
