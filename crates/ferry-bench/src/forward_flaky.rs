//! `ferry-bench forward-flaky`: the `ferry forward` CLI end to end against a
//! webhook that refuses a share of its requests with `503`, for one or more
//! `ferry` binaries (e.g. before and after a change), alternated run by run
//! so that each sees the same conditions.
//!
//! Per run and binary: a scratch SQLite file migrated by that binary
//! (`ferry migrate`); `--events` events from `--sources` sources appended
//! with `Database::append_events` before the clock starts; then `ferry
//! forward --database … --to <receiver> --name bench` with its defaults,
//! as a child process, killed afterwards. The receiver ([`Receiver`], on
//! its own thread) answers `--refuse` of its requests `503` — a seeded RNG
//! decides request by request, the same sequence for every binary of a
//! run — and the others `200`, applying each `ce-id` once. Rate = events /
//! (time from spawning the child until every event id has been applied).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ferry_store::event_store::NewEvent;
use ferry_store::{ConnectOptions, Database};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::receiver::Receiver;
use crate::report::{median, ratio, thousands, Figure, Tsv};
use crate::scratch::{Scratch, Server};

/// `ferry-bench forward-flaky` options.
#[derive(clap::Args, Clone, Debug)]
pub struct ForwardFlakyArgs {
    /// A `ferry` binary; give it several times to compare them (ratios are
    /// to the first).
    #[arg(long = "ferry", required = true)]
    pub ferry: Vec<PathBuf>,
    /// Events in the store.
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
    /// Sources (`order`/`0`, `order`/`1`, …) the events are spread over.
    #[arg(long, default_value_t = 20)]
    pub sources: usize,
    /// Share of requests the webhook answers `503`.
    #[arg(long, default_value_t = 0.15)]
    pub refuse: f64,
    /// Seed of the RNG that picks the refused requests (plus the run number).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runs per binary; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the scratch SQLite files go: `sqlite://` (temp dir) or
    /// `sqlite:///some/dir`.
    #[arg(long, default_value = "sqlite://")]
    pub database: String,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// The webhook's state: which requests it refuses, which ids it applied.
struct Flaky {
    refuse: f64,
    expected: HashSet<String>,
    requests: Arc<AtomicU64>,
    state: Mutex<FlakyState>,
}

struct FlakyState {
    rng: StdRng,
    applied: HashSet<String>,
    refused: u64,
    all_applied: Option<Instant>,
}

async fn flaky(
    State(f): State<Arc<Flaky>>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> StatusCode {
    f.requests.fetch_add(1, Ordering::Relaxed);
    let mut s = f.state.lock().unwrap_or_else(PoisonError::into_inner);
    if s.rng.gen_bool(f.refuse) {
        s.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let id = headers.get("ce-id").and_then(|v| v.to_str().ok());
    if let Some(id) = id.filter(|id| f.expected.contains(*id)) {
        if s.applied.insert(id.to_owned()) && s.applied.len() == f.expected.len() {
            s.all_applied = Some(Instant::now());
        }
    }
    StatusCode::OK
}

struct Pass {
    secs: f64,
    requests: u64,
    refused: u64,
}

/// Runs the scenario for every binary, alternated, and prints the figures.
pub async fn run(args: &ForwardFlakyArgs, tsv: &Tsv) -> anyhow::Result<()> {
    ensure!(
        args.events > 0 && args.sources > 0 && args.runs > 0,
        "--events, --sources and --runs must be at least 1"
    );
    ensure!(
        (0.0..1.0).contains(&args.refuse),
        "--refuse must be in [0, 1)"
    );
    let server = Server::parse(&args.database)?;
    ensure!(
        server.label() == "sqlite",
        "forward-flaky runs on SQLite files"
    );
    let described = server.describe().await?;
    println!(
        "== forward-flaky: `ferry forward` (defaults) to a webhook answering {:.0}% of requests 503 (seed {}), \
         {} events from {} sources, {} run(s) per binary, binaries alternated",
        args.refuse * 100.0,
        args.seed,
        thousands(args.events as f64),
        args.sources,
        args.runs
    );
    println!("   database: {described}; a fresh file per pass, migrated by the binary under test");
    let settings = format!(
        "events={} sources={} refuse={} seed={}",
        args.events, args.sources, args.refuse, args.seed
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); args.ferry.len()];
    for r in 1..=args.runs {
        let mut first = None;
        for (b, ferry) in args.ferry.iter().enumerate() {
            let seed = args.seed.wrapping_add(r as u64);
            let scratch = server.create().await?;
            let pass = pass(&scratch, ferry, args, seed).await;
            scratch.remove().await;
            let pass = pass.with_context(|| format!("{} (run {r})", ferry.display()))?;
            let rate = args.events as f64 / pass.secs;
            println!(
                "   run {r}/{} {}: {} events/s ({:.2} s, {} requests, {} refused){}",
                args.runs,
                ferry.display(),
                thousands(rate),
                pass.secs,
                thousands(pass.requests as f64),
                thousands(pass.refused as f64),
                first.map_or(String::new(), |f| format!(" | ÷ first {}", ratio(rate, f)))
            );
            tsv.append(&Figure {
                command: "forward-flaky",
                database: "sqlite".to_owned(),
                server: described.clone(),
                sink: "http".to_owned(),
                figure: "forward_flaky".to_owned(),
                run: r,
                value: rate,
                unit: "events/s",
                baseline: first.map_or(String::new(), |_| {
                    format!("forward_flaky {}", args.ferry[0].display())
                }),
                baseline_value: first,
                settings: format!("ferry={} {settings}", ferry.display()),
                notes: format!(
                    "secs={:.3} requests={} refused={}",
                    pass.secs, pass.requests, pass.refused
                ),
            })?;
            first.get_or_insert(rate);
            rates[b].push(rate);
        }
    }
    let base = median(&rates[0]);
    for (ferry, rates) in args.ferry.iter().zip(&rates) {
        println!(
            "   median of {}: {} events/s {} (÷ first {})",
            args.runs,
            thousands(median(rates)),
            ferry.display(),
            ratio(median(rates), base)
        );
    }
    Ok(())
}

/// One binary on one fresh file: migrate, append, forward until all applied.
async fn pass(
    scratch: &Scratch,
    ferry: &Path,
    args: &ForwardFlakyArgs,
    seed: u64,
) -> anyhow::Result<Pass> {
    let out = tokio::process::Command::new(ferry)
        .args(["migrate", "--database", &scratch.url])
        .output()
        .await
        .with_context(|| format!("cannot run {}", ferry.display()))?;
    ensure!(
        out.status.success(),
        "`ferry migrate` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let payload = format!(
        r#"{{"order_id":12345,"reason":"customer request","note":"{}"}}"#,
        "x".repeat(150)
    );
    let events: Vec<NewEvent> = (0..args.events)
        .map(|i| {
            NewEvent::new("order.cancelled", payload.clone().into_bytes())
                .with_source("order", (i % args.sources).to_string())
        })
        .collect();
    let options = ConnectOptions {
        max_connections: 1,
        ..ConnectOptions::default()
    };
    let db = Database::connect_with(&scratch.url, &options).await?;
    for chunk in events.chunks(1000) {
        db.append_events(chunk).await?;
    }
    db.close().await;

    let requests = Arc::new(AtomicU64::new(0));
    let webhook = Arc::new(Flaky {
        refuse: args.refuse,
        expected: events.iter().map(|e| e.id.to_string()).collect(),
        requests: requests.clone(),
        state: Mutex::new(FlakyState {
            rng: StdRng::seed_from_u64(seed),
            applied: HashSet::new(),
            refused: 0,
            all_applied: None,
        }),
    });
    let app = axum::Router::new()
        .route("/hook", post(flaky))
        .with_state(webhook.clone());
    let receiver = Receiver::serve(app, requests)?;

    // Its log (a warning per refused request) goes to a file, shown on failure.
    let log_path = std::env::temp_dir().join(format!(
        "{}forward_{:016x}.log",
        crate::scratch::PREFIX,
        rand::random::<u64>()
    ));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(ferry)
        .args(["forward", "--database", &scratch.url, "--to"])
        .arg(receiver.url())
        .args(["--name", "bench"])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", ferry.display()))?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let result = loop {
        let done = webhook
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .all_applied;
        if let Some(at) = done {
            break Ok(at.duration_since(started));
        }
        if let Some(status) = child.try_wait()? {
            break Err(anyhow::anyhow!("`ferry forward` exited early: {status}"));
        }
        if started.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "not every event was applied within {} s",
                args.timeout_secs
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let _ = child.kill().await;
    receiver.stop();
    let result = match result {
        Ok(elapsed) => elapsed,
        Err(e) => {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let _ = std::fs::remove_file(&log_path);
            let applied = webhook
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .applied
                .len();
            bail!(
                "{e:#} ({applied} of {} applied); its log ends:\n{}",
                args.events,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    let _ = std::fs::remove_file(&log_path);
    let state = webhook.state.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(Pass {
        secs: result.as_secs_f64(),
        requests: webhook.requests.load(Ordering::Relaxed),
        refused: state.refused,
    })
}
