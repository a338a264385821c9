//! Stored events as [`Message`]s for a [`Sink`](ferry_core::Sink).

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_core::{Kind, Message, MessageId};
use ferry_store::event_store::StoredEvent;

/// The header that carries an event's sequence number to a sink's
/// receiver (a CloudEvents extension over HTTP, a header on a broker).
pub const SEQ_HEADER: &str = "ferry-event-seq";

/// The message a sink gets for `event`:
///
/// * `id`: the event's id, so a receiver drops a re-delivery by `ce-id`,
///   `Nats-Msg-Id` or `Idempotency-Key`;
/// * `topic`: the event type; `kind`: event;
/// * `key`: `<source_type>:<source_id>`, none when both are empty (events
///   of one source reach the sink in order);
/// * `content_type`, `payload` as stored; `created_at`: when it was
///   recorded; header [`SEQ_HEADER`]: its sequence number.
pub fn event_message(event: &StoredEvent) -> Message {
    let key = if event.source_type.is_empty() && event.source_id.is_empty() {
        None
    } else {
        Some(format!("{}:{}", event.source_type, event.source_id))
    };
    Message {
        id: MessageId(event.id),
        kind: Kind::Event,
        topic: event.event_type.clone(),
        key,
        headers: BTreeMap::from([(SEQ_HEADER.to_owned(), event.seq.to_string())]),
        content_type: event.content_type.clone(),
        payload: Bytes::from(event.payload.clone()),
        created_at: event.recorded_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn stored(seq: i64, source_type: &str, source_id: &str) -> StoredEvent {
        StoredEvent {
            seq,
            id: Uuid::now_v7(),
            event_type: "order.cancelled".to_owned(),
            source_type: source_type.to_owned(),
            source_id: source_id.to_owned(),
            content_type: "application/json".to_owned(),
            payload: b"{\"order\":42}".to_vec(),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn an_event_becomes_a_message_with_its_id_type_and_source_key() {
        let e = stored(7, "order", "42");
        let m = event_message(&e);
        assert_eq!(m.id.0, e.id);
        assert_eq!(m.topic, "order.cancelled");
        assert_eq!(m.key.as_deref(), Some("order:42"));
        assert_eq!(m.headers[SEQ_HEADER], "7");
        assert_eq!(&m.payload[..], &e.payload[..]);
        assert_eq!(m.created_at, e.recorded_at);
        assert_eq!(event_message(&stored(1, "", "")).key, None);
    }
}
