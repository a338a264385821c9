//! The webhook sink: each message is POSTed as a CloudEvents 1.0 event in
//! binary content mode.

use std::time::Duration;

use ferry_core::cloudevents::{binary_headers, is_attribute};
use ferry_core::{BoxFuture, Delivery, Message, Sink, SinkError};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use url::Url;

use crate::config::ROUNDS_PER_CALL;
use crate::{HttpSinkConfig, SetupError};

/// The header carrying the message id, as proposed by the IETF's
/// `Idempotency-Key` draft and understood by many webhook receivers.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// How much of an error response's body goes into the error message.
const ERROR_BODY_PREFIX: usize = 200;

/// Largest successful response body read to the end so that the connection
/// can be reused; a larger one is dropped unread, closing the connection.
const DRAIN_LIMIT: usize = 16 * 1024;

/// POSTs each message to a webhook.
///
/// The request's body is the payload; its headers are the CloudEvents
/// attributes of [`binary_headers`] (`ce-id`, `ce-type`, `ce-source`,
/// `ce-time`, `content-type`, …), the message's own headers, the configured
/// static headers, and `Idempotency-Key: <message id>`.
///
/// A batch's messages are sent concurrently, at most
/// [`HttpSinkConfig::concurrency`] at a time. Redirects are not followed.
///
/// | response | outcome |
/// |---|---|
/// | 2xx | delivered |
/// | connection failed, 502, 503, 504 | [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) |
/// | 408, 429, other 5xx, timeout | [`Transient`](ferry_core::SinkErrorKind::Transient) |
/// | other 4xx, 3xx, a header that HTTP cannot carry | [`Permanent`](ferry_core::SinkErrorKind::Permanent) |
///
/// A `Retry-After` header given in seconds becomes the error's
/// [`retry_after`](SinkError::retry_after).
pub struct HttpSink {
    client: reqwest::Client,
    url: Url,
    source: String,
    headers: HeaderMap,
    concurrency: usize,
}

impl HttpSink {
    /// A sink for `config`; fails if the settings are invalid or the HTTP
    /// client cannot be set up.
    pub fn new(config: HttpSinkConfig) -> Result<Self, SetupError> {
        let headers = config.static_headers()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout / 2)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SetupError::Client(Box::new(e)))?;
        Ok(Self {
            client,
            url: config.url,
            source: config.source,
            headers,
            concurrency: config.concurrency,
        })
    }

    /// Sends the batch, at most `concurrency` requests in flight: a new one
    /// starts as soon as any finishes, so a slow request does not hold back
    /// the others (`buffered` would count finished but not yet yielded
    /// results against the limit). Results come back in the batch's order.
    async fn deliver_all(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut results: Vec<Option<Delivery>> = batch.iter().map(|_| None).collect();
        let mut waiting = batch.iter().enumerate();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < self.concurrency {
                let Some((i, message)) = waiting.next() else {
                    break;
                };
                in_flight.push(self.send_nth(i, message));
            }
            let Some((i, delivery)) = in_flight.next().await else {
                break;
            };
            results[i] = Some(delivery);
        }
        results
            .into_iter()
            .map(|delivery| delivery.expect("every message was sent"))
            .collect()
    }

    /// [`send`](Self::send), tagged with the message's place in its batch.
    async fn send_nth(&self, i: usize, message: &Message) -> (usize, Delivery) {
        (i, self.send(message).await)
    }

    async fn send(&self, message: &Message) -> Delivery {
        let headers = self.request_headers(message)?;
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(message.payload.clone())
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            drain(response).await;
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        let mut error = status_error(status, &body_prefix(response).await);
        error.retry_after = retry_after;
        Err(error)
    }

    /// Ferry's attributes and `Idempotency-Key` win over the static
    /// headers, which win over the message's own headers.
    fn request_headers(&self, message: &Message) -> Result<HeaderMap, SinkError> {
        // binary_headers has already dropped message headers named like an attribute.
        let all = binary_headers(message, &self.source);
        let mut out = HeaderMap::with_capacity(all.len() + self.headers.len() + 1);
        for (name, value) in &all {
            let (name, value) = header(name, value)?;
            out.insert(name, value);
        }
        for (name, value) in &self.headers {
            if !is_attribute(name.as_str()) {
                out.insert(name.clone(), value.clone());
            }
        }
        let id =
            HeaderValue::try_from(message.id.to_string()).expect("a uuid is a valid header value");
        out.insert(IDEMPOTENCY_KEY, id);
        Ok(out)
    }
}

/// A header for the request, or why HTTP cannot carry it.
fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), SinkError> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
        SinkError::permanent(format!(
            "`{}` is not a valid http header name",
            name.escape_debug()
        ))
        .with_source(e)
    })?;
    let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|e| {
        SinkError::permanent(format!("header `{name}` has a value http cannot carry"))
            .with_source(e)
    })?;
    Ok((name, value))
}

impl Sink for HttpSink {
    /// [`ROUNDS_PER_CALL`] rounds of `concurrency` requests: a slow
    /// receiver then costs at most that many request times per call.
    fn max_per_call(&self) -> Option<usize> {
        Some(self.concurrency.saturating_mul(ROUNDS_PER_CALL as usize))
    }

    fn name(&self) -> &str {
        "http"
    }

    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        Box::pin(self.deliver_all(batch))
    }
}

ferry_core::impl_debug!(
    HttpSink,
    |sink| url: ferry_core::redact_url(sink.url.as_str()),
    concurrency: sink.concurrency
);

/// Classifies a request that got no response.
fn transport_error(error: reqwest::Error) -> SinkError {
    // The URL may carry a token; it stays out of the stored error.
    let error = error.without_url();
    let sink_error = if error.is_connect() {
        SinkError::unavailable("http connection failed")
    } else if error.is_timeout() {
        SinkError::transient("http request timed out")
    } else if error.is_builder() {
        SinkError::permanent("http request could not be built")
    } else {
        SinkError::transient("http request failed")
    };
    sink_error.with_source(error)
}

/// Classifies a response that is not a success; `body` is its beginning.
fn status_error(status: StatusCode, body: &str) -> SinkError {
    let mut message = format!("http {}", status.as_u16());
    if let Some(reason) = status.canonical_reason() {
        message.push(' ');
        message.push_str(&reason.to_ascii_lowercase());
    }
    if !body.is_empty() {
        message.push_str(": ");
        message.push_str(body);
    }
    match status.as_u16() {
        502..=504 => SinkError::unavailable(message),
        408 | 429 | 500..=599 => SinkError::transient(message),
        300..=499 => SinkError::permanent(message),
        _ => SinkError::transient(message),
    }
}

/// `Retry-After` in its delay-seconds form; the HTTP-date form is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The first [`ERROR_BODY_PREFIX`] bytes of the body, on one line, for the
/// error message. The rest is never read.
async fn body_prefix(mut response: Response) -> String {
    let (bytes, _) = read_up_to(&mut response, ERROR_BODY_PREFIX).await;
    one_line_prefix(&bytes, ERROR_BODY_PREFIX)
}

/// The body's chunks until at least `limit` bytes or the end, and whether
/// the end was reached. A read error counts as an end.
async fn read_up_to(response: &mut Response, limit: usize) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => return (bytes, true),
        }
    }
    (bytes, false)
}

fn one_line_prefix(bytes: &[u8], limit: usize) -> String {
    let truncated = bytes.len() > limit;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]);
    // A cut through a multi-byte character shows as a replacement character.
    let text = if truncated {
        text.trim_end_matches(char::REPLACEMENT_CHARACTER)
    } else {
        &text
    };
    let mut out = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if truncated && !out.is_empty() {
        out.push('…');
    }
    out
}

/// Reads a small successful response to the end (chunked or not), so that
/// its connection goes back to the pool; a larger one is dropped unread past
/// [`DRAIN_LIMIT`], closing the connection. The outcome is already known:
/// errors are ignored.
async fn drain(mut response: Response) {
    if response
        .content_length()
        .is_some_and(|len| len > DRAIN_LIMIT as u64)
    {
        return;
    }
    let _ = read_up_to(&mut response, DRAIN_LIMIT).await;
}

#[cfg(test)]
mod tests {
    use ferry_core::SinkErrorKind;

    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        let kind = |code| status_error(StatusCode::from_u16(code).unwrap(), "").kind;
        assert_eq!(kind(400), SinkErrorKind::Permanent);
        assert_eq!(kind(301), SinkErrorKind::Permanent);
        assert_eq!(kind(408), SinkErrorKind::Transient);
        assert_eq!(kind(429), SinkErrorKind::Transient);
        assert_eq!(kind(500), SinkErrorKind::Transient);
        assert_eq!(kind(507), SinkErrorKind::Transient);
        assert_eq!(kind(502), SinkErrorKind::Unavailable);
        assert_eq!(kind(503), SinkErrorKind::Unavailable);
        assert_eq!(kind(504), SinkErrorKind::Unavailable);
        let error = status_error(StatusCode::BAD_REQUEST, "bad field");
        assert_eq!(error.message, "http 400 bad request: bad field");
        let error = status_error(StatusCode::from_u16(599).unwrap(), "");
        assert_eq!(error.message, "http 599");
    }

    #[test]
    fn error_body_is_one_short_line() {
        assert_eq!(one_line_prefix(b"  a\r\nb\tc  ", 200), "a b c");
        assert_eq!(one_line_prefix(b"abcdef", 3), "abc…");
        // "é" is two bytes; a cut between them leaves no replacement character.
        assert_eq!(one_line_prefix("aé".as_bytes(), 2), "a…");
        assert_eq!(one_line_prefix(b"\xff\x00", 200), "\u{fffd}");
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
