//! `ferry-bench admin`: the admin API's and the console's latency on a
//! big store (issue 12: "≤ 50 ms p99 with 1 million messages in the outbox
//! and 100,000 dead letters"), beside the naive page the issue warns
//! against, measured in the same run on the same database.
//!
//! * **fill**: one scratch database gets `--messages` outbox rows (mostly
//!   delivered, the newest pending, some retrying, `--dead` of them dead
//!   with one of 12 error causes), `--dead-letters` consumer dead letters
//!   of four consumers with the same causes, and 1,000 audit entries, in a
//!   few set-based statements (`generate_series` on PostgreSQL, a
//!   recursive CTE on SQLite); then `VACUUM ANALYZE` / `ANALYZE`, the
//!   steady state autovacuum keeps. The `cause` column holds
//!   `ferry_store::admin::cause_of` of the error, as the store writes it.
//! * **endpoints**: `ferry_admin::router` served on loopback; each API
//!   route and console page is requested `--requests` times one after the
//!   other (after 20 warm-up requests), body read; p50, p99 and max.
//! * **baseline**: the deep outbox page the naive way, `ORDER BY seq DESC
//!   LIMIT 50 OFFSET <half>` plus the `SELECT COUNT(*) FROM ferry_outbox`
//!   a page with a total runs on every load, through sqlx directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ferry_admin::{Admin, AdminConfig, ApiToken, Daemon, NamedStore, Overview, ReplayError, Role};
use ferry_events::api::BearerToken;
use ferry_store::admin::cause_of;
use ferry_store::event_store::StoredEvent;
use ferry_store::{Database, DeadLetter};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::report::{percentile, ratio, thousands, Figure, Tsv};
use crate::scratch::Server;

/// `ferry-bench admin` options.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// The server: `postgres://user@host/db` (a scratch database is made
    /// beside `db`), or `sqlite://` (temp dir) / `sqlite:///dir`.
    #[arg(long)]
    pub database: String,
    /// Messages in the outbox.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// How many of them are dead (spread evenly over the table).
    #[arg(long, default_value_t = 100_000)]
    pub dead: u64,
    /// Consumer dead letters (`ferry_dead_letters`).
    #[arg(long, default_value_t = 100_000)]
    pub dead_letters: u64,
    /// Timed requests per endpoint, one after the other (after 20 warm-up
    /// requests); an endpoint stops early after 60 s.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Keep the scratch database afterwards (its URL is printed), e.g. to
    /// `EXPLAIN ANALYZE` a slow query on it; `ferry-bench clean` drops it.
    #[arg(long)]
    pub keep: bool,
}

/// Requests before the timed ones.
const WARM_UP: usize = 20;
/// The longest one endpoint is measured.
const BUDGET: Duration = Duration::from_secs(60);
/// The target.
const TARGET_MS: f64 = 50.0;
/// The token the client presents.
const TOKEN: &str = "ferry-bench-admin-token";
/// Topics and keys of the outbox rows.
const TOPICS: u64 = 20;
const KEYS: u64 = 10_000;

/// Error messages of the dead rows, `{n}` standing for a number that
/// varies from row to row (and which `cause_of` folds away).
const ERRORS: [&str; 12] = [
    "HTTP 503 Service Unavailable from https://hooks.partner.example/orders/{n}",
    "HTTP 500 from http://10.0.0.{n}:8080/webhook after {n}s",
    "connection refused (os error 111) connecting to broker-{n}.internal:9092",
    "timed out after {n}ms waiting for the sink",
    "HTTP 422 Unprocessable Entity: field `customer_id` is missing in message {n}",
    "HTTP 413 Payload Too Large: {n} bytes exceeds the limit",
    "tls handshake failed: certificate has expired (serial {n})",
    "HTTP 401 Unauthorized: token rejected for tenant {n}",
    "dns error: failed to lookup address information for shard-{n}.example.net",
    "message rejected by schema registry: unknown version {n} of subject 'orders-value'",
    "HTTP 429 Too Many Requests: retry after {n} seconds",
    "deserialize payload: expected value at line 1 column {n}",
];

/// The 12 errors with their causes, checked to fold every `{n}` away.
fn causes() -> anyhow::Result<Vec<(&'static str, String)>> {
    ERRORS
        .iter()
        .map(|template| {
            let cause = cause_of(&template.replace("{n}", "7"));
            ensure!(
                cause == cause_of(&template.replace("{n}", "996")),
                "`{template}`: its cause depends on the number"
            );
            Ok((*template, cause))
        })
        .collect()
}

/// The bench's process as the admin layer sees it: one store, nothing
/// running (the overview answers from memory in the daemon too).
struct BenchDaemon(NamedStore);

impl Daemon for BenchDaemon {
    fn overview(&self) -> Overview {
        Overview::default()
    }

    fn stores(&self) -> Vec<NamedStore> {
        vec![self.0.clone()]
    }

    fn republish<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move { Err(ReplayError::UnknownOwner(letter.consumer.clone())) })
    }

    fn redeliver_event<'a>(
        &'a self,
        reader: &'a str,
        _event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ReplayError>> {
        Box::pin(async move { Err(ReplayError::UnknownOwner(reader.to_owned())) })
    }
}

/// Latencies of one endpoint, in ms.
#[derive(Clone, Debug)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Stats {
            n: ms.len(),
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            max: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Runs the admin figures and prints them.
pub async fn run(args: AdminArgs, tsv: &Tsv) -> anyhow::Result<()> {
    ensure!(args.messages >= 2, "--messages must be at least 2");
    ensure!(
        (1..=args.messages).contains(&args.dead),
        "--dead must be from 1 to --messages ({})",
        args.messages
    );
    ensure!(args.dead_letters >= 1, "--dead-letters must be at least 1");
    ensure!(args.requests >= 1, "--requests must be at least 1");
    let server = Server::parse(&args.database)?;
    let described = server.describe().await?;
    println!(
        "admin API and console on {described}: {} outbox messages ({} dead), {} consumer dead letters, {} requests per endpoint after {WARM_UP} warm-up",
        thousands(args.messages as f64),
        thousands(args.dead as f64),
        thousands(args.dead_letters as f64),
        args.requests
    );
    let scratch = server.create().await?;
    let result = async {
        let db = scratch.open(8).await?;
        let result = measure_all(&args, &server, &described, &db, tsv).await;
        db.close().await;
        result
    }
    .await;
    if args.keep {
        println!("kept the scratch database: {}", scratch.url);
    } else {
        scratch.remove().await;
    }
    result
}

async fn measure_all(
    args: &AdminArgs,
    server: &Server,
    described: &str,
    db: &Database,
    tsv: &Tsv,
) -> anyhow::Result<()> {
    let started = Instant::now();
    fill(db, args).await?;
    let filled = started.elapsed();
    let started = Instant::now();
    analyze(db).await?;
    let analyzed = started.elapsed();
    println!("outbox by status: {}", statuses(db).await?);
    println!(
        "fill: {:.1} s, then {} in {:.1} s",
        filled.as_secs_f64(),
        if db.kind() == ferry_store::DatabaseKind::Postgres {
            "VACUUM ANALYZE"
        } else {
            "ANALYZE"
        },
        analyzed.as_secs_f64()
    );

    let token = BearerToken::new(TOKEN).context("the bench's token")?;
    let store = NamedStore {
        name: "bench".to_owned(),
        db: db.clone(),
    };
    let admin = Admin::new(
        Arc::new(BenchDaemon(store)),
        AdminConfig::with_tokens(vec![ApiToken {
            name: "bench".to_owned(),
            role: Role::Admin,
            token,
        }]),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, ferry_admin::router(admin))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };
    let result = measure_endpoints(args, server, described, db, &base, tsv).await;
    stop.cancel();
    let _ = serving.await;
    result
}

/// What a request presents.
#[derive(Clone, Copy)]
enum Auth {
    Bearer,
    Cookie,
}

async fn measure_endpoints(
    args: &AdminArgs,
    server: &Server,
    described: &str,
    db: &Database,
    base: &str,
    tsv: &Tsv,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let cookie = login(&client, base).await?;
    let api = |path: &str| format!("{base}/v1/admin{path}");
    let get_json = |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(&url).bearer_auth(TOKEN).send().await?;
            ensure!(
                response.status().is_success(),
                "GET {url}: {}",
                response.status()
            );
            anyhow::Ok(response.json::<Value>().await?)
        }
    };

    // What the requests point at, read through the API itself.
    let head = max_seq(db).await?;
    let middle = (head / 2).max(1);
    let page = get_json(api(&format!("/outbox?before={}&limit=1", middle + 1))).await?;
    let middle_id = page["rows"][0]["message_id"]
        .as_str()
        .context("no message in the middle of the outbox")?
        .to_owned();
    let dead = get_json(api("/dead")).await?;
    let next = dead["next"]
        .as_str()
        .context("the first dead page has no `next` cursor")?
        .to_owned();
    let dead_id = dead["items"][0]["id"]
        .as_str()
        .context("no dead letter")?
        .to_owned();
    let groups = get_json(api("/dead/causes")).await?;
    let cause = groups[0]["cause"]
        .as_str()
        .context("no cause group")?
        .to_owned();
    let q = |pairs: &[(&str, &str)]| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };

    let probes: Vec<(&str, String, Auth)> = vec![
        ("api overview", api("/overview"), Auth::Bearer),
        ("api outbox newest page", api("/outbox"), Auth::Bearer),
        (
            "api outbox deep page (before=middle)",
            api(&format!("/outbox?before={middle}")),
            Auth::Bearer,
        ),
        (
            "api outbox status=dead",
            api("/outbox?status=dead"),
            Auth::Bearer,
        ),
        (
            "api outbox topic",
            api("/outbox?topic=topic-07"),
            Auth::Bearer,
        ),
        ("api outbox key", api("/outbox?key=key-04242"), Auth::Bearer),
        (
            "api outbox id",
            api(&format!("/outbox?id={middle_id}")),
            Auth::Bearer,
        ),
        (
            "api outbox message detail",
            api(&format!("/outbox/{middle}")),
            Auth::Bearer,
        ),
        ("api dead first page", api("/dead"), Auth::Bearer),
        (
            "api dead page 2 (cursor)",
            api(&format!("/dead?{}", q(&[("after", &next)]))),
            Auth::Bearer,
        ),
        (
            "api dead kind=consumer",
            api("/dead?kind=consumer"),
            Auth::Bearer,
        ),
        (
            "api dead cause",
            api(&format!("/dead?{}", q(&[("cause", &cause)]))),
            Auth::Bearer,
        ),
        (
            "api dead causes (grouped)",
            api("/dead/causes"),
            Auth::Bearer,
        ),
        ("api dead count", api("/dead/count"), Auth::Bearer),
        (
            "api dead detail",
            api(&format!("/dead/{dead_id}")),
            Auth::Bearer,
        ),
        ("api audit", api("/audit"), Auth::Bearer),
        ("ui overview", format!("{base}/ui"), Auth::Cookie),
        ("ui outbox", format!("{base}/ui/outbox"), Auth::Cookie),
        ("ui dead groups", format!("{base}/ui/dead"), Auth::Cookie),
        (
            "ui dead items",
            format!("{base}/ui/dead/items"),
            Auth::Cookie,
        ),
        (
            "ui dead detail",
            format!("{base}/ui/dead/item/{dead_id}"),
            Auth::Cookie,
        ),
    ];

    let mut measured = Vec::new();
    for (name, url, auth) in &probes {
        let request = || {
            let builder = client.get(url);
            match auth {
                Auth::Bearer => builder.bearer_auth(TOKEN),
                Auth::Cookie => builder.header(reqwest::header::COOKIE, &cookie),
            }
        };
        let stats = time(args.requests, || {
            let request = request();
            async move {
                let response = request.send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                if !status.is_success() {
                    bail!(
                        "GET {url}: {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    );
                }
                Ok(())
            }
        })
        .await
        .with_context(|| format!("endpoint `{name}`"))?;
        eprintln!("  {name}: p99 {:.1} ms", stats.p99);
        measured.push((*name, stats));
    }

    // The naive page, through sqlx directly.
    let offset = head / 2;
    let offset_sql = format!(
        "SELECT seq, message_id, topic, message_key, status, attempts, created_at, last_error \
         FROM ferry_outbox ORDER BY seq DESC LIMIT 50 OFFSET {offset}"
    );
    let count_sql = "SELECT COUNT(*) FROM ferry_outbox";
    let naive_offset = time(args.requests, || rows(db, &offset_sql)).await?;
    let naive_count = time(args.requests, || rows(db, count_sql)).await?;
    let naive_page = time(args.requests, || {
        let offset_sql = &offset_sql;
        async move {
            rows(db, offset_sql).await?;
            rows(db, count_sql).await
        }
    })
    .await?;

    println!();
    println!(
        "| endpoint | requests | p50 ms | p99 ms | max ms | target ≤ {TARGET_MS} ms p99 met |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, s) in &measured {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {} |",
            s.n,
            s.p50,
            s.p99,
            s.max,
            if s.p99 <= TARGET_MS { "yes" } else { "no" }
        );
    }
    println!();
    println!("Baseline, same run, same database (sqlx directly, no HTTP):");
    println!();
    println!("| naive query | requests | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let naive = [
        (
            format!("ORDER BY seq DESC LIMIT 50 OFFSET {offset}"),
            &naive_offset,
        ),
        ("SELECT COUNT(*) FROM ferry_outbox".to_owned(), &naive_count),
        ("page load: both".to_owned(), &naive_page),
    ];
    for (name, s) in &naive {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |",
            s.n, s.p50, s.p99, s.max
        );
    }
    let p99 = |name: &str| {
        measured
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, s)| s.p99)
    };
    let deep = p99("api outbox deep page (before=middle)");
    let newest = p99("api outbox newest page");
    let ui = p99("ui outbox");
    println!();
    println!("| ours (p99, over HTTP) | naive (p99, SQL only) | ratio ours/naive |");
    println!("|---|---|---|");
    println!(
        "| outbox deep page {deep:.1} ms | OFFSET {offset} + COUNT(*) {:.1} ms | {} |",
        naive_page.p99,
        ratio(deep, naive_page.p99)
    );
    println!(
        "| outbox newest page {newest:.1} ms | OFFSET {offset} + COUNT(*) {:.1} ms | {} |",
        naive_page.p99,
        ratio(newest, naive_page.p99)
    );
    println!(
        "| console outbox page {ui:.1} ms | COUNT(*) alone {:.1} ms | {} |",
        naive_count.p99,
        ratio(ui, naive_count.p99)
    );
    let missed: Vec<&str> = measured
        .iter()
        .filter(|(_, s)| s.p99 > TARGET_MS)
        .map(|(n, _)| *n)
        .collect();
    if missed.is_empty() {
        println!("\nevery endpoint met ≤ {TARGET_MS} ms p99");
    } else {
        println!(
            "\nmissed ≤ {TARGET_MS} ms p99: {} (see bench/README.md for why)",
            missed.join(", ")
        );
    }

    let settings = format!(
        "messages={} dead={} dead_letters={} requests={}",
        args.messages, args.dead, args.dead_letters, args.requests
    );
    for (name, s) in &measured {
        tsv.append(&Figure {
            command: "admin",
            database: server.label().to_owned(),
            server: described.to_owned(),
            sink: String::new(),
            figure: format!("{name} p99"),
            run: 1,
            value: s.p99,
            unit: "ms",
            baseline: format!("naive page: OFFSET {offset} + COUNT(*) p99"),
            baseline_value: Some(naive_page.p99),
            settings: settings.clone(),
            notes: format!(
                "n={} p50={:.2} max={:.2} target_met={}",
                s.n,
                s.p50,
                s.max,
                s.p99 <= TARGET_MS
            ),
        })?;
    }
    Ok(())
}

/// Times `requests` calls of `call` after the warm-up, stopping after
/// [`BUDGET`].
async fn time<F, Fut>(requests: usize, mut call: F) -> anyhow::Result<Stats>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..WARM_UP {
        call().await?;
    }
    let started = Instant::now();
    let mut ms = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        call().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if started.elapsed() > BUDGET {
            break;
        }
    }
    Ok(Stats::of(ms))
}

/// Logs in to the console; the `Cookie` header value of the session.
async fn login(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let response = client
        .post(format!("{base}/ui/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await?;
    ensure!(
        response.status().is_redirection(),
        "POST /ui/login answered {} (is the console served by ferry_admin::router?)",
        response.status()
    );
    let set = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .context("POST /ui/login set no cookie")?
        .to_str()?;
    Ok(set.split(';').next().unwrap_or_default().to_owned())
}

/// Runs `sql` and reads every row (not decoded).
async fn rows(db: &Database, sql: &str) -> anyhow::Result<()> {
    match db {
        Database::Postgres(pool) => {
            sqlx::query(sql).fetch_all(pool).await?;
        }
        Database::Sqlite(pool) => {
            sqlx::query(sql).fetch_all(pool).await?;
        }
        Database::Mysql(_) => bail!("the admin benchmark does not run on MariaDB"),
    }
    Ok(())
}

async fn max_seq(db: &Database) -> anyhow::Result<i64> {
    let sql = "SELECT MAX(seq) FROM ferry_outbox";
    let max: Option<i64> = match db {
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Database::Mysql(_) => bail!("the admin benchmark does not run on MariaDB"),
    };
    max.context("the outbox is empty")
}

/// What the fill made, e.g. `dead 100,000, delivered 899,425, …`.
async fn statuses(db: &Database) -> anyhow::Result<String> {
    let sql =
        "SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END, \
               COUNT(*) FROM ferry_outbox GROUP BY 1 ORDER BY 1";
    let counts: Vec<(String, i64)> = match db {
        Database::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await?,
        Database::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await?,
        Database::Mysql(_) => bail!("the admin benchmark does not run on MariaDB"),
    };
    Ok(counts
        .iter()
        .map(|(status, n)| format!("{status} {}", thousands(*n as f64)))
        .collect::<Vec<_>>()
        .join(", "))
}

async fn execute(db: &Database, sql: &str) -> anyhow::Result<u64> {
    let done = match db {
        Database::Postgres(pool) => sqlx::query(sql).execute(pool).await?.rows_affected(),
        Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await?.rows_affected(),
        Database::Mysql(_) => bail!("the admin benchmark does not run on MariaDB"),
    };
    Ok(done)
}

async fn analyze(db: &Database) -> anyhow::Result<()> {
    match db {
        Database::Postgres(_) => execute(db, "VACUUM ANALYZE").await?,
        _ => execute(db, "ANALYZE").await?,
    };
    Ok(())
}

/// The SQL of one dialect that the fill statements differ in.
struct Sql {
    postgres: bool,
}

impl Sql {
    /// `WITH [RECURSIVE] …` defining `s(g)` = 1..=n (SQLite) plus `ctes`;
    /// and the FROM item of the series.
    fn series(&self, n: u64, ctes: &str) -> (String, String) {
        let comma = if ctes.is_empty() { "" } else { ", " };
        if self.postgres {
            let with = if ctes.is_empty() {
                String::new()
            } else {
                format!("WITH {ctes}")
            };
            (with, format!("generate_series(1, {n}::bigint) AS s(g)"))
        } else {
            (
                format!(
                    "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}){comma}{ctes}"
                ),
                "s".to_owned(),
            )
        }
    }

    /// The time `seconds` (an SQL expression, ≥ 0) before now, as the
    /// store writes times.
    fn ago(&self, seconds: &str) -> String {
        if self.postgres {
            format!("now() - make_interval(secs => CAST({seconds} AS double precision))")
        } else {
            format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ({seconds}) || ' seconds')")
        }
    }

    /// A random whole number in 0..n.
    fn below(&self, n: u64) -> String {
        if self.postgres {
            format!("CAST(floor(random() * {n}) AS bigint)")
        } else {
            format!("(abs(random()) % {n})")
        }
    }

    /// `'…'` of a text, quotes doubled.
    fn text(value: &str) -> String {
        format!("'{}'", value.replace('\'', "''"))
    }

    /// A random UUID (text on SQLite).
    fn uuid(&self) -> &'static str {
        if self.postgres {
            "gen_random_uuid()"
        } else {
            "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || substr('89ab', 1 + abs(random()) % 4, 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
        }
    }

    /// A payload: BYTEA on PostgreSQL's dead letters, a blob on SQLite.
    fn bytes(&self, text: &str) -> String {
        if self.postgres {
            format!("convert_to({text}, 'UTF8')")
        } else {
            format!("CAST({text} AS BLOB)")
        }
    }
}

/// `causes(i, template, cause)`: the 12 errors, numbered from 0.
fn causes_cte() -> anyhow::Result<String> {
    let rows: Vec<String> = causes()?
        .iter()
        .enumerate()
        .map(|(i, (template, cause))| {
            format!("({i}, {}, {})", Sql::text(template), Sql::text(cause))
        })
        .collect();
    Ok(format!(
        "causes(i, template, cause) AS (VALUES {})",
        rows.join(", ")
    ))
}

/// Fills the outbox, the consumer dead letters and the audit log.
async fn fill(db: &Database, args: &AdminArgs) -> anyhow::Result<()> {
    let sql = Sql {
        postgres: match db {
            Database::Postgres(_) => true,
            Database::Sqlite(_) => false,
            Database::Mysql(_) => bail!("the admin benchmark does not run on MariaDB"),
        },
    };
    let (n, d) = (args.messages, args.dead);
    // Row g is dead when g·d/n steps up: exactly d rows, evenly spread;
    // k = g·d/n numbers them, and picks their cause. Times: the whole
    // outbox over the last day, seq in time order.
    let (with, from) = sql.series(n, &causes_cte()?);
    let age = format!("(({n} - g) * 86400.0 / {n})");
    // Retrying: 1 in 40 of the newest 20,000 (g % 40 = 5, never a
    // multiple of 10, which the default --dead spread makes dead).
    let retrying = format!("g > {n} - 20000 AND g % 40 = 5");
    let outbox = format!(
        "{with}
         INSERT INTO ferry_outbox (topic, message_key, payload, status, attempts, created_at,
             next_attempt_at, delivered_at, last_error, dead_at, cause)
         SELECT
             'topic-' || substr(CAST(100 + {topic} AS TEXT), 2),
             'key-' || substr(CAST(100000 + {key} AS TEXT), 2),
             '{{\"order\":' || CAST(g AS TEXT) || ',\"amount\":' || CAST(g % 1000 AS TEXT) || ',\"currency\":\"EUR\"}}',
             CASE WHEN dead THEN 'dead' WHEN g > {n} - 1000 THEN 'pending' WHEN {retrying} THEN 'pending' ELSE 'delivered' END,
             CASE WHEN dead THEN 5 WHEN g > {n} - 1000 THEN 0 WHEN {retrying} THEN 3 ELSE 1 END,
             {created},
             {at},
             CASE WHEN dead OR g > {n} - 1000 OR {retrying} THEN NULL ELSE {delivered} END,
             CASE WHEN dead THEN replace(c.template, '{{n}}', CAST(g % 997 AS TEXT))
                  WHEN g > {n} - 1000 THEN NULL
                  WHEN {retrying} THEN 'timed out after 5000ms waiting for the sink' END,
             CASE WHEN dead THEN {at} END,
             c.cause
         FROM (SELECT g, (g * {d} / {n}) <> ((g - 1) * {d} / {n}) AS dead, (g * {d} / {n}) % 12 AS ci
               FROM {from}) r
         LEFT JOIN causes c ON c.i = r.ci AND r.dead",
        topic = sql.below(TOPICS),
        key = sql.below(KEYS),
        created = sql.ago(&format!("{age} + 300")),
        at = sql.ago(&age),
        delivered = sql.ago(&format!("{age} + 299.95")),
    );
    execute(db, &outbox).await.context("filling the outbox")?;

    // Consumer dead letters: four consumers (half billing), all 12 causes
    // each, over the last day.
    let m = args.dead_letters;
    let (with, from) = sql.series(m, &causes_cte()?);
    let age = format!("(({m} - g) * 86400.0 / {m})");
    let letters = format!(
        "{with}
         INSERT INTO ferry_dead_letters (id, consumer, message_id, kind, topic, message_key,
             headers, content_type, payload, created_at, error, attempts, dead_at, cause)
         SELECT {uuid}, CASE WHEN g % 10 < 5 THEN 'billing' WHEN g % 10 < 8 THEN 'email'
                     WHEN g % 10 = 8 THEN 'search-index' ELSE 'analytics' END,
             {uuid}, 'event', 'topic-' || substr(CAST(100 + {topic} AS TEXT), 2),
             'key-' || substr(CAST(100000 + {key} AS TEXT), 2), '{{}}', 'application/json',
             {payload}, {created}, replace(c.template, '{{n}}', CAST(g % 997 AS TEXT)), 5, {at}, c.cause
         FROM {from} JOIN causes c ON c.i = (g / 10) % 12",
        uuid = sql.uuid(),
        topic = sql.below(TOPICS),
        key = sql.below(KEYS),
        payload = sql.bytes("'{\"order\":' || CAST(g AS TEXT) || '}'"),
        created = sql.ago(&format!("{age} + 600")),
        at = sql.ago(&age),
    );
    execute(db, &letters)
        .await
        .context("filling the consumer dead letters")?;

    let (with, from) = sql.series(1000, "");
    let audit = format!(
        "{with}
         INSERT INTO ferry_audit_log (at, actor, action, target, count)
         SELECT {at}, 'ops-alice', 'replay', 'outbox:' || CAST(g AS TEXT), 1 FROM {from}",
        at = sql.ago("g * 60"),
    );
    execute(db, &audit).await.context("filling the audit log")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_distinct_causes_each_independent_of_its_numbers() {
        let causes = causes().unwrap();
        let mut distinct: Vec<&String> = causes.iter().map(|(_, c)| c).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 12, "{distinct:?}");
    }

    #[test]
    fn percentiles_of_latencies() {
        let s = Stats::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((s.n, s.p50, s.max), (100, 50.5, 100.0));
        assert!((s.p99 - 99.01).abs() < 1e-9);
    }
}
