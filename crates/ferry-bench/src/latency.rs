//! `ferry-bench latency`: commit-to-hand-off latency on PostgreSQL.
//!
//! A relay runs (woken by the outbox trigger's NOTIFY) with a null sink
//! wrapped in a [`HandOffRecorder`] that stamps the moment `deliver()` is
//! called. An open-loop [producer](crate::producer) on its own thread
//! writes one message per transaction at `--rate` for `--secs` and stamps
//! the moment each commit returned. Latency = hand-off − commit returned,
//! on the process's monotonic clock; the first second is dropped as
//! warm-up. The baseline beside it is the commit itself (send → commit
//! returned), measured by the same producer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use ferry_adapters::NullSink;

use crate::handoff::HandOffRecorder;
use crate::pipeline;
use crate::producer::{self, ProducerConfig};
use crate::relay::RelayArgs;
use crate::report::{median, percentile, Figure, Tsv};
use crate::scratch::Server;
use crate::workload::PayloadShape;

/// `ferry-bench latency` options.
#[derive(clap::Args, Clone, Debug)]
pub struct LatencyArgs {
    /// A PostgreSQL server (see `drain --database`).
    #[arg(long)]
    pub database: String,
    /// Messages per second, one per transaction.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of producing per run.
    #[arg(long, default_value_t = 20.0)]
    pub secs: f64,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The relay's settings.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Distinct ordering keys (0: no key).
    #[arg(long, default_value_t = 1000)]
    pub keys: u32,
    /// One autocommit INSERT per message instead of BEGIN; INSERT; COMMIT.
    #[arg(long)]
    pub autocommit: bool,
    /// Seconds dropped at the start as warm-up.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

/// The medians of a `latency`.
#[derive(Clone, Debug)]
pub struct LatencySummary {
    /// Commit → hand-off, ms.
    pub p50: f64,
    /// Commit → hand-off, ms.
    pub p99: f64,
    /// Commit → hand-off, ms.
    pub max: f64,
    /// Send → commit returned, ms.
    pub ack_p50: f64,
    /// Send → commit returned, ms.
    pub ack_p99: f64,
    /// The rate asked for.
    pub rate: f64,
}

struct RunResult {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    counted: usize,
    negative: usize,
    missing: usize,
    ack_p50: f64,
    ack_p99: f64,
    achieved: f64,
    late: u64,
}

/// Runs the latency benchmark; prints each run and the medians.
pub async fn run(args: &LatencyArgs, tsv: &Tsv) -> anyhow::Result<LatencySummary> {
    ensure!(
        args.rate > 0.0 && args.secs > 0.0 && args.runs > 0,
        "--rate, --secs and --runs must be positive"
    );
    let server = Server::parse(&args.database)?;
    let Server::Postgres { .. } = server else {
        bail!("latency needs a postgres:// server (the relay is woken by NOTIFY)");
    };
    let described = server.describe().await?;
    println!(
        "== latency postgres: commit -> hand-off to the sink, {} msg/s for {} s ({} per transaction, {} keys), relay batch {}, {} worker(s), first {} s dropped, {} run(s)",
        args.rate,
        args.secs,
        if args.autocommit { "one autocommit INSERT" } else { "BEGIN; INSERT; COMMIT" },
        args.keys,
        args.relay.batch_size,
        args.relay.concurrency,
        args.warmup,
        args.runs
    );
    println!("   database: {described}; a fresh database per run");
    println!("   producer: open loop on its own thread and runtime, at most 8 sends in flight; baseline: commit ack = send -> commit returned");
    let settings = format!(
        "rate={} secs={} batch_size={} concurrency={} keys={} autocommit={}",
        args.rate,
        args.secs,
        args.relay.batch_size,
        args.relay.concurrency,
        args.keys,
        args.autocommit
    );
    let mut runs = Vec::new();
    for r in 1..=args.runs {
        let res = one_run(&server, args).await?;
        println!(
            "   run {r}/{}: p50 {:.2} ms | p90 {:.2} | p99 {:.2} | max {:.2} \
             (n={}, {} before their commit ack, {} missing) \
             | commit ack p50 {:.2} ms, p99 {:.2} | producer {:.0}/s, {} late",
            args.runs,
            res.p50,
            res.p90,
            res.p99,
            res.max,
            res.counted,
            res.negative,
            res.missing,
            res.ack_p50,
            res.ack_p99,
            res.achieved,
            res.late
        );
        let notes = format!(
            "n={} p90={:.2} max={:.2} started_before_commit_ack={} missing={} producer_rate={:.0} late={}",
            res.counted, res.p90, res.max, res.negative, res.missing, res.achieved, res.late
        );
        for (name, value, base_name, base) in [
            ("handoff_p50", res.p50, "commit_ack_p50", Some(res.ack_p50)),
            ("handoff_p99", res.p99, "commit_ack_p99", Some(res.ack_p99)),
            ("handoff_max", res.max, "", None),
        ] {
            tsv.append(&Figure {
                command: "latency",
                database: "postgres".to_owned(),
                server: described.clone(),
                sink: "null".to_owned(),
                figure: name.to_owned(),
                run: r,
                value,
                unit: "ms",
                baseline: base_name.to_owned(),
                baseline_value: base,
                settings: settings.clone(),
                notes: notes.clone(),
            })?;
        }
        runs.push(res);
    }
    let m = |f: fn(&RunResult) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let summary = LatencySummary {
        p50: m(|r| r.p50),
        p99: m(|r| r.p99),
        max: m(|r| r.max),
        ack_p50: m(|r| r.ack_p50),
        ack_p99: m(|r| r.ack_p99),
        rate: args.rate,
    };
    println!(
        "   median of {}: commit -> hand-off p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | commit ack p50 {:.2} ms, p99 {:.2} ms",
        args.runs, summary.p50, summary.p99, summary.max, summary.ack_p50, summary.ack_p99
    );
    Ok(summary)
}

async fn one_run(server: &Server, args: &LatencyArgs) -> anyhow::Result<RunResult> {
    let conns = args.relay.concurrency as u32 + 2;
    server
        .with_fresh(conns, |url, db| async move {
            let n = (args.rate * args.secs).round() as usize;
            let recorder =
                Arc::new(HandOffRecorder::new(Arc::new(NullSink::new())).recording_each(n));
            let relay = pipeline::spawn(&db, recorder.clone(), args.relay.config("bench"));
            // As the harness does: the worker is up, then one more second.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let produced = producer::produce_on_own_thread(ProducerConfig {
                url,
                rate: args.rate,
                secs: args.secs,
                keys: args.keys,
                shape: PayloadShape::Order,
                in_transaction: !args.autocommit,
                max_in_flight: 8,
            })
            .await;
            // Until every committed message was handed off (a redelivery
            // counts once), or 10 s.
            let committed = produced.as_ref().map_or(0, |p| p.commits.len());
            let deadline = Instant::now() + Duration::from_secs(10);
            while recorder.distinct() < committed && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            relay.stop().await;
            let produced = produced?;

            let mut handed: HashMap<u64, Instant> = HashMap::with_capacity(n);
            for (seq, at) in recorder.each() {
                handed.entry(seq).or_insert(at.at);
            }
            let warm = (args.rate * args.warmup).round() as u64;
            let mut lats = Vec::with_capacity(n);
            let mut missing = 0;
            for c in &produced.commits {
                match handed.get(&c.seq) {
                    None => missing += 1,
                    Some(&h) if c.seq >= warm => lats.push(signed_ms(h, c.committed.at)),
                    Some(_) => {}
                }
            }
            ensure!(
                missing == 0,
                "{missing} of {} committed messages were never handed off to the sink",
                produced.commits.len()
            );
            ensure!(
                !lats.is_empty(),
                "no message was handed off after the warm-up"
            );
            lats.sort_by(f64::total_cmp);
            let mut acks: Vec<f64> = produced
                .commits
                .iter()
                .map(|c| signed_ms(c.committed.at, c.sent.at))
                .collect();
            acks.sort_by(f64::total_cmp);
            Ok(RunResult {
                p50: percentile(&lats, 50.0),
                p90: percentile(&lats, 90.0),
                p99: percentile(&lats, 99.0),
                max: *lats.last().unwrap_or(&f64::NAN),
                counted: lats.len(),
                negative: lats.iter().filter(|l| **l < 0.0).count(),
                missing,
                ack_p50: percentile(&acks, 50.0),
                ack_p99: percentile(&acks, 99.0),
                achieved: produced.commits.len() as f64 / produced.secs,
                late: produced.late,
            })
        })
        .await
}

/// `a - b` in milliseconds, negative when `a` came first.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64() * 1000.0
    } else {
        -((b - a).as_secs_f64() * 1000.0)
    }
}
