//! The cases of the suite, each an async function of a [`Broker`].
//!
//! Every case uses topics and groups of its own (random suffixes), so cases
//! run in parallel against one server. Waits are bounded: a case that
//! expects a message waits at most [`RECEIVE_TIMEOUT`] (generous, because a
//! Kafka group join alone can take 20 s) and fails with what it saw; a case
//! that expects *no* message never sleeps for a fixed time but publishes a
//! marker behind the messages that must not come back, and reads up to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::{Capabilities, Message, MessageId, MessageStream, Received, Sink, Subscription};
use futures::StreamExt;

use crate::Broker;

/// The longest a case waits for a message it expects.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A name unique to one run of one case: `conformance-<case>-<random>`
/// (the random tail of a UUIDv7).
pub fn unique(case: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("conformance-{case}-{}", &id[20..])
}

/// Publishes `messages` through `sink`, a call per wave of distinct keys
/// (the [`Sink`] contract), and panics unless every one is accepted.
pub async fn publish(sink: &Arc<dyn Sink>, messages: &[Message]) {
    let mut waves: Vec<Vec<Message>> = Vec::new();
    let mut wave_of_key: HashMap<Option<String>, usize> = HashMap::new();
    for m in messages {
        // A keyed message goes in the wave after its key's previous one, so
        // each call has distinct keys and a key's messages go in order.
        let wave = match &m.key {
            None => 0,
            Some(_) => wave_of_key.get(&m.key).map_or(0, |w| w + 1),
        };
        if m.key.is_some() {
            wave_of_key.insert(m.key.clone(), wave);
        }
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].push(m.clone());
    }
    for wave in waves {
        let max = sink.max_per_call().unwrap_or(usize::MAX).max(1);
        for chunk in wave.chunks(max) {
            let results = sink.deliver(chunk).await;
            assert_eq!(results.len(), chunk.len(), "one result per message");
            for (m, r) in chunk.iter().zip(results) {
                if let Err(e) = r {
                    panic!("{} refused message {}: {}", sink.name(), m.id, e.describe());
                }
            }
        }
    }
}

/// Subscribes, panicking with the error if the broker refuses.
pub async fn subscribe(broker: &impl Broker, subscription: &Subscription) -> MessageStream {
    let subscriber = broker.subscriber().await;
    match subscriber.subscribe(subscription).await {
        Ok(stream) => stream,
        Err(e) => panic!("subscribe {subscription:?}: {}", e.describe()),
    }
}

/// The next message on `stream`, within [`RECEIVE_TIMEOUT`].
pub async fn next(stream: &mut MessageStream, what: &str) -> Received {
    match tokio::time::timeout(RECEIVE_TIMEOUT, stream.next()).await {
        Err(_) => panic!("{what}: nothing received within {RECEIVE_TIMEOUT:?}"),
        Ok(None) => panic!("{what}: the stream ended"),
        Ok(Some(Err(e))) => panic!("{what}: the stream failed: {}", e.describe()),
        Ok(Some(Ok(received))) => received,
    }
}

/// The message of a received item, panicking if it is malformed.
pub fn message_of(received: &Received) -> &Message {
    match &received.message {
        Ok(m) => m,
        Err(e) => panic!("a message published through the sink arrived malformed: {e}"),
    }
}

/// Receives `n` messages and acknowledges each as it arrives.
pub async fn receive_and_ack(stream: &mut MessageStream, n: usize, what: &str) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let received = next(stream, &format!("{what} ({} of {n})", out.len() + 1)).await;
        let m = message_of(&received).clone();
        received
            .ack()
            .await
            .unwrap_or_else(|e| panic!("{what}: ack failed: {}", e.describe()));
        out.push(m);
    }
    out
}

/// Reads and acknowledges until `marker` arrives, returning what came
/// before it.
pub async fn ack_until(stream: &mut MessageStream, marker: MessageId, what: &str) -> Vec<Message> {
    let mut before = Vec::new();
    loop {
        let received = next(stream, &format!("{what}: waiting for the marker")).await;
        let m = message_of(&received).clone();
        received
            .ack()
            .await
            .unwrap_or_else(|e| panic!("{what}: ack failed: {}", e.describe()));
        if m.id == marker {
            return before;
        }
        before.push(m);
    }
}

/// Panics unless `got` is `sent` as it left: every field, the headers
/// exactly (nothing added or lost), the time to the microsecond. For an
/// adapter's own tests; [`round_trip`] allows brokers to add headers.
pub fn assert_same_message(got: &Message, sent: &Message) {
    assert_eq!(got.id, sent.id, "id");
    assert_eq!(got.kind, sent.kind, "kind of {}", sent.id);
    assert_eq!(got.topic, sent.topic, "topic of {}", sent.id);
    assert_eq!(got.key, sent.key, "key of {}", sent.id);
    assert_eq!(got.headers, sent.headers, "headers of {}", sent.id);
    assert_eq!(
        got.content_type, sent.content_type,
        "content type of {}",
        sent.id
    );
    assert_eq!(got.payload, sent.payload, "payload of {}", sent.id);
    assert_eq!(
        got.created_at.timestamp_micros(),
        sent.created_at.timestamp_micros(),
        "created_at of {}",
        sent.id
    );
}

fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

fn id_set(messages: &[Message]) -> HashSet<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// `n` events on `topic` without keys, payload `{"n":i}`.
pub fn events(topic: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::event(topic, format!("{{\"n\":{i}}}")))
        .collect()
}

/// Every field survives the trip: id, kind, topic, key, headers, content
/// type, payload (JSON, text and bytes that are not UTF-8) and time.
pub async fn round_trip(broker: &impl Broker) {
    let topic = unique("round-trip");
    let sub = Subscription::new(&topic, unique("g"));
    let mut stream = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    let mut sent = Vec::new();
    for i in 0..12 {
        let m = if i % 3 == 0 {
            Message::command(&topic, format!("{{\"i\":{i},\"s\":\"é ✓\"}}"))
        } else {
            Message::event(&topic, format!("{{\"i\":{i}}}"))
        };
        let m = m.with_header("x-trace", format!("t-{i}"));
        let m = match i % 4 {
            0 => m.with_key(format!("key-{i}")),
            1 => {
                let mut m = m.with_content_type("application/octet-stream");
                m.payload = Bytes::from(vec![0u8, 159, 146, 150, 255, i as u8]);
                m
            }
            2 => m.with_content_type("text/plain; charset=utf-8"),
            _ => m.with_header("x-second", "two words"),
        };
        sent.push(m);
    }
    publish(&sink, &sent).await;
    let got = receive_and_ack(&mut stream, sent.len(), "round trip").await;
    let by_id: BTreeMap<MessageId, &Message> = got.iter().map(|m| (m.id, m)).collect();
    assert_eq!(
        by_id.len(),
        sent.len(),
        "every message once: {:?}",
        ids(&got)
    );
    for s in &sent {
        let r = by_id
            .get(&s.id)
            .unwrap_or_else(|| panic!("message {} never arrived", s.id));
        assert_eq!(r.kind, s.kind, "kind of {}", s.id);
        assert_eq!(r.topic, s.topic, "topic of {}", s.id);
        assert_eq!(r.key, s.key, "key of {}", s.id);
        assert_eq!(r.content_type, s.content_type, "content type of {}", s.id);
        assert_eq!(r.payload, s.payload, "payload of {}", s.id);
        for (name, value) in &s.headers {
            assert_eq!(
                r.headers.get(name),
                Some(value),
                "header {name} of {}: {:?}",
                s.id,
                r.headers
            );
        }
        let drift = (r.created_at - s.created_at)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        assert!(
            drift.abs() <= 1,
            "created_at of {}: {} vs {}",
            s.id,
            r.created_at,
            s.created_at
        );
    }
}

/// A message acknowledged (here from other tasks, in reverse order) does
/// not come back to its group, not even to a new subscription.
pub async fn acked_messages_are_not_redelivered(broker: &impl Broker) {
    let topic = unique("acked");
    let sub = Subscription::new(&topic, unique("g"));
    let mut stream = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    let sent = events(&topic, 10);
    publish(&sink, &sent).await;
    let mut received = Vec::new();
    while received.len() < sent.len() {
        received.push(next(&mut stream, "acked: first delivery").await);
    }
    let got: Vec<Message> = received.iter().map(|r| message_of(r).clone()).collect();
    assert_eq!(id_set(&got), id_set(&sent));
    let mut tasks = Vec::new();
    for r in received.into_iter().rev() {
        tasks.push(tokio::spawn(async move { r.ack().await }));
    }
    for t in tasks {
        t.await
            .expect("ack task")
            .unwrap_or_else(|e| panic!("ack failed: {}", e.describe()));
    }
    drop(stream);
    let mut stream = subscribe(broker, &sub).await;
    let marker = Message::event(&topic, "{\"marker\":true}");
    publish(&sink, std::slice::from_ref(&marker)).await;
    let before = ack_until(&mut stream, marker.id, "acked").await;
    assert!(
        before.is_empty(),
        "acknowledged messages came back: {:?}",
        ids(&before)
    );
}

/// A nacked message is delivered again; a broker that counts deliveries
/// says so.
pub async fn nack_redelivers(broker: &impl Broker) {
    let topic = unique("nack");
    let sub = Subscription::new(&topic, unique("g"));
    let mut stream = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    let sent = events(&topic, 1);
    publish(&sink, &sent).await;
    let first = next(&mut stream, "nack: first delivery").await;
    assert_eq!(message_of(&first).id, sent[0].id);
    if let Some(count) = first.delivery_count {
        assert_eq!(count, 1, "first delivery count");
    }
    first
        .nack(None)
        .await
        .unwrap_or_else(|e| panic!("nack failed: {}", e.describe()));
    let again = next(&mut stream, "nack: redelivery").await;
    assert_eq!(
        message_of(&again).id,
        sent[0].id,
        "the nacked message again"
    );
    if let Some(count) = again.delivery_count {
        assert!(count >= 2, "redelivery count {count}");
    }
    again.ack().await.expect("ack");
}

/// With [`Capabilities::delayed_nack`], a message nacked with a delay does
/// not come back before the delay has passed.
pub async fn delayed_nack_waits(broker: &impl Broker) {
    if !broker.capabilities().delayed_nack {
        return;
    }
    let topic = unique("delayed-nack");
    let sub = Subscription::new(&topic, unique("g"));
    let mut stream = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    let sent = events(&topic, 1);
    publish(&sink, &sent).await;
    let first = next(&mut stream, "delayed nack: first delivery").await;
    let delay = Duration::from_secs(2);
    let nacked_at = Instant::now();
    first.nack(Some(delay)).await.expect("nack");
    let again = next(&mut stream, "delayed nack: redelivery").await;
    let waited = nacked_at.elapsed();
    assert_eq!(message_of(&again).id, sent[0].id);
    // A correctness bound, not a performance one: earlier is a broken delay.
    assert!(
        waited + Duration::from_millis(100) >= delay,
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    again.ack().await.expect("ack");
}

/// With [`Capabilities::redelivers_unacked`], messages a consumer received
/// and never settled (it crashed: the messages, its stream and its
/// subscriber are dropped) reach another consumer of the group.
pub async fn unacked_messages_are_redelivered(broker: &impl Broker) {
    if !broker.capabilities().redelivers_unacked {
        return;
    }
    let topic = unique("unacked");
    let sub = Subscription::new(&topic, unique("g"));
    let mut crashed = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    let sent = events(&topic, 3);
    publish(&sink, &sent).await;
    let mut held = Vec::new();
    while held.len() < sent.len() {
        held.push(next(&mut crashed, "unacked: first delivery").await);
    }
    drop(held);
    drop(crashed);
    let mut survivor = subscribe(broker, &sub).await;
    let deadline = broker.redelivery_within() + RECEIVE_TIMEOUT;
    let got = tokio::time::timeout(
        deadline,
        receive_and_ack(&mut survivor, 3, "unacked: redelivery"),
    )
    .await
    .unwrap_or_else(|_| panic!("unacked messages not redelivered within {deadline:?}"));
    assert_eq!(id_set(&got), id_set(&sent));
}

/// Within a group, each message goes to one of its consumers.
pub async fn group_members_share(broker: &impl Broker) {
    let topic = unique("share");
    let sub = Subscription::new(&topic, unique("g"));
    let mut a = subscribe(broker, &sub).await;
    let mut b = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    let sent = events(&topic, 40);
    publish(&sink, &sent).await;
    let mut seen: Vec<Message> = Vec::new();
    let started = Instant::now();
    while id_set(&seen).len() < sent.len() {
        assert!(
            started.elapsed() < RECEIVE_TIMEOUT,
            "group shared {} of {} messages",
            id_set(&seen).len(),
            sent.len()
        );
        let received = tokio::select! {
            Some(r) = a.next() => r,
            Some(r) = b.next() => r,
            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
        };
        let received = received.unwrap_or_else(|e| panic!("stream failed: {}", e.describe()));
        seen.push(message_of(&received).clone());
        received.ack().await.expect("ack");
    }
    assert_eq!(id_set(&seen), id_set(&sent));
    assert_eq!(
        seen.len(),
        sent.len(),
        "a message went to two consumers of one group"
    );
}

/// With [`Capabilities::consumer_groups`], every group gets every event.
pub async fn events_fan_out_to_every_group(broker: &impl Broker) {
    if !broker.capabilities().consumer_groups {
        return;
    }
    let topic = unique("fan-out");
    let mut first = subscribe(broker, &Subscription::new(&topic, unique("g1"))).await;
    let mut second = subscribe(broker, &Subscription::new(&topic, unique("g2"))).await;
    let sink = broker.sink().await;
    let sent = events(&topic, 10);
    publish(&sink, &sent).await;
    let got_first = receive_and_ack(&mut first, sent.len(), "fan-out: first group").await;
    let got_second = receive_and_ack(&mut second, sent.len(), "fan-out: second group").await;
    assert_eq!(id_set(&got_first), id_set(&sent));
    assert_eq!(id_set(&got_second), id_set(&sent));
}

/// With [`Capabilities::ordered_per_key`], a key's messages reach its group
/// in the order they were published.
pub async fn ordered_per_key(broker: &impl Broker) {
    if !broker.capabilities().ordered_per_key {
        return;
    }
    let topic = unique("ordered");
    let sub = Subscription::new(&topic, unique("g"));
    let mut stream = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    let keys = ["a", "b", "c"];
    let per_key = 20;
    let mut sent = Vec::new();
    for i in 0..per_key {
        for key in keys {
            sent.push(
                Message::event(&topic, format!("{{\"i\":{i}}}"))
                    .with_key(key)
                    .with_header("x-seq", i.to_string()),
            );
        }
    }
    publish(&sink, &sent).await;
    let got = receive_and_ack(&mut stream, sent.len(), "ordered").await;
    for key in keys {
        let seqs: Vec<u32> = got
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(|m| m.headers["x-seq"].parse().expect("x-seq"))
            .collect();
        assert_eq!(seqs, (0..per_key).collect::<Vec<_>>(), "order of key {key}");
    }
}

/// With [`Capabilities::persistent`], messages published before a broker
/// restart reach their group after it.
pub async fn survives_a_broker_restart(broker: &impl Broker) {
    if !broker.capabilities().persistent {
        return;
    }
    let topic = unique("restart");
    let sub = Subscription::new(&topic, unique("g"));
    let stream = subscribe(broker, &sub).await;
    drop(stream);
    let sink = broker.sink().await;
    let sent = events(&topic, 10);
    publish(&sink, &sent).await;
    broker.restart().await;
    let started = Instant::now();
    let mut stream = loop {
        let subscriber = broker.subscriber().await;
        match subscriber.subscribe(&sub).await {
            Ok(stream) => break stream,
            Err(e) if e.is_retryable() && started.elapsed() < RECEIVE_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("subscribe after restart: {}", e.describe()),
        }
    };
    let got = receive_and_ack(&mut stream, sent.len(), "after restart").await;
    assert_eq!(id_set(&got), id_set(&sent));
}

/// With [`Capabilities::dedups_by_id`], a message published twice (a
/// relay's re-send after a crash) reaches its group once.
pub async fn duplicates_are_dropped(broker: &impl Broker) {
    if !broker.capabilities().dedups_by_id {
        return;
    }
    let topic = unique("dedup");
    let sub = Subscription::new(&topic, unique("g"));
    let mut stream = subscribe(broker, &sub).await;
    let sink = broker.sink().await;
    // One key, so that a broker ordering by key cannot hand the marker out
    // before the duplicate.
    let message = Message::event(&topic, "{}").with_key("k");
    publish(&sink, std::slice::from_ref(&message)).await;
    publish(&sink, std::slice::from_ref(&message)).await;
    let marker = Message::event(&topic, "{\"marker\":true}").with_key("k");
    publish(&sink, std::slice::from_ref(&marker)).await;
    let before = ack_until(&mut stream, marker.id, "dedup").await;
    assert_eq!(ids(&before), vec![message.id], "the message exactly once");
}

/// The broker reports a group's backlog: what is waiting grows with what
/// is published and falls to zero once everything is acknowledged.
pub async fn lag_reports_the_backlog(broker: &impl Broker) {
    let topic = unique("lag");
    let sub = Subscription::new(&topic, unique("g"));
    let subscriber = broker.subscriber().await;
    // Creates the group, then stops consuming.
    drop(subscribe(broker, &sub).await);
    let sink = broker.sink().await;
    let sent = events(&topic, 5);
    publish(&sink, &sent).await;
    let backlog = |lag: ferry_core::Lag| {
        let waiting = lag.waiting.expect("lag.waiting must be reported");
        waiting + lag.in_flight.unwrap_or(0)
    };
    let started = Instant::now();
    loop {
        let lag = subscriber.lag(&sub).await.expect("lag");
        if backlog(lag) >= sent.len() as u64 {
            break;
        }
        assert!(
            started.elapsed() < RECEIVE_TIMEOUT,
            "lag never reached {} waiting: {lag:?}",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut stream = subscribe(broker, &sub).await;
    receive_and_ack(&mut stream, sent.len(), "lag: draining").await;
    let started = Instant::now();
    loop {
        let lag = subscriber.lag(&sub).await.expect("lag");
        if backlog(lag) == 0 {
            break;
        }
        assert!(
            started.elapsed() < RECEIVE_TIMEOUT,
            "lag stayed above zero after every message was acknowledged: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The capability flags a harness claims, for the suite's own check that a
/// harness claims nothing its subscriber does not.
pub fn claims_only_what_the_adapter_has(harness: Capabilities, adapter: Capabilities) {
    let pairs = [
        (
            "ordered_per_key",
            harness.ordered_per_key,
            adapter.ordered_per_key,
        ),
        ("persistent", harness.persistent, adapter.persistent),
        (
            "consumer_groups",
            harness.consumer_groups,
            adapter.consumer_groups,
        ),
        (
            "redelivers_unacked",
            harness.redelivers_unacked,
            adapter.redelivers_unacked,
        ),
        ("dedups_by_id", harness.dedups_by_id, adapter.dedups_by_id),
        ("delayed_nack", harness.delayed_nack, adapter.delayed_nack),
    ];
    for (name, claimed, has) in pairs {
        assert!(
            !claimed || has,
            "the harness claims {name}, the adapter does not"
        );
    }
}
