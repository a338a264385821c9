//! Pausing a relay by hand: an operator stops deliveries of one pipeline
//! (a receiver under maintenance, a bad deploy downstream) without
//! stopping the process, and resumes them later.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Pauses and resumes a [`Relay`](crate::Relay); clones share the switch.
///
/// While paused, the relay's workers claim nothing: batches already in
/// flight are settled as usual, then messages wait in the outbox (nothing
/// is lost or counted as an attempt), and deliveries go on where they
/// stopped once resumed.
#[derive(Clone, Debug)]
pub struct PauseSwitch(watch::Sender<bool>);

impl Default for PauseSwitch {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl PauseSwitch {
    /// A switch that starts resumed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pauses; returns whether it was running.
    pub fn pause(&self) -> bool {
        !self.0.send_replace(true)
    }

    /// Resumes; returns whether it was paused.
    pub fn resume(&self) -> bool {
        self.0.send_replace(false)
    }

    /// Whether it is paused now.
    pub fn is_paused(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once resumed (at once when not paused) or `shutdown` is
    /// cancelled.
    pub(crate) async fn resumed(&self, shutdown: &CancellationToken) {
        let mut rx = self.0.subscribe();
        tokio::select! {
            _ = rx.wait_for(|paused| !paused) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_paused_switch_holds_until_resumed_or_shut_down() {
        let switch = PauseSwitch::new();
        let shutdown = CancellationToken::new();
        // Not paused: at once.
        switch.resumed(&shutdown).await;
        assert!(switch.pause());
        assert!(!switch.pause(), "pausing twice reports it was paused");
        let waiting = tokio::spawn({
            let (switch, shutdown) = (switch.clone(), shutdown.clone());
            async move { switch.resumed(&shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        assert!(switch.resume());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        switch.pause();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), switch.resumed(&shutdown))
            .await
            .unwrap();
    }
}
