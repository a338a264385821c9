//! Reading the binary log as a replica: events become committed changes,
//! transaction by transaction.
//!
//! A transaction (MariaDB's event group) begins with a GTID event and
//! ends with an XID event (InnoDB), a `COMMIT` query (non-transactional
//! engines), or, for a standalone group (DDL), after its one statement.
//! Only committed transactions reach the binary log, so every group read
//! is a committed one, except an `XA PREPARE`d group, which is refused
//! when it touches a captured table (see [`BinlogReader`]).
//!
//! The last change read of a transaction is held back until the event
//! after it shows whether the transaction ends there: the change that
//! ends it carries the transaction's total and the checkpoint (the file
//! and the position after the XID).

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use mysql_async::binlog::events::{Event, EventData, QueryEvent, RowsEventData, TableMapEvent};
use mysql_async::binlog::{BinlogChecksumAlg, EventType};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Opts};
use tokio::time::Instant;

use crate::capture::{CaptureError, Captured};
use crate::change::{Change, Op, Position, Row, Source, TableId, TxOrder};
use crate::filter::Filter;
use crate::mariadb::gtid::Gtid;
use crate::mariadb::rows;
use crate::mariadb::saved::Saved;
use crate::mariadb::server::{self, BinlogPosition, Schema, TableInfo};

/// MariaDB's GTID event.
const GTID_EVENT: u8 = 162;
/// MariaDB 10.5+ asks a replica to say it understands GTID events
/// (otherwise the server rewrites them into `BEGIN` queries).
const MARIA_SLAVE_CAPABILITY_GTID: u8 = 4;
/// How often the server sends a heartbeat when it has nothing to send.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence for this long (no event, no heartbeat) means the connection is
/// gone.
const SILENCE: Duration = Duration::from_secs(30);

/// A table as the last TABLE_MAP event described it.
struct Mapped {
    table: TableId,
    captured: bool,
    /// Ferry's signal table (backfill requests and watermarks).
    signal: bool,
    map: TableMapEvent<'static>,
}

/// The event group being read.
struct OpenTx {
    gtid: Option<Gtid>,
    /// `Source.tx_id` and `TxOrder.id`: the GTID, or the group's first
    /// position when there is none.
    id: String,
    time: Option<DateTime<Utc>>,
    /// Changes of captured tables read so far.
    order: u64,
}

/// The binlog stream of one capture; see the [module docs](self).
///
/// An `XA PREPARE`d transaction is written to the binlog before it
/// commits and may still roll back: a capture meeting one that changed a
/// captured table stops with a permanent error rather than deliver
/// changes that may never commit.
pub struct BinlogReader {
    opts: Opts,
    server_id: u32,
    filter: Filter,
    stream: Option<BinlogStream>,
    /// Where a new connection starts: the end of the last transaction
    /// whose changes were all handed out (or that had none).
    resume: BinlogPosition,
    file: String,
    tables: HashMap<u64, Mapped>,
    tx: Option<OpenTx>,
    /// The open group is one statement (DDL): it ends after its query.
    standalone: bool,
    held: Option<Change>,
    ready: VecDeque<Captured>,
    heard: Instant,
    /// The server ends events with a CRC32 checksum.
    checksums: bool,
    /// Backfill signals read, and the chunk whose watermarks are watched.
    pub signals: super::backfill::Signals,
}

impl BinlogReader {
    /// A reader that will start at `at` (connecting on the first read).
    pub fn new(opts: Opts, server_id: u32, filter: Filter, at: BinlogPosition) -> Self {
        Self {
            opts,
            server_id,
            filter,
            stream: None,
            file: at.file.clone(),
            resume: at,
            tables: HashMap::new(),
            tx: None,
            standalone: false,
            held: None,
            ready: VecDeque::new(),
            heard: Instant::now(),
            checksums: true,
            signals: super::backfill::Signals::default(),
        }
    }

    /// Connects now rather than at the first read, so that a missing
    /// `REPLICATION SLAVE` privilege shows at once.
    pub async fn open(&mut self) -> Result<(), CaptureError> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        Ok(())
    }

    /// Closes the replica connection.
    pub async fn close(mut self) {
        if let Some(stream) = self.stream.take() {
            let _ = stream.close().await;
        }
    }

    /// Up to `max` changes, waiting up to `wait` for the first.
    pub async fn read(
        &mut self,
        max: usize,
        wait: Duration,
        schema: &mut Schema,
    ) -> Result<Vec<Captured>, CaptureError> {
        let max = max.max(1);
        let deadline = Instant::now() + wait;
        if let Err(e) = self.fill(max, deadline, schema).await {
            self.reset();
            return Err(e);
        }
        let mut out = Vec::with_capacity(self.ready.len().min(max));
        while out.len() < max {
            let Some(c) = self.ready.pop_front() else {
                break;
            };
            if let Some(cp) = &c.checkpoint {
                if let Ok(saved) = Saved::parse(cp) {
                    self.resume = saved.position();
                }
            }
            out.push(c);
        }
        Ok(out)
    }

    /// Reads events until `max` changes are ready, or, once some are,
    /// until no more events are at hand, or, while none are, until
    /// `deadline`.
    async fn fill(
        &mut self,
        max: usize,
        deadline: Instant,
        schema: &mut Schema,
    ) -> Result<(), CaptureError> {
        while self.ready.len() < max {
            if self.stream.is_none() {
                self.connect().await?;
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            // A panic in the event decoder (a malformed event) becomes an
            // error: server input never brings the capture down.
            let next = AssertUnwindSafe(stream.next()).catch_unwind();
            let now = Instant::now();
            let next = if self.ready.is_empty() && now < deadline {
                match tokio::time::timeout(deadline - now, next).await {
                    Ok(next) => next,
                    Err(_) => return self.check_silence(),
                }
            } else {
                // Changes to hand out (or no time to wait): only what is
                // at hand already.
                match next.now_or_never() {
                    Some(next) => next,
                    None => return self.check_silence(),
                }
            };
            let event = match next {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(e))) => return Err(self.stream_failure(e)),
                Ok(None) => {
                    return Err(CaptureError::unavailable(
                        "the server ended the binlog stream",
                    ))
                }
                Err(_) => {
                    return Err(CaptureError::permanent(format!(
                        "undecodable binlog event after {}:{}",
                        self.file, self.resume.pos
                    )))
                }
            };
            self.heard = Instant::now();
            self.handle(event, schema).await?;
        }
        Ok(())
    }

    /// An unavailable error when the server has said nothing, not even a
    /// heartbeat, for too long.
    fn check_silence(&self) -> Result<(), CaptureError> {
        if self.heard.elapsed() > SILENCE {
            return Err(CaptureError::unavailable(format!(
                "no binlog event nor heartbeat for {}s",
                SILENCE.as_secs()
            )));
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<(), CaptureError> {
        let mut conn = server::connect(&self.opts).await?;
        let set = format!(
            "SET @mariadb_slave_capability = {MARIA_SLAVE_CAPABILITY_GTID}, \
             @master_heartbeat_period = {}",
            HEARTBEAT.as_nanos()
        );
        conn.query_drop(set)
            .await
            .map_err(|e| server::failure(e, "cannot set up the replica connection"))?;
        let checksum: Option<String> = conn
            .query_first("SELECT @@global.binlog_checksum")
            .await
            .map_err(|e| server::failure(e, "cannot set up the replica connection"))?;
        self.checksums = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        let request = BinlogStreamRequest::new(self.server_id)
            .with_filename(self.resume.file.as_bytes())
            .with_pos(self.resume.pos);
        let stream = conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| self.stream_failure(e))?;
        tracing::debug!(at = %self.resume, server_id = self.server_id, "binlog stream opened");
        self.stream = Some(stream);
        self.file = self.resume.file.clone();
        self.heard = Instant::now();
        Ok(())
    }

    /// Forgets everything read since `resume`: the next read reconnects
    /// there and reads it again (with the same change ids).
    fn reset(&mut self) {
        self.stream = None;
        self.tables.clear();
        self.tx = None;
        self.standalone = false;
        self.held = None;
        self.ready.clear();
        self.file = self.resume.file.clone();
        self.signals.window = None;
        self.signals.lost = true;
    }

    fn stream_failure(&self, e: mysql_async::Error) -> CaptureError {
        if let mysql_async::Error::Server(s) = &e {
            // ER_MASTER_FATAL_ERROR_READING_BINLOG: the file or position
            // asked for is not there.
            if s.code == 1236 {
                let missing = s.message.contains("find first log file")
                    || s.message.contains("purged")
                    || s.message.contains("not found");
                return if missing {
                    server::purged(&self.resume).with_source(e)
                } else {
                    CaptureError::permanent(format!(
                        "the server cannot send the binlog from {}",
                        self.resume
                    ))
                    .with_source(e)
                };
            }
        }
        server::needing("REPLICATION SLAVE", e, "cannot read the binlog")
    }

    async fn handle(&mut self, event: Event, schema: &mut Schema) -> Result<(), CaptureError> {
        let header = event.header();
        let end = u64::from(header.log_pos());
        let start = end.saturating_sub(u64::from(header.event_size()));
        let kind = header.event_type_raw();
        let undecodable = |e: std::io::Error| {
            CaptureError::permanent(format!(
                "undecodable binlog event (type {kind}) at {}:{start}",
                self.file
            ))
            .with_source(e)
        };
        match kind {
            k if k == EventType::ROTATE_EVENT as u8 => {
                // The first event, a rotate to the file asked for, comes
                // before the format description that says whether events
                // end with a checksum; the decoder then leaves the
                // checksum in the name.
                let before_format = matches!(
                    event.footer().get_checksum_alg(),
                    Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_OFF))
                );
                let name = event.data().get(8..).unwrap_or_default();
                let name = match name.len().checked_sub(4) {
                    Some(len) if before_format && self.checksums => &name[..len],
                    _ => name,
                };
                self.file = String::from_utf8_lossy(name).into_owned();
                // Table ids are given anew in every file (and a long-lived
                // capture would otherwise keep every one it ever saw).
                self.tables.clear();
            }
            GTID_EVENT => {
                let gtid = Gtid::parse(event.data(), header.server_id()).map_err(|e| {
                    CaptureError::permanent(format!(
                        "undecodable gtid event at {}:{start}",
                        self.file
                    ))
                    .with_source(e)
                })?;
                // A group that never ended (it cannot, but never trust
                // that): it ends where the next begins.
                self.finish(start);
                self.tx = Some(OpenTx {
                    gtid: Some(gtid),
                    id: gtid.to_string(),
                    time: DateTime::from_timestamp(i64::from(header.timestamp()), 0),
                    order: 0,
                });
                if gtid.standalone() {
                    self.standalone = true;
                }
            }
            k if k == EventType::TABLE_MAP_EVENT as u8 => {
                let map: TableMapEvent<'_> = event.read_event().map_err(undecodable)?;
                let table = TableId::new(map.database_name(), map.table_name());
                let captured = server::captures(&self.filter, &table);
                let signal = table.name == super::backfill::SIGNALS;
                self.tables.insert(
                    map.table_id(),
                    Mapped {
                        table,
                        captured,
                        signal,
                        map: map.into_owned(),
                    },
                );
            }
            k if k == EventType::XID_EVENT as u8 => self.finish(end),
            k if k == EventType::QUERY_EVENT as u8 => {
                let query: QueryEvent<'_> = event.read_event().map_err(undecodable)?;
                let text = query.query();
                let word = text
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" => {}
                    "COMMIT" | "ROLLBACK" => self.finish(end),
                    "TRUNCATE" => {
                        schema.invalidate();
                        let table = truncated_table(&text, &query.schema());
                        if let Some(table) = table.filter(|t| server::captures(&self.filter, t)) {
                            self.truncate(table, start, header.timestamp())?;
                        }
                        if std::mem::take(&mut self.standalone) {
                            self.finish(end);
                        }
                    }
                    _ => {
                        if !matches!(word.as_str(), "SAVEPOINT" | "XA") {
                            // DDL (or anything else): the columns and keys
                            // known may be stale.
                            schema.invalidate();
                        }
                        if std::mem::take(&mut self.standalone) {
                            self.finish(end);
                        }
                    }
                }
            }
            k if k == EventType::XA_PREPARE_LOG_EVENT as u8 => {
                if self.held.is_some() || self.tx.as_ref().is_some_and(|t| t.order > 0) {
                    return Err(self.xa_refusal(start));
                }
                self.finish(end);
            }
            k if is_rows_event(k) => {
                let data = event.read_data().map_err(undecodable)?;
                if let Some(EventData::RowsEvent(rows)) = data {
                    self.rows(&rows, start, header.timestamp(), schema).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn rows(
        &mut self,
        rows: &RowsEventData<'_>,
        start: u64,
        timestamp: u32,
        schema: &mut Schema,
    ) -> Result<(), CaptureError> {
        let Some(mapped) = self.tables.get(&rows.table_id()) else {
            return Err(CaptureError::permanent(format!(
                "rows event at {}:{start} names table id {} that no TABLE_MAP event described",
                self.file,
                rows.table_id()
            )));
        };
        if mapped.signal {
            return self.signal_rows(rows, schema).await;
        }
        if !mapped.captured {
            return Ok(());
        }
        let table = mapped.table.clone();
        let Some(info) = schema.info(&table).await? else {
            tracing::warn!(%table, "changes of a table that no longer exists are skipped");
            return Ok(());
        };
        let Some(mapped) = self.tables.get(&rows.table_id()) else {
            return Ok(());
        };
        let op = match rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Op::Create,
            RowsEventData::UpdateRowsEventV1(_)
            | RowsEventData::UpdateRowsEvent(_)
            | RowsEventData::PartialUpdateRowsEvent(_) => Op::Update,
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => Op::Delete,
        };
        let undecodable = |what: String| {
            CaptureError::permanent(format!(
                "undecodable rows of {table} at {}:{start}: {what}",
                self.file
            ))
        };
        // Decoded in one go: one event's rows (the server splits large
        // statements into events of binlog_row_event_max_size). A panic in
        // the decoder (a malformed event) is an error, never a crash.
        let images = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            rows::decode(rows, &mapped.map, &info)
        })) {
            Ok(Ok(images)) => images,
            Ok(Err(e)) => return Err(undecodable(e)),
            Err(_) => return Err(undecodable("the decoder failed".to_owned())),
        };
        self.open_tx(start, timestamp)?;
        let file = self.file.clone();
        for (i, (before, after)) in images.into_iter().enumerate() {
            let Some(tx) = self.tx.as_mut() else {
                break;
            };
            tx.order += 1;
            let image = match op {
                Op::Delete => before.as_ref(),
                _ => after.as_ref(),
            };
            let mut change = Change {
                op,
                key: key_of(image, &info),
                before,
                after,
                source: Source {
                    db: table.schema.clone(),
                    table: table.clone(),
                    position: Position::Binlog {
                        file: file.clone(),
                        pos: start,
                        gtid: tx.gtid.map(|g| g.to_string()),
                        row: u32::try_from(i).unwrap_or(u32::MAX),
                    },
                    tx_id: Some(tx.id.clone()),
                    commit_time: tx.time,
                },
                tx: Some(TxOrder {
                    id: tx.id.clone(),
                    order: tx.order,
                    total: None,
                }),
                unchanged: vec![],
            };
            self.filter.strip(&mut change);
            if let Some(w) = self.signals.window.as_mut() {
                w.observe(&change);
            }
            self.push(change);
        }
        Ok(())
    }

    /// Rows written to the signal table: their `content`, in stream order.
    async fn signal_rows(
        &mut self,
        rows: &RowsEventData<'_>,
        schema: &mut Schema,
    ) -> Result<(), CaptureError> {
        if !matches!(
            rows,
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_)
        ) {
            return Ok(());
        }
        let Some(mapped) = self.tables.get(&rows.table_id()) else {
            return Ok(());
        };
        let table = mapped.table.clone();
        let Some(info) = schema.info(&table).await? else {
            return Ok(());
        };
        let Some(mapped) = self.tables.get(&rows.table_id()) else {
            return Ok(());
        };
        let images = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            rows::decode(rows, &mapped.map, &info)
        })) {
            Ok(Ok(images)) => images,
            // Not a signal of Ferry's making: passed by.
            _ => return Ok(()),
        };
        for (_, after) in images {
            if let Some(content) = after
                .as_ref()
                .and_then(|a| a.get("content"))
                .and_then(|c| c.as_str())
            {
                self.signals.signal(content);
            }
        }
        Ok(())
    }

    /// The group the changes at `start` belong to: the open one, or, for
    /// changes outside of any (never seen from MariaDB, but not trusted
    /// never to happen), one named after their position. An `XA
    /// PREPARE`d group is refused before any of its changes is handed out.
    fn open_tx(&mut self, start: u64, timestamp: u32) -> Result<&mut OpenTx, CaptureError> {
        if self
            .tx
            .as_ref()
            .and_then(|t| t.gtid)
            .is_some_and(|g| g.prepared_xa())
        {
            return Err(self.xa_refusal(start));
        }
        let file = &self.file;
        Ok(self.tx.get_or_insert_with(|| OpenTx {
            gtid: None,
            id: format!("{file}:{start}"),
            time: DateTime::from_timestamp(i64::from(timestamp), 0),
            order: 0,
        }))
    }

    fn xa_refusal(&self, start: u64) -> CaptureError {
        let gtid = self.tx.as_ref().map(|t| t.id.clone()).unwrap_or_default();
        CaptureError::permanent(format!(
            "XA transaction {gtid} at {}:{start} changed captured tables: XA PREPARE is not \
             supported by the binlog capture (its changes may still roll back)",
            self.file
        ))
    }

    /// `table` was truncated by the statement at `start`: a change with no
    /// row and no key.
    fn truncate(&mut self, table: TableId, start: u64, timestamp: u32) -> Result<(), CaptureError> {
        let file = self.file.clone();
        let tx = self.open_tx(start, timestamp)?;
        tx.order += 1;
        let change = Change {
            op: Op::Truncate,
            key: Row::new(),
            before: None,
            after: None,
            source: Source {
                db: table.schema.clone(),
                table,
                position: Position::Binlog {
                    file,
                    pos: start,
                    gtid: tx.gtid.map(|g| g.to_string()),
                    row: 0,
                },
                tx_id: Some(tx.id.clone()),
                commit_time: tx.time,
            },
            tx: Some(TxOrder {
                id: tx.id.clone(),
                order: tx.order,
                total: None,
            }),
            unchanged: vec![],
        };
        if let Some(w) = self.signals.window.as_mut() {
            w.observe(&change);
        }
        self.push(change);
        Ok(())
    }

    /// Holds `change` back, handing out the one held before it.
    fn push(&mut self, change: Change) {
        if let Some(before) = self.held.replace(change) {
            self.ready.push_back(Captured {
                change: before,
                checkpoint: None,
            });
        }
    }

    /// The open group ends at `end`: its last change takes the total and
    /// the checkpoint.
    fn finish(&mut self, end: u64) {
        self.standalone = false;
        let tx = self.tx.take();
        let at = BinlogPosition {
            file: self.file.clone(),
            pos: end,
        };
        match self.held.take() {
            Some(mut last) => {
                if let Some(order) = &mut last.tx {
                    order.total = Some(order.order);
                }
                let saved = Saved {
                    file: at.file.clone(),
                    pos: at.pos,
                    gtid: tx.as_ref().and_then(|t| t.gtid).map(|g| g.to_string()),
                    time: tx.as_ref().and_then(|t| t.time),
                    snapshot: None,
                };
                self.ready.push_back(Captured {
                    change: last,
                    checkpoint: Some(saved.checkpoint()),
                });
            }
            None => {
                if self.ready.is_empty() && tx.is_some() {
                    self.resume = at.clone();
                }
            }
        }
        // The chunk whose high watermark this group held: its rows left,
        // before anything committed after it.
        if self.signals.window.as_ref().is_some_and(|w| w.high) {
            if let Some(window) = self.signals.window.take() {
                let (rows, mut cursor) = window.into_rows();
                cursor.rows = rows.len() as u64;
                let n = rows.len();
                let saved = Saved {
                    file: at.file.clone(),
                    pos: at.pos,
                    gtid: tx.as_ref().and_then(|t| t.gtid).map(|g| g.to_string()),
                    time: tx.as_ref().and_then(|t| t.time),
                    snapshot: None,
                };
                for (i, change) in rows.into_iter().enumerate() {
                    let checkpoint = (i + 1 == n).then(|| saved.checkpoint());
                    self.ready.push_back(Captured { change, checkpoint });
                }
                self.signals.flushed = Some((at, cursor));
            }
        }
    }
}

fn is_rows_event(kind: u8) -> bool {
    use EventType::*;
    [
        WRITE_ROWS_EVENT_V1,
        UPDATE_ROWS_EVENT_V1,
        DELETE_ROWS_EVENT_V1,
        WRITE_ROWS_EVENT,
        UPDATE_ROWS_EVENT,
        DELETE_ROWS_EVENT,
    ]
    .iter()
    .any(|t| *t as u8 == kind)
}

/// The primary key's values out of `image`.
fn key_of(image: Option<&Row>, info: &TableInfo) -> Row {
    info.key
        .iter()
        .map(|k| {
            let v = image.and_then(|r| r.get(k)).cloned();
            (k.clone(), v.unwrap_or(serde_json::Value::Null))
        })
        .collect()
}

/// The table a `TRUNCATE [TABLE] [schema.]name` statement names, its
/// schema `default_schema` when it names none.
fn truncated_table(sql: &str, default_schema: &str) -> Option<TableId> {
    let rest = word(sql, "TRUNCATE")?;
    let rest = word(rest, "TABLE").unwrap_or(rest);
    let (first, rest) = identifier(rest)?;
    match rest.strip_prefix('.') {
        Some(rest) => Some(TableId::new(first, identifier(rest)?.0)),
        None => Some(TableId::new(default_schema, first)),
    }
}

/// `text` after the keyword `keyword` (and the blanks around it).
fn word<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let text = text.trim_start();
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    (head.eq_ignore_ascii_case(keyword) && rest.starts_with(char::is_whitespace))
        .then(|| rest.trim_start())
}

/// An identifier at the start of `text`, quoted (`` `a``b` ``) or bare, and
/// what follows it.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('`') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '`' {
                if chars.peek().is_some_and(|(_, c)| *c == '`') {
                    chars.next();
                    name.push('`');
                } else {
                    return Some((name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let end = text
        .find(|c: char| c.is_whitespace() || matches!(c, '.' | ';' | '`' | '/'))
        .unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_owned(), &text[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_tables_are_read_from_the_statement() {
        let t = |s: &str| truncated_table(s, "shop");
        assert_eq!(
            t("TRUNCATE TABLE orders"),
            Some(TableId::new("shop", "orders"))
        );
        assert_eq!(t("truncate orders"), Some(TableId::new("shop", "orders")));
        assert_eq!(
            t("TRUNCATE TABLE `other`.`odd``name`"),
            Some(TableId::new("other", "odd`name"))
        );
        assert_eq!(
            t("TRUNCATE other.items WAIT 5"),
            Some(TableId::new("other", "items"))
        );
        assert_eq!(t("TRUNCATE"), None);
        assert_eq!(t("TRUNCATED x"), None);
        assert_eq!(t("TRUNCATE TABLE `unclosed"), None);
    }
}
