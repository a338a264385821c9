//! The JetStream sink against the NATS server at 127.0.0.1:4222.
//!
//! Each test works in its own stream and subjects, so they run in parallel.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use ferry_core::cloudevents::{from_binary_headers, is_attribute};
use ferry_core::{Message, Sink, SinkErrorKind};
use ferry_nats::{ConnectError, NatsSink, NatsSinkConfig};
use futures::StreamExt;

const NATS: &str = "nats://127.0.0.1:4222";

/// A stream name and a subject prefix no other test uses.
struct Names {
    stream: String,
    prefix: String,
}

fn names() -> Names {
    let id = uuid::Uuid::now_v7().simple().to_string();
    Names {
        stream: format!("FERRYTEST_{id}"),
        prefix: format!("ferrytest.{id}."),
    }
}

async fn jetstream() -> jetstream::Context {
    jetstream::new(async_nats::connect(NATS).await.unwrap())
}

/// The test's names, a JetStream context, and a sink (which creates the
/// test's stream).
async fn fresh_sink() -> (Names, jetstream::Context, NatsSink) {
    let names = names();
    let js = jetstream().await;
    let sink = NatsSink::connect(config(&names)).await.unwrap();
    (names, js, sink)
}

/// A sink on a stream of the test's own, created beforehand on its
/// subjects with the given limits: the sink leaves an existing stream as it
/// is.
async fn sink_on_stream(
    limits: jetstream::stream::Config,
) -> (Names, jetstream::Context, NatsSink) {
    let names = names();
    let js = jetstream().await;
    js.create_stream(jetstream::stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}>", names.prefix)],
        ..limits
    })
    .await
    .unwrap();
    let sink = NatsSink::connect(config(&names)).await.unwrap();
    (names, js, sink)
}

fn config(names: &Names) -> NatsSinkConfig {
    let mut config = NatsSinkConfig::new(NATS.parse().unwrap());
    config.subject_prefix = names.prefix.clone();
    config.stream = Some(names.stream.clone());
    config
}

/// Everything in `stream`, in order.
async fn read_all(js: &jetstream::Context, stream: &str) -> Vec<jetstream::Message> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(100).messages().await.unwrap();
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        out.push(message.unwrap());
    }
    out
}

async fn stored(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Checks that the test's stream stores `messages`, then deletes it.
async fn assert_stored_then_delete(js: &jetstream::Context, names: &Names, messages: u64) {
    assert_eq!(stored(js, &names.stream).await, messages);
    js.delete_stream(&names.stream).await.unwrap();
}

#[tokio::test]
async fn publishes_batch_with_cloudevents_headers() {
    let (names, js, sink) = fresh_sink().await;
    let batch = vec![
        Message::event("order.placed", r#"{"order":1}"#)
            .with_key("order-1")
            .with_header("traceparent", "00-ab")
            // NATS header names are case-sensitive: neither may travel next
            // to Ferry's own attribute.
            .with_header("CE-ID", "forged")
            .with_header("Content-Type", "text/forged")
            .with_header("Nats-Msg-Id", "forged")
            // would fail the publish if it reached JetStream
            .with_header("Nats-Expected-Last-Sequence", "999"),
        Message::command("coupon.issue", "plain").with_content_type("text/plain"),
        Message::event("order.paid", ""),
    ];

    let results = sink.deliver(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let received = read_all(&js, &names.stream).await;
    assert_eq!(received.len(), batch.len());
    for (message, got) in batch.iter().zip(&received) {
        let id = message.id.to_string();
        assert_eq!(
            got.subject.as_str(),
            format!("{}{}", names.prefix, message.topic)
        );
        let headers: Vec<(String, String)> = got
            .headers
            .as_ref()
            .expect("headers")
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| (name.to_string(), value.as_str().to_owned()))
            })
            .collect();
        let named = |wanted: &str| {
            headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(named("ce-id"), [id.as_str()]);
        assert_eq!(named("content-type"), [message.content_type.as_str()]);
        assert_eq!(named("Nats-Msg-Id"), [id.as_str()]);
        assert_eq!(named("ce-specversion"), ["1.0"]);
        assert_eq!(named("ce-source"), ["/ferry"]);

        let mut got = from_binary_headers(headers.clone(), got.payload.clone()).unwrap();
        got.headers.remove("Nats-Msg-Id");
        // RFC 3339 with microseconds: the time survives to the microsecond.
        assert_eq!(
            got.created_at.timestamp_micros(),
            message.created_at.timestamp_micros()
        );
        let mut sent = message.clone();
        sent.headers
            .retain(|name, _| !is_attribute(name) && !name.starts_with("Nats-"));
        assert_eq!(
            Message {
                created_at: message.created_at,
                ..got
            },
            sent
        );
    }

    js.delete_stream(&names.stream).await.unwrap();
}

#[tokio::test]
async fn redelivery_is_dropped_by_message_id() {
    let (names, js, sink) = fresh_sink().await;
    let message = Message::event("order.placed", r#"{"order":1}"#);
    let other = Message::event("order.placed", r#"{"order":2}"#);

    let first = sink.deliver(&[message.clone(), other]).await;
    let again = sink.deliver(std::slice::from_ref(&message)).await;
    assert!(first.iter().chain(&again).all(Result::is_ok));
    assert_stored_then_delete(&js, &names, 2).await;
}

#[tokio::test]
async fn rejected_messages_are_permanent_and_spare_the_rest() {
    let (names, js, sink) = sink_on_stream(jetstream::stream::Config {
        max_message_size: 1024,
        ..Default::default()
    })
    .await;
    let batch = [
        // JetStream refuses it: larger than the stream's max_message_size.
        Message::event("big", vec![b'x'; 2048]),
        // Larger than the server's max_payload: refused before sending.
        Message::event("huge", vec![b'x'; 2 * 1024 * 1024]),
        Message::event("bad topic", "{}"),
        Message::event("bad..topic", "{}"),
        Message::event("", "{}"),
        Message::event("ok", "{}").with_header("x-split", "a\r\nInjected: yes"),
        Message::event("ok", "{}").with_header("bad:name", "x"),
        Message::event("ok", "{}"),
    ];

    let results = sink.deliver(&batch).await;
    let (last, rejected) = results.split_last().unwrap();
    for (i, result) in rejected.iter().enumerate() {
        let error = result.as_ref().unwrap_err();
        assert_eq!(error.kind, SinkErrorKind::Permanent, "{i}: {error:?}");
    }
    assert!(last.is_ok(), "{last:?}");
    assert_eq!(
        rejected[0].as_ref().unwrap_err().message,
        "jetstream rejected the message"
    );
    assert!(
        rejected[1]
            .as_ref()
            .unwrap_err()
            .message
            .contains("max_payload"),
        "{:?}",
        rejected[1]
    );

    // The connection survived them all.
    assert!(sink.deliver(&[Message::event("ok", "{}")]).await[0].is_ok());
    assert_stored_then_delete(&js, &names, 2).await;
}

/// A stream that is full and discards new messages refuses with error
/// 10077: space may free up, so the message is retried.
#[tokio::test]
async fn stream_full_is_transient() {
    let (names, js, sink) = sink_on_stream(jetstream::stream::Config {
        max_messages: 1,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await;
    let first = sink.deliver(&[Message::event("t", "1")]).await;
    assert!(first[0].is_ok(), "{first:?}");
    let second = sink.deliver(&[Message::event("t", "2")]).await;
    let error = second[0].as_ref().unwrap_err();
    assert_eq!(error.kind, SinkErrorKind::Transient, "{error:?}");
    assert_eq!(error.message, "jetstream cannot store the message now");
    assert!(error.describe().contains("10077"), "{}", error.describe());
    assert_stored_then_delete(&js, &names, 1).await;
}

#[tokio::test]
async fn subject_without_stream_is_unavailable() {
    let names = names();
    let mut config = config(&names);
    config.stream = None;
    config.ack_timeout = Duration::from_secs(2);
    let sink = NatsSink::connect(config).await.unwrap();
    let result = sink.deliver(&[Message::event("t", "{}")]).await;
    let error = result[0].as_ref().unwrap_err();
    assert_eq!(error.kind, SinkErrorKind::Unavailable);
    assert_eq!(error.message, "no jetstream stream captures the subject");
}

#[tokio::test]
async fn server_down_is_unavailable_not_a_hang() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let names = names();
    let mut config = config(&names);
    config.url = format!("nats://{addr}").parse().unwrap();
    config.ack_timeout = Duration::from_millis(500);

    let started = Instant::now();
    let sink = NatsSink::connect(config).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));

    let started = Instant::now();
    let results = sink
        .deliver(&[Message::event("a", "{}"), Message::event("b", "{}")])
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    for result in results {
        let error = result.unwrap_err();
        assert_eq!(error.kind, SinkErrorKind::Unavailable);
        assert_eq!(error.message, "nats is not connected");
    }
}

#[tokio::test]
async fn stream_jetstream_refuses_fails_connect() {
    let (names, js, sink) = fresh_sink().await;
    drop(sink);
    // A second stream over the same subjects overlaps the first.
    let mut clashing = config(&names);
    clashing.stream = Some(format!("{}_CLASH", names.stream));
    let error = NatsSink::connect(clashing).await.unwrap_err();
    assert!(matches!(error, ConnectError::Stream { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("could not ensure jetstream stream `{}_CLASH`", names.stream)
    );

    js.delete_stream(&names.stream).await.unwrap();
}

/// A NATS server of the test's own, so that it can be stopped.
struct OwnServer {
    process: tokio::process::Child,
    store: std::path::PathBuf,
}

impl OwnServer {
    fn start(port: u16, extra_args: &[&str]) -> Self {
        let store = std::env::temp_dir().join(format!("ferry-nats-{}", uuid::Uuid::now_v7()));
        let process = tokio::process::Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store)
            .args(extra_args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server runs");
        Self { process, store }
    }

    async fn stop(mut self) {
        self.process.kill().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Delivers `message` until the result is of the wanted kind (`None`: ok).
async fn deliver_until(sink: &NatsSink, message: &Message, wanted: Option<SinkErrorKind>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = sink.deliver(std::slice::from_ref(message)).await;
        let kind = result[0].as_ref().err().map(|e| e.kind);
        if kind == wanted {
            return;
        }
        assert!(Instant::now() < deadline, "still {:?}", result[0]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn starts_before_nats_and_follows_its_outages() {
    let port = free_port();
    let names = names();
    let mut config = config(&names);
    config.url = format!("nats://127.0.0.1:{port}").parse().unwrap();
    config.ack_timeout = Duration::from_millis(500);
    let sink = NatsSink::connect(config).await.unwrap();
    let message = Message::event("order.placed", "{}");
    deliver_until(&sink, &message, Some(SinkErrorKind::Unavailable)).await;

    // Up: the stream is created before the first delivery.
    let server = OwnServer::start(port, &[]);
    deliver_until(&sink, &message, None).await;
    let js = jetstream::new(
        async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap(),
    );
    assert_eq!(stored(&js, &names.stream).await, 1);

    // Down again.
    server.stop().await;
    deliver_until(&sink, &message, Some(SinkErrorKind::Unavailable)).await;
}

#[tokio::test]
async fn credentials_come_from_the_url() {
    let port = free_port();
    let server = OwnServer::start(port, &["--user", "ferry", "--pass", "p@ss word"]);
    let names = names();
    let mut config = config(&names);
    config.ack_timeout = Duration::from_millis(500);
    let message = Message::event("order.placed", "{}");

    config.url = format!("nats://ferry:wrong@127.0.0.1:{port}")
        .parse()
        .unwrap();
    let refused = NatsSink::connect(config.clone()).await.unwrap();
    deliver_until(&refused, &message, Some(SinkErrorKind::Unavailable)).await;

    config.url = format!("nats://ferry:p%40ss%20word@127.0.0.1:{port}")
        .parse()
        .unwrap();
    assert!(!format!("{config:?}").contains("p%40ss"), "{config:?}");
    let sink = NatsSink::connect(config).await.unwrap();
    deliver_until(&sink, &message, None).await;

    server.stop().await;
}
