//! An in-process broker: a [`Sink`] and a [`Subscriber`] over shared
//! memory, for tests and for wiring two parts of one process together.
//!
//! It keeps the [`Subscriber`] contract like a real broker: consumer groups
//! (every group gets every message of a topic; the consumers of one group
//! share them), manual ack and nack with redelivery (a nack, with its delay,
//! and a dropped unsettled [`Received`] both give the message back),
//! delivery counts and lag. Messages are stored as CloudEvents binary
//! headers and bytes and decoded on delivery, as a network adapter would,
//! so [`MemoryBroker::publish_raw`] can play a foreign producer whose bytes
//! are not a Ferry message. Nothing persists: a message published to a
//! topic no group subscribes to is dropped, and everything is gone with the
//! process.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ferry_core::cloudevents::{binary_headers, from_binary_headers};
use ferry_core::{
    Acker, BoxFuture, Capabilities, Delivery, Lag, LagFuture, Message, MessageStream, Received,
    Sink, SubscribeError, SubscribeFuture, Subscriber, Subscription,
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The `ce-source` of messages published through the memory broker.
const SOURCE: &str = "/ferry/memory";

/// An in-process pub/sub broker; clones share the same topics.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Topic → group → queue.
    topics: HashMap<String, HashMap<String, Group>>,
    next_token: u64,
    /// Publish order, so a message given back returns to its place.
    next_seq: u64,
}

#[derive(Default)]
struct Group {
    /// Messages ready to be handed out, oldest first.
    ready: VecDeque<Entry>,
    /// Nacked messages waiting for their delay to pass.
    delayed: Vec<(Instant, Entry)>,
    /// Messages handed out and not settled, by acker token.
    unacked: HashMap<u64, Entry>,
    /// Woken on publish and settle.
    notify: Arc<Notify>,
}

#[derive(Clone)]
struct Entry {
    seq: u64,
    headers: Arc<[(String, String)]>,
    payload: Bytes,
    published: Instant,
    deliveries: u32,
}

impl Group {
    /// Puts a message given back where it was published among the ready
    /// ones, so that several nacks keep their publish order.
    fn requeue(&mut self, entry: Entry) {
        let at = self.ready.partition_point(|e| e.seq < entry.seq);
        self.ready.insert(at, entry);
    }

    /// Moves the delayed messages that are due back into the queue.
    fn promote_due(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, entry) = self.delayed.swap_remove(i);
                self.requeue(entry);
            } else {
                i += 1;
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.delayed.iter().map(|(due, _)| *due).min()
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// Publishes raw headers and bytes to `topic`, as a producer outside
    /// Ferry would: consumers decode them with
    /// [`from_binary_headers`], and bytes that are not a Ferry message
    /// reach them as a [`Received`] whose message is `Err(Malformed)`.
    pub fn publish_raw(&self, topic: &str, headers: Vec<(String, String)>, payload: Bytes) {
        self.publish(topic, headers.into(), payload);
    }

    fn publish(&self, topic: &str, headers: Arc<[(String, String)]>, payload: Bytes) {
        let mut state = self.lock();
        let now = Instant::now();
        let seq = state.next_seq;
        state.next_seq += 1;
        let Some(groups) = state.topics.get_mut(topic) else {
            return;
        };
        for group in groups.values_mut() {
            group.ready.push_back(Entry {
                seq,
                headers: headers.clone(),
                payload: payload.clone(),
                published: now,
                deliveries: 0,
            });
            group.notify.notify_waiters();
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the queues half-updated
    // in a way later users would trip over, so a poisoned lock is reused.
    shared
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Sink for MemoryBroker {
    fn name(&self) -> &str {
        "memory"
    }

    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        for message in batch {
            let headers: Arc<[(String, String)]> = binary_headers(message, SOURCE).into();
            self.publish(&message.topic, headers, message.payload.clone());
        }
        Box::pin(std::future::ready(batch.iter().map(|_| Ok(())).collect()))
    }
}

impl Subscriber for MemoryBroker {
    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // The consumers of one group take messages of one key
            // concurrently, and a nack puts a message behind its successors.
            ordered_per_key: false,
            persistent: false,
            consumer_groups: true,
            redelivers_unacked: true,
            dedups_by_id: false,
            delayed_nack: true,
        }
    }

    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        // The group exists once this returns: later publishes reach it.
        self.lock()
            .topics
            .entry(subscription.topic.clone())
            .or_default()
            .entry(subscription.group.clone())
            .or_default();
        let consumer = Consumer {
            shared: self.shared.clone(),
            topic: subscription.topic.clone(),
            group: subscription.group.clone(),
            prefetch: subscription.prefetch.max(1),
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        let stream = futures::stream::unfold(consumer, |consumer| async move {
            let received = consumer.next().await;
            Some((Ok(received), consumer))
        });
        Box::pin(std::future::ready(Ok(Box::pin(stream) as MessageStream)))
    }

    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        let state = self.lock();
        let lag = match state
            .topics
            .get(&subscription.topic)
            .and_then(|groups| groups.get(&subscription.group))
        {
            None => Lag::default(),
            Some(group) => {
                let now = Instant::now();
                let oldest = group
                    .ready
                    .iter()
                    .chain(group.delayed.iter().map(|(_, e)| e))
                    .chain(group.unacked.values())
                    .map(|e| e.published)
                    .min();
                Lag {
                    waiting: Some((group.ready.len() + group.delayed.len()) as u64),
                    in_flight: Some(group.unacked.len() as u64),
                    oldest_age: oldest.map(|t| now.saturating_duration_since(t)),
                }
            }
        };
        Box::pin(std::future::ready(Ok(lag)))
    }
}

/// One subscriber's stream state.
struct Consumer {
    shared: Arc<Shared>,
    topic: String,
    group: String,
    prefetch: usize,
    /// This consumer's unsettled messages, for its prefetch limit.
    in_flight: Arc<AtomicUsize>,
}

impl Consumer {
    async fn next(&self) -> Received {
        loop {
            let (notified, due) = {
                let mut state = lock(&self.shared);
                let token = state.next_token;
                let group = state
                    .topics
                    .entry(self.topic.clone())
                    .or_default()
                    .entry(self.group.clone())
                    .or_default();
                group.promote_due(Instant::now());
                if self.in_flight.load(Ordering::Acquire) < self.prefetch {
                    if let Some(mut entry) = group.ready.pop_front() {
                        entry.deliveries += 1;
                        let delivery_count = entry.deliveries;
                        let message = from_binary_headers(
                            entry.headers.iter().map(|(k, v)| (k.clone(), v.clone())),
                            entry.payload.clone(),
                        );
                        group.unacked.insert(token, entry);
                        state.next_token += 1;
                        self.in_flight.fetch_add(1, Ordering::AcqRel);
                        let acker = MemoryAcker {
                            shared: self.shared.clone(),
                            topic: self.topic.clone(),
                            group: self.group.clone(),
                            token,
                            in_flight: self.in_flight.clone(),
                            settled: false,
                        };
                        return Received::new(message, Some(delivery_count), acker);
                    }
                }
                // Registered before the lock is released, so a publish or
                // settle in between still wakes it.
                (group.notify.clone().notified_owned(), group.next_due())
            };
            match due {
                Some(due) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// Settles one handed-out message; an unsettled one is given back on drop.
struct MemoryAcker {
    shared: Arc<Shared>,
    topic: String,
    group: String,
    token: u64,
    in_flight: Arc<AtomicUsize>,
    settled: bool,
}

impl MemoryAcker {
    /// Acknowledges (`None`) or gives the message back after `Some(delay)`.
    fn settle(&mut self, requeue: Option<Option<Duration>>) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut state = lock(&self.shared);
        if let Some(group) = state
            .topics
            .get_mut(&self.topic)
            .and_then(|groups| groups.get_mut(&self.group))
        {
            if let Some(entry) = group.unacked.remove(&self.token) {
                match requeue {
                    None => {}
                    Some(None) | Some(Some(Duration::ZERO)) => group.requeue(entry),
                    Some(Some(delay)) => group.delayed.push((Instant::now() + delay, entry)),
                }
            }
            group.notify.notify_waiters();
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Acker for MemoryAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>> {
        self.settle(None);
        Box::pin(std::future::ready(Ok(())))
    }

    fn nack(
        mut self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        self.settle(Some(delay));
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        // The consumer crashed or forgot the message: give it back.
        self.settle(Some(None));
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn groups_fan_out_and_consumers_share() {
        let broker = MemoryBroker::new();
        let a = Subscription::new("t", "a");
        let b = Subscription::new("t", "b");
        let mut a1 = broker.subscribe(&a).await.unwrap();
        let mut a2 = broker.subscribe(&a).await.unwrap();
        let mut b1 = broker.subscribe(&b).await.unwrap();
        let sent = [Message::event("t", "1"), Message::event("t", "2")];
        assert!(broker.deliver(&sent).await.iter().all(Result::is_ok));
        let x = a1.next().await.unwrap().unwrap();
        let y = a2.next().await.unwrap().unwrap();
        let ids = [
            x.message.as_ref().unwrap().id,
            y.message.as_ref().unwrap().id,
        ];
        assert!(ids.contains(&sent[0].id) && ids.contains(&sent[1].id));
        for expected in &sent {
            let r = b1.next().await.unwrap().unwrap();
            assert_eq!(r.message.as_ref().unwrap().id, expected.id);
            r.ack().await.unwrap();
        }
        x.ack().await.unwrap();
        y.ack().await.unwrap();
        assert_eq!(broker.lag(&a).await.unwrap().waiting, Some(0));
    }

    #[tokio::test]
    async fn nack_and_drop_redeliver_and_count() {
        let broker = MemoryBroker::new();
        let s = Subscription::new("t", "g");
        let mut stream = broker.subscribe(&s).await.unwrap();
        broker.deliver(&[Message::event("t", "x")]).await;
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.delivery_count, Some(1));
        drop(first);
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.delivery_count, Some(2));
        let lag = broker.lag(&s).await.unwrap();
        assert_eq!((lag.waiting, lag.in_flight), (Some(0), Some(1)));
        let nacked_at = Instant::now();
        second.nack(Some(Duration::from_millis(80))).await.unwrap();
        let third = stream.next().await.unwrap().unwrap();
        assert!(nacked_at.elapsed() >= Duration::from_millis(80));
        assert_eq!(third.delivery_count, Some(3));
        third.ack().await.unwrap();
        let lag = broker.lag(&s).await.unwrap();
        assert_eq!(lag.in_flight, Some(0));
        assert_eq!(lag.oldest_age, None);
    }

    #[tokio::test]
    async fn prefetch_bounds_unsettled_messages() {
        let broker = MemoryBroker::new();
        let s = Subscription::new("t", "g").with_prefetch(1);
        let mut stream = broker.subscribe(&s).await.unwrap();
        broker
            .deliver(&[Message::event("t", "1"), Message::event("t", "2")])
            .await;
        let first = stream.next().await.unwrap().unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(
            blocked.is_err(),
            "second message handed out beyond prefetch"
        );
        first.ack().await.unwrap();
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.message.unwrap().payload, Bytes::from_static(b"2"));
    }

    #[tokio::test]
    async fn raw_bytes_that_do_not_decode_arrive_malformed() {
        let broker = MemoryBroker::new();
        let s = Subscription::new("t", "g");
        let mut stream = broker.subscribe(&s).await.unwrap();
        broker.publish_raw("t", vec![("ce-type".into(), "t".into())], Bytes::from("?"));
        let r = stream.next().await.unwrap().unwrap();
        assert_eq!(
            r.message.as_ref().unwrap_err().reason,
            "missing ce-id header"
        );
        r.ack().await.unwrap();
    }

    #[tokio::test]
    async fn lag_of_an_unknown_group_is_unknown() {
        let broker = MemoryBroker::new();
        let lag = broker.lag(&Subscription::new("t", "g")).await.unwrap();
        assert_eq!(lag, Lag::default());
    }
}
