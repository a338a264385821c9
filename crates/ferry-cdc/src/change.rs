//! The one change event every capture mode produces.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A row as column name → value. Values are JSON: numbers, booleans,
/// strings, nested JSON for `json` columns; see `docs/cdc.md` for how each
/// database's types map.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// What happened to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// Inserted (`c`).
    #[serde(rename = "c")]
    Create,
    /// Updated (`u`).
    #[serde(rename = "u")]
    Update,
    /// Deleted (`d`).
    #[serde(rename = "d")]
    Delete,
    /// Read by a snapshot or a backfill (`r`): the row as it was then.
    #[serde(rename = "r")]
    Read,
    /// The table was truncated (`t`): no row, no key.
    #[serde(rename = "t")]
    Truncate,
}

impl Op {
    /// The one-letter code (`c`, `u`, `d`, `r`, `t`), as Debezium writes it.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A table: its schema (PostgreSQL's schema, MariaDB's database, `main`
/// on SQLite) and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId {
    /// Schema (PostgreSQL), database (MariaDB) or `main` (SQLite).
    pub schema: String,
    /// The table's name.
    pub name: String,
}

impl TableId {
    /// `schema.name`.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Where a change sits in its source's stream: what its id is derived
/// from, so that the same change read again has the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Position {
    /// PostgreSQL's log: the transaction's commit LSN and the change's own
    /// LSN.
    Lsn {
        /// The commit record's LSN (end of the transaction).
        commit_lsn: u64,
        /// The change's LSN.
        lsn: u64,
    },
    /// MariaDB's binary log: the rows event's file and offset, the
    /// transaction's GTID, and the row's index within the event.
    Binlog {
        /// Binary log file name.
        file: String,
        /// Offset of the rows event in that file.
        pos: u64,
        /// The transaction's GTID (`domain-server-sequence`).
        gtid: Option<String>,
        /// The row's index within the rows event.
        row: u32,
    },
    /// A trigger's change table: the change's row id.
    ChangeId {
        /// `ferry_cdc_changes.id`.
        id: i64,
    },
    /// Pulled by `updated_at`: the row's timestamp column as read, and its
    /// primary key.
    Cursor {
        /// The `updated_at` value, as text.
        updated_at: String,
        /// The primary key, as JSON text.
        key: String,
    },
    /// A snapshot or backfill read.
    Snapshot {
        /// Which snapshot (its start, e.g. the slot's LSN or the change id
        /// it joins the stream at; a backfill's id).
        snapshot: String,
        /// The primary key, as JSON text.
        key: String,
    },
}

impl Position {
    /// The position as text (its [`Display`](fmt::Display) form), appended
    /// to `out`: what the position header carries and the change id is
    /// derived from.
    pub fn write_text(&self, out: &mut String) {
        use fmt::Write;
        // Writing to a `String` cannot fail.
        let _ = match self {
            Position::Lsn { commit_lsn, lsn } => {
                out.push_str("lsn:");
                write_lsn(out, *commit_lsn);
                out.push('/');
                write_lsn(out, *lsn);
                Ok(())
            }
            Position::Binlog {
                file,
                pos,
                gtid,
                row,
            } => {
                let written = write!(out, "binlog:{file}:{pos}:{row}");
                if let Some(g) = gtid {
                    out.push(':');
                    out.push_str(g);
                }
                written
            }
            Position::ChangeId { id } => write!(out, "change:{id}"),
            Position::Cursor { updated_at, key } => {
                for part in ["cursor:", updated_at, ":", key] {
                    out.push_str(part);
                }
                Ok(())
            }
            Position::Snapshot { snapshot, key } => {
                for part in ["snapshot:", snapshot, ":", key] {
                    out.push_str(part);
                }
                Ok(())
            }
        };
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.write_text(&mut text);
        f.write_str(&text)
    }
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    let mut text = String::with_capacity(17);
    write_lsn(&mut text, lsn);
    text
}

fn write_lsn(out: &mut String, lsn: u64) {
    use fmt::Write;
    let _ = write!(out, "{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF);
}

/// Where the change comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The database's name.
    pub db: String,
    /// The table.
    pub table: TableId,
    /// Its place in the stream.
    pub position: Position,
    /// The transaction's id, where the database gives one.
    pub tx_id: Option<String>,
    /// When the transaction committed (or the snapshot read), where known.
    pub commit_time: Option<DateTime<Utc>>,
}

/// The change's place in its transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxOrder {
    /// The transaction's id.
    pub id: String,
    /// 1-based order of this change within the transaction.
    pub order: u64,
    /// How many changes the transaction holds, on its last change only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// One committed row change (or snapshot read).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// What happened.
    pub op: Op,
    /// The primary key's columns and values (empty for a truncate).
    pub key: Row,
    /// The row before the change: for updates and deletes, where the
    /// database provides it (see `docs/cdc.md`, replica identity).
    pub before: Option<Row>,
    /// The row after the change: for inserts, updates and reads.
    pub after: Option<Row>,
    /// Where it comes from.
    pub source: Source,
    /// Its place in its transaction, where the mode knows transactions.
    pub tx: Option<TxOrder>,
    /// Columns of `after` that the database did not send because they did
    /// not change and are stored out of line (PostgreSQL's unchanged
    /// TOASTed values without `REPLICA IDENTITY FULL`): absent from
    /// `after`, never sent with a wrong value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
}

/// The namespace of change ids (UUID v5 over the capture's name and the
/// change's position).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c2e_8d4b_4e0f_9b7a_5c1d_2e3f_4a5b);

impl Change {
    /// The change's id: the same every time the change is read again (after
    /// a crash, a reconnect), different for every other change of the
    /// capture `capture`. A receiver deduplicates by it.
    pub fn id(&self, capture: &str) -> Uuid {
        let mut position = String::with_capacity(64);
        self.source.position.write_text(&mut position);
        self.id_at(capture, &position, &mut Vec::new())
    }

    /// [`Change::id`] when the position's text is at hand already (the
    /// position header holds it), with a buffer to reuse.
    pub(crate) fn id_at(&self, capture: &str, position: &str, buf: &mut Vec<u8>) -> Uuid {
        // A position names one change, except a log record that holds
        // several tables' (a TRUNCATE of two tables): the table tells them
        // apart. The name: capture, position, op and table, one a line.
        let table = &self.source.table;
        buf.clear();
        for part in [
            capture,
            "\n",
            position,
            "\n",
            self.op.code(),
            "\n",
            &table.schema,
            ".",
            &table.name,
        ] {
            buf.extend_from_slice(part.as_bytes());
        }
        Uuid::new_v5(&ID_NAMESPACE, buf)
    }

    /// The primary key as compact JSON text (`{"id":7}`).
    pub fn key_text(&self) -> String {
        let mut text = Vec::with_capacity(32);
        crate::json::write(&mut text, &self.key);
        crate::json::into_string(text)
    }

    /// The ordering key: the table and the primary key, so that every sink
    /// that orders per key keeps each row's changes in order. A truncate
    /// has the table alone.
    pub fn ordering_key(&self) -> String {
        if self.op == Op::Truncate {
            self.source.table.to_string()
        } else {
            let table = &self.source.table;
            let mut key = Vec::with_capacity(table.schema.len() + table.name.len() + 32);
            for part in [&table.schema, ".", &table.name, ":"] {
                key.extend_from_slice(part.as_bytes());
            }
            crate::json::write(&mut key, &self.key);
            crate::json::into_string(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(position: Position, order: u64) -> Change {
        let mut key = Row::new();
        key.insert("id".into(), 7.into());
        Change {
            op: Op::Update,
            key,
            before: None,
            after: Some(Row::new()),
            source: Source {
                db: "shop".into(),
                table: TableId::new("public", "orders"),
                position,
                tx_id: Some("42".into()),
                commit_time: None,
            },
            tx: Some(TxOrder {
                id: "42".into(),
                order,
                total: None,
            }),
            unchanged: vec![],
        }
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let at = |lsn| Position::Lsn {
            commit_lsn: 100,
            lsn,
        };
        let a = change(at(10), 1);
        assert_eq!(a.id("orders"), a.clone().id("orders"));
        assert_ne!(a.id("orders"), change(at(11), 2).id("orders"));
        assert_ne!(a.id("orders"), a.id("other-capture"));
    }

    /// Ids are what receivers deduplicate by, across versions: these were
    /// computed by the `format!`-based `Change::id` of 2026-12-06 and must
    /// never change.
    #[test]
    fn ids_are_pinned_across_versions() {
        let snapshot = |key: &str| Position::Snapshot {
            snapshot: "0/1A2B3C4D".into(),
            key: key.into(),
        };
        let cases = [
            (
                "orders",
                Op::Update,
                Position::Lsn {
                    commit_lsn: 0x16_B374_D848,
                    lsn: 0x16_B374_D000,
                },
                "public",
                "orders",
                "aaa89a98-511e-5435-953c-a6e4e9a5ed8b",
            ),
            (
                "shop",
                Op::Create,
                Position::Binlog {
                    file: "mysql-bin.000003".into(),
                    pos: 4711,
                    gtid: Some("0-1-42".into()),
                    row: 3,
                },
                "shop",
                "orders",
                "4f13f246-e2eb-5fd5-80e2-fd816fe1c864",
            ),
            (
                "shop",
                Op::Delete,
                Position::Binlog {
                    file: "mysql-bin.000003".into(),
                    pos: 4711,
                    gtid: None,
                    row: 0,
                },
                "shop",
                "orders",
                "ed681ca8-86f1-56bd-bde4-87b45d03264c",
            ),
            (
                "lite",
                Op::Truncate,
                Position::ChangeId { id: -5 },
                "main",
                "t",
                "615eff08-ade1-5215-bd3d-cb12ca3ec516",
            ),
            (
                "pull_1",
                Op::Update,
                Position::Cursor {
                    updated_at: "2026-12-06 10:00:00+00".into(),
                    key: r#"{"id":7}"#.into(),
                },
                "public",
                "users",
                "3990b4a8-73ba-5251-98e0-49a2e6e08ade",
            ),
            (
                "bench",
                Op::Read,
                snapshot(r#"{"seq":123456}"#),
                "public",
                "bench_rows",
                "39b26d33-736f-5f48-b6d6-e4feff36cb0e",
            ),
            (
                "bench",
                Op::Read,
                snapshot(r#"{"a":"it's \"x\"\n","b":-1.5}"#),
                "Schéma",
                "Table \"odd\"",
                "9b502708-a74b-5acb-b10b-9fd2261e0db4",
            ),
            (
                "",
                Op::Read,
                snapshot(r#"{"ctid":"(0,1)"}"#),
                "public",
                "keyless",
                "62ccf279-5d1d-517b-bdf6-98ab39f66903",
            ),
        ];
        for (capture, op, position, schema, table, id) in cases {
            let mut c = change(position, 1);
            c.op = op;
            c.source.table = TableId::new(schema, table);
            assert_eq!(
                c.id(capture).to_string(),
                id,
                "{capture} {op} {schema}.{table}"
            );
        }
    }

    /// The texts of positions and keys, as the `format!`-based code of
    /// 2026-12-06 wrote them (ids and headers are made of them).
    #[test]
    fn position_and_key_texts_are_unchanged() {
        let old = |p: &Position| match p {
            Position::Lsn { commit_lsn, lsn } => {
                format!("lsn:{}/{}", old_lsn(*commit_lsn), old_lsn(*lsn))
            }
            Position::Binlog {
                file,
                pos,
                gtid,
                row,
            } => match gtid {
                Some(g) => format!("binlog:{file}:{pos}:{row}:{g}"),
                None => format!("binlog:{file}:{pos}:{row}"),
            },
            Position::ChangeId { id } => format!("change:{id}"),
            Position::Cursor { updated_at, key } => format!("cursor:{updated_at}:{key}"),
            Position::Snapshot { snapshot, key } => format!("snapshot:{snapshot}:{key}"),
        };
        fn old_lsn(lsn: u64) -> String {
            format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
        }
        let positions = [
            Position::Lsn {
                commit_lsn: 0,
                lsn: u64::MAX,
            },
            Position::Lsn {
                commit_lsn: 0x16_B374_D848,
                lsn: 0xA,
            },
            Position::Binlog {
                file: "b.000001".into(),
                pos: 4,
                gtid: Some("0-1-2".into()),
                row: 7,
            },
            Position::Binlog {
                file: "b.000001".into(),
                pos: 4,
                gtid: None,
                row: 0,
            },
            Position::ChangeId { id: i64::MIN },
            Position::Cursor {
                updated_at: "2026-12-06 10:00:00.5+00".into(),
                key: r#"{"id":"ä:b"}"#.into(),
            },
            Position::Snapshot {
                snapshot: "0/16B3748".into(),
                key: r#"{"ctid":"(0,1)"}"#.into(),
            },
        ];
        for p in &positions {
            assert_eq!(p.to_string(), old(p));
            let mut text = "x".to_owned();
            p.write_text(&mut text);
            assert_eq!(text, format!("x{}", old(p)));
        }
        assert_eq!(lsn_text(u64::MAX), old_lsn(u64::MAX));

        let mut c = change(Position::ChangeId { id: 1 }, 1);
        c.key = serde_json::from_str(
            r#"{"b":"tab\t quote\" slash\\ ctl\u0001 é 😀","a":-1.5e300,"c":null,"d":[1,{"z":true}]}"#,
        )
        .unwrap();
        let old_key = serde_json::Value::Object(c.key.clone()).to_string();
        assert_eq!(c.key_text(), old_key);
        assert_eq!(c.ordering_key(), format!("{}:{}", c.source.table, old_key));
        c.op = Op::Truncate;
        assert_eq!(c.ordering_key(), "public.orders");
    }

    #[test]
    fn ordering_key_is_table_and_primary_key() {
        let c = change(Position::ChangeId { id: 1 }, 1);
        assert_eq!(c.ordering_key(), r#"public.orders:{"id":7}"#);
    }

    #[test]
    fn lsn_text_is_postgres_notation() {
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(
            Position::Lsn {
                commit_lsn: 0x16_B374_D848,
                lsn: 1
            }
            .to_string(),
            "lsn:16/B374D848/0/1"
        );
    }
}
