//! What a binlog capture's [`Checkpoint`] holds.
//!
//! ```json
//! {"file": "mariadb-bin.000004", "pos": 1234, "gtid": "0-1-17", "time": "2024-05-01T13:45:00Z"}
//! {"file": "mariadb-bin.000004", "pos": 330,
//!  "snapshot": {"table": {"schema": "shop", "name": "orders"}, "after": [{"int": 1000}]}}
//! ```
//!
//! `file` and `pos` are where streaming resumes: after the XID (or
//! `COMMIT`) of the last transaction delivered, or, while `snapshot` is
//! set, the binlog position the snapshot matches. `snapshot` says where
//! the snapshot goes on: `table`, after the primary key `after` (from its
//! start when absent), then the tables after it in order.

use chrono::{DateTime, Utc};
use mysql_async::Value;
use serde::{Deserialize, Serialize};

use crate::capture::{CaptureError, Checkpoint};
use crate::change::TableId;
use crate::mariadb::server::BinlogPosition;

/// A binlog capture's checkpoint, parsed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// Binlog file streaming resumes in.
    pub file: String,
    /// Offset streaming resumes at.
    pub pos: u64,
    /// The GTID of the last transaction delivered (informational: resuming
    /// is by file and offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// When that transaction committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// A snapshot not finished yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotProgress>,
}

/// How far a snapshot got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// The table it reads next.
    pub table: TableId,
    /// The primary key it goes on after; from the table's start when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<KeyValue>>,
}

impl Saved {
    /// Where streaming resumes.
    pub fn position(&self) -> BinlogPosition {
        BinlogPosition {
            file: self.file.clone(),
            pos: self.pos,
        }
    }

    /// As a checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint(serde_json::to_value(self).unwrap_or_default())
    }

    /// `checkpoint` parsed; a permanent error when it is not one of a
    /// binlog capture (another mode's, edited by hand).
    pub fn parse(checkpoint: &Checkpoint) -> Result<Self, CaptureError> {
        serde_json::from_value(checkpoint.0.clone()).map_err(|e| {
            CaptureError::permanent(format!(
                "the saved checkpoint is not a binlog position: {}; run `ferry cdc drop` \
                 and re-snapshot",
                checkpoint.0
            ))
            .with_source(e)
        })
    }
}

/// A primary key value, kept exactly as the server gave it so that a
/// resumed snapshot compares with the same value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyValue {
    /// SQL `NULL`.
    Null,
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A `FLOAT`.
    Float(f32),
    /// A `DOUBLE`.
    Double(f64),
    /// Bytes (strings, decimals, binary), in hex.
    Hex(String),
    /// Year, month, day, hour, minute, second, microsecond.
    Date(u16, u8, u8, u8, u8, u8, u32),
    /// Negative, days, hours, minutes, seconds, microseconds.
    Time(bool, u32, u8, u8, u8, u32),
}

impl From<&Value> for KeyValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::NULL => KeyValue::Null,
            Value::Bytes(b) => KeyValue::Hex(hex(b)),
            Value::Int(i) => KeyValue::Int(*i),
            Value::UInt(u) => KeyValue::Uint(*u),
            Value::Float(f) => KeyValue::Float(*f),
            Value::Double(d) => KeyValue::Double(*d),
            Value::Date(y, m, d, h, i, s, us) => KeyValue::Date(*y, *m, *d, *h, *i, *s, *us),
            Value::Time(n, d, h, m, s, us) => KeyValue::Time(*n, *d, *h, *m, *s, *us),
        }
    }
}

impl KeyValue {
    /// The value to bind; `None` for hex that is not hex.
    pub fn to_value(&self) -> Option<Value> {
        Some(match self {
            KeyValue::Null => Value::NULL,
            KeyValue::Int(i) => Value::Int(*i),
            KeyValue::Uint(u) => Value::UInt(*u),
            KeyValue::Float(f) => Value::Float(*f),
            KeyValue::Double(d) => Value::Double(*d),
            KeyValue::Hex(h) => Value::Bytes(unhex(h)?),
            KeyValue::Date(y, m, d, h, i, s, us) => Value::Date(*y, *m, *d, *h, *i, *s, *us),
            KeyValue::Time(n, d, h, m, s, us) => Value::Time(*n, *d, *h, *m, *s, *us),
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 == 1 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip() {
        let saved = Saved {
            file: "mariadb-bin.000004".into(),
            pos: 330,
            gtid: None,
            time: None,
            snapshot: Some(SnapshotProgress {
                table: TableId::new("shop", "orders"),
                after: Some(vec![
                    KeyValue::from(&Value::Int(-5)),
                    KeyValue::from(&Value::Bytes(vec![0, 255, 16])),
                    KeyValue::from(&Value::Date(2024, 5, 1, 1, 2, 3, 4)),
                ]),
            }),
        };
        let back = Saved::parse(&saved.checkpoint()).unwrap();
        assert_eq!(back, saved);
        let after = back.snapshot.unwrap().after.unwrap();
        assert_eq!(after[1].to_value(), Some(Value::Bytes(vec![0, 255, 16])));
        assert_eq!(KeyValue::Hex("zz".into()).to_value(), None);
        assert_eq!(KeyValue::Hex("abc".into()).to_value(), None);
    }

    #[test]
    fn another_modes_checkpoint_is_refused() {
        let e = Saved::parse(&Checkpoint(serde_json::json!({"lsn": 5}))).unwrap_err();
        assert_eq!(e.kind, ferry_core::ErrorKind::Permanent);
    }
}
