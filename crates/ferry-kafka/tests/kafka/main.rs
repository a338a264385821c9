//! The Kafka adapter against a real broker: tansu on 127.0.0.1:19092
//! (`scripts/kafka.sh`), or the one FERRY_KAFKA names.
//!
//! A consumer-group join takes tansu about 20 s, so each test joins as few
//! groups as it can; the tests run in parallel.

mod codec_props;
mod conformance;

use std::time::Duration;

use bytes::Bytes;
use ferry_core::{Message, MessageStream, Received, Subscriber, Subscription};
use ferry_kafka::{KafkaConfig, KafkaSink, KafkaSubscriber};
use ferry_testkit::broker::{deliver_all, message, next_within};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(90);

pub(crate) fn broker() -> String {
    std::env::var("FERRY_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".to_owned())
}

fn unique(what: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("ferry-test-{what}-{}", &id[20..])
}

fn config() -> KafkaConfig {
    let mut config = KafkaConfig::new([broker()]);
    config.topic_prefix = "ferry.".to_owned();
    config.partitions = 3;
    config.join_timeout = WAIT;
    config
}

async fn next(stream: &mut MessageStream) -> Received {
    next_within(stream, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_every_field_and_each_keys_order() {
    let topic = unique("round-trip");
    let sink = KafkaSink::connect(config()).await.unwrap();
    let subscriber = KafkaSubscriber::connect(config()).await.unwrap();
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, unique("g")))
        .await
        .unwrap();

    let mut sent = Vec::new();
    for i in 0..10u8 {
        let mut m = Message::command(&topic, Bytes::from(vec![0, 159, i, 255]))
            .with_key(format!("key-{}", i % 3))
            .with_header("x-seq", i.to_string())
            .with_header("traceparent", "00-ab")
            .with_content_type("application/octet-stream");
        if i == 0 {
            m = Message::event(&topic, "{\"a\":\"é\"}");
        }
        sent.push(m);
    }
    // The sink contract: one message per key in a call.
    for wave in sent.chunks(3) {
        deliver_all(&sink, wave).await;
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let received = next(&mut stream).await;
        assert_eq!(received.delivery_count, None);
        got.push(message(&received));
        received.ack().await.unwrap();
    }
    for s in &sent {
        let r = got.iter().find(|m| m.id == s.id).expect("every message");
        assert_eq!(
            r.created_at.timestamp_micros(),
            s.created_at.timestamp_micros()
        );
        assert_eq!(
            r,
            &Message {
                created_at: r.created_at,
                ..s.clone()
            }
        );
    }
    for key in ["key-0", "key-1", "key-2"] {
        let order: Vec<_> = got
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(|m| m.id)
            .collect();
        let published: Vec<_> = sent
            .iter()
            .filter(|m| m.key.as_deref() == Some(key))
            .map(|m| m.id)
            .collect();
        assert_eq!(order, published, "order of {key}");
    }
}

/// Acks out of order commit only the contiguous prefix; a consumer that
/// stops with a message unacknowledged leaves the group, and the next member
/// reads on from the committed offset. Commits before each ack returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_resumes_at_the_lowest_unacked_offset() {
    resumes_at_the_lowest_unacked_offset(Duration::ZERO).await;
}

/// The same with periodic commits (the default): the committed position
/// follows the acks within the interval, never past an unacknowledged
/// message, and what was acknowledged is committed when the consumer closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_periodic_commits_a_new_member_resumes_at_the_lowest_unacked_offset() {
    resumes_at_the_lowest_unacked_offset(Duration::from_millis(300)).await;
}

async fn resumes_at_the_lowest_unacked_offset(commit_interval: Duration) {
    let topic = unique("resume");
    let mut config = config();
    config.partitions = 1;
    config.commit_interval = commit_interval;
    let sub = Subscription::new(&topic, unique("g"));
    let sink = KafkaSink::connect(config.clone()).await.unwrap();
    let first = KafkaSubscriber::connect(config.clone()).await.unwrap();
    let mut stream = first.subscribe(&sub).await.unwrap();
    let sent: Vec<Message> = (0..5)
        .map(|i| Message::event(&topic, format!("{{\"i\":{i}}}")))
        .collect();
    for m in &sent {
        deliver_all(&sink, std::slice::from_ref(m)).await;
    }
    let mut received = Vec::new();
    for m in &sent {
        let r = next(&mut stream).await;
        assert_eq!(message(&r).id, m.id);
        received.push(Some(r));
    }
    // 4, 0, 3, 1 acknowledged; 2 never.
    for i in [4, 0, 3, 1] {
        received[i].take().unwrap().ack().await.unwrap();
    }
    // Committed up to offset 2: three waiting.
    lag_reaches(&first, &sub, 3, commit_interval).await;
    drop(received);
    drop(stream);

    let second = KafkaSubscriber::connect(config).await.unwrap();
    let mut stream = second.subscribe(&sub).await.unwrap();
    for m in &sent[2..] {
        let r = next(&mut stream).await;
        assert_eq!(message(&r).id, m.id, "from the committed offset on");
        r.ack().await.unwrap();
    }
    lag_reaches(&second, &sub, 0, commit_interval).await;
}

/// With periodic commits, acknowledged positions are committed when the
/// consumer closes and when its partitions are revoked, not only at the
/// next tick (an hour away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_positions_are_committed_on_close_and_on_revoke() {
    let topic = unique("commit-on");
    let mut config = config();
    config.partitions = 2;
    config.commit_interval = Duration::from_secs(3600);
    let sub = Subscription::new(&topic, unique("g"));
    let sink = KafkaSink::connect(config.clone()).await.unwrap();
    let first = KafkaSubscriber::connect(config.clone()).await.unwrap();
    let mut stream = first.subscribe(&sub).await.unwrap();
    let batch = |n: usize| -> Vec<Message> {
        (0..n)
            .map(|i| Message::event(&topic, "{}").with_key(format!("key-{i}")))
            .collect()
    };
    let sent = batch(10);
    deliver_all(&sink, &sent).await;
    for _ in &sent {
        next(&mut stream).await.ack().await.unwrap();
    }
    // A second member: the first's partitions are revoked, which commits
    // (the only commits here are on revoke and on close; tansu may also
    // rebalance once by itself after the first join, which commits the
    // same way).
    let second = KafkaSubscriber::connect(config.clone()).await.unwrap();
    let second_stream = second.subscribe(&sub).await.unwrap();
    lag_reaches(&second, &sub, 0, Duration::from_millis(200)).await;
    drop(second_stream);

    // Closing commits too.
    let more = batch(4);
    deliver_all(&sink, &more).await;
    let mut got = 0;
    while got < more.len() {
        let r = next(&mut stream).await;
        assert!(
            more.iter().any(|m| m.id == message(&r).id),
            "an acknowledged message came again"
        );
        r.ack().await.unwrap();
        got += 1;
    }
    drop(stream);
    lag_reaches(&first, &sub, 0, Duration::from_millis(200)).await;
}

/// Waits for the group's lag to be `want`: at once when every ack commits,
/// else within a few commit intervals, and never below `want` (that would
/// be a commit past an unacknowledged message).
async fn lag_reaches(
    subscriber: &KafkaSubscriber,
    sub: &Subscription,
    want: u64,
    commit_interval: Duration,
) {
    let deadline = tokio::time::Instant::now() + commit_interval * 10 + Duration::from_secs(5);
    loop {
        let lag = subscriber.lag(sub).await.unwrap();
        let waiting = lag.waiting.expect("kafka reports lag");
        assert!(
            waiting >= want,
            "committed past an unacknowledged message: {lag:?}"
        );
        if waiting == want {
            return;
        }
        assert!(
            !commit_interval.is_zero(),
            "with a commit per ack the lag is {want} at once: {lag:?}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag never reached {want}: {lag:?}"
        );
        tokio::time::sleep(commit_interval / 2).await;
    }
}

/// Records another producer wrote with headers that are not a Ferry
/// message arrive malformed, keep their bytes, and can be settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_records_arrive_malformed() {
    let topic = unique("malformed");
    let mut config = config();
    // One partition: the records arrive in the order they were written.
    config.partitions = 1;
    let subscriber = KafkaSubscriber::connect(config.clone()).await.unwrap();
    let mut stream = subscriber
        .subscribe(&Subscription::new(&topic, unique("g")))
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker())
        .create()
        .unwrap();
    let kafka_topic = format!("ferry.{topic}");
    let records = [
        OwnedHeaders::new().insert(Header {
            key: "ce-id",
            value: Some(&[0xff, 0xfe][..]),
        }),
        OwnedHeaders::new().insert(Header {
            key: "ce-type",
            value: Some("x"),
        }),
    ];
    for headers in records {
        producer
            .send(
                FutureRecord::<str, str>::to(&kafka_topic)
                    .payload("raw")
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let first = next(&mut stream).await;
    let malformed = first.message.as_ref().unwrap_err();
    assert_eq!(malformed.reason, "header `ce-id` is not utf-8");
    assert_eq!(malformed.payload, Bytes::from_static(b"raw"));
    first.ack().await.unwrap();
    let second = next(&mut stream).await;
    let malformed = second.message.as_ref().unwrap_err();
    assert_eq!(malformed.reason, "missing ce-id header");
    assert_eq!(malformed.headers["ce-type"], "x");
    second.ack().await.unwrap();
}

#[tokio::test]
async fn lag_of_a_group_that_does_not_exist_is_unknown() {
    let subscriber = KafkaSubscriber::connect(config()).await.unwrap();
    let lag = subscriber
        .lag(&Subscription::new(unique("no-topic"), unique("g")))
        .await
        .unwrap();
    assert_eq!(lag, ferry_core::Lag::default());
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable() {
    let mut config = KafkaConfig::new(["127.0.0.1:1"]);
    config.delivery_timeout = Duration::from_millis(500);
    let sink = KafkaSink::connect(config).await.unwrap();
    ferry_testkit::broker::assert_unavailable(&sink).await;
}
