//! A broker that is down is logged by Ferry once, not by its client
//! library on every reconnect attempt.

use std::process::Stdio;

use super::*;

/// `ferry relay` at the default log level with an outbox holding a
/// message and its sink at `to`, where nothing listens (127.0.0.1:1): for
/// a few seconds the client retries, then SIGTERM. Returns its log.
async fn relay_log_while_down(to: &str) -> String {
    let t = SqliteTestDb::create();
    let db = migrated(&t.url).await;
    enqueue(&db, &keyed(1, 1)).await;
    let mut child = Command::new(FERRY)
        .env_remove("RUST_LOG")
        .args(["relay", "--database", &t.url, "--to", to])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running, retrying"
    );
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Lines of `log` containing any of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_nats_server_is_logged_once_not_per_reconnect() {
    let log = relay_log_while_down("nats://127.0.0.1:1?ack_timeout=1s").await;
    assert_eq!(
        lines_with(&log, &["async_nats"]),
        Vec::<&str>::new(),
        "no line from the client library:\n{log}"
    );
    assert_eq!(
        log.matches("sink unavailable").count(),
        1,
        "logged once:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_kafka_broker_is_logged_once_not_per_reconnect() {
    let log = relay_log_while_down("kafka://127.0.0.1:1?delivery_timeout=1s").await;
    assert_eq!(
        lines_with(
            &log,
            &[
                "librdkafka",
                "rdkafka",
                "AllBrokersDown",
                "BrokerTransportFailure"
            ]
        ),
        Vec::<&str>::new(),
        "no line from the client library:\n{log}"
    );
    assert_eq!(
        log.matches("sink unavailable").count(),
        1,
        "logged once:\n{log}"
    );
}
