//! `ferry-bench peer <setup|enqueue|work|produce>`: Ferry as a peer of the
//! bench-peers harness (`../shared/bench-peers` from the repository root),
//! driven, like the other peers' adapters, by environment variables;
//! `bench/peer-ferry.sh` and `bench/peers.json.in` register it through
//! `EXTRA_PEERS`.
//!
//! | sub-command | reads | does | prints / writes |
//! |---|---|---|---|
//! | `setup` | `DATABASE_URL` | applies Ferry's migrations | `{"ok":true}` |
//! | `enqueue` | `N` (100000), `BATCH` (1000), `KEYS` (0), `PAYLOAD` (`tiny`\|`order`), `API` (`enqueue_many`\|`sql`) | writes N messages, BATCH per statement (one statement per transaction) with `ferry_store::outbox::postgres::enqueue_many`, or with a plain multi-row INSERT when `API=sql` | `{"n","batch","secs","rate"}` |
//! | `work` | `RELAY_BATCH`, `CONC`, `POLL_MS` (defaults: `RelayConfig::default()`, i.e. 1000, 1, 500), `RETENTION` (`delete`\|`keep`), `ORDER` (`ordered`\|`unordered`), `FIRST_OUT`, `LAT_OUT` | runs a relay to a null sink; the hand-off (the moment the relay calls the sink's `deliver`) is the "handler start" | `READY` on stderr; FIRST_OUT: epoch ms of the first hand-off; on SIGTERM, LAT_OUT (when set and not empty): `[[seq, start_ms], …]` |
//! | `produce` | `RATE` (500), `SECS` (20), `COMMITS_OUT`, `KEYS` (0), `PAYLOAD`, `TX` (1) | open loop, one message per transaction (`BEGIN; enqueue; COMMIT`, or one autocommit INSERT with `TX=0`), at most 8 in flight | COMMITS_OUT: `[[seq, commit_ms, send_ms], …]`; `{"n","secs","rate","late"}` |
//!
//! Times are Unix epoch milliseconds from the system clock, as the other
//! peers' `time.time()` / `performance.timeOrigin + performance.now()`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_adapters::NullSink;
use ferry_relay::{OrderPolicy, RelayConfig};
use ferry_store::outbox::postgres::enqueue_many;
use ferry_store::{ConnectOptions, Database};
use serde_json::json;

use crate::drain::RetentionArg;
use crate::handoff::HandOffRecorder;
use crate::pipeline;
use crate::producer::{self, ProducerConfig};
use crate::workload::{self, PayloadShape};

/// The harness's sub-commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerCommand {
    /// Apply Ferry's migrations.
    Setup,
    /// Write N messages in batches.
    Enqueue,
    /// Run a relay until SIGTERM.
    Work,
    /// Produce one message per transaction at a steady rate.
    Produce,
}

const DEFAULT_URL: &str = "postgresql://postgres@127.0.0.1:25432/bench";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}")),
    }
}

fn shape() -> anyhow::Result<PayloadShape> {
    match var("PAYLOAD").as_deref() {
        None | Some("tiny") => Ok(PayloadShape::Tiny),
        Some("order") => Ok(PayloadShape::Order),
        Some(other) => bail!("PAYLOAD={other}: expected tiny or order"),
    }
}

fn report(value: serde_json::Value) {
    println!("{value}");
}

/// Runs one sub-command.
pub async fn run(command: PeerCommand) -> anyhow::Result<()> {
    let url = var("DATABASE_URL").unwrap_or_else(|| DEFAULT_URL.to_owned());
    match command {
        PeerCommand::Setup => setup(&url).await,
        PeerCommand::Enqueue => enqueue(&url).await,
        PeerCommand::Work => work(&url).await,
        PeerCommand::Produce => produce(&url).await,
    }
}

async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Database> {
    let db = Database::connect_with(
        url,
        &ConnectOptions {
            max_connections,
            lease: Some(RelayConfig::default().lease),
        },
    )
    .await
    .with_context(|| format!("cannot connect to {}", ferry_store::redact(url)))?;
    if !matches!(db, Database::Postgres(_)) {
        bail!("the bench-peers adapter needs a postgres database");
    }
    Ok(db)
}

async fn setup(url: &str) -> anyhow::Result<()> {
    let db = connect(url, 2).await?;
    db.migrate().await.context("migration failed")?;
    db.close().await;
    report(json!({"ok": true}));
    Ok(())
}

async fn enqueue(url: &str) -> anyhow::Result<()> {
    let n: usize = num("N", 100_000)?;
    let batch: usize = num("BATCH", 1000)?;
    let keys: u32 = num("KEYS", 0)?;
    let shape = shape()?;
    let api = var("API").unwrap_or_else(|| "enqueue_many".to_owned());
    let batch = batch.max(1);
    let db = connect(url, 2).await?;
    let Database::Postgres(pool) = &db else {
        unreachable!("checked by connect")
    };
    let secs = match api.as_str() {
        "enqueue_many" => {
            let mut rng = rand::thread_rng();
            let messages: Vec<_> = (0..n as u64)
                .map(|i| workload::message(i, keys, shape, &mut rng))
                .collect();
            let mut conn = pool.acquire().await?;
            let t0 = Instant::now();
            for chunk in messages.chunks(batch) {
                enqueue_many(&mut conn, chunk).await?;
            }
            t0.elapsed()
        }
        "sql" => {
            let rows = Arc::new(workload::rows(n, keys, shape));
            workload::insert_all(&db, rows, batch, 1).await?
        }
        other => bail!("API={other}: expected enqueue_many or sql"),
    };
    db.close().await;
    let secs = secs.as_secs_f64();
    report(json!({"n": n, "batch": batch, "secs": secs, "rate": n as f64 / secs, "api": api}));
    Ok(())
}

async fn work(url: &str) -> anyhow::Result<()> {
    let defaults = RelayConfig::default();
    let concurrency: usize = num("CONC", defaults.concurrency)?;
    let batch_size: u32 = num("RELAY_BATCH", defaults.batch_size)?;
    let poll_ms: u64 = num("POLL_MS", defaults.poll_interval.as_millis() as u64)?;
    let retention = match var("RETENTION").as_deref() {
        None | Some("delete") => RetentionArg::Delete,
        Some("keep") => RetentionArg::Keep,
        Some(other) => bail!("RETENTION={other}: expected delete or keep"),
    };
    let order = match var("ORDER").as_deref() {
        None | Some("ordered") => OrderPolicy::Ordered,
        Some("unordered") => OrderPolicy::Unordered,
        Some(other) => bail!("ORDER={other}: expected ordered or unordered"),
    };
    let lat_out = var("LAT_OUT");
    let db = connect(url, concurrency as u32 + 2).await?;

    let mut recorder = HandOffRecorder::new(Arc::new(NullSink::new()));
    if lat_out.is_some() {
        recorder = recorder.recording_each(100_000);
    }
    if let Some(path) = var("FIRST_OUT") {
        recorder = recorder.on_first(move |at| {
            if let Err(e) = std::fs::write(&path, at.epoch_ms.to_string()) {
                eprintln!("cannot write FIRST_OUT {path}: {e}");
            }
        });
    }
    let recorder = Arc::new(recorder);
    let config = RelayConfig {
        name: "bench-peer".to_owned(),
        batch_size,
        concurrency,
        order,
        poll_interval: Duration::from_millis(poll_ms.max(1)),
        retention: retention.relay(),
        ..defaults
    };
    let relay = pipeline::spawn(&db, recorder.clone(), config);
    eprintln!("READY");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let died = async {
        while !relay.has_ended() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let code = tokio::select! {
        _ = term.recv() => 0,
        _ = tokio::signal::ctrl_c() => 0,
        _ = died => {
            eprintln!("the relay stopped on its own");
            1
        }
    };
    // Written at once, as the other peers do: the driver gives 10 s before SIGKILL.
    if let Some(path) = lat_out {
        let starts: Vec<(u64, f64)> = recorder
            .each()
            .into_iter()
            .map(|(seq, at)| (seq, at.epoch_ms))
            .collect();
        std::fs::write(&path, serde_json::to_vec(&starts)?)
            .with_context(|| format!("cannot write LAT_OUT {path}"))?;
    }
    std::process::exit(code);
}

async fn produce(url: &str) -> anyhow::Result<()> {
    let out = var("COMMITS_OUT").context("COMMITS_OUT is not set")?;
    let produced = producer::produce(ProducerConfig {
        url: url.to_owned(),
        rate: num("RATE", 500.0)?,
        secs: num("SECS", 20.0)?,
        keys: num("KEYS", 0)?,
        shape: shape()?,
        in_transaction: num::<u8>("TX", 1)? != 0,
        max_in_flight: 8,
    })
    .await?;
    let commits: Vec<(u64, f64, f64)> = produced
        .commits
        .iter()
        .map(|c| (c.seq, c.committed.epoch_ms, c.sent.epoch_ms))
        .collect();
    std::fs::write(&out, serde_json::to_vec(&commits)?)
        .with_context(|| format!("cannot write COMMITS_OUT {out}"))?;
    let n = commits.len();
    report(
        json!({"n": n, "secs": produced.secs, "rate": n as f64 / produced.secs, "late": produced.late}),
    );
    Ok(())
}
