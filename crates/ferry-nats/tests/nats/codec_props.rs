//! Property test of the JetStream codec through the NATS server at
//! 127.0.0.1:4222 (issue 13): arbitrary messages published through the
//! sink and read back through the subscriber are the messages sent (id,
//! kind, topic, key, headers, content type, payload, time to the
//! microsecond), or, when NATS cannot carry them, a permanent error naming
//! the topic or header at fault.
//!
//! What NATS allows: a subject of non-empty dot-separated tokens without
//! whitespace, control characters or wildcards; header names of printable
//! ASCII without `:`; header values without CR or LF (non-ASCII and empty
//! values are fine). Headers named like a CloudEvents attribute or
//! `Nats-*` are dropped by the sink, as documented.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use ferry_core::cloudevents::is_attribute;
use ferry_core::{Kind, Message, MessageId, Sink, SinkErrorKind, Subscriber, Subscription};
use ferry_nats::{NatsSink, NatsSinkConfig, NatsSubscriber};
use futures::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const NATS: &str = "nats://127.0.0.1:4222";

/// The longest a case waits for a message it expects.
const WAIT: Duration = Duration::from_secs(10);

/// A generated message, before it gets its fresh id (JetStream drops a
/// repeated `Nats-Msg-Id`, and shrinking repeats cases).
#[derive(Clone, Debug)]
struct Draft {
    command: bool,
    topic: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    content_type: String,
    payload: Vec<u8>,
    created_at: DateTime<Utc>,
}

/// A subject token: no dot, whitespace or control character; sometimes a
/// wildcard or empty, which no subject may hold.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[a-z0-9_-]{1,6}",
        4 => "[^.\\s\\p{Cc}]{1,4}",
        1 => Just("*".to_owned()),
        1 => Just(">".to_owned()),
        1 => Just(String::new()),
        1 => "[a-z]{0,2}[ \\t\\u{a0}\\u{0}][a-z]{0,2}",
    ]
}

fn topic() -> impl Strategy<Value = String> {
    proptest::collection::vec(token(), 1..4).prop_map(|tokens| tokens.join("."))
}

/// Header names: valid ones, attributes and `Nats-*` in any case (dropped
/// by the sink), and names NATS cannot carry.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[!-9;-~]{1,12}",
        2 => proptest::sample::select(vec![
            "ce-id", "CE-TYPE", "Ce-Source", "ce-time", "ce-partitionkey",
            "ce-ferrykind", "Content-Type", "ce-specversion", "Nats-Msg-Id",
            "nats-expected-stream", "NATS-Rollup", "traceparent",
        ])
        .prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => "[a-z]{0,3}[: é\\u{7f}\\u{1}][a-z]{0,3}",
    ]
}

/// Text NATS carries in a header value as it was, and sometimes text it
/// cannot carry: with a CR or LF, or with leading or trailing whitespace
/// (which the client trims from a received value; the sink refuses it).
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => any::<String>().prop_map(|s| s
            .replace(['\r', '\n'], "")
            .trim_matches(char::is_whitespace)
            .to_owned()),
        2 => Just(String::new()),
        1 => "[a-z]{0,3}[\\r\\n][a-z]{0,3}",
        1 => "[ \t\u{a0}][a-z]{0,3}|[a-z]{0,3}[ \t\u{2003}]",
    ]
}

fn draft() -> impl Strategy<Value = Draft> {
    (
        any::<bool>(),
        topic(),
        proptest::option::of(header_value()),
        proptest::collection::btree_map(header_name(), header_value(), 0..5),
        prop_oneof![
            Just(ferry_core::message::JSON.to_owned()),
            Just("application/octet-stream".to_owned()),
            header_value(),
        ],
        proptest::collection::vec(any::<u8>(), 0..200),
        // Year 0 to 9999: what RFC 3339 writes.
        -62_167_219_200_000_000i64..253_402_300_799_999_999,
    )
        .prop_map(
            |(command, topic, key, headers, content_type, payload, micros)| Draft {
                command,
                topic,
                key,
                headers,
                content_type,
                payload,
                created_at: DateTime::from_timestamp_micros(micros).unwrap(),
            },
        )
}

impl Draft {
    fn message(&self) -> Message {
        Message {
            id: MessageId::new(),
            kind: if self.command {
                Kind::Command
            } else {
                Kind::Event
            },
            topic: self.topic.clone(),
            key: self.key.clone(),
            headers: self.headers.clone(),
            content_type: self.content_type.clone(),
            payload: self.payload.clone().into(),
            created_at: self.created_at,
        }
    }
}

fn is_subject(s: &str) -> bool {
    s.split('.').all(|t| {
        !t.is_empty()
            && t != "*"
            && t != ">"
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// The message as it must come back, or the text the error must name.
fn expected(m: &Message) -> Result<Message, String> {
    if !is_subject(&m.topic) {
        return Err(format!("topic `{}`", m.topic.escape_debug()));
    }
    let carried =
        |name: &str| !is_attribute(name) && !name.to_ascii_lowercase().starts_with("nats-");
    // In the order the sink writes them; the first it cannot carry is named.
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(key) = &m.key {
        headers.push(("ce-partitionkey", key));
    }
    headers.push(("content-type", &m.content_type));
    headers.extend(
        m.headers
            .iter()
            .filter(|(n, _)| carried(n))
            .map(|(n, v)| (n.as_str(), v.as_str())),
    );
    for (name, value) in headers {
        if !is_header_name(name) {
            return Err(format!(
                "`{}` is not a valid nats header name",
                name.escape_debug()
            ));
        }
        if value.contains(['\r', '\n']) || value.trim() != value {
            return Err(format!("header `{name}`"));
        }
    }
    let mut back = m.clone();
    back.headers.retain(|name, _| carried(name));
    Ok(back)
}

fn same(got: &Message, want: &Message) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.id, want.id);
    prop_assert_eq!(got.kind, want.kind, "kind of {}", want.id);
    prop_assert_eq!(&got.topic, &want.topic, "topic of {}", want.id);
    prop_assert_eq!(&got.key, &want.key, "key of {}", want.id);
    prop_assert_eq!(&got.headers, &want.headers, "headers of {}", want.id);
    prop_assert_eq!(
        &got.content_type,
        &want.content_type,
        "content type of {}",
        want.id
    );
    prop_assert_eq!(&got.payload, &want.payload, "payload of {}", want.id);
    prop_assert_eq!(
        got.created_at.timestamp_micros(),
        want.created_at.timestamp_micros(),
        "time of {}",
        want.id
    );
    Ok(())
}

struct Broker {
    sink: NatsSink,
    subscriber: NatsSubscriber,
    config: NatsSinkConfig,
}

async fn broker() -> Broker {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut config = NatsSinkConfig::new(NATS.parse().unwrap());
    config.subject_prefix = format!("ferryprops.{id}.");
    config.stream = Some(format!("FERRYPROPS_{id}"));
    Broker {
        sink: NatsSink::connect(config.clone()).await.unwrap(),
        subscriber: NatsSubscriber::connect(config.clone()).await.unwrap(),
        config,
    }
}

/// Publishes the batch in one call and reads every carried message back
/// through a subscription per topic.
async fn round_trip(broker: &Broker, drafts: &[Draft]) -> Result<(), TestCaseError> {
    let sent: Vec<Message> = drafts.iter().map(Draft::message).collect();
    let group = format!("g{}", uuid::Uuid::now_v7().simple());
    // A new group reads what is published after it subscribed.
    let mut streams = BTreeMap::new();
    for m in &sent {
        if let (Ok(_), false) = (expected(m), streams.contains_key(&m.topic)) {
            let stream = broker
                .subscriber
                .subscribe(&Subscription::new(&m.topic, &group))
                .await
                .map_err(|e| {
                    TestCaseError::fail(format!("subscribe {:?}: {}", m.topic, e.describe()))
                })?;
            streams.insert(m.topic.clone(), stream);
        }
    }
    let results = broker.sink.deliver(&sent).await;
    prop_assert_eq!(results.len(), sent.len());
    let mut wanted: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for (m, result) in sent.iter().zip(results) {
        match (expected(m), result) {
            (Ok(back), Ok(())) => wanted.entry(m.topic.clone()).or_default().push(back),
            (Ok(_), Err(e)) => prop_assert!(false, "{:?} refused: {}", m, e.describe()),
            (Err(named), Ok(())) => prop_assert!(false, "{:?} accepted; expected {}", m, named),
            (Err(named), Err(e)) => {
                prop_assert_eq!(e.kind, SinkErrorKind::Permanent, "{}", e.describe());
                prop_assert!(
                    e.describe().contains(&named),
                    "{} does not name {}",
                    e.describe(),
                    named
                );
            }
        }
    }
    for (topic, want) in wanted {
        let stream = streams.get_mut(&topic).unwrap();
        for w in &want {
            let received = match tokio::time::timeout(WAIT, stream.next()).await {
                Ok(Some(Ok(received))) => received,
                other => {
                    let what = other.map(|o| o.map(|r| r.map(|_| ()).map_err(|e| e.describe())));
                    return Err(TestCaseError::fail(format!(
                        "{topic:?}: waiting for {}: {what:?}",
                        w.id
                    )));
                }
            };
            let got = match &received.message {
                Ok(m) => m.clone(),
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{w:?} arrived malformed: {e:?}"
                    )))
                }
            };
            received
                .ack()
                .await
                .map_err(|e| TestCaseError::fail(e.describe()))?;
            // One publisher, one call: JetStream keeps the order.
            same(&got, w)?;
        }
    }
    Ok(())
}

#[test]
fn arbitrary_messages_round_trip_or_are_refused_naming_the_part() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(broker());
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(draft(), 1..8), |drafts| {
        rt.block_on(round_trip(&broker, &drafts))
    });
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
        js.delete_stream(broker.config.stream.as_deref().unwrap())
            .await
            .unwrap();
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Found by the property above: the client trims the whitespace around a
/// header value it receives, so a key, content type or header value that
/// started or ended with a space (or any Unicode whitespace) came back
/// without it. The sink now refuses such a message for good, naming the
/// header.
#[test]
fn value_whitespace_is_refused_not_trimmed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt.block_on(broker());
    let draft = Draft {
        command: false,
        topic: "t".to_owned(),
        key: Some(" key ".to_owned()),
        headers: BTreeMap::from([("x-a".to_owned(), "\u{a0}v\t".to_owned())]),
        content_type: "text/plain ".to_owned(),
        payload: Vec::new(),
        created_at: Utc::now(),
    };
    let result = rt.block_on(round_trip(&broker, &[draft]));
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(NATS).await.unwrap());
        js.delete_stream(broker.config.stream.as_deref().unwrap())
            .await
            .unwrap();
    });
    result.unwrap();
}
