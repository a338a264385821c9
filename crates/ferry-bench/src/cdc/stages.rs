//! Where a snapshot row's time goes on the client, without a database:
//! changes shaped like `cdc snapshot-pg`'s rows are built, encoded, cloned
//! as the delivery engine clones them for the sink, and dropped, each
//! stage timed on its own; then `ferry_cdc::ship` drains the same changes
//! from memory to the null sink. A diagnosis of the per-row cost (no
//! baseline: the database side is `snapshot-pg`'s).

use std::time::{Duration, Instant};

use ferry_cdc::{
    Capture, CaptureError, Captured, Change, Checkpoint, Encoder, Format, Op, Position, Row,
    Source, TableId,
};
use ferry_core::Message;
use serde_json::Value;

use super::{cpu_time, null_sink, per_sec, Shipping, TABLE};
use crate::report::{thousands, Figure, Tsv};

/// `cdc snapshot-stages`.
#[derive(clap::Args, Debug)]
pub struct StagesArgs {
    /// Changes to time.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Changes per batch (a snapshot chunk, a read of `ship`).
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
}

/// A snapshot read change of row `seq`, built the way the PostgreSQL
/// snapshot builds one (`row_change`): owned names and values, the key's
/// JSON text as the position.
fn snapshot_change(seq: u64, started: chrono::DateTime<chrono::Utc>) -> Change {
    let seq_text = seq.to_string();
    let amount_text = (seq % 1000).to_string();
    let note = format!("note {seq:0>64}");
    let columns = [
        ("seq", Some(seq_text.as_str()), true),
        ("kind", Some("order"), false),
        ("amount", Some(amount_text.as_str()), true),
        ("note", Some(note.as_str()), false),
    ];
    let mut after = Row::new();
    let mut key = Row::new();
    for (name, text, number) in columns {
        let value = match text {
            Some(t) if number => t
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(t.to_owned())),
            Some(t) => Value::String(t.to_owned()),
            None => Value::Null,
        };
        if name == "seq" {
            key.insert(name.to_owned(), value.clone());
        }
        after.insert(name.to_owned(), value);
    }
    let position = serde_json::to_string(&key).unwrap_or_default();
    Change {
        op: Op::Read,
        key,
        before: None,
        after: Some(after),
        source: Source {
            db: "bench".to_owned(),
            table: TableId::new("public", TABLE),
            position: Position::Snapshot {
                snapshot: "0/1A2B3C4D".to_owned(),
                key: position,
            },
            tx_id: None,
            commit_time: Some(started),
        },
        tx: None,
        unchanged: vec![],
    }
}

/// A batch of changes `from..to`, the last with a checkpoint (a chunk's).
fn batch(from: u64, to: u64, started: chrono::DateTime<chrono::Utc>) -> Vec<Captured> {
    (from..to)
        .map(|seq| Captured {
            change: snapshot_change(seq, started),
            checkpoint: (seq + 1 == to).then(|| Checkpoint(Value::from(seq))),
        })
        .collect()
}

/// Hands out `rows` snapshot-shaped changes, `batch` at a time at most.
struct Synthetic {
    next: u64,
    rows: u64,
    batch: u64,
    started: chrono::DateTime<chrono::Utc>,
}

impl Capture for Synthetic {
    fn connector(&self) -> &'static str {
        "postgresql"
    }

    fn database(&self) -> &str {
        "bench"
    }

    async fn read(&mut self, max: usize, wait: Duration) -> Result<Vec<Captured>, CaptureError> {
        if self.next >= self.rows {
            tokio::time::sleep(wait.min(Duration::from_millis(5))).await;
            return Ok(Vec::new());
        }
        let to = (self.next + self.batch.min(max as u64)).min(self.rows);
        let out = batch(self.next, to, self.started);
        self.next = to;
        Ok(out)
    }

    async fn acknowledge(&mut self, _checkpoint: &Checkpoint) -> Result<(), CaptureError> {
        Ok(())
    }
}

/// Time per stage, summed over the batches.
#[derive(Default)]
struct Stages {
    build: Duration,
    encode: Duration,
    clone: Duration,
    drop_changes: Duration,
    drop_messages: Duration,
}

pub async fn run(args: &StagesArgs, tsv: &Tsv) -> anyhow::Result<()> {
    let n = args.rows.max(1);
    let size = args.batch.max(1);
    let started = chrono::Utc::now();
    let encoder = Encoder {
        capture: "bench".to_owned(),
        topic_prefix: "bench".to_owned(),
        format: Format::Ferry,
        connector: "postgresql",
    };
    let mut t = Stages::default();
    let mut bytes = 0usize;
    let mut from = 0;
    while from < n {
        let to = (from + size).min(n);
        let clock = Instant::now();
        let changes = batch(from, to, started);
        t.build += clock.elapsed();
        let clock = Instant::now();
        let messages = encoder.messages(changes.iter().map(|c| &c.change));
        t.encode += clock.elapsed();
        bytes += messages.iter().map(|m| m.payload.len()).sum::<usize>();
        // What the delivery engine does with each message of a wave: a
        // clone handed to the sink, dropped after it.
        let clock = Instant::now();
        let wave: Vec<Message> = messages.to_vec();
        drop(wave);
        t.clone += clock.elapsed();
        let clock = Instant::now();
        drop(changes);
        t.drop_changes += clock.elapsed();
        let clock = Instant::now();
        drop(messages);
        t.drop_messages += clock.elapsed();
        from = to;
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    let sum = t.build + t.encode + t.clone + t.drop_changes + t.drop_messages;

    // The whole engine, from memory to the null sink.
    let capture = Synthetic {
        next: 0,
        rows: n,
        batch: size,
        started,
    };
    let cpu_start = cpu_time();
    let clock = Instant::now();
    let shipping = Shipping::spawn(capture, null_sink(), "bench");
    let done = shipping
        .until_delivered(n, Duration::from_secs(900))
        .await?;
    let shipped = done - clock;
    let cpu = cpu_start.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
    shipping.stop().await?;
    let ship_rate = per_sec(n, shipped);
    let ship_cpu = cpu.map_or("unknown".to_owned(), |c| format!("{:.2} µs", us(c)));

    println!(
        "snapshot-shaped changes ({n}, {:.0} body bytes each), one core, per row: build {:.2} µs, \
         encode {:.2} µs, the engine's clone for the sink {:.2} µs, drop change {:.2} µs, drop \
         message {:.2} µs; sum {:.2} µs = {} rows/s  |  ferry_cdc::ship from memory (building \
         included) → null: {} rows/s, process CPU {ship_cpu}/row",
        bytes as f64 / n as f64,
        us(t.build),
        us(t.encode),
        us(t.clone),
        us(t.drop_changes),
        us(t.drop_messages),
        us(sum),
        thousands(per_sec(n, sum)),
        thousands(ship_rate),
    );
    tsv.append(&Figure {
        command: "cdc",
        database: "none".to_owned(),
        server: String::new(),
        sink: "null".to_owned(),
        figure: "cdc_snapshot_stages_ship".to_owned(),
        run: 1,
        value: ship_rate,
        unit: "changes/s",
        baseline: "stages_sum_one_core".to_owned(),
        baseline_value: Some(per_sec(n, sum)),
        settings: format!("rows={n} batch={size}"),
        notes: format!(
            "build_us={:.3} encode_us={:.3} clone_us={:.3} drop_change_us={:.3} drop_message_us={:.3} ship_cpu={ship_cpu}",
            us(t.build),
            us(t.encode),
            us(t.clone),
            us(t.drop_changes),
            us(t.drop_messages)
        ),
    })?;
    Ok(())
}
