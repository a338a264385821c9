//! A change as a Ferry [`Message`]: its topic, ordering key, id and body.

use ferry_core::{Message, MessageId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::change::{Change, Op, Position};

/// The body's form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Ferry's own, compact form (the default):
    /// `{"op","table","key","before","after","source","tx"}`.
    #[default]
    Ferry,
    /// Debezium's change event value without the schema envelope
    /// (`{before, after, source, op, ts_ms, transaction}`), so that
    /// existing Debezium consumers read it unchanged.
    Debezium,
}

/// How a change becomes a message.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// The capture's name: part of every change id.
    pub capture: String,
    /// Topic prefix: a change of `public.orders` goes to
    /// `{prefix}.public.orders`.
    pub topic_prefix: String,
    /// The body's form.
    pub format: Format,
    /// The connector name Debezium's `source.connector` carries
    /// (`postgresql`, `mysql`, `sqlite`).
    pub connector: &'static str,
}

/// Header naming the operation (`c`, `u`, `d`, `r`, `t`).
pub const OP_HEADER: &str = "ferry-cdc-op";
/// Header naming the table (`schema.table`).
pub const TABLE_HEADER: &str = "ferry-cdc-table";
/// Header with the change's position in its source's stream.
pub const POSITION_HEADER: &str = "ferry-cdc-position";

impl Encoder {
    /// The topic of `change`'s table.
    pub fn topic(&self, change: &Change) -> String {
        let t = &change.source.table;
        if self.topic_prefix.is_empty() {
            format!("{}.{}", t.schema, t.name)
        } else {
            format!("{}.{}.{}", self.topic_prefix, t.schema, t.name)
        }
    }

    /// `change` as a message: id derived from its position (the same on
    /// every redelivery), key = table and primary key, JSON body.
    pub fn message(&self, change: &Change) -> Message {
        let body = match self.format {
            Format::Ferry => self.ferry_body(change),
            Format::Debezium => self.debezium_body(change),
        };
        let mut m = Message::event(self.topic(change), body.to_string())
            .with_key(change.ordering_key())
            .with_content_type("application/json")
            .with_header(OP_HEADER, change.op.code())
            .with_header(TABLE_HEADER, change.source.table.to_string())
            .with_header(POSITION_HEADER, change.source.position.to_string());
        m.id = MessageId(change.id(&self.capture));
        if let Some(t) = change.source.commit_time {
            m.created_at = t;
        }
        m
    }

    fn ferry_body(&self, c: &Change) -> Value {
        let mut body = json!({
            "op": c.op.code(),
            "table": c.source.table.to_string(),
            "key": c.key,
            "before": c.before,
            "after": c.after,
            "source": {
                "db": c.source.db,
                "schema": c.source.table.schema,
                "table": c.source.table.name,
                "position": c.source.position,
                "tx_id": c.source.tx_id,
                "commit_time": c.source.commit_time,
            },
        });
        if let Some(tx) = &c.tx {
            body["tx"] = json!(tx);
        }
        if !c.unchanged.is_empty() {
            body["unchanged"] = json!(c.unchanged);
        }
        body
    }

    fn debezium_body(&self, c: &Change) -> Value {
        let ts_ms = c
            .source
            .commit_time
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        let mut source = json!({
            "version": concat!("ferry-", env!("CARGO_PKG_VERSION")),
            "connector": self.connector,
            "name": self.topic_prefix,
            "ts_ms": ts_ms,
            "snapshot": if c.op == Op::Read { "true" } else { "false" },
            "db": c.source.db,
            "schema": c.source.table.schema,
            "table": c.source.table.name,
            "txId": c.source.tx_id,
        });
        match &c.source.position {
            Position::Lsn { lsn, .. } => source["lsn"] = json!(lsn),
            Position::Binlog {
                file,
                pos,
                gtid,
                row,
            } => {
                source["file"] = json!(file);
                source["pos"] = json!(pos);
                source["row"] = json!(row);
                source["gtid"] = json!(gtid);
                source["server_id"] = json!(0);
            }
            Position::ChangeId { id } => source["change_id"] = json!(id),
            Position::Cursor { updated_at, .. } => source["updated_at"] = json!(updated_at),
            Position::Snapshot { .. } => {}
        }
        let mut body = json!({
            "before": c.before,
            "after": c.after,
            "source": source,
            "op": c.op.code(),
            "ts_ms": chrono::Utc::now().timestamp_millis(),
        });
        body["transaction"] = match &c.tx {
            Some(tx) => json!({
                "id": tx.id,
                "total_order": tx.order,
                "data_collection_order": tx.order,
            }),
            None => Value::Null,
        };
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Row, Source, TableId, TxOrder};

    fn change() -> Change {
        let mut key = Row::new();
        key.insert("id".into(), 1.into());
        let mut after = key.clone();
        after.insert("total".into(), 9.5.into());
        Change {
            op: Op::Create,
            key,
            before: None,
            after: Some(after),
            source: Source {
                db: "shop".into(),
                table: TableId::new("public", "orders"),
                position: Position::Lsn {
                    commit_lsn: 200,
                    lsn: 100,
                },
                tx_id: Some("7".into()),
                commit_time: None,
            },
            tx: Some(TxOrder {
                id: "7".into(),
                order: 1,
                total: Some(1),
            }),
            unchanged: vec![],
        }
    }

    fn encoder(format: Format) -> Encoder {
        Encoder {
            capture: "shop".into(),
            topic_prefix: "cdc".into(),
            format,
            connector: "postgresql",
        }
    }

    #[test]
    fn message_names_topic_key_and_op() {
        let m = encoder(Format::Ferry).message(&change());
        assert_eq!(m.topic, "cdc.public.orders");
        assert_eq!(m.key.as_deref(), Some(r#"public.orders:{"id":1}"#));
        assert_eq!(m.headers[OP_HEADER], "c");
        assert_eq!(m.id.0, change().id("shop"));
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(body["op"], "c");
        assert_eq!(body["after"]["total"], 9.5);
        assert_eq!(body["tx"]["total"], 1);
    }

    #[test]
    fn debezium_body_has_the_envelope_fields() {
        let m = encoder(Format::Debezium).message(&change());
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        for field in ["before", "after", "source", "op", "ts_ms", "transaction"] {
            assert!(body.get(field).is_some(), "{field}");
        }
        assert_eq!(body["source"]["connector"], "postgresql");
        assert_eq!(body["source"]["lsn"], 100);
        assert_eq!(body["source"]["table"], "orders");
        assert_eq!(body["transaction"]["total_order"], 1);
    }
}
