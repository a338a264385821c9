use super::*;

/// SIGKILL the relay at random moments mid-batch, restart it, several
/// times: every message arrives, the idempotent receiver applies each once,
/// per-key order holds, nothing is left pending or dead.
async fn kill_and_restart(url: &str) {
    let n = 5000;
    let (db, r) = backlog(url, n, 13).await;
    r.set_delay(Duration::from_millis(25));
    let mut rng = rand::thread_rng();
    let mut kills = 0;
    for _ in 0..5 {
        let mut child = spawn_relay(url, &r.url(), &["--batch-size", "20"]);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..600))).await;
        sigkill(&mut child);
        kills += 1;
    }
    let before_final = r.applied().len();
    assert!(
        before_final < n,
        "the kills happened while work remained ({before_final}/{n})"
    );
    assert_the_rest_applied_once(&r, n, "message", || {
        spawn_relay(url, &r.url(), &["--batch-size", "50"])
    })
    .await;
    assert_in_order_per_key(&r);
    let stats = db.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    eprintln!("{kills} kills");
}

per_database!(kill_and_restart {
    sigkill_mid_batch_loses_nothing_postgres: PgTestDb::create().await,
    sigkill_mid_batch_loses_nothing_sqlite: SqliteTestDb::create(),
});

// Two relay processes on one PostgreSQL outbox, and on MariaDB.
per_database!(two_relays_share_one_outbox {
    two_relays_share_one_postgres_outbox: PgTestDb::create().await,
    two_relays_share_one_mariadb_outbox: ferry_testkit::MysqlTestDb::create().await,
});

/// Two relay processes on one outbox, while a producer keeps writing: no
/// message delivered twice, per-key order kept.
async fn two_relays_share_one_outbox(url: &str) {
    let db = migrated(url).await;
    let r = Receiver::start().await;
    let a = spawn_relay(url, &r.url(), &["--batch-size", "20"]);
    let b = spawn_relay(url, &r.url(), &["--batch-size", "20"]);
    let n = 4000;
    let all = keyed(n, 9);
    for chunk in all.chunks(100) {
        enqueue(&db, chunk).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_until("every message applied", Duration::from_secs(120), || {
        r.applied().len() == n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.requests().len(), n, "no message delivered twice");
    assert_in_order_per_key(&r);
    for mut c in [a, b] {
        stop(&mut c);
    }
}

/// SIGTERM while the sink is slow: the relay stops claiming, finishes or
/// abandons its batch within the grace, and exits 0; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_and_loses_nothing() {
    let t = PgTestDb::create().await;
    let (db, r) = backlog(&t.url, 500, 5).await;
    r.set_delay(Duration::from_millis(20));
    let mut child = spawn_relay(&t.url, &r.url(), &["--batch-size", "100"]);
    wait_until("some deliveries", Duration::from_secs(30), || {
        !r.applied().is_empty()
    })
    .await;
    let asked = Instant::now();
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "bounded shutdown"
    );
    let left = db.outbox_stats().await.unwrap().pending as usize;
    assert!(left > 0, "stopped before finishing the backlog");
    r.set_delay(Duration::ZERO);
    let mut again = spawn_relay(&t.url, &r.url(), &[]);
    wait_until("the rest delivered", Duration::from_secs(60), || {
        r.applied().len() == 500
    })
    .await;
    sigterm(&again);
    again.wait().unwrap();
}

/// The database is unreachable when the relay starts (a closed PostgreSQL
/// port): it keeps retrying with backoff, logs that once, and stops cleanly
/// on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_is_retried_not_fatal() {
    assert_an_unreachable_database_is_retried(&["relay", "--to", "null://"]).await;
}

/// A second SIGTERM does not wait for the grace: the process exits at once
/// (status 130), and what was in flight is delivered again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let t = PgTestDb::create().await;
    let (db, r) = backlog(&t.url, 50, 5).await;
    // Every answer takes 30 s: the first batch stays in flight.
    r.set_delay(Duration::from_secs(30));
    let mut child = spawn_relay(&t.url, &r.url(), &[]);
    wait_until("a request in flight", Duration::from_secs(30), || {
        !r.requests().is_empty()
    })
    .await;
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the batch in flight"
    );
    let asked = Instant::now();
    sigterm(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "exited at once, not after the 10 s grace"
    );
    assert_eq!(
        db.outbox_stats().await.unwrap().pending,
        50,
        "nothing recorded: all delivered again later"
    );
}

/// A sink that is down for a while is logged once when it goes down and
/// once when it comes back, not once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_sink_is_logged_once_per_state_change() {
    let t = SqliteTestDb::create();
    let (_db, r) = backlog(&t.url, 200, 20).await;
    r.set_mode(ferry_testkit::Mode::Down);
    let child = Command::new(FERRY)
        .args([
            "--log-format",
            "json",
            "relay",
            "--database",
            &t.url,
            "--to",
            &r.url(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = r.requests_while_down();
    r.set_mode(ferry_testkit::Mode::Up);
    wait_until("all applied", Duration::from_secs(60), || {
        r.applied().len() == 200
    })
    .await;
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(attempts >= 3, "several attempts while down ({attempts})");
    assert_eq!(
        log.matches("sink unavailable").count(),
        1,
        "{attempts} attempts, one line:\n{log}"
    );
    assert_eq!(log.matches("sink available again").count(), 1, "{log}");
}
