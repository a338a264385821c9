#![allow(missing_docs)]
//! Trigger mode on SQLite, PostgreSQL and MariaDB (a fresh database each):
//! exactly the committed changes, in commit order, with the right
//! operations and rows; resume after the acknowledged change; schema
//! changes; refusals.

use std::time::Duration;

use ferry_cdc::{Capture, Captured, Change, Filter, Op, TriggerCapture, TriggerConfig};
use ferry_store::Database;
use serde_json::json;

#[path = "../common/mod.rs"]
mod common;
use common::{env, Env, Kind};

impl Env {
    async fn schema(&self) {
        self.exec(
            "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(50), score NUMERIC(30,10))",
        )
        .await;
        self.exec("CREATE TABLE orders (id INT PRIMARY KEY, user_id INT, total NUMERIC(12,2))")
            .await;
        self.exec("CREATE TABLE items (a INT, b INT, note VARCHAR(50), PRIMARY KEY (a, b))")
            .await;
    }

    async fn start(&self, config: TriggerConfig) -> TriggerCapture {
        TriggerCapture::start(self.db.clone(), config)
            .await
            .unwrap()
    }
}

/// Reads until `n` changes arrived (or fails after a few seconds).
async fn read_n(capture: &mut TriggerCapture, n: usize, max: usize) -> Vec<Captured> {
    let mut out = Vec::new();
    for _ in 0..200 {
        if out.len() >= n {
            break;
        }
        out.extend(capture.read(max, Duration::from_millis(50)).await.unwrap());
    }
    assert_eq!(out.len(), n, "changes read: {:#?}", summary(&out));
    // Nothing more.
    let more = capture.read(max, Duration::from_millis(50)).await.unwrap();
    assert!(more.is_empty(), "unexpected: {:#?}", summary(&more));
    out
}

fn summary(cs: &[Captured]) -> Vec<String> {
    cs.iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c.change.op,
                c.change.source.table.name,
                c.change.key_text()
            )
        })
        .collect()
}

fn ops(cs: &[Captured]) -> Vec<(Op, String, String)> {
    cs.iter()
        .map(|c| {
            (
                c.change.op,
                c.change.source.table.name.clone(),
                c.change.key_text(),
            )
        })
        .collect()
}

fn change<'a>(cs: &'a [Captured], op: Op, table: &str) -> &'a Change {
    &cs.iter()
        .find(|c| c.change.op == op && c.change.source.table.name == table)
        .unwrap_or_else(|| panic!("no {op} of {table}"))
        .change
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

every_database!(committed_changes_in_commit_order, |kind: Kind| async move {
    let env = env(kind).await;
    env.schema().await;
    env.exec("INSERT INTO users VALUES (1, 'ann', 1.5)").await;
    let mut capture = env.start(TriggerConfig::new("shop")).await;
    env.tx(
        &[
            "INSERT INTO users VALUES (2, 'bob', 12345678901234567890.0123456789)",
            "INSERT INTO orders VALUES (10, 2, 99.90)",
        ],
        true,
    )
    .await;
    env.tx(
        &[
            "UPDATE users SET name = 'never' WHERE id = 1",
            "DELETE FROM users WHERE id = 2",
        ],
        false,
    )
    .await;
    env.tx(
        &[
            "UPDATE users SET name = 'bobby' WHERE id = 2",
            "DELETE FROM orders WHERE id = 10",
            "INSERT INTO items VALUES (1, 2, 'x')",
            "UPDATE items SET note = 'y' WHERE a = 1 AND b = 2",
        ],
        true,
    )
    .await;
    let got = read_n(&mut capture, 7, 100).await;
    let k = |s: &str| s.to_owned();
    assert_eq!(
        ops(&got),
        vec![
            (Op::Read, k("users"), k(r#"{"id":1}"#)),
            (Op::Create, k("users"), k(r#"{"id":2}"#)),
            (Op::Create, k("orders"), k(r#"{"id":10}"#)),
            (Op::Update, k("users"), k(r#"{"id":2}"#)),
            (Op::Delete, k("orders"), k(r#"{"id":10}"#)),
            (Op::Create, k("items"), k(r#"{"a":1,"b":2}"#)),
            (Op::Update, k("items"), k(r#"{"a":1,"b":2}"#)),
        ]
    );
    let created = change(&got, Op::Create, "users");
    assert!(created.before.is_none());
    let after = created.after.as_ref().unwrap();
    assert_eq!(after["name"], "bob");
    // 30 significant digits: kept as text, never a rounded float (SQLite
    // itself stores a NUMERIC that long as a REAL).
    if kind != Kind::Sqlite {
        let score = after["score"].as_str().expect("a string");
        assert!(
            score.starts_with("12345678901234567890.0123456789"),
            "{score}"
        );
    }
    let updated = change(&got, Op::Update, "users");
    assert_eq!(updated.before.as_ref().unwrap()["name"], "bob");
    assert_eq!(updated.after.as_ref().unwrap()["name"], "bobby");
    let deleted = change(&got, Op::Delete, "orders");
    assert!(deleted.after.is_none());
    assert_eq!(deleted.before.as_ref().unwrap()["user_id"], 2);
    // Ids are distinct; a checkpoint ends every transaction.
    let mut ids: Vec<_> = got.iter().map(|c| c.change.id("shop")).collect();
    ids.dedup();
    assert_eq!(ids.len(), 7);
    assert!(got.last().unwrap().checkpoint.is_some());
    if kind == Kind::Pg {
        // PostgreSQL names transactions: the last one's four changes.
        let tx: Vec<_> = got[3..]
            .iter()
            .map(|c| c.change.tx.clone().unwrap())
            .collect();
        assert!(tx.iter().all(|t| t.id == tx[0].id));
        assert_eq!(
            tx.iter().map(|t| t.order).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(tx[3].total, Some(4));
        assert!(got[3..6].iter().all(|c| c.checkpoint.is_none()));
    }
});

every_database!(
    resumes_after_the_acknowledged_change,
    |kind: Kind| async move {
        let env = env(kind).await;
        env.schema().await;
        let mut capture = env.start(TriggerConfig::new("shop")).await;
        for i in 1..=5 {
            env.exec(&format!("INSERT INTO users VALUES ({i}, 'u{i}', 0)"))
                .await;
        }
        let first = read_n(&mut capture, 5, 100).await;
        capture
            .acknowledge(first[2].checkpoint.as_ref().unwrap())
            .await
            .unwrap();
        drop(capture);
        // A new capture (a restart): the unacknowledged changes again, same ids.
        let mut again = env.start(TriggerConfig::new("shop")).await;
        let second = read_n(&mut again, 2, 100).await;
        let ids = |cs: &[Captured]| cs.iter().map(|c| c.change.id("shop")).collect::<Vec<_>>();
        assert_eq!(ids(&second), ids(&first[3..]));
        again
            .acknowledge(second[1].checkpoint.as_ref().unwrap())
            .await
            .unwrap();
        let (backlog, _) = TriggerCapture::backlog(&env.db, "shop").await.unwrap();
        assert_eq!(backlog, 0, "acknowledged changes are pruned");
    }
);

every_database!(reads_in_bounded_batches, |kind: Kind| async move {
    let env = env(kind).await;
    env.schema().await;
    let mut capture = env.start(TriggerConfig::new("shop")).await;
    let inserts: Vec<String> = (1..=250)
        .map(|i| format!("INSERT INTO users VALUES ({i}, 'u', 0)"))
        .collect();
    let refs: Vec<&str> = inserts.iter().map(String::as_str).collect();
    env.tx(&refs, true).await;
    let mut got = Vec::new();
    for _ in 0..100 {
        let batch = capture.read(40, Duration::from_millis(50)).await.unwrap();
        assert!(batch.len() <= 40);
        if batch.is_empty() && got.len() == 250 {
            break;
        }
        got.extend(batch);
    }
    assert_eq!(got.len(), 250);
    let keys: Vec<i64> = got
        .iter()
        .map(|c| c.change.key["id"].as_i64().unwrap())
        .collect();
    assert_eq!(keys, (1..=250).collect::<Vec<_>>());
    // One transaction: where the database names it, one checkpoint at its end.
    let checkpoints = got.iter().filter(|c| c.checkpoint.is_some()).count();
    match kind {
        Kind::Pg => assert_eq!(checkpoints, 1),
        _ => assert_eq!(checkpoints, 250),
    }
});

every_database!(a_column_added_is_picked_up, |kind: Kind| async move {
    let env = env(kind).await;
    env.schema().await;
    let mut capture = env.start(TriggerConfig::new("shop")).await;
    env.exec("INSERT INTO users VALUES (1, 'a', 0)").await;
    read_n(&mut capture, 1, 10).await;
    env.exec("ALTER TABLE users ADD COLUMN email VARCHAR(50)")
        .await;
    if kind == Kind::Mysql {
        // MariaDB's schema is compared every few seconds.
        tokio::time::sleep(Duration::from_millis(5200)).await;
        capture.read(10, Duration::ZERO).await.unwrap();
    } else {
        capture.read(10, Duration::ZERO).await.unwrap();
    }
    let insert = "INSERT INTO users VALUES (2, 'b', 0, 'b@example.com')";
    if env.kind == Kind::Sqlite {
        // Under load a pooled SQLite connection may still prepare with the
        // schema it read before the ALTER ("3 columns but 4 values"):
        // SQLite's, not the capture's; a fresh connection sees the column.
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&env.url)
            .await
            .unwrap();
        sqlx::query(insert).execute(&mut conn).await.unwrap();
    } else {
        env.exec(insert).await;
    }
    let got = read_n(&mut capture, 1, 10).await;
    assert_eq!(
        got[0].change.after.as_ref().unwrap()["email"],
        "b@example.com"
    );
});

every_database!(columns_and_tables_left_out, |kind: Kind| async move {
    let env = env(kind).await;
    env.schema().await;
    let config = TriggerConfig {
        filter: Filter {
            exclude: vec!["orders".into()],
            exclude_columns: vec!["users.name".into()],
            ..Filter::default()
        },
        ..TriggerConfig::new("shop")
    };
    let mut capture = env.start(config).await;
    env.exec("INSERT INTO orders VALUES (1, 1, 1)").await;
    env.exec("INSERT INTO users VALUES (1, 'secret', 0)").await;
    let got = read_n(&mut capture, 1, 10).await;
    let after = got[0].change.after.as_ref().unwrap();
    assert!(after.get("name").is_none(), "{after:?}");
    assert_eq!(after["id"], 1);
});

every_database!(
    a_table_without_a_primary_key_is_refused,
    |kind: Kind| async move {
        let env = env(kind).await;
        env.exec("CREATE TABLE logs (line VARCHAR(50))").await;
        let err = TriggerCapture::start(env.db.clone(), TriggerConfig::new("shop"))
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        let text = err.describe();
        assert!(
            text.contains("logs") && text.contains("primary key"),
            "{text}"
        );
    }
);

every_database!(drop_removes_the_triggers, |kind: Kind| async move {
    let env = env(kind).await;
    env.schema().await;
    let mut capture = env.start(TriggerConfig::new("shop")).await;
    env.exec("INSERT INTO users VALUES (1, 'a', 0)").await;
    read_n(&mut capture, 1, 10).await;
    TriggerCapture::drop_capture(&env.db, "shop").await.unwrap();
    // Writes work and record nothing.
    env.exec("INSERT INTO users VALUES (2, 'b', 0)").await;
    let (backlog, _) = TriggerCapture::backlog(&env.db, "shop").await.unwrap();
    assert_eq!(backlog, 0);
});

/// Two captures of one database with names that start alike keep their
/// own triggers and changes.
#[tokio::test]
async fn two_captures_keep_apart() {
    let env = env(Kind::Sqlite).await;
    env.schema().await;
    let users = TriggerConfig {
        filter: Filter {
            include: vec!["users".into()],
            ..Filter::default()
        },
        ..TriggerConfig::new("a")
    };
    let orders = TriggerConfig {
        filter: Filter {
            include: vec!["orders".into()],
            ..Filter::default()
        },
        ..TriggerConfig::new("a_b")
    };
    let mut a = env.start(users).await;
    let mut ab = env.start(orders).await;
    env.exec("INSERT INTO users VALUES (1, 'a', 0)").await;
    env.exec("INSERT INTO orders VALUES (1, 1, 1)").await;
    assert_eq!(
        read_n(&mut a, 1, 10).await[0].change.source.table.name,
        "users"
    );
    assert_eq!(
        read_n(&mut ab, 1, 10).await[0].change.source.table.name,
        "orders"
    );
    TriggerCapture::drop_capture(&env.db, "a").await.unwrap();
    env.exec("INSERT INTO orders VALUES (2, 1, 1)").await;
    assert_eq!(read_n(&mut ab, 1, 10).await[0].change.key["id"], json!(2));
}

/// On PostgreSQL a transaction that recorded a change first commits
/// first: a second writer waits for it, so ids follow commit order.
#[tokio::test]
async fn postgres_interleaved_writers_are_read_in_commit_order() {
    let env = env(Kind::Pg).await;
    env.schema().await;
    let mut capture = env.start(TriggerConfig::new("shop")).await;
    let Database::Postgres(pool) = &env.db else {
        unreachable!()
    };
    let mut a = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users VALUES (1, 'a', 0)")
        .execute(&mut *a)
        .await
        .unwrap();
    let p = pool.clone();
    let b = tokio::spawn(async move {
        let mut b = p.begin().await.unwrap();
        sqlx::query("INSERT INTO orders VALUES (1, 1, 1)")
            .execute(&mut *b)
            .await
            .unwrap();
        b.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b.is_finished(), "the second writer waits for the first");
    sqlx::query("UPDATE users SET name = 'a2' WHERE id = 1")
        .execute(&mut *a)
        .await
        .unwrap();
    a.commit().await.unwrap();
    b.await.unwrap();
    let got = read_n(&mut capture, 3, 10).await;
    let names: Vec<_> = got
        .iter()
        .map(|c| (c.change.op, c.change.source.table.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (Op::Create, "users"),
            (Op::Update, "users"),
            (Op::Create, "orders")
        ]
    );
}

/// PostgreSQL's TRUNCATE is a `t` change of the table, without a key.
#[tokio::test]
async fn postgres_truncate_is_a_change() {
    let env = env(Kind::Pg).await;
    env.schema().await;
    env.exec("INSERT INTO orders VALUES (1, 1, 1)").await;
    let mut capture = env
        .start(TriggerConfig {
            snapshot: false,
            ..TriggerConfig::new("shop")
        })
        .await;
    env.exec("TRUNCATE orders").await;
    let got = read_n(&mut capture, 1, 10).await;
    assert_eq!(got[0].change.op, Op::Truncate);
    assert!(got[0].change.key.is_empty());
    assert_eq!(got[0].change.ordering_key(), "public.orders");
}
