//! `ferry-soak`: runs a realistic Ferry topology on real services under a
//! randomized, seeded fault schedule, then proves from the databases and
//! receivers themselves that nothing was lost or applied twice.
//!
//! Topology (each path: producer → outbox → relay → sink → consumer → effect):
//!
//! | path   | outbox     | relays          | sink                  | consumer       | effects    |
//! |--------|------------|-----------------|-----------------------|----------------|------------|
//! | http   | PostgreSQL | relay-pg-a + -b | webhook (the harness) | —              | PostgreSQL |
//! | nats   | PostgreSQL | relay-pg-a + -b | NATS JetStream        | `ferry` consume | PostgreSQL |
//! | kafka  | PostgreSQL | relay-pg-a + -b | Kafka (tansu)         | `ferry` consume | PostgreSQL |
//! | amqp   | PostgreSQL | relay-pg-a + -b | RabbitMQ              | `ferry` consume | MariaDB    |
//! | redis  | PostgreSQL | relay-pg-a + -b | Redis Streams         | `ferry` consume | MariaDB    |
//! | sqlite | SQLite     | relay-sqlite    | NATS JetStream        | `ferry` consume | PostgreSQL |
//! | lib    | PostgreSQL | relay-pg-a + -b | NATS JetStream        | library Router + Inbox (`ferry-soak consumer`) | MariaDB |
//! | fwd    | event store (PostgreSQL) | `[[forwarder]]` of `events` | webhook | — | PostgreSQL |
//! | api    | event store (PostgreSQL) | `[events_api]` of `events` | HTTP offset API | `EventsClient` follower | PostgreSQL |
//! | cdc    | row changes (PostgreSQL) | `[[cdc]]` (log mode) of `cdc` | webhook | — | PostgreSQL |
//! | binlog | row changes (MariaDB, through the proxy) | `ferry cdc` (binlog) `cdc-binlog` | webhook | — | PostgreSQL |
//! | triggers | row changes (SQLite) | `[[cdc]]` (trigger mode) of `cdc` | webhook | — | PostgreSQL |
//! | batch  | rows (PostgreSQL) | `[[export]]` (watermark, every 1 s) of `batch-export` | files in a folder | `[[import]]` of `batch-import` | PostgreSQL |
//!
//! See docs/guarantees.md ("The chaos soak") for the faults and what the
//! checker proves.

mod batch;
mod cdc;
mod check;
mod fault_log;
mod faults;
mod follower;
mod library_consumer;
mod produce;
mod proxy;
mod receiver;
mod services;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ferry_testkit::nats_server::{free_port, NatsServer};
use ferry_testkit::private_pg::{PrivatePg, Stop};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Executor, MySqlPool, PgPool, Row, SqlitePool};
use tokio::sync::Mutex as AsyncMutex;
use uuid::Uuid;

use check::{Effect, Observed, PathData, Produced};
use fault_log::{FaultLog, FaultRecord};
use faults::{Fault, LinkFault, Scheduled};
use produce::Outbox;
use proxy::{Link, Mode};
use receiver::{EffectDb, Receivers, Webhook};
use services::Proc;

/// The chaos soak: Ferry's relays and consumers on real services under a
/// seeded fault schedule, then a check that every committed message was
/// applied exactly once.
#[derive(Parser, Debug)]
#[command(name = "ferry-soak")]
struct Args {
    /// The fault schedule's and producers' seed (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Messages to produce (committed or not), spread over `--duration`.
    #[arg(long, default_value_t = 30_000)]
    messages: u64,
    /// How long producers write and faults are injected, e.g. `90s`, `30m`.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The longest wait for the pipelines to drain after the faults stop.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// The `ferry` binary (default: next to this executable).
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// The MariaDB server the effects database is created on.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306")]
    mariadb: String,
    /// The RabbitMQ server (host:port) the AMQP path goes through.
    #[arg(long, default_value = "127.0.0.1:5672")]
    rabbitmq: String,
    /// Ids named per violation.
    #[arg(long, default_value_t = 10)]
    first: usize,
    /// Keep the whole run directory (configs, logs, SQLite files, batch
    /// folder) afterwards; its `faults.log` is kept in any case.
    #[arg(long)]
    keep: bool,
    /// Faults overlap: each starts at its time even while earlier ones
    /// still hold (a process down while PostgreSQL restarts and a link is
    /// blackholed…). Faults on one target still take turns.
    #[arg(long)]
    overlap: bool,
    /// Debug: delete one applied effect row before the check, to see the
    /// checker fail.
    #[arg(long)]
    break_one_effect: bool,
}

/// One path through the topology.
struct PathSpec {
    name: &'static str,
    sqlite_outbox: bool,
    effects: EffectDb,
    /// Whether the path promises per-key order of application.
    ordered: bool,
    consumer: bool,
    /// The consumer is the library one (`ferry-soak consumer`), not `ferry run`.
    library: bool,
    /// The path starts at the event store, not an outbox.
    events: bool,
    /// The path starts at row changes captured by CDC from PostgreSQL.
    cdc: bool,
    /// The path starts at row changes captured from MariaDB's binlog.
    binlog: bool,
    /// The path starts at row changes captured by SQLite triggers.
    triggers: bool,
    /// The path is the batch export and import.
    batch: bool,
}

const PATHS: [PathSpec; 13] = [
    PathSpec {
        name: "http",
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: true,
        consumer: false,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "nats",
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: false,
        consumer: true,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "kafka",
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: true,
        consumer: true,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "amqp",
        sqlite_outbox: false,
        effects: EffectDb::Mariadb,
        ordered: false,
        consumer: true,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "redis",
        sqlite_outbox: false,
        effects: EffectDb::Mariadb,
        ordered: false,
        consumer: true,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "sqlite",
        sqlite_outbox: true,
        effects: EffectDb::Postgres,
        ordered: false,
        consumer: true,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "lib",
        sqlite_outbox: false,
        effects: EffectDb::Mariadb,
        ordered: false,
        consumer: true,
        library: true,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "fwd",
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: true,
        consumer: false,
        library: false,
        events: true,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: "api",
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: true,
        consumer: false,
        library: false,
        events: true,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: cdc::PATH,
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: true,
        consumer: false,
        library: false,
        events: false,
        cdc: true,
        binlog: false,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: cdc::BINLOG_PATH,
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: true,
        consumer: false,
        library: false,
        events: false,
        cdc: false,
        binlog: true,
        triggers: false,
        batch: false,
    },
    PathSpec {
        name: cdc::TRIGGERS_PATH,
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: true,
        consumer: false,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: true,
        batch: false,
    },
    PathSpec {
        name: batch::PATH,
        sqlite_outbox: false,
        effects: EffectDb::Postgres,
        ordered: false,
        consumer: false,
        library: false,
        events: false,
        cdc: false,
        binlog: false,
        triggers: false,
        batch: true,
    },
];

/// The capture's name (its slot is `ferry_<name>`).
const CAPTURE: &str = "soak";

/// The forwarder's name (its offset's reader).
const FORWARDER: &str = "fwd";

/// The event store producer's event type.
const EVENT_TYPE: &str = "soak.event";

fn topic(path: &str) -> String {
    format!("soak.{path}")
}

/// How long a stalled webhook waits: past the relay's HTTP timeout (2 s).
const STALL: Duration = Duration::from_secs(3);

/// Everything the faults act on.
struct World {
    ferry: Vec<AsyncMutex<Proc>>,
    names: Vec<String>,
    pg: Arc<PrivatePg>,
    /// Held while PostgreSQL restarts, so overlapping restarts take turns.
    pg_turn: AsyncMutex<()>,
    /// Held while NATS restarts.
    nats_turn: AsyncMutex<()>,
    /// One per link and one for the webhook (the last): held while it
    /// misbehaves.
    link_turns: Vec<AsyncMutex<()>>,
    nats: NatsServer,
    redis: AsyncMutex<Proc>,
    redis_port: u16,
    links: Vec<Arc<Link>>,
    receivers: Arc<Receivers>,
}

/// Connections to every database the checker reads.
struct Dbs {
    outbox_pg: PgPool,
    outbox_sqlite: SqlitePool,
    effects_pg: PgPool,
    effects_mariadb: MySqlPool,
    consumers: SqlitePool,
    cdc: PgPool,
    /// The MariaDB database whose binlog is captured (through the proxy).
    binlog: MySqlPool,
    /// The SQLite file whose triggers capture changes.
    triggers: SqlitePool,
    /// The batch export's source.
    batch: PgPool,
    /// The folder batches are handed over in.
    batch_folder: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("consumer") {
        let args = library_consumer::ConsumerArgs::parse_from(
            std::env::args()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, a)| a),
        );
        return match library_consumer::run(args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferry-soak consumer: error: {e:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let args = Args::parse();
    match soak(args).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferry-soak: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn soak(args: Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "ferry-soak: seed {seed} (replay with --seed {seed}); {} messages over {}",
        args.messages,
        humantime::format_duration(args.duration)
    );
    let ferry = services::ferry_binary(args.ferry.clone())?;
    let run = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let dir = std::env::temp_dir().join(format!("ferry-soak-{run}"));
    std::fs::create_dir_all(&dir)?;
    println!("ferry-soak: run directory {}", dir.display());
    let mariadb_db = format!("ferry_soak_{run}");
    let result = soak_in(&args, seed, &ferry, &run, &dir, &mariadb_db).await;
    cleanup(&args, &run, &mariadb_db).await;
    if !args.keep {
        remove_all_but(&dir, FAULT_LOG);
    }
    let log = dir.join(FAULT_LOG);
    if log.exists() {
        println!("ferry-soak: fault log kept at {}", log.display());
    }
    result
}

/// The fault log's file name in the run directory.
const FAULT_LOG: &str = "faults.log";

/// How far before and after a violation's time faults are shown.
const FAULT_WINDOW: Duration = Duration::from_secs(30);

/// Removes everything in `dir` but the file `keep` (and `dir` itself when
/// nothing is left).
fn remove_all_but(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name() == keep {
            continue;
        }
        let path = e.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
    let _ = std::fs::remove_dir(dir);
}

async fn soak_in(
    args: &Args,
    seed: u64,
    ferry: &Path,
    run: &str,
    dir: &Path,
    mariadb_db: &str,
) -> anyhow::Result<bool> {
    // --- services ---------------------------------------------------------
    let pg = tokio::task::spawn_blocking(|| PrivatePg::start_with(&["max_connections = 300"]))
        .await
        .context("start the private PostgreSQL")?;
    let pg = Arc::new(pg);
    let nats = NatsServer::start().await;
    let redis_port = free_port();
    let redis = services::redis(dir, redis_port).await?;
    let kafka_port = free_port();
    let kafka_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let kafka_proxy_port = kafka_listener.local_addr()?.port();
    let tansu = services::tansu(dir, kafka_port, kafka_proxy_port).await?;
    let mariadb_addr = url::Url::parse(&args.mariadb)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(3306))))
        .context("--mariadb is mysql://user@host:port")?;
    let links = vec![
        Link::start("mariadb", resolve(&mariadb_addr)?).await?,
        Link::start("rabbitmq", resolve(&args.rabbitmq)?).await?,
        Link::serve(
            "kafka",
            kafka_listener,
            resolve(&format!("127.0.0.1:{kafka_port}"))?,
        )?,
    ];
    println!(
        "ferry-soak: private PostgreSQL :{}, NATS :{}, Redis :{redis_port}, tansu :{kafka_port}; proxies mariadb :{}, rabbitmq :{}, kafka :{}",
        pg.port,
        nats.port,
        links[0].port(),
        links[1].port(),
        links[2].port()
    );

    // --- databases --------------------------------------------------------
    let outbox_url = pg.database_url("soak_outbox");
    let effects_url = pg.database_url("soak_effects");
    let cdc_url = pg.database_url("soak_cdc");
    let batch_url = pg.database_url("soak_batch");
    {
        let mut admin = sqlx::PgConnection::connect(&pg.url()).await?;
        admin.execute("CREATE DATABASE soak_outbox").await?;
        admin.execute("CREATE DATABASE soak_effects").await?;
        admin.execute("CREATE DATABASE soak_cdc").await?;
        admin.execute("CREATE DATABASE soak_batch").await?;
    }
    let sqlite_url = format!("sqlite://{}", dir.join("outbox.db").display());
    let consumers_url = format!("sqlite://{}", dir.join("consumers.db").display());
    let triggers_url = format!("sqlite://{}", dir.join("captured.db").display());
    {
        let mut admin = sqlx::MySqlConnection::connect(&args.mariadb).await?;
        admin
            .execute(format!("CREATE DATABASE {mariadb_db}").as_str())
            .await?;
    }
    let mariadb_url = format!("mysql://root@127.0.0.1:{}/{mariadb_db}", links[0].port());
    let binlog_db = binlog_database(mariadb_db);
    {
        let mut admin = sqlx::MySqlConnection::connect(&args.mariadb).await?;
        admin
            .execute(format!("CREATE DATABASE {binlog_db}").as_str())
            .await?;
    }
    let binlog_url = format!("mysql://root@127.0.0.1:{}/{binlog_db}", links[0].port());
    for url in [
        &cdc_url,
        &outbox_url,
        &effects_url,
        &sqlite_url,
        &consumers_url,
        &mariadb_url,
        &triggers_url,
    ] {
        let db = ferry_store::Database::connect(&format!(
            "{url}{}",
            if url.starts_with("sqlite") {
                "?mode=rwc"
            } else {
                ""
            }
        ))
        .await
        .with_context(|| format!("connect {url}"))?;
        db.migrate()
            .await
            .with_context(|| format!("migrate {url}"))?;
        db.close().await;
    }
    let pg_pool = |url: String, n: u32| {
        PgPoolOptions::new()
            .max_connections(n)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&url)
    };
    let sqlite_pool = |url: &str| -> anyhow::Result<SqlitePool> {
        Ok(SqlitePoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(
                SqliteConnectOptions::from_str(url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10)),
            ))
    };
    let dbs = Dbs {
        outbox_pg: pg_pool(outbox_url.clone(), 8)?,
        outbox_sqlite: sqlite_pool(&sqlite_url)?,
        effects_pg: pg_pool(effects_url.clone(), 24)?,
        effects_mariadb: MySqlPoolOptions::new()
            .max_connections(24)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&mariadb_url)?,
        consumers: sqlite_pool(&consumers_url)?,
        cdc: pg_pool(cdc_url.clone(), 8)?,
        binlog: MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&binlog_url)?,
        triggers: sqlite_pool(&triggers_url)?,
        batch: pg_pool(batch_url.clone(), 4)?,
        batch_folder: dir.join("batch"),
    };
    dbs.batch.execute(batch::SCHEMA).await?;
    std::fs::create_dir_all(&dbs.batch_folder)?;
    for statement in cdc::SQLITE_SCHEMA {
        dbs.triggers.execute(statement).await?;
    }
    dbs.cdc.execute(cdc::SCHEMA).await?;
    for statement in cdc::MARIADB_SCHEMA {
        dbs.binlog.execute(statement).await?;
    }
    cdc::mariadb_seed_row(&dbs.binlog).await?;
    dbs.outbox_pg.execute(produce::PG_SCHEMA).await?;
    dbs.outbox_pg.execute(produce::EVENTS_SCHEMA).await?;
    dbs.outbox_sqlite.execute(produce::SQLITE_SCHEMA).await?;
    dbs.effects_pg
        .execute(
            "CREATE TABLE soak_effects (id BIGSERIAL PRIMARY KEY, path TEXT NOT NULL,
             message_id UUID NOT NULL, msg_key TEXT NOT NULL, n BIGINT NOT NULL,
             batch_seq BIGINT)",
        )
        .await?;
    dbs.effects_mariadb
        .execute(
            "CREATE TABLE soak_effects (id BIGINT AUTO_INCREMENT PRIMARY KEY, path VARCHAR(32) NOT NULL,
             message_id CHAR(36) NOT NULL, msg_key VARCHAR(64) NOT NULL, n BIGINT NOT NULL)",
        )
        .await?;

    // --- receivers --------------------------------------------------------
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_port = listener.local_addr()?.port();
    let routes = PATHS
        .iter()
        .map(|p| (p.name.to_owned(), p.effects))
        .collect::<HashMap<_, _>>();
    let receivers = Receivers::serve(
        listener,
        dbs.effects_pg.clone(),
        dbs.effects_mariadb.clone(),
        routes,
    );

    // --- ferry processes ----------------------------------------------------
    let consumers_metrics = free_port();
    let endpoints = Endpoints {
        run: run.to_owned(),
        receiver_port,
        nats: nats.url(),
        redis_port,
        kafka_port: links[2].port(),
        amqp_port: links[1].port(),
        consumers_metrics,
    };
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let pg_relays = write("relays-pg.toml", endpoints.pg_relays(&outbox_url))?;
    let sqlite_relay = write("relay-sqlite.toml", endpoints.sqlite_relay(&sqlite_url))?;
    let consumers = write("consumers.toml", endpoints.consumers(&consumers_url))?;
    let events_api_port = free_port();
    let events = write(
        "events.toml",
        endpoints.events(&outbox_url, events_api_port),
    )?;
    let ferry_run = |name: &str, config: &Path| -> anyhow::Result<Proc> {
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        Proc::start(name, ferry, &args, dir.join(format!("{name}.log")))
    };
    // Relays first (they create the NATS stream; the outbox is empty), then
    // the consumers (resubscribing until the stream exists). Nothing is
    // produced before every consumer is subscribed: a new NATS group starts
    // with the messages published after it was created.
    let mut procs = vec![
        ferry_run("relay-pg-a", &pg_relays)?,
        ferry_run("relay-pg-b", &pg_relays)?,
        ferry_run("relay-sqlite", &sqlite_relay)?,
    ];
    procs.push(ferry_run("consumers", &consumers)?);
    procs.push(ferry_run("events", &events)?);
    let capture = write("cdc.toml", endpoints.cdc(&cdc_url, &triggers_url))?;
    procs.push(ferry_run("cdc", &capture)?);
    let binlog_args: Vec<String> = [
        "cdc",
        "--from",
        &binlog_url,
        "--to",
        &format!(
            "http://127.0.0.1:{receiver_port}/webhook/{}",
            cdc::BINLOG_PATH
        ),
        "--name",
        cdc::BINLOG_CAPTURE,
        "--mode",
        "log",
        // Qualified: a bare table name matches that table in every
        // database of the server (another run's soak on the shared
        // MariaDB included).
        "--tables",
        &format!("{binlog_db}.soak_cdc_rows"),
        "--topic-prefix",
        "soak",
        "--max-attempts",
        "100000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    procs.push(Proc::start(
        "cdc-binlog",
        ferry,
        &binlog_args,
        dir.join("cdc-binlog.log"),
    )?);
    let export = write(
        "batch-export.toml",
        batch::export_config(&batch_url, &dbs.batch_folder, &dir.join("batch-work")),
    )?;
    procs.push(ferry_run("batch-export", &export)?);
    let import = write(
        "batch-import.toml",
        batch::import_config(&effects_url, &dbs.batch_folder),
    )?;
    procs.push(ferry_run("batch-import", &import)?);
    let library_metrics = free_port();
    let lib = PATHS
        .iter()
        .find(|p| p.library)
        .context("the library path")?;
    let consumer_args: Vec<String> = [
        "consumer",
        "--nats",
        &endpoints.nats,
        "--topic",
        &topic(lib.name),
        "--group",
        &format!("soak-{}-{run}", lib.name),
        "--path",
        lib.name,
        "--effects",
        &mariadb_url,
        "--dead-letters",
        &consumers_url,
        "--listen",
        &format!("127.0.0.1:{library_metrics}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    procs.push(Proc::start(
        "consumer-lib",
        &std::env::current_exe()?,
        &consumer_args,
        dir.join("consumer-lib.log"),
    )?);
    let metrics_ports = [consumers_metrics, library_metrics];
    let limit = Duration::from_secs(120);
    wait_ready(
        &mut procs,
        limit,
        "the consumers did not all subscribe",
        || all_subscribed(&metrics_ports),
    )
    .await?;
    // Changes made before the capture's slot exists would not be captured
    // (the capture runs without a snapshot).
    wait_ready(
        &mut procs,
        limit,
        "the capture's replication slot did not appear",
        || slot_exists(&dbs.cdc),
    )
    .await?;
    // Likewise the binlog capture: until it has saved a position (its
    // snapshot of the seed row delivered), a restart would snapshot again.
    wait_ready(
        &mut procs,
        limit,
        "the binlog capture saved no position",
        || binlog_position_saved(&dbs.binlog),
    )
    .await?;
    // And the trigger capture's triggers.
    wait_ready(
        &mut procs,
        limit,
        "the trigger capture installed no triggers",
        || triggers_installed(&dbs.triggers),
    )
    .await?;
    println!("ferry-soak: relays and consumers up; producing");

    let names: Vec<String> = procs.iter().map(|p| p.name.clone()).collect();
    let world = Arc::new(World {
        ferry: procs.into_iter().map(AsyncMutex::new).collect(),
        names,
        pg,
        pg_turn: AsyncMutex::new(()),
        nats_turn: AsyncMutex::new(()),
        link_turns: (0..=links.len()).map(|_| AsyncMutex::new(())).collect(),
        nats,
        redis: AsyncMutex::new(redis),
        redis_port,
        links,
        receivers,
    });

    // --- producers and faults -------------------------------------------
    let produced = Arc::new(Mutex::new(produce::Produced::default()));
    let started = Instant::now();
    let fault_log =
        Arc::new(FaultLog::create(&dir.join(FAULT_LOG), started).context("create the fault log")?);
    let mut producers = spawn_producers(args, seed, &dbs, produced.clone());
    producers.push(tokio::spawn(cdc::produce(
        cdc::Captured::Postgres(dbs.cdc.clone()),
        args.messages / 12,
        args.duration,
        seed.wrapping_add(300),
        produced.clone(),
    )));
    producers.push(tokio::spawn(cdc::produce(
        cdc::Captured::Mariadb(dbs.binlog.clone()),
        args.messages / 12,
        args.duration,
        seed.wrapping_add(400),
        produced.clone(),
    )));
    producers.push(tokio::spawn(cdc::produce(
        cdc::Captured::Sqlite(dbs.triggers.clone()),
        args.messages / 12,
        args.duration,
        seed.wrapping_add(500),
        produced.clone(),
    )));
    producers.push(tokio::spawn(batch::produce(
        dbs.batch.clone(),
        args.messages / 12,
        args.duration,
        seed.wrapping_add(600),
        produced.clone(),
    )));
    let follower_counts = Arc::new(follower::FollowerCounts::default());
    let follower_stop = Arc::new(AtomicBool::new(false));
    let follower_task = tokio::spawn(follower::run(
        format!("http://127.0.0.1:{events_api_port}").parse()?,
        dbs.effects_pg.clone(),
        ferry_store::Database::Postgres(dbs.effects_pg.clone()),
        seed,
        follower_counts.clone(),
        follower_stop.clone(),
    ));
    let schedule = faults::schedule(
        seed,
        args.duration,
        world.ferry.len(),
        world.links.len(),
        STALL,
    );
    println!("ferry-soak: {} faults scheduled", schedule.len());
    let stop = Arc::new(AtomicBool::new(false));
    let fault_task = tokio::spawn(run_faults(
        world.clone(),
        fault_log.clone(),
        schedule,
        stop.clone(),
        started,
        args.overlap,
    ));
    for p in producers {
        p.await?;
    }
    let produced_in = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (injected, fault_errors) = fault_task.await?;
    restore(&world).await?;
    println!(
        "ferry-soak: producers done in {:.0?}; {} faults injected; draining",
        produced_in,
        injected.values().sum::<u32>()
    );

    // --- drain ------------------------------------------------------------
    let mut problems = fault_errors;
    let drained = drain(&world, &dbs, args.drain_timeout, &metrics_ports).await;
    let drain_time = started.elapsed() - produced_in;
    if let Err(e) = &drained {
        problems.push(format!("{e:#}"));
    }
    let lag = consumer_lag(&metrics_ports).await.unwrap_or_default();
    follower_stop.store(true, Ordering::SeqCst);
    let _ = follower_task.await;
    let mut crashed = Vec::new();
    for p in &world.ferry {
        let mut p = p.lock().await;
        if let Some(status) = p.exited() {
            crashed.push(format!("{} exited by itself ({status})", p.name));
        }
        let status = p.stop(Duration::from_secs(20)).await;
        if !status.is_some_and(|s| s.success()) {
            problems.push(format!(
                "{} did not exit cleanly on SIGTERM ({status:?}); log tail:\n{}",
                p.name,
                p.log_tail(15)
            ));
        }
    }
    problems.extend(crashed);
    drop(tansu);

    if args.break_one_effect {
        let gone = sqlx::query(
            "DELETE FROM soak_effects WHERE id = (SELECT min(id) FROM soak_effects WHERE path = 'nats') RETURNING message_id",
        )
        .fetch_optional(&dbs.effects_pg)
        .await?;
        if let Some(row) = gone {
            let id: Uuid = row.get(0);
            println!("ferry-soak: --break-one-effect deleted the effect of {id} (path nats)");
        }
    }

    // --- check ------------------------------------------------------------
    let not_committed = produced.lock().unwrap().not_committed.clone();
    let observed = observe(&dbs, &lag, not_committed).await?;
    let report = check::check(&observed);
    match batch::not_archived(&dbs.batch, &dbs.batch_folder).await {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => problems.push(format!(
            "batch: {} exported batches not archived by the import: {}",
            missing.len(),
            missing
                .iter()
                .take(args.first)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(e) => problems.push(format!(
            "batch: cannot read the export's run history: {e:#}"
        )),
    }
    let p = produced.lock().unwrap();
    println!();
    println!(
        "seed {seed}: {} transactions committed ({} messages), {} rolled back on purpose, {} failed under faults; produced in {:.0?}, drained in {:.0?}",
        p.committed_tx,
        p.committed_messages,
        p.rolled_back_tx,
        p.failed_tx,
        produced_in,
        drain_time
    );
    let c = &world.receivers.counts;
    println!(
        "receivers: {} first applications, {} redeliveries dropped by the inbox, {} answered 503 on a database error, {} webhook requests failed or stalled on purpose",
        c.applied.load(Ordering::Relaxed),
        c.duplicates.load(Ordering::Relaxed),
        c.db_errors.load(Ordering::Relaxed),
        c.faulted.load(Ordering::Relaxed)
    );
    let f = &follower_counts;
    println!(
        "events api follower: {} first applications, {} redeliveries dropped by the inbox, {} restarts after a failed call, {} crashes between applying and committing a page",
        f.applied.load(Ordering::Relaxed),
        f.duplicates.load(Ordering::Relaxed),
        f.restarts.load(Ordering::Relaxed),
        f.crashes.load(Ordering::Relaxed)
    );
    print!("{}", report.table());
    if let Ok(left) = batch::left(&dbs.batch_folder) {
        println!(
            "batch: {} batches archived, {} refused (error/), {} not taken",
            left.archived, left.refused, left.waiting
        );
    }
    let mut faults = String::from("faults injected:");
    for (kind, n) in &injected {
        let _ = write!(faults, " {kind} ×{n};");
    }
    println!("{faults}");
    let violations = report.violations(args.first);
    for v in &violations {
        println!("VIOLATION {v}");
    }
    print_faults_near(&report, &p.ended, &fault_log, args.first);
    for problem in &problems {
        println!("PROBLEM {problem}");
    }
    let ok = !report.violated() && problems.is_empty();
    println!(
        "ferry-soak: {} (seed {seed})",
        if ok { "PASSED" } else { "FAILED" }
    );
    Ok(ok)
}

/// For each id a violation names whose transaction's end time is known,
/// the faults active within [`FAULT_WINDOW`] of it (from the fault log).
fn print_faults_near(
    report: &check::Report,
    ended: &HashMap<Uuid, std::time::SystemTime>,
    log: &FaultLog,
    first: usize,
) {
    let records = log.records();
    for (what, id) in report.violating_ids(first) {
        let Some(at) = ended.get(&id).and_then(|t| log.since_start(*t)) else {
            println!("faults near {id} ({what}): its transaction time is not known");
            continue;
        };
        let near = fault_log::near(&records, at, FAULT_WINDOW);
        println!(
            "faults within {}s of {id} ({what}; its transaction ended at {} = +{:.3}s){}",
            FAULT_WINDOW.as_secs(),
            log.utc(at),
            at.as_secs_f64(),
            if near.is_empty() { ": none" } else { ":" }
        );
        for r in near {
            println!("  {}", log.line(r));
        }
    }
}

fn resolve(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()?
        .next()
        .with_context(|| format!("no address for {addr}"))
}

/// The addresses the config files name.
struct Endpoints {
    run: String,
    receiver_port: u16,
    nats: String,
    redis_port: u16,
    kafka_port: u16,
    amqp_port: u16,
    consumers_metrics: u16,
}

const PIPELINE_COMMON: &str = r#"lease = "30s"
shutdown_grace = "5s"
[pipeline.retry]
max_attempts = 100000
initial_backoff = "100ms"
max_backoff = "1s"
[pipeline.sink_backoff]
initial = "100ms"
max = "2s"
"#;

impl Endpoints {
    fn nats_sink(&self) -> String {
        format!(
            "type = \"nats\"\nurl = \"{}\"\nstream = \"SOAK\"\nsubject_prefix = \"ferry.\"\nack_timeout = \"5s\"\n",
            self.nats
        )
    }

    fn pipeline(&self, name: &str, database: &str, sink: &str) -> String {
        format!(
            "[[pipeline]]\nname = \"{name}\"\ndatabase = \"{database}\"\ntopics = [\"{}\"]\n{PIPELINE_COMMON}[pipeline.sink]\n{sink}\n",
            topic(name)
        )
    }

    fn pg_relays(&self, database: &str) -> String {
        let http = format!(
            "type = \"http\"\nurl = \"http://127.0.0.1:{}/webhook\"\ntimeout = \"2s\"\n",
            self.receiver_port
        );
        let kafka = format!(
            "type = \"kafka\"\nbrokers = [\"127.0.0.1:{}\"]\ntopic_prefix = \"soak_\"\ndelivery_timeout = \"5s\"\n",
            self.kafka_port
        );
        let amqp = format!(
            "type = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{}/%2f\"\nexchange = \"soak-{}\"\ntimeout = \"5s\"\n",
            self.amqp_port, self.run
        );
        let redis = format!(
            "type = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\nstream_prefix = \"soak:\"\ntimeout = \"5s\"\n",
            self.redis_port
        );
        [
            self.pipeline("http", database, &http),
            self.pipeline("nats", database, &self.nats_sink()),
            self.pipeline("kafka", database, &kafka),
            self.pipeline("amqp", database, &amqp),
            self.pipeline("redis", database, &redis),
            self.pipeline("lib", database, &self.nats_sink()),
        ]
        .join("\n")
    }

    /// The `events` process: the event store's forwarder to the webhook and
    /// its HTTP API, on `api_port`.
    fn events(&self, database: &str, api_port: u16) -> String {
        format!(
            r#"[http]
listen = "127.0.0.1:{api_port}"

[events_api]
database = "{database}"

[[forwarder]]
name = "{FORWARDER}"
database = "{database}"
batch_size = 100
poll_interval = "200ms"
shutdown_grace = "5s"
[forwarder.retry]
max_attempts = 100000
initial_backoff = "100ms"
max_backoff = "1s"
[forwarder.sink_backoff]
initial = "100ms"
max = "2s"
[forwarder.sink]
type = "http"
url = "http://127.0.0.1:{port}/webhook/{FORWARDER}"
timeout = "2s"
"#,
            port = self.receiver_port
        )
    }

    /// The `cdc` process: PostgreSQL's `soak_cdc_rows` captured from the
    /// slot to the webhook, and SQLite's (`triggers`, a file) by triggers.
    fn cdc(&self, database: &str, triggers: &str) -> String {
        let common = r#"[cdc.retry]
max_attempts = 100000
initial_backoff = "100ms"
max_backoff = "1s"
[cdc.sink_backoff]
initial = "100ms"
max = "2s"
[cdc.sink]
type = "http"
timeout = "2s"
"#;
        format!(
            r#"[[cdc]]
name = "{CAPTURE}"
from = "{database}"
mode = "log"
tables = ["public.soak_cdc_rows"]
topic_prefix = "soak"
snapshot = false
{common}url = "http://127.0.0.1:{port}/webhook/{path}"

[[cdc]]
name = "{tname}"
from = "{triggers}"
mode = "triggers"
tables = ["soak_cdc_rows"]
topic_prefix = "soak"
snapshot = false
poll_interval = "100ms"
{common}url = "http://127.0.0.1:{port}/webhook/{tpath}"
"#,
            port = self.receiver_port,
            path = cdc::PATH,
            tname = cdc::TRIGGERS_CAPTURE,
            tpath = cdc::TRIGGERS_PATH,
        )
    }

    fn sqlite_relay(&self, database: &str) -> String {
        self.pipeline("sqlite", database, &self.nats_sink())
    }

    fn consumers(&self, database: &str) -> String {
        let mut s = format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n\n",
            self.consumers_metrics
        );
        for p in PATHS.iter().filter(|p| p.consumer && !p.library) {
            let from = match p.name {
                "nats" | "sqlite" => format!(
                    "{{ type = \"nats\", url = \"{}\", stream = \"SOAK\", subject_prefix = \"ferry.\", ack_wait = \"5s\" }}",
                    self.nats
                ),
                "kafka" => format!(
                    "{{ type = \"kafka\", brokers = [\"127.0.0.1:{}\"], topic_prefix = \"soak_\", properties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\" }} }}",
                    self.kafka_port
                ),
                "amqp" => format!(
                    "{{ type = \"amqp\", url = \"amqp://guest:guest@127.0.0.1:{}/%2f\", exchange = \"soak-{}\" }}",
                    self.amqp_port, self.run
                ),
                _ => format!(
                    "{{ type = \"redis\", url = \"redis://127.0.0.1:{}/0\", stream_prefix = \"soak:\", claim_idle = \"5s\" }}",
                    self.redis_port
                ),
            };
            let _ = write!(
                s,
                r#"[[consumer]]
name = "{name}"
group = "soak-{name}-{run}"
topics = ["{topic}"]
database = "{database}"
from = {from}
to = {{ type = "http", url = "http://127.0.0.1:{port}/effects/{name}", timeout = "5s" }}
[consumer.router]
prefetch = 64
shutdown_timeout = "5s"
[consumer.router.retry]
max_deliveries = 1000000
backoff = {{ max_attempts = 3, initial_backoff = "100ms", max_backoff = "1s" }}
[consumer.router.lag]
interval = "1s"
[consumer.router.resubscribe]
initial_backoff = "100ms"
max_backoff = "2s"

"#,
                name = p.name,
                run = self.run,
                topic = topic(p.name),
                port = self.receiver_port,
            );
        }
        s
    }
}

/// Reads the consumers' `/metrics` page.
async fn metrics(port: u16) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    Ok(client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// `metric{consumer="name",…} value` lines summed per consumer.
fn per_consumer(text: &str, metric: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.split_once("} ") else {
            continue;
        };
        let Some(consumer) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("consumer=\""))
            .and_then(|v| v.strip_suffix('"'))
        else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(f64::NAN);
        *out.entry(consumer.to_owned()).or_default() += value;
    }
    out
}

/// Whether every consumer path reports a subscription on the metrics ports.
async fn all_subscribed(ports: &[u16]) -> bool {
    let mut text = String::new();
    for port in ports {
        text.push_str(&metrics(*port).await.unwrap_or_default());
    }
    let subscribed = per_consumer(&text, "ferry_consumer_subscribed");
    PATHS
        .iter()
        .filter(|p| p.consumer)
        .all(|p| subscribed.get(p.name).is_some_and(|v| *v >= 1.0))
}

/// Polls `ready` every 250 ms until it holds. Fails with `what` after
/// `limit`, or at once, with its log's tail, when a process has exited.
async fn wait_ready<F: std::future::Future<Output = bool>>(
    procs: &mut [Proc],
    limit: Duration,
    what: &str,
    mut ready: impl FnMut() -> F,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if ready().await {
            return Ok(());
        }
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited at startup ({status}):\n{}",
                    p.name,
                    p.log_tail(20)
                );
            }
        }
        if started.elapsed() > limit {
            bail!("{what} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn spawn_producers(
    args: &Args,
    seed: u64,
    dbs: &Dbs,
    out: Arc<Mutex<produce::Produced>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let total = args.messages;
    let secs = args.duration.as_secs_f64().max(1.0);
    let sqlite_share = total / 12;
    let events_share = total / 12;
    // Produced by cdc::produce (PostgreSQL, MariaDB and SQLite) and
    // batch::produce.
    let cdc_share = 4 * (total / 12);
    let pg_tasks = 4u64;
    let pg_total = total - sqlite_share - events_share - cdc_share;
    let pg_each = pg_total / pg_tasks;
    let pg_paths: Vec<(&'static str, String)> = PATHS
        .iter()
        .filter(|p| !p.sqlite_outbox && !p.events && !p.cdc && !p.binlog && !p.triggers && !p.batch)
        .map(|p| (p.name, topic(p.name)))
        .collect();
    let mut jobs = Vec::new();
    for i in 0..pg_tasks {
        let messages = if i == 0 {
            pg_total - pg_each * (pg_tasks - 1)
        } else {
            pg_each
        };
        jobs.push(produce::Job {
            name: format!("pg{i}"),
            outbox: Outbox::Postgres(dbs.outbox_pg.clone()),
            paths: pg_paths.clone(),
            keys: 8,
            messages,
            rate: messages as f64 / secs,
            plain_sql: i % 2 == 1,
            seed: seed.wrapping_add(i + 1),
            rollback: 0.03,
            poison: 0.002,
        });
    }
    jobs.push(produce::Job {
        name: "sq".into(),
        outbox: Outbox::Sqlite(dbs.outbox_sqlite.clone()),
        paths: vec![("sqlite", topic("sqlite"))],
        keys: 8,
        messages: sqlite_share,
        rate: sqlite_share as f64 / secs,
        plain_sql: false,
        seed: seed.wrapping_add(100),
        rollback: 0.03,
        poison: 0.002,
    });
    jobs.push(produce::Job {
        name: "ev".into(),
        outbox: Outbox::Events(dbs.outbox_pg.clone()),
        paths: vec![("events", EVENT_TYPE.to_owned())],
        keys: 8,
        messages: events_share,
        rate: events_share as f64 / secs,
        plain_sql: false,
        seed: seed.wrapping_add(200),
        rollback: 0.03,
        // The forwarder and the follower have no dead letters.
        poison: 0.0,
    });
    jobs.into_iter()
        .map(|job| tokio::spawn(produce::run(job, out.clone())))
        .collect()
}

/// Carries out the schedule until it ends or `stop` is set, one fault at a
/// time or (`overlap`) each at its time; returns the faults injected by
/// kind and any fault that could not be carried out, once every fault
/// started has ended.
async fn run_faults(
    world: Arc<World>,
    log: Arc<FaultLog>,
    schedule: Vec<Scheduled>,
    stop: Arc<AtomicBool>,
    started: Instant,
    overlap: bool,
) -> (BTreeMap<String, u32>, Vec<String>) {
    let link_names: Vec<&str> = world.links.iter().map(|l| l.name).collect();
    let mut injected = BTreeMap::new();
    let mut errors = Vec::new();
    let mut running = tokio::task::JoinSet::new();
    'schedule: for s in schedule {
        // Wait for the fault's time, looking at `stop` now and then.
        while started.elapsed() < s.at {
            if stop.load(Ordering::SeqCst) {
                break 'schedule;
            }
            tokio::time::sleep((s.at - started.elapsed()).min(Duration::from_millis(200))).await;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let kind = s.fault.kind(&world.names, &link_names);
        let parts = s.fault.parts(&world.names, &link_names);
        if overlap {
            let (world, log, kind) = (world.clone(), log.clone(), kind.clone());
            running.spawn(async move { carry_out(&world, &log, &s.fault, &kind, parts).await });
        } else if let Err(e) = carry_out(&world, &log, &s.fault, &kind, parts).await {
            errors.push(e);
        }
        *injected.entry(kind).or_insert(0) += 1;
    }
    while let Some(done) = running.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("a fault task failed: {e}")),
        }
    }
    (injected, errors)
}

/// Injects `fault` and records it in `log` once it is undone; an error
/// naming `kind` if it could not be carried out.
async fn carry_out(
    world: &World,
    log: &FaultLog,
    fault: &Fault,
    kind: &str,
    (what, target): (String, String),
) -> Result<(), String> {
    let asked = log.now();
    let mut begun = None;
    let result = inject(world, fault, log, &mut begun).await;
    log.record(FaultRecord {
        kind: what,
        target,
        start: begun.unwrap_or(asked),
        end: log.now(),
        error: result.as_ref().err().map(|e| format!("{e:#}")),
    });
    result.map_err(|e| format!("fault {kind} failed: {e:#}"))
}

/// Injects `fault`, noting in `begun` when it took effect (after waiting
/// for its target's turn), and undoes it after its time.
async fn inject(
    world: &World,
    fault: &Fault,
    log: &FaultLog,
    begun: &mut Option<Duration>,
) -> anyhow::Result<()> {
    match fault {
        Fault::KillFerry { process, down } => {
            let mut p = world.ferry[*process].lock().await;
            *begun = Some(log.now());
            p.kill().await;
            tokio::time::sleep(*down).await;
            p.restart()?;
        }
        Fault::RestartPostgres { down } => {
            let _turn = world.pg_turn.lock().await;
            *begun = Some(log.now());
            let pg = world.pg.clone();
            tokio::task::spawn_blocking(move || pg.stop(Stop::Immediate)).await?;
            tokio::time::sleep(*down).await;
            let pg = world.pg.clone();
            tokio::task::spawn_blocking(move || pg.start_again()).await?;
        }
        Fault::RestartNats { down } => {
            let _turn = world.nats_turn.lock().await;
            *begun = Some(log.now());
            world.nats.kill();
            tokio::time::sleep(*down).await;
            world.nats.restart().await;
        }
        Fault::RestartRedis { down } => {
            let mut p = world.redis.lock().await;
            *begun = Some(log.now());
            p.kill().await;
            tokio::time::sleep(*down).await;
            p.restart()?;
            services::wait_port("redis-server", world.redis_port, Duration::from_secs(30)).await?;
        }
        Fault::Link { link, fault, hold } => {
            let _turn = world.link_turns[*link].lock().await;
            let link = &world.links[*link];
            *begun = Some(log.now());
            match fault {
                LinkFault::Delay(d) => link.set(Mode::Delay(*d)),
                LinkFault::Blackhole => link.set(Mode::Blackhole),
                LinkFault::Reset => link.reset_all(),
            }
            tokio::time::sleep(*hold).await;
            link.set(Mode::Pass);
        }
        Fault::Webhook { mode, hold } => {
            let _turn = world.link_turns[world.links.len()].lock().await;
            *begun = Some(log.now());
            world.receivers.set_webhook(*mode);
            tokio::time::sleep(*hold).await;
            world.receivers.set_webhook(Webhook::Up);
        }
    }
    Ok(())
}

/// Undoes every fault: links pass, the webhook answers, every process runs.
async fn restore(world: &World) -> anyhow::Result<()> {
    for l in &world.links {
        l.set(Mode::Pass);
    }
    world.receivers.set_webhook(Webhook::Up);
    for p in &world.ferry {
        p.lock().await.restart()?;
    }
    world.redis.lock().await.restart()?;
    Ok(())
}

/// Per path: (effects applied, dead letters, pending outbox rows) against
/// (committed non-poison, poison).
async fn progress(dbs: &Dbs) -> anyhow::Result<Vec<(String, [i64; 5])>> {
    let mut expected: HashMap<String, (i64, i64)> = HashMap::new();
    for row in sqlx::query(
        "SELECT path, count(*) FILTER (WHERE NOT poison), count(*) FILTER (WHERE poison) FROM soak_business GROUP BY path",
    )
    .fetch_all(&dbs.outbox_pg)
    .await?
    {
        expected.insert(row.get(0), (row.get(1), row.get(2)));
    }
    for row in sqlx::query(
        "SELECT path, sum(CASE WHEN poison THEN 0 ELSE 1 END), sum(CASE WHEN poison THEN 1 ELSE 0 END) FROM soak_business GROUP BY path",
    )
    .fetch_all(&dbs.outbox_sqlite)
    .await?
    {
        expected.insert(row.get(0), (row.get(1), row.get(2)));
    }
    let events_committed: i64 = sqlx::query("SELECT count(*) FROM soak_event_business")
        .fetch_one(&dbs.outbox_pg)
        .await?
        .get(0);
    let behind = events_behind(dbs).await?;
    for (name, _) in &behind {
        expected.insert(name.clone(), (events_committed, 0));
    }
    let changes: i64 = sqlx::query("SELECT count(*) FROM soak_cdc_log")
        .fetch_one(&dbs.cdc)
        .await?
        .get(0);
    expected.insert(cdc::PATH.to_owned(), (changes, 0));
    let changes: i64 = sqlx::query("SELECT count(*) FROM soak_cdc_log")
        .fetch_one(&dbs.binlog)
        .await?
        .get(0);
    expected.insert(cdc::BINLOG_PATH.to_owned(), (changes, 0));
    let changes: i64 = sqlx::query("SELECT count(*) FROM soak_cdc_log")
        .fetch_one(&dbs.triggers)
        .await?
        .get(0);
    expected.insert(cdc::TRIGGERS_PATH.to_owned(), (changes, 0));
    let rows: i64 = sqlx::query("SELECT count(*) FROM soak_batch_rows")
        .fetch_one(&dbs.batch)
        .await?
        .get(0);
    expected.insert(batch::PATH.to_owned(), (rows, 0));
    let mut applied: HashMap<String, i64> = HashMap::new();
    for row in
        sqlx::query("SELECT path, count(DISTINCT message_id) FROM soak_effects GROUP BY path")
            .fetch_all(&dbs.effects_pg)
            .await?
    {
        applied.insert(row.get(0), row.get(1));
    }
    for row in
        sqlx::query("SELECT path, count(DISTINCT message_id) FROM soak_effects GROUP BY path")
            .fetch_all(&dbs.effects_mariadb)
            .await?
    {
        applied.insert(row.get(0), row.get(1));
    }
    let mut dead: HashMap<String, i64> = HashMap::new();
    let mut pending: HashMap<String, i64> = HashMap::new();
    for row in sqlx::query("SELECT topic, count(*) FROM ferry_dead_letters GROUP BY topic")
        .fetch_all(&dbs.consumers)
        .await?
    {
        *dead.entry(row.get(0)).or_default() += row.get::<i64, _>(1);
    }
    let outbox_counts = "SELECT topic, status, count(*) FROM ferry_outbox GROUP BY topic, status";
    let mut rows = sqlx::query(outbox_counts).fetch_all(&dbs.outbox_pg).await?;
    let sqlite_rows = sqlx::query(outbox_counts)
        .fetch_all(&dbs.outbox_sqlite)
        .await?;
    let mut add = |topic: String, status: String, n: i64| match status.as_str() {
        "dead" => *dead.entry(topic).or_default() += n,
        "pending" => *pending.entry(topic).or_default() += n,
        _ => {}
    };
    for row in rows.drain(..) {
        add(row.get(0), row.get(1), row.get(2));
    }
    for row in sqlite_rows {
        add(row.get(0), row.get(1), row.get(2));
    }
    for (name, n) in behind {
        pending.insert(topic(&name), n);
    }
    pending.insert(topic(cdc::TRIGGERS_PATH), trigger_changes_left(dbs).await?);
    let left = batch::left(&dbs.batch_folder)?;
    pending.insert(topic(batch::PATH), (left.waiting + left.refused) as i64);
    Ok(PATHS
        .iter()
        .map(|p| {
            let (ok, poison) = expected.get(p.name).copied().unwrap_or_default();
            let t = topic(p.name);
            (
                p.name.to_owned(),
                [
                    applied.get(p.name).copied().unwrap_or_default(),
                    ok,
                    dead.get(&t).copied().unwrap_or_default(),
                    poison,
                    pending.get(&t).copied().unwrap_or_default(),
                ],
            )
        })
        .collect())
}

/// Per event-store path, how far its reader's offset is behind the head:
/// the forwarder's in the event store's database, the follower's in the
/// effects database.
async fn events_behind(dbs: &Dbs) -> anyhow::Result<Vec<(String, i64)>> {
    let store = ferry_store::Database::Postgres(dbs.outbox_pg.clone());
    let head = store.event_head().await?;
    let fwd = store.load_offset(FORWARDER).await?;
    let api = ferry_store::Database::Postgres(dbs.effects_pg.clone())
        .load_offset(follower::READER)
        .await?;
    Ok(vec![
        (FORWARDER.to_owned(), head - fwd),
        (follower::READER.to_owned(), head - api),
    ])
}

/// Waits until every path has applied what was committed, dead-lettered
/// the poison, left nothing pending, and the brokers hold nothing for the
/// consumers; an error naming what is left after `limit`.
async fn drain(
    world: &World,
    dbs: &Dbs,
    limit: Duration,
    metrics_ports: &[u16],
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last;
    let mut shown = Instant::now();
    loop {
        // A process that died by itself is restarted (and reported).
        for p in &world.ferry {
            let mut p = p.lock().await;
            if let Some(status) = p.exited() {
                println!(
                    "ferry-soak: {} exited by itself ({status}) while draining; restarting. log tail:\n{}",
                    p.name,
                    p.log_tail(10)
                );
                p.kill().await;
                p.restart()?;
            }
        }
        match progress(dbs).await {
            Ok(rows) => {
                let done_rows = rows.iter().all(|(_, [a, ok, d, poison, pending])| {
                    a >= ok && d >= poison && *pending == 0
                });
                last = rows
                    .iter()
                    .map(|(n, [a, ok, d, poison, pending])| {
                        format!("{n} {a}/{ok} applied {d}/{poison} dead {pending} pending")
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                if done_rows {
                    let lag = consumer_lag(metrics_ports).await.unwrap_or_default();
                    let every = PATHS
                        .iter()
                        .filter(|p| p.consumer)
                        .all(|p| lag.contains_key(p.name));
                    if lag.values().all(|v| *v == 0) && every {
                        return Ok(());
                    }
                    last = format!("{last}; broker lag {lag:?}");
                }
            }
            Err(e) => last = format!("cannot read progress: {e:#}"),
        }
        if shown.elapsed() > Duration::from_secs(10) {
            println!("ferry-soak: draining: {last}");
            shown = Instant::now();
        }
        if started.elapsed() > limit {
            bail!("the pipelines did not drain within {limit:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Messages the brokers hold for each consumer: waiting plus unacknowledged,
/// from the `/metrics` pages on `ports`.
async fn consumer_lag(ports: &[u16]) -> anyhow::Result<HashMap<String, u64>> {
    let mut text = String::new();
    for port in ports {
        text.push_str(&metrics(*port).await?);
    }
    let mut lag: HashMap<String, u64> = HashMap::new();
    for metric in [
        "ferry_consumer_lag_waiting_messages",
        "ferry_consumer_lag_unacked_messages",
    ] {
        for (c, v) in per_consumer(&text, metric) {
            *lag.entry(c).or_default() += if v.is_finite() {
                v.max(0.0) as u64
            } else {
                u64::MAX
            };
        }
    }
    Ok(lag)
}

async fn observe(
    dbs: &Dbs,
    lag: &HashMap<String, u64>,
    not_committed: Vec<Uuid>,
) -> anyhow::Result<Observed> {
    let mut paths = Vec::new();
    for p in &PATHS {
        let t = topic(p.name);
        if p.events {
            paths.push(observe_events(dbs, p).await?);
            continue;
        }
        if p.cdc {
            paths.push(observe_cdc(dbs, p).await?);
            continue;
        }
        if p.binlog {
            paths.push(observe_binlog(dbs, p).await?);
            continue;
        }
        if p.triggers {
            paths.push(observe_triggers(dbs, p).await?);
            continue;
        }
        if p.batch {
            paths.push(observe_batch(dbs, p).await?);
            continue;
        }
        let committed: Vec<Produced> = if p.sqlite_outbox {
            sqlx::query("SELECT message_id, msg_key, n, poison FROM soak_business WHERE path = ?")
                .bind(p.name)
                .fetch_all(&dbs.outbox_sqlite)
                .await?
                .iter()
                .map(|r| {
                    Ok(Produced {
                        id: r.get::<String, _>(0).parse()?,
                        key: r.get(1),
                        n: r.get(2),
                        poison: r.get(3),
                    })
                })
                .collect::<anyhow::Result<_>>()?
        } else {
            sqlx::query("SELECT message_id, msg_key, n, poison FROM soak_business WHERE path = $1")
                .bind(p.name)
                .fetch_all(&dbs.outbox_pg)
                .await?
                .iter()
                .map(|r| Produced {
                    id: r.get(0),
                    key: r.get(1),
                    n: r.get(2),
                    poison: r.get(3),
                })
                .collect()
        };
        let effects: Vec<Effect> = match p.effects {
            EffectDb::Postgres => pg_effects(dbs, p.name).await?,
            EffectDb::Mariadb => sqlx::query(
                "SELECT message_id, msg_key, n FROM soak_effects WHERE path = ? ORDER BY id",
            )
            .bind(p.name)
            .fetch_all(&dbs.effects_mariadb)
            .await?
            .iter()
            .map(|r| {
                Ok(Effect {
                    id: r.get::<String, _>(0).parse()?,
                    key: r.get(1),
                    n: r.get(2),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        };
        // Outbox rows left (pending or dead), with their status.
        let left: Vec<(Uuid, String)> = if p.sqlite_outbox {
            sqlx::query("SELECT message_id, status FROM ferry_outbox WHERE topic = ?")
                .bind(&t)
                .fetch_all(&dbs.outbox_sqlite)
                .await?
                .iter()
                .map(|r| Ok((r.get::<String, _>(0).parse()?, r.get(1))))
                .collect::<anyhow::Result<_>>()?
        } else {
            sqlx::query("SELECT message_id, status FROM ferry_outbox WHERE topic = $1")
                .bind(&t)
                .fetch_all(&dbs.outbox_pg)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        };
        let mut dead: Vec<Uuid> = left
            .iter()
            .filter(|(_, s)| s == "dead")
            .map(|(id, _)| *id)
            .collect();
        for r in sqlx::query("SELECT message_id FROM ferry_dead_letters WHERE topic = ?")
            .bind(&t)
            .fetch_all(&dbs.consumers)
            .await?
        {
            dead.push(r.get::<String, _>(0).parse()?);
        }
        paths.push(PathData {
            name: p.name.to_owned(),
            ordered: p.ordered,
            committed,
            effects,
            dead,
            pending: left.iter().filter(|(_, s)| s == "pending").count() as u64,
            outbox_left: left.into_iter().map(|(id, _)| id).collect(),
            lag: p
                .consumer
                .then(|| lag.get(p.name).copied().unwrap_or(u64::MAX)),
        });
    }
    Ok(Observed {
        paths,
        not_committed,
    })
}

/// What an event-store path did: committed = the event producer's business
/// rows; "pending" = how far the reader's offset is behind the head; every
/// event in the store is looked up among the rolled-back ids.
async fn observe_events(dbs: &Dbs, p: &PathSpec) -> anyhow::Result<PathData> {
    let committed = sqlx::query("SELECT event_id, msg_key, n FROM soak_event_business")
        .fetch_all(&dbs.outbox_pg)
        .await?
        .iter()
        .map(|r| Produced {
            id: r.get(0),
            key: r.get(1),
            n: r.get(2),
            poison: false,
        })
        .collect();
    let effects = pg_effects(dbs, p.name).await?;
    let stored = sqlx::query("SELECT event_id FROM ferry_events")
        .fetch_all(&dbs.outbox_pg)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let behind = events_behind(dbs)
        .await?
        .into_iter()
        .find(|(n, _)| n == p.name)
        .map_or(0, |(_, b)| b);
    Ok(PathData {
        name: p.name.to_owned(),
        ordered: p.ordered,
        committed,
        effects,
        dead: Vec::new(),
        outbox_left: stored,
        pending: behind.max(0) as u64,
        lag: None,
    })
}

/// The effect rows of `path` in the PostgreSQL effects database, in the
/// order they were applied.
async fn pg_effects(dbs: &Dbs, path: &str) -> anyhow::Result<Vec<Effect>> {
    Ok(
        sqlx::query("SELECT message_id, msg_key, n FROM soak_effects WHERE path = $1 ORDER BY id")
            .bind(path)
            .fetch_all(&dbs.effects_pg)
            .await?
            .iter()
            .map(|r| Effect {
                id: r.get(0),
                key: r.get(1),
                n: r.get(2),
            })
            .collect(),
    )
}

/// What the CDC path did: committed = the producer's change log; dead =
/// the capture's dead letters (in the captured database, its state).
async fn observe_cdc(dbs: &Dbs, p: &PathSpec) -> anyhow::Result<PathData> {
    let committed = sqlx::query("SELECT change_id, row_id, seq FROM soak_cdc_log")
        .fetch_all(&dbs.cdc)
        .await?
        .iter()
        .map(|r| Produced {
            id: r.get(0),
            key: r.get::<i64, _>(1).to_string(),
            n: r.get(2),
            poison: false,
        })
        .collect();
    let effects = pg_effects(dbs, p.name).await?;
    let dead = sqlx::query("SELECT message_id FROM ferry_dead_letters")
        .fetch_all(&dbs.cdc)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(PathData {
        name: p.name.to_owned(),
        ordered: p.ordered,
        committed,
        effects,
        dead,
        outbox_left: Vec::new(),
        pending: 0,
        lag: None,
    })
}

/// What the binlog path did: committed = the MariaDB producer's change
/// log; dead = `ferry cdc`'s dead letters (in the captured database).
async fn observe_binlog(dbs: &Dbs, p: &PathSpec) -> anyhow::Result<PathData> {
    let log = sqlx::query_as(CHANGE_LOG).fetch_all(&dbs.binlog).await?;
    let dead = sqlx::query_scalar(DEAD_IDS).fetch_all(&dbs.binlog).await?;
    change_path(dbs, p, log, dead, 0).await
}

/// What the trigger path did: committed = the SQLite producer's change
/// log; dead = the capture's dead letters (in the captured file); pending
/// = change rows the capture has not pruned.
async fn observe_triggers(dbs: &Dbs, p: &PathSpec) -> anyhow::Result<PathData> {
    let log = sqlx::query_as(CHANGE_LOG).fetch_all(&dbs.triggers).await?;
    let dead = sqlx::query_scalar(DEAD_IDS)
        .fetch_all(&dbs.triggers)
        .await?;
    let pending = trigger_changes_left(dbs).await?.max(0) as u64;
    change_path(dbs, p, log, dead, pending).await
}

/// A producer's change log: (change id, row id, its sequence in the row).
const CHANGE_LOG: &str = "SELECT change_id, row_id, seq FROM soak_cdc_log";
/// A capture's dead letters, in the captured database.
const DEAD_IDS: &str = "SELECT message_id FROM ferry_dead_letters";

/// A capture path's data from its producer's change log and its dead
/// letters (read from the captured database, whichever kind it is); the
/// effects are in PostgreSQL.
async fn change_path(
    dbs: &Dbs,
    p: &PathSpec,
    log: Vec<(String, i64, i64)>,
    dead: Vec<String>,
    pending: u64,
) -> anyhow::Result<PathData> {
    let committed = log
        .into_iter()
        .map(|(id, row, n)| {
            Ok(Produced {
                id: id.parse()?,
                key: row.to_string(),
                n,
                poison: false,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let dead = dead
        .iter()
        .map(|id| Ok(id.parse()?))
        .collect::<anyhow::Result<_>>()?;
    Ok(PathData {
        name: p.name.to_owned(),
        ordered: p.ordered,
        committed,
        effects: pg_effects(dbs, p.name).await?,
        dead,
        outbox_left: Vec::new(),
        pending,
        lag: None,
    })
}

/// What the batch path did: committed = the exported table's rows;
/// pending = manifests neither archived nor refused, plus refused ones.
async fn observe_batch(dbs: &Dbs, p: &PathSpec) -> anyhow::Result<PathData> {
    let committed = sqlx::query("SELECT message_id, msg_key, n FROM soak_batch_rows")
        .fetch_all(&dbs.batch)
        .await?
        .iter()
        .map(|r| Produced {
            id: r.get(0),
            key: r.get(1),
            n: r.get(2),
            poison: false,
        })
        .collect();
    let effects = pg_effects(dbs, p.name).await?;
    let left = batch::left(&dbs.batch_folder)?;
    Ok(PathData {
        name: p.name.to_owned(),
        ordered: p.ordered,
        committed,
        effects,
        dead: Vec::new(),
        outbox_left: Vec::new(),
        pending: left.waiting + left.refused,
        lag: None,
    })
}

/// Change rows the trigger capture recorded and has not pruned yet.
async fn trigger_changes_left(dbs: &Dbs) -> anyhow::Result<i64> {
    Ok(
        sqlx::query("SELECT count(*) FROM ferry_cdc_changes WHERE capture = ?")
            .bind(cdc::TRIGGERS_CAPTURE)
            .fetch_one(&dbs.triggers)
            .await?
            .get(0),
    )
}

/// Whether the trigger capture has installed its three triggers on
/// `soak_cdc_rows`.
async fn triggers_installed(pool: &SqlitePool) -> bool {
    let found: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'soak_cdc_rows'",
    )
    .fetch_one(pool)
    .await;
    matches!(found, Ok(n) if n >= 3)
}

/// The MariaDB database of the binlog path, beside the effects' `db`.
fn binlog_database(db: &str) -> String {
    format!("{db}_binlog")
}

/// Whether the binlog capture has saved a position.
async fn binlog_position_saved(pool: &MySqlPool) -> bool {
    let found = sqlx::query("SELECT 1 FROM ferry_cdc_offsets WHERE capture = ?")
        .bind(cdc::BINLOG_CAPTURE)
        .fetch_optional(pool)
        .await;
    matches!(found, Ok(Some(_)))
}

/// Whether the capture's replication slot exists.
async fn slot_exists(pool: &PgPool) -> bool {
    let found = sqlx::query("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1")
        .bind(format!("ferry_{CAPTURE}"))
        .fetch_optional(pool)
        .await;
    matches!(found, Ok(Some(_)))
}

/// Drops what the run made on the shared servers: the MariaDB database and
/// the RabbitMQ queue (the exchange `soak-<run>` stays: rabbitmqctl cannot
/// delete one; it holds no messages).
async fn cleanup(args: &Args, run: &str, mariadb_db: &str) {
    if let Ok(mut conn) = sqlx::MySqlConnection::connect(&args.mariadb).await {
        for db in [mariadb_db.to_owned(), binlog_database(mariadb_db)] {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {db}").as_str())
                .await;
        }
    }
    let queue = format!("soak-amqp-{run}:{}", topic("amqp"));
    let _ = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "delete_queue", &queue])
        .output()
        .await;
}
