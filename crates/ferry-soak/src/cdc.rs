//! The CDC paths: a producer that inserts, updates and deletes rows of
//! `soak_cdc_rows` and logs each change it makes in `soak_cdc_log` in the
//! same transaction (a table the capture leaves out). Some transactions
//! roll back on purpose. Path `cdc`: on the private PostgreSQL (database
//! `soak_cdc`, captured by a `[[cdc]]` in log mode: a logical replication
//! slot). Path `binlog`: on the shared MariaDB (a database of the run's
//! own, reached through the soak's proxy), captured from the binary log by
//! a `ferry cdc` process. Path `triggers`: on a SQLite file, captured by
//! a `[[cdc]]` in trigger mode (in the same `cdc` process as the first).
//!
//! Every change carries its own id, so the checker can match what the
//! webhook received with what committed: an insert or update writes a
//! fresh `tag` (a UUIDv7) and its position in the row, `v` (1, 2, 3, …);
//! a delete is identified by the deleted row's last tag with its lowest
//! bit flipped, at position `v + 1` (the table has `REPLICA IDENTITY FULL`
//! on PostgreSQL, and MariaDB's binlog has the full row image, so a
//! delete's `before` is the whole old row). Row ids come from a sequence
//! (an `AUTO_INCREMENT`) and are never reused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{MySqlPool, PgPool, Row, SqlitePool};
use uuid::Uuid;

use crate::produce::Produced;

/// The PostgreSQL path's name (and the capture's).
pub const PATH: &str = "cdc";

/// The MariaDB binlog path's name.
pub const BINLOG_PATH: &str = "binlog";

/// The `ferry cdc` capture's name on MariaDB (its saved position's key in
/// `ferry_cdc_offsets`, and what its replica `server_id` derives from).
pub const BINLOG_CAPTURE: &str = "soak_binlog";

/// The SQLite trigger-mode path's name.
pub const TRIGGERS_PATH: &str = "triggers";

/// The trigger-mode capture's name (its triggers' and change rows').
pub const TRIGGERS_CAPTURE: &str = "soak_triggers";

/// The same tables on SQLite, one statement each.
pub const SQLITE_SCHEMA: [&str; 2] = [
    "CREATE TABLE soak_cdc_rows (id INTEGER PRIMARY KEY AUTOINCREMENT, v INTEGER NOT NULL, tag TEXT NOT NULL)",
    "CREATE TABLE soak_cdc_log (change_id TEXT PRIMARY KEY, row_id INTEGER NOT NULL, seq INTEGER NOT NULL)",
];

/// The same tables on MariaDB, one statement each.
pub const MARIADB_SCHEMA: [&str; 2] = [
    "CREATE TABLE soak_cdc_rows (id BIGINT AUTO_INCREMENT PRIMARY KEY, v BIGINT NOT NULL, tag CHAR(36) NOT NULL)",
    "CREATE TABLE soak_cdc_log (change_id CHAR(36) PRIMARY KEY, row_id BIGINT NOT NULL, seq BIGINT NOT NULL)",
];

/// The database whose rows a producer changes.
#[derive(Clone)]
pub enum Captured {
    /// PostgreSQL (the logical slot's).
    Postgres(PgPool),
    /// MariaDB (the binlog's).
    Mariadb(MySqlPool),
    /// SQLite (the triggers').
    Sqlite(SqlitePool),
}

/// The captured table and the producer's log.
pub const SCHEMA: &str = "CREATE TABLE soak_cdc_rows (id BIGSERIAL PRIMARY KEY, v BIGINT NOT NULL, tag UUID NOT NULL);
ALTER TABLE soak_cdc_rows REPLICA IDENTITY FULL;
CREATE TABLE soak_cdc_log (change_id UUID PRIMARY KEY, row_id BIGINT NOT NULL, seq BIGINT NOT NULL)";

/// The id of the delete of a row whose last tag was `tag`.
pub fn delete_id(tag: Uuid) -> Uuid {
    Uuid::from_u128(tag.as_u128() ^ 1)
}

/// One change as the producer logged it, or as the receiver read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The change's id (see the module docs).
    pub id: Uuid,
    /// The row's id.
    pub row: i64,
    /// Its position in the row.
    pub seq: i64,
}

/// Reads a change event (`format = "ferry"`) of `soak_cdc_rows`.
pub fn parse_event(v: &serde_json::Value) -> Option<Change> {
    let op = v.get("op")?.as_str()?;
    let (row, delete) = match op {
        "c" | "u" | "r" => (v.get("after")?, false),
        "d" => (v.get("before")?, true),
        _ => return None,
    };
    let id = row.get("id")?.as_i64()?;
    let at = row.get("v")?.as_i64()?;
    let tag: Uuid = row.get("tag")?.as_str()?.parse().ok()?;
    Some(if delete {
        Change {
            id: delete_id(tag),
            row: id,
            seq: at + 1,
        }
    } else {
        Change {
            id: tag,
            row: id,
            seq: at,
        }
    })
}

/// Changes `messages` rows of `db`'s `soak_cdc_rows` over the run, at a
/// steady pace, counting into `out` (its `not_committed` gets the change
/// ids of rolled-back and failed transactions).
pub async fn produce(
    db: Captured,
    messages: u64,
    duration: Duration,
    seed: u64,
    out: Arc<Mutex<Produced>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let rate = messages as f64 / duration.as_secs_f64().max(1.0);
    let started = Instant::now();
    let mut live: Vec<i64> = Vec::new();
    let mut written = 0u64;
    while written < messages {
        let due = Duration::from_secs_f64(written as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let size = rng.gen_range(1..=3u64).min(messages - written);
        written += size;
        let roll_back = rng.gen_bool(0.03);
        let ops: Vec<(u8, Option<i64>)> = (0..size)
            .map(|_| {
                let roll = rng.gen_range(0..100);
                if live.len() < 20 || roll < 40 {
                    (b'c', None)
                } else if roll < 85 {
                    (b'u', Some(live[rng.gen_range(0..live.len())]))
                } else {
                    (b'd', Some(live[rng.gen_range(0..live.len())]))
                }
            })
            .collect();
        let mut made = Vec::new();
        let result = match &db {
            Captured::Postgres(pool) => transaction(pool, &ops, roll_back, &mut made).await,
            Captured::Mariadb(pool) => mariadb_transaction(pool, &ops, roll_back, &mut made).await,
            Captured::Sqlite(pool) => sqlite_transaction(pool, &ops, roll_back, &mut made).await,
        };
        let failed = result.is_err();
        {
            let mut o = out.lock().unwrap();
            o.ended_now(made.iter().map(|(_, c)| c.id));
            match (result, roll_back) {
                (Ok(()), false) => {
                    o.committed_tx += 1;
                    o.committed_messages += made.len() as u64;
                    for (op, c) in &made {
                        match op {
                            b'c' => live.push(c.row),
                            b'd' => live.retain(|r| *r != c.row),
                            _ => {}
                        }
                    }
                }
                (Ok(()), true) => {
                    o.rolled_back_tx += 1;
                    o.not_committed.extend(made.iter().map(|(_, c)| c.id));
                }
                (Err(_), _) => {
                    o.failed_tx += 1;
                    o.not_committed.extend(made.iter().map(|(_, c)| c.id));
                }
            }
        }
        if failed {
            // The database is down: try again shortly.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn transaction(
    pool: &PgPool,
    ops: &[(u8, Option<i64>)],
    roll_back: bool,
    made: &mut Vec<(u8, Change)>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (op, row) in ops {
        let tag = Uuid::now_v7();
        let change = match (op, row) {
            (b'c', _) => {
                let id: i64 =
                    sqlx::query("INSERT INTO soak_cdc_rows (v, tag) VALUES (1, $1) RETURNING id")
                        .bind(tag)
                        .fetch_one(&mut *tx)
                        .await?
                        .get(0);
                Change {
                    id: tag,
                    row: id,
                    seq: 1,
                }
            }
            (b'u', Some(row)) => {
                let Some(r) = sqlx::query(
                    "UPDATE soak_cdc_rows SET v = v + 1, tag = $2 WHERE id = $1 RETURNING v",
                )
                .bind(row)
                .bind(tag)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    continue; // deleted meanwhile (a change of this transaction)
                };
                Change {
                    id: tag,
                    row: *row,
                    seq: r.get(0),
                }
            }
            (_, Some(row)) => {
                let Some(r) =
                    sqlx::query("DELETE FROM soak_cdc_rows WHERE id = $1 RETURNING v, tag")
                        .bind(row)
                        .fetch_optional(&mut *tx)
                        .await?
                else {
                    continue;
                };
                Change {
                    id: delete_id(r.get(1)),
                    row: *row,
                    seq: r.get::<i64, _>(0) + 1,
                }
            }
            _ => continue,
        };
        sqlx::query("INSERT INTO soak_cdc_log (change_id, row_id, seq) VALUES ($1, $2, $3)")
            .bind(change.id)
            .bind(change.row)
            .bind(change.seq)
            .execute(&mut *tx)
            .await?;
        made.push((*op, change));
    }
    if roll_back {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

async fn mariadb_transaction(
    pool: &MySqlPool,
    ops: &[(u8, Option<i64>)],
    roll_back: bool,
    made: &mut Vec<(u8, Change)>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (op, row) in ops {
        let tag = Uuid::now_v7();
        let change = match (op, row) {
            (b'c', _) => {
                let id = sqlx::query("INSERT INTO soak_cdc_rows (v, tag) VALUES (1, ?)")
                    .bind(tag.to_string())
                    .execute(&mut *tx)
                    .await?
                    .last_insert_id();
                Change {
                    id: tag,
                    row: i64::try_from(id)?,
                    seq: 1,
                }
            }
            (b'u' | b'd', Some(row)) => {
                // MariaDB has no UPDATE … RETURNING: read the row locked.
                let Some(r) =
                    sqlx::query("SELECT v, tag FROM soak_cdc_rows WHERE id = ? FOR UPDATE")
                        .bind(row)
                        .fetch_optional(&mut *tx)
                        .await?
                else {
                    continue; // deleted meanwhile (a change of this transaction)
                };
                let v: i64 = r.get(0);
                if *op == b'u' {
                    sqlx::query("UPDATE soak_cdc_rows SET v = v + 1, tag = ? WHERE id = ?")
                        .bind(tag.to_string())
                        .bind(row)
                        .execute(&mut *tx)
                        .await?;
                    Change {
                        id: tag,
                        row: *row,
                        seq: v + 1,
                    }
                } else {
                    sqlx::query("DELETE FROM soak_cdc_rows WHERE id = ?")
                        .bind(row)
                        .execute(&mut *tx)
                        .await?;
                    Change {
                        id: delete_id(r.get::<String, _>(1).parse()?),
                        row: *row,
                        seq: v + 1,
                    }
                }
            }
            _ => continue,
        };
        sqlx::query("INSERT INTO soak_cdc_log (change_id, row_id, seq) VALUES (?, ?, ?)")
            .bind(change.id.to_string())
            .bind(change.row)
            .bind(change.seq)
            .execute(&mut *tx)
            .await?;
        made.push((*op, change));
    }
    if roll_back {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

async fn sqlite_transaction(
    pool: &SqlitePool,
    ops: &[(u8, Option<i64>)],
    roll_back: bool,
    made: &mut Vec<(u8, Change)>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (op, row) in ops {
        let tag = Uuid::now_v7();
        let change = match (op, row) {
            (b'c', _) => {
                let id: i64 =
                    sqlx::query("INSERT INTO soak_cdc_rows (v, tag) VALUES (1, ?) RETURNING id")
                        .bind(tag.to_string())
                        .fetch_one(&mut *tx)
                        .await?
                        .get(0);
                Change {
                    id: tag,
                    row: id,
                    seq: 1,
                }
            }
            (b'u', Some(row)) => {
                let Some(r) = sqlx::query(
                    "UPDATE soak_cdc_rows SET v = v + 1, tag = ? WHERE id = ? RETURNING v",
                )
                .bind(tag.to_string())
                .bind(row)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    continue;
                };
                Change {
                    id: tag,
                    row: *row,
                    seq: r.get(0),
                }
            }
            (_, Some(row)) => {
                let Some(r) =
                    sqlx::query("DELETE FROM soak_cdc_rows WHERE id = ? RETURNING v, tag")
                        .bind(row)
                        .fetch_optional(&mut *tx)
                        .await?
                else {
                    continue;
                };
                Change {
                    id: delete_id(r.get::<String, _>(1).parse()?),
                    row: *row,
                    seq: r.get::<i64, _>(0) + 1,
                }
            }
            _ => continue,
        };
        sqlx::query("INSERT INTO soak_cdc_log (change_id, row_id, seq) VALUES (?, ?, ?)")
            .bind(change.id.to_string())
            .bind(change.row)
            .bind(change.seq)
            .execute(&mut *tx)
            .await?;
        made.push((*op, change));
    }
    if roll_back {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

/// Inserts the row a MariaDB capture's initial snapshot reads (as an `r`
/// change at position 1, logged like any other): once it is delivered the
/// capture has saved a position, and a restart resumes from there instead
/// of snapshotting again.
pub async fn mariadb_seed_row(pool: &MySqlPool) -> anyhow::Result<()> {
    let mut made = Vec::new();
    mariadb_transaction(pool, &[(b'c', None)], false, &mut made).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_events_name_their_change() {
        let tag = Uuid::now_v7();
        let c = serde_json::json!({"op": "u", "after": {"id": 7, "v": 3, "tag": tag.to_string()}});
        assert_eq!(
            parse_event(&c),
            Some(Change {
                id: tag,
                row: 7,
                seq: 3
            })
        );
        let d = serde_json::json!({"op": "d", "before": {"id": 7, "v": 3, "tag": tag.to_string()}});
        let parsed = parse_event(&d).unwrap();
        assert_eq!((parsed.row, parsed.seq), (7, 4));
        assert_ne!(parsed.id, tag);
        assert_eq!(parsed.id, delete_id(tag));
        assert_eq!(parse_event(&serde_json::json!({"op": "t"})), None);
    }
}
