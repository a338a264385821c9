//! The event store: one suite on SQLite, PostgreSQL and MariaDB, plus the
//! read-horizon tests for the servers (many writers whose commits
//! interleave, and a reader following offsets).

use std::collections::HashSet;
use std::process::{Command, Output};

use ferry_store::event_store::{self, EventPage, EventQuery, NewEvent, StoredEvent, MAX_PAGE};
use uuid::Uuid;

use super::*;
use crate::each_db;

fn page(offset: i64, limit: u32) -> EventQuery {
    EventQuery {
        offset,
        limit,
        ..EventQuery::default()
    }
}

fn of_type(event_type: &str, offset: i64, limit: u32) -> EventQuery {
    EventQuery {
        event_type: Some(event_type.to_owned()),
        ..page(offset, limit)
    }
}

/// Every event, read page by page from the start.
async fn read_all(db: &Database) -> Vec<StoredEvent> {
    let mut all = Vec::new();
    let mut offset = 0;
    loop {
        let p = db.read_events(&page(offset, 1000)).await.unwrap();
        let done = p.events.len() < 1000;
        all.extend(p.events);
        offset = p.next_offset;
        if done {
            return all;
        }
    }
}

fn ids(events: &[StoredEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

fn seqs(events: &[StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.seq).collect()
}

/// Appends `events` with the database's module function inside a
/// transaction of the test's own, which is committed or rolled back.
async fn append_in_tx(db: &Database, events: &[NewEvent], commit: bool) -> Vec<i64> {
    match db {
        Database::Postgres(p) => {
            let mut tx = p.begin().await.unwrap();
            let seqs = event_store::postgres::append(&mut tx, events)
                .await
                .unwrap();
            end(tx, commit).await;
            seqs
        }
        Database::Sqlite(p) => {
            let mut tx = p.begin().await.unwrap();
            let seqs = event_store::sqlite::append(&mut tx, events).await.unwrap();
            end(tx, commit).await;
            seqs
        }
        Database::Mysql(p) => {
            let mut tx = p.begin().await.unwrap();
            let seqs = event_store::mysql::append(&mut tx, events).await.unwrap();
            end(tx, commit).await;
            seqs
        }
    }
}

async fn end<DB: sqlx::Database>(tx: sqlx::Transaction<'_, DB>, commit: bool) {
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

/// Runs plain SQL, returning the database's error message on failure.
async fn try_exec(db: &Database, sql: &str) -> Result<(), String> {
    let result = match db {
        Database::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
        Database::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
        Database::Mysql(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
    };
    result.map_err(|e| match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        other => other.to_string(),
    })
}

each_db!(
    append_and_read_round_trip_every_field,
    Retention::Delete,
    |env: Env| async move {
        // Bind the whole Env: capturing only env.db would drop the test
        // database at once.
        let env = env;
        let binary = vec![0u8, 159, 146, 150, b'x', 0];
        let sent = vec![
            NewEvent::new("order.cancelled", br#"{"order_id":42}"#.to_vec())
                .with_source("order", "42"),
            NewEvent::new("blob.stored", binary.clone())
                .with_content_type("application/octet-stream"),
            NewEvent::new("text.with.nul", "a\0b").with_source("doc", ""),
            NewEvent::new("unicode", "{\"name\":\"Zoë ✓\"}").with_id(Uuid::now_v7()),
        ];
        let before = Utc::now();
        let seqs = env.db.append_events(&sent).await.unwrap();
        assert_eq!(seqs.len(), sent.len());
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let got = read_all(&env.db).await;
        assert_eq!(got.len(), sent.len());
        for ((e, s), seq) in got.iter().zip(&sent).zip(&seqs) {
            assert_eq!(e.seq, *seq);
            assert_eq!(e.id, s.id);
            assert_eq!(e.event_type, s.event_type);
            assert_eq!(e.source_type, s.source_type);
            assert_eq!(e.source_id, s.source_id);
            assert_eq!(e.content_type, s.content_type);
            assert_eq!(e.payload, s.payload);
            let skew = (e.recorded_at - before).num_seconds();
            assert!((-60..60).contains(&skew), "recorded_at {}", e.recorded_at);
        }
        assert_eq!(env.db.event_head().await.unwrap(), seqs[seqs.len() - 1]);
        assert!(env.db.append_events(&[]).await.unwrap().is_empty());
    }
);

each_db!(
    many_events_in_one_append,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        // More than one INSERT statement's worth on SQLite and MariaDB.
        let sent: Vec<NewEvent> = (0..2500)
            .map(|i| NewEvent::new("bulk", i.to_string()))
            .collect();
        let seqs = append_in_tx(&env.db, &sent, true).await;
        assert_eq!(seqs.len(), 2500);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let got = read_all(&env.db).await;
        assert_eq!(seqs, self::seqs(&got));
        assert_eq!(ids(&got), sent.iter().map(|e| e.id).collect::<Vec<_>>());
        assert_eq!(got[1234].payload, b"1234");
    }
);

each_db!(
    pages_follow_next_offset,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        assert_eq!(env.db.event_head().await.unwrap(), 0);
        let empty = env.db.read_events(&page(0, 10)).await.unwrap();
        assert_eq!(
            empty,
            EventPage {
                events: vec![],
                next_offset: 0
            }
        );
        let sent: Vec<NewEvent> = (0..25).map(|i| NewEvent::new("t", i.to_string())).collect();
        let seqs = env.db.append_events(&sent).await.unwrap();
        let head = seqs[24];
        // Full pages end at their last event; the short last page at the head.
        let p1 = env.db.read_events(&page(0, 10)).await.unwrap();
        assert_eq!(self::seqs(&p1.events), seqs[..10]);
        assert_eq!(p1.next_offset, seqs[9]);
        let p2 = env.db.read_events(&page(p1.next_offset, 10)).await.unwrap();
        assert_eq!(self::seqs(&p2.events), seqs[10..20]);
        assert_eq!(p2.next_offset, seqs[19]);
        let p3 = env.db.read_events(&page(p2.next_offset, 10)).await.unwrap();
        assert_eq!(self::seqs(&p3.events), seqs[20..]);
        assert_eq!(p3.next_offset, head);
        let p4 = env.db.read_events(&page(p3.next_offset, 10)).await.unwrap();
        assert!(p4.events.is_empty());
        assert_eq!(p4.next_offset, head);
        // A page exactly as long as what is left is full: its last event.
        let exact = env.db.read_events(&page(seqs[19], 5)).await.unwrap();
        assert_eq!(exact.next_offset, head);
        assert_eq!(exact.events.len(), 5);
        // Never below the request's offset, even past the head.
        let past = env.db.read_events(&page(head + 100, 10)).await.unwrap();
        assert!(past.events.is_empty());
        assert_eq!(past.next_offset, head + 100);
        // The middle of the log.
        let mid = env.db.read_events(&page(seqs[4], 3)).await.unwrap();
        assert_eq!(self::seqs(&mid.events), seqs[5..8]);
    }
);

each_db!(
    page_limits_are_checked,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        env.db
            .append_events(&[NewEvent::new("t", "1")])
            .await
            .unwrap();
        for limit in [0, MAX_PAGE + 1, u32::MAX] {
            let err = env.db.read_events(&page(0, limit)).await.unwrap_err();
            assert!(
                matches!(err, StoreError::InvalidPageLimit { limit: l, max: MAX_PAGE } if l == limit),
                "{err:?}"
            );
            assert!(err.to_string().contains("out of range"), "{err}");
        }
        let err = env.db.read_events(&page(-1, 10)).await.unwrap_err();
        assert!(matches!(err, StoreError::NegativeOffset(-1)), "{err:?}");
        assert_eq!(
            env.db
                .read_events(&page(0, MAX_PAGE))
                .await
                .unwrap()
                .events
                .len(),
            1
        );
        assert_eq!(
            env.db.read_events(&page(0, 1)).await.unwrap().events.len(),
            1
        );
    }
);

each_db!(
    filters_by_type_and_source,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let sent = vec![
            NewEvent::new("order.placed", "1").with_source("order", "1"),
            NewEvent::new("order.placed", "2").with_source("order", "2"),
            NewEvent::new("order.cancelled", "3").with_source("order", "1"),
            NewEvent::new("user.signed_up", "4").with_source("user", "1"),
            NewEvent::new("order.placed", "5"),
        ];
        env.db.append_events(&sent).await.unwrap();
        let payloads = |q: EventQuery| {
            let db = env.db.clone();
            async move {
                db.read_events(&q)
                    .await
                    .unwrap()
                    .events
                    .into_iter()
                    .map(|e| String::from_utf8(e.payload).unwrap())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            payloads(of_type("order.placed", 0, 10)).await,
            ["1", "2", "5"]
        );
        assert_eq!(
            payloads(EventQuery {
                source_type: Some("order".into()),
                ..page(0, 10)
            })
            .await,
            ["1", "2", "3"]
        );
        assert_eq!(
            payloads(EventQuery {
                source_type: Some("order".into()),
                source_id: Some("1".into()),
                ..page(0, 10)
            })
            .await,
            ["1", "3"]
        );
        assert_eq!(
            payloads(EventQuery {
                source_id: Some("1".into()),
                ..page(0, 10)
            })
            .await,
            ["1", "3", "4"]
        );
        assert_eq!(
            payloads(EventQuery {
                event_type: Some("order.placed".into()),
                source_type: Some("order".into()),
                source_id: Some("2".into()),
                ..page(0, 10)
            })
            .await,
            ["2"]
        );
        // No source: the empty string.
        assert_eq!(
            payloads(EventQuery {
                source_type: Some(String::new()),
                ..page(0, 10)
            })
            .await,
            ["5"]
        );
        assert!(payloads(of_type("nothing", 0, 10)).await.is_empty());
        // Filters compare exactly.
        assert!(payloads(of_type("ORDER.PLACED", 0, 10)).await.is_empty());
        // Paging a filter: a full page ends at its last match.
        let first = env
            .db
            .read_events(&of_type("order.placed", 0, 2))
            .await
            .unwrap();
        assert_eq!(first.events.len(), 2);
        assert_eq!(first.next_offset, first.events[1].seq);
        let rest = env
            .db
            .read_events(&of_type("order.placed", first.next_offset, 2))
            .await
            .unwrap();
        assert_eq!(rest.events.len(), 1);
    }
);

each_db!(
    a_filtered_page_skips_to_the_head,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let mut sent = vec![NewEvent::new("rare", "r1")];
        sent.extend((0..20).map(|i| NewEvent::new("common", i.to_string())));
        let seqs = env.db.append_events(&sent).await.unwrap();
        let head = seqs[20];
        let p = env.db.read_events(&of_type("rare", 0, 10)).await.unwrap();
        assert_eq!(ids(&p.events), [sent[0].id]);
        // Not full: the reader moves to the head, past the 20 it filtered out.
        assert_eq!(p.next_offset, head);
        let none = env
            .db
            .read_events(&of_type("rare", seqs[0], 10))
            .await
            .unwrap();
        assert!(none.events.is_empty());
        assert_eq!(none.next_offset, head);
        // A later match is found from there.
        let later = env
            .db
            .append_events(&[NewEvent::new("rare", "r2")])
            .await
            .unwrap();
        let p = env
            .db
            .read_events(&of_type("rare", head, 10))
            .await
            .unwrap();
        assert_eq!(self::seqs(&p.events), later);
        assert_eq!(p.next_offset, later[0]);
    }
);

each_db!(
    a_rolled_back_append_leaves_nothing,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let lost = NewEvent::new("t", "rolled back");
        let seqs = append_in_tx(&env.db, std::slice::from_ref(&lost), false).await;
        assert_eq!(seqs.len(), 1);
        assert!(read_all(&env.db).await.is_empty());
        assert_eq!(env.db.event_head().await.unwrap(), 0);
        let kept = NewEvent::new("t", "committed");
        let kept_seq = append_in_tx(&env.db, std::slice::from_ref(&kept), true).await;
        env.db
            .append_events(&[NewEvent::new("t", "after")])
            .await
            .unwrap();
        let all = read_all(&env.db).await;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, kept.id);
        assert_eq!(all[0].seq, kept_seq[0]);
        assert!(all.iter().all(|e| e.id != lost.id));
        // Its id is free again: the row never existed.
        env.db
            .append_events(&[lost.clone().with_id(lost.id)])
            .await
            .unwrap();
        assert_eq!(read_all(&env.db).await.len(), 3);
    }
);

each_db!(
    an_existing_event_id_is_refused,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let e = NewEvent::new("t", "1");
        env.db
            .append_events(std::slice::from_ref(&e))
            .await
            .unwrap();
        let again = env.db.append_events(std::slice::from_ref(&e)).await;
        assert!(matches!(again, Err(StoreError::Database(_))), "{again:?}");
        assert_eq!(read_all(&env.db).await.len(), 1);
        let first = read_all(&env.db).await[0].seq;
        // Inside a transaction that goes on after the failed statement
        // (MariaDB, SQLite; PostgreSQL aborts the transaction), the failed
        // statement's number is not used up: no gap.
        let next = match &env.db {
            Database::Mysql(p) => {
                let mut tx = p.begin().await.unwrap();
                assert!(
                    event_store::mysql::append(&mut tx, std::slice::from_ref(&e))
                        .await
                        .is_err()
                );
                let s = event_store::mysql::append(&mut tx, &[NewEvent::new("t", "2")])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                assert_eq!(s[0], first + 1);
                s
            }
            Database::Sqlite(p) => {
                let mut tx = p.begin().await.unwrap();
                assert!(
                    event_store::sqlite::append(&mut tx, std::slice::from_ref(&e))
                        .await
                        .is_err()
                );
                let s = event_store::sqlite::append(&mut tx, &[NewEvent::new("t", "2")])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                assert_eq!(s[0], first + 1);
                s
            }
            Database::Postgres(_) => env
                .db
                .append_events(&[NewEvent::new("t", "2")])
                .await
                .unwrap(),
        };
        assert_eq!(seqs(&read_all(&env.db).await), [first, next[0]]);
    }
);

each_db!(
    updates_and_deletes_are_refused,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let e = NewEvent::new("t", "original").with_source("s", "1");
        env.db
            .append_events(std::slice::from_ref(&e))
            .await
            .unwrap();
        let mut refused = vec![
            "UPDATE ferry_events SET event_type = 'changed'",
            "UPDATE ferry_events SET seq = seq + 100",
            "DELETE FROM ferry_events",
        ];
        if env.db.kind() == DatabaseKind::Postgres {
            refused.push("TRUNCATE ferry_events");
        }
        for sql in refused {
            let err = try_exec(&env.db, sql).await.unwrap_err();
            assert!(err.contains("ferry_events is append-only"), "{sql}: {err}");
        }
        let all = read_all(&env.db).await;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].id, e.id);
        assert_eq!(all[0].event_type, "t");
        assert_eq!(all[0].payload, b"original");
    }
);

/// Runs `sql` with the database's own command-line client (`psql`,
/// `mariadb`, `sqlite3`), as a producer in another language would.
fn cli(env: &Env, sql: &str) -> Output {
    match &env._t {
        FreshDb::Sqlite(t) => Command::new("sqlite3").arg(&t.path).arg(sql).output(),
        FreshDb::Pg(t) => Command::new("psql")
            .args([t.url.as_str(), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output(),
        FreshDb::Mysql(t) => {
            // mysql://user@host:port/db
            let rest = t.url.strip_prefix("mysql://").unwrap();
            let (authority, db) = rest.split_once('/').unwrap();
            let (user, host_port) = authority.split_once('@').unwrap();
            let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
            Command::new("mariadb")
                .args(["-h", host, "-P", port, "-u", user, db, "-e", sql])
                .output()
        }
    }
    .expect("the database's command-line client is installed")
}

each_db!(
    plain_sql_appends_through_the_command_line_clients,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        // The statement from docs/event-store.md.
        let sql = r#"INSERT INTO ferry_events (event_type, source_type, source_id, payload) VALUES ('order.cancelled', 'order', '42', '{"order_id":42}')"#;
        let before = Utc::now();
        let out = cli(&env, sql);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rust = env
            .db
            .append_events(&[NewEvent::new("from.rust", "{}")])
            .await
            .unwrap();
        // Two rows in one statement.
        let out = cli(
            &env,
            "INSERT INTO ferry_events (event_type, payload) VALUES ('a', 'x'), ('b', 'y')",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A seq given by the client is replaced (PostgreSQL, MariaDB) or
        // refused (SQLite, whose triggers cannot replace it): order stays
        // the database's.
        let out = cli(
            &env,
            "INSERT INTO ferry_events (seq, event_type, payload) VALUES (1000, 'forced', 'z')",
        );
        if env.db.kind() == DatabaseKind::Sqlite {
            assert!(!out.status.success());
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("assigned by the database"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let all = read_all(&env.db).await;
        let e = &all[0];
        assert_eq!(e.seq, 1);
        assert_eq!(e.event_type, "order.cancelled");
        assert_eq!(
            (e.source_type.as_str(), e.source_id.as_str()),
            ("order", "42")
        );
        assert_eq!(e.content_type, "application/json");
        assert_eq!(e.payload, br#"{"order_id":42}"#);
        assert_eq!(e.id.get_version_num(), 7, "default id is a UUIDv7");
        assert!((e.recorded_at - before).num_seconds().abs() < 60);
        assert_eq!(all[1].seq, rust[0]);
        assert_eq!(all[2].event_type, "a");
        assert_eq!(all[3].event_type, "b");
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(
            all.iter().map(|e| e.id).collect::<HashSet<_>>().len(),
            all.len()
        );
        if env.db.kind() == DatabaseKind::Sqlite {
            assert_eq!(all.len(), 4);
        } else {
            assert_eq!(all.len(), 5);
            assert_eq!(all[4].event_type, "forced");
            assert!(
                all[4].seq > all[3].seq && all[4].seq < 1000,
                "{}",
                all[4].seq
            );
        }
        assert_eq!(env.db.event_head().await.unwrap(), all[all.len() - 1].seq);
    }
);

each_db!(
    offsets_only_move_forward,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let db = &env.db;
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 0);
        assert_eq!(db.save_offset("forwarder", 5).await.unwrap(), 5);
        assert_eq!(db.save_offset("forwarder", 3).await.unwrap(), 5);
        assert_eq!(db.save_offset("forwarder", 5).await.unwrap(), 5);
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 5);
        assert_eq!(db.save_offset("forwarder", 9).await.unwrap(), 9);
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 9);
        assert_eq!(db.load_offset("other").await.unwrap(), 0);
        assert_eq!(db.save_offset("other", 2).await.unwrap(), 2);
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 9);
        assert!(matches!(
            db.save_offset("forwarder", -1).await,
            Err(StoreError::NegativeOffset(-1))
        ));
        assert_eq!(db.load_offset("forwarder").await.unwrap(), 9);
    }
);

/// Saves `reader`'s offset with the module function inside a transaction
/// that also writes a row of the "handler's" own, then commits or rolls
/// back; returns what the save returned.
async fn save_offset_with_work(db: &Database, reader: &str, offset: i64, commit: bool) -> i64 {
    let work = format!("INSERT INTO handled (offset_seen) VALUES ({offset})");
    match db {
        Database::Postgres(p) => {
            let mut tx = p.begin().await.unwrap();
            sqlx::raw_sql(&work).execute(&mut *tx).await.unwrap();
            let stored = event_store::postgres::save_offset(&mut tx, reader, offset)
                .await
                .unwrap();
            end(tx, commit).await;
            stored
        }
        Database::Sqlite(p) => {
            let mut tx = p.begin().await.unwrap();
            sqlx::raw_sql(&work).execute(&mut *tx).await.unwrap();
            let stored = event_store::sqlite::save_offset(&mut tx, reader, offset)
                .await
                .unwrap();
            end(tx, commit).await;
            stored
        }
        Database::Mysql(p) => {
            let mut tx = p.begin().await.unwrap();
            sqlx::raw_sql(&work).execute(&mut *tx).await.unwrap();
            let stored = event_store::mysql::save_offset(&mut tx, reader, offset)
                .await
                .unwrap();
            end(tx, commit).await;
            stored
        }
    }
}

each_db!(
    an_offset_commits_with_the_handlers_writes,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        env.exec("CREATE TABLE handled (offset_seen BIGINT NOT NULL)")
            .await;
        assert_eq!(save_offset_with_work(&env.db, "h", 4, false).await, 4);
        assert_eq!(env.db.load_offset("h").await.unwrap(), 0);
        assert_eq!(env.scalar("SELECT COUNT(*) FROM handled").await, 0);
        assert_eq!(save_offset_with_work(&env.db, "h", 4, true).await, 4);
        assert_eq!(env.db.load_offset("h").await.unwrap(), 4);
        assert_eq!(env.scalar("SELECT COUNT(*) FROM handled").await, 1);
        // Backwards inside a transaction changes nothing either.
        assert_eq!(save_offset_with_work(&env.db, "h", 2, true).await, 4);
        assert_eq!(env.db.load_offset("h").await.unwrap(), 4);
    }
);

each_db!(
    failures_are_recorded_listed_and_discarded,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let db = &env.db;
        db.append_events(&[NewEvent::new("a", "1"), NewEvent::new("b", "2")])
            .await
            .unwrap();
        let events = read_all(db).await;
        let (e1, e2) = (&events[0], &events[1]);
        assert!(db.event_failures(None).await.unwrap().is_empty());
        let before = Utc::now();
        db.record_event_failure("fwd", e1, 3, "http 500")
            .await
            .unwrap();
        db.record_event_failure("fwd", e2, 1, "timeout")
            .await
            .unwrap();
        db.record_event_failure("audit", e1, 2, "refused")
            .await
            .unwrap();
        let all = db.event_failures(None).await.unwrap();
        assert_eq!(all.len(), 3);
        let sorted = {
            let mut s = all.clone();
            s.sort_by(|a, b| (a.failed_at, &a.reader, a.seq).cmp(&(b.failed_at, &b.reader, b.seq)));
            s
        };
        assert_eq!(all, sorted, "oldest first");
        let fwd = db.event_failures(Some("fwd")).await.unwrap();
        assert_eq!(fwd.len(), 2);
        let f1 = fwd.iter().find(|f| f.seq == e1.seq).unwrap();
        assert_eq!(f1.reader, "fwd");
        assert_eq!(f1.event_id, e1.id);
        assert_eq!(f1.attempts, 3);
        assert_eq!(f1.last_error, "http 500");
        assert!((f1.failed_at - before).num_seconds().abs() < 60);
        // Recording again updates the same row.
        db.record_event_failure("fwd", e1, 5, "http 503")
            .await
            .unwrap();
        let fwd = db.event_failures(Some("fwd")).await.unwrap();
        assert_eq!(fwd.len(), 2);
        let f1 = fwd.iter().find(|f| f.seq == e1.seq).unwrap();
        assert_eq!((f1.attempts, f1.last_error.as_str()), (5, "http 503"));
        assert!(db.event_failures(Some("nobody")).await.unwrap().is_empty());
        // Discarding.
        assert!(db.discard_event_failure("fwd", e1.seq).await.unwrap());
        assert!(!db.discard_event_failure("fwd", e1.seq).await.unwrap());
        assert!(!db.discard_event_failure("fwd", 999).await.unwrap());
        let fwd = db.event_failures(Some("fwd")).await.unwrap();
        assert_eq!(fwd.iter().map(|f| f.seq).collect::<Vec<_>>(), [e2.seq]);
        assert_eq!(db.event_failures(Some("audit")).await.unwrap().len(), 1);
        // The events themselves are untouched.
        assert_eq!(read_all(db).await, events);
    }
);

mod read_horizon {
    //! The read horizon on the servers: writers in transactions of their
    //! own whose appends and commits interleave (some roll back), and
    //! readers following offsets while they write.

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    /// A small xorshift generator: the test needs varied pauses, not
    /// good randomness.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A pause of 0 to `max_us` microseconds (0 a third of the time).
        async fn pause(&mut self, max_us: u64) {
            if self.below(3) > 0 {
                tokio::time::sleep(Duration::from_micros(self.below(max_us))).await;
            }
        }
    }

    /// One writer: begins, pauses, appends 1–3 events (one statement
    /// each, with pauses between), pauses, then commits or (one time in
    /// four) rolls back. Returns the events and whether they committed.
    async fn write(db: Database, mut rng: Rng, tag: String) -> (Vec<NewEvent>, bool) {
        let n = 1 + rng.below(3) as usize;
        let events: Vec<NewEvent> = (0..n)
            .map(|i| {
                // Half the events are of type "a", for the filtered reader.
                let kind = if rng.below(2) == 0 { "a" } else { "b" };
                NewEvent::new(kind, format!("{tag}-{i}")).with_source("writer", tag.clone())
            })
            .collect();
        let commit = rng.below(4) > 0;
        macro_rules! run {
            ($pool:expr, $append:path) => {{
                let mut tx = $pool.begin().await.unwrap();
                rng.pause(2000).await;
                for e in &events {
                    $append(&mut tx, std::slice::from_ref(e)).await.unwrap();
                    rng.pause(1000).await;
                }
                rng.pause(3000).await;
                end(tx, commit).await;
            }};
        }
        match &db {
            Database::Postgres(p) => run!(p, event_store::postgres::append),
            Database::Mysql(p) => run!(p, event_store::mysql::append),
            Database::Sqlite(p) => run!(p, event_store::sqlite::append),
        }
        (events, commit)
    }

    /// Follows the log from `offset` with pages of 1 to 4 events (filtered
    /// by `event_type` if given) until `done` was set before a read that
    /// came back short; returns what it saw and its offset. Checks as it
    /// goes that sequence numbers only increase.
    async fn follow(
        db: Database,
        event_type: Option<String>,
        mut offset: i64,
        done: Arc<AtomicBool>,
        mut rng: Rng,
    ) -> (Vec<StoredEvent>, i64) {
        let mut seen: Vec<StoredEvent> = Vec::new();
        let mut last_seq = offset;
        loop {
            // Read the flag before the page: if every writer had ended
            // before this read began, a short page means the reader is
            // at the head with everything committed.
            let finished = done.load(Ordering::SeqCst);
            let limit = 1 + rng.below(4) as u32;
            let q = EventQuery {
                offset,
                limit,
                event_type: event_type.clone(),
                ..EventQuery::default()
            };
            let p = db.read_events(&q).await.unwrap();
            for e in &p.events {
                assert!(
                    e.seq > last_seq,
                    "seq {} after {last_seq}: the reader went backwards",
                    e.seq
                );
                last_seq = e.seq;
            }
            assert!(p.next_offset >= offset);
            assert!(p.next_offset >= last_seq);
            let short = p.events.len() < limit as usize;
            seen.extend(p.events);
            offset = p.next_offset;
            if finished && short {
                return (seen, offset);
            }
            if short {
                tokio::time::sleep(Duration::from_micros(200 + rng.below(800))).await;
            }
        }
    }

    /// Rounds of `writers` concurrent writers with two readers following
    /// (all events, and type "a" only); at the end each reader has seen
    /// every committed event of its kind exactly once, in increasing
    /// order, no rolled-back event, and nothing the final full read shows
    /// that it missed.
    ///
    /// Without the append lock this fails. Checked by hand on 2026-12-03
    /// with 30 rounds of 8 writers: with the PostgreSQL trigger function
    /// replaced by one that only takes `nextval` (no advisory lock), the
    /// reader missed 125 of about 350 committed events; with the MariaDB
    /// trigger replaced by one that takes `NEXTVAL` of a `SEQUENCE` (no
    /// counter row), it missed 72. Each was a lower number that committed
    /// after the reader had moved past it.
    async fn writers_and_readers(env: Env, rounds: usize, writers: usize) {
        let seed = Utc::now().timestamp_micros() as u64 | 1;
        let mut rng = Rng(seed);
        let started = Instant::now();
        let (mut all_offset, mut a_offset) = (0, 0);
        let (mut seen_all, mut seen_a) = (Vec::new(), Vec::new());
        let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let done = Arc::new(AtomicBool::new(false));
            let reader_all = tokio::spawn(follow(
                env.db.clone(),
                None,
                all_offset,
                done.clone(),
                Rng(rng.next() | 1),
            ));
            let reader_a = tokio::spawn(follow(
                env.db.clone(),
                Some("a".to_owned()),
                a_offset,
                done.clone(),
                Rng(rng.next() | 1),
            ));
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    tokio::spawn(write(
                        env.db.clone(),
                        Rng(rng.next() | 1),
                        format!("r{round}w{w}"),
                    ))
                })
                .collect();
            for t in tasks {
                let (events, commit) = t.await.unwrap();
                if commit {
                    committed.extend(events);
                } else {
                    rolled_back.extend(events);
                }
            }
            done.store(true, Ordering::SeqCst);
            let (events, offset) = reader_all.await.unwrap();
            seen_all.extend(events);
            all_offset = offset;
            let (events, offset) = reader_a.await.unwrap();
            seen_a.extend(events);
            a_offset = offset;
        }
        let context = format!("seed {seed}, {rounds} rounds of {writers} writers");
        let committed_ids: HashSet<Uuid> = committed.iter().map(|e| e.id).collect();
        let committed_a: HashSet<Uuid> = committed
            .iter()
            .filter(|e| e.event_type == "a")
            .map(|e| e.id)
            .collect();
        let rolled_back_ids: HashSet<Uuid> = rolled_back.iter().map(|e| e.id).collect();
        assert!(
            !committed.is_empty() && !rolled_back.is_empty(),
            "{context}"
        );
        for (name, seen, expected) in [
            ("all", &seen_all, &committed_ids),
            ("type a", &seen_a, &committed_a),
        ] {
            let seen_ids: Vec<Uuid> = ids(seen);
            let unique: HashSet<Uuid> = seen_ids.iter().copied().collect();
            assert_eq!(
                unique.len(),
                seen_ids.len(),
                "{name}: an event seen twice; {context}"
            );
            assert!(
                seen_ids.iter().all(|id| !rolled_back_ids.contains(id)),
                "{name}: a rolled-back event was seen; {context}"
            );
            let missed = expected.difference(&unique).count();
            assert_eq!(
                missed, 0,
                "{name}: missed {missed} committed events; {context}"
            );
            assert_eq!(&unique, expected, "{name}: {context}");
            assert!(
                seen.windows(2).all(|w| w[0].seq < w[1].seq),
                "{name}: {context}"
            );
        }
        // The final full read shows exactly what the follower saw.
        let full = read_all(&env.db).await;
        assert_eq!(seqs(&full), seqs(&seen_all), "{context}");
        assert_eq!(ids(&full), ids(&seen_all), "{context}");
        eprintln!(
            "{context}: {} committed, {} rolled back, {:?}",
            committed.len(),
            rolled_back.len(),
            started.elapsed()
        );
    }

    fn options() -> ConnectOptions {
        ConnectOptions {
            max_connections: 16,
            lease: Some(Duration::from_secs(30)),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_readers_never_skip_a_late_commit() {
        let env = pg_env_with(Retention::Delete, options()).await;
        writers_and_readers(env, 80, 8).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mysql_readers_never_skip_a_late_commit() {
        let env = mysql_env_with(Retention::Delete, options()).await;
        writers_and_readers(env, 80, 8).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_readers_never_skip_a_late_commit() {
        let env = sqlite_env(Retention::Delete).await;
        writers_and_readers(env, 5, 4).await;
    }
}

mod waits {
    //! An append waits while another transaction that appended is open:
    //! the lock behind the read horizon, observed directly.

    use super::*;

    /// Polls `check` every `every` until it is true (bounded: 10 s).
    async fn wait_until<F, Fut>(what: &str, every: Duration, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(every).await;
        }
    }

    /// Appends "first" in a transaction left open and "second" on another
    /// session (`$session` reads its id, of type `$id`), waits until
    /// `$waiting` (bound to that id, polled every `$every`) shows the
    /// second one waiting, checks that nothing is readable until the first
    /// commits, then both in order, `$check` holding of their positions.
    macro_rules! second_appender_waits {
        (
            $env:expr, $variant:ident, $module:ident,
            session: $session:literal as $id:ty,
            waits: $what:literal every $every:expr, $waiting:literal,
            |$low:ident, $high:ident| $check:block
        ) => {{
            let env = $env;
            let Database::$variant(p) = &env.db else {
                unreachable!()
            };
            let mut first = p.begin().await.unwrap();
            let $low = event_store::$module::append(&mut first, &[NewEvent::new("t", "first")])
                .await
                .unwrap();
            let mut conn = p.acquire().await.unwrap();
            let id: $id = sqlx::query_scalar($session)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let second = tokio::spawn(async move {
                let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
                let s = event_store::$module::append(&mut tx, &[NewEvent::new("t", "second")])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                s
            });
            wait_until($what, $every, || async {
                let waiting: i64 = sqlx::query_scalar($waiting)
                    .bind(id)
                    .fetch_one(p)
                    .await
                    .unwrap();
                waiting > 0
            })
            .await;
            assert!(!second.is_finished());
            assert!(read_all(&env.db).await.is_empty());
            first.commit().await.unwrap();
            let $high = second.await.unwrap();
            $check
            assert_eq!(seqs(&read_all(&env.db).await), [$low[0], $high[0]]);
        }};
    }

    #[tokio::test]
    async fn postgres_a_second_appender_waits_for_the_first_to_end() {
        second_appender_waits!(
            pg_env(Retention::Delete).await, Postgres, postgres,
            session: "SELECT pg_backend_pid()" as i32,
            waits: "the second append waits on the advisory lock" every Duration::from_millis(10),
            "SELECT COUNT(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted",
            |low, high| {
                assert!(high[0] > low[0]);
            }
        );
    }

    #[tokio::test]
    async fn mysql_a_second_appender_waits_for_the_first_to_end() {
        // InnoDB refreshes its INFORMATION_SCHEMA lock tables only when
        // they have not been read for 100 ms: polling faster would read
        // the same stale copy for ever.
        second_appender_waits!(
            mysql_env(Retention::Delete).await, Mysql, mysql,
            session: "SELECT CONNECTION_ID()" as u64,
            waits: "the second append waits on the counter row" every Duration::from_millis(250),
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX
             WHERE trx_mysql_thread_id = ? AND trx_state = 'LOCK WAIT'",
            |low, high| {
                assert_eq!(high[0], low[0] + 1, "no gaps on MariaDB");
            }
        );
    }

    async fn next(listener: &mut sqlx::postgres::PgListener) -> sqlx::postgres::PgNotification {
        tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("a notification within 10 s")
            .unwrap()
    }

    /// The insert trigger signals `event_store::postgres::CHANNEL` when an
    /// append commits, and never for one that rolls back.
    #[tokio::test]
    async fn postgres_notifies_committed_appends_only() {
        let env = pg_env(Retention::Delete).await;
        let Database::Postgres(p) = &env.db else {
            unreachable!()
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(p).await.unwrap();
        listener
            .listen(event_store::postgres::CHANNEL)
            .await
            .unwrap();
        append_in_tx(&env.db, &[NewEvent::new("t", "lost")], false).await;
        // Notifications arrive in commit order: if the rollback had sent
        // one, it would come before this marker.
        sqlx::query("SELECT pg_notify($1, 'marker')")
            .bind(event_store::postgres::CHANNEL)
            .execute(p)
            .await
            .unwrap();
        assert_eq!(next(&mut listener).await.payload(), "marker");
        env.db
            .append_events(&[NewEvent::new("t", "1"), NewEvent::new("t", "2")])
            .await
            .unwrap();
        let n = next(&mut listener).await;
        assert_eq!(n.channel(), event_store::postgres::CHANNEL);
        assert_eq!(n.payload(), "");
    }
}

/// MariaDB's insert trigger passes the number through `LAST_INSERT_ID(expr)`;
/// the application's own `LAST_INSERT_ID()` must come out unchanged.
#[tokio::test]
async fn mysql_appends_leave_the_sessions_last_insert_id_alone() {
    let env = mysql_env(Retention::Delete).await;
    let Database::Mysql(p) = &env.db else {
        unreachable!()
    };
    env.exec(
        "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, x INT) AUTO_INCREMENT = 500",
    )
    .await;
    let mut tx = p.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (x) VALUES (0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    event_store::mysql::append(&mut tx, &[NewEvent::new("t", "1"), NewEvent::new("t", "2")])
        .await
        .unwrap();
    let id: u64 = sqlx::query_scalar("SELECT LAST_INSERT_ID()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(id, 500);
}

each_db!(
    an_events_trace_context_reads_back_as_appended,
    Retention::Delete,
    |env: Env| async move {
        let env = env;
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sent = vec![
            NewEvent::new("traced", "{}")
                .with_trace_context(
                    parent,
                    Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
                )
                .unwrap(),
            NewEvent::new("traced.no.state", "{}")
                .with_trace_context(parent, None)
                .unwrap(),
            NewEvent::new("untraced", "{}").without_trace(),
        ];
        // Both the store's own transaction and the module function write it.
        env.db.append_events(&sent[..1]).await.unwrap();
        append_in_tx(&env.db, &sent[1..], true).await;
        let got = read_all(&env.db).await;
        assert_eq!(got.len(), 3);
        for (e, s) in got.iter().zip(&sent) {
            assert_eq!(e.event_type, s.event_type);
            assert_eq!(e.traceparent, s.traceparent, "{}", e.event_type);
            assert_eq!(e.tracestate, s.tracestate, "{}", e.event_type);
        }
        assert_eq!(got[0].traceparent.as_deref(), Some(parent));
        assert_eq!(
            got[0].tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(got[1].tracestate, None);
        assert_eq!(
            (got[2].traceparent.as_ref(), got[2].tracestate.as_ref()),
            (None, None)
        );
    }
);

#[test]
fn an_invalid_traceparent_is_refused_naming_the_parameter() {
    for bad in [
        "",
        "00-xyz",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ] {
        let err = NewEvent::new("t", "{}")
            .with_trace_context(bad, None)
            .unwrap_err();
        assert!(err.to_string().contains("traceparent"), "{err}");
    }
}
