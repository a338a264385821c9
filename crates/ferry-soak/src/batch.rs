//! The batch path: a producer inserts rows into `soak_batch_rows` on the
//! private PostgreSQL (database `soak_batch`), a few at a time, some
//! transactions rolled back on purpose; an `[[export]]` job (process
//! `batch-export`) exports the rows past its watermark every second to a
//! folder of the run directory, and an `[[import]]` job (process
//! `batch-import`) loads each batch into `soak_effects` with its ledger row
//! and archives it. Each row carries its message id, key and position, so
//! an imported row is an effect like any other.
//!
//! The watermark is the row's `seq` (a sequence). One producer writes one
//! transaction at a time, so a committed row never has a smaller `seq` than
//! a row the export has already passed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

use crate::produce::Produced;

/// The path's name.
pub const PATH: &str = "batch";

/// The export and import jobs' name.
pub const JOB: &str = "soak";

/// The exported table.
pub const SCHEMA: &str = "CREATE TABLE soak_batch_rows (seq BIGSERIAL PRIMARY KEY,
    message_id UUID NOT NULL UNIQUE, msg_key TEXT NOT NULL, n BIGINT NOT NULL)";

/// The export job's query: rows past the watermark `:last`, in the columns
/// of `soak_effects` (`batch_seq` is the watermark).
pub const QUERY: &str = "SELECT 'batch' AS path, message_id, msg_key, n, seq AS batch_seq FROM soak_batch_rows WHERE seq > :last";

/// The `batch-export` process's configuration.
pub fn export_config(database: &str, folder: &Path, work: &Path) -> String {
    format!(
        r#"[[export]]
name = "{JOB}"
database = "{database}"
query = "{QUERY}"
watermark = {{ column = "batch_seq", initial = 0 }}
every = "1s"
work_dir = "{work}"
[export.destination]
url = "{folder}"
[export.retry]
max_attempts = 5
initial_backoff = "100ms"
max_backoff = "1s"
"#,
        work = work.display(),
        folder = folder.display()
    )
}

/// The `batch-import` process's configuration.
pub fn import_config(effects: &str, folder: &Path) -> String {
    format!(
        r#"[[import]]
name = "{JOB}"
source = {{ url = "{folder}" }}
poll_interval = "1s"
[import.target.database]
url = "{effects}"
table = "soak_effects"
"#,
        folder = folder.display()
    )
}

/// What is left in the hand-off folder: manifests not archived (waiting
/// or never taken) and batches refused into `error/`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Manifests outside `archive/` and `error/`.
    pub waiting: u64,
    /// Manifests (batches) in `error/`.
    pub refused: u64,
    /// Manifests in `archive/`.
    pub archived: u64,
}

/// Counts the manifests in `folder`.
pub fn left(folder: &Path) -> std::io::Result<Left> {
    let count = |dir: &Path| -> std::io::Result<u64> {
        match std::fs::read_dir(dir) {
            Ok(entries) => Ok(entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest.json"))
                .count() as u64),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    };
    Ok(Left {
        waiting: count(folder)?,
        refused: count(&folder.join("error"))?,
        archived: count(&folder.join("archive"))?,
    })
}

/// The batches of the export's successful runs (from its run history,
/// `ferry_batch_runs`) whose manifest is not in `archive/`: each is named.
pub async fn not_archived(pool: &PgPool, folder: &Path) -> anyhow::Result<Vec<String>> {
    let starts: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT window_start FROM ferry_batch_runs WHERE job = $1 AND status = 'succeeded'",
    )
    .bind(JOB)
    .fetch_all(pool)
    .await?;
    Ok(missing_manifests(&starts, &folder.join("archive")))
}

/// The batch names (`{JOB}-{window start}`, the default) of `starts`
/// whose manifest is not in `archive`.
fn missing_manifests(starts: &[String], archive: &Path) -> Vec<String> {
    starts
        .iter()
        .map(|s| format!("{JOB}-{s}"))
        .filter(|b| !archive.join(format!("{b}.manifest.json")).exists())
        .collect()
}

/// Inserts `messages` rows over `duration`, 1–4 per transaction, 3 % of
/// transactions rolled back, counting into `out`.
pub async fn produce(
    pool: PgPool,
    messages: u64,
    duration: Duration,
    seed: u64,
    out: Arc<Mutex<Produced>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let rate = messages as f64 / duration.as_secs_f64().max(1.0);
    let started = Instant::now();
    let mut next_n: HashMap<String, i64> = HashMap::new();
    let mut written = 0u64;
    while written < messages {
        let due = Duration::from_secs_f64(written as f64 / rate);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let size = rng.gen_range(1..=4u64).min(messages - written);
        written += size;
        let rows: Vec<(Uuid, String, i64)> = (0..size)
            .map(|_| {
                let key = format!("bt-k{}", rng.gen_range(0..8));
                let n = next_n.entry(key.clone()).or_default();
                *n += 1;
                (Uuid::now_v7(), key, *n)
            })
            .collect();
        let roll_back = rng.gen_bool(0.03);
        let result = transaction(&pool, &rows, roll_back).await;
        let failed = result.is_err();
        {
            let mut o = out.lock().unwrap();
            o.ended_now(rows.iter().map(|r| r.0));
            match (failed, roll_back) {
                (false, false) => {
                    o.committed_tx += 1;
                    o.committed_messages += size;
                }
                (false, true) => {
                    o.rolled_back_tx += 1;
                    o.not_committed.extend(rows.iter().map(|r| r.0));
                }
                (true, _) => {
                    o.failed_tx += 1;
                    o.not_committed.extend(rows.iter().map(|r| r.0));
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn transaction(
    pool: &PgPool,
    rows: &[(Uuid, String, i64)],
    roll_back: bool,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (id, key, n) in rows {
        sqlx::query("INSERT INTO soak_batch_rows (message_id, msg_key, n) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(key)
            .bind(n)
            .execute(&mut *tx)
            .await?;
    }
    if roll_back {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_counts_manifests_by_place() {
        let dir = std::env::temp_dir().join(format!("soak-batch-left-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(left(&dir).unwrap(), Left::default());
        std::fs::create_dir_all(dir.join("archive/soak-5")).unwrap();
        std::fs::create_dir_all(dir.join("error")).unwrap();
        for f in [
            "soak-9.manifest.json",
            "soak-9-001.csv",
            "archive/soak-5.manifest.json",
            "archive/soak-6.manifest.json",
            "archive/soak-5/soak-5-001.csv",
            "error/soak-7.manifest.json",
            "error/soak-7.reason.txt",
        ] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let l = left(&dir).unwrap();
        let starts = ["5".to_owned(), "6".to_owned(), "7".to_owned()];
        let missing = missing_manifests(&starts, &dir.join("archive"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(missing, ["soak-7"]);
        assert_eq!(
            l,
            Left {
                waiting: 1,
                refused: 1,
                archived: 2
            }
        );
    }
}
