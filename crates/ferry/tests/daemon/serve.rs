//! The events API in the daemon: `ferry serve` with a token, refusing an
//! open address without one, and `[events_api]` on the `[http]` port of
//! `ferry run`.

use std::time::Duration;

use ferry_events::api::BearerToken;
use ferry_events::client::{ClientConfig, EventsClient, FileOffsetStore};
use ferry_store::event_store::NewEvent;

use super::*;

struct Daemon(Reaped);

impl Daemon {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = ferry_command("warn", args);
        command.env_remove("FERRY_API_TOKEN");
        for (k, v) in env {
            command.env(k, v);
        }
        Self(Reaped(command.spawn().expect("start ferry")))
    }

    /// Stops it with SIGTERM; it must exit 0.
    async fn stop(mut self) {
        sigterm(&self.0 .0);
        let start = Instant::now();
        loop {
            if let Some(status) = self.0 .0.try_wait().unwrap() {
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
        if let Some(status) = daemon.0 .0.try_wait().unwrap() {
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

/// A page of events as JSON, asked for with `token`.
async fn page(url: &str, token: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
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
    let port = free_port();
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
    let page = page(&format!("{base}/v1/events?offset=0&limit=10"), token).await;
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

/// `ferry serve` refuses an open address without a token, and a token
/// that cannot be sent in a header.
#[test]
fn serve_refuses_an_open_address_without_a_token() {
    let t = SqliteTestDb::create();
    for (listen, token, says) in [
        ("0.0.0.0:0", None, ["without a bearer token", "0.0.0.0:0"]),
        (
            "127.0.0.1:0",
            Some("two words"),
            ["FERRY_API_TOKEN", "visible ASCII"],
        ),
    ] {
        let mut command = Command::new(FERRY);
        command.args(["serve", "--database", &t.url, "--listen", listen]);
        match token {
            Some(token) => command.env("FERRY_API_TOKEN", token),
            None => command.env_remove("FERRY_API_TOKEN"),
        };
        let out = command.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(says.iter().all(|said| err.contains(said)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_events_api_beside_metrics() {
    let t = SqliteTestDb::create();
    appended(&t.url, 3).await;
    let port = free_port();
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
    let page = page(&format!("{base}/v1/events"), "file-token").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    daemon.stop().await;
}
