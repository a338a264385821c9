//! Stored events as [`Message`]s for a [`Sink`](ferry_core::Sink), and the
//! waves in which the forwarder hands them over.

use std::collections::{BTreeMap, HashSet};

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

/// The end of the wave starting at `start`: the longest run of
/// consecutive messages, at most `cap`, in which no key appears twice
/// (messages without a key never clash). A sink may deliver a call's
/// messages in any order, so a wave must not hold two of one key.
pub(crate) fn wave_end(messages: &[Message], start: usize, cap: usize) -> usize {
    let mut keys = HashSet::new();
    let mut end = start;
    while end < messages.len() && end - start < cap.max(1) {
        if let Some(key) = &messages[end].key {
            if !keys.insert(key.as_str()) {
                break;
            }
        }
        end += 1;
    }
    end
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

    #[test]
    fn a_wave_stops_before_a_repeated_key_or_at_the_cap() {
        let ms: Vec<Message> = [
            ("a", "1"),
            ("a", "2"),
            ("", ""),
            ("", ""),
            ("a", "1"),
            ("b", "1"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (t, id))| event_message(&stored(i as i64 + 1, t, id)))
        .collect();
        assert_eq!(wave_end(&ms, 0, 100), 4, "a:1 comes again at 4");
        assert_eq!(wave_end(&ms, 4, 100), 6);
        assert_eq!(wave_end(&ms, 0, 2), 2);
        assert_eq!(wave_end(&ms, 0, 0), 1, "at least one");
        assert_eq!(wave_end(&ms, 6, 10), 6);
    }
}
