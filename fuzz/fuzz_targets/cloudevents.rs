//! CloudEvents binary-mode header decoding, ferry-core's cloudevents.rs.
//! The input, read as `name: value` lines, an empty line and a payload
//! (`ferry_fuzz::header_block`), decodes to a message or a `Malformed`
//! error. Round trip: a message made from the same bytes
//! (`arbitrary`), written by `binary_headers`, reads back as itself.
#![no_main]

use bytes::Bytes;
use ferry_core::cloudevents::{binary_headers, from_binary_headers, is_attribute};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (headers, payload) = ferry_fuzz::text_header_block(data);
    match from_binary_headers(headers, Bytes::copy_from_slice(payload)) {
        Ok(m) => {
            assert!(!m.topic.is_empty());
            assert!(m.headers.keys().all(|k| !is_attribute(k)));
            assert_eq!(m.payload, payload);
        }
        Err(e) => {
            assert_eq!(e.payload, payload);
            let _ = e.to_string();
        }
    }

    let Some((message, source)) = ferry_fuzz::arbitrary_message(data) else {
        return;
    };
    let headers = binary_headers(&message, &source);
    let back = from_binary_headers(headers, message.payload.clone())
        .unwrap_or_else(|e| panic!("{message:?} does not read back: {e}"));
    assert_eq!(back, message);
});
