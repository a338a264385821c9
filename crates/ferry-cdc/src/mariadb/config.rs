//! The binlog capture's configuration.

use serde::{Deserialize, Serialize};

use crate::capture::CaptureError;
use crate::filter::Filter;

pub use crate::capture::SnapshotMode;

/// A MariaDB binlog capture.
///
/// ```toml
/// url = "mysql://ferry:secret@db:3306/shop"
/// name = "shop"
/// tables = { include = ["shop.orders", "shop.items"] }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinlogConfig {
    /// The MariaDB server to read, `mysql://user:password@host:3306/db`
    /// (or `mariadb://…`). The server needs `log_bin`,
    /// `binlog_format=ROW`, `binlog_row_image=FULL` and
    /// `binlog_row_metadata=FULL`; the user `REPLICATION SLAVE`, `BINLOG
    /// MONITOR` and `SELECT` on the captured tables. The database in the
    /// path is the scope of `tables` (see there) and, without `offsets`,
    /// where the capture's position is kept.
    pub url: String,
    /// The capture's name: the key of its saved position and part of
    /// every change id. Two captures of one server need two names.
    pub name: String,
    /// The server id this capture registers with as a replica: unique
    /// among the server's replicas, never the server's own. Default: one
    /// derived from `name` (never 0 or 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u32>,
    /// Tables captured and columns left out. The binlog carries every
    /// database's changes, so when the URL names a database, an
    /// unqualified table (`orders` in `include` or `exclude`, `orders.email`
    /// in `exclude_columns`) is that database's; `other.orders` names
    /// another database's table, `*.orders` the table in every database.
    /// With no `include`, the tables of the URL's database. When the URL
    /// names no database, an unqualified name matches the table in every
    /// database, and no `include` means every database. The server's own
    /// schemas (`mysql`, `sys`, …) and Ferry's `ferry_*` tables never.
    #[serde(default)]
    pub tables: Filter,
    /// Where the capture's position is kept (`sqlite://…`, `postgres://…`
    /// or `mysql://…`, table `ferry_cdc_offsets`). Default: the source
    /// database itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<String>,
    /// What a first start does: `initial` (the default) snapshots the
    /// captured tables, `never` starts at the binlog's current end.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Rows read per snapshot query (and at most per `read`); each chunk
    /// ends with a checkpoint, so a crash re-reads at most one chunk.
    #[serde(default = "default_chunk")]
    pub snapshot_chunk: usize,
}

fn default_chunk() -> usize {
    1000
}

impl BinlogConfig {
    /// A capture named `name` of the server at `url`, with every other
    /// setting at its default.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            server_id: None,
            tables: Filter::default(),
            offsets: None,
            snapshot: SnapshotMode::default(),
            snapshot_chunk: default_chunk(),
        }
    }

    /// A permanent error naming the first setting that cannot work.
    pub fn validate(&self) -> Result<(), CaptureError> {
        if self.name.trim().is_empty() {
            return Err(CaptureError::permanent("the capture's name is empty"));
        }
        if self.server_id == Some(0) {
            return Err(CaptureError::permanent(
                "server_id 0 is refused by MariaDB for replicas: choose another",
            ));
        }
        if self.snapshot_chunk == 0 {
            return Err(CaptureError::permanent("snapshot_chunk must be at least 1"));
        }
        Ok(())
    }

    /// The server id to register with: the configured one, or one derived
    /// from the name (FNV-1a, in 2..=u32::MAX, so never 0 nor the usual
    /// primary's 1).
    pub fn server_id(&self) -> u32 {
        self.server_id
            .unwrap_or_else(|| derived_server_id(&self.name))
    }
}

/// A server id for the capture `name`: the same on every start.
pub fn derived_server_id(name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    2 + hash % (u32::MAX - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_server_ids_are_stable_and_never_0_or_1() {
        assert_eq!(derived_server_id("shop"), derived_server_id("shop"));
        assert_ne!(derived_server_id("shop"), derived_server_id("shop2"));
        for name in ["", "a", "shop", "orders", "x".repeat(100).as_str()] {
            assert!(derived_server_id(name) >= 2, "{name}");
        }
    }

    #[test]
    fn config_reads_with_defaults_and_refuses_unknown_fields() {
        let c: BinlogConfig = serde_json::from_value(serde_json::json!({
            "url": "mysql://root@127.0.0.1:3306/shop",
            "name": "shop",
            "tables": {"include": ["shop.orders"]},
        }))
        .unwrap();
        assert_eq!(c.snapshot, SnapshotMode::Initial);
        assert_eq!(c.snapshot_chunk, 1000);
        assert_eq!(c.server_id(), derived_server_id("shop"));
        assert!(c.validate().is_ok());
        let bad = serde_json::from_value::<BinlogConfig>(serde_json::json!({
            "url": "mysql://h/db", "name": "x", "sever_id": 5,
        }));
        assert!(bad.is_err());
        let never: BinlogConfig = serde_json::from_value(serde_json::json!({
            "url": "mysql://h/db", "name": "x", "snapshot": "never", "server_id": 9,
        }))
        .unwrap();
        assert_eq!(never.snapshot, SnapshotMode::Never);
        assert_eq!(never.server_id(), 9);
        let mut zero = never.clone();
        zero.server_id = Some(0);
        assert!(zero.validate().is_err());
    }
}
