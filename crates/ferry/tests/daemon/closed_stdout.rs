//! Commands whose stdout is a pipe with no reader left (`ferry dead list |
//! head`, a script that stopped reading): the output is dropped and the
//! command exits as it would have. Before, `println!` panicked on the
//! failed write and the command exited 101 with a panic message.

use std::io::Read;
use std::process::Stdio;

use super::*;

/// Runs `ferry <args>` with stdout on a pipe whose read end is closed before
/// the command gets to print (it first opens the database), and returns its
/// exit status and stderr.
fn run_with_stdout_closed(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = ferry_command("warn", args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (child.wait().expect("wait for ferry"), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_commands_exit_cleanly_into_a_closed_pipe() {
    let db = SqliteTestDb::create();
    // A dead letter to list: a poison message, which the receiver refuses
    // for good (400).
    let r = Receiver::start().await;
    let store = Database::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    store
        .enqueue(&[Message::event("user.signed_up", r#"{"poison":true}"#)])
        .await
        .unwrap();
    let relay = Reaped(spawn_relay(&db.url, &r.url(), &[]));
    for _ in 0..200 {
        if store.outbox_stats().await.unwrap().dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(relay);
    assert_eq!(store.outbox_stats().await.unwrap().dead, 1);

    for args in [
        &["dead", "list", "--database", &db.url][..],
        &["dead", "list", "--json", "--database", &db.url][..],
        &["status", "--database", &db.url][..],
        &["migrate", "--database", &db.url][..],
    ] {
        let (status, stderr) = run_with_stdout_closed(args);
        assert!(
            status.success(),
            "ferry {args:?} into a closed pipe: {status:?}, stderr: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "ferry {args:?} panicked: {stderr}"
        );
    }
}
