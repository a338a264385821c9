//! The JSON bodies of the offset API, shared by the server and the client.
//!
//! How a payload travels (exactly one of `payload` and `payload_base64` is
//! present):
//!
//! * a JSON content type (`application/json`, or any `…/…+json`; parameters
//!   such as `charset` aside) whose bytes are valid JSON: `payload` is that
//!   JSON document, embedded as stored (leading and trailing whitespace
//!   aside);
//! * any other content type whose bytes are valid UTF-8: `payload` is a JSON
//!   string holding the text;
//! * anything else (bytes that are not UTF-8, or a JSON content type whose
//!   bytes do not parse): `payload_base64`, the bytes in standard base64
//!   with padding.
//!
//! So a reader knows from `content_type` alone whether `payload` is a
//! document or a string, and gets the stored bytes back
//! ([`EventBody::into_stored`]).

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ferry_store::event_store::{EventPage, StoredEvent};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// `GET /v1/events`: a page of events and the offset to ask for next.
#[derive(Debug, Serialize, Deserialize)]
pub struct PageBody {
    /// The events, in sequence order.
    pub events: Vec<EventBody>,
    /// The `offset` of the next request. The last event's `seq` when the
    /// page is full; otherwise the highest sequence number committed when
    /// the page was read (so a filtered reader skips what did not match),
    /// never below the request's offset.
    pub next_offset: i64,
}

/// One event as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventBody {
    /// Position in the log (1, 2, 3, … in commit order; numbers may be
    /// skipped, never reused).
    pub seq: i64,
    /// The event's unique id: the idempotency key.
    pub id: Uuid,
    /// What happened, e.g. `order.cancelled`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The kind of aggregate (may be empty).
    pub source_type: String,
    /// The aggregate's id (may be empty).
    pub source_id: String,
    /// MIME type of the payload.
    pub content_type: String,
    /// The payload as JSON: the document itself for a JSON content type, a
    /// string for other text; absent when `payload_base64` is present.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub payload: Option<Box<RawValue>>,
    /// The payload's bytes in standard base64, when they are neither a
    /// valid JSON document under a JSON content type nor UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// When the event was appended (the database's clock), RFC 3339.
    pub recorded_at: DateTime<Utc>,
}

/// A present `payload` is `Some`, even when it is the JSON document `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// `GET /v1/events/head`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeadBody {
    /// The highest sequence number committed (0 for an empty store).
    pub head: i64,
}

/// Every error answer: `{"error": "..."}`, plus the query parameter at
/// fault on a 400.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong, in words.
    pub error: String,
    /// The query parameter at fault, on a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

/// A body the API sent that does not follow the rules above.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Neither or both of `payload` and `payload_base64`.
    #[error("event {seq} has {} of `payload` and `payload_base64`", if *.both { "both" } else { "neither" })]
    PayloadFields {
        /// The event.
        seq: i64,
        /// Both rather than neither.
        both: bool,
    },
    /// `payload` is not a string under a content type that is not JSON.
    #[error("event {seq}: `payload` of content type `{content_type}` is not a JSON string")]
    NotText {
        /// The event.
        seq: i64,
        /// Its content type.
        content_type: String,
    },
    /// `payload_base64` is not base64.
    #[error("event {seq}: `payload_base64` is not valid base64")]
    Base64 {
        /// The event.
        seq: i64,
        /// Why.
        #[source]
        source: base64::DecodeError,
    },
}

/// Whether `content_type` is JSON: `application/json` or a `+json` type,
/// whatever its parameters and case.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.ends_with("+json") && essence.contains('/'))
}

impl From<StoredEvent> for EventBody {
    fn from(e: StoredEvent) -> Self {
        let (payload, payload_base64) = encode_payload(&e.content_type, e.payload);
        Self {
            seq: e.seq,
            id: e.id,
            event_type: e.event_type,
            source_type: e.source_type,
            source_id: e.source_id,
            content_type: e.content_type,
            payload,
            payload_base64,
            recorded_at: e.recorded_at,
        }
    }
}

impl From<EventPage> for PageBody {
    fn from(page: EventPage) -> Self {
        Self {
            events: page.events.into_iter().map(EventBody::from).collect(),
            next_offset: page.next_offset,
        }
    }
}

fn encode_payload(content_type: &str, bytes: Vec<u8>) -> (Option<Box<RawValue>>, Option<String>) {
    let base64 = |bytes: &[u8]| {
        (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        )
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => return base64(e.as_bytes()),
    };
    if is_json(content_type) {
        return match serde_json::from_str::<&RawValue>(&text) {
            Ok(document) => (Some(document.to_owned()), None),
            Err(_) => base64(text.as_bytes()),
        };
    }
    // Serialising a string cannot fail, nor can reading it back as JSON.
    match serde_json::to_string(&text).map(RawValue::from_string) {
        Ok(Ok(string)) => (Some(string), None),
        _ => base64(text.as_bytes()),
    }
}

impl EventBody {
    /// The event as stored: the payload's bytes recovered per the rules of
    /// this module (a JSON document without surrounding whitespace).
    pub fn into_stored(self) -> Result<StoredEvent, BodyError> {
        let seq = self.seq;
        let payload = match (self.payload, self.payload_base64) {
            (Some(json), None) if is_json(&self.content_type) => json.get().as_bytes().to_vec(),
            (Some(json), None) => serde_json::from_str::<String>(json.get())
                .map_err(|_| BodyError::NotText {
                    seq,
                    content_type: self.content_type.clone(),
                })?
                .into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|source| BodyError::Base64 { seq, source })?,
            (payload, _) => {
                return Err(BodyError::PayloadFields {
                    seq,
                    both: payload.is_some(),
                })
            }
        };
        Ok(StoredEvent {
            seq,
            id: self.id,
            event_type: self.event_type,
            source_type: self.source_type,
            source_id: self.source_id,
            content_type: self.content_type,
            payload,
            recorded_at: self.recorded_at,
            // The API does not show an event's trace context.
            traceparent: None,
            tracestate: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(content_type: &str, payload: &[u8]) -> StoredEvent {
        StoredEvent {
            seq: 7,
            id: Uuid::now_v7(),
            event_type: "order.cancelled".to_owned(),
            source_type: "order".to_owned(),
            source_id: "42".to_owned(),
            content_type: content_type.to_owned(),
            payload: payload.to_vec(),
            recorded_at: Utc::now(),
            traceparent: None,
            tracestate: None,
        }
    }

    fn wire(e: &StoredEvent) -> serde_json::Value {
        serde_json::to_value(EventBody::from(e.clone())).unwrap()
    }

    #[test]
    fn json_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/jsonx",
            "+json",
            "",
            "application/xml",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
    }

    #[test]
    fn each_payload_travels_by_the_rule_and_comes_back_whole() {
        let cases: [(&str, &[u8], serde_json::Value); 6] = [
            (
                "application/json",
                br#"{"order":42,"lines":[1,2]}"#,
                serde_json::json!({"payload": {"order": 42, "lines": [1, 2]}}),
            ),
            (
                "application/json",
                b"null",
                serde_json::json!({"payload": null}),
            ),
            (
                "text/plain",
                "caf\u{e9} \"quoted\"".as_bytes(),
                serde_json::json!({"payload": "caf\u{e9} \"quoted\""}),
            ),
            // JSON-looking text under a text type stays a string.
            ("text/plain", b"{}", serde_json::json!({"payload": "{}"})),
            (
                "application/octet-stream",
                &[0xff, 0x00, 0x80],
                serde_json::json!({"payload_base64": "/wCA"}),
            ),
            // A JSON type whose bytes do not parse: base64, not a string.
            (
                "application/json",
                b"{not json",
                serde_json::json!({"payload_base64": "e25vdCBqc29u"}),
            ),
        ];
        for (ct, bytes, expected) in cases {
            let e = event(ct, bytes);
            let v = wire(&e);
            for field in ["payload", "payload_base64"] {
                assert_eq!(v.get(field), expected.get(field), "{ct} {bytes:?}: {v}");
            }
            assert_eq!(v["type"], "order.cancelled");
            let text = serde_json::to_string(&EventBody::from(e.clone())).unwrap();
            let back: EventBody = serde_json::from_str(&text).unwrap();
            assert_eq!(back.into_stored().unwrap(), e, "{ct} {bytes:?}");
        }
    }

    #[test]
    fn a_json_document_loses_only_its_surrounding_whitespace() {
        let e = event("application/json", b"  {\"a\": 1}\n");
        let text = serde_json::to_string(&EventBody::from(e)).unwrap();
        assert!(text.contains(r#""payload":{"a": 1}"#), "{text}");
        let back: EventBody = serde_json::from_str(&text).unwrap();
        assert_eq!(back.into_stored().unwrap().payload, b"{\"a\": 1}");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let e = event("text/plain", b"x");
        let mut v = wire(&e);
        v["payload_base64"] = "eA==".into();
        let body: EventBody = serde_json::from_str(&v.to_string()).unwrap();
        assert!(matches!(
            body.into_stored(),
            Err(BodyError::PayloadFields { both: true, .. })
        ));
        v.as_object_mut().unwrap().remove("payload");
        v["payload_base64"] = "***".into();
        let body: EventBody = serde_json::from_str(&v.to_string()).unwrap();
        assert!(matches!(body.into_stored(), Err(BodyError::Base64 { .. })));
        v.as_object_mut().unwrap().remove("payload_base64");
        let body: EventBody = serde_json::from_str(&v.to_string()).unwrap();
        assert!(matches!(
            body.into_stored(),
            Err(BodyError::PayloadFields { both: false, .. })
        ));
        v["payload"] = serde_json::json!(5);
        let body: EventBody = serde_json::from_str(&v.to_string()).unwrap();
        assert!(matches!(body.into_stored(), Err(BodyError::NotText { .. })));
    }
}
