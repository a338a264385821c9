//! A [`Message`] as AMQP properties and headers, and back.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_core::cloudevents::{binary_headers, from_binary_headers};
use ferry_core::{Malformed, Message, SinkError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// The header a quorum queue adds to a redelivered message: how many times
/// it was delivered before.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// AMQP's delivery mode for a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// The properties of `message` as published: persistent, the message id as
/// `message_id`, its content type, and the CloudEvents attributes
/// ([`binary_headers`]) with the message's own headers as long-string
/// headers. Names and values AMQP cannot carry are a permanent error.
pub(crate) fn properties(message: &Message, source: &str) -> Result<BasicProperties, SinkError> {
    let short = |what: &str, value: &str| {
        ShortString::try_new(value)
            .map_err(|_| SinkError::permanent(format!("{what} is longer than amqp's 255 bytes")))
    };
    let mut headers = FieldTable::default();
    for (name, value) in binary_headers(message, source) {
        let name = short("a header name", &name)?;
        headers.insert(name, AMQPValue::LongString(LongString::from(value)));
    }
    Ok(BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(short("the message id", &message.id.to_string())?)
        .with_content_type(short("the content type", &message.content_type)?)
        .with_headers(headers))
}

/// The routing key of `message`: its topic.
pub(crate) fn routing_key(message: &Message) -> Result<ShortString, SinkError> {
    ShortString::try_new(message.topic.as_str())
        .map_err(|_| SinkError::permanent("the topic is longer than amqp's 255-byte routing key"))
}

/// Reads a delivered message back, with the quorum queue's count of
/// earlier deliveries when it sent one.
///
/// String headers are read as they are, numbers and booleans as their
/// decimal text; tables, arrays, byte arrays and voids (such as RabbitMQ's
/// own `x-death`) are left out. A missing `content-type` header is taken
/// from the `content_type` property.
pub(crate) fn decode(
    properties: &BasicProperties,
    payload: Bytes,
) -> (Result<Message, Malformed>, Option<u64>) {
    let mut headers = BTreeMap::new();
    let mut not_utf8 = None;
    let mut earlier_deliveries = None;
    if let Some(table) = properties.headers() {
        for (name, value) in table.inner() {
            let name = name.as_str();
            // The broker's count is an integer; a message's own header of
            // that name (a string) is kept as a header.
            if name.eq_ignore_ascii_case(DELIVERY_COUNT) {
                if let Some(n) = integer(value) {
                    earlier_deliveries = u64::try_from(n).ok();
                    continue;
                }
            }
            let text = match value {
                AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
                    Ok(s) => s.to_owned(),
                    Err(_) => {
                        not_utf8.get_or_insert_with(|| name.to_owned());
                        continue;
                    }
                },
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                AMQPValue::Boolean(b) => b.to_string(),
                AMQPValue::Float(f) => f.to_string(),
                AMQPValue::Double(f) => f.to_string(),
                other => match integer(other) {
                    Some(n) => n.to_string(),
                    None => continue,
                },
            };
            headers.insert(name.to_owned(), text);
        }
    }
    if let Some(name) = not_utf8 {
        let malformed = Malformed {
            reason: format!("header `{name}` is not utf-8"),
            headers,
            payload,
        };
        return (Err(malformed), earlier_deliveries);
    }
    if let Some(content_type) = properties.content_type() {
        if !headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
        {
            headers.insert("content-type".to_owned(), content_type.to_string());
        }
    }
    (from_binary_headers(headers, payload), earlier_deliveries)
}

/// An integer header's value.
fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match *value {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n.into(),
        AMQPValue::Timestamp(n) => n.into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let m = Message::command("coupon.issue", "{\"a\":1}")
            .with_key("user-7")
            .with_header("traceparent", "00-ab")
            .with_content_type("text/plain");
        let props = properties(&m, "/ferry/test").unwrap();
        assert_eq!(props.delivery_mode(), &Some(PERSISTENT));
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            m.id.to_string()
        );
        let (back, count) = decode(&props, m.payload.clone());
        let back = back.unwrap();
        assert_eq!(count, None);
        ferry_conformance::cases::assert_same_message(&back, &m);
    }

    #[test]
    fn reads_the_delivery_count_and_scalar_headers() {
        let m = Message::event("a.b", "x");
        let mut props = properties(&m, "/ferry").unwrap();
        let mut headers = props.headers().clone().unwrap();
        headers.insert(DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        headers.insert("x-n".into(), AMQPValue::ShortInt(-3));
        headers.insert("x-flag".into(), AMQPValue::Boolean(true));
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        props = props.with_headers(headers);
        let (back, count) = decode(&props, m.payload.clone());
        let back = back.unwrap();
        assert_eq!(count, Some(2));
        assert_eq!(back.headers["x-n"], "-3");
        assert_eq!(back.headers["x-flag"], "true");
        assert!(!back.headers.contains_key("x-death"));
        assert!(!back.headers.contains_key(DELIVERY_COUNT));
    }

    #[test]
    fn bytes_that_do_not_decode_are_malformed() {
        let (back, _) = decode(&BasicProperties::default(), Bytes::from_static(b"raw"));
        let err = back.unwrap_err();
        assert_eq!(err.reason, "missing ce-id header");
        assert_eq!(err.payload, Bytes::from_static(b"raw"));

        let mut headers = FieldTable::default();
        headers.insert(
            "x-bin".into(),
            AMQPValue::LongString(vec![0xff, 0xfe].into()),
        );
        let props = BasicProperties::default().with_headers(headers);
        let err = decode(&props, Bytes::new()).0.unwrap_err();
        assert!(err.reason.contains("`x-bin`"), "{}", err.reason);
    }

    #[test]
    fn names_amqp_cannot_carry_are_permanent() {
        let long = "t".repeat(256);
        let m = Message::event(long.clone(), "x");
        assert_eq!(
            routing_key(&m).unwrap_err().kind,
            ferry_core::SinkErrorKind::Permanent
        );
        let m = Message::event("a", "x").with_header(long, "v");
        assert_eq!(
            properties(&m, "/ferry").unwrap_err().kind,
            ferry_core::SinkErrorKind::Permanent
        );
    }
}

/// Property tests (issue 13): every message AMQP can carry round-trips
/// through its properties, one it cannot is a permanent error, and any
/// header table decodes or is malformed without a panic.
#[cfg(test)]
mod props {
    use super::*;
    use chrono::{TimeZone, Utc};
    use ferry_core::{Kind, MessageId, SinkErrorKind};
    use lapin::types::{ByteArray, DecimalValue, FieldArray};
    use proptest::prelude::*;

    /// Any string: empty, ASCII, non-ASCII, control characters, and now and
    /// then one over AMQP's 255-byte short string.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop_oneof![Just(String::new()), "\\PC{0,12}", any::<String>()],
            1 => "[a-zé]{250,300}",
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<u128>(),
            any::<bool>(),
            text().prop_filter("ce-type must not be empty", |t| !t.is_empty()),
            proptest::option::of(text()),
            proptest::collection::btree_map(
                prop_oneof![4 => text(), 1 => Just(DELIVERY_COUNT.to_owned())],
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

    /// Any AMQP field value, nested tables and arrays included.
    fn value() -> impl Strategy<Value = AMQPValue> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<f32>().prop_map(AMQPValue::Float),
            any::<f64>().prop_map(AMQPValue::Double),
            (any::<u8>(), any::<u32>())
                .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
            "\\PC{0,20}".prop_map(|s| AMQPValue::ShortString(s.as_str().into())),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            proptest::collection::vec(any::<u8>(), 0..20)
                .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
            Just(AMQPValue::Void),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
                proptest::collection::vec(("\\PC{0,8}", inner), 0..4).prop_map(|v| {
                    let mut t = FieldTable::default();
                    for (k, v) in v {
                        t.insert(k.as_str().into(), v);
                    }
                    AMQPValue::FieldTable(t)
                }),
            ]
        })
    }

    /// Header names: arbitrary, or ones the decoder treats specially.
    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,16}",
            Just("ce-id".to_owned()),
            Just("ce-type".to_owned()),
            Just("ce-time".to_owned()),
            Just("ce-ferrykind".to_owned()),
            Just("Content-Type".to_owned()),
            Just("x-delivery-count".to_owned()),
            Just("X-Delivery-Count".to_owned()),
        ]
    }

    /// Found by the property below: a message's own `x-delivery-count`
    /// header (a string) was taken for the quorum queue's count and lost.
    #[test]
    fn regression_an_own_delivery_count_header_is_kept() {
        let m = Message::event("A", "").with_header(DELIVERY_COUNT, "");
        let props = properties(&m, "/ferry").unwrap();
        let (back, count) = decode(&props, m.payload.clone());
        assert_eq!(count, None);
        ferry_conformance::cases::assert_same_message(&back.unwrap(), &m);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn encode_then_decode_gives_the_message_back(m in message(), source in text()) {
            let too_long = |s: &str| s.len() > 255;
            let cannot_carry = too_long(&m.content_type)
                || m.headers.keys().any(|k| too_long(k) && !ferry_core::cloudevents::is_attribute(k));
            match properties(&m, &source) {
                Ok(props) => {
                    prop_assert!(!cannot_carry);
                    let (back, count) = decode(&props, m.payload.clone());
                    let back = back.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(count, None);
                    let mut expected = m.clone();
                    expected.headers.retain(|k, _| !ferry_core::cloudevents::is_attribute(k));
                    prop_assert_eq!(back, expected);
                }
                Err(e) => {
                    prop_assert!(cannot_carry, "{}", e);
                    prop_assert_eq!(e.kind, SinkErrorKind::Permanent);
                }
            }
            prop_assert_eq!(routing_key(&m).is_ok(), !too_long(&m.topic));
        }

        #[test]
        fn any_header_table_decodes_or_is_malformed(
            headers in proptest::collection::vec((header_name(), value()), 0..8),
            content_type in proptest::option::of("\\PC{0,12}"),
            payload in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut table = FieldTable::default();
            for (k, v) in headers {
                table.insert(k.as_str().into(), v);
            }
            let mut props = BasicProperties::default().with_headers(table);
            if let Some(ct) = content_type {
                props = props.with_content_type(ct.as_str().into());
            }
            let payload = Bytes::from(payload);
            match decode(&props, payload.clone()).0 {
                Ok(m) => prop_assert_eq!(m.payload, payload),
                Err(e) => {
                    prop_assert_eq!(e.payload, payload);
                    prop_assert!(!e.reason.is_empty());
                }
            }
        }
    }
}
