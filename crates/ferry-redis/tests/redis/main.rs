//! The sink and the subscriber against real Redis: the shared server on
//! 6379, and private persistent servers for crashes.

mod conformance;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_core::{Lag, Message, Sink, SinkErrorKind, Subscriber, Subscription};
use ferry_redis::{RedisSink, RedisSubscriber};
use support::{config, expect_nothing, next, unique, RedisServer, SHARED};

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn round_trip_keeps_every_field() {
    let config = config(SHARED);
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let subscriber = RedisSubscriber::connect(config).await.unwrap();
    let topic = unique("order.placed");
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, "billing"))
        .await
        .unwrap();
    let sent = Message::command(&topic, Bytes::from_static(b"\x00\x01 binary \xff"))
        .with_key("customer-7")
        .with_header("traceparent", "00-abc-01")
        .with_header("payload", "named like the payload field")
        .with_content_type("application/octet-stream");
    let results = sink.deliver(std::slice::from_ref(&sent)).await;
    assert!(results[0].is_ok(), "{results:?}");

    let received = next(&mut stream).await;
    assert_eq!(received.delivery_count, Some(1));
    ferry_conformance::cases::assert_same_message(received.message.as_ref().unwrap(), &sent);
    received.ack().await.unwrap();
    expect_nothing(&mut stream, Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn both_entry_layouts_read_back() {
    let config = config(SHARED);
    let mut per_header = config.clone();
    per_header.header_fields = true;
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let old_sink = RedisSink::connect(per_header).await.unwrap();
    let subscriber = RedisSubscriber::connect(config.clone()).await.unwrap();
    let topic = unique("layouts");
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, "g"))
        .await
        .unwrap();
    let sent = |n: u8| {
        Message::event(&topic, Bytes::from(vec![b'{', n, b'}']))
            .with_key("k")
            .with_header("traceparent", "00-abc-01")
    };
    let (new, old) = (sent(1), sent(2));
    assert!(sink.deliver(std::slice::from_ref(&new)).await[0].is_ok());
    assert!(old_sink.deliver(std::slice::from_ref(&old)).await[0].is_ok());

    // On the wire: `payload` and `headers`, or `payload` and a field per
    // header.
    let mut c = raw(SHARED).await;
    type Fields = Vec<(String, Vec<u8>)>;
    let entries: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(config.stream_key(&topic))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    let names = |i: usize| -> Vec<&str> { entries[i].1.iter().map(|(n, _)| n.as_str()).collect() };
    assert_eq!(names(0), ["payload", "headers"]);
    assert_eq!(names(1)[0], "payload");
    assert!(names(1).contains(&"h:ce-id"), "{:?}", names(1));
    assert!(names(1).contains(&"h:traceparent"), "{:?}", names(1));

    for expected in [&new, &old] {
        let received = next(&mut stream).await;
        ferry_conformance::cases::assert_same_message(received.message.as_ref().unwrap(), expected);
        received.ack().await.unwrap();
    }
}

#[tokio::test]
async fn entries_that_are_not_ferry_messages_are_malformed() {
    let config = config(SHARED);
    let subscriber = RedisSubscriber::connect(config.clone()).await.unwrap();
    let topic = unique("raw");
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, "g"))
        .await
        .unwrap();
    let mut c = raw(SHARED).await;
    let _: String = redis::cmd("XADD")
        .arg(config.stream_key(&topic))
        .arg("*")
        .arg("payload")
        .arg("hello")
        .query_async(&mut c)
        .await
        .unwrap();
    let received = next(&mut stream).await;
    let malformed = received.message.as_ref().unwrap_err();
    assert_eq!(malformed.reason, "missing ce-id header");
    assert_eq!(malformed.payload, Bytes::from_static(b"hello"));
    received.ack().await.unwrap();
}

#[tokio::test]
async fn nack_redelivers_with_a_count_and_after_the_delay() {
    let mut config = config(SHARED);
    config.claim_idle = Duration::from_secs(30);
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let subscriber = RedisSubscriber::connect(config).await.unwrap();
    let topic = unique("retry.me");
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, "g"))
        .await
        .unwrap();
    let sent = Message::event(&topic, "{}");
    assert!(sink.deliver(std::slice::from_ref(&sent)).await[0].is_ok());

    let first = next(&mut stream).await;
    assert_eq!(first.delivery_count, Some(1));
    first.nack(None).await.unwrap();
    let second = next(&mut stream).await;
    assert_eq!(second.message.as_ref().unwrap().id, sent.id);
    assert_eq!(second.delivery_count, Some(2));

    let delay = Duration::from_millis(1500);
    let nacked_at = Instant::now();
    second.nack(Some(delay)).await.unwrap();
    let third = next(&mut stream).await;
    assert!(nacked_at.elapsed() >= delay, "{:?}", nacked_at.elapsed());
    assert_eq!(third.delivery_count, Some(3));
    third.ack().await.unwrap();
}

#[tokio::test]
async fn a_nack_longer_than_claim_idle_is_held_until_the_delay_passes() {
    let config = config(SHARED); // claim_idle 1 s
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let subscriber = RedisSubscriber::connect(config).await.unwrap();
    let topic = unique("later");
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, "g"))
        .await
        .unwrap();
    assert!(sink.deliver(&[Message::event(&topic, "{}")]).await[0].is_ok());
    let first = next(&mut stream).await;
    let delay = Duration::from_millis(3500);
    let nacked_at = Instant::now();
    first.nack(Some(delay)).await.unwrap();
    let again = next(&mut stream).await;
    assert!(nacked_at.elapsed() >= delay, "{:?}", nacked_at.elapsed());
    again.ack().await.unwrap();
}

#[tokio::test]
async fn a_crashed_consumers_messages_are_reclaimed_by_another() {
    let config = config(SHARED);
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let topic = unique("work");
    let subscription = Subscription::new(&topic, "workers");
    let crashed = RedisSubscriber::connect(config.clone()).await.unwrap();
    let mut stream = crashed.subscribe(&subscription).await.unwrap();
    let batch: Vec<Message> = (0..5).map(|_| Message::event(&topic, "{}")).collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    let mut held = Vec::new();
    for _ in &batch {
        held.push(next(&mut stream).await);
    }
    drop(held);
    drop(stream);
    drop(crashed);

    let survivor = RedisSubscriber::connect(config).await.unwrap();
    let mut stream = survivor.subscribe(&subscription).await.unwrap();
    let mut want: BTreeSet<_> = batch.iter().map(|m| m.id).collect();
    while !want.is_empty() {
        let received = next(&mut stream).await;
        assert!(want.remove(&received.message.as_ref().unwrap().id));
        assert_eq!(received.delivery_count, Some(2));
        received.ack().await.unwrap();
    }
}

#[tokio::test]
async fn groups_fan_out_and_members_share() {
    let config = config(SHARED);
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let subscriber = RedisSubscriber::connect(config).await.unwrap();
    let topic = unique("fan");
    let mut a1 = subscriber
        .subscribe(&Subscription::new(&topic, "a").with_prefetch(1))
        .await
        .unwrap();
    let mut a2 = subscriber
        .subscribe(&Subscription::new(&topic, "a").with_prefetch(1))
        .await
        .unwrap();
    let mut b = subscriber
        .subscribe(&Subscription::new(&topic, "b"))
        .await
        .unwrap();
    let batch: Vec<Message> = (0..2).map(|_| Message::event(&topic, "{}")).collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    let all: BTreeSet<_> = batch.iter().map(|m| m.id).collect();
    // Prefetch 1: each member of `a` holds one of the two.
    let x = next(&mut a1).await;
    let y = next(&mut a2).await;
    let shared: BTreeSet<_> = [&x, &y]
        .iter()
        .map(|r| r.message.as_ref().unwrap().id)
        .collect();
    assert_eq!(shared, all);
    let mut in_b = BTreeSet::new();
    for _ in 0..2 {
        let r = next(&mut b).await;
        in_b.insert(r.message.as_ref().unwrap().id);
        r.ack().await.unwrap();
    }
    assert_eq!(in_b, all);
    x.ack().await.unwrap();
    y.ack().await.unwrap();
}

#[tokio::test]
async fn lag_reports_waiting_pending_and_age_without_creating_the_group() {
    let config = config(SHARED);
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let subscriber = RedisSubscriber::connect(config.clone()).await.unwrap();
    let topic = unique("lagging");
    let subscription = Subscription::new(&topic, "slow");
    assert_eq!(subscriber.lag(&subscription).await.unwrap(), Lag::default());
    assert_eq!(subscriber.lag(&subscription).await.unwrap(), Lag::default());
    let mut c = raw(SHARED).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(config.stream_key(&topic))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0, "lag created the stream");

    let mut stream = subscriber.subscribe(&subscription).await.unwrap();
    let batch: Vec<Message> = (0..3).map(|_| Message::event(&topic, "{}")).collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let lag = subscriber.lag(&subscription).await.unwrap();
    // The stream may already have read some.
    assert_eq!(lag.waiting.unwrap() + lag.in_flight.unwrap(), 3, "{lag:?}");
    assert!(
        lag.oldest_age.unwrap() >= Duration::from_millis(20),
        "{lag:?}"
    );
    let mut held = Vec::new();
    for _ in &batch {
        held.push(next(&mut stream).await);
    }
    let lag = subscriber.lag(&subscription).await.unwrap();
    assert_eq!((lag.waiting, lag.in_flight), (Some(0), Some(3)));
    for r in held {
        r.ack().await.unwrap();
    }
    let lag = subscriber.lag(&subscription).await.unwrap();
    assert_eq!(
        lag,
        Lag {
            waiting: Some(0),
            in_flight: Some(0),
            oldest_age: None
        }
    );
}

#[tokio::test]
async fn maxlen_trims_streams_approximately() {
    let mut config = config(SHARED);
    config.maxlen = Some(10);
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let topic = unique("trimmed");
    let batch: Vec<Message> = (0..500).map(|_| Message::event(&topic, "{}")).collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    let mut c = raw(SHARED).await;
    let len: u64 = redis::cmd("XLEN")
        .arg(config.stream_key(&topic))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((10..=200).contains(&len), "{len}");
}

#[tokio::test]
async fn a_key_of_another_type_is_permanent_and_a_dead_server_unavailable() {
    let config = config(SHARED);
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let topic = unique("taken");
    let mut c = raw(SHARED).await;
    let _: () = redis::cmd("SET")
        .arg(config.stream_key(&topic))
        .arg("a string")
        .query_async(&mut c)
        .await
        .unwrap();
    let ok_topic = unique("fine");
    let results = sink
        .deliver(&[
            Message::event(&topic, "{}"),
            Message::event(&ok_topic, "{}"),
        ])
        .await;
    assert_eq!(
        results[0].as_ref().unwrap_err().kind,
        SinkErrorKind::Permanent
    );
    assert!(results[1].is_ok(), "{results:?}");
    let _: () = redis::cmd("DEL")
        .arg(config.stream_key(&topic))
        .arg(config.stream_key(&ok_topic))
        .query_async(&mut c)
        .await
        .unwrap();

    let mut dead = support::config("redis://127.0.0.1:1/0");
    dead.timeout = Duration::from_secs(2);
    let sink = RedisSink::connect(dead.clone()).await.unwrap();
    let results = sink.deliver(&[Message::event("a", "{}")]).await;
    assert_eq!(
        results[0].as_ref().unwrap_err().kind,
        SinkErrorKind::Unavailable
    );
    let subscriber = RedisSubscriber::connect(dead).await.unwrap();
    let err = match subscriber.subscribe(&Subscription::new("a", "g")).await {
        Ok(_) => panic!("subscribed to nothing"),
        Err(e) => e,
    };
    assert!(err.is_retryable(), "{}", err.describe());
}

#[tokio::test]
async fn a_server_crash_loses_nothing_acknowledged_or_pending() {
    let server = RedisServer::start().await;
    let config = config(&server.url());
    let sink = RedisSink::connect(config.clone()).await.unwrap();
    let topic = unique("durable");
    let subscription = Subscription::new(&topic, "g").with_prefetch(5);
    let crashed = RedisSubscriber::connect(config.clone()).await.unwrap();
    let mut stream = crashed.subscribe(&subscription).await.unwrap();
    let batch: Vec<Message> = (0..50)
        .map(|i| Message::event(&topic, format!("{i}")))
        .collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    // This consumer takes a few and dies with them unacknowledged.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut stream).await);
    }

    server.crash_and_restart().await;
    // Its next read (once a prefetch slot is free) finds the connection lost.
    drop(held);
    let end = tokio::time::timeout(
        Duration::from_secs(15),
        futures::StreamExt::next(&mut stream),
    )
    .await
    .expect("the stream reports the lost connection");
    assert!(end.expect("an error").is_err());
    assert!(futures::StreamExt::next(&mut stream).await.is_none());
    drop(stream);
    drop(crashed);

    // The sink connects again by itself.
    let after = Message::event(&topic, "after");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match sink.deliver(std::slice::from_ref(&after)).await.remove(0) {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(e.kind, SinkErrorKind::Unavailable, "{}", e.describe());
                assert!(Instant::now() < deadline, "sink did not reconnect");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let survivor = RedisSubscriber::connect(config).await.unwrap();
    let mut stream = survivor.subscribe(&subscription).await.unwrap();
    let mut want: BTreeSet<_> = batch.iter().chain([&after]).map(|m| m.id).collect();
    while !want.is_empty() {
        let received = next(&mut stream).await;
        assert!(want.remove(&received.message.as_ref().unwrap().id));
        received.ack().await.unwrap();
    }
    expect_nothing(&mut stream, Duration::from_millis(1500)).await;
}
