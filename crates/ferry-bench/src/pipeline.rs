//! Runs a relay in the background of the benchmark process, as an
//! application embedding Ferry would: [`ferry_relay::spawn`], with the
//! relay's result ignored on stop as the benchmarks always did.

use std::sync::Arc;

use ferry_core::Sink;
use ferry_relay::RelayConfig;
use ferry_store::Database;

/// A relay running on its own task.
pub struct Running(ferry_relay::Running);

impl std::ops::Deref for Running {
    type Target = ferry_relay::Running;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Starts a relay from `db`'s outbox to `sink`.
pub fn spawn(db: &Database, sink: Arc<dyn Sink>, config: RelayConfig) -> Running {
    Running(ferry_relay::spawn(db, sink, config))
}

impl Running {
    /// Asks it to stop and waits until it has; how it ended is not asked
    /// for (a panic is already in the log).
    pub async fn stop(self) {
        let _ = self.0.stop().await;
    }
}
