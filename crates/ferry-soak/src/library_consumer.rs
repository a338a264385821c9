//! `ferry-soak consumer`: the library path's consumer, a child process of
//! the soak so that the fault schedule can SIGKILL it. A
//! `ferry_consumer::Router` on NATS JetStream whose handler is an
//! `ferry_consumer::inbox::Inbox` on MariaDB: the effect row and the inbox
//! row commit in one transaction. Poison is refused for good
//! (`HandlerError::permanent`) and buried in the consumers' dead-letter
//! table. It serves its subscription state and lag on `--listen` in the
//! same Prometheus lines `ferry run` serves, so the soak reads every
//! consumer's lag the same way. SIGTERM shuts the router down gracefully.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferry_consumer::inbox::{inbox_fn, Inbox};
use ferry_consumer::{HandlerError, Router, RouterConfig, Stats, StoreDeadLetters};
use ferry_nats::{NatsSinkConfig, NatsSubscriber};
use sqlx::mysql::MySqlPoolOptions;
use tokio::signal::unix::{signal, SignalKind};

/// The library path's consumer (started by the soak, not by hand).
#[derive(Parser, Debug)]
#[command(name = "ferry-soak consumer")]
pub struct ConsumerArgs {
    /// The NATS server, `nats://host:port`.
    #[arg(long)]
    nats: String,
    /// The topic to consume.
    #[arg(long)]
    topic: String,
    /// The consumer group (also the inbox's consumer name).
    #[arg(long)]
    group: String,
    /// The path name written into each effect row.
    #[arg(long)]
    path: String,
    /// The MariaDB database holding `soak_effects` and `ferry_inbox`.
    #[arg(long)]
    effects: String,
    /// The database holding `ferry_dead_letters`.
    #[arg(long)]
    dead_letters: String,
    /// Where to serve `/metrics` (subscription and lag), `host:port`.
    #[arg(long)]
    listen: String,
}

/// Runs the consumer until SIGTERM.
pub async fn run(args: ConsumerArgs) -> anyhow::Result<()> {
    let pool = MySqlPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(&args.effects)?;
    let dead_letters = ferry_store::Database::connect(&args.dead_letters)
        .await
        .context("connect the dead-letter database")?;
    let mut nats = NatsSinkConfig::new(args.nats.parse()?);
    nats.stream = Some("SOAK".into());
    nats.subject_prefix = "ferry.".into();
    nats.ack_wait = Duration::from_secs(5);
    // The same settings as the `ferry run` consumers of the soak.
    let config: RouterConfig = serde_json::from_value(serde_json::json!({
        "prefetch": 64,
        "shutdown_timeout": "5s",
        "retry": {
            "max_deliveries": 1_000_000,
            "backoff": { "max_attempts": 3, "initial_backoff": "100ms", "max_backoff": "1s" }
        },
        "lag": { "interval": "1s" },
        "resubscribe": { "initial_backoff": "100ms", "max_backoff": "2s" }
    }))
    .context("the router's settings")?;
    let path = args.path.clone();
    let handler = Inbox::new(
        pool,
        inbox_fn(move |tx, message, _cx| {
            let path = path.clone();
            Box::pin(async move {
                let v: serde_json::Value = serde_json::from_slice(&message.payload)
                    .map_err(|_| HandlerError::permanent("the payload is not JSON"))?;
                if v.get("poison").and_then(|p| p.as_bool()) != Some(false) {
                    return Err(HandlerError::permanent("poison message"));
                }
                let key = v.get("key").and_then(|k| k.as_str()).unwrap_or_default();
                let n = v.get("n").and_then(|n| n.as_i64()).unwrap_or_default();
                sqlx::query(
                    "INSERT INTO soak_effects (path, message_id, msg_key, n) VALUES (?, ?, ?, ?)",
                )
                .bind(&path)
                .bind(message.id.0.to_string())
                .bind(key)
                .bind(n)
                .execute(&mut **tx)
                .await
                .map_err(|e| HandlerError::transient("cannot write the effect").with_source(e))?;
                Ok(())
            })
        }),
    );
    let router = Router::builder()
        .subscriber(Arc::new(NatsSubscriber::connect(nats).await?))
        .dead_letters(Arc::new(StoreDeadLetters::new(dead_letters)))
        .config(&config)
        .event(args.topic.clone(), args.group.clone(), handler)
        .build()?;
    let stats = router.stats();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let path = args.path.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (stats, path) = (stats.clone(), path.clone());
            async move { metrics(&stats, &path) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let mut term = signal(SignalKind::terminate())?;
    router
        .run(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}

/// The lines of `ferry run`'s `/metrics` the soak reads, labelled with the
/// path as the consumer.
fn metrics(stats: &Stats, consumer: &str) -> String {
    let mut s = String::new();
    for sub in stats.snapshot() {
        let l = format!("consumer=\"{consumer}\",topic=\"{}\"", sub.topic);
        s.push_str(&format!(
            "ferry_consumer_subscribed{{{l}}} {}\n",
            u8::from(sub.subscribed)
        ));
        if let Some(lag) = sub.lag {
            // Unknown reads as not drained.
            let n = |v: Option<u64>| v.map_or("NaN".to_owned(), |v| v.to_string());
            s.push_str(&format!(
                "ferry_consumer_lag_waiting_messages{{{l}}} {}\n",
                n(lag.waiting)
            ));
            s.push_str(&format!(
                "ferry_consumer_lag_unacked_messages{{{l}}} {}\n",
                n(lag.in_flight)
            ));
        }
    }
    s
}
