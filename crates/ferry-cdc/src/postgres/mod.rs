//! PostgreSQL log mode: the committed changes of a database read from a
//! logical replication slot with the `pgoutput` plugin, the one built
//! into PostgreSQL (10 and later; tested on 15).
//!
//! # What it reads and how
//!
//! The capture reads a slot of its own (`ferry_<name>`) through a
//! publication (`ferry_<name>`, `FOR TABLE` the included tables, else `FOR
//! ALL TABLES`), both created on first start unless `create = false`.
//! Before it reads it checks what would otherwise fail later or silently:
//! `wal_level = logical`, the `REPLICATION` attribute, and that every
//! published table has a primary key or `REPLICA IDENTITY FULL` (else
//! PostgreSQL refuses its UPDATEs and DELETEs while it is published).
//!
//! It asks for pgoutput protocol version 1 without streaming: the server
//! decodes a transaction only after it committed, spilling a large one to
//! disk itself (`logical_decoding_work_mem`), and sends it whole, Begin to
//! Commit. So only committed transactions arrive, in commit order, and
//! Ferry never holds a transaction: [`read`](Capture::read) hands over at
//! most `max` changes and goes on with the same transaction at the next
//! call. Streaming (protocol 2) would send transactions in progress,
//! interleaved, to be buffered until their commit or abort: exactly what
//! this avoids. Values come as text (`binary` off) and are mapped by type
//! OID: integers and floats as JSON numbers (`NaN` and infinities as text),
//! `bool` as a boolean, `json`/`jsonb` parsed, `numeric` and everything
//! else as the text PostgreSQL prints.
//!
//! Logical decoding messages (`pg_logical_emit_message`) never reach a
//! sink: Ferry's own (prefix `ferry_cdc`: backfill requests and
//! watermarks) drive backfills, others are skipped.
//!
//! # Positions and acknowledgement
//!
//! A change's position is `Lsn { commit_lsn, lsn }`: the commit record's
//! LSN as the transaction's Begin gives it (known from the first change
//! on, so every change of a transaction has the same) and the change's
//! own record's LSN (plus its index among the rows of a multi-row record,
//! such as a `COPY` page, so that each row keeps an id of its own). The
//! last change of each transaction carries the checkpoint `{"lsn": end}`,
//! the end of its commit record. [`acknowledge`](Capture::acknowledge)
//! confirms that LSN to the slot, never more: after a restart the server
//! sends again every transaction committed after it, with the same
//! positions, hence the same change ids. When everything handed over is
//! acknowledged and the stream carries nothing to capture (keepalives,
//! other databases' or other tables' transactions), the capture confirms
//! the server's position, so that an idle capture does not make the slot
//! retain WAL without bound.
//!
//! # Initial snapshot
//!
//! With `snapshot = "initial"` (the default), a first start creates the
//! slot over the replication protocol (`CREATE_REPLICATION_SLOT … LOGICAL
//! pgoutput EXPORT_SNAPSHOT`) and reads every captured table inside the
//! snapshot it exports, before streaming from the slot's consistent point
//! (module `snapshot`): each row arrives once as an `r` change, then every
//! change committed after that point, none missing, none twice. Rows are
//! read a chunk at a time (`snapshot_chunk`); each chunk of a keyed table
//! ends with a checkpoint whose acknowledgement saves the progress in
//! `ferry_cdc_offsets`, in the captured database ([`progress`]). A
//! capture restarted mid-snapshot (the exported snapshot died with its
//! connection) streams from the slot's consistent point and reads the
//! rest, after the last acknowledged chunk, as a backfill between
//! watermarks (module `backfill`), so each row's events keep their order;
//! before PostgreSQL 14 (no logical decoding messages) it reads the rest
//! first from a fresh snapshot (at least once, never a gap, the final
//! state converges).
//!
//! # Backfill
//!
//! `ferry cdc backfill` writes a request into the log
//! (`pg_logical_emit_message`, prefix `ferry_cdc`); the capture reads the
//! tables in chunks between a low and a high watermark written the same
//! way, dropping every row of the chunk that a change between the two
//! supersedes, and sends the rest at the high watermark
//! ([`crate::backfill`]). Logical decoding messages are asked for
//! (`messages`) from PostgreSQL 14 on. A slot that
//! already exists when no snapshot is saved for it (one created before,
//! by hand or by `snapshot = "never"`) is only streamed.
//!
//! We do not use `pg_walstream`'s managed snapshot
//! ([`LogicalReplicationStream::snapshot`]): it copies whole tables with
//! `COPY`, cannot resume, and drops the slot when abandoned, where Ferry
//! needs keyset chunks, checkpoints and a slot that survives a crash. Its
//! lower-level parts fit: the slot created with `SNAPSHOT 'export'`
//! ([`ensure_replication_slot`](LogicalReplicationStream::ensure_replication_slot),
//! [`exported_snapshot_name`](LogicalReplicationStream::exported_snapshot_name)),
//! and its plain libpq connection as the reader, so that rows are printed
//! by the same client library and session settings as the stream's.
//!
//! # Why `pg_walstream`, pinned at `=0.10.0`, with libpq
//!
//! The replication protocol (`START_REPLICATION`, `CopyBoth`, keepalives,
//! standby status updates) is not something `sqlx` speaks. `pg_walstream`
//! does, and lets Ferry keep the parts that decide correctness: it reads
//! raw frames ([`next_raw_event`](pg_walstream::LogicalReplicationStream::next_raw_event),
//! which never acknowledges anything by itself) and parses them with its
//! pgoutput parser, while the relation cache, the transaction bookkeeping
//! and every confirmed LSN are Ferry's. The crate is young and changes
//! behaviour between minor versions (0.10 moved `IDENTIFY_SYSTEM` into
//! `new` and changed what `send_feedback` does before `start`), hence the
//! exact pin: an upgrade is a deliberate change, re-tested with
//! `cargo test -p ferry-cdc --test postgres`. Its default TLS backend
//! (rustls with aws-lc-rs) needs a `webpki-roots` release newer than the
//! registry this is built from has; the `libpq` backend takes TLS settings
//! (`sslmode`, `sslrootcert`) from the URL as every libpq client does. Its
//! libpq is built from source and linked statically (`pq-sys`'s `bundled`
//! feature, with the system's OpenSSL): the system's libpq links LDAP,
//! Kerberos and GnuTLS, about 3.5 MB of shared libraries mapped by every
//! `ferry` process (bench/README.md, memory). Kerberos/GSSAPI
//! authentication and LDAP service lookup are therefore not available.
//!
//! # Limits
//!
//! * The slot is read by one capture at a time; a second one waits and
//!   then reports the slot in use.
//! * The server drops a replication connection that stays silent longer
//!   than `wal_sender_timeout` (60 s by default); the next read then fails
//!   as unavailable and the one after reconnects, reading again from the
//!   last acknowledged transaction. A runner that stops reading for longer
//!   (its window full, its sink down) keeps the connection with
//!   `read(0, …)`: it reads nothing and sends the server a status update.
//! * The publication is not altered once it exists: tables added to
//!   `tables.include` later, or created later, need `ALTER PUBLICATION`
//!   (a `FOR ALL TABLES` publication takes new tables by itself).
//! * With `REPLICA IDENTITY FULL` the key is the primary key as the
//!   catalog has it when the table's description arrives.
//! * The snapshot's transaction pins the database's `xmin` while it is
//!   read (`VACUUM` reclaims nothing newer), as every consistent read
//!   does. A table without a primary key (published with `REPLICA
//!   IDENTITY FULL`) is read in one pass, without checkpoints in between:
//!   a crash reads it whole again, with other ids.
//! * The snapshot reads each table with the columns the catalog has when
//!   the table's turn comes. A `TRUNCATE` or a table-rewriting `ALTER
//!   TABLE` committed after the slot's point and before the table is read
//!   makes it read as empty (PostgreSQL's rewrites are not MVCC-safe): a
//!   truncate then arrives as its `t` change, a rewritten table's rows are
//!   missing from the snapshot.
//! * `pg_walstream` logs every statement its connections run at info level
//!   (target `pg_walstream`), the snapshot's `FETCH`es included.

mod backfill;
mod config;
mod decode;
pub mod monitor;
pub mod progress;
mod setup;
mod snapshot;
mod value;

use std::collections::VecDeque;
use std::time::Duration;

use ferry_store::{Database, StoreError};
use pg_walstream::{
    LogicalReplicationMessage, LogicalReplicationParser, LogicalReplicationStream,
    ReplicationError, ReplicationSlotOptions, ReplicationStreamConfig, RetryConfig, StreamingMode,
};
use sqlx::postgres::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backfill::{Job, PREFIX};
use crate::capture::{Capture, CaptureError, Captured, Checkpoint, SnapshotProgress};
use crate::change::{lsn_text, TableId};
use crate::offsets::Offsets;
use backfill::Backfiller;
use decode::Decoder;
use progress::{ChunkCheckpoint, Progress, Saved};
use snapshot::Snapshot;

pub use backfill::{jobs as backfill_jobs, request as request_backfill};
pub use config::{PgLogConfig, SnapshotMode};
pub use monitor::SlotMonitor;
pub use setup::{drop, status, SlotStatus};

/// How long a read goes on collecting changes once it has some, waiting
/// for more to arrive: batches fill up without delaying a lone change.
const LINGER: Duration = Duration::from_millis(5);

/// The longest a read waits on the connection before looking again.
const POLL_SLICE: Duration = Duration::from_millis(10);

/// How long opening the slot waits for the previous reader to let go of
/// it (its connection closing, or the server noticing it is gone).
const SLOT_BUSY_WAIT: Duration = Duration::from_secs(15);

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A capture of a PostgreSQL database's log; see the [module docs](self).
///
/// `read(0, _)` reads nothing and only tells the server the connection is
/// alive: call it when not reading for longer than `wal_sender_timeout`.
pub struct PgCapture {
    config: PgLogConfig,
    database: String,
    replication_url: String,
    /// For catalog look-ups (primary keys of `REPLICA IDENTITY FULL`
    /// tables).
    pool: PgPool,
    /// The replication connection; `None` after a failure, opened again by
    /// the next read.
    stream: Option<LogicalReplicationStream>,
    parser: LogicalReplicationParser,
    decoder: Decoder,
    /// Decoded and not yet handed over: at most `max` plus one message's
    /// changes.
    ready: VecDeque<Captured>,
    /// The end LSN of the last checkpoint handed over.
    handed: u64,
    /// The highest end LSN acknowledged.
    acked: u64,
    /// The highest LSN confirmed to the server.
    confirmed: u64,
    /// Never cancelled: reads are bounded by a timeout instead.
    never: CancellationToken,
    /// Where the snapshot's progress is saved (the captured database).
    offsets: Offsets,
    /// The initial snapshot, while it is read.
    snapshot: Option<Box<Snapshot>>,
    /// The connection that created the slot, kept open and idle while its
    /// exported snapshot is read (the export lives as long as it does);
    /// then it streams.
    parked: Option<LogicalReplicationStream>,
    /// The consistent point of a snapshot whose delivery is not saved yet.
    unsaved_snapshot: Option<String>,
    /// Snapshot chunks with a checkpoint handed over, and acknowledged.
    chunks_handed: u64,
    chunks_acked: u64,
    /// Backfill jobs and the chunk in flight.
    backfill: Backfiller,
    /// Whether the server sends logical decoding messages (PostgreSQL 14
    /// on): backfills need them for their requests and watermarks.
    messages: bool,
    /// Rows read by the snapshot and backfills, for whoever shows it.
    progress: std::sync::Arc<SnapshotProgress>,
}

impl PgCapture {
    /// Checks the server, creates the publication and the slot when
    /// missing (with `create`), and opens the replication connection.
    ///
    /// Fails [permanently](ferry_core::ErrorKind::Permanent), with the fix
    /// in the message, when the server cannot be captured as configured; as
    /// [unavailable](ferry_core::ErrorKind::Unavailable) when it cannot be
    /// reached.
    ///
    /// With `snapshot = "initial"` and no slot yet, the slot is created
    /// with its snapshot exported and the reader opens on it; with a
    /// snapshot saved as unfinished, the reader opens on a fresh one;
    /// [`read`](Capture::read) then hands over the snapshot's rows before
    /// the stream's changes. Another capture reading the same slot's
    /// snapshot makes it fail as unavailable (in use).
    pub async fn connect(config: PgLogConfig) -> Result<Self, CaptureError> {
        config.validate()?;
        let pool = setup::pool(&config).await?;
        let (database, slot) = setup::prepare(&config, &pool).await?;
        let replication_url = replication_url(&config)?;
        let offsets = Offsets::open(Database::Postgres(pool.clone()))
            .await
            .map_err(|e| store_failure(e, "postgres capture: opening the saved progress"))?;
        let decoder = Decoder::new(database.clone(), config.tables.clone());
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int4")
            .fetch_one(&pool)
            .await
            .map_err(|e| setup::sql_failure("postgres capture: reading the server's version", e))?;
        let backfill = Backfiller::load(
            &config.name,
            snapshot_setup(&config, &database, &pool),
            offsets.clone(),
        )
        .await?;
        let mut capture = Self {
            config,
            database,
            replication_url,
            pool,
            stream: None,
            parser: LogicalReplicationParser::with_protocol_version(1),
            decoder,
            ready: VecDeque::new(),
            handed: 0,
            acked: 0,
            confirmed: 0,
            never: CancellationToken::new(),
            offsets,
            snapshot: None,
            parked: None,
            unsaved_snapshot: None,
            chunks_handed: 0,
            chunks_acked: 0,
            backfill,
            messages: version >= 140000,
            progress: std::sync::Arc::default(),
        };
        capture.start(slot).await?;
        Ok(capture)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &PgLogConfig {
        &self.config
    }

    /// Whether the initial snapshot is being read.
    pub fn snapshotting(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Whether a backfill is under way (also the rest of an initial
    /// snapshot a crash interrupted).
    pub fn backfilling(&self) -> bool {
        self.backfill.active()
    }

    /// While the initial snapshot is read: the table being read, the rows
    /// of it this capture handed over (counting from where a restart went
    /// on), and the catalog's estimate of its rows (`pg_class.reltuples`,
    /// unknown before the table was first analyzed).
    pub fn snapshot_progress(&self) -> Option<(TableId, u64, Option<u64>)> {
        self.snapshot.as_ref().and_then(|s| s.progress())
    }

    /// Snapshots or streams, as the slot and the saved progress say.
    async fn start(&mut self, slot: setup::Slot) -> Result<(), CaptureError> {
        let saved = self.load().await?;
        let name = self.config.slot_name();
        match (slot, saved) {
            (setup::Slot::Created, saved) => {
                // A new slot, no snapshot: what was saved was another's.
                if saved.is_some() {
                    self.offsets.delete(&self.config.name).await.map_err(|e| {
                        store_failure(e, "postgres capture: deleting the saved progress")
                    })?;
                }
                self.open().await
            }
            (setup::Slot::Missing, _) => {
                // Saved first: a crash before the first progress still
                // finds the slot's snapshot to read.
                self.save(&Saved::Creating { slot: name.clone() }).await?;
                let (stream, export) = self.create_slot().await?;
                self.parked = Some(stream);
                let lsn = setup::slot_lsn(&self.pool, &name).await?;
                self.begin_snapshot(from_start(lsn), export).await
            }
            (setup::Slot::Existing, Some(Saved::Creating { .. })) => {
                // Nothing was confirmed to the slot: its position is still
                // its consistent point.
                let lsn = setup::slot_lsn(&self.pool, &name).await?;
                self.resume_snapshot(from_start(lsn)).await
            }
            (setup::Slot::Existing, Some(Saved::Reading { progress, .. })) => {
                self.resume_snapshot(progress).await
            }
            (setup::Slot::Existing, _) => self.open().await,
        }
    }

    /// Goes on with a snapshot a crash interrupted (its export is gone):
    /// the rest is read as a backfill beside the stream, which starts at
    /// the snapshot's consistent point, so that no row's older state is
    /// sent after a newer change of it. Without logical decoding messages
    /// (before PostgreSQL 14), from a fresh snapshot read first instead.
    async fn resume_snapshot(&mut self, progress: Progress) -> Result<(), CaptureError> {
        if !self.messages {
            return self.begin_snapshot(progress, None).await;
        }
        // The snapshot's lock, then the slot: while another capture reads
        // the snapshot or the slot, this one changes nothing.
        let mut guard =
            pg_walstream::connection::PgReplicationConnection::connect_async(&self.config.url)
                .await
                .map_err(|e| replication_failure("opening a connection", e))?;
        snapshot::lock(&mut guard, &self.config.slot_name()).await?;
        self.open().await?;
        std::mem::drop(guard);
        let tables = self.backfill.tables_from(progress.table.as_ref()).await?;
        let after = if tables.first() == progress.table.as_ref() {
            progress.after.clone()
        } else {
            None
        };
        let job = Job {
            id: format!("snapshot:{}", progress.lsn),
            label: progress.lsn.clone(),
            tables,
            table: 0,
            after,
            rows: 0,
            requested: chrono::Utc::now(),
        };
        self.backfill.add(job).await?;
        self.save(&Saved::Done {
            slot: self.config.slot_name(),
            lsn: progress.lsn.clone(),
        })
        .await?;
        tracing::info!(
            slot = %self.config.slot_name(),
            at = %progress.lsn,
            "postgres capture: the initial snapshot was interrupted; its rest is read as a \
             backfill beside the stream"
        );
        Ok(())
    }

    /// Saves `progress` and opens the snapshot's reader there.
    async fn begin_snapshot(
        &mut self,
        progress: Progress,
        export: Option<String>,
    ) -> Result<(), CaptureError> {
        self.save(&Saved::Reading {
            slot: self.config.slot_name(),
            progress: progress.clone(),
        })
        .await?;
        let setup = snapshot_setup(&self.config, &self.database, &self.pool);
        let lsn = progress.lsn.clone();
        let snapshot = Snapshot::begin(setup, progress, export).await?;
        self.snapshot = Some(Box::new(snapshot));
        self.unsaved_snapshot = Some(lsn);
        Ok(())
    }

    /// Creates the slot over the replication protocol, exporting its
    /// snapshot; returns the connection (to be kept idle while the export
    /// is needed) and the export's name (none when another capture created
    /// the slot meanwhile).
    async fn create_slot(
        &mut self,
    ) -> Result<(LogicalReplicationStream, Option<String>), CaptureError> {
        let config = self
            .stream_config()
            .with_slot_options(ReplicationSlotOptions {
                snapshot: Some("export".to_owned()),
                ..ReplicationSlotOptions::default()
            });
        let mut stream = LogicalReplicationStream::new(&self.replication_url, config)
            .await
            .map_err(|e| replication_failure("opening the replication connection", e))?;
        stream.ensure_replication_slot().await.map_err(|e| {
            replication_failure(
                &format!("creating replication slot {}", self.config.slot_name()),
                e,
            )
        })?;
        let export = stream.exported_snapshot_name().map(str::to_owned);
        Ok((stream, export))
    }

    /// Ends the snapshot's transaction; when everything it handed over is
    /// acknowledged, saves it as delivered.
    async fn finish_snapshot(&mut self) {
        if let Some(snapshot) = self.snapshot.take() {
            snapshot.close().await;
        }
        tracing::info!(
            slot = %self.config.slot_name(),
            "postgres capture snapshot read; streaming from its consistent point"
        );
        if self.chunks_acked >= self.chunks_handed {
            if let Err(e) = self.save_done().await {
                // Saved with the next acknowledgement instead.
                tracing::warn!(error = %e.describe(), "postgres capture: snapshot end not saved yet");
            }
        }
    }

    /// The saved snapshot state of this capture's slot.
    async fn load(&mut self) -> Result<Option<Saved>, CaptureError> {
        let checkpoint = self
            .offsets
            .load(&self.config.name)
            .await
            .map_err(|e| store_failure(e, "postgres capture: loading the saved progress"))?;
        let slot = self.config.slot_name();
        Ok(checkpoint
            .as_ref()
            .and_then(Saved::from_checkpoint)
            .filter(|s| s.slot() == slot))
    }

    async fn save(&mut self, saved: &Saved) -> Result<(), CaptureError> {
        self.offsets
            .save(&self.config.name, &saved.to_checkpoint())
            .await
            .map_err(|e| store_failure(e, "postgres capture: saving the snapshot's progress"))
    }

    /// Saves the snapshot as delivered, once.
    async fn save_done(&mut self) -> Result<(), CaptureError> {
        let Some(lsn) = self.unsaved_snapshot.clone() else {
            return Ok(());
        };
        self.save(&Saved::Done {
            slot: self.config.slot_name(),
            lsn,
        })
        .await?;
        self.unsaved_snapshot = None;
        tracing::info!(slot = %self.config.slot_name(), "postgres capture snapshot delivered");
        Ok(())
    }

    /// A snapshot chunk's checkpoint: saves the progress after it.
    async fn acknowledge_chunk(&mut self, chunk: ChunkCheckpoint) -> Result<(), CaptureError> {
        if chunk.chunk > self.chunks_handed {
            return Err(CaptureError::permanent(format!(
                "postgres capture: snapshot chunk {} was not read yet (last read {})",
                chunk.chunk, self.chunks_handed
            )));
        }
        if chunk.chunk <= self.chunks_acked || self.unsaved_snapshot.is_none() {
            return Ok(());
        }
        let last = self.snapshot.is_none() && chunk.chunk == self.chunks_handed;
        if chunk.done || last {
            self.save_done().await?;
        } else {
            self.save(&Saved::Reading {
                slot: self.config.slot_name(),
                progress: chunk.progress,
            })
            .await?;
        }
        self.chunks_acked = chunk.chunk;
        Ok(())
    }

    /// Opens the replication connection at the last acknowledged
    /// position (the slot's own when nothing was acknowledged yet),
    /// starting the transaction bookkeeping afresh.
    async fn open(&mut self) -> Result<(), CaptureError> {
        self.close();
        let start = (self.acked > 0).then_some(self.acked);
        if let Some(mut parked) = self.parked.take() {
            match parked.start(start).await {
                Ok(()) => {
                    self.stream = Some(parked);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "postgres capture: the slot's first connection cannot stream, opening another");
                }
            }
        }
        let deadline = Instant::now() + SLOT_BUSY_WAIT;
        loop {
            let mut stream =
                LogicalReplicationStream::new(&self.replication_url, self.stream_config())
                    .await
                    .map_err(|e| replication_failure("opening the replication connection", e))?;
            match stream.start(start).await {
                Ok(()) => {
                    stream.shared_lsn_feedback.update_flushed_lsn(self.acked);
                    stream.shared_lsn_feedback.update_applied_lsn(self.acked);
                    self.stream = Some(stream);
                    return Ok(());
                }
                // The slot's previous reader has not let go yet.
                Err(e) if e.to_string().contains("55006") => {
                    if Instant::now() >= deadline {
                        return Err(CaptureError::unavailable(format!(
                            "postgres capture: replication slot {} is in use by another \
                             connection (another capture of the same slot?)",
                            self.config.slot_name()
                        ))
                        .with_source(e));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(replication_failure(
                        &format!("starting replication from slot {}", self.config.slot_name()),
                        e,
                    ))
                }
            }
        }
    }

    /// Drops the replication connection and what was read on it but not
    /// handed over: the next connection sends it again.
    fn close(&mut self) {
        self.stream = None;
        self.parser = LogicalReplicationParser::with_protocol_version(1);
        self.decoder.reset();
        self.ready.clear();
        self.backfill.reset();
    }

    fn stream_config(&self) -> ReplicationStreamConfig {
        ReplicationStreamConfig::builder(self.config.slot_name(), self.config.publication_name())
            .with_protocol_version(1)
            .with_streaming_mode(StreamingMode::Off)
            .with_messages(self.messages)
            .with_existing_slot_required(true)
            .with_connection_timeout(CONNECT_TIMEOUT)
            .with_feedback_interval(Duration::from_secs(10))
            // One attempt: the runner retries with its own backoff.
            .with_retry_config(RetryConfig {
                max_attempts: 1,
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(1),
                multiplier: 2.0,
                max_duration: CONNECT_TIMEOUT,
                jitter: false,
            })
    }

    /// Reads messages into `ready` until it holds `max` changes, or
    /// `deadline` passes, or (once it holds some) nothing more arrives for
    /// a moment.
    async fn fill(&mut self, max: usize, deadline: Instant) -> Result<(), CaptureError> {
        while self.ready.len() < max {
            let limit = if self.ready.is_empty() {
                deadline
            } else {
                deadline.min(Instant::now() + LINGER)
            };
            let Some(stream) = self.stream.as_mut() else {
                return Err(CaptureError::unavailable(
                    "postgres capture: replication connection closed",
                ));
            };
            let raw = match tokio::time::timeout_at(limit, stream.next_raw_event(&self.never)).await
            {
                Err(_elapsed) => return Ok(()),
                Ok(Err(e)) => return Err(replication_failure("reading the slot", e)),
                Ok(Ok(raw)) => raw,
            };
            if raw.data.is_empty() {
                continue;
            }
            let message = self
                .parser
                .parse_wal_message_bytes(raw.data)
                .map_err(|e| replication_failure("decoding pgoutput", e))?;
            self.apply(message.message, raw.wal_start.value()).await?;
        }
        Ok(())
    }

    /// One pgoutput message; `lsn` is the position the server sent it at
    /// (a change's own record).
    async fn apply(
        &mut self,
        message: LogicalReplicationMessage,
        lsn: u64,
    ) -> Result<(), CaptureError> {
        use LogicalReplicationMessage as M;
        let before = self.ready.len();
        let out = &mut self.ready;
        match message {
            M::Begin {
                final_lsn,
                timestamp,
                xid,
            } => self.decoder.begin(
                xid,
                final_lsn,
                pg_walstream::postgres_timestamp_to_chrono(timestamp),
            ),
            M::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.decoder.commit(commit_lsn, end_lsn, out)?;
                self.backfill.observe(self.ready.range(before..));
                return self.backfill.commit(end_lsn, &mut self.ready).await;
            }
            M::Relation {
                relation_id,
                namespace,
                relation_name,
                replica_identity,
                columns,
            } => {
                let table = TableId::new(namespace.as_ref(), relation_name.as_ref());
                // With REPLICA IDENTITY FULL pgoutput flags every column as
                // the key: the primary key comes from the catalog.
                let primary_key =
                    if replica_identity == decode::IDENTITY_FULL && self.decoder.captures(&table) {
                        Some(setup::primary_key(&self.pool, relation_id).await?)
                    } else {
                        None
                    };
                self.decoder
                    .relation(relation_id, table, &columns, primary_key.as_deref());
                Ok(())
            }
            M::Insert { relation_id, tuple } => self.decoder.insert(lsn, relation_id, &tuple, out),
            M::Message {
                prefix, content, ..
            } if prefix == PREFIX => self.backfill.message(&content).await,
            M::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
            } => {
                let old = key_type.zip(old_tuple.as_ref());
                self.decoder.update(lsn, relation_id, old, &new_tuple, out)
            }
            M::Delete {
                relation_id,
                old_tuple,
                key_type,
            } => self
                .decoder
                .delete(lsn, relation_id, key_type, &old_tuple, out),
            M::Truncate { relation_ids, .. } => self.decoder.truncate(lsn, &relation_ids, out),
            // Types are mapped by OID; origins and others' logical
            // decoding messages carry no row change.
            M::Type { .. } | M::Origin { .. } | M::Message { .. } => Ok(()),
            other => Err(CaptureError::transient(format!(
                "postgres capture: pgoutput sent {} outside protocol 1 without streaming",
                message_name(&other)
            ))),
        }?;
        self.backfill.observe(self.ready.range(before..));
        Ok(())
    }

    /// Tells the server the connection is alive (a status update, which
    /// `wal_sender_timeout` counts) without reading anything.
    async fn keep_alive(&mut self) -> Result<(), CaptureError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if let Err(e) = stream.send_feedback().await {
            self.close();
            return Err(replication_failure(
                "keeping the replication connection alive",
                e,
            ));
        }
        Ok(())
    }

    /// With everything handed over acknowledged and no transaction being
    /// read, confirms the position the server reached: what lies before it
    /// holds nothing to capture.
    async fn confirm_idle(&mut self) -> Result<(), CaptureError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        if self.decoder.in_transaction() || !self.ready.is_empty() || self.acked < self.handed {
            return Ok(());
        }
        // The last message read: a Commit (its end) or a keepalive (the
        // server's sent position, every commit before it already read).
        let position = stream.current_lsn();
        if position <= self.confirmed {
            return Ok(());
        }
        stream.shared_lsn_feedback.update_flushed_lsn(position);
        stream.shared_lsn_feedback.update_applied_lsn(position);
        stream
            .send_feedback()
            .await
            .map_err(|e| replication_failure("confirming the slot's position", e))?;
        tracing::debug!(
            slot = %self.config.slot_name(),
            lsn = %lsn_text(position),
            "idle slot confirmed"
        );
        self.confirmed = position;
        Ok(())
    }
}

impl Capture for PgCapture {
    fn connector(&self) -> &'static str {
        "postgresql"
    }

    fn database(&self) -> &str {
        &self.database
    }

    fn progress(&self) -> Option<std::sync::Arc<SnapshotProgress>> {
        Some(self.progress.clone())
    }

    async fn read(&mut self, max: usize, wait: Duration) -> Result<Vec<Captured>, CaptureError> {
        if max == 0 {
            self.keep_alive().await?;
            return Ok(Vec::new());
        }
        if let Some(snapshot) = self.snapshot.as_mut() {
            let chunk = snapshot.read(max).await?;
            if !chunk.is_empty() {
                if let Some(last) = chunk
                    .iter()
                    .rev()
                    .find_map(|c| c.checkpoint.as_ref().and_then(ChunkCheckpoint::parse))
                {
                    self.chunks_handed = last.chunk;
                }
                let total = self.snapshot_progress().and_then(|(_, _, total)| total);
                self.progress.note(&chunk, true, total);
                return Ok(chunk);
            }
            self.finish_snapshot().await;
        }
        let deadline = Instant::now() + wait;
        if self.stream.is_none() {
            self.open().await?;
        }
        if self.messages && self.backfill.wants_chunk() {
            if let Err(e) = self.backfill.open_window(&self.pool).await {
                self.close();
                return Err(e);
            }
        }
        // Waited for in short slices, each ending with the idle check: a
        // read that waits on the connection for long sees a change only at
        // its deadline (pg_walstream's libpq backend; measured as p99 ≈ the
        // wait in bench/results/cdc-2026-12-06.md).
        let filled = loop {
            let slice = deadline.min(Instant::now() + POLL_SLICE);
            match self.fill(max, slice).await {
                Ok(()) if self.ready.is_empty() => match self.confirm_idle().await {
                    Ok(()) if Instant::now() < deadline => continue,
                    other => break other,
                },
                other => break other,
            }
        };
        if let Err(e) = filled {
            self.close();
            return Err(e);
        }
        let n = max.min(self.ready.len());
        let batch: Vec<Captured> = self.ready.drain(..n).collect();
        if let Some(lsn) = batch
            .iter()
            .rev()
            .find_map(|c| c.checkpoint.as_ref().and_then(checkpoint_lsn))
        {
            self.handed = self.handed.max(lsn);
        }
        self.progress.note(&batch, self.backfill.active(), None);
        Ok(batch)
    }

    async fn acknowledge(&mut self, checkpoint: &Checkpoint) -> Result<(), CaptureError> {
        if let Some(chunk) = ChunkCheckpoint::parse(checkpoint) {
            return self.acknowledge_chunk(chunk).await;
        }
        let lsn = checkpoint_lsn(checkpoint).ok_or_else(|| {
            CaptureError::permanent(format!(
                "postgres capture: {} is not a checkpoint of this capture",
                checkpoint.0
            ))
        })?;
        if lsn > self.handed {
            return Err(CaptureError::permanent(format!(
                "postgres capture: checkpoint {} was not read yet (last read {})",
                lsn_text(lsn),
                lsn_text(self.handed)
            )));
        }
        // A backfill chunk at or before it is delivered.
        self.backfill.acknowledge(lsn).await?;
        if lsn <= self.acked {
            return Ok(());
        }
        // Every snapshot row came before this change: the snapshot is
        // delivered (saved before the slot moves on).
        self.save_done().await?;
        self.acked = lsn;
        let Some(stream) = self.stream.as_mut() else {
            // Sent as the start position of the next connection.
            return Ok(());
        };
        stream.shared_lsn_feedback.update_flushed_lsn(lsn);
        stream.shared_lsn_feedback.update_applied_lsn(lsn);
        match stream.send_feedback().await {
            Ok(()) => {
                self.confirmed = self.confirmed.max(lsn);
                Ok(())
            }
            Err(e) => {
                // Kept: the next connection starts after it.
                tracing::warn!(error = %e, "postgres capture: acknowledgement not sent, reconnecting");
                self.close();
                Ok(())
            }
        }
    }
}

/// What a snapshot or a backfill of the capture reads, and how.
fn snapshot_setup(config: &PgLogConfig, database: &str, pool: &PgPool) -> snapshot::Setup {
    snapshot::Setup {
        url: config.url.clone(),
        database: database.to_owned(),
        slot: config.slot_name(),
        publication: config.publication_name(),
        filter: config.tables.clone(),
        chunk: config.snapshot_chunk,
        pool: pool.clone(),
    }
}

/// A snapshot's progress from its first table, at consistent point `lsn`.
fn from_start(lsn: u64) -> Progress {
    Progress {
        lsn: lsn_text(lsn),
        table: None,
        after: None,
    }
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

/// The end LSN a checkpoint of this mode holds.
fn checkpoint_lsn(checkpoint: &Checkpoint) -> Option<u64> {
    checkpoint.0.get("lsn")?.as_u64()
}

/// The config's URL as a replication connection's
/// (`replication=database`), named after the slot in
/// `pg_stat_replication` unless it names itself.
fn replication_url(config: &PgLogConfig) -> Result<String, CaptureError> {
    let mut url = url::Url::parse(&config.url).map_err(|e| {
        CaptureError::permanent("postgres capture: url is not a URL").with_source(e)
    })?;
    let named = url.query_pairs().any(|(k, _)| k == "application_name");
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("replication", "database");
        if !named {
            query.append_pair("application_name", &config.slot_name());
        }
    }
    Ok(url.into())
}

/// A replication failure by what trying again does: a server out of reach
/// or a dropped connection is unavailable; a refusal of the slot, the
/// credentials or the configuration permanent; a message that would not
/// decode transient (the next connection reads it again).
fn replication_failure(context: &str, e: ReplicationError) -> CaptureError {
    let kind = match &e {
        e if e.is_permanent() => ferry_core::ErrorKind::Permanent,
        ReplicationError::TransientConnection(_)
        | ReplicationError::ReplicationConnection(_)
        | ReplicationError::Timeout(_)
        | ReplicationError::Io(_)
        | ReplicationError::Backend(_)
        | ReplicationError::Cancelled(_) => ferry_core::ErrorKind::Unavailable,
        _ => ferry_core::ErrorKind::Transient,
    };
    CaptureError::new(kind, format!("postgres capture: {context}")).with_source(e)
}

fn message_name(message: &LogicalReplicationMessage) -> &'static str {
    use LogicalReplicationMessage as M;
    match message {
        M::StreamStart { .. } => "a stream start",
        M::StreamStop => "a stream stop",
        M::StreamCommit { .. } => "a stream commit",
        M::StreamAbort { .. } => "a stream abort",
        M::BeginPrepare { .. } => "a begin prepare",
        M::Prepare { .. } => "a prepare",
        M::CommitPrepared { .. } => "a commit prepared",
        M::RollbackPrepared { .. } => "a rollback prepared",
        M::StreamPrepare { .. } => "a stream prepare",
        _ => "a message",
    }
}
