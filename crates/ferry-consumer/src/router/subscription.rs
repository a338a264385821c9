//! One subscription at run time: subscribe, pull, dispatch per key, settle,
//! drain.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use ferry_core::{
    Kind, Malformed, Message, MessageId, MessageStream, Received, SubscribeError, Subscriber,
    Subscription,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{RouterError, Settings, SubscriptionReport};
use crate::config::LagConfig;
use crate::middleware::dead_letter::bury;
use crate::middleware::DeadLetters;
use crate::stats::{lag_exceeds, Counters};
use crate::{Context, Handler, HandlerError};

/// How long, after the shutdown deadline, cancelled handlers get to nack
/// their messages before their tasks are aborted.
const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// A route, ready to run.
pub(crate) struct Plan {
    pub(crate) subscriber: Arc<dyn Subscriber>,
    pub(crate) subscription: Subscription,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) counters: Arc<Counters>,
}

/// A message taken from the broker, with its place in the prefetch window.
struct Job {
    received: Received,
    _permit: OwnedSemaphorePermit,
}

/// What the tasks handling one subscription's messages share.
struct Shared {
    topic: String,
    group: Arc<str>,
    handler: Arc<dyn Handler>,
    dead_letters: Arc<dyn DeadLetters>,
    counters: Arc<Counters>,
    /// Set at shutdown: messages not started yet are given back.
    halt: CancellationToken,
    /// Set when the shutdown deadline passes: running handlers are dropped
    /// and their messages given back.
    abort: CancellationToken,
    /// Per key, the messages waiting behind the one being handled. A key
    /// is present while a task is working through its messages.
    lanes: Mutex<HashMap<String, VecDeque<Job>>>,
    nacked: Mutex<Vec<MessageId>>,
    nacked_malformed: AtomicUsize,
    /// Whether settling is failing, to log once per change.
    settle_failing: AtomicBool,
    /// The broker keeps each key's order
    /// ([`ordered_per_key`](ferry_core::Capabilities::ordered_per_key)) and
    /// redelivers only what is nacked or left by a consumer that stopped
    /// (no [`delayed_nack`](ferry_core::Capabilities::delayed_nack), no
    /// redelivery timer: Kafka). A keyed message that fails transiently is
    /// then tried again in place, its key's later messages waiting behind
    /// it, instead of being nacked: a nack seeks the partition back, but
    /// the key's later messages already handed out would be handled before
    /// the redelivery, out of order. (A broker with a redelivery timer,
    /// such as NATS' `ack_wait`, would deliver a held message again on its
    /// own: those are nacked as before.)
    hold_keys: bool,
}

/// The waits between the in-place attempts of a held key's message.
fn hold_backoff() -> ferry_core::RetryPolicy {
    ferry_core::RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        ..ferry_core::RetryPolicy::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts a message in flight until it is settled.
struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one subscription until `stop`, then drains it.
pub(crate) async fn run(
    plan: Plan,
    settings: Settings,
    dead_letters: Arc<dyn DeadLetters>,
    stop: CancellationToken,
) -> Result<SubscriptionReport, RouterError> {
    let Plan {
        subscriber,
        subscription,
        handler,
        counters,
    } = plan;
    let shared = Arc::new(Shared {
        topic: subscription.topic.clone(),
        group: subscription.group.as_str().into(),
        handler,
        dead_letters,
        counters,
        halt: CancellationToken::new(),
        abort: CancellationToken::new(),
        lanes: Mutex::default(),
        nacked: Mutex::default(),
        nacked_malformed: AtomicUsize::new(0),
        settle_failing: AtomicBool::new(false),
        hold_keys: {
            let can = subscriber.capabilities();
            can.ordered_per_key && !can.delayed_nack
        },
    });
    let permits = Arc::new(Semaphore::new(subscription.prefetch.max(1)));
    let mut tasks = JoinSet::new();
    // Kept until the drain is over: closing it may make some brokers
    // redeliver, or refuse the acks of messages still being handled.
    let mut stream: Option<MessageStream> = None;
    let mut health = Health::default();
    let result = loop {
        reap(&mut tasks);
        let Some(messages) = stream.as_mut() else {
            let attempt = tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(()),
                attempt = subscriber.subscribe(&subscription) => attempt,
            };
            match attempt {
                Ok(s) => {
                    stream = Some(s);
                    shared.counters.subscribed.store(true, Ordering::Relaxed);
                    health.up(&*subscriber, &subscription);
                }
                Err(error) => match health.down(error, &*subscriber, &subscription, &settings) {
                    Ok(wait) => {
                        tokio::select! {
                            _ = stop.cancelled() => break Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                    Err(fatal) => break Err(fatal),
                },
            }
            continue;
        };
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            permit = permits.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            // The semaphore is never closed.
            break Ok(());
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            _ = shared.handler.ready() => {}
        }
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            item = messages.next() => item,
        };
        let error = match item {
            Some(Ok(received)) => {
                if health.down || health.failures > 0 {
                    health.delivered(&*subscriber, &subscription);
                }
                dispatch(&shared, &mut tasks, received, permit);
                continue;
            }
            Some(Err(error)) => error,
            None => SubscribeError::unavailable("message stream ended"),
        };
        stream = None;
        shared.counters.subscribed.store(false, Ordering::Relaxed);
        match health.down(error, &*subscriber, &subscription, &settings) {
            Ok(wait) => {
                tokio::select! {
                    _ = stop.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(fatal) => break Err(fatal),
        }
    };
    let report = drain(&shared, &mut tasks, settings.shutdown_timeout).await;
    drop(stream);
    shared.counters.subscribed.store(false, Ordering::Relaxed);
    result.map(|()| report)
}

/// Whether the broker answers, to log once per change and back off.
///
/// A subscription counts as back only once its stream delivered a message
/// or stayed up for [`HEALTHY_AFTER`]: a stream that fails right after each
/// subscribe keeps backing off and logs nothing new.
#[derive(Default)]
struct Health {
    failures: u32,
    down: bool,
    up_since: Option<std::time::Instant>,
}

/// How long a stream must stay up before a failure counts as a new outage.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

impl Health {
    fn up(&mut self, subscriber: &dyn Subscriber, subscription: &Subscription) {
        tracing::debug!(
            broker = subscriber.name(),
            topic = %subscription.topic,
            group = %subscription.group,
            "subscribed"
        );
        self.up_since = Some(std::time::Instant::now());
    }

    /// The stream delivered: the broker is back, if it was down.
    fn delivered(&mut self, subscriber: &dyn Subscriber, subscription: &Subscription) {
        if self.down {
            tracing::info!(
                broker = subscriber.name(),
                topic = %subscription.topic,
                group = %subscription.group,
                "subscribed again"
            );
        }
        self.down = false;
        self.failures = 0;
    }

    /// The wait before subscribing again, or the error that ends the
    /// subscription.
    fn down(
        &mut self,
        error: SubscribeError,
        subscriber: &dyn Subscriber,
        subscription: &Subscription,
        settings: &Settings,
    ) -> Result<Duration, RouterError> {
        if self
            .up_since
            .take()
            .is_some_and(|since| since.elapsed() >= HEALTHY_AFTER)
        {
            // It was up for long: this is a new outage, not the old one.
            self.delivered(subscriber, subscription);
        }
        self.failures = self.failures.saturating_add(1);
        if !error.is_retryable() || !settings.resubscribe.allows_another(self.failures) {
            return Err(RouterError::Subscribe {
                topic: subscription.topic.clone(),
                group: subscription.group.clone(),
                source: error,
            });
        }
        if !self.down {
            self.down = true;
            tracing::warn!(
                broker = subscriber.name(),
                topic = %subscription.topic,
                group = %subscription.group,
                error = %error.describe(),
                "broker unavailable; subscribing again with backoff"
            );
        }
        Ok(settings.resubscribe.delay(self.failures))
    }
}

/// Collects finished message tasks, so the set does not grow.
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        log_panic(done);
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            // The message was dropped unsettled: the broker redelivers it.
            tracing::error!("a message handler panicked");
        }
    }
}

/// Starts `received` now, or queues it behind the message of its key being
/// handled.
fn dispatch(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    received: Received,
    permit: OwnedSemaphorePermit,
) {
    shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let job = Job {
        received,
        _permit: permit,
    };
    let key = job
        .received
        .message
        .as_ref()
        .ok()
        .and_then(|m| m.key.clone());
    let Some(key) = key else {
        let shared = shared.clone();
        tasks.spawn(async move { shared.process(job).await });
        return;
    };
    {
        let mut lanes = lock(&shared.lanes);
        if let Some(waiting) = lanes.get_mut(&key) {
            waiting.push_back(job);
            return;
        }
        lanes.insert(key.clone(), VecDeque::new());
    }
    let shared = shared.clone();
    tasks.spawn(async move { shared.run_lane(key, job).await });
}

impl Shared {
    /// Handles the messages of one key in order until none wait.
    async fn run_lane(&self, key: String, first: Job) {
        let mut job = first;
        loop {
            self.process(job).await;
            let next = {
                let mut lanes = lock(&self.lanes);
                let next = lanes.get_mut(&key).and_then(VecDeque::pop_front);
                if next.is_none() {
                    lanes.remove(&key);
                }
                next
            };
            match next {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    async fn process(&self, job: Job) {
        let _in_flight = InFlight(&self.counters);
        let Job { received, _permit } = job;
        if self.halt.is_cancelled() {
            self.give_back(received).await;
            return;
        }
        let message = match &received.message {
            Ok(message) => message,
            Err(malformed) => {
                let (message, error) = self.malformed_letter(malformed);
                let cx = Context::new(self.group.clone(), &message, received.delivery_count);
                let outcome = bury(self.dead_letters.as_ref(), &message, &cx, &error).await;
                self.settle(received, &cx, outcome).await;
                return;
            }
        };
        let id = message.id;
        let cx = Context::new(self.group.clone(), message, received.delivery_count);
        let span =
            crate::trace::handling_span(message, &self.topic, &self.group, received.delivery_count);
        let hold = self.hold_keys && message.key.is_some();
        let mut held: u32 = 0;
        let outcome = loop {
            // A panic is a failure of this message (a bug: it is
            // dead-lettered), not of its key's lane. The handler is called
            // inside the span too: its synchronous part (e.g. the inbox
            // making its own span) sees it as current.
            let handling = span.in_scope(|| self.handler.handle(message, &cx));
            let handled = AssertUnwindSafe(handling.instrument(span.clone())).catch_unwind();
            let outcome = tokio::select! {
                biased;
                outcome = handled => Some(outcome.unwrap_or_else(|_| {
                    tracing::error!(message_id = %id, topic = %self.topic, group = %self.group, "handler panicked");
                    // Retry never saw it (the panic unwound through the whole
                    // stack): park it rather than redeliver it at once, forever.
                    Err(HandlerError::permanent("handler panicked"))
                })),
                _ = self.abort.cancelled() => None,
            };
            match outcome {
                Some(Err(e)) if hold && e.is_transient() => {
                    held = held.saturating_add(1);
                    Counters::add(&self.counters.failed, 1);
                    let wait = e.retry_after.unwrap_or_else(|| hold_backoff().delay(held));
                    tracing::debug!(message_id = %id, topic = %self.topic, group = %self.group,
                        error = %e.describe(), ?wait, "message failed; trying it again in place, its key held");
                    tokio::select! {
                        biased;
                        // Shutdown: given back (the broker keeps the order).
                        _ = self.halt.cancelled() => break None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                other => break other,
            }
        };
        Counters::add(
            &self.counters.retried,
            u64::from(cx.report.retries.load(Ordering::Relaxed)),
        );
        let outcome = match outcome {
            None => {
                crate::trace::record_outcome(&span, "cancelled");
                tracing::debug!(message_id = %id, "handler cancelled by shutdown");
                lock(&self.nacked).push(id);
                self.nack(received, None).await;
                return;
            }
            Some(Err(e)) if !e.is_transient() => {
                bury(self.dead_letters.as_ref(), message, &cx, &e).await
            }
            Some(outcome) => outcome,
        };
        let traced = match &outcome {
            Ok(()) if cx.report.dead_lettered.load(Ordering::Relaxed) => "dead_lettered",
            Ok(()) => "handled",
            Err(_) => "failed",
        };
        crate::trace::record_outcome(&span, traced);
        drop(span);
        self.settle(received, &cx, outcome).await;
    }

    /// Acks after success (or a dead letter), nacks after a failure.
    async fn settle(&self, received: Received, cx: &Context, outcome: Result<(), HandlerError>) {
        match outcome {
            Ok(()) => {
                let counter = if cx.report.dead_lettered.load(Ordering::Relaxed) {
                    &self.counters.dead_lettered
                } else {
                    &self.counters.handled
                };
                Counters::add(counter, 1);
                let result = received.ack().await;
                self.settled(result.err());
            }
            Err(error) => {
                Counters::add(&self.counters.failed, 1);
                tracing::debug!(
                    topic = %self.topic,
                    group = %self.group,
                    error = %error.describe(),
                    "message failed; giving it back to the broker"
                );
                self.nack(received, error.retry_after).await;
            }
        }
    }

    /// Gives a message not started back at shutdown.
    async fn give_back(&self, received: Received) {
        match &received.message {
            Ok(m) => lock(&self.nacked).push(m.id),
            Err(_) => {
                self.nacked_malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.nack(received, None).await;
    }

    async fn nack(&self, received: Received, delay: Option<Duration>) {
        let result = received.nack(delay).await;
        self.settled(result.err());
    }

    /// Logs a failing ack or nack once per change: the broker redelivers
    /// the message, and the handler or the inbox dedups it.
    fn settled(&self, error: Option<SubscribeError>) {
        match error {
            None => {
                if self.settle_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(topic = %self.topic, group = %self.group, "settling messages works again");
                }
            }
            Some(e) => {
                if !self.settle_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        topic = %self.topic,
                        group = %self.group,
                        error = %e.describe(),
                        "could not settle a message with the broker; it will be delivered again"
                    );
                }
            }
        }
    }

    /// The dead letter of bytes that are not a message: a fresh id, the
    /// subscription's topic, the headers and bytes as they arrived.
    fn malformed_letter(&self, malformed: &Malformed) -> (Message, HandlerError) {
        let content_type = malformed
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let message = Message {
            id: MessageId::new(),
            kind: Kind::Event,
            topic: self.topic.clone(),
            key: None,
            headers: malformed.headers.clone(),
            content_type,
            payload: malformed.payload.clone(),
            created_at: Utc::now(),
        };
        (message, HandlerError::permanent(malformed.to_string()))
    }
}

/// Stops starting messages, lets running handlers finish within
/// `deadline`, then cancels them and gives their messages back.
async fn drain(shared: &Shared, tasks: &mut JoinSet<()>, deadline: Duration) -> SubscriptionReport {
    shared.halt.cancel();
    let finish = async {
        while let Some(done) = tasks.join_next().await {
            log_panic(done);
        }
    };
    if tokio::time::timeout(deadline, finish).await.is_err() {
        shared.abort.cancel();
        let settle = async {
            while let Some(done) = tasks.join_next().await {
                log_panic(done);
            }
        };
        if tokio::time::timeout(SETTLE_GRACE, settle).await.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
    // Left behind by an aborted lane task.
    let left: Vec<Job> = lock(&shared.lanes)
        .drain()
        .flat_map(|(_, jobs)| jobs)
        .collect();
    for job in left {
        let _in_flight = InFlight(&shared.counters);
        shared.give_back(job.received).await;
    }
    let report = SubscriptionReport {
        topic: shared.topic.clone(),
        group: shared.group.to_string(),
        nacked: std::mem::take(&mut *lock(&shared.nacked)),
        nacked_malformed: shared.nacked_malformed.load(Ordering::Relaxed),
    };
    if !report.nacked.is_empty() || report.nacked_malformed > 0 {
        tracing::info!(
            topic = %report.topic,
            group = %report.group,
            nacked = report.nacked.len() + report.nacked_malformed,
            "gave unfinished messages back to the broker at shutdown"
        );
    }
    report
}

/// Reads the group's lag every interval until `stop`, warning once when it
/// crosses a threshold and once when it is back below.
pub(crate) async fn poll_lag(
    subscriber: Arc<dyn Subscriber>,
    subscription: Subscription,
    counters: Arc<Counters>,
    config: LagConfig,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut behind = false;
    let mut failing = false;
    loop {
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {
                // Not subscribed (yet, or the broker is down, which the
                // subscription already reports): the group may not exist,
                // and asking would only add errors to the log.
                if !counters.subscribed.load(Ordering::Relaxed) {
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    read = subscriber.lag(&subscription) => read,
                }
            }
        };
        match read {
            Ok(lag) => {
                counters.set_lag(lag);
                if failing {
                    failing = false;
                    tracing::info!(topic = %subscription.topic, group = %subscription.group, "lag readable again");
                }
                let now_behind = lag_exceeds(&lag, config.warn_waiting, config.warn_oldest_age);
                if now_behind != behind {
                    behind = now_behind;
                    let age = lag
                        .oldest_age
                        .map(|a| humantime::format_duration(a).to_string());
                    if behind {
                        tracing::warn!(
                            topic = %subscription.topic,
                            group = %subscription.group,
                            waiting = lag.waiting,
                            oldest_age = age,
                            "consumer group is falling behind"
                        );
                    } else {
                        tracing::info!(
                            topic = %subscription.topic,
                            group = %subscription.group,
                            waiting = lag.waiting,
                            oldest_age = age,
                            "consumer group caught up"
                        );
                    }
                }
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::warn!(
                        topic = %subscription.topic,
                        group = %subscription.group,
                        error = %e.describe(),
                        "could not read the lag"
                    );
                }
            }
        }
    }
}
