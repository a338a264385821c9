#![allow(missing_docs)]
//! Pull mode on SQLite, PostgreSQL and MariaDB (a fresh database each):
//! every row version once, in (updated_at, key) order per table; resume
//! after the acknowledged change, the same ids without; a late commit
//! inside the overlap found once; soft deletes; refusals.

use std::time::Duration;

use ferry_cdc::pull::{DeletedWhen, SoftDelete};
use ferry_cdc::{Capture, Captured, Checkpoint, Filter, Op, Position, PullCapture, PullConfig};
use ferry_core::ErrorKind;
use ferry_store::Database;
use tokio::sync::oneshot;

#[path = "../common/mod.rs"]
mod common;
use common::{env, Env, Kind};

/// `2024-05-01 10:00:00` plus `s` seconds, as SQL text.
fn t(s: u32) -> String {
    format!("'2024-05-01 10:{:02}:{:02}'", s / 60, s % 60)
}

/// A transaction left open: written, committed when told.
struct Open {
    commit: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

impl Open {
    async fn commit(self) {
        self.commit.send(()).unwrap();
        self.done.await.unwrap();
    }
}

impl Env {
    /// Runs `statements` in a transaction that commits when told.
    async fn open(&self, statements: &[&str]) -> Open {
        let statements: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
        let (commit, wait) = oneshot::channel::<()>();
        let (written, is_written) = oneshot::channel::<()>();
        macro_rules! hold {
            ($pool:expr) => {{
                let pool = $pool.clone();
                tokio::spawn(async move {
                    let mut tx = pool.begin().await.unwrap();
                    for s in &statements {
                        sqlx::query(s).execute(&mut *tx).await.unwrap();
                    }
                    written.send(()).unwrap();
                    wait.await.unwrap();
                    tx.commit().await.unwrap();
                })
            }};
        }
        let done = match &self.db {
            Database::Sqlite(p) => hold!(p),
            Database::Postgres(p) => hold!(p),
            Database::Mysql(p) => hold!(p),
        };
        is_written.await.unwrap();
        Open { commit, done }
    }

    /// The type of `updated_at` and `deleted_at`.
    fn time(&self) -> &'static str {
        match self.kind {
            Kind::Sqlite => "TEXT",
            Kind::Pg => "TIMESTAMPTZ",
            Kind::Mysql => "DATETIME(6)",
        }
    }

    async fn schema(&self) {
        let ts = self.time();
        self.exec(&format!(
            "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(50), score NUMERIC(30,10), \
             updated_at {ts} NOT NULL, deleted_at {ts} NULL)"
        ))
        .await;
        self.exec(&format!(
            "CREATE TABLE items (a INT, b INT, note VARCHAR(50), updated_at {ts} NOT NULL, \
             PRIMARY KEY (a, b))"
        ))
        .await;
    }

    fn config(&self) -> PullConfig {
        let mut c = PullConfig::new("shop");
        c.poll_interval = Duration::from_millis(20);
        c.chunk_size = 2;
        c
    }

    async fn start(&self, config: PullConfig) -> PullCapture {
        PullCapture::start(self.db.clone(), config).await.unwrap()
    }
}

/// Reads until `n` changes arrived (or fails after a few seconds), then
/// checks that a few more polls bring nothing.
async fn read_n(capture: &mut PullCapture, n: usize) -> Vec<Captured> {
    let mut out = Vec::new();
    for _ in 0..200 {
        if out.len() >= n {
            break;
        }
        out.extend(capture.read(100, Duration::from_millis(50)).await.unwrap());
    }
    assert_eq!(out.len(), n, "changes read: {:#?}", summary(&out));
    nothing_more(capture).await;
    out
}

/// Several polls, no change.
async fn nothing_more(capture: &mut PullCapture) {
    for _ in 0..4 {
        let more = capture.read(100, Duration::from_millis(40)).await.unwrap();
        assert!(more.is_empty(), "unexpected: {:#?}", summary(&more));
    }
}

fn summary(cs: &[Captured]) -> Vec<String> {
    cs.iter()
        .map(|c| {
            format!(
                "{} {} {} {}",
                c.change.op,
                c.change.source.table.name,
                c.change.key_text(),
                c.change.source.position
            )
        })
        .collect()
}

/// `(op, table, key, updated_at second)` of each change.
fn ops(cs: &[Captured]) -> Vec<(Op, String, String, u32)> {
    cs.iter()
        .map(|c| {
            let Position::Cursor { updated_at, .. } = &c.change.source.position else {
                panic!("not a cursor position: {:?}", c.change.source.position);
            };
            // 2024-05-01?10:MM:SS…
            let minutes: u32 = updated_at[14..16].parse().unwrap();
            let seconds: u32 = updated_at[17..19].parse().unwrap();
            (
                c.change.op,
                c.change.source.table.name.clone(),
                c.change.key_text(),
                minutes * 60 + seconds,
            )
        })
        .collect()
}

fn last_checkpoint(cs: &[Captured]) -> Checkpoint {
    cs.last()
        .and_then(|c| c.checkpoint.clone())
        .expect("the last change carries a checkpoint")
}

fn ids(cs: &[Captured]) -> Vec<uuid::Uuid> {
    cs.iter().map(|c| c.change.id("shop")).collect()
}

macro_rules! every_database {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                ($body)(Kind::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                ($body)(Kind::Pg).await;
            }
            #[tokio::test]
            async fn mariadb() {
                ($body)(Kind::Mysql).await;
            }
        }
    };
}

fn k(s: &str) -> String {
    s.to_owned()
}

every_database!(
    every_version_once_in_order_and_resume,
    |kind: Kind| async move {
        let env = env(kind).await;
        env.schema().await;
        for (id, s) in [(3, 1), (1, 2), (2, 2)] {
            env.exec(&format!(
                "INSERT INTO users (id, name, score, updated_at) VALUES ({id}, 'u{id}', \
                 12345678901234567890.0123456789, {})",
                t(s)
            ))
            .await;
        }
        env.exec(&format!(
            "INSERT INTO items VALUES (2, 1, 'x', {}), (1, 2, 'y', {}), (1, 10, 'z', {})",
            t(1),
            t(1),
            t(3)
        ))
        .await;
        let mut capture = env.start(env.config()).await;

        // The first pass: every row as a read, in (updated_at, key) order
        // per table, in pages of 2.
        let got = read_n(&mut capture, 6).await;
        let mut users: Vec<_> = ops(&got).into_iter().filter(|c| c.1 == "users").collect();
        let items: Vec<_> = ops(&got).into_iter().filter(|c| c.1 == "items").collect();
        assert_eq!(
            users,
            vec![
                (Op::Read, k("users"), k(r#"{"id":3}"#), 1),
                (Op::Read, k("users"), k(r#"{"id":1}"#), 2),
                (Op::Read, k("users"), k(r#"{"id":2}"#), 2),
            ]
        );
        assert_eq!(
            items,
            vec![
                (Op::Read, k("items"), k(r#"{"a":1,"b":2}"#), 1),
                (Op::Read, k("items"), k(r#"{"a":2,"b":1}"#), 1),
                (Op::Read, k("items"), k(r#"{"a":1,"b":10}"#), 3),
            ]
        );
        let first = &got
            .iter()
            .find(|c| c.change.source.table.name == "users")
            .unwrap()
            .change;
        assert!(first.before.is_none());
        let after = first.after.as_ref().unwrap();
        assert_eq!(after["name"], "u3");
        if kind != Kind::Sqlite {
            // 30 significant digits: kept as text, never a rounded float.
            let score = after["score"].as_str().expect("a string");
            assert!(
                score.starts_with("12345678901234567890.0123456789"),
                "{score}"
            );
        }
        // Every page that sent something ends with a checkpoint.
        assert!(got.iter().filter(|c| c.checkpoint.is_some()).count() >= 3);
        capture.acknowledge(&last_checkpoint(&got)).await.unwrap();

        // Updates and inserts over several polls: each version once, as
        // `u` without a before image.
        env.exec(&format!(
            "UPDATE users SET name = 'two', updated_at = {} WHERE id = 2",
            t(10)
        ))
        .await;
        env.exec(&format!(
            "INSERT INTO users (id, name, updated_at) VALUES (4, 'four', {})",
            t(11)
        ))
        .await;
        let round1 = read_n(&mut capture, 2).await;

        // A restart without acknowledging: the same changes, same ids.
        drop(capture);
        let mut again = env.start(env.config()).await;
        let replay = read_n(&mut again, 2).await;
        assert_eq!(ops(&replay), ops(&round1));
        assert_eq!(ids(&replay), ids(&round1));

        env.exec(&format!(
            "UPDATE items SET note = 'w', updated_at = {} WHERE a = 2",
            t(12)
        ))
        .await;
        env.exec(&format!(
            "UPDATE users SET name = 'one', updated_at = {} WHERE id = 1",
            t(12)
        ))
        .await;
        env.exec(&format!(
            "UPDATE users SET name = 'TWO', updated_at = {} WHERE id = 2",
            t(13)
        ))
        .await;
        let round2 = read_n(&mut again, 3).await;
        let mut later = replay.clone();
        later.extend(round2.iter().cloned());
        users = ops(&later).into_iter().filter(|c| c.1 == "users").collect();
        assert_eq!(
            users,
            vec![
                (Op::Update, k("users"), k(r#"{"id":2}"#), 10),
                (Op::Update, k("users"), k(r#"{"id":4}"#), 11),
                (Op::Update, k("users"), k(r#"{"id":1}"#), 12),
                (Op::Update, k("users"), k(r#"{"id":2}"#), 13),
            ]
        );
        assert!(later.iter().all(|c| c.change.before.is_none()));
        let two = later
            .iter()
            .rfind(|c| c.change.key_text() == r#"{"id":2}"#)
            .unwrap();
        assert_eq!(two.change.after.as_ref().unwrap()["name"], "TWO");
        let mut distinct = ids(&later);
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 5);

        // Acknowledged: a restart resumes after it.
        again.acknowledge(&last_checkpoint(&round2)).await.unwrap();
        drop(again);
        let mut resumed = env.start(env.config()).await;
        nothing_more(&mut resumed).await;
        env.exec(&format!(
            "UPDATE items SET note = 'v', updated_at = {} WHERE a = 1 AND b = 2",
            t(14)
        ))
        .await;
        let last = read_n(&mut resumed, 1).await;
        assert_eq!(
            ops(&last),
            vec![(Op::Update, k("items"), k(r#"{"a":1,"b":2}"#), 14)]
        );
    }
);

every_database!(
    a_late_commit_inside_the_overlap_is_found_once,
    |kind: Kind| async move {
        let env = env(kind).await;
        env.schema().await;
        let mut capture = env.start(env.config()).await;
        nothing_more(&mut capture).await;
        env.exec(&format!(
            "INSERT INTO users (id, name, updated_at) VALUES (1, 'a', {})",
            t(10)
        ))
        .await;
        env.exec(&format!(
            "INSERT INTO users (id, name, updated_at) VALUES (3, 'c', {})",
            t(11)
        ))
        .await;
        // A transaction stamps its row 10:00:07 and has not committed
        // while the capture reads past 10:00:11.
        let open = env
            .open(&[&format!(
                "INSERT INTO users (id, name, updated_at) VALUES (2, 'late', {})",
                t(7)
            )])
            .await;
        let got = read_n(&mut capture, 2).await;
        assert_eq!(
            ops(&got),
            vec![
                (Op::Update, k("users"), k(r#"{"id":1}"#), 10),
                (Op::Update, k("users"), k(r#"{"id":3}"#), 11),
            ]
        );
        open.commit().await;
        // Found by the overlap (11 - 5 s = 10:00:06), once; the rows read
        // again in the window are not sent again.
        let late = read_n(&mut capture, 1).await;
        assert_eq!(
            ops(&late),
            vec![(Op::Update, k("users"), k(r#"{"id":2}"#), 7)]
        );
        assert_eq!(late[0].change.after.as_ref().unwrap()["name"], "late");

        // The window's memory survives a restart.
        capture.acknowledge(&last_checkpoint(&late)).await.unwrap();
        drop(capture);
        let mut capture = env.start(env.config()).await;
        nothing_more(&mut capture).await;

        // Older than the overlap: missed (the documented limit).
        env.exec(&format!(
            "INSERT INTO users (id, name, updated_at) VALUES (9, 'too late', {})",
            t(2)
        ))
        .await;
        nothing_more(&mut capture).await;
    }
);

every_database!(soft_deletes_and_hard_deletes, |kind: Kind| async move {
    let env = env(kind).await;
    env.schema().await;
    let boolean = match kind {
        Kind::Pg => "BOOLEAN NOT NULL DEFAULT false",
        Kind::Sqlite | Kind::Mysql => "BOOLEAN NOT NULL DEFAULT 0",
    };
    env.exec(&format!(
        "CREATE TABLE flags (id INT PRIMARY KEY, deleted {boolean}, updated_at {} NOT NULL)",
        env.time()
    ))
    .await;
    env.exec(&format!(
        "INSERT INTO users (id, name, updated_at) VALUES (1, 'a', {}), (3, 'c', {})",
        t(1),
        t(1)
    ))
    .await;
    env.exec(&format!(
        "INSERT INTO users (id, name, updated_at, deleted_at) VALUES (2, 'gone', {}, {})",
        t(1),
        t(1)
    ))
    .await;
    let mut config = env.config();
    config.tables = Filter {
        include: vec!["users".into()],
        ..Filter::default()
    };
    config.soft_delete = Some(SoftDelete {
        column: "deleted_at".into(),
        when: DeletedWhen::NotNull,
    });
    let mut capture = env.start(config).await;
    // Row 2 was deleted before the capture: not part of the snapshot.
    let got = read_n(&mut capture, 2).await;
    assert_eq!(
        ops(&got),
        vec![
            (Op::Read, k("users"), k(r#"{"id":1}"#), 1),
            (Op::Read, k("users"), k(r#"{"id":3}"#), 1),
        ]
    );
    env.exec(&format!(
        "UPDATE users SET deleted_at = {}, updated_at = {} WHERE id = 1",
        t(20),
        t(20)
    ))
    .await;
    let deleted = read_n(&mut capture, 1).await;
    assert_eq!(
        ops(&deleted),
        vec![(Op::Delete, k("users"), k(r#"{"id":1}"#), 20)]
    );
    let d = &deleted[0].change;
    assert!(d.after.is_none());
    assert_eq!(d.before.as_ref().unwrap()["name"], "a");
    // A hard delete leaves nothing to read.
    env.exec("DELETE FROM users WHERE id = 3").await;
    nothing_more(&mut capture).await;

    // A boolean mark.
    env.exec(&format!(
        "INSERT INTO flags (id, updated_at) VALUES (1, {})",
        t(1)
    ))
    .await;
    let mut config = env.config();
    config.name = "flags".into();
    config.tables = Filter {
        include: vec!["flags".into()],
        ..Filter::default()
    };
    config.soft_delete = Some(SoftDelete {
        column: "deleted".into(),
        when: DeletedWhen::True,
    });
    let mut flags = env.start(config).await;
    assert_eq!(read_n(&mut flags, 1).await[0].change.op, Op::Read);
    env.exec(&format!(
        "UPDATE flags SET deleted = true, updated_at = {} WHERE id = 1",
        t(5)
    ))
    .await;
    let got = read_n(&mut flags, 1).await;
    assert_eq!(got[0].change.op, Op::Delete);
    env.exec(&format!(
        "UPDATE flags SET deleted = false, updated_at = {} WHERE id = 1",
        t(6)
    ))
    .await;
    assert_eq!(read_n(&mut flags, 1).await[0].change.op, Op::Update);
});

every_database!(
    without_snapshot_from_the_first_start,
    |kind: Kind| async move {
        let env = env(kind).await;
        env.schema().await;
        env.exec(&format!(
            "INSERT INTO users (id, name, updated_at) VALUES (1, 'old', {})",
            t(10)
        ))
        .await;
        let mut config = env.config();
        config.snapshot = false;
        let mut capture = env.start(config.clone()).await;
        nothing_more(&mut capture).await;
        env.exec(&format!(
            "INSERT INTO users (id, name, updated_at) VALUES (2, 'new', {})",
            t(11)
        ))
        .await;
        let got = read_n(&mut capture, 1).await;
        assert_eq!(
            ops(&got),
            vec![(Op::Update, k("users"), k(r#"{"id":2}"#), 11)]
        );
        // Not acknowledged: a restart keeps the first start, not a new one.
        drop(capture);
        let mut again = env.start(config).await;
        assert_eq!(ids(&read_n(&mut again, 1).await), ids(&got));
    }
);

every_database!(
    tables_pull_mode_cannot_read_are_refused,
    |kind: Kind| async move {
        let env = env(kind).await;
        let ts = env.time();
        env.exec(&format!("CREATE TABLE nokey (id INT, updated_at {ts})"))
            .await;
        env.exec("CREATE TABLE notime (id INT PRIMARY KEY, name VARCHAR(10))")
            .await;
        let refused = |table: &str| {
            let mut c = env.config();
            c.tables = Filter {
                include: vec![table.into()],
                ..Filter::default()
            };
            PullCapture::start(env.db.clone(), c)
        };
        let e = refused("nokey").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(
            e.message.contains("nokey") && e.message.contains("primary key"),
            "{e}"
        );
        let e = refused("notime").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(
            e.message.contains("notime") && e.message.contains("`updated_at`"),
            "{e}"
        );
        if kind != Kind::Sqlite {
            env.exec("CREATE TABLE intime (id INT PRIMARY KEY, updated_at INT)")
                .await;
            let e = refused("intime").await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Permanent);
            assert!(e.message.contains("needs a time"), "{e}");
        }
        // Another column by name.
        let mut c = env.config();
        c.tables = Filter {
            include: vec!["notime".into()],
            ..Filter::default()
        };
        c.updated_at_per_table
            .insert("notime".into(), "name".into());
        let named = PullCapture::start(env.db.clone(), c).await;
        if kind == Kind::Sqlite {
            // SQLite has no time type: the text is checked as it is read.
            assert!(named.is_ok());
        } else {
            assert!(named.unwrap_err().message.contains("needs a time"));
        }
    }
);

every_database!(
    an_unreachable_database_is_unavailable,
    |kind: Kind| async move {
        let env = env(kind).await;
        env.schema().await;
        let mut capture = env.start(env.config()).await;
        nothing_more(&mut capture).await;
        env.db.close().await;
        let e = capture
            .read(10, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
    }
);

every_database!(a_read_takes_no_more_than_asked, |kind: Kind| async move {
    let env = env(kind).await;
    env.schema().await;
    for id in 1..=5 {
        env.exec(&format!(
            "INSERT INTO users (id, name, updated_at) VALUES ({id}, 'u', {})",
            t(id)
        ))
        .await;
    }
    let mut config = env.config();
    config.chunk_size = 10;
    let mut capture = env.start(config).await;
    let mut got = Vec::new();
    for _ in 0..100 {
        let part = capture.read(2, Duration::from_millis(50)).await.unwrap();
        assert!(part.len() <= 2);
        if let Some(last) = part.last() {
            // Every read ends on a checkpoint.
            assert!(last.checkpoint.is_some());
        }
        got.extend(part);
        if got.len() >= 5 {
            break;
        }
    }
    let keys: Vec<u32> = ops(&got).into_iter().map(|c| c.3).collect();
    assert_eq!(keys, vec![1, 2, 3, 4, 5]);
    nothing_more(&mut capture).await;
});
