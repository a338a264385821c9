//! A change as a Ferry [`Message`]: its topic, ordering key, id and body.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferry_core::message::JSON;
use ferry_core::{Kind, Message, MessageId};
use serde::{Deserialize, Serialize};

use crate::change::{Change, Op, Position, TableId};
use crate::json;

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
        let mut body = Vec::with_capacity(256);
        let now_ms = Utc::now().timestamp_millis();
        self.write_body(change, now_ms, &mut TimeText::default(), &mut body);
        let mut texts = TableTexts::default();
        self.assemble(change, Bytes::from(body), &mut texts, &mut Vec::new())
    }

    /// [`Encoder::message`] of each of `changes`, in order. The bodies
    /// share one buffer (a message's payload is a slice of it, so cloning
    /// a message does not copy or allocate its body; the buffer is freed
    /// with the last of them), and a run of changes of one table shares the
    /// work of naming it.
    pub fn messages<'a>(&self, changes: impl IntoIterator<Item = &'a Change>) -> Vec<Message> {
        let changes: Vec<&Change> = changes.into_iter().collect();
        let now_ms = match self.format {
            Format::Debezium => Utc::now().timestamp_millis(),
            Format::Ferry => 0,
        };
        let mut bodies = Vec::with_capacity(changes.len() * 256);
        let mut ends = Vec::with_capacity(changes.len());
        let mut time = TimeText::default();
        for change in &changes {
            self.write_body(change, now_ms, &mut time, &mut bodies);
            ends.push(bodies.len());
        }
        let bodies = Bytes::from(bodies);
        let mut texts = TableTexts::default();
        let mut buf = Vec::with_capacity(256);
        let mut start = 0;
        changes
            .iter()
            .zip(ends)
            .map(|(change, end)| {
                let body = bodies.slice(start..end);
                start = end;
                self.assemble(change, body, &mut texts, &mut buf)
            })
            .collect()
    }

    /// The message around `body`: topic, key, headers, id, time.
    fn assemble(
        &self,
        change: &Change,
        body: Bytes,
        texts: &mut TableTexts,
        buf: &mut Vec<u8>,
    ) -> Message {
        let table = &change.source.table;
        if texts.table.as_ref() != Some(table) {
            *texts = TableTexts {
                text: table.to_string(),
                topic: self.topic(change),
                table: Some(table.clone()),
            };
        }
        let mut position = String::with_capacity(64);
        change.source.position.write_text(&mut position);
        let id = MessageId(change.id_at(&self.capture, &position, buf));
        let key = if change.op == Op::Truncate {
            texts.text.clone()
        } else {
            let mut key = Vec::with_capacity(texts.text.len() + 32);
            key.extend_from_slice(texts.text.as_bytes());
            key.push(b':');
            json::write(&mut key, &change.key);
            json::into_string(key)
        };
        let headers = BTreeMap::from([
            (OP_HEADER.to_owned(), change.op.code().to_owned()),
            (TABLE_HEADER.to_owned(), texts.text.clone()),
            (POSITION_HEADER.to_owned(), position),
        ]);
        Message {
            id,
            kind: Kind::Event,
            topic: texts.topic.clone(),
            key: Some(key),
            headers,
            content_type: JSON.to_owned(),
            payload: body,
            created_at: change.source.commit_time.unwrap_or_else(Utc::now),
        }
    }

    /// The body of `change` in the encoder's format, appended to `out`;
    /// `now_ms` is Debezium's `ts_ms` (when the event was processed).
    ///
    /// Written field by field, keys in the order a `serde_json::Value`
    /// object sorts them (what the bodies were built as before, and what
    /// receivers got): the bytes are the same.
    fn write_body(&self, c: &Change, now_ms: i64, time: &mut TimeText, out: &mut Vec<u8>) {
        match self.format {
            Format::Ferry => self.write_ferry(c, time, out),
            Format::Debezium => self.write_debezium(c, now_ms, out),
        }
    }

    /// `{"after","before","key","op","source","table","tx"?,"unchanged"?}`.
    fn write_ferry(&self, c: &Change, time: &mut TimeText, out: &mut Vec<u8>) {
        let table = &c.source.table;
        out.extend_from_slice(b"{\"after\":");
        json::write(out, &c.after);
        out.extend_from_slice(b",\"before\":");
        json::write(out, &c.before);
        out.extend_from_slice(b",\"key\":");
        json::write(out, &c.key);
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(c.op.code().as_bytes());
        out.extend_from_slice(b"\",\"source\":{\"commit_time\":");
        time.write(out, c.source.commit_time);
        out.extend_from_slice(b",\"db\":");
        json::write(out, &c.source.db);
        out.extend_from_slice(b",\"position\":");
        write_position(out, &c.source.position);
        out.extend_from_slice(b",\"schema\":");
        json::write(out, &table.schema);
        out.extend_from_slice(b",\"table\":");
        json::write(out, &table.name);
        out.extend_from_slice(b",\"tx_id\":");
        json::write(out, &c.source.tx_id);
        out.extend_from_slice(b"},\"table\":");
        write_table(out, table);
        if let Some(tx) = &c.tx {
            out.extend_from_slice(b",\"tx\":");
            json::write(out, tx);
        }
        if !c.unchanged.is_empty() {
            out.extend_from_slice(b",\"unchanged\":");
            json::write(out, &c.unchanged);
        }
        out.push(b'}');
    }

    /// `{"after","before","op","source","transaction","ts_ms"}`, `source`'s
    /// keys sorted too.
    fn write_debezium(&self, c: &Change, now_ms: i64, out: &mut Vec<u8>) {
        let table = &c.source.table;
        let ts_ms = c
            .source
            .commit_time
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        out.extend_from_slice(b"{\"after\":");
        json::write(out, &c.after);
        out.extend_from_slice(b",\"before\":");
        json::write(out, &c.before);
        out.extend_from_slice(b",\"op\":\"");
        out.extend_from_slice(c.op.code().as_bytes());
        out.extend_from_slice(b"\",\"source\":{");
        // Keys in byte order, each variant's own among the common ones.
        let position = &c.source.position;
        if let Position::ChangeId { id } = position {
            field(out, "change_id", id);
        }
        field(out, "connector", self.connector);
        field(out, "db", &c.source.db);
        if let Position::Binlog { file, gtid, .. } = position {
            field(out, "file", file);
            field(out, "gtid", gtid);
        }
        if let Position::Lsn { lsn, .. } = position {
            field(out, "lsn", lsn);
        }
        field(out, "name", &self.topic_prefix);
        if let Position::Binlog { pos, row, .. } = position {
            field(out, "pos", pos);
            field(out, "row", row);
        }
        field(out, "schema", &table.schema);
        if let Position::Binlog { .. } = position {
            field(out, "server_id", &0);
        }
        let snapshot = if c.op == Op::Read { "true" } else { "false" };
        field(out, "snapshot", snapshot);
        field(out, "table", &table.name);
        field(out, "ts_ms", &ts_ms);
        field(out, "txId", &c.source.tx_id);
        if let Position::Cursor { updated_at, .. } = position {
            field(out, "updated_at", updated_at);
        }
        field(out, "version", VERSION);
        // `field` left a comma after the last one: it closes `source`.
        if out.last() == Some(&b',') {
            out.pop();
        }
        out.extend_from_slice(b"},\"transaction\":");
        match &c.tx {
            Some(tx) => {
                out.extend_from_slice(b"{\"data_collection_order\":");
                json::write(out, &tx.order);
                out.extend_from_slice(b",\"id\":");
                json::write(out, &tx.id);
                out.extend_from_slice(b",\"total_order\":");
                json::write(out, &tx.order);
                out.push(b'}');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"ts_ms\":");
        json::write(out, &now_ms);
        out.push(b'}');
    }
}

/// Debezium's `source.version`.
const VERSION: &str = concat!("ferry-", env!("CARGO_PKG_VERSION"));

/// The names of the table of a run of changes, made once for the run.
#[derive(Default)]
struct TableTexts {
    table: Option<TableId>,
    /// `schema.name`.
    text: String,
    topic: String,
}

/// The last commit time written, as JSON: a snapshot's rows, a
/// transaction's changes share theirs.
#[derive(Default)]
struct TimeText {
    last: Option<(DateTime<Utc>, Vec<u8>)>,
}

impl TimeText {
    fn write(&mut self, out: &mut Vec<u8>, time: Option<DateTime<Utc>>) {
        let Some(time) = time else {
            out.extend_from_slice(b"null");
            return;
        };
        match &self.last {
            Some((last, text)) if *last == time => out.extend_from_slice(text),
            _ => {
                let mut text = Vec::with_capacity(32);
                json::write(&mut text, &time);
                out.extend_from_slice(&text);
                self.last = Some((time, text));
            }
        }
    }
}

/// `"name":value,` (a key never needs escaping here).
fn field<T: Serialize + ?Sized>(out: &mut Vec<u8>, name: &str, value: &T) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    json::write(out, value);
    out.push(b',');
}

/// `"schema.name"` as a JSON string.
fn write_table(out: &mut Vec<u8>, table: &TableId) {
    if needs_escape(&table.schema) || needs_escape(&table.name) {
        json::write(out, &table.to_string());
    } else {
        out.push(b'"');
        out.extend_from_slice(table.schema.as_bytes());
        out.push(b'.');
        out.extend_from_slice(table.name.as_bytes());
        out.push(b'"');
    }
}

/// Whether JSON escapes something in `s` (quotes, backslashes, control
/// characters).
fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

/// The position as its serde form (`kind` tag), keys sorted.
fn write_position(out: &mut Vec<u8>, position: &Position) {
    out.push(b'{');
    match position {
        Position::Lsn { commit_lsn, lsn } => {
            field(out, "commit_lsn", commit_lsn);
            field(out, "kind", "lsn");
            field(out, "lsn", lsn);
        }
        Position::Binlog {
            file,
            pos,
            gtid,
            row,
        } => {
            field(out, "file", file);
            field(out, "gtid", gtid);
            field(out, "kind", "binlog");
            field(out, "pos", pos);
            field(out, "row", row);
        }
        Position::ChangeId { id } => {
            field(out, "id", id);
            field(out, "kind", "change_id");
        }
        Position::Cursor { updated_at, key } => {
            field(out, "key", key);
            field(out, "kind", "cursor");
            field(out, "updated_at", updated_at);
        }
        Position::Snapshot { snapshot, key } => {
            field(out, "key", key);
            field(out, "kind", "snapshot");
            field(out, "snapshot", snapshot);
        }
    }
    // Every variant has a field: replace the last comma.
    out.pop();
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::change::{Row, Source, TxOrder};

    /// The message as `Encoder::message` built it until 2026-12-06, through
    /// `serde_json::Value` bodies (kept verbatim, `ts_ms` given): what the
    /// written bodies, ids and headers must equal byte for byte.
    mod reference {
        use super::*;

        pub fn message(e: &Encoder, change: &Change, now_ms: i64) -> Message {
            let body = match e.format {
                Format::Ferry => ferry_body(change),
                Format::Debezium => debezium_body(e, change, now_ms),
            };
            let mut m = Message::event(e.topic(change), body.to_string())
                .with_key(change.ordering_key())
                .with_content_type("application/json")
                .with_header(OP_HEADER, change.op.code())
                .with_header(TABLE_HEADER, change.source.table.to_string())
                .with_header(POSITION_HEADER, change.source.position.to_string());
            m.id = MessageId(change.id(&e.capture));
            if let Some(t) = change.source.commit_time {
                m.created_at = t;
            }
            m
        }

        fn ferry_body(c: &Change) -> Value {
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

        fn debezium_body(e: &Encoder, c: &Change, now_ms: i64) -> Value {
            let ts_ms = c
                .source
                .commit_time
                .map(|t| t.timestamp_millis())
                .unwrap_or(0);
            let mut source = json!({
                "version": concat!("ferry-", env!("CARGO_PKG_VERSION")),
                "connector": e.connector,
                "name": e.topic_prefix,
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
                "ts_ms": now_ms,
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

    /// Changes of every op and position kind, with odd names and values.
    fn variety() -> Vec<Change> {
        let row = |v: Value| -> Row { serde_json::from_value(v).unwrap() };
        let positions = [
            Position::Lsn {
                commit_lsn: u64::MAX,
                lsn: 0x16_B374_D848,
            },
            Position::Binlog {
                file: "mysql-bin.000007".into(),
                pos: 1234,
                gtid: Some("0-1-99".into()),
                row: 2,
            },
            Position::Binlog {
                file: "b\"in".into(),
                pos: 0,
                gtid: None,
                row: 0,
            },
            Position::ChangeId { id: -3 },
            Position::Cursor {
                updated_at: "2026-12-06 10:00:00.123456+00".into(),
                key: r#"{"id":"x\"y"}"#.into(),
            },
            Position::Snapshot {
                snapshot: "0/1A2B3C4D".into(),
                key: r#"{"seq":42}"#.into(),
            },
        ];
        let tables = [
            TableId::new("public", "bench_rows"),
            TableId::new("Schéma", "Table \"odd\"\twith\\"),
        ];
        let ops = [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate];
        let mut out = Vec::new();
        for (i, position) in positions.iter().enumerate() {
            for (j, op) in ops.iter().enumerate() {
                let n = i * ops.len() + j;
                let table = tables[n % tables.len()].clone();
                let after = row(json!({
                    "seq": n, "amount": -1.25e-7, "big": u64::MAX, "flag": n.is_multiple_of(2),
                    "note": "tab\t quote\" slash\\ ctl\u{1} é 😀 \u{7f}",
                    "doc": {"z": [1, 2.5, null, {"a": "b"}], "a": {}},
                    "nothing": null, "empty": "",
                }));
                out.push(Change {
                    op: *op,
                    key: if *op == Op::Truncate {
                        Row::new()
                    } else {
                        row(json!({"seq": n, "k\"ey": "ü"}))
                    },
                    before: n
                        .is_multiple_of(3)
                        .then(|| row(json!({"seq": n, "old": true}))),
                    after: (n % 4 != 1).then_some(after),
                    source: Source {
                        db: if n.is_multiple_of(2) { "shop" } else { "d\"b" }.into(),
                        table,
                        position: position.clone(),
                        tx_id: (n % 2 == 1).then(|| format!("tx{n}")),
                        commit_time: (n % 5 != 2).then(|| {
                            chrono::DateTime::from_timestamp(
                                1_765_000_000 + (n / 3) as i64,
                                123_456_789,
                            )
                            .unwrap()
                        }),
                    },
                    tx: (n % 3 != 2).then(|| TxOrder {
                        id: format!("{n}"),
                        order: n as u64,
                        total: n.is_multiple_of(2).then_some(n as u64 + 1),
                    }),
                    unchanged: if n % 4 == 3 {
                        vec!["blob".into(), "q\"uote".into()]
                    } else {
                        vec![]
                    },
                });
            }
        }
        out
    }

    fn encoders() -> Vec<Encoder> {
        let mut out = Vec::new();
        for format in [Format::Ferry, Format::Debezium] {
            for prefix in ["", "cdc", "p\"x"] {
                out.push(Encoder {
                    capture: format!("cap{prefix}"),
                    topic_prefix: prefix.into(),
                    format,
                    connector: "postgresql",
                });
            }
        }
        out
    }

    fn same(got: &Message, want: &Message, at_commit: bool) {
        assert_eq!(got.id, want.id);
        assert_eq!(got.kind, want.kind);
        assert_eq!(got.topic, want.topic);
        assert_eq!(got.key, want.key);
        assert_eq!(got.headers, want.headers);
        assert_eq!(got.content_type, want.content_type);
        assert_eq!(
            std::str::from_utf8(&got.payload).unwrap(),
            std::str::from_utf8(&want.payload).unwrap()
        );
        if at_commit {
            assert_eq!(got.created_at, want.created_at);
        }
    }

    #[test]
    fn messages_are_byte_for_byte_what_the_value_bodies_were() {
        let changes = variety();
        for e in encoders() {
            let batch = e.messages(&changes);
            assert_eq!(batch.len(), changes.len());
            for (c, got) in changes.iter().zip(&batch) {
                let now_ms = match e.format {
                    Format::Ferry => 0,
                    Format::Debezium => {
                        let body: Value = serde_json::from_slice(&got.payload).unwrap();
                        body["ts_ms"].as_i64().unwrap()
                    }
                };
                let want = reference::message(&e, c, now_ms);
                let at_commit = c.source.commit_time.is_some();
                same(got, &want, at_commit);
                let single = e.message(c);
                let single_now = match e.format {
                    Format::Ferry => 0,
                    Format::Debezium => {
                        let body: Value = serde_json::from_slice(&single.payload).unwrap();
                        body["ts_ms"].as_i64().unwrap()
                    }
                };
                same(&single, &reference::message(&e, c, single_now), at_commit);
            }
        }
        // A body is its own slice: nothing of its neighbours.
        let e = &encoders()[0];
        let batch = e.messages(&changes[..2]);
        assert_eq!(batch[1].payload, e.message(&changes[1]).payload);
    }

    /// One snapshot row, exactly as receivers get it (both formats).
    #[test]
    fn a_snapshot_row_body_is_pinned() {
        let row = |v: Value| -> Row { serde_json::from_value(v).unwrap() };
        let c = Change {
            op: Op::Read,
            key: row(json!({"seq": 7})),
            before: None,
            after: Some(row(
                json!({"seq": 7, "kind": "order", "amount": 7, "note": "n"}),
            )),
            source: Source {
                db: "bench".into(),
                table: TableId::new("public", "bench_rows"),
                position: Position::Snapshot {
                    snapshot: "0/1A2B3C4D".into(),
                    key: r#"{"seq":7}"#.into(),
                },
                tx_id: None,
                commit_time: chrono::DateTime::from_timestamp(1_765_065_600, 5_000_000),
            },
            tx: None,
            unchanged: vec![],
        };
        let mut e = encoders().remove(1);
        let m = e.message(&c);
        assert_eq!(
            std::str::from_utf8(&m.payload).unwrap(),
            r#"{"after":{"amount":7,"kind":"order","note":"n","seq":7},"before":null,"key":{"seq":7},"op":"r","source":{"commit_time":"2025-12-07T00:00:00.005Z","db":"bench","position":{"key":"{\"seq\":7}","kind":"snapshot","snapshot":"0/1A2B3C4D"},"schema":"public","table":"bench_rows","tx_id":null},"table":"public.bench_rows"}"#
        );
        assert_eq!(m.key.as_deref(), Some(r#"public.bench_rows:{"seq":7}"#));
        assert_eq!(m.topic, "cdc.public.bench_rows");
        assert_eq!(
            m.headers[POSITION_HEADER],
            r#"snapshot:0/1A2B3C4D:{"seq":7}"#
        );
        assert_eq!(m.id.0, c.id("capcdc"));
        e.format = Format::Debezium;
        let m = e.message(&c);
        let text = std::str::from_utf8(&m.payload).unwrap();
        let ts = text.rsplit_once("\"ts_ms\":").unwrap().1;
        assert_eq!(
            text.replace(ts, "0}"),
            format!(
                r#"{{"after":{{"amount":7,"kind":"order","note":"n","seq":7}},"before":null,"op":"r","source":{{"connector":"postgresql","db":"bench","name":"cdc","schema":"public","snapshot":"true","table":"bench_rows","ts_ms":1765065600005,"txId":null,"version":"ferry-{}"}},"transaction":null,"ts_ms":0}}"#,
                env!("CARGO_PKG_VERSION")
            )
        );
    }

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
