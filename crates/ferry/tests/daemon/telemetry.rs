//! `ferry run` with a `[telemetry]` table: the relay's spans reach a real
//! OTLP/HTTP receiver (decoding the official protobuf messages) as
//! children of the producer's span named by the outbox row's `traceparent`,
//! and the last ones are flushed on SIGTERM.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;

use super::*;

/// (service.name, span name, trace id, parent span id) of every span the
/// receiver got.
type Spans = Arc<Mutex<Vec<(String, String, Vec<u8>, Vec<u8>)>>>;

async fn export(State(spans): State<Spans>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut spans = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push((
                    service.clone(),
                    span.name,
                    span.trace_id,
                    span.parent_span_id,
                ));
            }
        }
    }
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

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
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(export))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

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

    let spans = spans.lock().unwrap().clone();
    let delivers: Vec<_> = spans.iter().filter(|s| s.1 == "deliver t").collect();
    assert_eq!(delivers.len(), messages.len(), "{spans:#?}");
    assert!(delivers.iter().all(|s| s.0 == "orders-relay"), "{spans:#?}");
    let in_trace: Vec<_> = delivers.iter().filter(|s| s.2 == unhex(TRACE)).collect();
    assert_eq!(in_trace.len(), 5, "{spans:#?}");
    assert!(in_trace.iter().all(|s| s.3 == unhex(SPAN)), "{spans:#?}");
}
