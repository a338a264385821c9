//! Helpers: a capture's configuration and the slots to drop, reading
//! until a count, the server's own view of a slot.

use std::time::{Duration, Instant};

use ferry_cdc::postgres::{PgCapture, PgLogConfig};
use ferry_cdc::{Capture, Captured};
use ferry_testkit::PgTestDb;
use sqlx::{Connection, PgConnection};

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// Replication slots dropped when it is: slots are cluster-wide, and a
/// database with one cannot be dropped. Declare it after the database
/// and before the capture, so that it drops in between.
pub struct Slots {
    url: String,
    names: Vec<String>,
}

impl Slots {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            names: Vec::new(),
        }
    }

    /// Registers `name` for dropping; returns it.
    pub fn add(&mut self, name: String) -> String {
        self.names.push(name.clone());
        name
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        let url = self.url.clone();
        let names = std::mem::take(&mut self.names);
        // Drop runs outside any runtime guarantee; use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await.ok()?;
                for name in names {
                    for _ in 0..100 {
                        let _ = sqlx::query(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                             WHERE slot_name = $1 AND active_pid IS NOT NULL",
                        )
                        .bind(&name)
                        .execute(&mut conn)
                        .await;
                        let dropped = sqlx::query(
                            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                             WHERE slot_name = $1",
                        )
                        .bind(&name)
                        .execute(&mut conn)
                        .await;
                        if dropped.is_ok() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Some(())
            })
        })
        .join();
    }
}

/// A capture of `db` named `name`, its slot registered in `slots`.
pub fn config(db: &PgTestDb, name: &str, slots: &mut Slots) -> PgLogConfig {
    let config = PgLogConfig::new(db.url.clone(), name);
    slots.add(config.slot_name());
    config
}

/// Runs `sql` (several statements) on `conn`.
pub async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Reads `max` at a time until `n` changes came (a minute at most).
pub async fn read_n(capture: &mut PgCapture, n: usize, max: usize) -> Vec<Captured> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} changes: {:#?}",
            got.len(),
            got.iter().map(|c: &Captured| &c.change).collect::<Vec<_>>()
        );
        let batch = capture
            .read(max, Duration::from_secs(1))
            .await
            .unwrap_or_else(|e| panic!("read: {}", e.describe()));
        assert!(batch.len() <= max);
        got.extend(batch);
    }
    got
}

/// What one more read brings within a second.
pub async fn read_quiet(capture: &mut PgCapture) -> Vec<Captured> {
    capture.read(1000, Duration::from_secs(1)).await.unwrap()
}

/// The end LSN a checkpoint holds.
pub fn lsn_of(c: &Captured) -> u64 {
    c.checkpoint.as_ref().unwrap().0["lsn"].as_u64().unwrap()
}

/// `16/B374D848` as a number.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The slot's `confirmed_flush_lsn` and `restart_lsn`.
pub async fn slot_lsns(conn: &mut PgConnection, slot: &str) -> (u64, u64) {
    let (confirmed, restart): (String, String) = sqlx::query_as(
        "SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots \
         WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_one(conn)
    .await
    .unwrap();
    (parse_lsn(&confirmed), parse_lsn(&restart))
}

/// The process's resident memory.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// What PostgreSQL's `test_decoding` read from `slot`: (table, op, id).
pub async fn test_decoding_changes(
    conn: &mut PgConnection,
    slot: &str,
) -> Vec<(String, &'static str, Option<i64>)> {
    let lines: Vec<String> =
        sqlx::query_scalar("SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)")
            .bind(slot)
            .fetch_all(conn)
            .await
            .unwrap();
    lines
        .iter()
        .filter_map(|line| {
            // table public.a: INSERT: id[integer]:1 v[text]:'a1'
            let rest = line.strip_prefix("table ")?;
            let (table, rest) = rest.split_once(": ")?;
            // Ferry's own tables (the snapshot's progress in
            // ferry_cdc_offsets) are never captured.
            if table
                .split_once('.')
                .map_or(table, |(_, t)| t)
                .starts_with("ferry_")
            {
                return None;
            }
            let (op, data) = rest.split_once(':')?;
            let op = match op {
                "INSERT" => "c",
                "UPDATE" => "u",
                "DELETE" => "d",
                "TRUNCATE" => "t",
                other => panic!("test_decoding op {other}: {line}"),
            };
            let data = data.split_once("new-tuple: ").map_or(data, |(_, new)| new);
            let id = data.find("id[").and_then(|at| {
                let value = &data[at..];
                let value = &value[value.find("]:")? + 2..];
                value
                    .split(|c: char| !c.is_ascii_digit() && c != '-')
                    .next()?
                    .parse()
                    .ok()
            });
            Some((table.to_owned(), op, id))
        })
        .collect()
}

/// A login role without the REPLICATION attribute, dropped when it is
/// (roles are cluster-wide).
pub struct Role {
    url: String,
    pub name: String,
}

impl Role {
    pub async fn create(url: &str) -> Self {
        let name = unique("ferry_norepl_");
        let mut conn = PgConnection::connect(url).await.unwrap();
        exec(
            &mut conn,
            &format!("CREATE ROLE {name} LOGIN NOREPLICATION NOSUPERUSER"),
        )
        .await;
        Self {
            url: url.to_owned(),
            name,
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let url = self.url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await.ok()?;
                sqlx::raw_sql(&format!("DROP ROLE IF EXISTS {name}"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Reads `max` at a time, acknowledging each batch's last checkpoint as a
/// runner does once it delivered the batch, until `done` says so (two
/// minutes at most).
pub async fn read_acking(
    capture: &mut PgCapture,
    max: usize,
    done: impl Fn(&PgCapture, &[Captured]) -> bool,
) -> Vec<Captured> {
    let mut got: Vec<Captured> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(capture, &got) {
        assert!(
            Instant::now() < deadline,
            "{} changes only: {:?}",
            got.len(),
            got.iter()
                .rev()
                .take(5)
                .map(|c| (&c.change.op, &c.change.key))
                .collect::<Vec<_>>()
        );
        let batch = capture
            .read(max, Duration::from_millis(200))
            .await
            .unwrap_or_else(|e| panic!("read: {}", e.describe()));
        assert!(batch.len() <= max);
        if let Some(checkpoint) = batch.iter().rev().find_map(|c| c.checkpoint.clone()) {
            capture
                .acknowledge(&checkpoint)
                .await
                .unwrap_or_else(|e| panic!("acknowledge: {}", e.describe()));
        }
        got.extend(batch);
    }
    got
}
