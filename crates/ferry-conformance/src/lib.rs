//! The conformance suite every broker adapter passes, including the
//! in-memory double and the outbox read as a source.
//!
//! An adapter's tests implement [`Broker`] for a connection to a real
//! server and invoke [`conformance_suite!`], which expands to one
//! `#[tokio::test]` per case. Each case uses topics and groups of its own,
//! so cases run in parallel against one server. A case checks the contract
//! every [`Subscriber`](ferry_core::Subscriber) and [`Sink`](ferry_core::Sink)
//! keep, and each flag the adapter's
//! [`Capabilities`](ferry_core::Capabilities) sets; the checks of a flag that
//! is not set are skipped (and say so on stderr).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{BoxFuture, Sink, Subscriber};

pub mod cases;

/// A broker under test, as the suite sees it.
pub trait Broker: Send + Sync + 'static {
    /// Opens a new connection to the broker: a sink to publish with and a
    /// subscriber to receive with. Each call makes new clients, so a case
    /// can drop one consumer (as if it crashed) and start another.
    fn connect(&self) -> BoxFuture<'_, Connected>;

    /// Stops the broker and starts it again, keeping its data directory;
    /// `None` when this harness cannot. Used by the persistence case, which
    /// is skipped without it.
    fn restart(&self) -> Option<BoxFuture<'_, ()>> {
        None
    }

    /// The longest a message received and then abandoned (neither acked
    /// nor nacked, its consumer gone) waits before the broker delivers it
    /// again, as this harness configures the adapter (visibility timeout,
    /// ack wait, pending idle time). The suite waits up to a few times this.
    fn redelivery_after(&self) -> Duration;
}

/// A sink and a subscriber on one broker.
#[derive(Clone)]
pub struct Connected {
    /// Publishes.
    pub sink: Arc<dyn Sink>,
    /// Receives.
    pub subscriber: Arc<dyn Subscriber>,
}

/// Expands to one `#[tokio::test]` per conformance case, each run against
/// the [`Broker`] that `$setup` (an expression of a type implementing
/// `Future<Output = impl Broker>`) produces.
///
/// ```ignore
/// ferry_conformance::conformance_suite!(crate::harness::RedisHarness::new());
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($setup:expr) => {
        $crate::conformance_suite!(@cases $setup;
            publish_then_receive,
        );
    };
    (@cases $setup:expr; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let broker = $setup.await;
                $crate::cases::$case(&broker).await;
            }
        )*
    };
}
