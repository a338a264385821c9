//! `ferry-bench events`: the event store's figures, each beside a baseline
//! measured in the same run on the same database.
//!
//! * **append**: events appended through `event_store::<db>::append` (the
//!   insert trigger numbers them under the store's append lock), beside a
//!   raw multi-row INSERT of the same rows into a table with the same
//!   columns and indexes but no trigger: 1 event per transaction from
//!   `--clients` clients (1 on SQLite), and 100 events per transaction
//!   from one client.
//! * **forward**: a forwarder drains the store into a handler that does
//!   nothing (its default page size and settings), beside reading the same
//!   events page by page with `Database::read_events` at that page size
//!   (the forwarder's own reads, without handling or saving offsets).
//! * **http**: a client pulls every event through `GET /v1/events` with
//!   `limit=500` from the API served on loopback, beside the same pages
//!   read straight from the database.
//!
//! Every measurement gets a fresh, migrated database (`CREATE DATABASE` on
//! PostgreSQL and MariaDB, a temporary file on SQLite), dropped afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ferry_events::forwarder::{handler_fn, Forwarder, ForwarderConfig, HandlerError};
use ferry_store::event_store::{self, EventQuery, NewEvent};
use ferry_store::{Database, DatabaseKind};
use sqlx::{Connection, Executor};

use crate::report::{median, ratio, thousands, Figure, Tsv};

/// `ferry-bench events` options.
#[derive(clap::Args, Clone, Debug)]
pub struct EventsArgs {
    /// The server: `postgres://user@host/db`, `mysql://root@host/db`
    /// (scratch databases are made beside `db`), or `sqlite://` (temp dir).
    #[arg(long)]
    pub database: String,
    /// Events per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Concurrent clients of the 1-event-per-transaction figures
    /// (PostgreSQL and MariaDB; SQLite has one writer).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Page size of the HTTP figure.
    #[arg(long, default_value_t = 500)]
    pub page: u32,
}

/// Runs the event store figures and prints them.
pub async fn run(args: EventsArgs, tsv: &Tsv) -> anyhow::Result<()> {
    ensure!(
        args.events > 0 && args.runs > 0,
        "--events and --runs must be at least 1"
    );
    let kind = DatabaseKind::of(&args.database)?;
    let label = match kind {
        DatabaseKind::Postgres => "postgres",
        DatabaseKind::Mysql => "mariadb",
        DatabaseKind::Sqlite => "sqlite",
    };
    let clients = if kind == DatabaseKind::Sqlite {
        1
    } else {
        args.clients.max(1)
    };
    let payload = payload();
    println!(
        "event store on {label}: {} events of {} B per measurement, median of {} runs",
        thousands(args.events as f64),
        payload.len(),
        args.runs
    );

    let shapes = [(1usize, clients), (100usize, 1usize)];
    let mut rows = Vec::new();
    for (per_txn, clients) in shapes {
        let mut ferry = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..args.runs {
            let scratch = Scratch::create(&args.database).await?;
            let db = scratch.connect().await?;
            create_raw_table(&db).await?;
            raw.push(append_rate(&db, args.events, per_txn, clients, Mode::Raw).await?);
            ferry.push(append_rate(&db, args.events, per_txn, clients, Mode::Ferry).await?);
            let head = db.event_head().await?;
            ensure!(
                head as usize >= args.events,
                "the store holds {head} events, expected {}",
                args.events
            );
            db.close().await;
            scratch.drop().await?;
        }
        let name = format!("append_{per_txn}_per_txn_x{clients}");
        rows.push((
            name,
            median(&ferry),
            "events/s",
            median(&raw),
            "raw insert, same rows".to_owned(),
        ));
    }

    // Forwarder and HTTP share one filled store per run.
    let mut forwarded = Vec::new();
    let mut direct = Vec::new();
    let mut http_events = Vec::new();
    let mut http_pages = Vec::new();
    let mut direct_pages = Vec::new();
    for _ in 0..args.runs {
        let scratch = Scratch::create(&args.database).await?;
        let db = scratch.connect().await?;
        fill(&db, args.events).await?;
        let (rate, _) = read_rate(&db, ForwarderConfig::default().batch_size).await?;
        direct.push(rate);
        forwarded.push(forward_rate(&db, args.events).await?);
        let (events_s, pages_s) = http_rate(&db, args.page, args.events).await?;
        http_events.push(events_s);
        http_pages.push(pages_s);
        let (_, pages) = read_rate(&db, args.page).await?;
        direct_pages.push(pages);
        db.close().await;
        scratch.drop().await?;
    }
    rows.push((
        "forward_noop_handler".to_owned(),
        median(&forwarded),
        "events/s",
        median(&direct),
        format!(
            "read_events pages of {}",
            ForwarderConfig::default().batch_size
        ),
    ));
    rows.push((
        format!("http_limit_{}", args.page),
        median(&http_events),
        "events/s",
        // The baseline's events/s: pages/s times the page size.
        median(&direct_pages) * f64::from(args.page),
        format!("read_events pages of {}", args.page),
    ));
    rows.push((
        format!("http_limit_{}_pages", args.page),
        median(&http_pages),
        "pages/s",
        median(&direct_pages),
        format!("read_events pages of {}", args.page),
    ));

    println!();
    println!("| figure | value | baseline (same run) | ratio |");
    println!("|---|---|---|---|");
    for (name, value, unit, base, base_name) in &rows {
        println!(
            "| {name} | {} {unit} | {} {unit} ({base_name}) | {} |",
            thousands(*value),
            thousands(*base),
            ratio(*value, *base)
        );
        tsv.append(&Figure {
            command: "events",
            database: label.to_owned(),
            server: redact_server(&args.database),
            sink: String::new(),
            figure: name.clone(),
            run: 0,
            value: *value,
            unit,
            baseline: base_name.clone(),
            baseline_value: Some(*base),
            settings: format!(
                "events={} clients={clients} runs={}",
                args.events, args.runs
            ),
            notes: String::new(),
        })?;
    }
    Ok(())
}

fn redact_server(url: &str) -> String {
    ferry_store::redact(url)
}

/// About 200 bytes of JSON, like the relay benchmarks' messages.
fn payload() -> Vec<u8> {
    let filler = "x".repeat(150);
    format!(r#"{{"order_id":12345,"reason":"customer request","note":"{filler}"}}"#).into_bytes()
}

fn event(i: usize, payload: &[u8]) -> NewEvent {
    NewEvent::new("order.cancelled", payload.to_vec()).with_source("order", (i % 1000).to_string())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ferry,
    Raw,
}

/// Events/s appending `n` events, `per_txn` per transaction, from
/// `clients` concurrent clients; timed from the first statement to the
/// last commit.
async fn append_rate(
    db: &Database,
    n: usize,
    per_txn: usize,
    clients: usize,
    mode: Mode,
) -> anyhow::Result<f64> {
    let payload = Arc::new(payload());
    let txns = n.div_ceil(per_txn);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let db = db.clone();
        let payload = payload.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if t >= txns {
                    return anyhow::Ok(());
                }
                let batch: Vec<NewEvent> = (t * per_txn..((t + 1) * per_txn).min(n))
                    .map(|i| event(i, &payload))
                    .collect();
                append_one(&db, &batch, mode).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// One transaction appending `batch`.
async fn append_one(db: &Database, batch: &[NewEvent], mode: Mode) -> anyhow::Result<()> {
    match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            match mode {
                Mode::Ferry => drop(event_store::postgres::append(&mut tx, batch).await?),
                Mode::Raw => {
                    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                        "INSERT INTO bench_raw_events (event_id, event_type, source_type, source_id, content_type, payload) ",
                    );
                    q.push_values(batch, |mut b, e| {
                        b.push_bind(e.id)
                            .push_bind(&e.event_type)
                            .push_bind(&e.source_type)
                            .push_bind(&e.source_id)
                            .push_bind(&e.content_type)
                            .push_bind(std::str::from_utf8(&e.payload).unwrap_or_default());
                    });
                    q.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        }
        Database::Mysql(pool) => {
            let mut tx = pool.begin().await?;
            match mode {
                Mode::Ferry => drop(event_store::mysql::append(&mut tx, batch).await?),
                Mode::Raw => {
                    let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new(
                        "INSERT INTO bench_raw_events (event_id, event_type, source_type, source_id, content_type, payload) ",
                    );
                    q.push_values(batch, |mut b, e| {
                        b.push_bind(e.id)
                            .push_bind(&e.event_type)
                            .push_bind(&e.source_type)
                            .push_bind(&e.source_id)
                            .push_bind(&e.content_type)
                            .push_bind(&e.payload);
                    });
                    q.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        }
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            match mode {
                Mode::Ferry => drop(event_store::sqlite::append(&mut tx, batch).await?),
                Mode::Raw => {
                    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                        "INSERT INTO bench_raw_events (event_id, event_type, source_type, source_id, content_type, payload) ",
                    );
                    q.push_values(batch, |mut b, e| {
                        b.push_bind(e.id.to_string())
                            .push_bind(&e.event_type)
                            .push_bind(&e.source_type)
                            .push_bind(&e.source_id)
                            .push_bind(&e.content_type)
                            .push_bind(&e.payload);
                    });
                    q.build().execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// The baseline's table: `ferry_events`' columns and indexes, numbered by
/// the database's own identity column, with no trigger and no lock.
async fn create_raw_table(db: &Database) -> anyhow::Result<()> {
    let statements: &[&str] = match db {
        Database::Postgres(_) => &[
            "CREATE TABLE bench_raw_events (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                event_id UUID NOT NULL, event_type TEXT NOT NULL,
                source_type TEXT NOT NULL DEFAULT '', source_id TEXT NOT NULL DEFAULT '',
                content_type TEXT NOT NULL, payload TEXT, payload_bytes BYTEA,
                recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            "CREATE UNIQUE INDEX ON bench_raw_events (event_id)",
            "CREATE INDEX ON bench_raw_events (event_type, seq)",
            "CREATE INDEX ON bench_raw_events (source_type, source_id, seq)",
        ],
        Database::Mysql(_) => &[
            "CREATE TABLE bench_raw_events (
                seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                event_id UUID NOT NULL, event_type VARCHAR(255) NOT NULL,
                source_type VARCHAR(255) NOT NULL DEFAULT '', source_id VARCHAR(255) NOT NULL DEFAULT '',
                content_type VARCHAR(255) NOT NULL, payload LONGBLOB NOT NULL,
                recorded_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                UNIQUE KEY (event_id), KEY (event_type, seq), KEY (source_type, source_id, seq)
             ) ENGINE=InnoDB",
        ],
        Database::Sqlite(_) => &[
            "CREATE TABLE bench_raw_events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL, event_type TEXT NOT NULL,
                source_type TEXT NOT NULL DEFAULT '', source_id TEXT NOT NULL DEFAULT '',
                content_type TEXT NOT NULL, payload BLOB NOT NULL,
                recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
            "CREATE UNIQUE INDEX bench_raw_events_id ON bench_raw_events (event_id)",
            "CREATE INDEX bench_raw_events_type ON bench_raw_events (event_type, seq)",
            "CREATE INDEX bench_raw_events_source ON bench_raw_events (source_type, source_id, seq)",
        ],
    };
    for s in statements {
        match db {
            Database::Postgres(p) => p.execute(*s).await.map(|_| ())?,
            Database::Mysql(p) => p.execute(*s).await.map(|_| ())?,
            Database::Sqlite(p) => p.execute(*s).await.map(|_| ())?,
        }
    }
    Ok(())
}

/// `n` events in transactions of 1,000.
async fn fill(db: &Database, n: usize) -> anyhow::Result<()> {
    let payload = payload();
    for start in (0..n).step_by(1000) {
        let batch: Vec<NewEvent> = (start..(start + 1000).min(n))
            .map(|i| event(i, &payload))
            .collect();
        db.append_events(&batch).await?;
    }
    Ok(())
}

/// Reads every event page by page; (events/s, pages/s).
async fn read_rate(db: &Database, limit: u32) -> anyhow::Result<(f64, f64)> {
    let head = db.event_head().await?;
    let started = Instant::now();
    let mut offset = 0;
    let mut events = 0usize;
    let mut pages = 0usize;
    while offset < head {
        let page = db
            .read_events(&EventQuery {
                offset,
                limit,
                ..EventQuery::default()
            })
            .await?;
        events += page.events.len();
        pages += 1;
        offset = page.next_offset;
    }
    let secs = started.elapsed().as_secs_f64();
    ensure!(events as i64 == head, "read {events} events of {head}");
    Ok((events as f64 / secs, pages as f64 / secs))
}

/// Events/s of a forwarder from offset 0 to the head, into a handler that
/// does nothing; timed until its stored offset reaches the head.
async fn forward_rate(db: &Database, n: usize) -> anyhow::Result<f64> {
    let head = db.event_head().await?;
    ensure!(
        head as usize >= n,
        "the store holds {head} events, expected {n}"
    );
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = handled.clone();
    let handler = handler_fn(move |_event| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { Ok::<(), HandlerError>(()) }
    });
    let config = ForwarderConfig {
        poll_interval: Duration::from_millis(10),
        ..ForwarderConfig::named("bench")
    };
    let forwarder = Forwarder::to_handler(db, handler, config);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(forwarder.run(shutdown.clone()));
    loop {
        if db.load_offset("bench").await? >= head {
            break;
        }
        if running.is_finished() {
            bail!("the forwarder stopped early: {:?}", running.await?);
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the forwarder did not reach the head within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = running.await;
    let handled = handled.load(std::sync::atomic::Ordering::Relaxed);
    ensure!(handled >= head as usize, "handled {handled} of {head}");
    Ok(head as f64 / secs)
}

/// (events/s, pages/s) of one client pulling every event through the API.
async fn http_rate(db: &Database, limit: u32, n: usize) -> anyhow::Result<(f64, f64)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = ferry_events::api::ApiConfig::default();
    let shutdown = config.shutdown.clone();
    let server = tokio::spawn(ferry_events::api::serve(listener, db.clone(), config));
    let client = reqwest::Client::new();
    let head = db.event_head().await?;
    let started = Instant::now();
    let mut offset = 0i64;
    let mut events = 0usize;
    let mut pages = 0usize;
    while offset < head {
        let body: serde_json::Value = client
            .get(format!(
                "http://{addr}/v1/events?offset={offset}&limit={limit}"
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        events += body["events"].as_array().context("no events array")?.len();
        offset = body["next_offset"].as_i64().context("no next_offset")?;
        pages += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = server.await;
    ensure!(events >= n, "pulled {events} events of {n}");
    Ok((events as f64 / secs, pages as f64 / secs))
}

/// A throwaway database.
struct Scratch {
    url: String,
    admin: Option<(String, String)>,
    file: Option<std::path::PathBuf>,
}

impl Scratch {
    async fn create(server: &str) -> anyhow::Result<Self> {
        let name = format!(
            "{}events_{:012x}",
            crate::scratch::PREFIX,
            rand::random::<u64>() >> 16
        );
        match DatabaseKind::of(server)? {
            DatabaseKind::Sqlite => {
                let rest = server
                    .trim_start_matches("sqlite:")
                    .trim_start_matches("//");
                let dir = match rest.split('?').next().unwrap_or_default() {
                    "" => std::env::temp_dir(),
                    d => std::path::PathBuf::from(d),
                };
                let file = dir.join(format!("{name}.db"));
                Ok(Scratch {
                    url: format!("sqlite://{}?mode=rwc", file.display()),
                    admin: None,
                    file: Some(file),
                })
            }
            DatabaseKind::Postgres | DatabaseKind::Mysql => {
                admin_execute(server, &format!("CREATE DATABASE {name}")).await?;
                let mut url = url::Url::parse(server)?;
                url.set_path(&format!("/{name}"));
                Ok(Scratch {
                    url: url.to_string(),
                    admin: Some((server.to_owned(), name)),
                    file: None,
                })
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Database> {
        let options = ferry_store::ConnectOptions {
            max_connections: 16,
            ..ferry_store::ConnectOptions::default()
        };
        let db = Database::connect_with(&self.url, &options).await?;
        db.migrate().await?;
        Ok(db)
    }

    async fn drop(self) -> anyhow::Result<()> {
        if let Some((server, name)) = &self.admin {
            let force = if DatabaseKind::of(server)? == DatabaseKind::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            admin_execute(server, &format!("DROP DATABASE IF EXISTS {name}{force}")).await?;
        }
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
        Ok(())
    }
}

async fn admin_execute(server: &str, sql: &str) -> anyhow::Result<()> {
    match DatabaseKind::of(server)? {
        DatabaseKind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(server).await?;
            conn.execute(sql).await.with_context(|| sql.to_owned())?;
            let _ = conn.close().await;
        }
        DatabaseKind::Mysql => {
            let mut conn = sqlx::MySqlConnection::connect(server).await?;
            conn.execute(sql).await.with_context(|| sql.to_owned())?;
            let _ = conn.close().await;
        }
        DatabaseKind::Sqlite => {}
    }
    Ok(())
}
