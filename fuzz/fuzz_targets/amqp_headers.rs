//! RabbitMQ deliveries' properties and headers as the subscriber reads
//! them (ferry-amqp's private headers.rs, compiled here from its source:
//! the crate exposes no decoder). The input, read as `name: value` lines,
//! an empty line and the payload (`ferry_fuzz::header_block`), is a
//! delivery's header table (long strings; a name ending in `!<type>`, e.g.
//! `x-delivery-count!i64`, gives a value of that type; the name
//! `!content_type` sets the property) and body; it decodes to a message or
//! is `Malformed`. Round trip: a message made from the same bytes
//! (`arbitrary`), published as properties, decodes to the message.
#![no_main]

use bytes::Bytes;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::BasicProperties;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/ferry-amqp/src/headers.rs"]
mod headers;

fn short(s: &str) -> Option<ShortString> {
    ShortString::try_new(s).ok()
}

/// A header's value: a long string, or, when the name ends in `!<type>`,
/// the value's text read as that AMQP type.
fn value(ty: &str, raw: &[u8]) -> Option<AMQPValue> {
    let text = std::str::from_utf8(raw).ok();
    let number = text.map(str::trim);
    Some(match ty {
        "short" => AMQPValue::ShortString(short(text?)?),
        "bool" => AMQPValue::Boolean(number?.parse().ok()?),
        "i8" => AMQPValue::ShortShortInt(number?.parse().ok()?),
        "u8" => AMQPValue::ShortShortUInt(number?.parse().ok()?),
        "i16" => AMQPValue::ShortInt(number?.parse().ok()?),
        "u16" => AMQPValue::ShortUInt(number?.parse().ok()?),
        "i32" => AMQPValue::LongInt(number?.parse().ok()?),
        "u32" => AMQPValue::LongUInt(number?.parse().ok()?),
        "i64" => AMQPValue::LongLongInt(number?.parse().ok()?),
        "f32" => AMQPValue::Float(number?.parse().ok()?),
        "f64" => AMQPValue::Double(number?.parse().ok()?),
        "timestamp" => AMQPValue::Timestamp(number?.parse().ok()?),
        "decimal" => AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: number?.parse().ok()?,
        }),
        "bytes" => AMQPValue::ByteArray(ByteArray::from(raw.to_vec())),
        "array" => AMQPValue::FieldArray(FieldArray::from(
            raw.split(|&b| b == b',')
                .map(|item| AMQPValue::LongString(LongString::from(item.to_vec())))
                .collect::<Vec<_>>(),
        )),
        "table" => {
            let mut table = FieldTable::default();
            table.insert(
                short("x-first-death-reason")?,
                AMQPValue::LongString(LongString::from(raw.to_vec())),
            );
            AMQPValue::FieldTable(table)
        }
        "void" => AMQPValue::Void,
        _ => AMQPValue::LongString(LongString::from(raw.to_vec())),
    })
}

fuzz_target!(|data: &[u8]| {
    let (headers, payload) = ferry_fuzz::header_block(data);
    let mut properties = BasicProperties::default();
    let mut table = FieldTable::default();
    for (name, raw) in &headers {
        let name = String::from_utf8_lossy(name);
        if name == "!content_type" {
            if let Some(content_type) = short(&String::from_utf8_lossy(raw)) {
                properties = properties.with_content_type(content_type);
            }
            continue;
        }
        let (name, ty) = name.rsplit_once('!').unwrap_or((&name, ""));
        if let (Some(name), Some(value)) = (short(name), value(ty, raw)) {
            table.insert(name, value);
        }
    }
    if !headers.is_empty() {
        properties = properties.with_headers(table);
    }
    let _ = headers::decode(&properties, Bytes::copy_from_slice(payload));

    let Some((message, source)) = ferry_fuzz::arbitrary_message(data) else {
        return;
    };
    let Ok(published) = headers::properties(&message, &source) else {
        // A name or value AMQP cannot carry: refused when publishing.
        return;
    };
    let (back, count) = headers::decode(&published, message.payload.clone());
    let back = back.unwrap_or_else(|e| panic!("{message:?} does not read back: {e}"));
    assert_eq!(count, None);
    assert_eq!(back, message);
});
