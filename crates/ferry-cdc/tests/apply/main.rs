#![allow(missing_docs)]
//! Applying a capture's changes to another database (trigger-mode
//! captures as sources, a fresh database each): the target's tables end
//! equal to the source's, row by row; each committed change is applied
//! once, also across crashes at any point (between the target's commit and
//! the source's acknowledgement too) and lost target connections, which a
//! trigger on every target table counts; table and column mapping; a
//! missing target table and a refused value stop apply with errors naming
//! them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_cdc::{
    apply, ApplyConfig, ApplyError, Capture, CaptureError, Captured, Checkpoint, ColumnMapping,
    ShipStats, TriggerCapture, TriggerConfig,
};
use ferry_delivery::SinkBackoff;
use ferry_store::Database;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[path = "../common/mod.rs"]
mod common;
use common::{env, Env, Kind};

impl Env {
    /// The two tables of the workload.
    async fn schema(&self) {
        self.exec(
            "CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50), balance NUMERIC(12,2))",
        )
        .await;
        self.exec(
            "CREATE TABLE orders (id INT PRIMARY KEY, account_id INT, note VARCHAR(100), amount INT)",
        )
        .await;
    }

    /// An `audit` row per row written to `table` (insert, update or
    /// delete): a change applied twice shows as one row too many.
    async fn audit(&self, table: &str) {
        match self.kind {
            Kind::Pg => {
                self.exec("CREATE TABLE IF NOT EXISTS audit (tbl VARCHAR(20), id INT)")
                    .await;
                self.exec(
                    "CREATE OR REPLACE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
                     BEGIN
                       IF TG_OP = 'DELETE' THEN INSERT INTO audit VALUES (TG_TABLE_NAME, OLD.id);
                       ELSE INSERT INTO audit VALUES (TG_TABLE_NAME, NEW.id);
                       END IF;
                       RETURN NULL;
                     END $$",
                )
                .await;
                self.exec(&format!(
                    "CREATE TRIGGER {table}_audit AFTER INSERT OR UPDATE OR DELETE ON {table}
                     FOR EACH ROW EXECUTE FUNCTION audit_row()"
                ))
                .await;
            }
            Kind::Mysql | Kind::Sqlite => {
                self.exec("CREATE TABLE IF NOT EXISTS audit (tbl VARCHAR(20), id INT)")
                    .await;
                for (event, row) in [("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")] {
                    let body = format!("INSERT INTO audit VALUES ('{table}', {row}.id)");
                    let sql = if self.kind == Kind::Mysql {
                        format!(
                            "CREATE TRIGGER {table}_{event} AFTER {event} ON {table} FOR EACH ROW {body}"
                        )
                    } else {
                        format!(
                            "CREATE TRIGGER {table}_{event} AFTER {event} ON {table} BEGIN {body}; END"
                        )
                    };
                    self.exec(&sql).await;
                }
            }
        }
    }

    /// `columns` of `table` by its first column (the id), each as text
    /// (numbers normalized).
    async fn rows(&self, table: &str, columns: &[&str]) -> Vec<Vec<String>> {
        let text = |c: &str| match self.kind {
            Kind::Pg => format!("CAST({c} AS TEXT)"),
            Kind::Mysql => format!("CAST({c} AS CHAR)"),
            Kind::Sqlite => format!("CAST({c} AS TEXT)"),
        };
        let select: Vec<String> = columns.iter().map(|c| text(c)).collect();
        let sql = format!("SELECT {} FROM {table}", select.join(", "));
        macro_rules! fetch {
            ($pool:expr) => {{
                use sqlx::Row;
                let rows = sqlx::query(&sql).fetch_all($pool).await.unwrap();
                let mut rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        (0..columns.len())
                            .map(|i| normalize(r.try_get::<Option<String>, _>(i).unwrap()))
                            .collect()
                    })
                    .collect();
                // By id as a number (the text casts would sort as text),
                // then as text.
                rows.sort_by_key(|r| (r[0].parse::<i64>().unwrap_or_default(), r.clone()));
                rows
            }};
        }
        match &self.db {
            Database::Sqlite(p) => fetch!(p),
            Database::Postgres(p) => fetch!(p),
            Database::Mysql(p) => fetch!(p),
        }
    }

    /// Rows written per (table, id), as the `audit` triggers counted them.
    async fn writes(&self) -> BTreeMap<(String, i64), i64> {
        let rows = self.rows_raw("SELECT tbl, id FROM audit").await;
        let mut out = BTreeMap::new();
        for r in rows {
            *out.entry((r[0].clone(), r[1].parse().unwrap()))
                .or_default() += 1;
        }
        out
    }

    async fn rows_raw(&self, sql: &str) -> Vec<Vec<String>> {
        let sql = match self.kind {
            Kind::Mysql => sql.replace(
                "SELECT tbl, id",
                "SELECT CAST(tbl AS CHAR), CAST(id AS CHAR)",
            ),
            _ => sql.replace("SELECT tbl, id", "SELECT tbl, CAST(id AS TEXT)"),
        };
        macro_rules! fetch {
            ($pool:expr) => {{
                use sqlx::Row;
                let rows = sqlx::query(&sql).fetch_all($pool).await.unwrap();
                rows.iter()
                    .map(|r| vec![r.get::<String, _>(0), r.get::<String, _>(1)])
                    .collect()
            }};
        }
        match &self.db {
            Database::Sqlite(p) => fetch!(p),
            Database::Postgres(p) => fetch!(p),
            Database::Mysql(p) => fetch!(p),
        }
    }

    /// The checkpoint the target holds for `capture`.
    async fn applied(&self, capture: &str) -> Option<serde_json::Value> {
        let sql = format!(
            "SELECT {} FROM ferry_cdc_applied WHERE capture = '{capture}'",
            if self.kind == Kind::Mysql {
                "CAST(checkpoint AS CHAR)"
            } else {
                "checkpoint"
            }
        );
        let text: Option<String> = match &self.db {
            Database::Sqlite(p) => sqlx::query_scalar(&sql).fetch_optional(p).await.unwrap(),
            Database::Postgres(p) => sqlx::query_scalar(&sql).fetch_optional(p).await.unwrap(),
            Database::Mysql(p) => sqlx::query_scalar(&sql).fetch_optional(p).await.unwrap(),
        };
        text.map(|t| serde_json::from_str(&t).unwrap())
    }

    /// A pool of its own, closed after a crash so that what it held open
    /// is rolled back.
    async fn connect(&self) -> Database {
        Database::connect(&self.url).await.unwrap()
    }
}

/// Numbers as one form (`10.50`, `10.5`), text as it is.
fn normalize(v: Option<String>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) => match s.parse::<f64>() {
            Ok(f) => format!("{f}"),
            Err(_) => s,
        },
    }
}

async fn close(db: Database) {
    match db {
        Database::Sqlite(p) => p.close().await,
        Database::Postgres(p) => p.close().await,
        Database::Mysql(p) => p.close().await,
    }
}

/// A small random number generator (xorshift), seeded per test and printed
/// so that a failure can be replayed with `FERRY_TEST_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("FERRY_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("seed {seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Inserts, updates and deletes over `accounts` and `orders`, some
/// transactions rolled back; it counts each committed row change.
struct Workload {
    accounts: BTreeSet<i64>,
    orders: BTreeSet<i64>,
    next_id: i64,
    /// Committed changes per (table, id).
    changes: BTreeMap<(String, i64), i64>,
}

impl Workload {
    fn new() -> Self {
        Self {
            accounts: BTreeSet::new(),
            orders: BTreeSet::new(),
            next_id: 1,
            changes: BTreeMap::new(),
        }
    }

    /// Runs `n` transactions on `env`.
    async fn run(&mut self, env: &Env, rng: &mut Rng, n: usize) {
        for _ in 0..n {
            let mut accounts = self.accounts.clone();
            let mut orders = self.orders.clone();
            let mut counted = Vec::new();
            let mut statements = Vec::new();
            for _ in 0..1 + rng.below(6) {
                let id = self.next_id;
                let pick = |set: &BTreeSet<i64>, rng: &mut Rng| {
                    set.iter()
                        .nth(rng.below(set.len() as u64) as usize)
                        .copied()
                };
                match rng.below(6) {
                    0 | 1 => {
                        self.next_id += 1;
                        accounts.insert(id);
                        counted.push(("accounts", id));
                        statements.push(format!(
                            "INSERT INTO accounts VALUES ({id}, 'owner {id}', {}.{:02})",
                            rng.below(1000),
                            rng.below(100)
                        ));
                    }
                    2 => {
                        let Some(a) = pick(&accounts, rng) else {
                            continue;
                        };
                        self.next_id += 1;
                        orders.insert(id);
                        counted.push(("orders", id));
                        statements.push(format!(
                            "INSERT INTO orders VALUES ({id}, {a}, 'it''s order {id}', {})",
                            rng.below(500)
                        ));
                    }
                    3 => {
                        let Some(a) = pick(&accounts, rng) else {
                            continue;
                        };
                        counted.push(("accounts", a));
                        statements.push(format!(
                            "UPDATE accounts SET balance = balance + 1.25, owner = 'owner {a} v{}' WHERE id = {a}",
                            rng.below(1000)
                        ));
                    }
                    4 => {
                        let Some(o) = pick(&orders, rng) else {
                            continue;
                        };
                        counted.push(("orders", o));
                        statements.push(format!(
                            "UPDATE orders SET amount = amount + 1, note = NULL WHERE id = {o}"
                        ));
                    }
                    _ => {
                        if rng.below(2) == 0 {
                            let Some(o) = pick(&orders, rng) else {
                                continue;
                            };
                            orders.remove(&o);
                            counted.push(("orders", o));
                            statements.push(format!("DELETE FROM orders WHERE id = {o}"));
                        } else {
                            let Some(a) = pick(&accounts, rng) else {
                                continue;
                            };
                            accounts.remove(&a);
                            counted.push(("accounts", a));
                            statements.push(format!("DELETE FROM accounts WHERE id = {a}"));
                        }
                    }
                }
            }
            if statements.is_empty() {
                continue;
            }
            let commit = rng.below(8) != 0;
            env.tx(&statements, commit).await;
            if commit {
                self.accounts = accounts;
                self.orders = orders;
                for (t, id) in counted {
                    *self.changes.entry((t.to_owned(), id)).or_default() += 1;
                }
            }
        }
    }
}

/// When a [`Flaky`] capture stops answering, for the test to abort apply
/// there.
#[derive(Clone, Copy, Debug)]
enum Crash {
    /// Never.
    Never,
    /// At the `n`th acknowledgement: the target has committed, the source
    /// does not hear of it.
    AtAcknowledgement(usize),
    /// At the read after `n` changes were read: the target transaction may
    /// be open, in the middle of a source transaction.
    AfterChanges(usize),
}

/// A capture that reads a few changes at a time (so that source
/// transactions span reads) and hangs where its [`Crash`] says.
struct Flaky {
    inner: TriggerCapture,
    crash: Crash,
    max: usize,
    read: usize,
    acks: usize,
    hung: Arc<Notify>,
    /// The last checkpoint read, by any run.
    last: Arc<Mutex<Option<Checkpoint>>>,
}

impl Capture for Flaky {
    fn connector(&self) -> &'static str {
        self.inner.connector()
    }

    fn database(&self) -> &str {
        self.inner.database()
    }

    async fn read(&mut self, max: usize, wait: Duration) -> Result<Vec<Captured>, CaptureError> {
        if let Crash::AfterChanges(n) = self.crash {
            if self.read >= n {
                self.hung.notify_one();
                std::future::pending::<()>().await;
            }
        }
        let got = self.inner.read(max.min(self.max), wait).await?;
        self.read += got.len();
        if let Some(cp) = got.iter().rev().find_map(|c| c.checkpoint.clone()) {
            *self.last.lock().unwrap() = Some(cp);
        }
        Ok(got)
    }

    async fn acknowledge(&mut self, checkpoint: &Checkpoint) -> Result<(), CaptureError> {
        self.acks += 1;
        if let Crash::AtAcknowledgement(n) = self.crash {
            if self.acks >= n {
                self.hung.notify_one();
                std::future::pending::<()>().await;
            }
        }
        self.inner.acknowledge(checkpoint).await
    }
}

fn config() -> ApplyConfig {
    ApplyConfig {
        batch_size: 4,
        backoff: SinkBackoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..ApplyConfig::new("shop")
    }
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), ApplyError>>,
    target: Database,
    hung: Arc<Notify>,
    stats: Arc<ShipStats>,
}

fn trigger_config() -> TriggerConfig {
    TriggerConfig {
        poll_interval: Duration::from_millis(10),
        ..TriggerConfig::new("shop")
    }
}

/// Installs the capture's triggers, so that every change from now on is
/// captured as it is made (not by a snapshot).
async fn install(source: &Env) {
    TriggerCapture::start(source.db.clone(), trigger_config())
        .await
        .unwrap();
}

async fn start(
    source: &Env,
    target: &Env,
    config: ApplyConfig,
    crash: Crash,
    max: usize,
    last: &Arc<Mutex<Option<Checkpoint>>>,
) -> Running {
    let inner = TriggerCapture::start(source.db.clone(), trigger_config())
        .await
        .unwrap();
    let hung = Arc::new(Notify::new());
    let capture = Flaky {
        inner,
        crash,
        max,
        read: 0,
        acks: 0,
        hung: hung.clone(),
        last: last.clone(),
    };
    let stop = CancellationToken::new();
    let db = target.connect().await;
    let stats = Arc::new(ShipStats::default());
    let task = tokio::spawn(apply(
        capture,
        db.clone(),
        config,
        stats.clone(),
        stop.clone(),
    ));
    Running {
        stop,
        task,
        target: db,
        hung,
        stats,
    }
}

/// Waits until the source has nothing unacknowledged (so the target
/// committed it all).
async fn caught_up(source: &Env, running: &Running) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            !running.task.is_finished(),
            "apply ended early: {:?}",
            running.task
        );
        let (backlog, _) = TriggerCapture::backlog(&source.db, "shop").await.unwrap();
        if backlog == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{backlog} changes not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn finish(running: Running) {
    running.stop.cancel();
    running.task.await.unwrap().unwrap();
    close(running.target).await;
}

/// The target's tables equal the source's, and each row was written as
/// many times as it changed.
async fn assert_same(source: &Env, target: &Env, workload: &Workload) {
    for (table, columns) in [
        ("accounts", &["id", "owner", "balance"][..]),
        ("orders", &["id", "account_id", "note", "amount"][..]),
    ] {
        let want = source.rows(table, columns).await;
        let got = target.rows(table, columns).await;
        assert_eq!(
            got, want,
            "{table}: target ({:?}) against source ({:?})",
            target.kind, source.kind
        );
    }
    assert_eq!(
        target.writes().await,
        workload.changes,
        "writes per row on the target (a change applied twice or never)"
    );
}

async fn pair(source: Kind, target: Kind) -> (Env, Env) {
    let (s, t) = tokio::join!(env(source), env(target));
    s.schema().await;
    t.schema().await;
    t.audit("accounts").await;
    t.audit("orders").await;
    install(&s).await;
    (s, t)
}

/// A workload, applied while it runs, then compared.
async fn replicate(source: Kind, target: Kind) {
    let (s, t) = pair(source, target).await;
    let mut rng = Rng::new();
    let mut workload = Workload::new();
    let last = Arc::new(Mutex::new(None));
    let running = start(&s, &t, config(), Crash::Never, 1000, &last).await;
    workload.run(&s, &mut rng, 15).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    workload.run(&s, &mut rng, 15).await;
    caught_up(&s, &running).await;
    finish(running).await;
    assert_same(&s, &t, &workload).await;
    let stored = t.applied("shop").await.expect("the target's checkpoint");
    assert_eq!(Some(Checkpoint(stored)), *last.lock().unwrap());
}

/// Apply aborted again and again at random points, restarted each time:
/// the target ends equal to the source, each change written once.
async fn crashes(source: Kind, target: Kind) {
    let (s, t) = pair(source, target).await;
    let mut rng = Rng::new();
    let mut workload = Workload::new();
    let last = Arc::new(Mutex::new(None));
    let mut ack_crashes = 0;
    for round in 0..10 {
        workload.run(&s, &mut rng, 4).await;
        let crash = match round % 3 {
            0 => Crash::AtAcknowledgement(1 + rng.below(3) as usize),
            1 => Crash::AfterChanges(1 + rng.below(12) as usize),
            _ => Crash::Never,
        };
        let max = 1 + rng.below(5) as usize;
        let running = start(&s, &t, config(), crash, max, &last).await;
        match crash {
            Crash::Never => {
                // Aborted after a random time, wherever it is then.
                tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
            }
            _ => {
                let hung =
                    tokio::time::timeout(Duration::from_secs(5), running.hung.notified()).await;
                if hung.is_ok() && matches!(crash, Crash::AtAcknowledgement(_)) {
                    ack_crashes += 1;
                }
            }
        }
        running.task.abort();
        let _ = running.task.await;
        close(running.target).await;
    }
    assert!(
        ack_crashes > 0,
        "no crash between commit and acknowledgement"
    );
    workload.run(&s, &mut rng, 5).await;
    let running = start(&s, &t, config(), Crash::Never, 3, &last).await;
    caught_up(&s, &running).await;
    finish(running).await;
    assert_same(&s, &t, &workload).await;
    let stored = t.applied("shop").await.expect("the target's checkpoint");
    assert_eq!(Some(Checkpoint(stored)), *last.lock().unwrap());
}

#[tokio::test]
async fn sqlite_to_postgres() {
    replicate(Kind::Sqlite, Kind::Pg).await;
}

#[tokio::test]
async fn postgres_to_mariadb() {
    replicate(Kind::Pg, Kind::Mysql).await;
}

#[tokio::test]
async fn mariadb_to_sqlite() {
    replicate(Kind::Mysql, Kind::Sqlite).await;
}

#[tokio::test]
async fn crashes_sqlite_to_postgres() {
    crashes(Kind::Sqlite, Kind::Pg).await;
}

#[tokio::test]
async fn crashes_postgres_to_mariadb() {
    crashes(Kind::Pg, Kind::Mysql).await;
}

#[tokio::test]
async fn crashes_mariadb_to_sqlite() {
    crashes(Kind::Mysql, Kind::Sqlite).await;
}

/// The target's connections killed while apply runs: it pauses, writes the
/// lost transaction again (or finds it committed), and nothing is written
/// twice.
#[tokio::test]
async fn lost_target_connections_are_retried() {
    let (s, t) = pair(Kind::Sqlite, Kind::Pg).await;
    let mut rng = Rng::new();
    let mut workload = Workload::new();
    let last = Arc::new(Mutex::new(None));
    let running = start(&s, &t, config(), Crash::Never, 3, &last).await;
    let Database::Postgres(admin) = &t.db else {
        unreachable!()
    };
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(admin)
        .await
        .unwrap();
    // Killed while it works (its connection in a transaction or a
    // statement), until some transactions were lost that way.
    let mut rounds = 0;
    while rounds < 8 || running.stats.failed.load(Ordering::Relaxed) < 3 {
        rounds += 1;
        assert!(rounds < 300, "no transaction of apply was ever cut off");
        workload.run(&s, &mut rng, 2).await;
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid() AND state <> 'idle'",
        )
        .bind(&name)
        .fetch_all(admin)
        .await
        .unwrap();
    }
    caught_up(&s, &running).await;
    finish(running).await;
    assert_same(&s, &t, &workload).await;
}

/// A table renamed, a column renamed, a column left out.
#[tokio::test]
async fn tables_and_columns_are_mapped() {
    let (s, t) = tokio::join!(env(Kind::Sqlite), env(Kind::Pg));
    s.schema().await;
    t.exec("CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50), balance NUMERIC(12,2))")
        .await;
    t.exec("CREATE SCHEMA shop").await;
    t.exec("CREATE TABLE shop.orders_copy (order_id INT PRIMARY KEY, account_id INT, remark TEXT)")
        .await;
    s.tx::<String>(
        &[
            "INSERT INTO accounts VALUES (1, 'ann', 10.50)".into(),
            "INSERT INTO orders VALUES (7, 1, 'first', 300)".into(),
            "INSERT INTO orders VALUES (8, 1, 'second', 400)".into(),
        ],
        true,
    )
    .await;
    s.tx::<String>(
        &[
            "UPDATE orders SET note = 'changed', amount = 1 WHERE id = 7".into(),
            "DELETE FROM orders WHERE id = 8".into(),
        ],
        true,
    )
    .await;
    let mut config = config();
    config
        .tables
        .insert("main.orders".into(), "shop.orders_copy".into());
    config.columns.insert(
        "orders".into(),
        ColumnMapping {
            rename: [
                ("id".to_owned(), "order_id".to_owned()),
                ("note".to_owned(), "remark".to_owned()),
            ]
            .into(),
            drop: vec!["amount".into()],
        },
    );
    let last = Arc::new(Mutex::new(None));
    let running = start(&s, &t, config, Crash::Never, 100, &last).await;
    caught_up(&s, &running).await;
    finish(running).await;
    let Database::Postgres(p) = &t.db else {
        unreachable!()
    };
    let orders: Vec<(i32, i32, Option<String>)> =
        sqlx::query_as("SELECT order_id, account_id, remark FROM shop.orders_copy ORDER BY 1")
            .fetch_all(p)
            .await
            .unwrap();
    assert_eq!(orders, vec![(7, 1, Some("changed".to_owned()))]);
    assert_eq!(
        t.rows("accounts", &["id", "owner", "balance"]).await,
        vec![vec!["1".to_owned(), "ann".into(), "10.5".into()]]
    );
}

/// Runs apply until it ends by itself.
async fn run_to_error(source: &Env, target: &Env, config: ApplyConfig) -> ApplyError {
    let last = Arc::new(Mutex::new(None));
    let running = start(source, target, config, Crash::Never, 100, &last).await;
    let result = tokio::time::timeout(Duration::from_secs(30), running.task)
        .await
        .expect("apply stops by itself")
        .unwrap();
    close(running.target).await;
    result.expect_err("apply fails")
}

#[tokio::test]
async fn a_missing_target_table_is_named() {
    let (s, t) = tokio::join!(env(Kind::Mysql), env(Kind::Sqlite));
    s.schema().await;
    install(&s).await;
    t.exec("CREATE TABLE accounts (id INT PRIMARY KEY, owner VARCHAR(50), balance NUMERIC(12,2))")
        .await;
    s.exec("INSERT INTO accounts VALUES (1, 'ann', 10.50)")
        .await;
    s.exec("INSERT INTO orders VALUES (7, 1, 'first', 300)")
        .await;
    // A transaction a batch: the first one commits before the second fails.
    let e = run_to_error(
        &s,
        &t,
        ApplyConfig {
            batch_size: 1,
            ..config()
        },
    )
    .await;
    assert!(matches!(e, ApplyError::MissingTable { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("target table orders") && text.contains("does not exist"),
        "{text}"
    );
    // The transaction before it is applied; the failed one is not
    // acknowledged.
    assert_eq!(
        t.rows("accounts", &["id"]).await,
        vec![vec!["1".to_owned()]]
    );
    let (backlog, _) = TriggerCapture::backlog(&s.db, "shop").await.unwrap();
    assert_eq!(backlog, 1);
}

#[tokio::test]
async fn a_value_the_target_refuses_stops_apply_naming_it() {
    let (s, t) = tokio::join!(env(Kind::Sqlite), env(Kind::Pg));
    s.schema().await;
    t.schema().await;
    install(&s).await;
    s.exec("INSERT INTO orders VALUES (7, 1, 'fine', 300)")
        .await;
    // SQLite keeps text in an INT column; PostgreSQL will not.
    s.exec("INSERT INTO orders VALUES (8, 1, 'bad', 'lots')")
        .await;
    let e = run_to_error(
        &s,
        &t,
        ApplyConfig {
            batch_size: 1,
            ..config()
        },
    )
    .await;
    let text = e.to_string();
    assert!(matches!(e, ApplyError::Refused(_)), "{e:?}");
    assert!(
        text.contains("main.orders")
            && text.contains("into orders")
            && text.contains("{\"id\":8}")
            && text.contains("invalid input syntax for type integer"),
        "{text}"
    );
    assert_eq!(t.rows("orders", &["id"]).await, vec![vec!["7".to_owned()]]);
}

#[tokio::test]
async fn a_checkpoint_of_another_capture_kind_is_refused() {
    let (s, t) = tokio::join!(env(Kind::Sqlite), env(Kind::Sqlite));
    s.schema().await;
    t.schema().await;
    t.exec("CREATE TABLE ferry_cdc_applied (capture VARCHAR(255) NOT NULL PRIMARY KEY, checkpoint TEXT NOT NULL, applied_at TEXT NOT NULL)")
        .await;
    t.exec(r#"INSERT INTO ferry_cdc_applied VALUES ('shop', '{"lsn": 123}', 'x')"#)
        .await;
    s.exec("INSERT INTO orders VALUES (7, 1, 'fine', 300)")
        .await;
    let e = run_to_error(&s, &t, config()).await;
    assert!(matches!(e, ApplyError::OtherCapture { .. }), "{e:?}");
}

/// Values of several types, a composite key, an update that moves a row
/// to another key, a truncate: from PostgreSQL to PostgreSQL (the schema
/// kept by default, `TRUNCATE`) and to MariaDB (the schema dropped, times
/// in UTC, `DELETE`).
async fn items(target: Kind) -> (Env, Env) {
    let (s, t) = tokio::join!(env(Kind::Pg), env(target));
    s.exec("CREATE SCHEMA shop").await;
    s.exec(
        "CREATE TABLE shop.items (sku VARCHAR(20), n INT, price NUMERIC(10,2), meta JSONB, \
         at TIMESTAMPTZ, flag BOOLEAN, PRIMARY KEY (sku, n))",
    )
    .await;
    if target == Kind::Pg {
        t.exec("CREATE SCHEMA shop").await;
        t.exec(
            "CREATE TABLE shop.items (sku VARCHAR(20), n INT, price NUMERIC(10,2), meta JSONB, \
             at TIMESTAMPTZ, flag BOOLEAN, PRIMARY KEY (sku, n))",
        )
        .await;
    } else {
        t.exec(
            "CREATE TABLE items (sku VARCHAR(20), n INT, price DECIMAL(10,2), meta JSON, \
             at DATETIME(6), flag BOOLEAN, PRIMARY KEY (sku, n))",
        )
        .await;
    }
    install(&s).await;
    s.exec(
        "INSERT INTO shop.items VALUES \
         ('a', 1, 1.50, '{\"x\": [1, 2]}', '2024-05-01 15:45:00+02', true), \
         ('b', 2, 2.25, NULL, NULL, false)",
    )
    .await;
    s.exec("UPDATE shop.items SET n = 101, price = 1.75 WHERE sku = 'a' AND n = 1")
        .await;
    s.exec("TRUNCATE shop.items").await;
    s.tx::<String>(
        &[
            "INSERT INTO shop.items VALUES ('c', 3, 9.99, '[\"q\"]', '2024-12-31 23:59:59.5+00', true)"
                .into(),
            "INSERT INTO shop.items VALUES ('d', 4, 0, '{}', NULL, NULL)".into(),
        ],
        true,
    )
    .await;
    s.exec("UPDATE shop.items SET n = 104, flag = false WHERE sku = 'd'")
        .await;
    let last = Arc::new(Mutex::new(None));
    let running = start(&s, &t, config(), Crash::Never, 100, &last).await;
    caught_up(&s, &running).await;
    finish(running).await;
    (s, t)
}

#[tokio::test]
async fn types_keys_and_truncate_postgres_to_postgres() {
    let (s, t) = items(Kind::Pg).await;
    let columns = ["sku", "n", "price", "meta", "at", "flag"];
    let want = s.rows("shop.items", &columns).await;
    assert_eq!(want.len(), 2);
    assert_eq!(t.rows("shop.items", &columns).await, want);
}

#[tokio::test]
async fn types_keys_and_truncate_postgres_to_mariadb() {
    let (_s, t) = items(Kind::Mysql).await;
    let rows = t
        .rows("items", &["sku", "n", "price", "meta", "at", "flag"])
        .await;
    let row = |v: [&str; 6]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rows,
        vec![
            row([
                "c",
                "3",
                "9.99",
                r#"["q"]"#,
                "2024-12-31 23:59:59.500000",
                "1"
            ]),
            row(["d", "104", "0", "{}", "NULL", "0"]),
        ]
    );
}
