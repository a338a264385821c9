//! Stored events as [`Message`]s for a [`Sink`](ferry_core::Sink).

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_core::{trace, Kind, Message, MessageId};
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
///   recorded; header [`SEQ_HEADER`]: its sequence number;
/// * headers `traceparent` and `tracestate`: the trace context it was
///   appended with, so the forwarder's delivery span and the receiver
///   continue the producer's trace.
pub fn event_message(event: &StoredEvent) -> Message {
    let key = if event.source_type.is_empty() && event.source_id.is_empty() {
        None
    } else {
        Some(format!("{}:{}", event.source_type, event.source_id))
    };
    let mut headers = BTreeMap::from([(SEQ_HEADER.to_owned(), event.seq.to_string())]);
    if let Some(parent) = &event.traceparent {
        headers.insert(trace::TRACEPARENT.to_owned(), parent.clone());
        if let Some(state) = &event.tracestate {
            headers.insert(trace::TRACESTATE.to_owned(), state.clone());
        }
    }
    Message {
        id: MessageId(event.id),
        kind: Kind::Event,
        topic: event.event_type.clone(),
        key,
        headers,
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
            traceparent: None,
            tracestate: None,
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

    #[test]
    fn an_events_trace_context_becomes_its_messages_headers() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut e = stored(7, "order", "42");
        assert!(!event_message(&e).headers.contains_key(trace::TRACEPARENT));
        e.traceparent = Some(parent.to_owned());
        let m = event_message(&e);
        assert_eq!(m.headers[trace::TRACEPARENT], parent);
        assert!(!m.headers.contains_key(trace::TRACESTATE));
        e.tracestate = Some("rojo=00f067aa0ba902b7".to_owned());
        let m = event_message(&e);
        assert_eq!(m.headers[trace::TRACESTATE], "rojo=00f067aa0ba902b7");
        let context = trace::extract(&m.headers).expect("a valid parent");
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
