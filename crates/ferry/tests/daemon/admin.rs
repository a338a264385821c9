//! `ferry run` with `[[http.tokens]]`: the admin API over a real relay, a
//! real SQLite outbox and a real webhook — dead letters seen, grouped,
//! replayed one and in bulk to the receiver; a pipeline paused and resumed;
//! read-only and missing tokens refused; every change in the audit log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::*;

/// A webhook that refuses (400, a permanent error) every payload holding
/// `flaky` while `refuse` is set, and records what it accepts.
#[derive(Clone, Default)]
struct Webhook {
    refuse: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<(String, String)>>>,
}

impl Webhook {
    async fn start(&self) -> String {
        async fn hook(State(w): State<Webhook>, headers: HeaderMap, body: Bytes) -> StatusCode {
            let body = String::from_utf8_lossy(&body).into_owned();
            if w.refuse.load(Ordering::SeqCst) && body.contains("flaky") {
                return StatusCode::BAD_REQUEST;
            }
            let id = headers
                .get("ce-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            w.accepted.lock().unwrap().push((id, body));
            StatusCode::OK
        }
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn accepted(&self) -> Vec<(String, String)> {
        self.accepted.lock().unwrap().clone()
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
}

const ADMIN: &str = "alice-s3cret";
const VIEWER: &str = "viewer-s3cret";

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.client.get(&url),
            _ => self.client.post(&url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the admin api answers");
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call("GET", path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, token: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call("POST", path, Some(token), body).await
    }

    /// Polls `GET path` until `done` holds (the daemon may not listen
    /// yet); fails after `limit`.
    async fn get_until(
        &self,
        path: &str,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let answer = self
                .client
                .get(format!("{}{path}", self.base))
                .bearer_auth(VIEWER)
                .send()
                .await;
            let (status, body) = match answer {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                ),
                Err(e) => (0, Value::String(e.to_string())),
            };
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn relay_of(overview: &Value, name: &str) -> Value {
    overview["components"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["kind"] == "relay" && c["name"] == name)
                .cloned()
        })
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_replays_dead_letters_and_pauses_a_pipeline() {
    let t = SqliteTestDb::create();
    let db = migrated(&t.url).await;
    let webhook = Webhook::default();
    webhook.refuse.store(true, Ordering::SeqCst);
    let url = webhook.start().await;
    let mut messages: Vec<Message> = (0..6)
        .map(|i| Message::event("orders.placed", format!("ok-{i}")))
        .collect();
    messages.extend((0..4).map(|i| Message::event("orders.placed", format!("flaky-{i}"))));
    enqueue(&db, &messages).await;

    let dir = TempDir::new();
    let port = free_port();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[http.tokens]]\nname = \"alice\"\nrole = \"admin\"\ntoken_env = \"FERRY_TEST_ALICE\"\n\n\
             [[http.tokens]]\nname = \"dashboard\"\nrole = \"read-only\"\ntoken = \"{VIEWER}\"\n\n\
             [[pipeline]]\nname = \"orders\"\ndatabase = \"{}\"\npoll_interval = \"50ms\"\n\
             [pipeline.sink]\ntype = \"http\"\nurl = \"{url}\"\n",
            t.url
        ),
    )
    .unwrap();
    let mut child = Reaped(
        ferry_command("warn", &["run", "--config", file.to_str().unwrap()])
            .env("FERRY_TEST_ALICE", ADMIN)
            .spawn()
            .expect("start ferry"),
    );
    let api = Api {
        base: format!("http://127.0.0.1:{port}/v1/admin"),
        client: reqwest::Client::new(),
    };

    // The 4 flaky messages are refused for good, the 6 others arrive.
    api.get_until(
        "/dead/count?kind=outbox",
        "4 dead letters",
        Duration::from_secs(30),
        |b| b["count"] == 4,
    )
    .await;
    wait_until("6 accepted", Duration::from_secs(30), || {
        webhook.accepted().len() == 6
    })
    .await;

    // Reading needs a token, and a read-only one is enough.
    let (status, _) = api.call("GET", "/overview", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call("GET", "/overview", Some("not-a-token"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let overview = api.get("/overview", VIEWER).await;
    let relay = relay_of(&overview, "orders");
    assert_eq!(relay["state"], "running", "{overview}");
    assert_eq!(relay["store"], "orders", "{overview}");

    // One group: the same cause four times.
    let causes = api.get("/dead/causes", VIEWER).await;
    let groups = causes.as_array().expect("a list of groups");
    assert_eq!(groups.len(), 1, "{causes}");
    assert_eq!(
        (groups[0]["kind"].clone(), groups[0]["count"].clone()),
        (json!("outbox"), json!(4))
    );

    let page = api.get("/dead?kind=outbox&limit=10", VIEWER).await;
    let items = page["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 4, "{page}");
    let first = items[0]["id"].as_str().unwrap().to_owned();
    let first_message = items[0]["message_id"].as_str().unwrap().to_owned();
    let detail = api.get(&format!("/dead/{first}"), VIEWER).await;
    assert!(
        detail["payload"]["data"]
            .as_str()
            .unwrap()
            .starts_with("flaky-"),
        "{detail}"
    );

    // A read-only token changes nothing.
    let (status, body) = api
        .post(&format!("/dead/{first}/replay"), VIEWER, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = api
        .call("POST", &format!("/dead/{first}/replay"), None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The receiver is fixed: one replayed by hand arrives, with its id.
    webhook.refuse.store(false, Ordering::SeqCst);
    let (status, body) = api
        .post(&format!("/dead/{first}/replay"), ADMIN, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until("the replayed one accepted", Duration::from_secs(30), || {
        webhook
            .accepted()
            .iter()
            .any(|(id, _)| *id == first_message)
    })
    .await;

    // The rest in bulk: the count shown must be the count confirmed.
    let count = api.get("/dead/count?kind=outbox", VIEWER).await;
    assert_eq!(count["count"], 3, "{count}");
    let filter = json!({"kinds": ["outbox"]});
    let (status, body) = api
        .post(
            "/dead/replay",
            ADMIN,
            Some(json!({"filter": filter, "confirm_count": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = api
        .post(
            "/dead/replay",
            VIEWER,
            Some(json!({"filter": filter, "confirm_count": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = api
        .post(
            "/dead/replay",
            ADMIN,
            Some(json!({"filter": filter, "confirm_count": 3})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let job = match &body["job"]["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let job = api
        .get_until(
            &format!("/jobs/{job}"),
            "the bulk replay to finish",
            Duration::from_secs(60),
            |j| !j["finished_at"].is_null(),
        )
        .await;
    assert_eq!(job["done"], 3, "{job}");
    wait_until("all 10 accepted", Duration::from_secs(30), || {
        webhook.accepted().len() == 10
    })
    .await;
    let ids: HashSet<String> = webhook.accepted().into_iter().map(|(id, _)| id).collect();
    let sent: HashSet<String> = messages.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, sent, "every message once, under its own id");
    assert_eq!(api.get("/dead/count", VIEWER).await["count"], 0);

    // Pause: nothing goes out until resumed.
    let (status, _) = api.post("/pipelines/orders/pause", VIEWER, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api.post("/pipelines/orders/pause", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.get_until(
        "/overview",
        "the relay to show paused",
        Duration::from_secs(10),
        |o| relay_of(o, "orders")["state"] == "paused",
    )
    .await;
    let more: Vec<Message> = (0..3)
        .map(|i| Message::event("orders.placed", format!("later-{i}")))
        .collect();
    enqueue(&db, &more).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(webhook.accepted().len(), 10, "a paused pipeline delivered");
    let (status, body) = api.post("/pipelines/orders/resume", ADMIN, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until("the 3 later ones accepted", Duration::from_secs(30), || {
        webhook.accepted().len() == 13
    })
    .await;

    // Every change is in the audit log under the token's name.
    let audit = api.get("/audit", VIEWER).await;
    let entries = audit
        .as_array()
        .cloned()
        .or_else(|| audit["entries"].as_array().cloned())
        .expect("audit entries");
    let by_alice: Vec<&Value> = entries.iter().filter(|e| e["actor"] == "alice").collect();
    let actions: HashSet<String> = by_alice
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect();
    assert!(by_alice.len() >= 4, "{audit}");
    assert!(actions.iter().any(|a| a.contains("pause")), "{audit}");
    assert!(actions.iter().any(|a| a.contains("resume")), "{audit}");
    assert!(entries.iter().all(|e| e["actor"] != "dashboard"), "{audit}");
    stop(&mut child.0);
}

/// The console is served beside the API: without a session it sends the
/// browser to its login page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shows_the_console_login_with_an_admin_token() {
    let t = SqliteTestDb::create();
    migrated(&t.url).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Reaped(
        ferry_command(
            "warn",
            &["serve", "--database", &t.url, "--listen", &listen],
        )
        .env("FERRY_ADMIN_TOKEN", ADMIN)
        .spawn()
        .expect("start ferry"),
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{listen}");
    let start = Instant::now();
    let response = loop {
        match client.get(format!("{base}/ui")).send().await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "ferry serve did not answer: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(response.status().is_redirection(), "{}", response.status());
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("/ui/login"), "{location}");
    let login = client.get(format!("{base}/ui/login")).send().await.unwrap();
    assert_eq!(login.status().as_u16(), 200);
    assert!(login.text().await.unwrap().contains("<form"));
    let overview = client
        .get(format!("{base}/v1/admin/overview"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status().as_u16(), 200);
    // The events API's own routes are still there.
    let head = client
        .get(format!("{base}/v1/events/head"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    stop(&mut child.0);
}
