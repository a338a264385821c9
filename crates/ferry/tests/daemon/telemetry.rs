//! `ferry run` with a `[telemetry]` table: the relay's spans reach a real
//! OTLP/HTTP receiver (decoding the official protobuf messages) as
//! children of the producer's span named by the outbox row's `traceparent`,
//! and the last ones are flushed on SIGTERM.

use ferry_testkit::otlp::Collector;

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Five messages whose rows carry a producer's `traceparent` (as a
/// plain-SQL producer writes it) and one without: after SIGTERM the
/// receiver holds a `deliver t` span per message, the five in the
/// producer's trace as children of its span, all under the configured
/// service name. Fails if the daemon ignores `[telemetry]`, drops the
/// context, or exits without flushing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exports_the_relays_spans_in_the_producers_trace() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";
    let (received, collector) = Collector::start().await;

    let t = SqliteTestDb::create();
    let db = migrated(&t.url).await;
    let mut messages: Vec<Message> = (0..5)
        .map(|i| {
            Message::event("t", format!("{{\"n\":{i}}}"))
                .with_header("traceparent", format!("00-{TRACE}-{SPAN}-01"))
        })
        .collect();
    messages.push(Message::event("t", "{\"n\":5}"));
    enqueue(&db, &messages).await;
    let r = Receiver::start().await;
    let dir = TempDir::new();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            "[telemetry]\nendpoint = \"{collector}\"\nservice_name = \"orders-relay\"\n\n\
             [[pipeline]]\nname = \"orders\"\ndatabase = \"{}\"\npoll_interval = \"50ms\"\n\
             [pipeline.sink]\ntype = \"http\"\nurl = \"{}\"\n",
            t.url,
            r.url()
        ),
    )
    .unwrap();
    // The log level must not matter: spans are exported at warn too.
    let mut child = Reaped(spawn_ferry(&["run", "--config", file.to_str().unwrap()]));
    wait_until("the receiver to apply all", Duration::from_secs(30), || {
        r.applied().len() == messages.len()
    })
    .await;
    let traced = r
        .applied()
        .iter()
        .filter(|m| m.headers.get("traceparent") == Some(&format!("00-{TRACE}-{SPAN}-01")))
        .count();
    assert_eq!(traced, 5, "the webhook gets the traceparent header");
    // The batch processor sends every 5 s; SIGTERM must flush it first.
    stop(&mut child.0);

    let spans = received.spans();
    let delivers: Vec<_> = spans.iter().filter(|s| s.name == "deliver t").collect();
    assert_eq!(delivers.len(), messages.len(), "{spans:#?}");
    assert!(
        delivers.iter().all(|s| s.service == "orders-relay"),
        "{spans:#?}"
    );
    let in_trace: Vec<_> = delivers
        .iter()
        .filter(|s| s.trace_id == unhex(TRACE))
        .collect();
    assert_eq!(in_trace.len(), 5, "{spans:#?}");
    assert!(
        in_trace.iter().all(|s| s.parent_span_id == unhex(SPAN)),
        "{spans:#?}"
    );
}
