//! CloudEvents 1.0 binary-mode attributes for a [`Message`].
//!
//! When a message leaves Ferry over HTTP it is a CloudEvents event in binary
//! content mode: the payload is the HTTP body, the attributes are `ce-`
//! headers. The same attribute names are used as broker headers so that a
//! receiver reads a message the same way whatever carried it.

use crate::Message;

/// CloudEvents version Ferry emits.
pub const SPEC_VERSION: &str = "1.0";

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
/// The message's own headers follow unchanged.
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
        out.push((k.clone(), v.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
