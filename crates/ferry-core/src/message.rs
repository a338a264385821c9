//! The message model.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A message's unique id: a UUIDv7, so ids sort by creation time.
///
/// Receivers use it as the idempotency key: a message delivered twice carries
/// the same id both times.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// What a message asks of its receivers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Something happened; any number of receivers may react.
    #[default]
    Event,
    /// Do this; exactly one owner handles it.
    Command,
}

impl Kind {
    /// The name stored in the outbox's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Command => "command",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name that is neither `event` nor `command`.
#[derive(Debug, thiserror::Error)]
#[error("unknown message kind `{0}` (expected `event` or `command`)")]
pub struct ParseKindError(pub String);

impl FromStr for Kind {
    type Err = ParseKindError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "event" => Ok(Kind::Event),
            "command" => Ok(Kind::Command),
            other => Err(ParseKindError(other.to_owned())),
        }
    }
}

/// A header an operator's replay sets (`ferry dead-letters replay`): its
/// value, fresh for each replay, makes [`Message::broker_dedup_id`] differ
/// from the first publish's, so a broker that drops repeated ids (JetStream,
/// SQS FIFO) takes the replay, while [`Message::id`], the consumers'
/// idempotency key, stays the same.
pub const REPLAY_HEADER: &str = "ferry-replay";

/// The default content type of a payload.
pub const JSON: &str = "application/json";

/// One message on its way from a producer to another system.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Unique, time-ordered id; the receiver's idempotency key.
    pub id: MessageId,
    /// Event or command.
    pub kind: Kind,
    /// What the message is about, e.g. `user.signed_up`. Becomes the
    /// CloudEvents `type`, the NATS subject, and so on.
    pub topic: String,
    /// Ordering key: messages with the same key are delivered in order.
    pub key: Option<String>,
    /// Free-form headers carried alongside the payload.
    pub headers: BTreeMap<String, String>,
    /// Media type of `payload`.
    pub content_type: String,
    /// The body, as bytes.
    pub payload: Bytes,
    /// When the producer created the message.
    pub created_at: DateTime<Utc>,
}

impl Message {
    /// A new event on `topic` with a JSON payload. Built inside a span with
    /// an OpenTelemetry context, it carries that context in its
    /// `traceparent` header ([`crate::trace`]).
    pub fn event(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::new(Kind::Event, topic, payload)
    }

    /// A new command on `topic` with a JSON payload, with the current
    /// span's trace context as for [`Message::event`].
    pub fn command(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::new(Kind::Command, topic, payload)
    }

    /// The headers start with the current span's trace context
    /// ([`crate::trace`]), when it has one.
    fn new(kind: Kind, topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        let mut headers = BTreeMap::new();
        crate::trace::inject(&tracing::Span::current(), &mut headers);
        Self {
            id: MessageId::new(),
            kind,
            topic: topic.into(),
            key: None,
            headers,
            content_type: JSON.to_owned(),
            payload: payload.into(),
            created_at: Utc::now(),
        }
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// The id a broker deduplicates publishes by: [`Message::id`], or, for
    /// a replay ([`REPLAY_HEADER`]), the id followed by `-replay-` and the
    /// replay's value.
    pub fn broker_dedup_id(&self) -> String {
        match self.headers.get(REPLAY_HEADER) {
            Some(replay) => format!("{}-replay-{replay}", self.id),
            None => self.id.to_string(),
        }
    }

    /// Marks the message as a replay, with a fresh [`REPLAY_HEADER`].
    pub fn replayed(mut self) -> Self {
        self.headers
            .insert(REPLAY_HEADER.to_owned(), MessageId::new().to_string());
        self
    }

    /// Sets the payload's content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v7_and_time_ordered() {
        let a = MessageId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = MessageId::new();
        assert_eq!(a.0.get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<MessageId>().unwrap(), a);
    }

    #[test]
    fn kind_round_trips_and_rejects_unknown() {
        assert_eq!("command".parse::<Kind>().unwrap(), Kind::Command);
        assert_eq!(Kind::Event.as_str(), "event");
        let err = "job".parse::<Kind>().unwrap_err();
        assert!(err.to_string().contains("`job`"));
    }

    #[test]
    fn a_replay_changes_the_broker_dedup_id_but_not_the_id() {
        let m = Message::event("a", "{}");
        assert_eq!(m.broker_dedup_id(), m.id.to_string());
        let once = m.clone().replayed();
        let twice = m.clone().replayed();
        assert_eq!(once.id, m.id);
        assert!(once
            .broker_dedup_id()
            .starts_with(&format!("{}-replay-", m.id)));
        assert_ne!(once.broker_dedup_id(), twice.broker_dedup_id());
    }

    #[test]
    fn builders_default_to_json_events() {
        let m = Message::event("user.signed_up", "{}")
            .with_key("user-1")
            .with_header("a", "b");
        assert_eq!(m.kind, Kind::Event);
        assert_eq!(m.content_type, JSON);
        assert_eq!(m.key.as_deref(), Some("user-1"));
        assert_eq!(m.headers["a"], "b");
    }
}
