//! `ferry forward` and `[[forwarder]]` as processes: SIGKILLed mid-stream
//! and restarted from its offset, stopping or skipping at an event the
//! receiver refuses, and run from a configuration file with metrics.

use ferry_store::event_store::NewEvent;

use super::*;

/// Starts `ferry forward` named `name` from `db` to `to`.
fn spawn_forward(db: &str, to: &str, name: &str, extra: &[&str]) -> Child {
    ferry_command("warn", &["forward", "--database", db, "--to", to])
        .args(["--name", name])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry forward")
}

/// `n` events numbered from `from`, about 13 sources; payload `"<source>:<i>"`.
fn numbered(from: usize, n: usize) -> Vec<NewEvent> {
    (from..from + n)
        .map(|i| {
            NewEvent::new("order.changed", format!("\"{}:{i}\"", i % 13))
                .with_source("order", (i % 13).to_string())
        })
        .collect()
}

/// Per source, the events first applied come in sequence order.
fn assert_in_order_per_source(r: &Receiver) {
    let mut last = HashMap::<String, i64>::new();
    for m in r.applied() {
        let key = m.key.clone().expect("every event has a source");
        let seq: i64 = m.headers["ferry-event-seq"].parse().unwrap();
        let before = last.insert(key.clone(), seq).unwrap_or(0);
        assert!(seq > before, "{key}: {seq} applied after {before}");
    }
}

/// SIGKILL `ferry forward` at random moments while events are being
/// appended, restart it, several times: every event arrives, the receiver
/// applies each event id once (it dedups by `ce-id`), per source in order,
/// and after SIGTERM the saved offset is the head.
async fn kill_and_restart(url: &str) {
    let db = migrated(url).await;
    let r = Receiver::start().await;
    r.set_delay(Duration::from_millis(30));
    let mut rng = rand::thread_rng();
    let mut appended = 0;
    let mut mid_stream = 0;
    for _ in 0..5 {
        // Events are appended while the forwarder runs, then it is killed.
        let mut child = spawn_forward(url, &r.url(), "hook", &["--batch-size", "20"]);
        for _ in 0..8 {
            db.append_events(&numbered(appended, 50)).await.unwrap();
            appended += 50;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..80))).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        if r.applied().len() < appended {
            mid_stream += 1;
        }
        sigkill(&mut child);
    }
    assert!(
        mid_stream >= 3,
        "only {mid_stream} of 5 kills came while events were still to deliver"
    );
    let before_final = r.applied().len();
    assert!(before_final > 0, "some events went out before the kills");
    assert_the_rest_applied_once(&r, appended, "event", || {
        spawn_forward(url, &r.url(), "hook", &["--batch-size", "50"])
    })
    .await;
    assert_in_order_per_source(&r);
    let head = db.event_head().await.unwrap();
    assert_eq!(
        db.load_offset("hook").await.unwrap(),
        head,
        "the offset saved at the head"
    );
}

per_database!(kill_and_restart {
    forward_sigkilled_mid_stream_loses_nothing_postgres: PgTestDb::create().await,
    forward_sigkilled_mid_stream_loses_nothing_mariadb: ferry_testkit::MysqlTestDb::create().await,
    forward_sigkilled_mid_stream_loses_nothing_sqlite: SqliteTestDb::create(),
});

/// An event the receiver refuses (HTTP 400, permanent): with `--on-failure
/// stop` the process exits non-zero naming it, its offset before it, and
/// the next event of its source is not sent; with `skip` it is recorded in
/// ferry_event_failures and the rest goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stops_or_skips_at_a_refused_event() {
    let t = SqliteTestDb::create();
    let db = migrated(&t.url).await;
    let seqs = db
        .append_events(&[
            NewEvent::new("a", "\"1\"").with_source("order", "1"),
            NewEvent::new("a", "\"poison\"").with_source("order", "1"),
            NewEvent::new("a", "\"3\"").with_source("order", "1"),
        ])
        .await
        .unwrap();
    let r = Receiver::start().await;
    let child = spawn_forward(&t.url, &r.url(), "hook", &[]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "stopped with an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("stopped at event {}", seqs[1]))
            && err.contains("its offset stays at"),
        "{err}"
    );
    assert_eq!(db.load_offset("hook").await.unwrap(), seqs[0]);
    assert_eq!(r.applied().len(), 1);

    let mut child = spawn_forward(&t.url, &r.url(), "hook", &["--on-failure", "skip"]);
    wait_until("the third event", Duration::from_secs(30), || {
        r.applied().len() == 2
    })
    .await;
    stop(&mut child);
    let failures = db.event_failures(Some("hook")).await.unwrap();
    assert_eq!(
        failures.iter().map(|f| f.seq).collect::<Vec<_>>(),
        [seqs[1]]
    );
    assert_eq!(db.load_offset("hook").await.unwrap(), seqs[2]);
}

/// `ferry run` with a `[[forwarder]]` table: `ferry check` counts it, the
/// events arrive, `/metrics` shows the forwarder's counters and lag, and
/// SIGTERM exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_forwards_from_a_config_file() {
    let t = SqliteTestDb::create();
    let dir = TempDir::new();
    let r = Receiver::start().await;
    let port = free_port();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[forwarder]]\nname = \"billing\"\ndatabase = \"{}\"\nmigrate = true\npoll_interval = \"50ms\"\n\
             [forwarder.sink]\ntype = \"http\"\nurl = \"{}\"\n",
            t.url,
            r.url()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = ferry(&["check", "--config", file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 forwarder(s)"));

    let mut child = spawn_ferry(&["run", "--config", file]);
    // `migrate = true`: the daemon creates the tables; wait for them.
    let db = Database::connect(&t.url).await.unwrap();
    wait_for(
        "the daemon to migrate",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            db.check_schema().await.is_ok() && db.schema_version().await.unwrap() >= Some(4)
        },
    )
    .await;
    db.append_events(&numbered(0, 30)).await.unwrap();
    wait_until("30 applied", Duration::from_secs(30), || {
        r.applied().len() == 30
    })
    .await;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        if text.contains("ferry_forwarder_offset{forwarder=\"billing\"} 30") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("ferry_forwarder_delivered_total{forwarder=\"billing\"} 30"),
        "{text}"
    );
    assert!(
        text.contains("ferry_forwarder_offset{forwarder=\"billing\"} 30"),
        "{text}"
    );
    assert!(
        text.contains("ferry_forwarder_lag_events{forwarder=\"billing\"} 0"),
        "{text}"
    );
    stop(&mut child);
    assert_eq!(db.load_offset("billing").await.unwrap(), 30);
}
