//! [`Harness`]: the [`Broker`] of an adapter whose sink and subscriber each
//! connect from one settings value, so that an adapter's test crate names
//! its settings, its two `connect` functions and its server, and nothing
//! else.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Capabilities, Sink, Subscriber};
use futures::future::BoxFuture;

use crate::Broker;

/// A server that a harness runs for itself and may restart, keeping what
/// it persists: what the restart case needs.
pub trait Server: Send + Sync + 'static {
    /// Stops the server (as a crash would, or cleanly) and starts it again
    /// on the same port and storage, returning once it answers.
    fn restart(&self) -> impl Future<Output = ()> + Send;
}

/// The server of a harness that runs none of its own (a shared one, or one
/// a script started): it is never restarted, so such a harness must not
/// claim [`Capabilities::persistent`] (see [`Harness::not_persistent`]).
#[derive(Debug)]
pub struct Shared;

impl Server for Shared {
    async fn restart(&self) {
        unreachable!("persistent is not claimed: the harness runs no server to restart");
    }
}

/// Connects one half of an adapter from a copy of its settings.
type Connect<C, T> = Box<dyn Fn(C) -> BoxFuture<'static, Arc<T>> + Send + Sync>;

/// A [`Broker`] made of an adapter's settings `C`, its sink's and its
/// subscriber's `connect` functions, and the server `S` it runs on.
///
/// It claims what the adapter's subscriber claims, less what
/// [`Harness::not_persistent`] clears.
pub struct Harness<C, S = Shared> {
    config: C,
    server: S,
    sink: Connect<C, dyn Sink>,
    subscriber: Connect<C, dyn Subscriber>,
    capabilities: Capabilities,
    redelivery_within: Option<Duration>,
}

impl<C: Clone + Send + Sync + 'static> Harness<C> {
    /// A harness connecting `sink(config)` and `subscriber(config)` (an
    /// adapter's `XSink::connect` and `XSubscriber::connect`), each
    /// unwrapped, with the claims of a first subscriber. Its
    /// [`Broker::redelivery_within`] is set by
    /// [`Harness::redelivered_within`], which every harness calls.
    pub async fn connect<K, KF, KE, B, BF, BE>(
        config: C,
        sink: impl Fn(C) -> KF + Send + Sync + 'static,
        subscriber: impl Fn(C) -> BF + Send + Sync + 'static,
    ) -> Self
    where
        KF: Future<Output = Result<K, KE>> + Send + 'static,
        K: Sink,
        KE: Debug,
        BF: Future<Output = Result<B, BE>> + Send + 'static,
        B: Subscriber,
        BE: Debug,
    {
        let sink: Connect<C, dyn Sink> = Box::new(move |config| {
            let connecting = sink(config);
            Box::pin(async move { Arc::new(connecting.await.unwrap()) as Arc<dyn Sink> })
        });
        let subscriber: Connect<C, dyn Subscriber> = Box::new(move |config| {
            let connecting = subscriber(config);
            Box::pin(async move { Arc::new(connecting.await.unwrap()) as Arc<dyn Subscriber> })
        });
        let capabilities = subscriber(config.clone()).await.capabilities();
        Self {
            config,
            server: Shared,
            sink,
            subscriber,
            capabilities,
            redelivery_within: None,
        }
    }

    /// The same harness on a server of its own, which the restart case
    /// restarts; kept (and so running) as long as the harness.
    pub fn on<S: Server>(self, server: S) -> Harness<C, S> {
        Harness {
            config: self.config,
            server,
            sink: self.sink,
            subscriber: self.subscriber,
            capabilities: self.capabilities,
            redelivery_within: self.redelivery_within,
        }
    }
}

impl<C, S> Harness<C, S> {
    /// The longest a message received and dropped unsettled stays away
    /// before the broker redelivers it (see [`Broker::redelivery_within`]).
    pub fn redelivered_within(mut self, redelivery_within: Duration) -> Self {
        self.redelivery_within = Some(redelivery_within);
        self
    }

    /// Checks that the adapter claims exactly the capabilities named in
    /// `expected` (field names of [`Capabilities`]), before
    /// [`Harness::not_persistent`]: a capability an adapter stopped
    /// claiming by mistake would otherwise only make its cases skip.
    pub fn claims(self, expected: &[&str]) -> Self {
        let c = &self.capabilities;
        let flags = [
            ("ordered_per_key", c.ordered_per_key),
            ("persistent", c.persistent),
            ("consumer_groups", c.consumer_groups),
            ("redelivers_unacked", c.redelivers_unacked),
            ("dedups_by_id", c.dedups_by_id),
            ("delayed_nack", c.delayed_nack),
        ];
        for name in expected {
            assert!(
                flags.iter().any(|(n, _)| n == name),
                "`{name}` is not a capability"
            );
        }
        let claimed: Vec<&str> = flags
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        let mut pinned = expected.to_vec();
        pinned.sort_unstable();
        let mut sorted = claimed.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted, pinned,
            "the adapter's claims differ from the ones its conformance harness pins"
        );
        self
    }

    /// Clears [`Capabilities::persistent`]: the server as the harness runs
    /// it keeps nothing across a restart (memory storage), or the harness
    /// cannot restart it. The restart case then does not run.
    pub fn not_persistent(mut self) -> Self {
        self.capabilities.persistent = false;
        self
    }
}

impl<C: Clone + Send + Sync + 'static, S: Server> Broker for Harness<C, S> {
    async fn sink(&self) -> Arc<dyn Sink> {
        (self.sink)(self.config.clone()).await
    }

    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        (self.subscriber)(self.config.clone()).await
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn redelivery_within(&self) -> Duration {
        self.redelivery_within
            .expect("the harness sets redelivered_within")
    }

    async fn restart(&self) {
        self.server.restart().await;
    }
}
