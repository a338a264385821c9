//! CloudEvents 1.0 binary-mode attributes for a [`Message`].
//!
//! When a message leaves Ferry over HTTP it is a CloudEvents event in binary
//! content mode: the payload is the HTTP body, the attributes are `ce-`
//! headers. The same attribute names are used as broker headers so that a
//! receiver reads a message the same way whatever carried it.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::{Kind, Message, MessageId};

/// The attribute headers [`binary_headers`] writes and [`from_binary_headers`]
/// reads back into [`Message`] fields rather than [`Message::headers`].
/// Lowercase; header names are compared without regard to case.
const ATTRIBUTES: [&str; 8] = [
    "ce-specversion",
    "ce-id",
    "ce-type",
    "ce-source",
    "ce-time",
    "ce-partitionkey",
    "ce-ferrykind",
    "content-type",
];

/// CloudEvents version Ferry emits.
pub const SPEC_VERSION: &str = "1.0";

/// Whether `name` is one of the attribute headers [`binary_headers`] writes
/// (compared without regard to case): a message's own header of that name
/// is dropped, and a sink must not let any other header replace it.
pub fn is_attribute(name: &str) -> bool {
    ATTRIBUTES.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Headers and a payload that do not decode as a Ferry message.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("malformed cloudevent: {reason}")]
pub struct Malformed {
    /// Why it does not decode, short and lowercase.
    pub reason: String,
    /// The headers as they arrived.
    pub headers: BTreeMap<String, String>,
    /// The payload as it arrived.
    pub payload: Bytes,
}

/// The attribute headers (`ce-*`, plus `content-type`) of `message` in
/// binary content mode, in a stable order.
///
/// * `ce-id` — the message id (the receiver's idempotency key)
/// * `ce-type` — the topic
/// * `ce-source` — `source`, e.g. `/ferry/coupons`
/// * `ce-time` — creation time, RFC 3339
/// * `ce-partitionkey` — the ordering key, when there is one (the
///   CloudEvents *partitioning* extension)
/// * `ce-ferrykind` — `event` or `command` (an extension attribute)
///
/// The message's own headers follow unchanged, except those named like an
/// attribute (in any case, e.g. `CE-ID` or `Content-Type`): they are dropped,
/// so that each attribute appears once and is Ferry's.
pub fn binary_headers(message: &Message, source: &str) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(8 + message.headers.len());
    out.push(("ce-specversion".to_owned(), SPEC_VERSION.to_owned()));
    out.push(("ce-id".to_owned(), message.id.to_string()));
    out.push(("ce-type".to_owned(), message.topic.clone()));
    out.push(("ce-source".to_owned(), source.to_owned()));
    out.push((
        "ce-time".to_owned(),
        message
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    ));
    if let Some(key) = &message.key {
        out.push(("ce-partitionkey".to_owned(), key.clone()));
    }
    out.push(("ce-ferrykind".to_owned(), message.kind.as_str().to_owned()));
    out.push(("content-type".to_owned(), message.content_type.clone()));
    for (k, v) in &message.headers {
        if !is_attribute(k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// Reads a message back from its binary-mode attribute headers (as written
/// by [`binary_headers`]) and its payload. Header names are matched without
/// regard to case; the headers that are not attributes become
/// [`Message::headers`].
///
/// `ce-id` (a UUID) and `ce-type` are required. A missing `ce-time` reads as
/// now, a missing `ce-ferrykind` as an event and a missing `content-type` as
/// JSON, so that messages published by other producers are accepted.
pub fn from_binary_headers<I, K, V>(headers: I, payload: Bytes) -> Result<Message, Malformed>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    // Attributes by their lowercase name, with the name as it arrived.
    let mut attributes: BTreeMap<&'static str, (String, String)> = BTreeMap::new();
    // An attribute given twice (in two cases): the earlier ones, kept only
    // for the error.
    let mut shadowed = Vec::new();
    let mut rest = BTreeMap::new();
    for (name, value) in headers {
        let name: String = name.into();
        let value: String = value.into();
        match ATTRIBUTES.iter().find(|a| a.eq_ignore_ascii_case(&name)) {
            Some(attribute) => {
                if let Some(earlier) = attributes.insert(attribute, (name, value)) {
                    shadowed.push(earlier);
                }
            }
            None => {
                rest.insert(name, value);
            }
        }
    }
    let attribute = |name: &str| attributes.get(name).map(|(_, value)| value);
    // The copy of every header is built only when the message is malformed.
    let malformed = |reason: String| Malformed {
        reason,
        headers: shadowed
            .iter()
            .chain(attributes.values())
            .map(|(name, value)| (name, value))
            .chain(&rest)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        payload: payload.clone(),
    };
    let id = match attribute("ce-id") {
        None => return Err(malformed("missing ce-id header".to_owned())),
        Some(id) => id
            .parse::<MessageId>()
            .map_err(|_| malformed(format!("ce-id `{id}` is not a uuid")))?,
    };
    let topic = match attribute("ce-type") {
        Some(topic) if !topic.is_empty() => topic.clone(),
        _ => return Err(malformed("missing ce-type header".to_owned())),
    };
    let kind = match attribute("ce-ferrykind") {
        None => Kind::Event,
        Some(kind) => kind.parse::<Kind>().map_err(|e| malformed(e.to_string()))?,
    };
    let created_at = match attribute("ce-time") {
        None => chrono::Utc::now(),
        Some(time) => chrono::DateTime::parse_from_rfc3339(time)
            .map_err(|_| malformed(format!("ce-time `{time}` is not an rfc 3339 time")))?
            .with_timezone(&chrono::Utc),
    };
    Ok(Message {
        id,
        kind,
        topic,
        key: attribute("ce-partitionkey").cloned(),
        headers: rest,
        content_type: attribute("content-type")
            .cloned()
            .unwrap_or_else(|| crate::message::JSON.to_owned()),
        payload,
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_headers() {
        let m = Message::command("coupon.issue", "{\"a\":1}")
            .with_key("user-7")
            .with_header("traceparent", "00-ab")
            .with_content_type("text/plain");
        let h = binary_headers(&m, "/ferry/test");
        let back = from_binary_headers(h, m.payload.clone()).unwrap();
        // RFC 3339 with microseconds: the time survives to the microsecond.
        assert_eq!(
            back.created_at.timestamp_micros(),
            m.created_at.timestamp_micros()
        );
        assert_eq!(
            Message {
                created_at: m.created_at,
                ..back
            },
            m
        );
    }

    #[test]
    fn upper_case_names_and_defaults() {
        let id = MessageId::new();
        let m = from_binary_headers(
            [("CE-ID", id.to_string()), ("Ce-Type", "a.b".to_owned())],
            Bytes::from_static(b"x"),
        )
        .unwrap();
        assert_eq!(m.id, id);
        assert_eq!(m.topic, "a.b");
        assert_eq!(m.kind, Kind::Event);
        assert_eq!(m.content_type, crate::message::JSON);
        assert!(m.headers.is_empty());
    }

    #[test]
    fn malformed_says_why_and_keeps_the_bytes() {
        let err = from_binary_headers([("ce-type", "a")], Bytes::from_static(b"p")).unwrap_err();
        assert_eq!(err.reason, "missing ce-id header");
        assert_eq!(err.payload, Bytes::from_static(b"p"));
        assert_eq!(err.headers["ce-type"], "a");
        let err =
            from_binary_headers([("ce-id", "nope"), ("ce-type", "a")], Bytes::new()).unwrap_err();
        assert!(err.reason.contains("not a uuid"), "{}", err.reason);
        let err = from_binary_headers(
            [
                ("ce-id", MessageId::new().to_string()),
                ("ce-type", "a".to_owned()),
                ("ce-ferrykind", "job".to_owned()),
            ],
            Bytes::new(),
        )
        .unwrap_err();
        assert!(err.reason.contains("`job`"), "{}", err.reason);
    }

    #[test]
    fn message_headers_named_like_attributes_are_dropped() {
        let m = Message::event("a.b", "{}")
            .with_header("CE-ID", "forged")
            .with_header("Content-Type", "text/forged")
            .with_header("ce-Source", "/forged")
            .with_header("x-kept", "1");
        let h = binary_headers(&m, "/ferry/test");
        let named = |k: &str| {
            h.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(named("ce-id"), [m.id.to_string().as_str()]);
        assert_eq!(named("content-type"), ["application/json"]);
        assert_eq!(named("ce-source"), ["/ferry/test"]);
        assert_eq!(named("x-kept"), ["1"]);
        assert!(is_attribute("Ce-Time") && !is_attribute("x-kept"));
    }

    #[test]
    fn malformed_keeps_an_attribute_given_twice() {
        let err = from_binary_headers(
            [("CE-TYPE", "a"), ("ce-type", "b"), ("x", "1")],
            Bytes::new(),
        )
        .unwrap_err();
        assert_eq!(err.headers.len(), 3, "{:?}", err.headers);
        assert_eq!(err.headers["CE-TYPE"], "a");
        assert_eq!(err.headers["ce-type"], "b");
        assert_eq!(
            err.to_string(),
            "malformed cloudevent: missing ce-id header"
        );
    }

    #[test]
    fn carries_required_attributes() {
        let m = Message::command("coupon.issue", "{}")
            .with_key("user-7")
            .with_header("traceparent", "00-ab");
        let h = binary_headers(&m, "/ferry/test");
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("ce-specversion"), Some("1.0"));
        assert_eq!(get("ce-id"), Some(m.id.to_string().as_str()));
        assert_eq!(get("ce-type"), Some("coupon.issue"));
        assert_eq!(get("ce-source"), Some("/ferry/test"));
        assert_eq!(get("ce-partitionkey"), Some("user-7"));
        assert_eq!(get("ce-ferrykind"), Some("command"));
        assert_eq!(get("content-type"), Some("application/json"));
        assert_eq!(get("traceparent"), Some("00-ab"));
        assert!(chrono::DateTime::parse_from_rfc3339(get("ce-time").unwrap()).is_ok());
    }
}

/// Property tests (issue 13): decoding never panics, and every message
/// round-trips through its binary-mode headers.
#[cfg(test)]
mod props {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    /// Any string: empty, ASCII, non-ASCII, control characters.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "\\PC{0,12}", any::<String>()]
    }

    /// Header names: arbitrary text, or a name close to an attribute's
    /// (a different case, a prefix) to probe the case-insensitive match.
    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            text(),
            (0..ATTRIBUTES.len(), any::<bool>()).prop_map(|(i, upper)| if upper {
                ATTRIBUTES[i].to_uppercase()
            } else {
                ATTRIBUTES[i].to_owned()
            }),
            "(ce|CE|Ce)-[a-zA-Z]{0,12}",
        ]
    }

    /// A message as a producer may build one; its headers may be named like
    /// attributes (those are dropped by the encoder, see below).
    fn message() -> impl Strategy<Value = Message> {
        (
            any::<u128>(),
            any::<bool>(),
            text().prop_filter("ce-type must not be empty", |t| !t.is_empty()),
            proptest::option::of(text()),
            proptest::collection::btree_map(header_name(), text(), 0..6),
            text(),
            proptest::collection::vec(any::<u8>(), 0..64),
            // Years 1 to 9999: RFC 3339 has four-digit years.
            -62_135_596_800_000_000i64..253_402_300_799_999_999i64,
        )
            .prop_map(
                |(id, command, topic, key, headers, content_type, payload, micros)| Message {
                    id: MessageId(uuid::Uuid::from_u128(id)),
                    kind: if command { Kind::Command } else { Kind::Event },
                    topic,
                    key,
                    headers,
                    content_type,
                    payload: Bytes::from(payload),
                    created_at: Utc.timestamp_micros(micros).unwrap(),
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_then_decode_gives_the_message_back(m in message(), source in text()) {
            let headers = binary_headers(&m, &source);
            let back = from_binary_headers(headers, m.payload.clone())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut expected = m.clone();
            // The message's own headers named like an attribute are dropped
            // by the encoder (documented on `binary_headers`).
            expected.headers.retain(|k, _| !is_attribute(k));
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn decoding_arbitrary_headers_never_panics(
            headers in proptest::collection::vec((header_name(), text()), 0..10),
            payload in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let payload = Bytes::from(payload);
            match from_binary_headers(headers.clone(), payload.clone()) {
                Ok(m) => {
                    // What decoded was given a uuid id and a non-empty type.
                    prop_assert!(!m.topic.is_empty());
                    prop_assert_eq!(m.payload, payload);
                }
                Err(e) => {
                    // The error keeps every header and the payload.
                    prop_assert_eq!(e.payload, payload);
                    let mut given: Vec<_> = headers.into_iter().collect();
                    given.sort();
                    given.dedup_by(|a, b| a.0 == b.0);
                    prop_assert!(e.headers.len() <= given.len());
                    prop_assert!(!e.reason.is_empty());
                }
            }
        }

        #[test]
        fn attribute_values_that_do_not_parse_are_named(
            value in text(),
            attribute in prop_oneof![Just("ce-id"), Just("ce-time"), Just("ce-ferrykind")],
        ) {
            let mut headers = vec![
                ("ce-id".to_owned(), MessageId::new().to_string()),
                ("ce-type".to_owned(), "a.b".to_owned()),
            ];
            headers.retain(|(k, _)| k != attribute);
            headers.push((attribute.to_owned(), value.clone()));
            if let Err(e) = from_binary_headers(headers, Bytes::new()) {
                prop_assert!(
                    e.reason.contains(&format!("`{value}`")),
                    "{} does not name `{}`", e.reason, value
                );
            }
        }
    }
}
