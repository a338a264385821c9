//! The events API in the daemon: `ferry serve` with a token, refusing an
//! open address without one, and `[events_api]` on the `[http]` port of
//! `ferry run`.

use std::time::Duration;

use ferry_events::api::BearerToken;
use ferry_events::client::{ClientConfig, EventsClient, FileOffsetStore};
use ferry_store::event_store::NewEvent;

use super::*;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(FERRY);
        command
            .args(["--log-level", "warn"])
            .args(args)
            .env_remove("FERRY_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        Self(command.spawn().expect("start ferry"))
    }

    /// Stops it with SIGTERM; it must exit 0.
    async fn stop(mut self) {
        sigterm(&self.0);
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "still running");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until `/health` answers on `port`.
async fn healthy(port: u16, daemon: &mut Daemon) {
    let url = format!("http://127.0.0.1:{port}/health");
    let start = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            assert_eq!(r.status().as_u16(), 200);
            return;
        }
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("ferry exited with {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no /health");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(url: &str, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn appended(url: &str, n: usize) -> Database {
    let db = migrated(url).await;
    let events: Vec<NewEvent> = (0..n)
        .map(|i| {
            NewEvent::new(
                "order.cancelled",
                format!(r#"{{"order":{i}}}"#).into_bytes(),
            )
        })
        .collect();
    db.append_events(&events).await.unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_pages_events_to_holders_of_the_token() {
    let t = PgTestDb::create().await;
    let db = appended(&t.url, 25).await;
    let port = ferry_testkit::nats_server::free_port();
    let listen = format!("127.0.0.1:{port}");
    let token = "daemon-t0ken";
    let mut daemon = Daemon::start(
        &[
            "serve",
            "--database",
            &t.url,
            "--listen",
            &listen,
            "--max-limit",
            "10",
        ],
        &[("FERRY_API_TOKEN", token)],
    );
    healthy(port, &mut daemon).await;
    let base = format!("http://{listen}");
    assert_eq!(status(&format!("{base}/v1/events"), None).await, 401);
    assert_eq!(
        status(&format!("{base}/v1/events"), Some("wrong")).await,
        401
    );
    assert_eq!(
        status(&format!("{base}/v1/events?limit=11"), Some(token)).await,
        400
    );
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/events?offset=0&limit=10"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 10);
    assert_eq!(page["events"][0]["payload"]["order"], 0);

    // The Rust client reads all 25 in pages of 10, and resumes after a drop.
    let dir = TempDir::new();
    let config = ClientConfig {
        token: Some(BearerToken::new(token).unwrap()),
        limit: 10,
        ..ClientConfig::new(base.parse().unwrap())
    };
    let offsets = FileOffsetStore::new(dir.0.join("offset"));
    let mut client = EventsClient::new(config.clone(), offsets.clone())
        .await
        .unwrap();
    let mut seen = 0;
    loop {
        let page = client.next_page().await.unwrap();
        seen += page.events.len();
        client.commit(&page).await.unwrap();
        if page.events.is_empty() {
            break;
        }
    }
    assert_eq!(seen, 25);
    let head = db.event_head().await.unwrap();
    let client = EventsClient::new(config, offsets).await.unwrap();
    assert_eq!(client.committed(), head);
    daemon.stop().await;
}

#[test]
fn serve_refuses_an_open_address_without_a_token() {
    let t = SqliteTestDb::create();
    let out = Command::new(FERRY)
        .args(["serve", "--database", &t.url, "--listen", "0.0.0.0:0"])
        .env_remove("FERRY_API_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without a bearer token") && err.contains("0.0.0.0:0"),
        "{err}"
    );
    // And a token that cannot be sent in a header.
    let out = Command::new(FERRY)
        .args(["serve", "--database", &t.url, "--listen", "127.0.0.1:0"])
        .env("FERRY_API_TOKEN", "two words")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FERRY_API_TOKEN") && err.contains("visible ASCII"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_events_api_beside_metrics() {
    let t = SqliteTestDb::create();
    appended(&t.url, 3).await;
    let port = ferry_testkit::nats_server::free_port();
    let dir = TempDir::new();
    let path = dir.0.join("ferry.toml");
    let file = |listen: &str, token: &str| {
        format!(
            "[http]\nlisten = \"{listen}\"\n{token}\n[events_api]\ndatabase = \"{}\"\nmax_limit = 2\n",
            t.url
        )
    };
    // Open to the network without a token: refused by check and by run.
    std::fs::write(&path, file(&format!("0.0.0.0:{port}"), "")).unwrap();
    for cmd in ["check", "run"] {
        let out = ferry(&[cmd, "--config", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("key `http.token`"), "{cmd}: {err}");
    }
    std::fs::write(
        &path,
        file(
            &format!("127.0.0.1:{port}"),
            "token_env = \"FERRY_TEST_EVENTS_TOKEN\"",
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start(
        &["run", "--config", path.to_str().unwrap()],
        &[("FERRY_TEST_EVENTS_TOKEN", "file-token")],
    );
    healthy(port, &mut daemon).await;
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(status(&format!("{base}/metrics"), None).await, 200);
    assert_eq!(status(&format!("{base}/v1/events"), None).await, 401);
    assert_eq!(
        status(&format!("{base}/v1/events/head"), Some("file-token")).await,
        200
    );
    assert_eq!(
        status(&format!("{base}/v1/events?limit=3"), Some("file-token")).await,
        400
    );
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth("file-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    daemon.stop().await;
}
