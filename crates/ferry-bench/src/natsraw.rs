//! A ceiling for the relay's NATS figure: JetStream's publish rate with the
//! same client crate (async-nats), pipelined per batch and acked, with no
//! database in the way. The messages are lighter than the relay's: a
//! 218-byte payload of the same size as the drain's, but only two headers
//! (`Nats-Msg-Id` and `ce-id`) where `NatsSink` sends the CloudEvents
//! attributes too, so the rate is an upper bound for the relay's.

use std::time::Instant;

use anyhow::{ensure, Context};
use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::report::{median, thousands, Figure, Tsv};
use crate::workload;

/// `ferry-bench nats-raw` options.
#[derive(clap::Args, Debug)]
pub struct NatsRawArgs {
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Messages per run.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Publishes in flight before their acks are awaited (the relay's batch).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// The messages of one run, made before the clock starts: one payload,
/// a fresh `Nats-Msg-Id` each (so JetStream de-duplicates nothing).
fn messages(n: usize) -> Vec<(HeaderMap, Bytes)> {
    let payload = Bytes::from(format!("{{\"seq\":0,\"pad\":\"{}\"}}", "x".repeat(200)));
    (0..n)
        .map(|i| {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
            headers.insert("ce-id", i.to_string().as_str());
            (headers, payload.clone())
        })
        .collect()
}

/// Publishes and prints msg/s per run and the median.
pub async fn run(args: &NatsRawArgs, tsv: &Tsv) -> anyhow::Result<f64> {
    ensure!(
        args.messages > 0 && args.runs > 0 && args.batch_size > 0,
        "--messages, --batch-size and --runs must be positive"
    );
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("cannot connect to nats at {}", args.nats_url))?;
    let server = format!("NATS {} at {}", client.server_info().version, args.nats_url);
    let js = jetstream::new(client);
    println!(
        "== nats-raw: {} messages ({} bytes; headers Nats-Msg-Id and ce-id only) published to JetStream with async-nats, {} in flight per batch, {} run(s)",
        thousands(args.messages as f64),
        messages(1)[0].1.len(),
        args.batch_size,
        args.runs
    );
    println!("   server: {server}; a fresh stream per run");
    let settings = format!("messages={} batch_size={}", args.messages, args.batch_size);
    let mut rates = Vec::new();
    for run in 1..=args.runs {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let stream = format!("FERRY_RAW_{id}");
        let prefix = format!("raw.{id}");
        js.create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create jetstream stream {stream}"))?;
        let subject = format!("{prefix}.{}", workload::TOPIC);
        let mut batch = messages(args.messages).into_iter();
        let start = Instant::now();
        let published = async {
            loop {
                let mut acks = Vec::with_capacity(args.batch_size);
                for (headers, payload) in batch.by_ref().take(args.batch_size) {
                    acks.push(
                        js.publish_with_headers(subject.clone(), headers, payload)
                            .await?,
                    );
                }
                if acks.is_empty() {
                    break;
                }
                for ack in acks {
                    ack.await?;
                }
            }
            anyhow::Ok(start.elapsed())
        }
        .await;
        if let Err(e) = js.delete_stream(&stream).await {
            eprintln!("warning: could not delete jetstream stream {stream}: {e}");
        }
        let secs = published?.as_secs_f64();
        let rate = args.messages as f64 / secs;
        println!(
            "   run {run}/{}: {} msg/s ({secs:.2} s)",
            args.runs,
            thousands(rate)
        );
        tsv.append(&Figure {
            command: "nats-raw",
            server: server.clone(),
            sink: "nats".to_owned(),
            figure: "publish".to_owned(),
            run,
            value: rate,
            unit: "msg/s",
            settings: settings.clone(),
            notes: format!("secs={secs:.3}"),
            ..Figure::default()
        })?;
        rates.push(rate);
    }
    let median = median(&rates);
    println!("   median of {}: {} msg/s", args.runs, thousands(median));
    Ok(median)
}
