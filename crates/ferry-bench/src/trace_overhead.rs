//! `ferry-bench trace-overhead`: a relay's drain rate with tracing off and
//! on, side by side in one run (issue 12: tracing on adds at most 10%).
//!
//! * **off**: no OpenTelemetry layer; messages are built without a span,
//!   so they carry no `traceparent`; the relay's spans are disabled
//!   callsites.
//! * **on**: the daemon's own export (`crates/ferry/src/telemetry.rs`:
//!   OTLP http/protobuf, batch span processor) to an OTLP receiver on
//!   127.0.0.1 in this process (its own thread), which decodes every
//!   request; each message carries a producer's `traceparent` (as a
//!   traced producer writes it; the producers' spans are theirs, not
//!   made here), and the relay makes a `ferry.deliver` span per message,
//!   a child of its producer's span.
//!
//! Each pass runs on a runtime of its own (2 workers) whose threads have
//! the pass's subscriber as their default, on a fresh database filled with
//! the same number of messages; passes alternate off, on, off, on … so
//! that drift on a shared machine hits both. Drain rate = N / (time from
//! the relay's start until it has delivered all N). The "on" pass also
//! reports the spans the receiver got: fewer than N means
//! the batch processor dropped some (its queue was full).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::Message;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use rand::Rng as _;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::destination::{Destination, SinkKind};
use crate::relay::RelayArgs;
use crate::report::{median, ratio, thousands, Figure, Tsv};
use crate::scratch::Server;
use crate::workload::{self, PayloadShape};

// The daemon's OTLP export, the one `[telemetry]` configures.
#[path = "../../ferry/src/telemetry.rs"]
mod telemetry;

use telemetry::{Protocol, Telemetry, TelemetryConfig};

/// `ferry-bench trace-overhead` options.
#[derive(clap::Args, Clone, Debug)]
pub struct TraceOverheadArgs {
    /// Where the scratch databases are made: `postgres://user@host:port/db`
    /// or `sqlite://` (temp dir) / `sqlite:///some/dir`.
    #[arg(long, default_value = "sqlite://")]
    pub database: String,
    /// The sink the relay delivers to.
    #[arg(long, value_enum, default_value_t = SinkKind::Null)]
    pub sink: SinkKind,
    /// Messages per pass.
    #[arg(long, default_value_t = 50_000)]
    pub messages: usize,
    /// Messages of one producer trace (one request producing that many) in
    /// the "on" passes.
    #[arg(long, default_value_t = 1)]
    pub per_span: usize,
    /// The relay's settings.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Distinct ordering keys (0: no key).
    #[arg(long, default_value_t = 1000)]
    pub keys: u32,
    /// Pairs of passes (off then on); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// NATS server, for `--sink nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Give up on a drain after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// What one pass measured.
struct Pass {
    drain: Duration,
    spans: u64,
}

/// Runs the comparison; prints each pass and the medians.
pub async fn run(args: &TraceOverheadArgs, tsv: &Tsv) -> anyhow::Result<()> {
    ensure!(
        args.messages > 0 && args.runs > 0 && args.per_span > 0,
        "--messages, --runs and --per-span must be positive"
    );
    let server = Server::parse(&args.database)?;
    let db_label = server.label();
    let described = server.describe().await?;
    let collector = Collector::start()?;
    let n = args.messages;
    let settings = format!(
        "messages={n} batch_size={} concurrency={} keys={} per_span={}",
        args.relay.batch_size, args.relay.concurrency, args.keys, args.per_span
    );
    println!(
        "== trace-overhead {db_label} -> {}: {} messages per pass, relay batch {}, {} worker(s) asked, {} pair(s) of passes (off, on)",
        args.sink.label(),
        thousands(n as f64),
        args.relay.batch_size,
        args.relay.concurrency,
        args.runs
    );
    println!(
        "   database: {described}; on = OTLP http/protobuf batch export to {} (in-process receiver, own thread), {} message(s) per producer trace",
        collector.url, args.per_span
    );
    let (mut offs, mut ons) = (Vec::new(), Vec::new());
    for r in 1..=args.runs {
        for traced in [false, true] {
            let pass = isolated(args.clone(), server.clone(), traced, collector.clone()).await?;
            let rate = n as f64 / pass.drain.as_secs_f64();
            let label = if traced { "on " } else { "off" };
            let spans = if traced {
                format!(", {} spans exported", thousands(pass.spans as f64))
            } else {
                String::new()
            };
            println!(
                "   run {r}/{} tracing {label}: relay drain {} msg/s ({:.2} s{spans})",
                args.runs,
                thousands(rate),
                pass.drain.as_secs_f64()
            );
            let baseline =
                (traced && !offs.is_empty()).then(|| ("tracing_off", offs[offs.len() - 1]));
            tsv.append(&Figure {
                command: "trace-overhead",
                database: db_label.to_owned(),
                server: described.clone(),
                sink: args.sink.label().to_owned(),
                figure: if traced {
                    "relay_drain_traced"
                } else {
                    "relay_drain"
                }
                .to_owned(),
                run: r,
                value: rate,
                unit: "msg/s",
                baseline: baseline.map(|b| b.0.to_owned()).unwrap_or_default(),
                baseline_value: baseline.map(|b| b.1),
                settings: settings.clone(),
                notes: format!("secs={:.3} spans={}", pass.drain.as_secs_f64(), pass.spans),
            })?;
            if traced {
                ons.push(rate);
            } else {
                offs.push(rate);
            }
        }
    }
    let (off, on) = (median(&offs), median(&ons));
    println!(
        "   median: off {} msg/s, on {} msg/s: on/off {} (overhead {:.1}%)",
        thousands(off),
        thousands(on),
        ratio(on, off),
        (1.0 - on / off) * 100.0
    );
    Ok(())
}

/// One pass on a runtime of its own, whose threads all have the pass's
/// subscriber (the OpenTelemetry layer, or none) as their default.
async fn isolated(
    args: TraceOverheadArgs,
    server: Server,
    traced: bool,
    collector: Collector,
) -> anyhow::Result<Pass> {
    tokio::task::spawn_blocking(move || {
        let telemetry = if traced {
            Some(Telemetry::start(&TelemetryConfig {
                endpoint: collector.url.clone(),
                service_name: "ferry-bench".to_owned(),
                protocol: Protocol::HttpProtobuf,
                timeout: Duration::from_secs(10),
            })?)
        } else {
            None
        };
        let dispatch = telemetry.as_ref().map(|t| {
            tracing::Dispatch::new(
                tracing_subscriber::registry()
                    .with(tracing_subscriber::filter::LevelFilter::INFO)
                    .with(t.layer()),
            )
        });
        let on_start = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                if let Some(d) = &on_start {
                    // For the thread's life: the runtime's threads end with it.
                    std::mem::forget(tracing::dispatcher::set_default(d));
                }
            })
            .build()
            .context("cannot start the pass's runtime")?;
        let _default = dispatch.as_ref().map(tracing::dispatcher::set_default);
        let before = collector.spans();
        let result = runtime.block_on(pass(&args, &server, traced));
        drop(runtime);
        drop(_default);
        let spans = match telemetry {
            Some(t) => {
                // Sends what the batch processor still holds.
                t.shutdown();
                collector.spans() - before
            }
            None => 0,
        };
        result.map(|drain| Pass { drain, spans })
    })
    .await
    .context("the pass's thread failed")?
}

async fn pass(args: &TraceOverheadArgs, server: &Server, traced: bool) -> anyhow::Result<Duration> {
    let n = args.messages;
    let workers = args.relay.concurrency.max(1) as u32;
    server
        .with_fresh(workers + 2, |_, db| async move {
            fill(&db, args, traced).await?;
            let destination = Destination::start(args.sink, &args.nats_url).await?;
            let started = Instant::now();
            let relay = crate::pipeline::spawn(
                &db,
                destination.sink.clone(),
                args.relay.config("trace-overhead"),
            );
            let stats = relay.stats.clone();
            let limit = Duration::from_secs(args.timeout_secs);
            while stats.delivered() < n as u64 {
                ensure!(
                    started.elapsed() < limit,
                    "timed out: {} of {n} delivered after {limit:?}",
                    stats.delivered()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let drain = started.elapsed();
            relay.stop().await;
            let received = destination.received().await?;
            destination.stop().await;
            ensure!(
                received >= n as u64,
                "the sink got {received} of {n} messages"
            );
            Ok(drain)
        })
        .await
}

/// Fills the outbox with `--messages` messages; with tracing on, each
/// carries a producer's `traceparent` (a fresh trace per `--per-span`
/// messages), as a traced producer writes it. Producers' own spans are not
/// made here: exporting them is the producers' cost, not the relay's.
async fn fill(
    db: &ferry_store::Database,
    args: &TraceOverheadArgs,
    traced: bool,
) -> anyhow::Result<()> {
    let mut rng = rand::thread_rng();
    let mut parent = String::new();
    let mut seq = 0u64;
    while (seq as usize) < args.messages {
        let take = 1000.min(args.messages - seq as usize);
        let mut messages: Vec<Message> = Vec::with_capacity(take);
        for _ in 0..take {
            let mut m = workload::message(seq, args.keys, PayloadShape::Order, &mut rng);
            if traced {
                if (seq as usize).is_multiple_of(args.per_span) {
                    parent = format!(
                        "00-{:032x}-{:016x}-01",
                        rng.gen::<u128>() | 1,
                        rng.gen::<u64>() | 1
                    );
                }
                m = m.with_header(ferry_core::trace::TRACEPARENT, parent.clone());
            }
            messages.push(m);
            seq += 1;
        }
        db.enqueue(&messages)
            .await
            .context("cannot fill the outbox")?;
    }
    Ok(())
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on 127.0.0.1, on a
/// thread of its own, counting the spans it decodes.
#[derive(Clone)]
struct Collector {
    url: String,
    spans: Arc<AtomicU64>,
}

impl Collector {
    fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(AtomicU64::new(0));
        let counted = spans.clone();
        std::thread::Builder::new()
            .name("otlp-receiver".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the receiver's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let app = axum::Router::new()
                        .route("/v1/traces", axum::routing::post(export))
                        .with_state(counted);
                    let _ = axum::serve(listener, app).await;
                });
            })?;
        Ok(Self { url, spans })
    }

    fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

async fn export(State(spans): State<Arc<AtomicU64>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let n: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    spans.fetch_add(n as u64, Ordering::Relaxed);
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}
