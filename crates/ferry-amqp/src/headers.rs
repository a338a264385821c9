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
            if name.eq_ignore_ascii_case(DELIVERY_COUNT) {
                earlier_deliveries = integer(value).and_then(|n| u64::try_from(n).ok());
                continue;
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
