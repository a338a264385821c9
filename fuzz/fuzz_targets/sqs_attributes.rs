//! SQS message bodies and attributes as the subscriber reads them
//! (ferry-sqs's private codec.rs, compiled here from its source: the
//! crate exposes no decoder). The input, read as `name: value` lines, an
//! empty line and the body (`ferry_fuzz::header_block`), is a received
//! message's String attributes (a name ending in `!binary`: a Binary one)
//! and body; it decodes to a message or is `Malformed`. Round trip: a
//! message made from the same bytes (`arbitrary`) is encoded as text SQS
//! accepts, within its 10 attributes, and decodes to itself.
#![no_main]

use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/ferry-sqs/src/codec.rs"]
mod codec;

fuzz_target!(|data: &[u8]| {
    let (headers, body) = ferry_fuzz::header_block(data);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let attributes: HashMap<String, MessageAttributeValue> = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = text(name);
            let value = match name.strip_suffix("!binary") {
                Some(_) => MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(value.clone())),
                None => MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(text(value)),
            };
            Some((name, value.build().ok()?))
        })
        .collect();
    let _ = codec::decode(Some(&text(body)), Some(&attributes));

    let Some((message, source)) = ferry_fuzz::arbitrary_message(data) else {
        return;
    };
    let encoded = codec::encode(&message, &source);
    assert!(
        codec::is_sqs_text(&encoded.body),
        "{message:?}: body {:?}",
        encoded.body
    );
    assert!(
        encoded.attributes.len() <= 10,
        "{message:?}: {:?}",
        encoded.attributes
    );
    for (name, value) in &encoded.attributes {
        let text = value.string_value().unwrap_or_default();
        assert!(
            codec::is_sqs_text(text),
            "{message:?}: attribute {name} = {text:?}"
        );
    }
    let back = codec::decode(Some(&encoded.body), Some(&encoded.attributes))
        .unwrap_or_else(|e| panic!("{message:?} does not read back: {e}"));
    assert_eq!(back, message);
});
