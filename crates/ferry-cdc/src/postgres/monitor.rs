//! Watching a slot from outside the stream: the WAL it makes the server
//! keep, a warning when that passes a threshold, and optional heartbeat
//! writes.
//!
//! The capture already confirms the server's position whenever everything
//! it handed over is acknowledged and the stream carries nothing to
//! capture, so an idle or filtered-out database does not make its slot
//! grow. What it cannot help is a capture that is stopped, stuck on a sink
//! that is down, or behind: then the slot retains WAL until the disk
//! fills, unless the server caps it (`max_slot_wal_keep_size`, after which
//! the slot is lost and the capture must start over). The monitor makes
//! that visible before it hurts: the retained bytes as a metric, and a
//! warning logged once when they pass the threshold (and once when they
//! are back under it).
//!
//! Heartbeats (`heartbeat`) write a tiny non-transactional logical
//! decoding message (`pg_logical_emit_message(false, 'ferry_cdc_heartbeat',
//! '')`) into the captured database now and then: a record in *this*
//! database's WAL that the stream reads and passes by, so the confirmed
//! position moves on even where the server would not otherwise send this
//! database's walsender anything new (Debezium's `heartbeat.action.query`
//! does the same with a table write).

use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::time::Instant;

use super::setup::{self, sql_failure, SlotStatus};
use super::PgLogConfig;
use crate::capture::CaptureError;

/// The prefix of heartbeat messages.
pub const HEARTBEAT_PREFIX: &str = "ferry_cdc_heartbeat";

/// Watches one capture's slot.
pub struct SlotMonitor {
    slot: String,
    pool: PgPool,
    warn_bytes: u64,
    heartbeat: Option<Duration>,
    last_beat: Option<Instant>,
    /// Whether the last check found the slot over the threshold.
    over: bool,
}

impl SlotMonitor {
    /// A monitor of `config`'s slot that warns above `warn_bytes` of
    /// retained WAL and writes a heartbeat every `heartbeat`, if set.
    pub async fn connect(
        config: &PgLogConfig,
        warn_bytes: u64,
        heartbeat: Option<Duration>,
    ) -> Result<Self, CaptureError> {
        config.validate()?;
        Ok(Self {
            slot: config.slot_name(),
            pool: setup::pool(config).await?,
            warn_bytes,
            heartbeat,
            last_beat: None,
            over: false,
        })
    }

    /// Writes a heartbeat when one is due, then reads the slot; logs a
    /// warning when its retained WAL went over the threshold (an info line
    /// when back under). `None` when the slot does not exist (yet).
    pub async fn check(&mut self) -> Result<Option<SlotStatus>, CaptureError> {
        if let Some(every) = self.heartbeat {
            if self.last_beat.is_none_or(|t| t.elapsed() >= every) {
                sqlx::query("SELECT pg_logical_emit_message(false, $1, '')::text")
                    .bind(HEARTBEAT_PREFIX)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| sql_failure("postgres capture: writing a heartbeat", e))?;
                self.last_beat = Some(Instant::now());
            }
        }
        let status = setup::slot_status(&self.pool, &self.slot).await?;
        let retained = status
            .as_ref()
            .and_then(|s| s.retained_wal_bytes)
            .unwrap_or(0);
        let over = retained > self.warn_bytes;
        if over != self.over {
            self.over = over;
            if over {
                tracing::warn!(
                    slot = %self.slot,
                    retained_bytes = retained,
                    threshold = self.warn_bytes,
                    "cdc slot retains more WAL than the threshold: the capture is stopped, \
                     behind or blocked by its sink; the server keeps this WAL until it catches \
                     up (cap it with max_slot_wal_keep_size)"
                );
            } else {
                tracing::info!(slot = %self.slot, retained_bytes = retained,
                    "cdc slot's retained WAL is back under the threshold");
            }
        }
        Ok(status)
    }

    /// Whether the last check found the slot over the threshold.
    pub fn over_threshold(&self) -> bool {
        self.over
    }
}
