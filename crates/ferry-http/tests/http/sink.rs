//! The webhook sink against a real axum server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use ferry_core::cloudevents::{from_binary_headers, is_attribute};
use ferry_core::{Delivery, Message, Sink, SinkErrorKind};
use ferry_http::{HttpSink, HttpSinkConfig};

/// What the test server saw.
#[derive(Clone, Default)]
struct Server {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

/// Starts a server on a free port; returns its base URL.
async fn serve() -> (String, Server) {
    let server = Server::default();
    let app = Router::new()
        .route("/hook", post(record))
        .route("/status/{code}", post(status))
        .route("/slow", post(slow))
        .route("/busy", post(busy))
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), server)
}

async fn record(State(server): State<Server>, headers: HeaderMap, body: Bytes) -> StatusCode {
    server.requests.lock().unwrap().push((headers, body));
    StatusCode::NO_CONTENT
}

async fn status(Path(code): Path<u16>) -> impl IntoResponse {
    let code = StatusCode::from_u16(code).unwrap();
    let mut headers = HeaderMap::new();
    if code == StatusCode::TOO_MANY_REQUESTS {
        headers.insert("retry-after", "7".parse().unwrap());
    }
    let body = match code.as_u16() {
        400 => "{\"error\":\n\"field `amount` is missing\"}".to_owned(),
        404 => "x".repeat(1000),
        _ => String::new(),
    };
    (code, headers, body)
}

async fn slow() -> StatusCode {
    tokio::time::sleep(Duration::from_secs(5)).await;
    StatusCode::OK
}

async fn busy(State(server): State<Server>) -> StatusCode {
    let now = server.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    server.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::OK
}

fn sink(url: &str) -> HttpSink {
    HttpSink::new(HttpSinkConfig::new(url.parse().unwrap())).unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The message a receiver reads from a request, through
/// [`from_binary_headers`], without the headers HTTP itself adds.
fn decode(headers: &HeaderMap, body: &Bytes) -> Message {
    let headers = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.to_str().unwrap()));
    let mut message = from_binary_headers(headers, body.clone()).unwrap();
    for transport in ["host", "user-agent", "accept", "content-length"] {
        message.headers.remove(transport);
    }
    message
}

#[tokio::test]
async fn posts_binary_cloudevents() {
    let (base, server) = serve().await;
    let mut config = HttpSinkConfig::new(format!("{base}/hook").parse().unwrap());
    config.source = "/ferry/orders".into();
    config
        .headers
        .insert("Authorization".into(), "Bearer s3cret".into());
    let sink = HttpSink::new(config).unwrap();
    let batch = vec![
        Message::event("order.placed", r#"{"order":1}"#)
            .with_key("order-1")
            .with_header("traceparent", "00-ab")
            // None may replace what Ferry or the configuration sets.
            .with_header("ce-id", "forged")
            .with_header("CE-ID", "forged")
            .with_header("Content-Type", "text/forged")
            .with_header("authorization", "Bearer forged"),
        Message::command("coupon.issue", "plain text").with_content_type("text/plain"),
        Message::event("order.paid", ""),
    ];

    let results = sink.deliver(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), batch.len());
    for message in &batch {
        let id = message.id.to_string();
        let (headers, body) = requests
            .iter()
            .find(|(headers, _)| header(headers, "ce-id") == id)
            .unwrap_or_else(|| panic!("message {id} not received"));
        assert_eq!(headers.get_all("ce-id").iter().count(), 1);
        assert_eq!(headers.get_all("content-type").iter().count(), 1);
        assert_eq!(header(headers, "ce-specversion"), "1.0");
        assert_eq!(header(headers, "ce-source"), "/ferry/orders");

        let got = decode(headers, body);
        // RFC 3339 with microseconds: the time survives to the microsecond.
        assert_eq!(
            got.created_at.timestamp_micros(),
            message.created_at.timestamp_micros()
        );
        let mut sent = message.clone();
        sent.headers.retain(|name, _| !is_attribute(name));
        sent.headers
            .insert("authorization".into(), "Bearer s3cret".into());
        sent.headers.insert("idempotency-key".into(), id);
        assert_eq!(
            Message {
                created_at: message.created_at,
                ..got
            },
            sent
        );
    }
}

#[tokio::test]
async fn classifies_statuses() {
    let (base, _server) = serve().await;
    let long_body = format!("http 404 not found: {}…", "x".repeat(200));
    // status, then the error's kind, message and retry_after (None: delivered)
    let cases = [
        (200, None),
        (204, None),
        (
            400,
            Some((
                SinkErrorKind::Permanent,
                r#"http 400 bad request: {"error": "field `amount` is missing"}"#,
                None,
            )),
        ),
        (
            404,
            Some((SinkErrorKind::Permanent, long_body.as_str(), None)),
        ),
        (
            301,
            Some((SinkErrorKind::Permanent, "http 301 moved permanently", None)),
        ),
        (
            408,
            Some((SinkErrorKind::Transient, "http 408 request timeout", None)),
        ),
        (
            429,
            Some((
                SinkErrorKind::Transient,
                "http 429 too many requests",
                Some(Duration::from_secs(7)),
            )),
        ),
        (
            500,
            Some((
                SinkErrorKind::Transient,
                "http 500 internal server error",
                None,
            )),
        ),
        (
            502,
            Some((SinkErrorKind::Unavailable, "http 502 bad gateway", None)),
        ),
        (
            503,
            Some((
                SinkErrorKind::Unavailable,
                "http 503 service unavailable",
                None,
            )),
        ),
        (
            504,
            Some((SinkErrorKind::Unavailable, "http 504 gateway timeout", None)),
        ),
    ];
    for (code, expected) in cases {
        let sink = sink(&format!("{base}/status/{code}"));
        let result = deliver_one(&sink, Message::event("t", "{}")).await;
        let got = result
            .as_ref()
            .err()
            .map(|e| (e.kind, e.message.as_str(), e.retry_after));
        assert_eq!(got, expected, "{code}");
    }
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let sink = sink(&format!("http://{addr}/hook"));
    let batch = [Message::event("a", "{}"), Message::event("b", "{}")];
    for result in sink.deliver(&batch).await {
        let error = result.unwrap_err();
        assert_eq!(error.kind, SinkErrorKind::Unavailable);
        assert_eq!(error.message, "http connection failed");
        assert!(error.source.is_some());
        assert!(
            !error.describe().contains(&addr.port().to_string()),
            "the url stays out of the error: {}",
            error.describe()
        );
    }
}

#[tokio::test]
async fn timeout_is_transient() {
    let (base, _server) = serve().await;
    let mut config = HttpSinkConfig::new(format!("{base}/slow").parse().unwrap());
    config.timeout = Duration::from_millis(300);
    let sink = HttpSink::new(config).unwrap();
    let started = Instant::now();
    let error = deliver_one(&sink, Message::event("t", "{}"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(error.kind, SinkErrorKind::Transient);
    assert_eq!(error.message, "http request timed out");
}

#[tokio::test]
async fn bad_headers_fail_only_their_message() {
    let (base, server) = serve().await;
    let sink = sink(&format!("{base}/hook"));
    let batch = [
        Message::event("t", "{}").with_header("bad name", "x"),
        Message::event("t", "{}").with_header("x-split", "a\r\nInjected: yes"),
        Message::event("t", "{}").with_header("x-fine", "café"),
    ];
    let results = sink.deliver(&batch).await;
    for result in &results[..2] {
        let error = result.as_ref().unwrap_err();
        assert_eq!(error.kind, SinkErrorKind::Permanent);
    }
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(server.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn concurrency_bounds_requests_in_flight() {
    let (base, server) = serve().await;
    let mut config = HttpSinkConfig::new(format!("{base}/busy").parse().unwrap());
    config.concurrency = 3;
    let sink = HttpSink::new(config).unwrap();
    let batch: Vec<_> = (0..9)
        .map(|i| Message::event("t", format!("{i}")))
        .collect();
    let results = sink.deliver(&batch).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(server.max_in_flight.load(Ordering::SeqCst), 3);
}

/// A slow request does not stop the others from starting: with three in
/// flight, the nine fast messages all reach the receiver while the slow one
/// is still held there. The slow one is released only once the nine have
/// arrived; if they never do, it fails after a generous timeout.
#[tokio::test]
async fn a_slow_request_does_not_hold_back_the_others() {
    let (arrived, _) = tokio::sync::watch::channel(0usize);
    let arrived = Arc::new(arrived);
    let app = Router::new()
        .route(
            "/hook",
            post(|State(arrived): State<Arc<tokio::sync::watch::Sender<usize>>>, body: Bytes| async move {
                if body.as_ref() != b"slow" {
                    arrived.send_modify(|n| *n += 1);
                    return StatusCode::OK;
                }
                let mut seen = arrived.subscribe();
                let released = tokio::time::timeout(Duration::from_secs(20), seen.wait_for(|n| *n == 9))
                    .await
                    .is_ok_and(|r| r.is_ok());
                if released {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }),
        )
        .with_state(arrived.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = HttpSinkConfig::new(format!("http://{addr}/hook").parse().unwrap());
    config.concurrency = 3;
    config.timeout = Duration::from_secs(30);
    let sink = HttpSink::new(config).unwrap();
    let batch: Vec<_> = (0..10)
        .map(|i| {
            Message::event(
                "t",
                if i == 1 {
                    "slow".to_owned()
                } else {
                    format!("{i}")
                },
            )
        })
        .collect();
    let results = sink.deliver(&batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(*arrived.borrow(), 9);
}

/// A successful response without a Content-Length (chunked) is read to the
/// end, so that its connection is reused.
#[tokio::test]
async fn chunked_responses_keep_the_connection() {
    use axum::serve::ListenerExt;

    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    let app = Router::new().route(
        "/hook",
        post(|| async {
            let chunks = ["accepted", " and ", "stored"].map(Ok::<_, std::io::Error>);
            axum::body::Body::from_stream(futures::stream::iter(chunks))
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = HttpSinkConfig::new(format!("http://{addr}/hook").parse().unwrap());
    config.concurrency = 1;
    let sink = HttpSink::new(config).unwrap();
    for i in 0..50 {
        let result = deliver_one(&sink, Message::event("t", format!("{i}"))).await;
        assert!(result.is_ok(), "{result:?}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[test]
fn invalid_settings_are_refused() {
    let mut config = HttpSinkConfig::new("http://localhost/hook".parse().unwrap());
    config.concurrency = 0;
    assert!(HttpSink::new(config.clone()).is_err());
    config.concurrency = 1;
    config.headers.insert("Bad Name".into(), "x".into());
    let error = HttpSink::new(config).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid `headers` for http sink: `Bad Name` is not a header name"
    );
    let config = HttpSinkConfig::new("ftp://localhost/hook".parse().unwrap());
    assert!(HttpSink::new(config).is_err());
}

async fn deliver_one(sink: &HttpSink, message: Message) -> Delivery {
    let mut results = sink.deliver(std::slice::from_ref(&message)).await;
    assert_eq!(results.len(), 1);
    results.pop().unwrap()
}
