//! One conformance suite for every broker adapter, after watermill's
//! universal Pub/Sub tests.
//!
//! An adapter's test crate implements [`Broker`] for a harness that connects
//! to a real server (usually a [`Harness`] of its settings and `connect`
//! functions), then calls [`suite!`]:
//!
//! ```ignore
//! ferry_conformance::suite!(async { MyHarness::connect().await });
//! ```
//!
//! The macro expands to one `#[tokio::test]` per case. Every case runs; a
//! case that checks a [`Capabilities`] flag the harness does not claim checks
//! that nothing breaks without it and returns early. Adding a broker to
//! Ferry means passing this suite.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Capabilities, Sink, Subscriber};

pub mod cases;
mod harness;

pub use harness::{Harness, Server, Shared};

/// A connected broker under test: its publishing half (the adapter's
/// [`Sink`]) and its consuming half (the adapter's [`Subscriber`]).
pub trait Broker: Send + Sync + 'static {
    /// The adapter's sink, publishing to this broker.
    fn sink(&self) -> impl Future<Output = Arc<dyn Sink>> + Send;

    /// A new subscriber on this broker. Cases that model two consumer
    /// processes call this twice.
    fn subscriber(&self) -> impl Future<Output = Arc<dyn Subscriber>> + Send;

    /// What this broker, as the harness runs it, guarantees. Usually the
    /// subscriber's own [`Subscriber::capabilities`]; a harness may clear a
    /// flag the server it runs cannot keep (a Redis without persistence is
    /// not `persistent`), never set one.
    fn capabilities(&self) -> Capabilities;

    /// The longest a message received and dropped unsettled (its consumer
    /// crashed) stays away before the broker redelivers it: a visibility
    /// timeout, a claim idle time, an ack wait.
    fn redelivery_within(&self) -> Duration;

    /// Restarts the broker server, keeping what it persists. Called only when
    /// [`Capabilities::persistent`] is claimed.
    fn restart(&self) -> impl Future<Output = ()> + Send;
}

/// Expands to one `#[tokio::test]` per case of the suite, each building its
/// harness with the given `async` expression.
///
/// ```ignore
/// ferry_conformance::suite!(async { MyHarness::connect().await });
/// ```
#[macro_export]
macro_rules! suite {
    ($harness:expr) => {
        $crate::suite!(@cases $harness;
            round_trip,
            acked_messages_are_not_redelivered,
            nack_redelivers,
            delayed_nack_waits,
            unacked_messages_are_redelivered,
            group_members_share,
            events_fan_out_to_every_group,
            ordered_per_key,
            survives_a_broker_restart,
            duplicates_are_dropped,
            lag_reports_the_backlog,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn harness_claims_only_what_the_adapter_has() {
            let broker = $harness.await;
            let subscriber = $crate::Broker::subscriber(&broker).await;
            $crate::cases::claims_only_what_the_adapter_has(
                $crate::Broker::capabilities(&broker),
                subscriber.capabilities(),
            );
        }
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let broker = $harness.await;
                $crate::cases::$case(&broker).await;
            }
        )+
    };
}
