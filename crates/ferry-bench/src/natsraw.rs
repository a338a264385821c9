//! The NATS JetStream ceiling for the relay's NATS figure: the same
//! messages published straight with the same client crate (async-nats),
//! pipelined per batch and acked, with no database in the way.

use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream;

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
    /// Runs.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// Publishes and prints msg/s per run and the median.
pub async fn run(args: &NatsRawArgs) -> anyhow::Result<f64> {
    let client = async_nats::connect(&args.nats_url)
        .await
        .context("connect to nats")?;
    let js = jetstream::new(client);
    let payload = bytes::Bytes::from(format!("{{\"seq\":0,\"pad\":\"{}\"}}", "x".repeat(200)));
    let mut rates = Vec::new();
    println!(
        "== nats-raw: {} messages ({} bytes) published to JetStream with async-nats, {} in flight per batch, Nats-Msg-Id on each, {} run(s)",
        args.messages,
        payload.len(),
        args.batch_size,
        args.runs
    );
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
        .context("create stream")?;
        let subject = format!("{prefix}.orders");
        let start = Instant::now();
        let mut sent = 0;
        while sent < args.messages {
            let n = args.batch_size.min(args.messages - sent);
            let mut acks = Vec::with_capacity(n);
            for i in 0..n {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
                headers.insert("ce-id", (sent + i).to_string().as_str());
                acks.push(
                    js.publish_with_headers(subject.clone(), headers, payload.clone())
                        .await?,
                );
            }
            for ack in acks {
                ack.await?;
            }
            sent += n;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = args.messages as f64 / secs;
        println!(
            "   run {run}/{}: {:.0} msg/s ({secs:.2} s)",
            args.runs, rate
        );
        rates.push(rate);
        js.delete_stream(&stream).await.ok();
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    let median = rates[rates.len() / 2];
    println!("   median of {}: {:.0} msg/s", args.runs, median);
    Ok(median)
}
