//! A [`Message`] as the fields of a stream entry, and back.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_core::cloudevents::{binary_headers, from_binary_headers};
use ferry_core::{Malformed, Message};
use redis::Value;

/// The field holding the payload.
pub(crate) const PAYLOAD: &str = "payload";
/// The field holding the headers, a JSON object of strings.
pub(crate) const HEADERS: &str = "headers";
/// Put before a header's name to make its field's name (the layout with a
/// field per header).
pub(crate) const HEADER: &str = "h:";

/// The fields of `message`'s entry: `payload`, then `headers`, the
/// headers of [`binary_headers`] as one JSON object.
pub(crate) fn fields(message: &Message, source: &str) -> Vec<(String, Vec<u8>)> {
    let headers = binary_headers(message, source);
    vec![
        (PAYLOAD.to_owned(), message.payload.to_vec()),
        (HEADERS.to_owned(), headers_json(&headers)),
    ]
}

/// The fields of `message`'s entry with a field per header: `payload`,
/// then `h:<name>` for each header of [`binary_headers`].
pub(crate) fn header_fields(message: &Message, source: &str) -> Vec<(String, Vec<u8>)> {
    let headers = binary_headers(message, source);
    let mut out = Vec::with_capacity(1 + headers.len());
    out.push((PAYLOAD.to_owned(), message.payload.to_vec()));
    for (name, value) in headers {
        out.push((format!("{HEADER}{name}"), value.into_bytes()));
    }
    out
}

/// `headers` as a JSON object, in their order.
fn headers_json(headers: &[(String, String)]) -> Vec<u8> {
    struct Object<'a>(&'a [(String, String)]);
    impl serde::Serialize for Object<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
        }
    }
    // Strings as keys and values: serializing cannot fail.
    serde_json::to_vec(&Object(headers)).unwrap_or_default()
}

/// One entry as read: its id and its fields in order.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The message of this entry, or why the fields are not one. Both
    /// layouts read: the headers in one `headers` field, or a field
    /// `h:<name>` per header (or both, a header in only one of them).
    pub(crate) fn message(self) -> Result<Message, Malformed> {
        let mut headers = BTreeMap::new();
        let mut in_json = BTreeMap::new();
        let mut payload = None;
        let mut problem = None;
        for (name, value) in self.fields {
            if name == PAYLOAD.as_bytes() {
                payload = Some(Bytes::from(value));
                continue;
            }
            if name == HEADERS.as_bytes() {
                match serde_json::from_slice::<BTreeMap<String, String>>(&value) {
                    Ok(object) => in_json.extend(object),
                    Err(_) => {
                        problem.get_or_insert(format!(
                            "field `{HEADERS}` is not a json object of strings"
                        ));
                    }
                }
                continue;
            }
            match (String::from_utf8(name), String::from_utf8(value)) {
                (Ok(name), Ok(value)) => match name.strip_prefix(HEADER) {
                    Some(header) => {
                        headers.insert(header.to_owned(), value);
                    }
                    None => {
                        problem.get_or_insert(format!("unknown field `{name}`"));
                        headers.insert(name, value);
                    }
                },
                (Ok(name), Err(_)) => {
                    problem.get_or_insert(format!("field `{name}` is not utf-8"));
                }
                (Err(_), _) => {
                    problem.get_or_insert("a field name is not utf-8".to_owned());
                }
            }
        }
        if headers.is_empty() {
            headers = in_json;
        } else {
            for (name, value) in in_json {
                if headers.contains_key(&name) {
                    problem.get_or_insert(format!(
                        "header `{name}` both in `{HEADERS}` and as a field"
                    ));
                }
                headers.insert(name, value);
            }
        }
        let problem = problem.or_else(|| {
            payload
                .is_none()
                .then(|| "missing payload field".to_owned())
        });
        let payload = payload.unwrap_or_default();
        match problem {
            Some(reason) => Err(Malformed {
                reason,
                headers,
                payload,
            }),
            None => from_binary_headers(headers, payload),
        }
    }
}

/// The entries of a reply: an array of `[id, [field, value, …]]`. An entry
/// whose data is gone (trimmed while pending) has no fields; it is left out.
pub(crate) fn entries(value: Value) -> Result<Vec<Entry>, String> {
    let Value::Array(items) = value else {
        return match value {
            Value::Nil => Ok(Vec::new()),
            other => Err(format!("expected stream entries, got {other:?}")),
        };
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(parts) = item else {
            return Err("a stream entry is not an array".to_owned());
        };
        let mut parts = parts.into_iter();
        let id = match parts.next() {
            Some(v) => string(v)?,
            None => return Err("a stream entry has no id".to_owned()),
        };
        let raw = match parts.next() {
            Some(Value::Array(raw)) => raw,
            Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            Some(Value::Nil) | None => continue,
            Some(other) => return Err(format!("stream entry fields are {other:?}")),
        };
        let mut fields = Vec::with_capacity(raw.len() / 2);
        let mut raw = raw.into_iter();
        while let (Some(name), Some(value)) = (raw.next(), raw.next()) {
            fields.push((bytes(name)?, bytes(value)?));
        }
        out.push(Entry { id, fields });
    }
    Ok(out)
}

pub(crate) fn bytes(value: Value) -> Result<Vec<u8>, String> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

pub(crate) fn string(value: Value) -> Result<String, String> {
    String::from_utf8(bytes(value)?).map_err(|_| "a reply is not utf-8".to_owned())
}

/// The time part of an entry id `<ms>-<seq>`, in milliseconds since the epoch.
pub(crate) fn id_millis(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: Vec<(String, Vec<u8>)>) -> Entry {
        Entry {
            id: "1-0".to_owned(),
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.into_bytes(), v))
                .collect(),
        }
    }

    #[test]
    fn round_trips_every_field() {
        let mut m = Message::command("coupon.issue", "")
            .with_key("user-7")
            .with_header("traceparent", "00-ab")
            .with_header("payload", "a header named like the payload field")
            .with_content_type("application/octet-stream");
        m.payload = Bytes::from_static(&[0, 159, 255]);
        let written = fields(&m, "/ferry/test");
        let names: Vec<&str> = written.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, [PAYLOAD, HEADERS]);
        let back = entry(written).message().unwrap();
        ferry_conformance::cases::assert_same_message(&back, &m);
        // The layout with a field per header, as written before the
        // `headers` field and still by other producers, reads the same.
        let written = header_fields(&m, "/ferry/test");
        assert!(written.iter().any(|(name, _)| name == "h:ce-id"));
        let back = entry(written).message().unwrap();
        ferry_conformance::cases::assert_same_message(&back, &m);
    }

    #[test]
    fn headers_are_one_json_object_in_their_order() {
        let m = Message::event("t", "{}").with_header("x-a", "1");
        let written = fields(&m, "/s");
        let json = std::str::from_utf8(&written[1].1).unwrap();
        assert!(
            json.starts_with(r#"{"ce-specversion":"1.0","ce-id":""#),
            "{json}"
        );
        assert!(json.ends_with(r#","x-a":"1"}"#), "{json}");
    }

    #[test]
    fn both_layouts_in_one_entry_read_unless_a_header_is_in_both() {
        let m = Message::event("t", "{}");
        let mut mixed = fields(&m, "/s");
        mixed.push(("h:traceparent".to_owned(), b"00-ab".to_vec()));
        let back = entry(mixed.clone()).message().unwrap();
        assert_eq!(
            back.headers.get("traceparent").map(String::as_str),
            Some("00-ab")
        );
        mixed.push(("h:ce-id".to_owned(), m.id.to_string().into_bytes()));
        let err = entry(mixed).message().unwrap_err();
        assert_eq!(
            err.reason,
            "header `ce-id` both in `headers` and as a field"
        );
    }

    #[test]
    fn fields_that_do_not_decode_are_malformed() {
        let err = entry(vec![("x".into(), b"1".to_vec())])
            .message()
            .unwrap_err();
        assert_eq!(err.reason, "unknown field `x`");
        let err = entry(vec![]).message().unwrap_err();
        assert_eq!(err.reason, "missing payload field");
        let err = entry(vec![
            (PAYLOAD.into(), b"p".to_vec()),
            ("h:ce-id".into(), vec![0xff]),
        ])
        .message()
        .unwrap_err();
        assert!(err.reason.contains("`h:ce-id`"), "{}", err.reason);
        let err = entry(vec![(PAYLOAD.into(), b"p".to_vec())])
            .message()
            .unwrap_err();
        assert_eq!(err.reason, "missing ce-id header");
        assert_eq!(err.payload, Bytes::from_static(b"p"));
        for bad in [&b"[1]"[..], b"{\"ce-id\":1}", b"{", &[0xff]] {
            let err = entry(vec![
                (PAYLOAD.into(), b"p".to_vec()),
                (HEADERS.into(), bad.to_vec()),
            ])
            .message()
            .unwrap_err();
            assert_eq!(
                err.reason,
                "field `headers` is not a json object of strings"
            );
            assert_eq!(err.payload, Bytes::from_static(b"p"));
        }
    }

    #[test]
    fn parses_replies_and_ids() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"5-1".to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"a".to_vec()),
                    Value::BulkString(b"b".to_vec()),
                ]),
            ]),
            Value::Array(vec![Value::BulkString(b"6-0".to_vec()), Value::Nil]),
        ]);
        let parsed = entries(reply).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].id, "5-1");
        assert_eq!(parsed[0].fields, vec![(b"a".to_vec(), b"b".to_vec())]);
        assert!(entries(Value::Nil).unwrap().is_empty());
        assert_eq!(id_millis("1700000000000-3"), Some(1_700_000_000_000));
    }
}

/// Property tests (issue 13): every message round-trips through its stream
/// entry's fields, and any entry or reply decodes or is refused without a
/// panic.
#[cfg(test)]
mod props {
    use super::*;
    use chrono::{TimeZone, Utc};
    use ferry_core::{Kind, MessageId};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "\\PC{0,12}", any::<String>()]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<u128>(),
            any::<bool>(),
            text().prop_filter("ce-type must not be empty", |t| !t.is_empty()),
            proptest::option::of(text()),
            proptest::collection::btree_map(
                prop_oneof![text(), Just(PAYLOAD.to_owned()), Just(HEADER.to_owned())],
                text(),
                0..5,
            ),
            text(),
            proptest::collection::vec(any::<u8>(), 0..64),
            0i64..253_402_300_799_999_999,
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

    /// Field names and values: bytes, or text shaped like Ferry's fields.
    fn field_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..12),
            "(h:)?(ce-id|ce-type|ce-time|ce-ferrykind|payload|headers|\\PC{0,8})"
                .prop_map(String::into_bytes),
            "\\{(\"(ce-id|ce-type|\\PC{0,6})\":\"\\PC{0,8}\",?){0,3}\\}"
                .prop_map(String::into_bytes),
        ]
    }

    /// Any RESP value a server (or something posing as one) may send.
    fn reply() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            Just(Value::Okay),
            any::<i64>().prop_map(Value::Int),
            field_bytes().prop_map(Value::BulkString),
            "\\PC{0,8}".prop_map(Value::SimpleString),
            any::<f64>().prop_map(Value::Double),
            any::<bool>().prop_map(Value::Boolean),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Set),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_then_decode_gives_the_message_back(
            m in message(),
            source in text(),
            per_header in any::<bool>(),
        ) {
            let written = if per_header { header_fields(&m, &source) } else { fields(&m, &source) };
            let entry = Entry {
                id: "1-0".to_owned(),
                fields: written
                    .into_iter()
                    .map(|(k, v)| (k.into_bytes(), v))
                    .collect(),
            };
            let back = entry.message().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut expected = m.clone();
            expected.headers.retain(|k, _| !ferry_core::cloudevents::is_attribute(k));
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn any_fields_decode_or_are_malformed(
            fields in proptest::collection::vec((field_bytes(), field_bytes()), 0..8),
        ) {
            let entry = Entry { id: "1-0".to_owned(), fields };
            if let Err(e) = entry.message() {
                prop_assert!(!e.reason.is_empty());
            }
        }

        #[test]
        fn any_reply_parses_or_is_refused(value in reply(), id in "\\PC{0,24}|[0-9]{1,22}-[0-9]{1,3}") {
            if let Ok(entries) = entries(value) {
                for entry in entries {
                    let _ = entry.message();
                }
            }
            if let Some(millis) = id_millis(&id) {
                prop_assert!(id.starts_with(&millis.to_string()) || id.starts_with('0') || id.starts_with('+'));
            }
        }
    }
}
