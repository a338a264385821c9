//! Naming a dead item: its kind, [`DeadId`] and the page cursor.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::StoreError;

/// The four kinds of failure the dead-letter view shows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeadKind {
    /// An outbox message the relay gave up on (`ferry_outbox`, status
    /// `dead`).
    Outbox,
    /// A message a consumer (or a CDC capture) gave up on
    /// (`ferry_dead_letters`).
    Consumer,
    /// An event a forwarder gave up on and stepped over
    /// (`ferry_event_failures`).
    Forwarder,
    /// An executor task whose retries were spent (`ferry_task_failures`).
    Task,
}

impl DeadKind {
    /// Every kind.
    pub const ALL: [DeadKind; 4] = [
        DeadKind::Outbox,
        DeadKind::Consumer,
        DeadKind::Forwarder,
        DeadKind::Task,
    ];

    /// The lowercase name, as in JSON, URLs and [`DeadId`]s.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadKind::Outbox => "outbox",
            DeadKind::Consumer => "consumer",
            DeadKind::Forwarder => "forwarder",
            DeadKind::Task => "task",
        }
    }
}

impl fmt::Display for DeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        DeadKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| StoreError::InvalidArgument {
                parameter: "dead-letter kind",
                value: s.to_owned(),
                expected: "outbox, consumer, forwarder or task",
            })
    }
}

/// What identifies a dead item in its table. Ordered as the view orders
/// items of the same time: by kind, then by this key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadKey {
    /// `ferry_outbox.seq`.
    Outbox {
        /// The message's sequence number.
        seq: i64,
    },
    /// `ferry_dead_letters.id`.
    Consumer {
        /// The dead letter's id.
        id: Uuid,
    },
    /// `ferry_event_failures (reader, seq)`.
    Forwarder {
        /// The forwarder (reader) name.
        reader: String,
        /// The event's sequence number.
        seq: i64,
    },
    /// `ferry_task_failures.id`.
    Task {
        /// The task's id.
        id: Uuid,
    },
}

/// A dead item's id, written `outbox:<seq>`, `consumer:<uuid>`,
/// `forwarder:<reader>:<seq>` or `task:<uuid>` (also in JSON).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeadId(pub DeadKey);

impl DeadId {
    /// A dead outbox message.
    pub fn outbox(seq: i64) -> Self {
        DeadId(DeadKey::Outbox { seq })
    }

    /// A consumer dead letter.
    pub fn consumer(id: Uuid) -> Self {
        DeadId(DeadKey::Consumer { id })
    }

    /// A forwarder's failed event.
    pub fn forwarder(reader: impl Into<String>, seq: i64) -> Self {
        DeadId(DeadKey::Forwarder {
            reader: reader.into(),
            seq,
        })
    }

    /// An executor task failure.
    pub fn task(id: Uuid) -> Self {
        DeadId(DeadKey::Task { id })
    }

    /// Its kind.
    pub fn kind(&self) -> DeadKind {
        match self.0 {
            DeadKey::Outbox { .. } => DeadKind::Outbox,
            DeadKey::Consumer { .. } => DeadKind::Consumer,
            DeadKey::Forwarder { .. } => DeadKind::Forwarder,
            DeadKey::Task { .. } => DeadKind::Task,
        }
    }
}

impl fmt::Display for DeadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            DeadKey::Outbox { seq } => write!(f, "outbox:{seq}"),
            DeadKey::Consumer { id } => write!(f, "consumer:{id}"),
            DeadKey::Forwarder { reader, seq } => write!(f, "forwarder:{reader}:{seq}"),
            DeadKey::Task { id } => write!(f, "task:{id}"),
        }
    }
}

impl FromStr for DeadId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::InvalidArgument {
            parameter: "dead item id",
            value: s.to_owned(),
            expected: "outbox:<seq>, consumer:<uuid>, forwarder:<reader>:<seq> or task:<uuid>",
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind.parse::<DeadKind>().map_err(|_| bad())? {
            DeadKind::Outbox => rest.parse().map(DeadId::outbox).map_err(|_| bad()),
            DeadKind::Consumer => Uuid::parse_str(rest)
                .map(DeadId::consumer)
                .map_err(|_| bad()),
            DeadKind::Task => Uuid::parse_str(rest).map(DeadId::task).map_err(|_| bad()),
            DeadKind::Forwarder => {
                let (reader, seq) = rest.rsplit_once(':').ok_or_else(bad)?;
                if reader.is_empty() {
                    return Err(bad());
                }
                let seq = seq.parse().map_err(|_| bad())?;
                Ok(DeadId::forwarder(reader, seq))
            }
        }
    }
}

impl serde::Serialize for DeadId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeadId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a page of the dead-letter view ended: the last item's time and
/// id (items are newest first by `(failed_at, id)`). Opaque to callers:
/// pass its string form back as it was given
/// ([`Display`](fmt::Display)/[`FromStr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadCursor {
    pub(crate) at: DateTime<Utc>,
    pub(crate) id: DeadId,
}

impl DeadCursor {
    /// The cursor just past the item failed at `at` with `id`.
    pub fn new(at: DateTime<Utc>, id: DeadId) -> Self {
        Self { at, id }
    }
}

impl fmt::Display for DeadCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.at.timestamp_micros(), self.id)
    }
}

impl FromStr for DeadCursor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::InvalidArgument {
            parameter: "cursor",
            value: s.to_owned(),
            expected: "a cursor returned by a previous page",
        };
        let (micros, id) = s.split_once('.').ok_or_else(bad)?;
        let at = micros
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(bad)?;
        Ok(DeadCursor {
            at,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

impl serde::Serialize for DeadCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_string_form() {
        let u = Uuid::now_v7();
        for id in [
            DeadId::outbox(42),
            DeadId::consumer(u),
            DeadId::forwarder("orders:eu", 7),
            DeadId::task(u),
        ] {
            let s = id.to_string();
            assert_eq!(s.parse::<DeadId>().unwrap(), id, "{s}");
            assert_eq!(serde_json::to_value(&id).unwrap(), serde_json::json!(s));
        }
        assert_eq!(
            DeadId::forwarder("orders:eu", 7).to_string(),
            "forwarder:orders:eu:7"
        );
    }

    #[test]
    fn bad_ids_and_cursors_are_clear_errors() {
        for bad in [
            "",
            "outbox",
            "outbox:x",
            "consumer:42",
            "forwarder:7",
            "forwarder::7",
            "forwarder:r:x",
            "task:",
            "inbox:1",
        ] {
            let e = bad.parse::<DeadId>().unwrap_err();
            assert!(
                e.to_string().starts_with("invalid dead item id `"),
                "{bad}: {e}"
            );
        }
        for bad in [
            "",
            "x.outbox:1",
            "123",
            "123.outbox:x",
            "99999999999999999999.outbox:1",
        ] {
            let e = bad.parse::<DeadCursor>().unwrap_err();
            assert!(e.to_string().starts_with("invalid cursor `"), "{bad}: {e}");
        }
        let c = DeadCursor::new(
            DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            DeadId::forwarder("a.b", 3),
        );
        assert_eq!(c.to_string().parse::<DeadCursor>().unwrap(), c);
        assert!("nope".parse::<DeadKind>().is_err());
        assert_eq!("task".parse::<DeadKind>().unwrap(), DeadKind::Task);
    }
}
