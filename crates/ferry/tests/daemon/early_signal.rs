//! SIGTERM while a long-running command is still starting: it connects to
//! a broker that is down, and shuts down cleanly (exit 0) at every delay
//! tried. The handlers used to be registered by a spawned task, so a signal
//! that came before that task ran found the default action and killed the
//! process (exit 143, seen once in a test run); they are now registered
//! first thing in `main`. That race depended on scheduling and this test
//! has not reproduced it: it guards the shutdown path while connecting.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Instant;

use super::*;

/// Starts `ferry <args>` at log level debug, waits for its first log line
/// (the process is up and starting), sends SIGTERM after `delay`, and
/// returns the exit status (a bound of 30 s only detects a hang).
fn sigterm_after_first_line(args: &[&str], delay: Duration) -> std::process::ExitStatus {
    let mut child = ferry_command("debug", args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry");
    let stderr = child.stderr.take().expect("piped stderr");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    // Keeps reading so the pipe never fills up and blocks the process.
    std::thread::spawn(move || {
        let mut first = Some(first_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(tx) = first.take() {
                let _ = tx.send(line);
            }
        }
    });
    let mut child = Reaped(child);
    first_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("ferry {args:?} logged nothing"));
    std::thread::sleep(delay);
    sigterm(&child.0);
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ferry {args:?} still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_while_connecting_to_a_down_broker_exits_0() {
    let down_nats = format!("nats://127.0.0.1:{}", free_port());
    let receiver = format!("http://127.0.0.1:{}/", free_port());
    for delay_ms in [0, 20, 300] {
        let delay = Duration::from_millis(delay_ms);
        let db = SqliteTestDb::create();
        let consume = [
            "consume",
            "--from",
            &down_nats,
            "--to",
            &receiver,
            "--topic",
            "t",
            "--database",
            &db.url,
        ];
        let status = sigterm_after_first_line(&consume, delay);
        assert!(
            status.success(),
            "ferry consume, SIGTERM {delay_ms} ms after its first log line: {status:?}"
        );
        let relay = [
            "relay",
            "--database",
            &db.url,
            "--migrate",
            "--to",
            &down_nats,
        ];
        let status = sigterm_after_first_line(&relay, delay);
        assert!(
            status.success(),
            "ferry relay, SIGTERM {delay_ms} ms after its first log line: {status:?}"
        );
    }
}
