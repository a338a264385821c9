//! What the fuzz targets share: a [`Message`] built from fuzzer input, for
//! the targets that write a message and read it back.

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use bytes::Bytes;
use ferry_core::cloudevents::is_attribute;
use ferry_core::{Kind, Message, MessageId};

/// The fields of a [`Message`], as the fuzzer gives them.
#[derive(Arbitrary, Debug)]
pub struct ArbitraryMessage {
    id: u128,
    command: bool,
    topic: String,
    key: Option<String>,
    headers: BTreeMap<String, String>,
    content_type: String,
    payload: Vec<u8>,
    micros: i64,
}

impl ArbitraryMessage {
    /// The message, or `None` when it is not one Ferry writes: an empty
    /// topic, or a creation time outside RFC 3339's years 0000 to 9999
    /// (`ce-time` is RFC 3339). A header named like a CloudEvents
    /// attribute is left out: `binary_headers` drops it by design.
    pub fn message(self) -> Option<Message> {
        let created_at = chrono::DateTime::from_timestamp_micros(self.micros)?;
        let years = chrono::DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z").ok()?
            ..chrono::DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999Z").ok()?;
        if self.topic.is_empty() || !years.contains(&created_at.fixed_offset()) {
            return None;
        }
        Some(Message {
            id: MessageId(uuid::Uuid::from_u128(self.id)),
            kind: if self.command {
                Kind::Command
            } else {
                Kind::Event
            },
            topic: self.topic,
            key: self.key,
            headers: self
                .headers
                .into_iter()
                .filter(|(k, _)| !is_attribute(k))
                .collect(),
            content_type: self.content_type,
            payload: Bytes::from(self.payload),
            created_at,
        })
    }
}

/// A fuzz input read as a header block and a payload, so that seeds can
/// be written by hand: `name: value` lines (the value after the first
/// `:`, one leading space dropped; a line without `:` is a name with an
/// empty value), then an empty line, then the payload. Lines end with LF
/// (a CR before it is dropped).
pub fn header_block(data: &[u8]) -> (Vec<(Vec<u8>, Vec<u8>)>, &[u8]) {
    let mut headers = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = after;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        headers.push((name.to_vec(), value.to_vec()));
    }
    (headers, rest)
}

/// [`header_block`] with names and values as (lossy) UTF-8 text.
pub fn text_header_block(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (headers, payload) = header_block(data);
    let text = |b: Vec<u8>| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    (
        headers
            .into_iter()
            .map(|(name, value)| (text(name), text(value)))
            .collect(),
        payload,
    )
}

/// A message and a CloudEvents `source` from the fuzzer's bytes (the same
/// bytes a target also reads another way).
pub fn arbitrary_message(data: &[u8]) -> Option<(Message, String)> {
    let mut u = arbitrary::Unstructured::new(data);
    let message = ArbitraryMessage::arbitrary(&mut u).ok()?.message()?;
    let source = String::arbitrary_take_rest(u).ok()?;
    Some((message, source))
}
