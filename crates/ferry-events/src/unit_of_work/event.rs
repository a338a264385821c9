use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A kind of domain event: a Rust type with a stable type name and a JSON
/// form.
///
/// ```
/// use ferry_events::unit_of_work::{DomainEvent, Source};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderCancelled {
///     order_id: i64,
/// }
///
/// impl DomainEvent for OrderCancelled {
///     const TYPE: &'static str = "order.cancelled";
///     fn source(&self) -> Source {
///         Source::new("order", self.order_id.to_string())
///     }
/// }
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name: what handlers subscribe to, and the `event_type` the
    /// event store keeps. Keep it stable: stored events are read back by it.
    const TYPE: &'static str;

    /// The aggregate the event is about (none by default). Stored with the
    /// event, and a forwarder's sink gets it as the ordering key.
    fn source(&self) -> Source {
        Source::default()
    }
}

/// The aggregate an event is about: its kind and id, e.g. `order` and
/// `42`. Both empty for none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The kind of aggregate, e.g. `order`.
    pub source_type: String,
    /// The aggregate's id, e.g. `42`.
    pub source_id: String,
}

impl Source {
    /// The aggregate `source_id` of kind `source_type`.
    pub fn new(source_type: impl Into<String>, source_id: impl Into<String>) -> Self {
        Self {
            source_type: source_type.into(),
            source_id: source_id.into(),
        }
    }
}

/// An event as its handlers see it: the raised value and what the unit of
/// work added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<E> {
    /// Unique (a UUIDv7 given when raised); the same in every handler and
    /// in the event store, so a handler that may see an event twice (a
    /// durable one) dedups by it.
    pub id: Uuid,
    /// The aggregate it is about.
    pub source: Source,
    /// Its sequence number in the event store, for durable handlers (run
    /// by a forwarder); `None` in the unit of work's own handlers.
    pub seq: Option<i64>,
    /// The event itself.
    pub data: E,
}

impl<E: DomainEvent> Event<E> {
    /// The event's type name, [`DomainEvent::TYPE`].
    pub fn event_type(&self) -> &'static str {
        E::TYPE
    }
}
