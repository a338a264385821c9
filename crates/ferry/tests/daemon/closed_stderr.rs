//! Long-running commands whose stderr is a pipe with no reader left (a
//! `| head` that has had its lines, a log shipper that died): a log line
//! that cannot be written is dropped, and SIGTERM still stops the process
//! cleanly. Before, the failed write panicked in whichever task logged: in
//! the signal task the run was never cancelled and the process ignored
//! SIGTERM for good.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// Starts `ferry <args>` at log level info with stderr on a pipe, reads
/// its first log bytes and closes the read end, then sends SIGTERM: the
/// process exits 0 (a bound of 30 s only detects a hang).
fn assert_stops_with_stderr_closed(args: &[&str]) {
    let child = ferry_command("info", args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry");
    let mut child = Reaped(child);
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let mut first = [0u8; 64];
    let n = stderr.read(&mut first).expect("read the first log bytes");
    assert!(n > 0, "ferry {args:?} logged nothing before exiting");
    drop(stderr);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "ferry {args:?} still running after its log reader went away"
    );
    sigterm(&child.0);
    let status = wait_at_most(&mut child.0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("ferry {args:?} still running 30 s after SIGTERM"));
    assert!(
        status.success(),
        "ferry {args:?}: clean exit after SIGTERM with stderr closed: {status:?}"
    );
}

fn wait_at_most(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn down_redis() -> String {
    format!("redis://127.0.0.1:{}/0", free_port())
}

#[test]
fn relay_to_a_down_sink_stops_on_sigterm_with_stderr_closed() {
    let db = SqliteTestDb::create();
    let to = down_redis();
    assert_stops_with_stderr_closed(&["relay", "--database", &db.url, "--migrate", "--to", &to]);
}

#[test]
fn consume_from_a_down_broker_stops_on_sigterm_with_stderr_closed() {
    let db = SqliteTestDb::create();
    let from = down_redis();
    let to = format!("http://127.0.0.1:{}/", free_port());
    assert_stops_with_stderr_closed(&[
        "consume",
        "--from",
        &from,
        "--to",
        &to,
        "--topic",
        "t",
        "--database",
        &db.url,
    ]);
}

#[test]
fn run_with_a_pipeline_and_the_events_api_stops_on_sigterm_with_stderr_closed() {
    let db = SqliteTestDb::create();
    let dir = TempDir::new();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            "[http]\nlisten = \"127.0.0.1:{}\"\n\n[events_api]\ndatabase = \"{}\"\nmigrate = true\n\n\
             [[pipeline]]\nname = \"orders\"\ndatabase = \"{}\"\nmigrate = true\n\
             [pipeline.sink]\ntype = \"redis\"\nurl = \"{}\"\n",
            free_port(),
            db.url,
            db.url,
            down_redis()
        ),
    )
    .unwrap();
    assert_stops_with_stderr_closed(&["run", "--config", file.to_str().unwrap()]);
}

#[test]
fn serve_stops_on_sigterm_with_stderr_closed() {
    let db = SqliteTestDb::create();
    let listen = format!("127.0.0.1:{}", free_port());
    assert_stops_with_stderr_closed(&[
        "serve",
        "--database",
        &db.url,
        "--migrate",
        "--listen",
        &listen,
    ]);
}
