//! The router: subscribes handlers to topics and drives them.

mod subscription;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Kind, MessageId, RetryPolicy, SubscribeError, Subscriber, Subscription};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, LagConfig, RouterConfig};
use crate::middleware::DeadLetters;
use crate::stats::{Counters, Stats};
use crate::{Handler, Layer};

/// The consumer group of a command topic's handler: `command-<topic>`.
///
/// A command has exactly one owner, so its group is derived from the topic
/// rather than chosen per handler: every instance of the owning service
/// shares the one group and each command is handled once.
pub fn command_group(topic: &str) -> String {
    format!("command-{topic}")
}

/// One handler subscribed to one topic.
pub struct Route {
    kind: Kind,
    topic: String,
    group: String,
    handler: Arc<dyn Handler>,
    subscriber: Option<Arc<dyn Subscriber>>,
    prefetch: Option<usize>,
}

impl Route {
    /// `handler` gets every event of `topic` as consumer group `group`:
    /// every group subscribed to a topic gets each event, and the
    /// instances of one group share them.
    pub fn event(
        topic: impl Into<String>,
        group: impl Into<String>,
        handler: impl Handler,
    ) -> Self {
        Self {
            kind: Kind::Event,
            topic: topic.into(),
            group: group.into(),
            handler: Arc::new(handler),
            subscriber: None,
            prefetch: None,
        }
    }

    /// `handler` is the one handler of command `topic`, in the group
    /// [`command_group`] names.
    pub fn command(topic: impl Into<String>, handler: impl Handler) -> Self {
        let topic = topic.into();
        Self {
            kind: Kind::Command,
            group: command_group(&topic),
            topic,
            handler: Arc::new(handler),
            subscriber: None,
            prefetch: None,
        }
    }

    /// Takes this route's messages from `subscriber` instead of the
    /// router's.
    pub fn on(mut self, subscriber: Arc<dyn Subscriber>) -> Self {
        self.subscriber = Some(subscriber);
        self
    }

    /// This route's prefetch instead of the router's.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch);
        self
    }
}

/// A router that cannot be built as asked.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A second handler for one command topic.
    #[error("command `{topic}` has more than one handler; a command has exactly one")]
    DuplicateCommand {
        /// The topic.
        topic: String,
    },
    /// A second handler for one event topic in one group.
    #[error("event `{topic}` has more than one handler in group `{group}`")]
    DuplicateEvent {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// One topic routed both as events and as commands.
    #[error("topic `{topic}` is routed both as events and as commands")]
    KindConflict {
        /// The topic.
        topic: String,
    },
    /// A route without a subscriber, and the router has none.
    #[error("route `{topic}` has no subscriber; set one on the router or the route")]
    NoSubscriber {
        /// The topic.
        topic: String,
    },
    /// No dead-letter destination was given.
    #[error("the router needs a dead-letter destination for poison and malformed messages")]
    NoDeadLetters,
    /// No routes were added.
    #[error("the router has no routes")]
    NoRoutes,
    /// An empty topic or group name.
    #[error("route has an empty topic or group name")]
    EmptyName,
    /// A setting that makes no sense.
    #[error("invalid router settings")]
    Config(#[from] ConfigError),
}

/// A running router that stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The broker refused a subscription in a way no retry fixes, or kept
    /// failing for the configured number of attempts.
    #[error("subscription to `{topic}` as group `{group}` failed")]
    Subscribe {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
        /// What the broker said last.
        #[source]
        source: SubscribeError,
    },
    /// A subscription's task panicked (a bug).
    #[error("subscription to `{topic}` as group `{group}` panicked")]
    Panicked {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
}

/// What shutdown gave back to the brokers unfinished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Per subscription.
    pub subscriptions: Vec<SubscriptionReport>,
}

impl ShutdownReport {
    /// How many messages were given back in all.
    pub fn nacked(&self) -> usize {
        self.subscriptions
            .iter()
            .map(|s| s.nacked.len() + s.nacked_malformed)
            .sum()
    }
}

/// What one subscription gave back at shutdown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionReport {
    /// The topic.
    pub topic: String,
    /// The group.
    pub group: String,
    /// Messages in hand but unfinished when the deadline passed (or not yet
    /// started), nacked for redelivery.
    pub nacked: Vec<MessageId>,
    /// Malformed messages nacked the same way (they have no id).
    pub nacked_malformed: usize,
}

/// Builds a [`Router`]; start with [`Router::builder`].
pub struct RouterBuilder {
    subscriber: Option<Arc<dyn Subscriber>>,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    config: RouterConfig,
    config_layers: Vec<Arc<dyn Layer>>,
    layers: Vec<Arc<dyn Layer>>,
    routes: Vec<Route>,
}

/// Settings every subscription of a router runs with.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) shutdown_timeout: Duration,
    pub(crate) resubscribe: RetryPolicy,
    pub(crate) lag: LagConfig,
}

impl RouterBuilder {
    /// Where routes take their messages unless they name their own.
    pub fn subscriber(mut self, subscriber: Arc<dyn Subscriber>) -> Self {
        self.subscriber = Some(subscriber);
        self
    }

    /// Where poison and malformed messages go (required).
    pub fn dead_letters(mut self, dead_letters: Arc<dyn DeadLetters>) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    /// Takes the settings of `config` and the middleware it asks for
    /// ([`RouterConfig::layers`]), replacing earlier settings. Without it a
    /// router has `RouterConfig`'s default settings and no middleware.
    pub fn config(mut self, config: &RouterConfig) -> Self {
        self.config = config.clone();
        self.config_layers = config.layers();
        self
    }

    /// Adds a layer to every route's handler, inside the configured
    /// middleware and the layers added before it.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Messages held at once per subscription.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.config.prefetch = prefetch;
        self
    }

    /// How long running handlers may take to finish at shutdown.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Backoff between attempts to subscribe to an unavailable broker.
    pub fn resubscribe(mut self, policy: RetryPolicy) -> Self {
        self.config.resubscribe = policy;
        self
    }

    /// Lag polling and warnings.
    pub fn lag(mut self, lag: LagConfig) -> Self {
        self.config.lag = lag;
        self
    }

    /// Routes the events of `topic` to `handler` in consumer group `group`.
    pub fn event(
        self,
        topic: impl Into<String>,
        group: impl Into<String>,
        handler: impl Handler,
    ) -> Self {
        self.route(Route::event(topic, group, handler))
    }

    /// Routes command `topic` to its one `handler`.
    pub fn command(self, topic: impl Into<String>, handler: impl Handler) -> Self {
        self.route(Route::command(topic, handler))
    }

    /// Adds a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Checks the routes and settings and builds the router.
    pub fn build(self) -> Result<Router, BuildError> {
        self.config.validate()?;
        if self.routes.is_empty() {
            return Err(BuildError::NoRoutes);
        }
        let dead_letters = self.dead_letters.ok_or(BuildError::NoDeadLetters)?;
        let mut commands = HashSet::new();
        let mut events = HashSet::new();
        let mut kinds: HashMap<&str, Kind> = HashMap::new();
        for route in &self.routes {
            if route.topic.is_empty() || route.group.is_empty() {
                return Err(BuildError::EmptyName);
            }
            if *kinds.entry(&route.topic).or_insert(route.kind) != route.kind {
                return Err(BuildError::KindConflict {
                    topic: route.topic.clone(),
                });
            }
            let fresh = match route.kind {
                Kind::Command => commands.insert(&route.topic),
                Kind::Event => events.insert((&route.topic, &route.group)),
            };
            if !fresh {
                return Err(match route.kind {
                    Kind::Command => BuildError::DuplicateCommand {
                        topic: route.topic.clone(),
                    },
                    Kind::Event => BuildError::DuplicateEvent {
                        topic: route.topic.clone(),
                        group: route.group.clone(),
                    },
                });
            }
            if route.prefetch == Some(0) {
                return Err(ConfigError::invalid("prefetch", "must be at least 1").into());
            }
        }
        let layers: Vec<_> = self.config_layers.iter().chain(&self.layers).collect();
        let mut plans = Vec::with_capacity(self.routes.len());
        for route in self.routes {
            let subscriber = route
                .subscriber
                .or_else(|| self.subscriber.clone())
                .ok_or_else(|| BuildError::NoSubscriber {
                    topic: route.topic.clone(),
                })?;
            let mut handler = route.handler;
            for layer in layers.iter().rev() {
                handler = layer.layer(handler);
            }
            let subscription = Subscription::new(route.topic.clone(), route.group.clone())
                .with_prefetch(route.prefetch.unwrap_or(self.config.prefetch));
            plans.push(subscription::Plan {
                counters: Arc::new(Counters::new(&route.topic, &route.group)),
                subscriber,
                subscription,
                handler,
            });
        }
        let stats = Stats::new(plans.iter().map(|p| p.counters.clone()).collect());
        Ok(Router {
            plans,
            dead_letters,
            stats,
            settings: Settings {
                shutdown_timeout: self.config.shutdown_timeout,
                resubscribe: self.config.resubscribe,
                lag: self.config.lag,
            },
        })
    }
}

/// Subscribes handlers to topics and drives them until shutdown.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use ferry_consumer::{handler_fn, Router, RouterConfig, memory::MemoryBroker, SinkDeadLetters};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let broker = Arc::new(MemoryBroker::new());
/// let router = Router::builder()
///     .subscriber(broker.clone())
///     .dead_letters(Arc::new(SinkDeadLetters::new(broker.clone())))
///     .config(&RouterConfig::default())
///     .event("user.signed_up", "mailer", handler_fn(|_m, _cx| async { Ok(()) }))
///     .command("coupon.issue", handler_fn(|_m, _cx| async { Ok(()) }))
///     .build()?;
/// let stats = router.stats();
/// let report = router.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// println!("{} messages given back at shutdown; {:?}", report.nacked(), stats.snapshot());
/// # Ok(()) }
/// ```
///
/// For each route the router subscribes (retrying an unavailable broker
/// with capped backoff), pulls up to `prefetch` messages at a time, handles
/// messages of one key one after another and different keys concurrently,
/// and settles each: ack after success, nack (with the error's
/// `retry_after`) after a transient failure, dead letter then ack after a
/// permanent one or when the bytes are not a message.
pub struct Router {
    plans: Vec<subscription::Plan>,
    dead_letters: Arc<dyn DeadLetters>,
    stats: Stats,
    settings: Settings,
}

impl Router {
    /// A builder with default settings, no routes and no middleware.
    pub fn builder() -> RouterBuilder {
        RouterBuilder {
            subscriber: None,
            dead_letters: None,
            config: RouterConfig::default(),
            config_layers: Vec::new(),
            layers: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// A handle on the router's counters, live while it runs and after.
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Runs every subscription until `shutdown` resolves (pass
    /// `token.cancelled_owned()` for a `CancellationToken`), then shuts
    /// down gracefully: stops pulling, lets running handlers finish within
    /// the shutdown timeout, gives the rest back to their brokers, and
    /// reports what it gave back.
    ///
    /// Fails, after shutting the other subscriptions down the same way,
    /// when a broker refuses a subscription for good.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ShutdownReport, RouterError> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        // Aborted with the set should the caller drop this future.
        let mut pollers = JoinSet::new();
        let mut names = HashMap::new();
        // Each one closed once, after every subscription on it has ended.
        let mut subscribers: Vec<Arc<dyn Subscriber>> = Vec::new();
        for plan in self.plans {
            if !subscribers.iter().any(|s| Arc::ptr_eq(s, &plan.subscriber)) {
                subscribers.push(plan.subscriber.clone());
            }
            let (topic, group) = (
                plan.subscription.topic.clone(),
                plan.subscription.group.clone(),
            );
            let lag = subscription::poll_lag(
                plan.subscriber.clone(),
                plan.subscription.clone(),
                plan.counters.clone(),
                self.settings.lag.clone(),
                stop.clone(),
            );
            pollers.spawn(lag);
            let run = subscription::run(
                plan,
                self.settings.clone(),
                self.dead_letters.clone(),
                stop.clone(),
            );
            let id = tasks.spawn(run).id();
            names.insert(id, (topic, group));
        }
        tokio::pin!(shutdown);
        let mut report = ShutdownReport::default();
        let mut failure = None;
        loop {
            tokio::select! {
                _ = &mut shutdown, if !stop.is_cancelled() => {
                    tracing::info!("shutting down the consumer router");
                    stop.cancel();
                }
                joined = tasks.join_next_with_id() => match joined {
                    None => break,
                    Some(Ok((_, Ok(sub)))) => report.subscriptions.push(sub),
                    Some(Ok((_, Err(e)))) => {
                        tracing::error!(error = %ferry_core::error_chain(&e), "consumer router stopping");
                        failure.get_or_insert(e);
                        stop.cancel();
                    }
                    Some(Err(e)) => {
                        let (topic, group) = names.remove(&e.id()).unwrap_or_default();
                        failure.get_or_insert(RouterError::Panicked { topic, group });
                        stop.cancel();
                    }
                },
            }
        }
        // The lag pollers end with `stop`.
        stop.cancel();
        while pollers.join_next().await.is_some() {}
        for subscriber in subscribers {
            if let Err(e) = subscriber.close().await {
                tracing::warn!(subscriber = subscriber.name(), error = %e.describe(), "closing the subscriber failed");
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}
