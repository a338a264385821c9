//! The SQS adapter against moto's server (`scripts/sqs.sh`, or the endpoint
//! FERRY_SQS_ENDPOINT names).

mod conformance;

use std::time::Duration;

use bytes::Bytes;
use ferry_core::{Message, MessageStream, Received, Subscriber, Subscription};
use ferry_sqs::{SqsConfig, SqsSink, SqsSubscriber};
use ferry_testkit::broker::{deliver_all, message, next_within};

const WAIT: Duration = Duration::from_secs(30);

fn unique(what: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{what}-{}", &id[20..])
}

/// moto's endpoint: `scripts/sqs.sh`'s, or the one FERRY_SQS_ENDPOINT names.
pub(crate) fn endpoint() -> String {
    std::env::var("FERRY_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:19325".to_owned())
}

/// Settings for moto, with the tests' queue prefix.
pub(crate) fn config(fifo: bool) -> SqsConfig {
    SqsConfig {
        endpoint: Some(endpoint().parse().unwrap()),
        access_key_id: Some("test".to_owned()),
        secret_access_key: Some("test".to_owned()),
        queue_prefix: "ferry-test-".to_owned(),
        fifo,
        visibility_timeout: Duration::from_secs(10),
        wait_time: Duration::from_secs(1),
        ..SqsConfig::default()
    }
}

async fn subscribe(config: &SqsConfig, topic: &str) -> MessageStream {
    let subscriber = SqsSubscriber::connect(config.clone()).await.unwrap();
    subscriber
        .subscribe(&Subscription::new(topic, "g"))
        .await
        .unwrap()
}

async fn next(stream: &mut MessageStream) -> Received {
    next_within(stream, WAIT).await
}

fn same(got: &Message, sent: &Message) {
    assert_eq!(
        got.created_at.timestamp_micros(),
        sent.created_at.timestamp_micros()
    );
    assert_eq!(
        got,
        &Message {
            created_at: got.created_at,
            ..sent.clone()
        }
    );
}

/// Every field survives, with payloads that are not UTF-8 or empty and
/// more headers than SQS has attributes, on both kinds of queue.
#[tokio::test]
async fn round_trip_keeps_every_field_and_any_payload() {
    for fifo in [false, true] {
        let topic = unique("round.trip");
        let config = config(fifo);
        let mut stream = subscribe(&config, &topic).await;
        let sink = SqsSink::connect(config).await.unwrap();
        let mut many = Message::command(&topic, Bytes::from_static(&[0, 159, 146, 150, 255]))
            .with_key("k-1")
            .with_content_type("application/octet-stream");
        for i in 0..12 {
            many = many.with_header(format!("x-{i}"), format!("value {i}"));
        }
        let sent = vec![
            many,
            Message::event(&topic, "").with_key("k-2"),
            Message::event(&topic, "{\"text\":\"é ✓\"}").with_header("traceparent", "00-ab"),
        ];
        deliver_all(&sink, &sent).await;
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let r = next(&mut stream).await;
            assert_eq!(r.delivery_count, Some(1));
            got.push(message(&r));
            r.ack().await.unwrap();
        }
        for s in &sent {
            same(got.iter().find(|m| m.id == s.id).expect("every message"), s);
        }
    }
}

#[tokio::test]
async fn fifo_drops_a_message_sent_twice_and_keeps_each_keys_order() {
    let topic = unique("fifo");
    let config = config(true);
    let mut stream = subscribe(&config, &topic).await;
    let sink = SqsSink::connect(config).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..8 {
        let wave: Vec<Message> = ["a", "b", "c"]
            .iter()
            .map(|k| {
                Message::event(&topic, format!("{{\"i\":{i}}}"))
                    .with_key(*k)
                    .with_header("x-seq", i.to_string())
            })
            .collect();
        deliver_all(&sink, &wave).await;
        if i == 3 {
            // A relay's re-send after a crash: SQS drops it by its id.
            deliver_all(&sink, &wave).await;
        }
        sent.extend(wave);
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let r = next(&mut stream).await;
        got.push(message(&r));
        r.ack().await.unwrap();
    }
    let mut ids: Vec<_> = got.iter().map(|m| m.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), sent.len(), "each message once");
    for key in ["a", "b", "c"] {
        let seqs: Vec<String> = got
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(|m| m.headers["x-seq"].clone())
            .collect();
        let expected: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        assert_eq!(seqs, expected, "order of {key}");
    }
    // Drained: no stray copy arrives behind a marker.
    let marker = Message::event(&topic, "{}").with_key("a");
    deliver_all(&sink, std::slice::from_ref(&marker)).await;
    let r = next(&mut stream).await;
    assert_eq!(message(&r).id, marker.id);
    r.ack().await.unwrap();
}

/// A message received and dropped unsettled comes back once its visibility
/// timeout passes, counted; a nack with a delay keeps it away that long.
#[tokio::test]
async fn unsettled_messages_come_back_after_the_visibility_timeout() {
    let topic = unique("visibility");
    let mut config = config(false);
    config.visibility_timeout = Duration::from_secs(1);
    let mut stream = subscribe(&config, &topic).await;
    let sink = SqsSink::connect(config).await.unwrap();
    let sent = Message::event(&topic, "{}");
    deliver_all(&sink, std::slice::from_ref(&sent)).await;
    let first = next(&mut stream).await;
    assert_eq!(first.delivery_count, Some(1));
    drop(first);
    let second = next(&mut stream).await;
    assert_eq!(message(&second).id, sent.id);
    assert_eq!(second.delivery_count, Some(2));
    let nacked = std::time::Instant::now();
    second
        .nack(Some(Duration::from_millis(1500)))
        .await
        .unwrap();
    let third = next(&mut stream).await;
    // Rounded up to whole seconds: not before the delay.
    assert!(nacked.elapsed() >= Duration::from_millis(1500));
    assert_eq!(third.delivery_count, Some(3));
    third.ack().await.unwrap();
}

/// After max_receive_count receives without an ack a message moves to the
/// dead-letter queue, where it reads as it was sent.
#[tokio::test]
async fn redrive_moves_a_message_to_the_dead_letter_queue() {
    for fifo in [false, true] {
        let topic = unique("redrive");
        let dead = format!("ferry-test-{}", unique("dead"));
        let mut config = config(fifo);
        config.dead_letter_queue = Some(dead.clone());
        config.max_receive_count = 2;
        let mut stream = subscribe(&config, &topic).await;
        let sink = SqsSink::connect(config.clone()).await.unwrap();
        let sent = Message::event(&topic, Bytes::from_static(&[1, 2, 255])).with_key("k");
        deliver_all(&sink, std::slice::from_ref(&sent)).await;
        for count in 1..=2 {
            let r = next(&mut stream).await;
            assert_eq!(r.delivery_count, Some(count));
            r.nack(None).await.unwrap();
        }
        drop(stream);
        let dead_config = SqsConfig {
            queue_prefix: String::new(),
            dead_letter_queue: None,
            ..config.clone()
        };
        let mut dead_stream = subscribe(&dead_config, &dead).await;
        // moto moves the message on the next receive from the source queue.
        let mut source = subscribe(&config, &topic).await;
        let moved = tokio::select! {
            r = next(&mut dead_stream) => r,
            r = next(&mut source) => panic!("received again from the source queue: {:?}", r.delivery_count),
        };
        same(&message(&moved), &sent);
        moved.ack().await.unwrap();
    }
}

#[tokio::test]
async fn lag_counts_waiting_and_in_flight_messages() {
    let topic = unique("lag");
    let config = config(false);
    let subscriber = SqsSubscriber::connect(config.clone()).await.unwrap();
    let sub = Subscription::new(&topic, "g");
    assert_eq!(
        subscriber.lag(&sub).await.unwrap(),
        ferry_core::Lag::default()
    );
    let sink = SqsSink::connect(config).await.unwrap();
    deliver_all(
        &sink,
        &[Message::event(&topic, "1"), Message::event(&topic, "2")],
    )
    .await;
    let lag = subscriber.lag(&sub).await.unwrap();
    assert_eq!((lag.waiting, lag.in_flight), (Some(2), Some(0)));
    let mut stream = subscriber
        .subscribe(&sub.clone().with_prefetch(1))
        .await
        .unwrap();
    let r = next(&mut stream).await;
    let lag = subscriber.lag(&sub).await.unwrap();
    assert_eq!((lag.waiting, lag.in_flight), (Some(1), Some(1)));
    r.ack().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let config = SqsConfig {
        endpoint: Some("http://127.0.0.1:1".parse().unwrap()),
        request_timeout: Duration::from_secs(2),
        ..config(false)
    };
    let sink = SqsSink::connect(config).await.unwrap();
    ferry_testkit::broker::assert_unavailable(&sink).await;
}
