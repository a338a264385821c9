//! `ferry cdc` as a process: SIGKILLed mid-stream and mid-snapshot on each
//! database, from a configuration file, its status and drop commands, and
//! its refusals.

use std::collections::BTreeMap;

use ferry_testkit::MysqlTestDb;
use serde_json::Value;

use super::*;

fn spawn_cdc(from: &str, to: &str, name: &str) -> Child {
    ferry_command("warn", &["cdc", "--from", from, "--to", to, "--name", name])
        .spawn()
        .expect("start ferry cdc")
}

/// A capture name of its own: PostgreSQL's slots are named after it, and
/// slots are the whole server's.
fn unique_name() -> String {
    format!("bank_{}", &uuid::Uuid::now_v7().simple().to_string()[20..])
}

async fn exec(db: &Database, sql: &str) {
    match db {
        Database::Sqlite(p) => drop(sqlx::query(sql).execute(p).await.unwrap()),
        Database::Postgres(p) => drop(sqlx::query(sql).execute(p).await.unwrap()),
        Database::Mysql(p) => drop(sqlx::query(sql).execute(p).await.unwrap()),
    }
}

/// Per account, the balances the receiver applied, in order.
fn balances(r: &Receiver) -> BTreeMap<i64, Vec<i64>> {
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for x in r.applied() {
        let b: Value = serde_json::from_slice(&x.body).unwrap();
        let id = b["key"]["id"].as_i64().unwrap();
        out.entry(id)
            .or_default()
            .push(b["after"]["balance"].as_i64().unwrap());
    }
    out
}

/// 200 accounts exist before the capture starts; once their snapshot is
/// delivered and acknowledged, updates run while `ferry cdc` (the
/// database's default mode) is SIGKILLed five times at random moments and
/// restarted. Every change arrives, each applied once (the receiver
/// dedups by `ce-id`), each account's balances in order.
///
/// A kill *during* a log-mode snapshot is not part of this test: on
/// MariaDB the resumed snapshot reads rows as they are then, so a row may
/// arrive in a newer state before the stream's older changes of it
/// (docs/cdc.md); PostgreSQL's resumption by backfill is tested in
/// `crates/ferry-cdc/tests/postgres/snapshot.rs` and `backfill.rs`.
async fn kill_and_restart(url: &str) {
    let db = Database::connect(url).await.unwrap();
    exec(
        &db,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)",
    )
    .await;
    for i in 0..200 {
        exec(&db, &format!("INSERT INTO accounts VALUES ({i}, 0)")).await;
    }
    let r = Receiver::start().await;
    r.set_delay(Duration::from_millis(20));
    let name = unique_name();
    let mut rng = rand::thread_rng();
    let mut balance = 0;
    let mut mid_stream = 0;
    let mut first = Some(Reaped(spawn_cdc(url, &r.url(), &name)));
    wait_until("the snapshot", Duration::from_secs(30), || {
        r.applied().len() >= 200
    })
    .await;
    // Acknowledged (every 200 ms, and at once when nothing is in flight).
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..5 {
        let mut child = match first.take() {
            Some(c) => c,
            None => Reaped(spawn_cdc(url, &r.url(), &name)),
        };
        for _ in 0..6 {
            balance += 1;
            exec(
                &db,
                &format!("UPDATE accounts SET balance = {balance} WHERE id < 100"),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..60))).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..150))).await;
        let got = balances(&r);
        let behind = (0..100).any(|id| got.get(&id).and_then(|s| s.last()) != Some(&balance));
        if behind {
            mid_stream += 1;
        }
        sigkill(&mut child.0);
    }
    assert!(
        mid_stream >= 3,
        "only {mid_stream} of 5 kills came mid-stream"
    );
    let mut last = Reaped(spawn_cdc(url, &r.url(), &name));
    // Each account's first change is its snapshot read, as it was when the
    // capture began (updates before that are part of the state read);
    // every committed update after it must follow, once, in order.
    let complete = |got: &BTreeMap<i64, Vec<i64>>| {
        got.len() == 200
            && got
                .iter()
                .all(|(id, seen)| seen.last() == Some(&if *id < 100 { balance } else { 0 }))
    };
    wait_until(
        "every account at its last balance",
        Duration::from_secs(60),
        || complete(&balances(&r)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&mut last.0);
    let got = balances(&r);
    for (id, seen) in &got {
        let first = seen[0];
        let expected: Vec<i64> = if *id < 100 {
            (first..=balance).collect()
        } else {
            vec![0]
        };
        assert_eq!(seen, &expected, "account {id}: every change once, in order");
    }
    assert!(
        got[&0][0] < balance,
        "the capture saw some updates as changes"
    );
    let dropped = ferry(&["cdc", "drop", "--from", url, "--name", &name]);
    assert!(dropped.status.success(), "{dropped:?}");
}

per_database!(kill_and_restart {
    cdc_sigkilled_mid_stream_loses_nothing_sqlite: SqliteTestDb::create(),
    cdc_sigkilled_mid_stream_loses_nothing_postgres: PgTestDb::create().await,
    cdc_sigkilled_mid_stream_loses_nothing_mariadb: MysqlTestDb::create().await,
});

/// `ferry run` with a `[[cdc]]` table; `ferry cdc status` and `ferry cdc
/// drop` on what it installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_from_a_config_file_then_status_and_drop() {
    let t = SqliteTestDb::create();
    let db = Database::connect(&t.url).await.unwrap();
    exec(
        &db,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)",
    )
    .await;
    exec(&db, "INSERT INTO accounts VALUES (1, 10)").await;
    let r = Receiver::start().await;
    let dir = TempDir::new();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[cdc]]
name = "bank"
from = "{}"
tables = ["accounts"]
format = "debezium"
[cdc.sink]
type = "http"
url = "{}"
"#,
            t.url,
            r.url()
        ),
    )
    .unwrap();
    let checked = ferry(&["check", "--config", file.to_str().unwrap()]);
    assert!(checked.status.success(), "{checked:?}");
    let mut child = Reaped(spawn_ferry(&["run", "--config", file.to_str().unwrap()]));
    wait_until("the snapshot row", Duration::from_secs(20), || {
        r.applied().len() == 1
    })
    .await;
    exec(&db, "UPDATE accounts SET balance = 11 WHERE id = 1").await;
    wait_until("the update", Duration::from_secs(20), || {
        r.applied().len() == 2
    })
    .await;
    let update: Value = serde_json::from_slice(&r.applied()[1].body).unwrap();
    assert_eq!(update["op"], "u");
    assert_eq!(update["before"]["balance"], 10);
    assert_eq!(update["after"]["balance"], 11);
    assert_eq!(update["source"]["table"], "accounts");
    stop(&mut child.0);
    exec(&db, "UPDATE accounts SET balance = 12 WHERE id = 1").await;
    let status = ferry(&["cdc", "status", "--from", &t.url, "--name", "bank"]);
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("changes waiting: 1"), "{text}");
    let dropped = ferry(&["cdc", "drop", "--from", &t.url, "--name", "bank"]);
    assert!(dropped.status.success(), "{dropped:?}");
    exec(&db, "UPDATE accounts SET balance = 13 WHERE id = 1").await;
    let status = ferry(&["cdc", "status", "--from", &t.url, "--name", "bank"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("changes waiting: 0"), "{text}");
}

/// A table without a primary key: `ferry cdc` exits non-zero naming it and
/// the fix. A bad key in the file: `ferry check` names key and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_refusals_name_the_fix() {
    let t = SqliteTestDb::create();
    let db = Database::connect(&t.url).await.unwrap();
    exec(&db, "CREATE TABLE logs (line TEXT)").await;
    let out = ferry(&["cdc", "--from", &t.url, "--to", "null://", "--name", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("logs") && err.contains("primary key"), "{err}");

    let dir = TempDir::new();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            "[[cdc]]\nname = \"bad-name\"\nfrom = \"{}\"\n[cdc.sink]\ntype = \"null\"\n",
            t.url
        ),
    )
    .unwrap();
    let out = ferry(&["check", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("`name`"), "{err}");
    std::fs::write(
        &file,
        format!(
            "[[cdc]]\nname = \"ok\"\nfrom = \"{}\"\ntabels = [\"x\"]\n[cdc.sink]\ntype = \"null\"\n",
            t.url
        ),
    )
    .unwrap();
    let out = ferry(&["check", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tabels") && err.contains("line 4"), "{err}");
}

/// `ferry cdc backfill` from a MariaDB URL that names no database: a bare
/// table is refused, asking for `database.table` (it was looked up in a
/// database named after the URL's host part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_backfill_of_a_bare_table_needs_the_urls_database_on_mariadb() {
    let mut server = url::Url::parse(&ferry_testkit::mysql_admin_url()).unwrap();
    server.set_path("");
    let out = ferry(&[
        "cdc",
        "backfill",
        "--from",
        server.as_str(),
        "--name",
        "x",
        "--table",
        "accounts",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`database.accounts`"), "{err}");
}

async fn count(db: &Database, sql: &str) -> i64 {
    match db {
        Database::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        Database::Mysql(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    }
}

/// `ferry cdc --to postgres://…`: SQLite's changes applied to PostgreSQL's
/// table of the same name (pull mode from a config file does the same
/// with `[cdc.target]`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_into_another_database() {
    let source_t = SqliteTestDb::create();
    let target_t = PgTestDb::create().await;
    let source = Database::connect(&source_t.url).await.unwrap();
    let target = Database::connect(&target_t.url).await.unwrap();
    let ddl = "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)";
    exec(&source, ddl).await;
    exec(&target, ddl).await;
    exec(&source, "INSERT INTO accounts VALUES (1, 10), (2, 20)").await;
    let mut child = Reaped(
        ferry_command(
            "warn",
            &[
                "cdc",
                "--from",
                &source_t.url,
                "--to",
                &target_t.url,
                "--name",
                "copy",
            ],
        )
        .spawn()
        .unwrap(),
    );
    exec(&source, "UPDATE accounts SET balance = 11 WHERE id = 1").await;
    exec(&source, "DELETE FROM accounts WHERE id = 2").await;
    exec(&source, "INSERT INTO accounts VALUES (3, 30)").await;
    let sum = "SELECT CAST(COALESCE(SUM(id * 1000 + balance), 0) AS BIGINT) FROM accounts";
    let want = count(&source, sum).await;
    wait_for(
        "the target equals the source",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { count(&target, sum).await == want },
    )
    .await;
    stop(&mut child.0);
    assert_eq!(count(&target, "SELECT COUNT(*) FROM accounts").await, 2);
}

/// Pull mode from a configuration file: rows stamped by `updated_at` go to
/// the sink; a row written later follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_pull_mode_from_a_config_file() {
    let t = SqliteTestDb::create();
    let db = Database::connect(&t.url).await.unwrap();
    exec(
        &db,
        "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT, updated_at TEXT NOT NULL)",
    )
    .await;
    exec(
        &db,
        "INSERT INTO notes VALUES (1, 'a', '2026-01-01T00:00:00.000Z')",
    )
    .await;
    let r = Receiver::start().await;
    let dir = TempDir::new();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            "[[cdc]]\nname = \"notes\"\nfrom = \"{}\"\nmode = \"pull\"\n[cdc.pull]\npoll_interval = \"100ms\"\n[cdc.sink]\ntype = \"http\"\nurl = \"{}\"\n",
            t.url,
            r.url()
        ),
    )
    .unwrap();
    let mut child = Reaped(spawn_ferry(&["run", "--config", file.to_str().unwrap()]));
    wait_until("the first row", Duration::from_secs(20), || {
        r.applied().len() == 1
    })
    .await;
    exec(
        &db,
        "INSERT INTO notes VALUES (2, 'b', '2026-01-01T00:00:01.000Z')",
    )
    .await;
    wait_until("the second row", Duration::from_secs(20), || {
        r.applied().len() == 2
    })
    .await;
    let second: Value = serde_json::from_slice(&r.applied()[1].body).unwrap();
    assert_eq!(second["after"]["body"], "b");
    stop(&mut child.0);
}

/// `ferry cdc backfill` beside a running `ferry cdc`: log mode on
/// PostgreSQL and MariaDB (requested through the log, `--wait` returns
/// once it is delivered), trigger mode on SQLite; each account read once more; a
/// table the capture leaves out is refused.
async fn backfill_beside_a_running_capture(url: &str) {
    let db = Database::connect(url).await.unwrap();
    exec(
        &db,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)",
    )
    .await;
    exec(&db, "CREATE TABLE secrets (id INT PRIMARY KEY)").await;
    for i in 0..50 {
        exec(&db, &format!("INSERT INTO accounts VALUES ({i}, {i})")).await;
    }
    let r = Receiver::start().await;
    let name = unique_name();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Reaped(
        ferry_command(
            "warn",
            &[
                "cdc",
                "--from",
                url,
                "--to",
                &r.url(),
                "--name",
                &name,
                "--tables",
                "accounts",
                "--no-snapshot",
                "--listen",
                &addr,
            ],
        )
        .spawn()
        .expect("start ferry cdc"),
    );
    // Running: a change arrives.
    wait_until("the capture to run", Duration::from_secs(30), || {
        exec_blocking(
            url,
            "UPDATE accounts SET balance = balance + 1 WHERE id = 0",
        );
        !r.applied().is_empty()
    })
    .await;
    let reads = |r: &Receiver| {
        r.applied()
            .iter()
            .filter(|x| serde_json::from_slice::<Value>(&x.body).unwrap()["op"] == "r")
            .count()
    };
    assert_eq!(reads(&r), 0, "no snapshot");
    let out = ferry(&[
        "cdc", "backfill", "--from", url, "--name", &name, "--table", "accounts", "--wait",
    ]);
    assert!(out.status.success(), "{out:?}");
    wait_until("every account read", Duration::from_secs(30), || {
        reads(&r) == 50
    })
    .await;
    if !url.starts_with("sqlite") {
        // Log mode reports the rows its backfills read, and, once the
        // backfill is acknowledged, that none runs.
        let value = |page: &str, series: &str| {
            page.lines()
                .find(|l| l.starts_with(&format!("{series}{{capture=\"{name}\"}}")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let started = Instant::now();
        let page = loop {
            let page = super::consume::http_get(&addr, "/metrics")
                .await
                .unwrap_or_default();
            let done = value(&page, "ferry_cdc_snapshot_running") == Some(0.0);
            if done || started.elapsed() > Duration::from_secs(10) {
                break page;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            value(&page, "ferry_cdc_snapshot_running"),
            Some(0.0),
            "{page}"
        );
        assert_eq!(
            value(&page, "ferry_cdc_snapshot_rows_total"),
            Some(50.0),
            "{page}"
        );
        // Status: position and lag, in bytes and seconds; no backfill left.
        let status = ferry(&["cdc", "status", "--from", url, "--name", &name]);
        assert!(status.status.success(), "{status:?}");
        let text = String::from_utf8_lossy(&status.stdout);
        for line in ["lag bytes: ", "lag seconds: "] {
            assert!(text.contains(line), "{text}");
        }
        assert!(!text.contains("backfill "), "{text}");
    }
    let refused = ferry(&[
        "cdc", "backfill", "--from", url, "--name", &name, "--table", "nope",
    ]);
    assert!(!refused.status.success(), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&mut child.0);
    assert_eq!(reads(&r), 50, "each account once");
    let dropped = ferry(&["cdc", "drop", "--from", url, "--name", &name]);
    assert!(dropped.status.success(), "{dropped:?}");
}

/// Runs `sql` on `url` from a synchronous closure.
fn exec_blocking(url: &str, sql: &str) {
    let url = url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let db = Database::connect(&url).await.unwrap();
                exec(&db, &sql).await;
            })
    })
    .join()
    .unwrap();
}

per_database!(backfill_beside_a_running_capture {
    cdc_backfill_beside_a_running_capture_sqlite: SqliteTestDb::create(),
    cdc_backfill_beside_a_running_capture_postgres: PgTestDb::create().await,
    cdc_backfill_beside_a_running_capture_mariadb: MysqlTestDb::create().await,
});

/// PostgreSQL log mode watches its slot: `/metrics` shows the WAL it
/// retains, and passing the threshold (0 MiB here) is logged once, not at
/// every look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_reports_retained_wal_and_warns_once_over_the_threshold() {
    use super::consume::{http_get, metric};
    let t = PgTestDb::create().await;
    let db = Database::connect(&t.url).await.unwrap();
    exec(&db, "CREATE TABLE accounts (id INT PRIMARY KEY)").await;
    let r = Receiver::start().await;
    let name = unique_name();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = ferry_command(
        "warn",
        &[
            "cdc",
            "--from",
            &t.url,
            "--to",
            &r.url(),
            "--name",
            &name,
            "--no-snapshot",
            "--listen",
            &addr,
            "--retained-wal-warning-mb",
            "0",
            "--heartbeat",
            "1s",
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .expect("start ferry cdc");
    let series = format!("ferry_cdc_retained_wal_bytes{{capture=\"{name}\"}}");
    let mut seen = None;
    let started = Instant::now();
    while seen.is_none() && started.elapsed() < Duration::from_secs(30) {
        let page = http_get(&addr, "/metrics").await.unwrap_or_default();
        seen = page
            .lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.is_some_and(|b| b > 0.0), "{series}: {seen:?}");
    assert!(metric(
        &http_get(&addr, "/metrics").await.unwrap(),
        "ferry_cdc_retained_wal_bytes"
    )
    .is_some());
    // Two more looks at the slot (every second, with the heartbeat).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("retains more WAL than the threshold").count(),
        1,
        "once per state change:\n{log}"
    );
    let dropped = ferry(&["cdc", "drop", "--from", &t.url, "--name", &name]);
    assert!(dropped.status.success(), "{dropped:?}");
}

/// Per account, the (op, balance) events the receiver applied, in order.
fn events(r: &Receiver) -> BTreeMap<i64, Vec<(String, i64)>> {
    let mut out: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
    for x in r.applied() {
        let b: Value = serde_json::from_slice(&x.body).unwrap();
        let id = b["key"]["id"].as_i64().unwrap();
        out.entry(id).or_default().push((
            b["op"].as_str().unwrap().to_owned(),
            b["after"]["balance"].as_i64().unwrap(),
        ));
    }
    out
}

/// PostgreSQL log mode, `ferry cdc` SIGKILLed three times *during* its
/// initial snapshot (while the accounts it reads last are updated) and
/// twice mid-stream:
/// the rest of the snapshot is read as a backfill beside the stream, so
/// each account's events, deduplicated by `ce-id`, never go back — every
/// update once and in order, a read at most repeating the state the last
/// update left — and every account ends at its balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_sigkilled_mid_snapshot_keeps_each_rows_order_postgres() {
    const ACCOUNTS: i64 = 20_000;
    let t = PgTestDb::create().await;
    let url = t.url.as_str();
    let db = Database::connect(url).await.unwrap();
    exec(
        &db,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)",
    )
    .await;
    exec(
        &db,
        &format!(
            "INSERT INTO accounts SELECT g, 0 FROM generate_series(0, {}) g",
            ACCOUNTS - 1
        ),
    )
    .await;
    let r = Receiver::start().await;
    let name = unique_name();
    let mut balance = 0;
    let mut rng = rand::thread_rng();
    let reads = |r: &Receiver| {
        r.applied()
            .iter()
            .filter(|x| serde_json::from_slice::<Value>(&x.body).unwrap()["op"] == "r")
            .count()
    };
    let mut mid_snapshot = 0;
    for round in 0..5 {
        let mut child = Reaped(spawn_cdc(url, &r.url(), &name));
        if round < 3 {
            // Killed once this run has read some more of the snapshot.
            let before = reads(&r);
            let goal = before + rng.gen_range(300..900);
            wait_until("more of the snapshot", Duration::from_secs(60), || {
                reads(&r) >= goal
            })
            .await;
        }
        for _ in 0..4 {
            balance += 1;
            exec(
                &db,
                &format!(
                    "UPDATE accounts SET balance = {balance} WHERE id >= {}",
                    ACCOUNTS - 100
                ),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(10..60))).await;
        }
        if (reads(&r) as i64) < ACCOUNTS {
            mid_snapshot += 1;
        }
        sigkill(&mut child.0);
    }
    assert!(
        mid_snapshot >= 3,
        "only {mid_snapshot} kills came during the snapshot"
    );
    let mut last = Reaped(spawn_cdc(url, &r.url(), &name));
    let complete = |got: &BTreeMap<i64, Vec<(String, i64)>>| {
        got.len() as i64 == ACCOUNTS
            && got.iter().all(|(id, seen)| {
                seen.last().map(|e| e.1) == Some(if *id >= ACCOUNTS - 100 { balance } else { 0 })
            })
    };
    wait_until(
        "every account at its last balance",
        Duration::from_secs(120),
        || complete(&events(&r)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&mut last.0);
    for (id, seen) in &events(&r) {
        for pair in seen.windows(2) {
            let ((_, a), (op, b)) = (&pair[0], &pair[1]);
            let step = b - a;
            assert!(
                step == 1 || (step == 0 && op == "r"),
                "account {id}: {seen:?} goes from {a} to {op} {b}"
            );
        }
        let expected = if *id >= ACCOUNTS - 100 { balance } else { 0 };
        assert_eq!(seen.last().map(|e| e.1), Some(expected), "account {id}");
        if *id < ACCOUNTS - 100 {
            assert_eq!(seen.len(), 1, "account {id} read once: {seen:?}");
        }
    }
    let dropped = ferry(&["cdc", "drop", "--from", url, "--name", &name]);
    assert!(dropped.status.success(), "{dropped:?}");
}

/// One transaction of 10,000 row changes, `ferry cdc` (PostgreSQL log
/// mode) SIGKILLed twice while it is being delivered: nothing of it is
/// acknowledged before its end, so each restart sends it again from its
/// first change, with the same ids; the receiver, deduplicating by
/// `ce-id`, applies each row's change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_sigkilled_mid_large_transaction_postgres() {
    const ROWS: usize = 10_000;
    let t = PgTestDb::create().await;
    let url = t.url.as_str();
    let db = Database::connect(url).await.unwrap();
    exec(
        &db,
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)",
    )
    .await;
    exec(
        &db,
        &format!("INSERT INTO accounts SELECT g, 0 FROM generate_series(1, {ROWS}) g"),
    )
    .await;
    let r = Receiver::start().await;
    let name = unique_name();
    let spawn = || {
        Reaped(
            ferry_command(
                "warn",
                &[
                    "cdc",
                    "--from",
                    url,
                    "--to",
                    &r.url(),
                    "--name",
                    &name,
                    "--no-snapshot",
                ],
            )
            .spawn()
            .expect("start ferry cdc"),
        )
    };
    let mut child = spawn();
    wait_until("the capture to run", Duration::from_secs(30), || {
        exec_blocking(url, "UPDATE accounts SET balance = -1 WHERE id = 1");
        !r.applied().is_empty()
    })
    .await;
    let warm = r.applied().len();
    exec(&db, "UPDATE accounts SET balance = balance + 1").await;
    let mut kills = 0;
    for goal in [2_000, 6_000] {
        wait_until("part of the transaction", Duration::from_secs(60), || {
            r.applied().len() >= warm + goal
        })
        .await;
        if r.applied().len() < warm + ROWS {
            kills += 1;
        }
        sigkill(&mut child.0);
        child = spawn();
    }
    assert_eq!(kills, 2, "both kills came mid-transaction");
    wait_until("the whole transaction", Duration::from_secs(120), || {
        r.applied().len() >= warm + ROWS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(&mut child.0);
    let got = balances(&r);
    for id in 1..=ROWS as i64 {
        let seen = &got[&id];
        let last = *seen.last().unwrap();
        let expected = if id == 1 { 0 } else { 1 };
        assert_eq!(last, expected, "account {id}: {seen:?}");
        assert_eq!(
            seen.iter().filter(|b| **b == expected).count(),
            1,
            "account {id}: the transaction's change applied once: {seen:?}"
        );
    }
    let dropped = ferry(&["cdc", "drop", "--from", url, "--name", &name]);
    assert!(dropped.status.success(), "{dropped:?}");
}
