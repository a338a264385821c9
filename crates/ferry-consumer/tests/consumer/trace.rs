//! One message's spans form one trace, producer to handler, exported over
//! OTLP to a real receiver: a producer span enqueues into a SQLite outbox,
//! relays deliver to NATS JetStream (127.0.0.1:4222) and to an HTTP
//! receiver, a router with the inbox handles the NATS message. The export
//! is the daemon's own (`crates/ferry/src/telemetry.rs`); the receiver
//! decodes the official OTLP protobuf messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_consumer::inbox::{inbox_fn, Inbox};
use ferry_consumer::{Router, RouterConfig, StoreDeadLetters};
use ferry_core::trace::{TRACEPARENT, TRACESTATE};
use ferry_core::{Message, Sink};
use ferry_http::{HttpSink, HttpSinkConfig};
use ferry_nats::{NatsSink, NatsSinkConfig, NatsSubscriber};
use ferry_relay::RelayConfig;
use ferry_store::Database;
use ferry_testkit::otlp::{Collector, ExportedSpan as Exported};
use ferry_testkit::{Receiver, SqliteTestDb};
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{topic, Running};
use crate::telemetry::{Protocol, Telemetry, TelemetryConfig};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans from `name` up to the root, by parent span id.
fn ancestry<'a>(spans: &'a [Exported], name: &str) -> Vec<&'a Exported> {
    let by_id: HashMap<&[u8], &Exported> =
        spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let mut chain = vec![*spans
        .iter()
        .filter(|s| s.name == name)
        .collect::<Vec<_>>()
        .first()
        .unwrap_or_else(|| panic!("no span `{name}` among {spans:#?}"))];
    while let Some(parent) = by_id.get(chain.last().unwrap().parent_span_id.as_slice()) {
        chain.push(parent);
    }
    chain
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Current-thread runtime: every task runs on this thread, where the
// subscriber with the OpenTelemetry layer is the default, so the other
// tests of this binary keep theirs.
#[tokio::test]
async fn one_message_is_one_trace_from_producer_to_handler() {
    let (collector, endpoint) = Collector::start().await;
    let telemetry = Telemetry::start(&TelemetryConfig {
        endpoint,
        service_name: "ferry-trace-test".to_owned(),
        protocol: Protocol::HttpProtobuf,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    let _default = tracing::subscriber::set_default(subscriber);

    let sqlite = SqliteTestDb::create();
    let db = Database::connect(&sqlite.url).await.unwrap();
    db.migrate().await.unwrap();
    let Database::Sqlite(pool) = db.clone() else {
        unreachable!()
    };

    // Consumer first: JetStream hands a new consumer only new messages.
    let to_nats = topic("trace.nats");
    let to_http = topic("trace.http");
    let stream = to_nats.replace(['.', '-'], "_").to_uppercase();
    let mut nats = NatsSinkConfig::new("nats://127.0.0.1:4222".parse().unwrap());
    nats.stream = Some(stream.clone());
    nats.subject_prefix = format!("{stream}.");
    let nats_sink: Arc<dyn Sink> = Arc::new(NatsSink::connect(nats.clone()).await.unwrap());
    let handled: Arc<Mutex<Vec<Message>>> = Arc::default();
    let seen = handled.clone();
    let router = Router::builder()
        .subscriber(Arc::new(NatsSubscriber::connect(nats).await.unwrap()))
        .dead_letters(Arc::new(StoreDeadLetters::new(db.clone())))
        .config(&RouterConfig::default())
        .event(
            to_nats.clone(),
            "trace-test",
            Inbox::new(
                pool,
                inbox_fn(move |_tx, message: &Message, _cx| {
                    let seen = seen.clone();
                    let message = message.clone();
                    Box::pin(async move {
                        // The handler's own span, inside Ferry's.
                        let _work = tracing::info_span!("apply the order").entered();
                        seen.lock().unwrap().push(message);
                        Ok(())
                    })
                }),
            ),
        )
        .build()
        .unwrap();
    let consuming = Running::start(router);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The producer: its span is the trace's root.
    let (to_broker, to_webhook, producer_trace, producer_span) = {
        let produce = tracing::info_span!("place order");
        let _in = produce.enter();
        let to_broker = Message::event(to_nats.clone(), r#"{"order":1}"#);
        let to_webhook = Message::event(to_http.clone(), r#"{"order":1}"#);
        db.enqueue(&[to_broker.clone(), to_webhook.clone()])
            .await
            .unwrap();
        let ids = ferry_core::trace::extract(&to_broker.headers).expect("a traceparent");
        (to_broker, to_webhook, ids.trace_id(), ids.span_id())
    };
    assert_eq!(
        to_webhook.headers[TRACEPARENT], to_broker.headers[TRACEPARENT],
        "two messages of one span carry one context"
    );
    assert!(!to_broker.headers.contains_key(TRACESTATE));

    let receiver = Receiver::start().await;
    let http_sink: Arc<dyn Sink> =
        Arc::new(HttpSink::new(HttpSinkConfig::new(receiver.url().parse().unwrap())).unwrap());
    let relay = |name: &str, topic: &str| RelayConfig {
        name: name.to_owned(),
        topics: Some(vec![topic.to_owned()]),
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    };
    let nats_relay = ferry_relay::spawn(&db, nats_sink, relay("to-nats", &to_nats));
    let http_relay = ferry_relay::spawn(&db, http_sink, relay("to-http", &to_http));

    wait_until("the handler", || !handled.lock().unwrap().is_empty()).await;
    wait_until("the webhook", || !receiver.applied().is_empty()).await;
    // The W3C names on the wire: the HTTP `traceparent` header, and the
    // NATS header read back into the message's headers.
    assert_eq!(
        receiver.applied()[0].headers.get(TRACEPARENT),
        Some(&to_webhook.headers[TRACEPARENT])
    );
    let got = handled.lock().unwrap()[0].clone();
    assert_eq!(got.id, to_broker.id);
    assert_eq!(
        got.headers.get(TRACEPARENT),
        to_broker.headers.get(TRACEPARENT)
    );

    nats_relay.stop().await.unwrap();
    http_relay.stop().await.unwrap();
    consuming.shut_down().await;
    drop(_default);
    // Flush what the batch processor holds.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let spans = collector.spans();
    assert!(collector.requests() > 0);
    let trace: Vec<Exported> = spans
        .iter()
        .filter(|s| s.trace_id == producer_trace.to_bytes())
        .cloned()
        .collect();
    // OpenTelemetry names: `deliver <topic>` (the relays' `ferry.deliver`),
    // `process <topic>` (the router's `ferry.consume`), `message` (the
    // router's correlation layer).
    let (deliver_nats, deliver_http, process) = (
        format!("deliver {to_nats}"),
        format!("deliver {to_http}"),
        format!("process {to_nats}"),
    );
    let mut names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    let mut expected = vec![
        "apply the order",
        &deliver_http,
        &deliver_nats,
        "ferry.inbox",
        "message",
        "place order",
        &process,
    ];
    expected.sort_unstable();
    assert_eq!(
        names,
        expected,
        "the message's trace {}: {trace:#?}",
        hex(&producer_trace.to_bytes())
    );
    assert!(trace.iter().all(|s| s.service == "ferry-trace-test"));
    // handler → inbox → correlation layer → router → producer.
    let chain: Vec<&str> = ancestry(&trace, "apply the order")
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        chain,
        [
            "apply the order",
            "ferry.inbox",
            "message",
            &process,
            "place order"
        ]
    );
    let root = ancestry(&trace, "place order");
    assert_eq!(root.len(), 1);
    assert_eq!(root[0].span_id, producer_span.to_bytes());
    // Both relays' deliveries are children of the producer's span.
    for deliver in trace.iter().filter(|s| s.name.starts_with("deliver ")) {
        assert_eq!(deliver.parent_span_id, producer_span.to_bytes());
    }
}
