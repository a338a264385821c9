//! Bulk replay and discard of everything matching a filter.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use ferry_store::DatabaseKind;

use crate::support::{env_on, env_with, wait_for, Env, CONSUMER, FORWARDER};

/// Waits for the job to finish and returns it.
async fn finished(env: &Env, job: &Value, limit: Duration) -> Value {
    let path = format!("/v1/admin/jobs/{}", job["id"].as_str().unwrap());
    let start = Instant::now();
    loop {
        let job = env.get(&path).await;
        if !job["finished_at"].is_null() {
            return job;
        }
        assert!(start.elapsed() < limit, "the job did not finish: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_bulk_replay_of_10000_outbox_dead_letters_goes_one_chunk_at_a_time() {
    let started = Instant::now();
    let env = env_with(|c| {
        c.chunk = 500;
        c.chunk_drain_timeout = Duration::from_secs(20);
    })
    .await;
    let dead = env.dead_outbox("orders", 10_000).await;
    let refused = env.receiver.requests();
    assert_eq!(refused, 10_000, "each refused once, permanently");
    assert!(env.receiver.applied().is_empty());
    let relay = env.start_relay().await;

    // Watch the outbox's pending count the whole time.
    let max_pending = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (db, max_pending, stop) = (env.db.clone(), max_pending.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let pending = db.outbox_stats().await.unwrap().pending;
                max_pending.fetch_max(pending, Ordering::SeqCst);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples
        })
    };

    let filter = json!({"kinds": ["outbox"], "name": "orders"});
    let count = env
        .get("/v1/admin/dead/count?kind=outbox&name=orders")
        .await;
    assert_eq!(count["count"], 10_000);
    let a = env
        .post(
            "/v1/admin/dead/replay",
            Some(json!({"filter": filter, "confirm_count": 10_000})),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body["job"]["total"], 10_000);
    assert_eq!(a.body["job"]["action"], "replay");
    let job = finished(&env, &a.body["job"], Duration::from_secs(50)).await;
    wait_for(
        "all 10,000 at the receiver",
        Duration::from_secs(20),
        || async { env.receiver.applied().len() >= 10_000 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let samples = watcher.await.unwrap();

    assert_eq!(job["done"], 10_000, "{job}");
    assert_eq!(job["failed"], 0, "{job}");
    assert_eq!(job["skipped"], 0, "{job}");
    assert!(job["last_error"].is_null(), "{job}");
    assert!(job["chunks"].as_u64().unwrap() >= 20, "{job}");
    // Every one arrived, once.
    let applied = env.receiver.applied();
    assert_eq!(applied.len(), 10_000);
    let applied: std::collections::HashSet<String> = applied.into_iter().collect();
    assert!(dead.iter().all(|m| applied.contains(&m.id.0.to_string())));
    assert_eq!(
        env.receiver.requests() - refused,
        10_000,
        "no message sent twice"
    );
    // Never more than one chunk waiting in front of the sink.
    let max = max_pending.load(Ordering::SeqCst);
    assert!(samples > 50, "the watcher looked {samples} times");
    assert!(max > 0, "the watcher saw the chunks");
    assert!(
        max <= 500,
        "{max} messages were pending at once (chunk 500)"
    );
    // The sink's own concurrency limit held.
    assert!(
        env.receiver.max_in_flight() <= 32,
        "{}",
        env.receiver.max_in_flight()
    );
    let stats = env.db.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));

    // Audited at the start (count confirmed) and at the end (count done).
    let audit = env.audit().await;
    let job_target = format!("job:{}", job["id"].as_str().unwrap());
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["action"], "dead.bulk_replay_done");
    assert_eq!(audit[0]["count"], 10_000);
    assert_eq!(audit[1]["action"], "dead.bulk_replay");
    assert_eq!(audit[1]["count"], 10_000);
    assert!(audit[1]["detail"].as_str().unwrap().contains("\"orders\""));
    for e in &audit {
        assert_eq!(e["actor"], "alice");
        assert_eq!(e["target"], job_target);
    }
    relay.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stale_count_is_409_with_the_current_one_and_a_mixed_replay_skips_tasks() {
    stale_count_and_mixed_replay(DatabaseKind::Postgres).await;
}

#[tokio::test]
async fn a_mixed_bulk_replay_on_mariadb() {
    stale_count_and_mixed_replay(DatabaseKind::Mysql).await;
}

#[tokio::test]
async fn a_mixed_bulk_replay_on_sqlite() {
    stale_count_and_mixed_replay(DatabaseKind::Sqlite).await;
}

async fn stale_count_and_mixed_replay(kind: DatabaseKind) {
    let env = env_on(kind, |c| c.chunk = 2).await;
    env.dead_outbox("orders", 3).await;
    let mut letters = Vec::new();
    for _ in 0..3 {
        letters.push(env.dead_letter(CONSUMER, "handler failed: timeout").await);
    }
    let event = env.event_failure(FORWARDER, "sink refused: 422").await;
    env.task_failure("send-invoice", "smtp timeout").await;
    let relay = env.start_relay().await;

    let a = env
        .post("/v1/admin/dead/replay", Some(json!({"confirm_count": 7})))
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert_eq!(a.body["current_count"], 8);
    assert!(
        env.audit().await.is_empty(),
        "a refused bulk action is not audited"
    );
    assert_eq!(env.get("/v1/admin/jobs").await["jobs"], json!([]));

    let a = env
        .post("/v1/admin/dead/replay", Some(json!({"confirm_count": 8})))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let job = finished(&env, &a.body["job"], Duration::from_secs(30)).await;
    assert_eq!(job["done"], 7, "{job}");
    assert_eq!(job["skipped"], 1, "{job}");
    assert_eq!(job["failed"], 0, "{job}");
    // Outbox 3 in chunks of 2, consumer 3 in pages of 2, forwarder 1.
    assert_eq!(job["chunks"], 5, "{job}");
    assert!(
        job["last_error"].as_str().unwrap().contains("rerun"),
        "{job}"
    );
    wait_for(
        "the receiver to get all 7",
        Duration::from_secs(10),
        || async { env.receiver.applied().len() == 7 },
    )
    .await;
    let applied = env.receiver.applied();
    assert!(letters
        .iter()
        .all(|l| applied.contains(&l.message.id.0.to_string())));
    assert!(applied.contains(&event.id.to_string()));
    // Only the task failure is left.
    let left = env.get("/v1/admin/dead").await;
    assert_eq!(left["items"].as_array().unwrap().len(), 1);
    assert_eq!(left["items"][0]["kind"], "task");
    let jobs = env.get("/v1/admin/jobs").await;
    assert_eq!(jobs["jobs"][0]["id"], job["id"]);
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_bulk_discard_deletes_every_kind_matching_the_filter() {
    let env = env_with(|c| c.chunk = 2).await;
    env.dead_outbox("orders", 3).await;
    env.dead_outbox("refunds", 2).await;
    env.dead_letter(CONSUMER, "handler failed: timeout").await;
    env.event_failure(FORWARDER, "sink refused: 422").await;
    env.task_failure("send-invoice", "smtp timeout").await;

    // Only the orders topic's outbox letters.
    let body = json!({"filter": {"kinds": ["outbox"], "name": "orders"}, "confirm_count": 3});
    let a = env.post("/v1/admin/dead/discard", Some(body)).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let job = finished(&env, &a.body["job"], Duration::from_secs(10)).await;
    assert_eq!(
        (job["done"].as_u64(), job["chunks"].as_u64()),
        (Some(3), Some(2)),
        "{job}"
    );
    assert_eq!(env.get("/v1/admin/dead/count").await["count"], 5);
    assert_eq!(
        env.get("/v1/admin/dead/count?name=refunds").await["count"],
        2
    );

    // Everything else.
    let a = env
        .post("/v1/admin/dead/discard", Some(json!({"confirm_count": 5})))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let job = finished(&env, &a.body["job"], Duration::from_secs(10)).await;
    assert_eq!(job["done"], 5, "{job}");
    assert_eq!(job["skipped"], 0, "{job}");
    assert_eq!(env.get("/v1/admin/dead/count").await["count"], 0);
    let stats = env.db.outbox_stats().await.unwrap();
    assert_eq!(stats.dead, 0);
    let actions: Vec<(Value, Value)> = env
        .audit()
        .await
        .iter()
        .map(|e| (e["action"].clone(), e["count"].clone()))
        .collect();
    assert_eq!(
        actions,
        [
            (json!("dead.bulk_discard_done"), json!(5)),
            (json!("dead.bulk_discard"), json!(5)),
            (json!("dead.bulk_discard_done"), json!(3)),
            (json!("dead.bulk_discard"), json!(3)),
        ]
    );
}

#[tokio::test]
async fn a_bulk_replay_stops_when_the_relay_does_not_deliver_a_chunk_in_time() {
    let env = env_with(|c| {
        c.chunk = 2;
        c.chunk_drain_timeout = Duration::from_millis(1500);
    })
    .await;
    env.dead_outbox("orders", 5).await;
    // No relay runs now: the first chunk stays pending.
    let a = env
        .post("/v1/admin/dead/replay", Some(json!({"confirm_count": 5})))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let job = finished(&env, &a.body["job"], Duration::from_secs(10)).await;
    assert_eq!(
        (job["done"].as_u64(), job["chunks"].as_u64()),
        (Some(2), Some(1)),
        "{job}"
    );
    let error = job["last_error"].as_str().unwrap();
    assert!(error.contains("did not deliver the last chunk"), "{error}");
    assert!(error.contains("3 not replayed"), "{error}");
    let stats = env.db.outbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.dead),
        (2, 3),
        "only one chunk was released"
    );
    // The end is audited with the count done.
    let audit = env.audit().await;
    assert_eq!(audit[0]["action"], "dead.bulk_replay_done");
    assert_eq!(audit[0]["count"], 2);
    // A new job may start once this one ended; the relay delivers.
    let relay = env.start_relay().await;
    wait_for("the first chunk", Duration::from_secs(10), || async {
        env.receiver.applied().len() == 2
    })
    .await;
    let a = env
        .post("/v1/admin/dead/replay", Some(json!({"confirm_count": 3})))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    let job = finished(&env, &a.body["job"], Duration::from_secs(10)).await;
    assert_eq!(job["done"], 3, "{job}");
    assert!(job["last_error"].is_null(), "{job}");
    relay.stop().await.unwrap();
}

/// The process shuts down while a bulk replay waits for the relay (none
/// runs): `finish_jobs` stops it before its next chunk, the job ends with
/// the reason, its end is in the audit log with the count done, the rest
/// stay dead letters, and no job starts afterwards.
#[tokio::test]
async fn a_bulk_replay_stopped_by_shutdown_audits_its_end() {
    let env = env_with(|c| {
        c.chunk = 2;
        c.chunk_drain_timeout = Duration::from_secs(60);
    })
    .await;
    env.dead_outbox("orders", 5).await;
    let a = env
        .post("/v1/admin/dead/replay", Some(json!({"confirm_count": 5})))
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    wait_for(
        "the first chunk released",
        Duration::from_secs(10),
        || async { env.db.outbox_stats().await.unwrap().pending == 2 },
    )
    .await;
    env.admin.finish_jobs(Duration::from_secs(10)).await;
    let job = env
        .get(&format!(
            "/v1/admin/jobs/{}",
            a.body["job"]["id"].as_str().unwrap()
        ))
        .await;
    assert!(!job["finished_at"].is_null(), "{job}");
    assert_eq!(job["done"].as_u64(), Some(2), "{job}");
    let error = job["last_error"].as_str().unwrap();
    assert!(error.contains("shutdown"), "{error}");
    assert!(error.contains("3 not done"), "{error}");
    let audit = env.audit().await;
    assert_eq!(audit[0]["action"], "dead.bulk_replay_done");
    assert_eq!(audit[0]["count"], 2);
    let stats = env.db.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (2, 3));
    let again = env
        .post("/v1/admin/dead/replay", Some(json!({"confirm_count": 3})))
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
}
