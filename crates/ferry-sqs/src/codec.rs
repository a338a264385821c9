//! A Ferry message as an SQS message body and message attributes.
//!
//! SQS allows at most 10 message attributes, with non-empty values of XML
//! characters, and a body of XML characters. So:
//!
//! * the CloudEvents attributes of [`binary_headers`] (`ce-specversion`,
//!   `ce-id`, `ce-type`, `ce-source`, `ce-time`, `ce-partitionkey`,
//!   `ce-ferrykind`, `content-type`: at most 8) are String attributes of
//!   those names;
//! * the message's own headers, and any attribute whose value SQS cannot
//!   carry as an attribute (empty, or with control characters), go in one
//!   String attribute `ferry-headers`, a JSON object of names to values;
//! * the body is the payload when it is text SQS accepts; otherwise (bytes
//!   that are not UTF-8, control characters) it is the payload in standard
//!   base64 and the attribute `ferry-encoding` is `base64`; an empty
//!   payload (SQS refuses empty bodies) is sent as the body `-` with
//!   `ferry-encoding: empty`.
//!
//! * the W3C trace context headers `traceparent` and `tracestate` are
//!   String attributes of those names, `traceparent` first, as long as the
//!   message stays within 10 attributes (both fit for a text payload
//!   without an ordering key); one that does not fit goes in
//!   `ferry-headers` with the rest.
//!
//! That makes at most 10 attributes, whatever the message. Receiving,
//! String and Number attributes of other names (from other producers)
//! become headers as well.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine as _;
use bytes::Bytes;
use ferry_core::cloudevents::{binary_headers, from_binary_headers, is_attribute};
use ferry_core::trace::{TRACEPARENT, TRACESTATE};
use ferry_core::{Malformed, Message};

/// The attribute holding the headers that are not attributes, as JSON.
pub(crate) const HEADERS: &str = "ferry-headers";
/// The attribute saying how the body encodes the payload.
pub(crate) const ENCODING: &str = "ferry-encoding";
/// The most message attributes SQS takes.
const MAX_ATTRIBUTES: usize = 10;

/// A message ready to send: its body and attributes.
pub(crate) struct Encoded {
    pub(crate) body: String,
    pub(crate) attributes: HashMap<String, MessageAttributeValue>,
    /// What SQS counts against its size limit: body, names and values.
    pub(crate) size: usize,
}

/// Whether SQS accepts `text` in a body or attribute value: XML 1.0
/// characters (tab, line feed, carriage return, and from U+0020 on, less
/// U+FFFE and U+FFFF).
pub(crate) fn is_sqs_text(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    })
}

fn string(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        // Only a missing data type fails the build, and it is set.
        .unwrap_or_else(|_| unreachable!("the data type is set"))
}

/// The body and attributes of `message`.
pub(crate) fn encode(message: &Message, source: &str) -> Encoded {
    let mut attributes = HashMap::new();
    let mut rest = BTreeMap::new();
    for (name, value) in binary_headers(message, source) {
        if is_attribute(&name) && !value.is_empty() && is_sqs_text(&value) {
            attributes.insert(name, string(&value));
        } else {
            rest.insert(name, value);
        }
    }
    let body = match std::str::from_utf8(&message.payload) {
        Ok("") => {
            attributes.insert(ENCODING.to_owned(), string("empty"));
            "-".to_owned()
        }
        Ok(text) if is_sqs_text(text) => text.to_owned(),
        _ => {
            attributes.insert(ENCODING.to_owned(), string("base64"));
            base64::engine::general_purpose::STANDARD.encode(&message.payload)
        }
    };
    // The trace context under its W3C names, for tools that read them,
    // while the attributes stay within SQS's 10.
    for name in [TRACEPARENT, TRACESTATE] {
        let Some(value) = rest.get(name) else {
            continue;
        };
        let headers_left = usize::from(rest.len() > 1);
        if !value.is_empty()
            && is_sqs_text(value)
            && attributes.len() + 1 + headers_left <= MAX_ATTRIBUTES
        {
            attributes.insert(name.to_owned(), string(value));
            rest.remove(name);
        }
    }
    if !rest.is_empty() {
        // serde_json escapes every control character, but leaves U+FFFE
        // and U+FFFF, which SQS refuses, as they are: escape them too
        // (they can only stand inside a JSON string).
        let json = serde_json::to_string(&rest)
            .unwrap_or_default()
            .replace('\u{FFFE}', "\\ufffe")
            .replace('\u{FFFF}', "\\uffff");
        attributes.insert(HEADERS.to_owned(), string(&json));
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(name, value)| {
                name.len() + "String".len() + value.string_value().map_or(0, str::len)
            })
            .sum::<usize>();
    Encoded {
        body,
        attributes,
        size,
    }
}

/// The message a body and its attributes carry.
pub(crate) fn decode(
    body: Option<&str>,
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
) -> Result<Message, Malformed> {
    let body = body.unwrap_or_default();
    let mut problem: Option<String> = None;
    let mut raw = BTreeMap::new();
    let mut headers = Vec::new();
    let mut encoding = None;
    for (name, value) in attributes.into_iter().flatten() {
        let text = match value.string_value() {
            Some(text) => text.to_owned(),
            None => {
                problem.get_or_insert_with(|| format!("attribute `{name}` is not a string"));
                let bytes = value.binary_value().map(|b| b.as_ref()).unwrap_or_default();
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }
        };
        raw.insert(name.clone(), text.clone());
        match name.as_str() {
            ENCODING => encoding = Some(text),
            HEADERS => match serde_json::from_str::<BTreeMap<String, String>>(&text) {
                Ok(more) => headers.extend(more),
                Err(_) => {
                    problem.get_or_insert_with(|| {
                        format!("attribute `{HEADERS}` is not a json object of strings")
                    });
                }
            },
            _ => headers.push((name.clone(), text)),
        }
    }
    let payload = match encoding.as_deref() {
        None => Bytes::copy_from_slice(body.as_bytes()),
        Some("empty") => Bytes::new(),
        Some("base64") => match base64::engine::general_purpose::STANDARD.decode(body) {
            Ok(bytes) => Bytes::from(bytes),
            Err(_) => {
                problem.get_or_insert_with(|| "the body is not base64".to_owned());
                Bytes::copy_from_slice(body.as_bytes())
            }
        },
        Some(other) => {
            problem.get_or_insert_with(|| format!("unknown `{ENCODING}` `{other}`"));
            Bytes::copy_from_slice(body.as_bytes())
        }
    };
    match problem {
        Some(reason) => Err(Malformed {
            reason,
            headers: raw,
            payload: Bytes::copy_from_slice(body.as_bytes()),
        }),
        None => from_binary_headers(headers, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `back` is `sent`, but for the time, which SQS keeps to the second.
    fn assert_same_but_the_time(back: &Message, sent: &Message) {
        assert_eq!(
            *back,
            Message {
                created_at: back.created_at,
                ..sent.clone()
            }
        );
    }

    fn round_trip(message: &Message) -> (Encoded, Message) {
        let encoded = encode(message, "/ferry/test");
        let back = decode(Some(&encoded.body), Some(&encoded.attributes)).unwrap();
        (encoded, back)
    }

    #[test]
    fn text_payloads_travel_as_they_are() {
        let m = Message::event("a.b", "{\"x\":\"é\"}").with_key("k");
        let (encoded, back) = round_trip(&m);
        assert_eq!(encoded.body, "{\"x\":\"é\"}");
        assert!(!encoded.attributes.contains_key(ENCODING));
        assert!(!encoded.attributes.contains_key(HEADERS));
        assert_same_but_the_time(&back, &m);
    }

    #[test]
    fn every_header_fits_in_ten_attributes() {
        let mut m = Message::command("a.b", vec![0u8, 255, 1])
            .with_key("")
            .with_content_type("application/octet-stream");
        for i in 0..20 {
            m = m.with_header(format!("x-{i}"), format!("v\u{1}{i}"));
        }
        let (encoded, back) = round_trip(&m);
        assert!(
            encoded.attributes.len() <= 10,
            "{:?}",
            encoded.attributes.keys()
        );
        assert_eq!(encoded.attributes[ENCODING].string_value(), Some("base64"));
        assert_same_but_the_time(&back, &m);
    }

    #[test]
    fn the_trace_context_travels_as_attributes_of_its_w3c_names() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let m = Message::event("a.b", "{}")
            .with_header(TRACEPARENT, parent)
            .with_header(TRACESTATE, "v=1")
            .with_header("x-other", "1");
        let (encoded, back) = round_trip(&m);
        assert_eq!(encoded.attributes[TRACEPARENT].string_value(), Some(parent));
        assert_eq!(encoded.attributes[TRACESTATE].string_value(), Some("v=1"));
        assert_eq!(
            encoded.attributes[HEADERS].string_value(),
            Some("{\"x-other\":\"1\"}")
        );
        assert_same_but_the_time(&back, &m);
        // With a key, room for `traceparent` only.
        let keyed = m.clone().with_key("k");
        let (encoded, back) = round_trip(&keyed);
        assert_eq!(encoded.attributes[TRACEPARENT].string_value(), Some(parent));
        assert!(!encoded.attributes.contains_key(TRACESTATE));
        assert_same_but_the_time(&back, &keyed);
        // No room: key, base64 body, own headers: 10 attributes without
        // the trace context, which then travels among the headers.
        let full = Message::event("a.b", vec![0u8])
            .with_key("k")
            .with_header(TRACEPARENT, parent)
            .with_header(TRACESTATE, "v=1")
            .with_header("x-other", "1");
        let (encoded, back) = round_trip(&full);
        assert!(encoded.attributes.len() <= 10);
        assert!(!encoded.attributes.contains_key(TRACEPARENT));
        assert_same_but_the_time(&back, &full);
    }

    #[test]
    fn empty_and_control_character_payloads() {
        let empty = Message::event("a", "");
        let (encoded, back) = round_trip(&empty);
        assert_eq!(encoded.body, "-");
        assert_eq!(back.payload, Bytes::new());
        let nul = Message::event("a", "a\0b");
        let (encoded, back) = round_trip(&nul);
        assert_ne!(encoded.body, "a\0b");
        assert_eq!(back.payload, Bytes::from_static(b"a\0b"));
    }

    #[test]
    fn bad_attributes_are_malformed() {
        let mut attributes = HashMap::new();
        attributes.insert(HEADERS.to_owned(), string("[1]"));
        let err = decode(Some("x"), Some(&attributes)).unwrap_err();
        assert!(err.reason.contains("json"), "{}", err.reason);
        assert_eq!(err.headers[HEADERS], "[1]");
        let mut attributes = HashMap::new();
        attributes.insert(ENCODING.to_owned(), string("base64"));
        let err = decode(Some("!!"), Some(&attributes)).unwrap_err();
        assert_eq!(err.reason, "the body is not base64");
        assert_eq!(err.payload, Bytes::from_static(b"!!"));
        let err = decode(Some("plain"), None).unwrap_err();
        assert_eq!(err.reason, "missing ce-id header");
    }
}

/// Property tests (issue 13): every message round-trips through its body
/// and attributes, which SQS accepts (at most 10, non-empty XML text), and
/// any body and attributes decode or are malformed without a panic.
#[cfg(test)]
mod props {
    use super::*;
    use aws_sdk_sqs::primitives::Blob;
    use ferry_core::{Kind, MessageId};
    use proptest::prelude::*;

    /// Any string, and text with the characters SQS refuses.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "\\PC{0,12}",
            any::<String>(),
            "[a\u{0}\u{1}\u{1f}\u{fffe}\u{ffff}\t\r\n é]{0,6}",
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<u128>(),
            any::<bool>(),
            text().prop_filter("ce-type must not be empty", |t| !t.is_empty()),
            proptest::option::of(text()),
            proptest::collection::btree_map(
                prop_oneof![
                    4 => text(),
                    1 => Just(TRACEPARENT.to_owned()),
                    1 => Just(TRACESTATE.to_owned()),
                    1 => Just(HEADERS.to_owned()),
                    1 => Just(ENCODING.to_owned()),
                ],
                text(),
                0..6,
            ),
            text(),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..64),
                text().prop_map(String::into_bytes),
                Just(b"-".to_vec()),
            ],
            0u64..253_402_300_799_999_999,
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
                    created_at: (std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros))
                        .into(),
                },
            )
    }

    /// An attribute as another producer may send it: String, Number or
    /// Binary, under an arbitrary name or one Ferry reads specially.
    fn attribute() -> impl Strategy<Value = (String, MessageAttributeValue)> {
        let name = prop_oneof![
            "\\PC{0,12}",
            Just(HEADERS.to_owned()),
            Just(ENCODING.to_owned()),
            Just("ce-id".to_owned()),
            Just("ce-type".to_owned()),
            Just("ce-time".to_owned()),
        ];
        let value = prop_oneof![
            text().prop_map(|s| string(&s)),
            Just(string("base64")),
            Just(string("empty")),
            Just(string("{\"a\":\"b\"}")),
            "[0-9.-]{1,8}".prop_map(|n| MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(n)
                .build()
                .unwrap()),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(|b| {
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(b))
                    .build()
                    .unwrap()
            }),
        ];
        (name, value)
    }

    /// Found by the property below: a header value with U+FFFE went into
    /// `ferry-headers` as it was, an attribute value SQS refuses.
    #[test]
    fn regression_noncharacters_in_headers_are_escaped() {
        let m = Message::event("a", "x")
            .with_header("", "\u{fffe}")
            .with_header("b", "\u{ffff}")
            .with_content_type("");
        let encoded = encode(&m, "");
        let headers = encoded.attributes[HEADERS].string_value().unwrap();
        assert!(is_sqs_text(headers), "{headers:?}");
        let back = decode(Some(&encoded.body), Some(&encoded.attributes)).unwrap();
        assert_eq!(back.headers, m.headers);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_then_decode_gives_the_message_back(m in message(), source in text()) {
            let encoded = encode(&m, &source);
            prop_assert!(encoded.attributes.len() <= MAX_ATTRIBUTES);
            prop_assert!(is_sqs_text(&encoded.body) && !encoded.body.is_empty());
            for (name, value) in &encoded.attributes {
                let value = value.string_value().unwrap_or_default();
                prop_assert!(
                    !value.is_empty() && is_sqs_text(value),
                    "attribute `{}` is {:?}, which sqs refuses", name, value
                );
            }
            let back = decode(Some(&encoded.body), Some(&encoded.attributes))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut expected = m.clone();
            expected.headers.retain(|k, _| !is_attribute(k));
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn any_body_and_attributes_decode_or_are_malformed(
            body in proptest::option::of(text()),
            attributes in proptest::collection::vec(attribute(), 0..8),
        ) {
            let attributes: HashMap<_, _> = attributes.into_iter().collect();
            if let Err(e) = decode(body.as_deref(), Some(&attributes)) {
                prop_assert!(!e.reason.is_empty());
            }
        }
    }
}
