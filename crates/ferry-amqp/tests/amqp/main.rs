//! The sink and the subscriber against real RabbitMQ: the shared server on
//! 5672, and private nodes for restarts and broken connections.

mod conformance;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_amqp::{AmqpSink, AmqpSubscriber, QueueType};
use ferry_core::{Lag, Message, Sink, SinkErrorKind, SubscribeErrorKind, Subscriber, Subscription};
use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::{config, expect_nothing, next, unique, RabbitNode, SHARED};

#[tokio::test]
async fn round_trip_keeps_every_field() {
    let config = config(SHARED);
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let topic = unique("order.placed");
    let subscription = Subscription::new(&topic, "billing");
    let mut stream = subscriber.subscribe(&subscription).await.unwrap();

    let sent = Message::command(&topic, Bytes::from_static(b"\x00\x01 binary \xff"))
        .with_key("customer-7")
        .with_header("traceparent", "00-abc-01")
        .with_header("x-tenant", "acme")
        .with_content_type("application/octet-stream");
    let results = sink.deliver(std::slice::from_ref(&sent)).await;
    assert!(results[0].is_ok(), "{results:?}");

    let received = next(&mut stream).await;
    assert_eq!(received.delivery_count, Some(1));
    ferry_conformance::cases::assert_same_message(received.message.as_ref().unwrap(), &sent);
    received.ack().await.unwrap();
    expect_nothing(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_batch_is_confirmed_in_order_and_fans_out_to_every_group() {
    let config = config(SHARED);
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let topic = unique("user.signed_up");
    let mut a = subscriber
        .subscribe(&Subscription::new(&topic, "a"))
        .await
        .unwrap();
    let mut b = subscriber
        .subscribe(&Subscription::new(&topic, "b"))
        .await
        .unwrap();
    let batch: Vec<Message> = (0..20)
        .map(|i| Message::event(&topic, format!("{{\"n\":{i}}}")))
        .collect();
    let results = sink.deliver(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    for stream in [&mut a, &mut b] {
        for sent in &batch {
            let received = next(stream).await;
            assert_eq!(received.message.as_ref().unwrap().id, sent.id);
            received.ack().await.unwrap();
        }
    }
}

#[tokio::test]
async fn unroutable_messages_fail_as_transient() {
    let config = config(SHARED);
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let batch = [Message::event(unique("nobody.listens"), "{}")];
    let results = sink.deliver(&batch).await;
    let err = results[0].as_ref().unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Transient, "{}", err.describe());
    assert!(err.message.contains("unroutable"), "{}", err.message);

    // A topic AMQP cannot carry fails alone; the rest of the call is fine.
    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let topic = unique("ok");
    let _stream = subscriber
        .subscribe(&Subscription::new(&topic, "g"))
        .await
        .unwrap();
    let batch = [
        Message::event("x".repeat(300), "{}"),
        Message::event(&topic, "{}"),
    ];
    let results = sink.deliver(&batch).await;
    assert_eq!(
        results[0].as_ref().unwrap_err().kind,
        SinkErrorKind::Permanent
    );
    assert!(results[1].is_ok(), "{results:?}");
}

#[tokio::test]
async fn bytes_that_are_not_a_ferry_message_are_malformed() {
    let config = config(SHARED);
    let subscriber = AmqpSubscriber::connect(config.clone()).await.unwrap();
    let topic = unique("raw");
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, "g"))
        .await
        .unwrap();

    let connection = Connection::connect(SHARED, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            config.exchange.as_str().into(),
            topic.as_str().into(),
            BasicPublishOptions::default(),
            b"not a cloudevent",
            BasicProperties::default(),
        )
        .await
        .unwrap();

    let received = next(&mut stream).await;
    let malformed = received.message.as_ref().unwrap_err();
    assert_eq!(malformed.reason, "missing ce-id header");
    assert_eq!(malformed.payload, Bytes::from_static(b"not a cloudevent"));
    received.ack().await.unwrap();
}

#[tokio::test]
async fn nack_requeues_counts_deliveries_and_honours_the_delay() {
    let config = config(SHARED);
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let topic = unique("retry.me");
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, "g").with_prefetch(4))
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
    expect_nothing(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn consumers_of_one_group_share_its_queue() {
    let config = config(SHARED);
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let one = AmqpSubscriber::connect(config.clone()).await.unwrap();
    let two = AmqpSubscriber::connect(config).await.unwrap();
    let topic = unique("shared");
    let subscription = Subscription::new(&topic, "workers").with_prefetch(1);
    let mut a = one.subscribe(&subscription).await.unwrap();
    let mut b = two.subscribe(&subscription).await.unwrap();
    let batch: Vec<Message> = (0..2).map(|_| Message::event(&topic, "{}")).collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    // With a prefetch of one, each consumer holds one message unacked.
    let x = next(&mut a).await;
    let y = next(&mut b).await;
    let ids: BTreeSet<_> = [&x, &y]
        .iter()
        .map(|r| r.message.as_ref().unwrap().id)
        .collect();
    assert_eq!(ids, batch.iter().map(|m| m.id).collect());
    x.ack().await.unwrap();
    y.ack().await.unwrap();
}

#[tokio::test]
async fn lag_counts_ready_messages_without_creating_the_queue() {
    let config = config(SHARED);
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let topic = unique("lagging");
    let subscription = Subscription::new(&topic, "slow");
    assert_eq!(subscriber.lag(&subscription).await.unwrap(), Lag::default());
    assert_eq!(subscriber.lag(&subscription).await.unwrap(), Lag::default());

    // The queue exists from the first subscribe on, consumer or not.
    drop(subscriber.subscribe(&subscription).await.unwrap());
    let batch: Vec<Message> = (0..3).map(|_| Message::event(&topic, "{}")).collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    let lag = subscriber.lag(&subscription).await.unwrap();
    assert_eq!(lag.waiting, Some(3));
}

#[tokio::test]
async fn bad_subscriptions_are_permanent_errors() {
    let subscriber = AmqpSubscriber::connect(config(SHARED)).await.unwrap();
    for subscription in [
        Subscription::new("a.*", "g"),
        Subscription::new("a", "g:h"),
        Subscription::new("t".repeat(300), "g"),
    ] {
        let err = match subscriber.subscribe(&subscription).await {
            Ok(_) => panic!("{subscription:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!(
            err.kind,
            SubscribeErrorKind::Permanent,
            "{}",
            err.describe()
        );
    }

    // A queue that exists with another type is refused, not retried.
    let mut classic = config(SHARED);
    classic.queue_type = QueueType::Classic;
    let topic = unique("typed");
    let subscription = Subscription::new(&topic, "g");
    let quorum = AmqpSubscriber::connect(config(SHARED)).await.unwrap();
    drop(quorum.subscribe(&subscription).await.unwrap());
    let classic = AmqpSubscriber::connect(classic).await.unwrap();
    let err = match classic.subscribe(&subscription).await {
        Ok(_) => panic!("a classic declare of a quorum queue was accepted"),
        Err(e) => e,
    };
    assert_eq!(
        err.kind,
        SubscribeErrorKind::Permanent,
        "{}",
        err.describe()
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_not_a_connect_error() {
    let mut config = config("amqp://guest:guest@127.0.0.1:1/%2f");
    config.timeout = Duration::from_secs(2);
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let results = sink.deliver(&[Message::event("a", "{}")]).await;
    assert_eq!(
        results[0].as_ref().unwrap_err().kind,
        SinkErrorKind::Unavailable
    );
    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let err = match subscriber.subscribe(&Subscription::new("a", "g")).await {
        Ok(_) => panic!("subscribed to nothing"),
        Err(e) => e,
    };
    assert!(err.is_retryable(), "{}", err.describe());
}

#[tokio::test]
async fn a_broker_restart_loses_nothing() {
    restart_loses_nothing(QueueType::Quorum, false).await;
}

#[tokio::test]
async fn a_broker_crash_loses_no_confirmed_message() {
    restart_loses_nothing(QueueType::Classic, true).await;
}

/// Publishes, restarts the broker (killing it when `crash`), consumes.
async fn restart_loses_nothing(queue_type: QueueType, crash: bool) {
    let node = RabbitNode::start().await;
    let mut config = config(&node.url());
    config.queue_type = queue_type;
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let subscriber = AmqpSubscriber::connect(config.clone()).await.unwrap();
    let topic = unique("durable");
    let subscription = Subscription::new(&topic, "g");
    drop(subscriber.subscribe(&subscription).await.unwrap());

    let batch: Vec<Message> = (0..50)
        .map(|i| Message::event(&topic, format!("{i}")).with_key(format!("k{i}")))
        .collect();
    let results = sink.deliver(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    if crash {
        node.crash_and_restart().await;
    } else {
        node.restart().await;
    }
    // The sink reports the lost connection, then connects again by itself.
    // A restarted node takes connections before it has recovered its
    // durable queues: a publish in that window comes back unroutable
    // (Transient, which the relay retries), never as a permanent failure.
    // Generous: a node recovering its queues on a loaded 2-core machine
    // has been seen to take more than 30 s.
    let after = Message::event(&topic, "after");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match sink.deliver(std::slice::from_ref(&after)).await.remove(0) {
            Ok(()) => break,
            Err(e) => {
                assert_ne!(e.kind, SinkErrorKind::Permanent, "{}", e.describe());
                assert!(
                    Instant::now() < deadline,
                    "sink did not reconnect: {}\n{}",
                    e.describe(),
                    node.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let mut stream = subscriber.subscribe(&subscription).await.unwrap();
    let mut want: BTreeSet<_> = batch.iter().chain([&after]).map(|m| m.id).collect();
    while !want.is_empty() {
        let received = next(&mut stream).await;
        assert!(want.remove(&received.message.as_ref().unwrap().id));
        received.ack().await.unwrap();
    }
    expect_nothing(&mut stream, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_broken_connection_ends_the_stream_and_unacked_messages_come_again() {
    let node = RabbitNode::start().await;
    let config = config(&node.url());
    let sink = AmqpSink::connect(config.clone()).await.unwrap();
    let subscriber = AmqpSubscriber::connect(config).await.unwrap();
    let topic = unique("fragile");
    let subscription = Subscription::new(&topic, "g").with_prefetch(10);
    let mut stream = subscriber.subscribe(&subscription).await.unwrap();
    let batch: Vec<Message> = (0..5).map(|_| Message::event(&topic, "{}")).collect();
    assert!(sink.deliver(&batch).await.iter().all(Result::is_ok));
    let mut held = Vec::new();
    for _ in &batch {
        held.push(next(&mut stream).await);
    }

    node.close_all_connections();
    let end = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("the stream reports the broken connection");
    let err = end.expect("an error before the end").unwrap_err();
    assert_eq!(
        err.kind,
        SubscribeErrorKind::Unavailable,
        "{}",
        err.describe()
    );
    assert!(
        stream.next().await.is_none(),
        "the stream ends after the error"
    );
    // Settling a message of the dead channel fails; the broker has it back.
    assert!(held.pop().unwrap().ack().await.is_err());

    let mut stream = subscriber.subscribe(&subscription).await.unwrap();
    let mut want: BTreeSet<_> = batch.iter().map(|m| m.id).collect();
    while !want.is_empty() {
        let received = next(&mut stream).await;
        assert!(want.remove(&received.message.as_ref().unwrap().id));
        assert_eq!(received.delivery_count, Some(2));
        received.ack().await.unwrap();
    }
    drop(held);
}
