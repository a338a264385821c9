//! Publish and consume rates per broker, each beside the broker's raw
//! publish rate with the same client crate, measured in the same run.
//!
//! For every broker and run, on topics of the run's own:
//! * **raw publish**: the client crate publishes the messages directly, as
//!   fast as it can with the broker's acknowledgement awaited (pipelined in
//!   batches of `--batch-size`): the publishing baseline;
//! * **raw consume**: the same client crate consumes those messages with the
//!   adapter's semantics (a durable group, each message acknowledged after
//!   it was taken, at most `--prefetch` unacknowledged): the consuming
//!   baseline;
//! * **raw with Ferry's envelope** (NATS, Redis and Kafka): the same two
//!   loops, but each message carries what Ferry puts on the wire beside the
//!   payload (the CloudEvents attributes of
//!   [`binary_headers`](ferry_core::cloudevents::binary_headers), encoded as
//!   the adapter encodes them), built while the clock runs, and each message
//!   consumed is decoded back with
//!   [`from_binary_headers`](ferry_core::cloudevents::from_binary_headers).
//!   Ferry's figure divided by this one is what the adapter costs beyond
//!   the envelope; divided by the bare raw figure, what a user sees against
//!   their client sending payloads alone;
//! * **ferry publish**: the adapter's [`Sink`] delivers the same messages in
//!   batches of `--batch-size` (or the sink's own limit), as the relay does;
//! * **ferry consume**: the adapter's [`Subscriber`] hands them to one
//!   consumer that acknowledges each (acks in flight up to the prefetch), from
//!   the first message received to the last.
//!
//! Messages carry a 1 KiB payload and the CloudEvents headers Ferry sends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use ferry_core::cloudevents::{binary_headers, from_binary_headers};
use ferry_core::{Message, Sink, Subscriber, Subscription};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use crate::report::{median, ratio, thousands, Figure, Tsv};

/// `ferry-bench brokers` options.
#[derive(clap::Args, Debug)]
pub struct BrokersArgs {
    /// Brokers to measure (repeatable): nats, amqp, redis, kafka, sqs.
    #[arg(long = "broker", default_values = ["nats", "amqp", "redis"])]
    pub brokers: Vec<String>,
    /// Messages per run and figure.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Messages per publish batch (raw and ferry alike).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// The consumer's prefetch.
    #[arg(long, default_value_t = 256)]
    pub prefetch: usize,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// RabbitMQ server.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// Redis server.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// Kafka bootstrap server (tansu here: `scripts/kafka.sh`).
    #[arg(long, default_value = "127.0.0.1:19092")]
    pub kafka: String,
    /// SQS endpoint (moto here: `scripts/sqs.sh`).
    #[arg(long, default_value = "http://127.0.0.1:19325")]
    pub sqs_endpoint: String,
    /// Also measure outbox -> broker -> consumer with an inbox, both on this
    /// PostgreSQL server (a scratch database per run); `none` to skip.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub end_to_end: String,
}

/// One broker under measurement.
pub trait Target: Send + Sync {
    /// Short name, as in `--broker`.
    fn name(&self) -> &'static str;
    /// Publishes `messages` to `topic` with the client crate alone, in
    /// batches of `batch` whose acknowledgements are awaited together, then
    /// consumes them with the same crate, at most `prefetch` unacknowledged;
    /// returns how long each took (consuming: from the first message
    /// received to the last acknowledged), connecting and declaring left
    /// out (as the adapter's sink is connected before its clock starts).
    /// With `envelope`, each message carries Ferry's envelope (its
    /// CloudEvents headers, encoded as the adapter encodes them) and is
    /// decoded back as it is consumed; without, the payload alone.
    fn raw<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Message],
        envelope: bool,
        batch: usize,
        prefetch: usize,
    ) -> ferry_core::BoxFuture<'a, anyhow::Result<RawTimes>>;
    /// Whether [`raw`](Self::raw) can carry Ferry's envelope.
    fn has_envelope(&self) -> bool;
    /// Whether a new group of this broker starts at the topic's beginning,
    /// so that Ferry's side, like the raw side, can publish before it
    /// subscribes (no consumer fetching beside the publisher). Where a new
    /// group starts at the end, Ferry subscribes first.
    fn group_starts_at_beginning(&self) -> bool {
        false
    }
    /// A topic the adapter's sink delivers one message to before its clock
    /// starts, where the client's first delivery pays a one-time start (as
    /// the raw side does before its own clock).
    fn warm_up_topic(&self) -> Option<&'static str> {
        None
    }
    /// The adapter's sink.
    fn sink(&self) -> ferry_core::BoxFuture<'_, anyhow::Result<Arc<dyn Sink>>>;
    /// The adapter's subscriber.
    fn subscriber(&self) -> ferry_core::BoxFuture<'_, anyhow::Result<Arc<dyn Subscriber>>>;
    /// Removes what a run left on the broker, where that matters.
    fn clean<'a>(&'a self, _topic: &'a str) -> ferry_core::BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

fn target(name: &str, args: &BrokersArgs) -> anyhow::Result<Box<dyn Target>> {
    // Every broker but NATS: its adapter's URL and how to reach it raw.
    let (name, url, raw) = match name {
        "nats" => return Ok(Box::new(nats::Nats::new(&args.nats_url)?)),
        "amqp" => (
            "amqp",
            format!("{}?exchange=ferry-bench", args.amqp_url),
            others::Raw::Amqp(args.amqp_url.clone()),
        ),
        "redis" => (
            "redis",
            format!("{}?stream_prefix=ferrybench.", args.redis_url),
            others::Raw::Redis(args.redis_url.clone()),
        ),
        "kafka" => (
            "kafka",
            format!("kafka://{}?topic_prefix=ferrybench.", args.kafka),
            others::Raw::Kafka(args.kafka.clone()),
        ),
        "sqs" => (
            "sqs",
            format!(
                "{}?region=us-east-1&queue_prefix=ferrybench-",
                args.sqs_endpoint
                    .replacen("http://", "sqs+http://bench:bench@", 1)
            ),
            others::Raw::Sqs(args.sqs_endpoint.clone()),
        ),
        other => bail!("unknown broker `{other}` (expected nats, amqp, redis, kafka or sqs)"),
    };
    Ok(Box::new(others::Adapter::new(name, url, raw)?))
}

/// How long the raw client took to publish and to consume.
pub struct RawTimes {
    publish: Duration,
    consume: Duration,
}

/// The raw consume loop's clock: from the first message received.
#[derive(Default)]
struct ConsumeClock {
    first: Option<Instant>,
}

impl ConsumeClock {
    fn received(&mut self) {
        self.first.get_or_insert_with(Instant::now);
    }
    fn elapsed(&self) -> Duration {
        self.first.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

/// Waits up to 60 s for `next`, as the adapter's consume figure does.
async fn within<T>(
    what: &str,
    received: usize,
    next: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(60), next)
        .await
        .with_context(|| format!("{what}: nothing for 60 s after {received} messages"))
}

struct Rates {
    raw: f64,
    raw_consume: f64,
    /// Raw publish and consume with Ferry's envelope, where measured.
    enveloped: Option<(f64, f64)>,
    publish: f64,
    consume: f64,
    /// Outbox to consumer with inbox, and the inbox transactions' ceiling.
    end_to_end: Option<(f64, f64)>,
}

/// Runs every requested broker and prints a summary table.
pub async fn run(args: &BrokersArgs, tsv: &Tsv) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.messages > 0 && args.runs > 0 && args.batch_size > 0 && args.prefetch > 0,
        "--messages, --runs, --batch-size and --prefetch must be positive"
    );
    let mut summary = Vec::new();
    for name in &args.brokers {
        let target = target(name, args)?;
        println!(
            "== brokers: {} — {} messages of {} bytes, batches of {}, prefetch {}, {} run(s)",
            target.name(),
            thousands(args.messages as f64),
            args.payload,
            args.batch_size,
            args.prefetch,
            args.runs
        );
        let mut runs = Vec::new();
        for run in 1..=args.runs {
            let rates = measure(target.as_ref(), args)
                .await
                .with_context(|| format!("{} run {run}", target.name()))?;
            println!(
                "   run {run}/{}: raw publish {} msg/s; ferry publish {} msg/s ({}); raw consume {} msg/s; ferry consume {} msg/s ({}){}{}",
                args.runs,
                thousands(rates.raw),
                thousands(rates.publish),
                ratio(rates.publish, rates.raw),
                thousands(rates.raw_consume),
                thousands(rates.consume),
                ratio(rates.consume, rates.raw_consume),
                rates.enveloped.map_or(String::new(), |(p, c)| format!(
                    "; raw with ferry's envelope: publish {} msg/s (ferry {}), consume {} msg/s (ferry {})",
                    thousands(p),
                    ratio(rates.publish, p),
                    thousands(c),
                    ratio(rates.consume, c)
                )),
                rates.end_to_end.map_or(String::new(), |(e, ceiling)| format!(
                    "; outbox->consumer with inbox {} msg/s ({} of raw publish, {} of the {} msg/s inbox-transaction ceiling)",
                    thousands(e),
                    ratio(e, rates.raw),
                    ratio(e, ceiling),
                    thousands(ceiling)
                )),
            );
            let mut figures = vec![
                ("raw-publish", rates.raw),
                ("publish", rates.publish),
                ("raw-consume", rates.raw_consume),
                ("consume", rates.consume),
            ];
            if let Some((p, c)) = rates.enveloped {
                figures.push(("raw-envelope-publish", p));
                figures.push(("raw-envelope-consume", c));
            }
            if let Some((e, ceiling)) = rates.end_to_end {
                figures.push(("end-to-end", e));
                figures.push(("inbox-ceiling", ceiling));
            }
            for (figure, value) in figures {
                tsv.append(&Figure {
                    command: "brokers",
                    server: target.name().to_owned(),
                    sink: target.name().to_owned(),
                    figure: figure.to_owned(),
                    run,
                    value,
                    unit: "msg/s",
                    settings: format!(
                        "messages={} payload={} batch_size={} prefetch={}",
                        args.messages, args.payload, args.batch_size, args.prefetch
                    ),
                    ..Figure::default()
                })?;
            }
            runs.push(rates);
        }
        let med = |f: fn(&Rates) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let e2e: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.end_to_end.map(|e| e.0))
            .collect();
        let ceiling: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.end_to_end.map(|e| e.1))
            .collect();
        let e2e = (!e2e.is_empty()).then(|| (median(&e2e), median(&ceiling)));
        let enveloped = runs.iter().all(|r| r.enveloped.is_some()).then(|| {
            (
                med(|r| r.enveloped.map_or(0.0, |e| e.0)),
                med(|r| r.enveloped.map_or(0.0, |e| e.1)),
            )
        });
        summary.push((
            target.name(),
            med(|r| r.raw),
            med(|r| r.publish),
            med(|r| r.raw_consume),
            med(|r| r.consume),
            enveloped,
            e2e,
        ));
    }
    println!();
    println!("| broker | raw publish msg/s | ferry publish msg/s | ÷ raw | ÷ raw with envelope (its msg/s) | raw consume msg/s | ferry consume msg/s | ÷ raw | ÷ raw with envelope (its msg/s) | outbox → consumer + inbox (PostgreSQL) msg/s | ÷ raw publish | ÷ inbox ceiling |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, raw, publish, raw_consume, consume, enveloped, e2e) in summary {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(raw),
            thousands(publish),
            ratio(publish, raw),
            enveloped.map_or("—".to_owned(), |(p, _)| format!(
                "{} ({})",
                ratio(publish, p),
                thousands(p)
            )),
            thousands(raw_consume),
            thousands(consume),
            ratio(consume, raw_consume),
            enveloped.map_or("—".to_owned(), |(_, c)| format!(
                "{} ({})",
                ratio(consume, c),
                thousands(c)
            )),
            e2e.map_or("—".to_owned(), |(e, _)| thousands(e)),
            e2e.map_or("—".to_owned(), |(e, _)| ratio(e, raw)),
            e2e.map_or("—".to_owned(), |(e, ceiling)| format!(
                "{} (ceiling {})",
                ratio(e, ceiling),
                thousands(ceiling)
            )),
        );
    }
    Ok(())
}

/// Outbox → relay → broker → router with an inbox, on a scratch PostgreSQL
/// database: the messages are in the outbox before the relay starts; the
/// clock runs from the first message applied until the last one's inbox
/// row and effect row have committed.
/// Returns that rate and the database's ceiling for the consumer's part
/// alone (one transaction per message with the same two inserts).
async fn end_to_end(
    target: &dyn Target,
    args: &BrokersArgs,
    topic: &str,
    payloads: &[Bytes],
) -> anyhow::Result<(f64, f64)> {
    use ferry_consumer::inbox::{inbox_fn, Inbox};
    use ferry_consumer::{HandlerError, Router, RouterConfig, StoreDeadLetters};
    let server = crate::scratch::Server::parse(&args.end_to_end)?;
    server
        .with_fresh(16, |_url, db| async move {
            let ferry_store::Database::Postgres(pool) = db.clone() else {
                bail!("--end-to-end must be a PostgreSQL server")
            };
            sqlx::query("CREATE TABLE bench_applied (message_id UUID NOT NULL)")
                .execute(&pool)
                .await?;
            let handler = Inbox::new(
                pool.clone(),
                inbox_fn(|tx, message, _cx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO bench_applied (message_id) VALUES ($1)")
                            .bind(message.id.0)
                            .execute(&mut **tx)
                            .await
                            .map_err(|e| HandlerError::transient("insert").with_source(e))?;
                        Ok(())
                    })
                }),
            );
            let config = RouterConfig {
                prefetch: args.prefetch,
                ..RouterConfig::default()
            };
            let router = Router::builder()
                .subscriber(target.subscriber().await?)
                .dead_letters(Arc::new(StoreDeadLetters::new(db.clone())))
                .config(&config)
                .event(topic, "bench-e2e", handler)
                .build()?;
            let stop = ferry_relay::CancellationToken::new();
            let consumer = tokio::spawn(router.run(stop.clone().cancelled_owned()));
            // Unkeyed, as the publish figures: the router handles them
            // concurrently up to its prefetch.
            let messages: Vec<Message> = payloads
                .iter()
                .map(|p| Message::event(topic, p.clone()))
                .collect();
            for chunk in messages.chunks(1000) {
                db.enqueue(chunk).await?;
            }
            // Let the subscription exist on the broker before the relay runs.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let start = Instant::now();
            let relay = ferry_relay::spawn(
                &db,
                target.sink().await?,
                ferry_relay::RelayConfig {
                    name: "bench-e2e".to_owned(),
                    ..ferry_relay::RelayConfig::default()
                },
            );
            let want = messages.len() as i64;
            // From the first message applied to the last: a steady rate,
            // without the subscription's start-up (a Kafka group finds a
            // topic the relay has just created only at its next rebalance).
            let mut first: Option<(Instant, i64)> = None;
            loop {
                let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bench_applied")
                    .fetch_one(&pool)
                    .await?;
                if applied > 0 && first.is_none() {
                    first = Some((Instant::now(), applied));
                }
                if applied >= want {
                    break;
                }
                anyhow::ensure!(
                    start.elapsed() < Duration::from_secs(300),
                    "end to end: {applied} of {want} applied after 300 s"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (first_at, first_count) = first.unwrap_or((start, 0));
            let elapsed = first_at.elapsed();
            relay.stop().await?;
            stop.cancel();
            consumer.await??;
            let twice: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (SELECT message_id FROM bench_applied GROUP BY message_id HAVING COUNT(*) > 1) d",
            )
            .fetch_one(&pool)
            .await?;
            anyhow::ensure!(twice == 0, "end to end: {twice} messages applied twice");
            let rate = (want - first_count) as f64 / elapsed.as_secs_f64().max(1e-9);
            // The database's own ceiling for that work: the same two inserts
            // (inbox row, effect row) in one transaction per message, from
            // as many clients as the pool has, with no broker or router.
            sqlx::query("TRUNCATE bench_applied, ferry_inbox").execute(&pool).await?;
            let clients = 16usize;
            let ids: Arc<Vec<uuid::Uuid>> = Arc::new(messages.iter().map(|m| m.id.0).collect());
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for c in 0..clients {
                let (pool, ids) = (pool.clone(), ids.clone());
                tasks.spawn(async move {
                    for id in ids.iter().skip(c).step_by(clients) {
                        let mut tx = pool.begin().await?;
                        sqlx::query(
                            "INSERT INTO ferry_inbox (consumer, message_id) VALUES ('bench', $1) ON CONFLICT DO NOTHING",
                        )
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("INSERT INTO bench_applied (message_id) VALUES ($1)")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            let ceiling = want as f64 / start.elapsed().as_secs_f64();
            Ok((rate, ceiling))
        })
        .await
}

fn payload(size: usize, i: usize) -> Bytes {
    let head = format!("{{\"seq\":{i},\"pad\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    Bytes::from(format!("{head}{}\"}}", "x".repeat(pad)))
}

async fn measure(target: &dyn Target, args: &BrokersArgs) -> anyhow::Result<Rates> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let raw_topic = format!("bench-raw-{}", &id[20..]);
    let topic = format!("bench-ferry-{}", &id[20..]);
    let payloads: Vec<Bytes> = (0..args.messages)
        .map(|i| payload(args.payload, i))
        .collect();
    let rates = |took: RawTimes| {
        (
            args.messages as f64 / took.publish.as_secs_f64().max(1e-9),
            args.messages as f64 / took.consume.as_secs_f64().max(1e-9),
        )
    };

    let raw_messages: Vec<Message> = payloads
        .iter()
        .map(|p| Message::event(&raw_topic, p.clone()))
        .collect();
    let took = target
        .raw(
            &raw_topic,
            &raw_messages,
            false,
            args.batch_size,
            args.prefetch,
        )
        .await
        .context("raw publish and consume")?;
    let (raw, raw_consume) = rates(took);
    target.clean(&raw_topic).await;
    let enveloped = if target.has_envelope() {
        let topic = format!("bench-env-{}", &id[20..]);
        let messages: Vec<Message> = payloads
            .iter()
            .map(|p| Message::event(&topic, p.clone()))
            .collect();
        let took = target
            .raw(&topic, &messages, true, args.batch_size, args.prefetch)
            .await
            .context("raw publish and consume with ferry's envelope")?;
        target.clean(&topic).await;
        Some(rates(took))
    } else {
        None
    };

    // A group that starts at the end exists before anything is published,
    // so it gets everything; one that starts at the beginning subscribes
    // after publishing, as the raw side does.
    let subscriber = target.subscriber().await?;
    let subscription = Subscription::new(&topic, "bench").with_prefetch(args.prefetch);
    let subscribe = || async {
        subscriber
            .subscribe(&subscription)
            .await
            .map_err(|e| anyhow::anyhow!("subscribe: {}", e.describe()))
    };
    let early = if target.group_starts_at_beginning() {
        None
    } else {
        Some(subscribe().await?)
    };

    let sink = target.sink().await?;
    if let Some(warm) = target.warm_up_topic() {
        let message = Message::event(warm, Bytes::from_static(b"{}"));
        if let Some(Err(e)) = sink.deliver(std::slice::from_ref(&message)).await.pop() {
            bail!("ferry warm-up: {}", e.describe());
        }
    }
    let messages: Vec<Message> = payloads
        .iter()
        .map(|p| Message::event(&topic, p.clone()))
        .collect();
    let per_call = args
        .batch_size
        .min(sink.max_per_call().unwrap_or(usize::MAX))
        .max(1);
    let start = Instant::now();
    for chunk in messages.chunks(per_call) {
        for (i, r) in sink.deliver(chunk).await.into_iter().enumerate() {
            if let Err(e) = r {
                bail!("ferry publish of {}: {}", chunk[i].id, e.describe());
            }
        }
    }
    let publish = args.messages as f64 / start.elapsed().as_secs_f64();
    let mut stream = match early {
        Some(stream) => stream,
        None => subscribe().await?,
    };

    let mut acks = FuturesUnordered::new();
    let mut received = 0;
    let mut first: Option<Instant> = None;
    while received < args.messages {
        let next = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .with_context(|| format!("consume: nothing for 60 s after {received} messages"))?;
        let r = match next {
            Some(Ok(r)) => r,
            Some(Err(e)) => bail!("consume: {}", e.describe()),
            None => bail!("consume: the stream ended after {received} messages"),
        };
        first.get_or_insert_with(Instant::now);
        received += 1;
        // Each ack runs on its own task at once, as a handler settling its
        // message would; at most a prefetch of them in flight.
        acks.push(tokio::spawn(r.ack()));
        while acks.len() >= args.prefetch {
            if let Some(done) = acks.next().await {
                done?.map_err(|e| anyhow::anyhow!("ack: {}", e.describe()))?;
            }
        }
    }
    while let Some(done) = acks.next().await {
        done?.map_err(|e| anyhow::anyhow!("ack: {}", e.describe()))?;
    }
    let elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
    let consume = args.messages as f64 / elapsed.as_secs_f64().max(1e-9);
    drop(stream);
    target.clean(&topic).await;
    let end_to_end = if args.end_to_end == "none" {
        None
    } else {
        let topic = format!("bench-e2e-{}", &id[20..]);
        let rate = end_to_end(target, args, &topic, &payloads)
            .await
            .context("end to end")?;
        target.clean(&topic).await;
        Some(rate)
    };
    Ok(Rates {
        raw,
        raw_consume,
        enveloped,
        publish,
        consume,
        end_to_end,
    })
}

mod nats {
    use super::*;
    use async_nats::jetstream;
    use ferry_adapters::{NatsSink, NatsSinkConfig, NatsSubscriber};

    pub struct Nats {
        config: NatsSinkConfig,
    }

    impl Nats {
        pub fn new(url: &str) -> anyhow::Result<Self> {
            let mut config = NatsSinkConfig::new(url.parse().context("--nats-url")?);
            config.subject_prefix = "ferrybench.".to_owned();
            config.stream = Some("FERRY_BENCH_BROKERS".to_owned());
            Ok(Self { config })
        }
    }

    impl Target for Nats {
        fn name(&self) -> &'static str {
            "nats"
        }
        fn has_envelope(&self) -> bool {
            true
        }
        fn raw<'a>(
            &'a self,
            topic: &'a str,
            messages: &'a [Message],
            envelope: bool,
            batch: usize,
            prefetch: usize,
        ) -> ferry_core::BoxFuture<'a, anyhow::Result<RawTimes>> {
            Box::pin(async move {
                let client = async_nats::connect(self.config.url.as_str()).await?;
                let js = jetstream::new(client);
                js.get_or_create_stream(jetstream::stream::Config {
                    name: "FERRY_BENCH_BROKERS".to_owned(),
                    subjects: vec!["ferrybench.>".to_owned()],
                    ..Default::default()
                })
                .await?;
                let subject = format!("ferrybench.{topic}");
                let start = Instant::now();
                for chunk in messages.chunks(batch) {
                    let mut acks = Vec::with_capacity(chunk.len());
                    for m in chunk {
                        let mut headers = async_nats::HeaderMap::new();
                        if envelope {
                            for (name, value) in binary_headers(m, "/ferry/bench") {
                                headers.insert(name.as_str(), value.as_str());
                            }
                        }
                        headers.insert("Nats-Msg-Id", m.id.to_string().as_str());
                        acks.push(
                            js.publish_with_headers(subject.clone(), headers, m.payload.clone())
                                .await?,
                        );
                    }
                    for ack in acks {
                        ack.await?;
                    }
                }
                let publish = start.elapsed();

                // A durable pull consumer with explicit acks, as the
                // adapter's: pulls of up to `prefetch`, at most `prefetch`
                // unacknowledged; each message acked as it comes.
                use jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
                let stream = js.get_stream("FERRY_BENCH_BROKERS").await?;
                let durable = format!("raw_{}", topic.replace(['.', '-'], "_"));
                let consumer: jetstream::consumer::PullConsumer = stream
                    .create_consumer(pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: subject.clone(),
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::Explicit,
                        max_ack_pending: prefetch as i64,
                        ..Default::default()
                    })
                    .await?;
                let messages_len = messages.len();
                let mut pulled = consumer
                    .stream()
                    .max_messages_per_batch(prefetch)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await?;
                let mut clock = ConsumeClock::default();
                for received in 0..messages_len {
                    let message = within("raw consume", received, pulled.next())
                        .await?
                        .context("raw consume: the pull stream ended")?
                        .map_err(|e| anyhow::anyhow!("raw consume: {e}"))?;
                    clock.received();
                    if envelope {
                        let headers = message
                            .headers
                            .iter()
                            .flat_map(|h| h.iter())
                            .filter(|(name, _)| !AsRef::<str>::as_ref(*name).starts_with("Nats-"))
                            .filter_map(|(name, values)| {
                                values.first().map(|v| {
                                    (AsRef::<str>::as_ref(name).to_owned(), v.as_str().to_owned())
                                })
                            });
                        from_binary_headers(headers, message.payload.clone())
                            .map_err(|e| anyhow::anyhow!("raw decode: {e}"))?;
                    }
                    message
                        .ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("raw ack: {e}"))?;
                }
                let consume = clock.elapsed();
                drop(pulled);
                let _ = stream.delete_consumer(&durable).await;
                Ok(RawTimes { publish, consume })
            })
        }
        fn sink(&self) -> ferry_core::BoxFuture<'_, anyhow::Result<Arc<dyn Sink>>> {
            Box::pin(async move {
                Ok(Arc::new(NatsSink::connect(self.config.clone()).await?) as Arc<dyn Sink>)
            })
        }
        fn subscriber(&self) -> ferry_core::BoxFuture<'_, anyhow::Result<Arc<dyn Subscriber>>> {
            Box::pin(async move {
                Ok(
                    Arc::new(NatsSubscriber::connect(self.config.clone()).await?)
                        as Arc<dyn Subscriber>,
                )
            })
        }
        fn clean<'a>(&'a self, topic: &'a str) -> ferry_core::BoxFuture<'a, ()> {
            Box::pin(async move {
                // Purge the run's subject so the stream does not grow run
                // after run.
                if let Ok(client) = async_nats::connect(self.config.url.as_str()).await {
                    let js = jetstream::new(client);
                    if let Ok(stream) = js.get_stream("FERRY_BENCH_BROKERS").await {
                        let _ = stream.purge().filter(format!("ferrybench.{topic}")).await;
                    }
                }
            })
        }
    }
}

/// The Kafka topic both sides' producers send one record to before their
/// clocks start.
const KAFKA_WARM_UP: &str = "ferrybench.warm-up";

/// RabbitMQ, Redis, Kafka and SQS: Ferry's side from the adapter's URL, the
/// raw side with the adapter's own client crate and the same durability
/// settings (persistent messages with publisher confirms; XADD replies;
/// `acks=all` with idempotence; SQS send replies).
mod others {
    use super::*;
    use ferry_adapters::{SinkConfig, SubscriberConfig};

    pub enum Raw {
        Amqp(String),
        Redis(String),
        Kafka(String),
        Sqs(String),
    }

    pub struct Adapter {
        name: &'static str,
        sink: SinkConfig,
        source: SubscriberConfig,
        raw: Raw,
    }

    impl Adapter {
        pub fn new(name: &'static str, url: String, raw: Raw) -> anyhow::Result<Self> {
            let sink = SinkConfig::from_url(&url)
                .map_err(|e| anyhow::anyhow!("{name}: {}", ferry_core::error_chain(&e)))?;
            let source = SubscriberConfig::from_url(&url)
                .map_err(|e| anyhow::anyhow!("{name}: {}", ferry_core::error_chain(&e)))?;
            Ok(Self {
                name,
                sink,
                source,
                raw,
            })
        }
    }

    impl Target for Adapter {
        fn name(&self) -> &'static str {
            self.name
        }
        fn has_envelope(&self) -> bool {
            matches!(self.raw, Raw::Redis(_) | Raw::Kafka(_))
        }
        fn group_starts_at_beginning(&self) -> bool {
            // A new Kafka group is pinned at the low watermark.
            matches!(self.raw, Raw::Kafka(_))
        }
        fn warm_up_topic(&self) -> Option<&'static str> {
            // Ferry's topic_prefix `ferrybench.` makes KAFKA_WARM_UP.
            matches!(self.raw, Raw::Kafka(_)).then_some("warm-up")
        }
        fn raw<'a>(
            &'a self,
            topic: &'a str,
            messages: &'a [Message],
            envelope: bool,
            batch: usize,
            prefetch: usize,
        ) -> ferry_core::BoxFuture<'a, anyhow::Result<RawTimes>> {
            Box::pin(async move {
                let payloads =
                    || -> Vec<Bytes> { messages.iter().map(|m| m.payload.clone()).collect() };
                match &self.raw {
                    Raw::Amqp(url) => {
                        anyhow::ensure!(!envelope, "no raw amqp loop with ferry's envelope");
                        amqp(url, topic, &payloads(), batch, prefetch).await
                    }
                    Raw::Redis(url) => {
                        redis_raw(url, topic, messages, envelope, batch, prefetch).await
                    }
                    Raw::Kafka(brokers) => kafka(brokers, topic, messages, envelope, batch).await,
                    Raw::Sqs(endpoint) => {
                        anyhow::ensure!(!envelope, "no raw sqs loop with ferry's envelope");
                        sqs(endpoint, topic, &payloads()).await
                    }
                }
            })
        }
        fn sink(&self) -> ferry_core::BoxFuture<'_, anyhow::Result<Arc<dyn Sink>>> {
            Box::pin(async move {
                self.sink
                    .build()
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", ferry_core::error_chain(&e)))
            })
        }
        fn subscriber(&self) -> ferry_core::BoxFuture<'_, anyhow::Result<Arc<dyn Subscriber>>> {
            Box::pin(async move {
                self.source
                    .build()
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", ferry_core::error_chain(&e)))
            })
        }
    }

    async fn amqp(
        url: &str,
        topic: &str,
        payloads: &[Bytes],
        batch: usize,
        prefetch: usize,
    ) -> anyhow::Result<RawTimes> {
        use lapin::options::{
            BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
            ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
        };
        use lapin::types::{AMQPValue, FieldTable, LongString};
        use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let exchange = "ferry-bench-raw";
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        // A durable queue takes the messages, of the type a consumer
        // group's has by default (quorum).
        let queue = format!("bench:{topic}");
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                topic.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let start = Instant::now();
        for chunk in payloads.chunks(batch) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for p in chunk {
                confirms.push(
                    channel
                        .basic_publish(
                            exchange.into(),
                            topic.into(),
                            BasicPublishOptions::default(),
                            p,
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?,
                );
            }
            for c in confirms {
                c.await?;
            }
        }
        let publish = start.elapsed();

        // basic.consume with manual acks and a prefetch (basic.qos), as the
        // adapter's subscriber; each delivery acked as it comes.
        let consumer_channel = connection.create_channel().await?;
        consumer_channel
            .basic_qos(
                u16::try_from(prefetch).unwrap_or(u16::MAX),
                BasicQosOptions::default(),
            )
            .await?;
        let mut consumer = consumer_channel
            .basic_consume(
                queue.as_str().into(),
                "ferry-bench-raw".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut clock = ConsumeClock::default();
        for received in 0..payloads.len() {
            let delivery = within("raw consume", received, consumer.next())
                .await?
                .context("raw consume: the consumer ended")??;
            clock.received();
            delivery.ack(BasicAckOptions::default()).await?;
        }
        let consume = clock.elapsed();
        drop(consumer);
        // Deleting the queue cancels the consumer.
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await?;
        Ok(RawTimes { publish, consume })
    }

    async fn redis_raw(
        url: &str,
        topic: &str,
        messages: &[Message],
        envelope: bool,
        batch: usize,
        prefetch: usize,
    ) -> anyhow::Result<RawTimes> {
        use redis::streams::{StreamReadOptions, StreamReadReply};
        use redis::AsyncCommands;
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let key = format!("ferrybench.raw.{topic}");
        let start = Instant::now();
        for chunk in messages.chunks(batch) {
            let mut pipe = redis::pipe();
            for m in chunk {
                let cmd = pipe
                    .cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("payload")
                    .arg(m.payload.as_ref());
                if envelope {
                    // The adapter's layout: the headers as one JSON object,
                    // written straight from the pairs, as the adapter does.
                    let headers = binary_headers(m, "/ferry/bench");
                    let mut json = Vec::with_capacity(256);
                    serde::Serializer::collect_map(
                        &mut serde_json::Serializer::new(&mut json),
                        headers.iter().map(|(k, v)| (k, v)),
                    )?;
                    cmd.arg("headers").arg(json);
                }
            }
            let _: Vec<String> = pipe.query_async(&mut connection).await?;
        }
        let publish = start.elapsed();

        // A consumer group from the stream's start; XREADGROUP COUNT
        // <prefetch>, then one XACK with the ids of what it read.
        let _: () = connection.xgroup_create(&key, "raw", "0").await?;
        let options = StreamReadOptions::default()
            .group("raw", "raw-1")
            .count(prefetch)
            .block(1000);
        let mut clock = ConsumeClock::default();
        let mut received = 0;
        while received < messages.len() {
            let reply: Option<StreamReadReply> = within(
                "raw consume",
                received,
                connection.xread_options(&[&key], &[">"], &options),
            )
            .await??;
            let mut ids = Vec::new();
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                if envelope {
                    let field = |name: &str| -> anyhow::Result<Vec<u8>> {
                        match entry.map.get(name) {
                            Some(redis::Value::BulkString(b)) => Ok(b.clone()),
                            other => bail!("raw decode: field {name} is {other:?}"),
                        }
                    };
                    let headers: std::collections::BTreeMap<String, String> =
                        serde_json::from_slice(&field("headers")?)?;
                    from_binary_headers(headers, Bytes::from(field("payload")?))
                        .map_err(|e| anyhow::anyhow!("raw decode: {e}"))?;
                }
                ids.push(entry.id);
            }
            if ids.is_empty() {
                continue;
            }
            clock.received();
            received += ids.len();
            let _: i64 = connection.xack(&key, "raw", &ids[..]).await?;
        }
        let consume = clock.elapsed();
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await?;
        Ok(RawTimes { publish, consume })
    }

    async fn kafka(
        brokers: &str,
        topic: &str,
        messages: &[Message],
        envelope: bool,
        batch: usize,
    ) -> anyhow::Result<RawTimes> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
        use rdkafka::message::{Header, Headers, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
        use rdkafka::ClientConfig;
        use rdkafka::Message as _;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all");
        let name = format!("ferrybench.raw.{topic}");
        let admin: AdminClient<_> = config.create()?;
        // As the adapter's sink does: wait until the topic is created.
        let created = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        admin
            .create_topics(
                &[
                    NewTopic::new(&name, 1, TopicReplication::Fixed(1)),
                    NewTopic::new(KAFKA_WARM_UP, 1, TopicReplication::Fixed(1)),
                ],
                &created,
            )
            .await?;
        let producer: FutureProducer = config.create()?;
        // The producer's first delivery waits for its idempotent producer
        // id (about 0.5 s on tansu), which a long-running relay pays once:
        // one record to a topic of its own before the clock, as Ferry's side.
        let warm = FutureRecord::<str, [u8]>::to(KAFKA_WARM_UP).payload(b"{}");
        if let Err((e, _)) = producer.send(warm, Duration::from_secs(10)).await {
            bail!("kafka warm-up failed: {e}");
        }
        // The raw side also learns the topic's leader before its clock;
        // Ferry's sink learns it within its own, so this favours raw.
        let metadata = producer.clone();
        let topic_name = name.clone();
        tokio::task::spawn_blocking(move || {
            metadata
                .client()
                .fetch_metadata(Some(&topic_name), Duration::from_secs(10))
        })
        .await??;
        let start = Instant::now();
        for chunk in messages.chunks(batch) {
            let mut reports = Vec::with_capacity(chunk.len());
            for m in chunk {
                let mut record = FutureRecord::<str, [u8]>::to(&name).payload(m.payload.as_ref());
                if envelope {
                    let mut headers = OwnedHeaders::new_with_capacity(8);
                    for (name, value) in binary_headers(m, "/ferry/bench") {
                        headers = headers.insert(Header {
                            key: &name,
                            value: Some(&value),
                        });
                    }
                    record = record.headers(headers);
                }
                match producer.send_result(record) {
                    Ok(report) => reports.push(report),
                    Err((e, _)) => bail!("kafka refused a record: {e}"),
                }
            }
            for report in reports {
                if let Err((e, _)) = report.await? {
                    bail!("kafka delivery failed: {e}");
                }
            }
        }
        let publish = start.elapsed();

        // A consumer group member, offsets stored after each message and
        // committed by librdkafka in the background (rdkafka's at-least-once
        // pattern: enable.auto.offset.store=false, store after handling),
        // the final position committed synchronously after the clock.
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("raw-{topic}"))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[&name])?;
        let mut clock = ConsumeClock::default();
        for received in 0..messages.len() {
            let message = within("raw consume", received, consumer.recv()).await??;
            clock.received();
            if envelope {
                let mut headers = Vec::with_capacity(8);
                if let Some(h) = message.headers() {
                    for header in h.iter() {
                        let value = std::str::from_utf8(header.value.unwrap_or_default())?;
                        headers.push((header.key.to_owned(), value.to_owned()));
                    }
                }
                let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
                from_binary_headers(headers, payload)
                    .map_err(|e| anyhow::anyhow!("raw decode: {e}"))?;
            }
            consumer.store_offset_from_message(&message)?;
        }
        let consume = clock.elapsed();
        let consumer = std::sync::Arc::new(consumer);
        tokio::task::spawn_blocking(move || {
            consumer.commit_consumer_state(CommitMode::Sync)?;
            drop(consumer);
            anyhow::Ok(())
        })
        .await??;
        let _ = admin.delete_topics(&[&name], &AdminOptions::new()).await;
        Ok(RawTimes { publish, consume })
    }

    async fn sqs(endpoint: &str, topic: &str, payloads: &[Bytes]) -> anyhow::Result<RawTimes> {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
        use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
            .endpoint_url(endpoint)
            .build();
        let client = aws_sdk_sqs::Client::from_conf(config);
        let name: String = format!("ferrybench-raw-{topic}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let url = client
            .create_queue()
            .queue_name(&name)
            .send()
            .await?
            .queue_url
            .context("sqs returned no queue url")?;
        // SQS takes ten messages per call, as the sink sends them.
        let start = Instant::now();
        for chunk in payloads.chunks(10) {
            let mut request = client.send_message_batch().queue_url(&url);
            for (i, p) in chunk.iter().enumerate() {
                request = request.entries(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(String::from_utf8_lossy(p))
                        .build()?,
                );
            }
            let out = request.send().await?;
            anyhow::ensure!(out.failed.is_empty(), "sqs refused {:?}", out.failed);
        }
        let publish = start.elapsed();

        // ReceiveMessage of up to 10 (long polling), then one
        // DeleteMessageBatch for what it returned.
        let mut clock = ConsumeClock::default();
        let mut received = 0;
        while received < payloads.len() {
            let out = within(
                "raw consume",
                received,
                client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send(),
            )
            .await??;
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                continue;
            }
            clock.received();
            received += messages.len();
            let mut request = client.delete_message_batch().queue_url(&url);
            for (i, m) in messages.iter().enumerate() {
                request = request.entries(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle.clone().unwrap_or_default())
                        .build()?,
                );
            }
            let out = request.send().await?;
            anyhow::ensure!(
                out.failed.is_empty(),
                "sqs refused deletes {:?}",
                out.failed
            );
        }
        let consume = clock.elapsed();
        let _ = client.delete_queue().queue_url(&url).send().await;
        Ok(RawTimes { publish, consume })
    }
}
