//! MariaDB binlog mode: committed row changes read from the server's
//! binary log as a replica does, after an optional initial snapshot.
//!
//! # Server
//!
//! `log_bin=ON`, `binlog_format=ROW`, `binlog_row_image=FULL`,
//! `binlog_row_metadata=FULL` (column names, signedness and keys travel
//! with each table map), `log_bin_compress=OFF`; the user needs
//! `REPLICATION SLAVE`, `BINLOG MONITOR` and `SELECT`. A server without
//! them is refused at start with a permanent error naming the setting
//! ([`server::judge_settings`]). Every captured table needs a primary key
//! (the change's `key`; the snapshot pages by it).
//!
//! # Reading
//!
//! A replica connection (`COM_BINLOG_DUMP` through `mysql_async`) gives
//! the events; [`stream`] turns event groups into transactions (GTID
//! event to XID), [`rows`] decodes row images, [`values`] maps each column
//! to JSON, [`gtid`] parses MariaDB's GTID event, which `mysql_async` does
//! not. An update that changes the primary key is one `u` change keyed by
//! the new key; `TRUNCATE` of a captured table is a `t` change; other DDL
//! only makes the capture read the tables' columns and keys again. The
//! last change of
//! each transaction carries the checkpoint: the file and the position
//! after its XID event, and its GTID ([`saved`]). [`acknowledge`] saves it
//! in the capture's [`Offsets`].
//!
//! # Resuming by file and position
//!
//! A restart reads from the saved file and position, not from the GTID.
//! Both name the same place on the server the capture reads, but a
//! change's id is derived from its file and position (the only place a
//! rows event and a row within it have), so resuming by them is what keeps
//! the ids of re-read changes the same. GTIDs would only help after a
//! failover to another server, whose files and positions differ anyway
//! (there, `ferry cdc drop` and a new snapshot). The GTID is saved beside
//! the position for operators and for a future failover mode.
//!
//! With nothing saved, the capture snapshots the captured tables
//! ([`snapshot`], `snapshot = "initial"`) or starts at the binlog's current
//! end (`snapshot = "never"`).
//!
//! # Limits
//!
//! * A transaction that is `XA PREPARE`d (written to the binlog before it
//!   commits, and may still roll back) stops the capture with a permanent
//!   error when it changes a captured table.
//! * Compressed binlog events (`log_bin_compress=ON`) are refused.
//! * Columns and keys come from `information_schema` as they are now:
//!   events read long after an `ALTER TABLE` (a restart far behind) are
//!   mapped with the current types and key (column names come from each
//!   event).
//! * The source connection has no TLS.
//!
//! [`acknowledge`]: crate::Capture::acknowledge

pub mod backfill;
pub mod config;
pub mod gtid;
pub mod rows;
pub mod saved;
pub mod server;
pub mod snapshot;
pub mod stream;
pub mod values;

use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_store::StoreError;
use mysql_async::Opts;

use crate::capture::{Capture, CaptureError, Captured, Checkpoint};
use crate::change::TableId;
use crate::filter::Filter;
use crate::offsets::Offsets;

pub use config::{BinlogConfig, SnapshotMode};
pub use saved::Saved;
pub use server::BinlogPosition;

use self::server::Schema;
use self::snapshot::Snapshot;
use self::stream::BinlogReader;
use crate::backfill::Job;

/// A MariaDB binlog capture; see the [module docs](self).
pub struct MariaDbCapture {
    name: String,
    database: String,
    offsets: Offsets,
    schema: Schema,
    phase: Phase,
    opts: Opts,
    server_id: u32,
    filter: Filter,
    /// Rows read by the snapshot, for whoever shows it.
    progress: std::sync::Arc<crate::capture::SnapshotProgress>,
    /// Backfill jobs.
    backfill: backfill::Backfiller,
}

enum Phase {
    Snapshot(Box<Snapshot>),
    Stream(Box<BinlogReader>),
}

impl std::fmt::Debug for MariaDbCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MariaDbCapture")
            .field("name", &self.name)
            .field("database", &self.database)
            .field("server_id", &self.server_id)
            .field(
                "phase",
                &match self.phase {
                    Phase::Snapshot(_) => "snapshot",
                    Phase::Stream(_) => "stream",
                },
            )
            .finish_non_exhaustive()
    }
}

impl MariaDbCapture {
    /// Checks the server and the captured tables, loads the saved
    /// position, and gets ready to read from it (or to snapshot, or to
    /// start at the binlog's end).
    ///
    /// Permanent errors: a server setting the capture needs is off, a
    /// privilege is missing (`BINLOG MONITOR`, `REPLICATION SLAVE`), a
    /// captured table has no primary key, the saved position's file was
    /// purged. Unavailable: the server or the offsets' database cannot be
    /// reached.
    pub async fn start(config: BinlogConfig) -> Result<Self, CaptureError> {
        config.validate()?;
        let opts = server::options(&config.url)?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        let filter = scope(&config.tables, &database);
        let server_id = config.server_id();

        let mut conn = server::connect(&opts).await?;
        let vars = server::settings(&mut conn).await?;
        server::judge_settings(&vars)?;
        if vars.get("server_id").and_then(|v| v.parse::<u32>().ok()) == Some(server_id) {
            return Err(CaptureError::permanent(format!(
                "server_id {server_id} is the server's own: give the capture another server_id"
            )));
        }
        let offsets = open_offsets(&config, &database).await?;
        let saved = match offsets.load(&config.name).await {
            Ok(Some(checkpoint)) => Some(Saved::parse(&checkpoint)?),
            Ok(None) => None,
            Err(e) => return Err(store_failure(e, "cannot load the capture's position")),
        };

        // Also the check of BINLOG MONITOR, whatever the start needs.
        let end = server::binlog_end(&mut conn).await?;
        let mut schema = Schema::new(opts.clone(), Some(conn));
        for table in server::captured_tables(schema.conn().await?, &filter).await? {
            schema.info(&table).await?;
        }

        let mut backfill = backfill::Backfiller::load(
            &config.name,
            opts.clone(),
            filter.clone(),
            config.snapshot_chunk,
            offsets.clone(),
        )
        .await?;
        let mut phase = match saved {
            Some(saved) => {
                let at = saved.position();
                server::check_not_purged(schema.conn().await?, &at).await?;
                match saved.snapshot.clone() {
                    // A snapshot a crash interrupted: its consistent
                    // snapshot is gone, so the rest is read as a backfill
                    // beside the stream, which starts at the snapshot's
                    // position: no row's older state after a newer change.
                    Some(progress) => {
                        let tables = backfill.tables_from(&progress.table).await?;
                        let after = progress
                            .after
                            .filter(|_| tables.first() == Some(&progress.table))
                            .map(|keys| {
                                keys.iter()
                                    .map(|k| serde_json::to_string(k).unwrap_or_default())
                                    .collect()
                            });
                        backfill
                            .add(Job {
                                id: format!("snapshot:{at}"),
                                label: at.to_string(),
                                tables,
                                table: 0,
                                after,
                                rows: 0,
                                requested: Utc::now(),
                            })
                            .await?;
                        let streamed = Saved {
                            snapshot: None,
                            ..saved
                        };
                        offsets
                            .save(&config.name, &streamed.checkpoint())
                            .await
                            .map_err(|e| store_failure(e, "cannot save the capture's position"))?;
                        tracing::info!(capture = %config.name, %at,
                            "binlog capture: the snapshot was interrupted; its rest is read as a backfill beside the stream");
                        Phase::Stream(Box::new(BinlogReader::new(
                            opts.clone(),
                            server_id,
                            filter.clone(),
                            at,
                        )))
                    }
                    None => Phase::Stream(Box::new(BinlogReader::new(
                        opts.clone(),
                        server_id,
                        filter.clone(),
                        at,
                    ))),
                }
            }
            None => match config.snapshot {
                SnapshotMode::Initial => Phase::Snapshot(Box::new(
                    Snapshot::begin(opts.clone(), filter.clone(), config.snapshot_chunk, None)
                        .await?,
                )),
                SnapshotMode::Never => Phase::Stream(Box::new(BinlogReader::new(
                    opts.clone(),
                    server_id,
                    filter.clone(),
                    end,
                ))),
            },
        };
        // The replica connection now: a missing REPLICATION SLAVE
        // privilege refuses the start (while a snapshot is read, a probe
        // at the position it will stream from).
        match &mut phase {
            Phase::Stream(reader) => reader.open().await?,
            Phase::Snapshot(snapshot) => {
                let mut probe = BinlogReader::new(
                    opts.clone(),
                    server_id,
                    filter.clone(),
                    snapshot.position.clone(),
                );
                probe.open().await?;
                probe.close().await;
            }
        }
        tracing::info!(
            capture = %config.name,
            server_id,
            snapshot = matches!(phase, Phase::Snapshot(_)),
            "binlog capture started"
        );
        Ok(Self {
            name: config.name,
            database,
            offsets,
            schema,
            phase,
            opts,
            server_id,
            filter,
            progress: std::sync::Arc::default(),
            backfill,
        })
    }

    /// The capture's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the initial snapshot is still being read.
    pub fn snapshotting(&self) -> bool {
        matches!(self.phase, Phase::Snapshot(_))
    }

    /// Ends the snapshot's transaction and closes the connections.
    pub async fn close(self) {
        let Self {
            phase,
            mut schema,
            offsets,
            ..
        } = self;
        if let Phase::Snapshot(snapshot) = phase {
            snapshot.close().await;
        }
        schema.close().await;
        offsets.database().close().await;
    }

    /// Where `config`'s capture stands: its saved position against the
    /// binlog's end.
    pub async fn status(config: &BinlogConfig) -> Result<BinlogStatus, CaptureError> {
        config.validate()?;
        let opts = server::options(&config.url)?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        let offsets = open_offsets(config, &database).await?;
        let saved = match offsets.load(&config.name).await {
            Ok(Some(checkpoint)) => Some(Saved::parse(&checkpoint)?),
            Ok(None) => None,
            Err(e) => return Err(store_failure(e, "cannot load the capture's position")),
        };
        let mut conn = server::connect(&opts).await?;
        let end = server::binlog_end(&mut conn).await?;
        let files = server::binlog_files(&mut conn).await?;
        let _ = conn.disconnect().await;
        offsets.database().close().await;
        Ok(BinlogStatus::of(saved, end, &files, Utc::now()))
    }

    /// Whether a backfill is under way (also the rest of a snapshot a
    /// crash interrupted).
    pub fn backfilling(&self) -> bool {
        match &self.phase {
            Phase::Stream(reader) => self.backfill.active(reader.signals.window.is_some()),
            Phase::Snapshot(_) => self.backfill.active(false),
        }
    }

    /// Asks capture `config.name` to backfill `tables`: checks that it has
    /// a saved position (it ran) and that each table exists with a
    /// primary key, then writes the request into the binary log as a
    /// signal row, where the capture reads it in order, now or when it
    /// next starts.
    pub async fn request_backfill(
        config: &BinlogConfig,
        tables: &[TableId],
    ) -> Result<crate::backfill::Request, CaptureError> {
        config.validate()?;
        let opts = server::options(&config.url)?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        let offsets = open_offsets(config, &database).await?;
        let saved = offsets
            .load(&config.name)
            .await
            .map_err(|e| store_failure(e, "cannot load the capture's position"))?;
        offsets.database().close().await;
        if saved.is_none() {
            return Err(CaptureError::permanent(format!(
                "no capture named {} here (no saved position); start it first \
                 (`ferry cdc --from … --name {}`)",
                config.name, config.name
            )));
        }
        let mut conn = server::connect(&opts).await?;
        for table in tables {
            let keyed: Option<i64> = mysql_async::prelude::Queryable::exec_first(
                &mut conn,
                "SELECT COUNT(c.CONSTRAINT_NAME) FROM information_schema.TABLES t \
                     LEFT JOIN information_schema.TABLE_CONSTRAINTS c \
                       ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME \
                       AND c.CONSTRAINT_TYPE = 'PRIMARY KEY' \
                     WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ? GROUP BY t.TABLE_NAME",
                (table.schema.as_str(), table.name.as_str()),
            )
            .await
            .map_err(|e| server::failure(e, "cannot look up a table to backfill"))?;
            match keyed {
                None => {
                    return Err(CaptureError::permanent(format!(
                        "no table {table} to backfill"
                    )))
                }
                Some(0) => {
                    return Err(CaptureError::permanent(format!(
                        "{table} has no primary key: a backfill reads it in key order; add one"
                    )))
                }
                Some(_) => {}
            }
        }
        let request = crate::backfill::Request::new(&config.name, tables.to_vec());
        backfill::ensure_table(&mut conn).await?;
        backfill::signal(&mut conn, &request.to_message()).await?;
        let _ = conn.disconnect().await;
        Ok(request)
    }

    /// Capture `config.name`'s backfill jobs as acknowledged.
    pub async fn backfill_jobs(
        config: &BinlogConfig,
    ) -> Result<crate::backfill::Backfills, CaptureError> {
        let opts = server::options(&config.url)?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        let offsets = open_offsets(config, &database).await?;
        let jobs = crate::backfill::Backfills::load(&offsets, &config.name)
            .await
            .map_err(|e| store_failure(e, "cannot load the backfill jobs"));
        offsets.database().close().await;
        jobs
    }

    /// Forgets `config`'s saved position (`ferry cdc drop`): the next start
    /// snapshots again, or starts at the binlog's end. Returns whether
    /// there was one.
    pub async fn drop(config: &BinlogConfig) -> Result<bool, CaptureError> {
        config.validate()?;
        let opts = server::options(&config.url)?;
        let database = opts.db_name().unwrap_or_default().to_owned();
        let offsets = open_offsets(config, &database).await?;
        let dropped = offsets
            .delete(&config.name)
            .await
            .map_err(|e| store_failure(e, "cannot delete the capture's position"));
        offsets.database().close().await;
        dropped
    }
}

impl Capture for MariaDbCapture {
    fn connector(&self) -> &'static str {
        "mysql"
    }

    fn database(&self) -> &str {
        &self.database
    }

    fn progress(&self) -> Option<std::sync::Arc<crate::capture::SnapshotProgress>> {
        Some(self.progress.clone())
    }

    async fn read(&mut self, max: usize, wait: Duration) -> Result<Vec<Captured>, CaptureError> {
        loop {
            match &mut self.phase {
                Phase::Snapshot(snapshot) => {
                    let out = snapshot.read(max, &mut self.schema).await?;
                    if !out.is_empty() {
                        self.progress.note(&out, true, None);
                        return Ok(out);
                    }
                    self.progress.note(&[], false, None);
                    // Every table read: stream from the snapshot's position.
                    let at = snapshot.position.clone();
                    tracing::info!(capture = %self.name, %at, "binlog capture snapshot done");
                    let reader = BinlogReader::new(
                        self.opts.clone(),
                        self.server_id,
                        self.filter.clone(),
                        at,
                    );
                    if let Phase::Snapshot(done) =
                        std::mem::replace(&mut self.phase, Phase::Stream(Box::new(reader)))
                    {
                        done.close().await;
                    }
                }
                Phase::Stream(reader) => {
                    if self.backfill.wants_chunk(reader.signals.window.is_some()) {
                        if let Some(window) = self.backfill.open_window(&mut self.schema).await? {
                            reader.signals.window = Some(window);
                        }
                    }
                    let out = reader.read(max, wait, &mut self.schema).await;
                    self.backfill.take(&mut reader.signals).await?;
                    let out = out?;
                    let running = self.backfill.active(reader.signals.window.is_some());
                    self.progress.note(&out, running, None);
                    return Ok(out);
                }
            }
        }
    }

    async fn acknowledge(&mut self, checkpoint: &Checkpoint) -> Result<(), CaptureError> {
        let saved = Saved::parse(checkpoint)?;
        self.offsets
            .save(&self.name, checkpoint)
            .await
            .map_err(|e| store_failure(e, "cannot save the capture's position"))?;
        // A backfill chunk at or before it is delivered.
        self.backfill.acknowledge(&saved.position()).await
    }
}

/// Where a capture stands ([`MariaDbCapture::status`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BinlogStatus {
    /// The saved position, if any: where a restart resumes.
    pub saved: Option<BinlogPosition>,
    /// The GTID of the last transaction acknowledged.
    pub gtid: Option<String>,
    /// While the initial snapshot is not finished: the table it goes on
    /// with.
    pub snapshot_table: Option<TableId>,
    /// The binlog's end.
    pub end: BinlogPosition,
    /// Bytes of binlog between the saved position and the end (across
    /// files, from the sizes of the files the server still has).
    pub lag_bytes: Option<u64>,
    /// Seconds since the last acknowledged transaction committed; 0 when
    /// the saved position is the end.
    pub lag_seconds: Option<f64>,
}

impl BinlogStatus {
    fn of(
        saved: Option<Saved>,
        end: BinlogPosition,
        files: &[(String, u64)],
        now: DateTime<Utc>,
    ) -> Self {
        let Some(saved) = saved else {
            return Self {
                saved: None,
                gtid: None,
                snapshot_table: None,
                end,
                lag_bytes: None,
                lag_seconds: None,
            };
        };
        let at = saved.position();
        let lag_bytes = if at.file == end.file {
            Some(end.pos.saturating_sub(at.pos))
        } else {
            // The rest of the saved file, every file after it, and the
            // current one up to the end.
            files.iter().position(|(f, _)| *f == at.file).map(|i| {
                let rest = files[i].1.saturating_sub(at.pos);
                let between: u64 = files[i + 1..]
                    .iter()
                    .filter(|(f, _)| *f != end.file)
                    .map(|(_, size)| size)
                    .sum();
                rest + between + end.pos
            })
        };
        let lag_seconds = if at == end {
            Some(0.0)
        } else {
            saved
                .time
                .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
        };
        Self {
            saved: Some(at),
            gtid: saved.gtid,
            snapshot_table: saved.snapshot.map(|s| s.table),
            end,
            lag_bytes,
            lag_seconds,
        }
    }
}

/// `tables` scoped to the URL's database: an unqualified table pattern
/// names that database's table (the binlog carries every database's
/// changes; a bare `orders` would otherwise capture every database's
/// `orders`), and an empty `include` means its tables.
fn scope(tables: &Filter, database: &str) -> Filter {
    let mut filter = tables.scoped(database);
    if filter.include.is_empty() && !database.is_empty() {
        filter.include.push(format!("{database}.*"));
    }
    filter
}

async fn open_offsets(config: &BinlogConfig, database: &str) -> Result<Offsets, CaptureError> {
    let url = match &config.offsets {
        Some(url) => url.as_str(),
        None if database.is_empty() => {
            return Err(CaptureError::permanent(
                "the source url names no database to keep the capture's position in: \
                 add one (mysql://…/db) or set `offsets`",
            ))
        }
        None => config.url.as_str(),
    };
    Offsets::connect(url)
        .await
        .map_err(|e| store_failure(e, "cannot open the capture's offsets"))
}

/// A store error as a capture failure: unreachable is unavailable, a bad
/// URL permanent, anything else transient.
fn store_failure(e: StoreError, doing: &str) -> CaptureError {
    let kind = match &e {
        StoreError::InvalidUrl { .. } => ferry_core::ErrorKind::Permanent,
        e if e.is_retryable() => ferry_core::ErrorKind::Unavailable,
        _ => ferry_core::ErrorKind::Transient,
    };
    CaptureError::new(kind, doing).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(file: &str, pos: u64) -> BinlogPosition {
        BinlogPosition {
            file: file.into(),
            pos,
        }
    }

    fn saved(file: &str, pos: u64, time: Option<DateTime<Utc>>) -> Saved {
        Saved {
            file: file.into(),
            pos,
            gtid: Some("0-1-5".into()),
            time,
            snapshot: None,
        }
    }

    #[test]
    fn status_measures_lag_in_bytes_and_seconds() {
        let now = Utc::now();
        let files = vec![
            ("b.1".to_owned(), 1000),
            ("b.2".to_owned(), 500),
            ("b.3".to_owned(), 300),
        ];
        let s = BinlogStatus::of(
            Some(saved("b.3", 100, Some(now - chrono::Duration::seconds(5)))),
            at("b.3", 300),
            &files,
            now,
        );
        assert_eq!(s.lag_bytes, Some(200));
        assert_eq!(s.lag_seconds, Some(5.0));
        let s = BinlogStatus::of(Some(saved("b.1", 900, None)), at("b.3", 300), &files, now);
        assert_eq!(s.lag_bytes, Some(100 + 500 + 300));
        let s = BinlogStatus::of(Some(saved("b.3", 300, None)), at("b.3", 300), &files, now);
        assert_eq!((s.lag_bytes, s.lag_seconds), (Some(0), Some(0.0)));
        let s = BinlogStatus::of(None, at("b.3", 300), &files, now);
        assert_eq!(s.saved, None);
    }

    #[test]
    fn the_urls_database_scopes_unqualified_and_empty_includes() {
        assert_eq!(scope(&Filter::default(), "shop").include, vec!["shop.*"]);
        assert!(scope(&Filter::default(), "").include.is_empty());
        let named = Filter {
            include: vec!["other.t".into()],
            ..Filter::default()
        };
        assert_eq!(scope(&named, "shop").include, vec!["other.t"]);
        let bare = Filter {
            include: vec!["t".into(), "*.u".into()],
            exclude: vec!["t_old".into()],
            exclude_columns: vec!["t.secret".into()],
        };
        let scoped = scope(&bare, "shop");
        assert_eq!(scoped.include, vec!["shop.t", "*.u"]);
        assert_eq!(scoped.exclude, vec!["shop.t_old"]);
        assert_eq!(scoped.exclude_columns, vec!["shop.t.secret"]);
        assert_eq!(scope(&bare, ""), bare);
    }
}
