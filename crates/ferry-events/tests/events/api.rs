//! The HTTP offset API served on a loopback port over real databases:
//! paging, filters, the head, long polls, bad parameters, authentication
//! and database failures.

use crate::api_common;

use std::time::{Duration, Instant};

use api_common::{events, Env, Served};
use ferry_events::api::{self, ApiConfig, ApiConfigError, BearerToken, ServeError};
use ferry_store::event_store::NewEvent;
use serde_json::Value;

async fn get(url: &str) -> (u16, Value) {
    get_with(reqwest::Client::new().get(url)).await
}

async fn get_with(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    assert_eq!(content_type.as_deref(), Some("application/json"), "{body}");
    (status, body)
}

/// Default settings with pages of at most `max_limit` events.
fn at_most(max_limit: u32) -> ApiConfig {
    ApiConfig {
        max_limit,
        ..ApiConfig::default()
    }
}

fn seqs(page: &Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

/// Follows `next_offset` from 0 with `limit` until an empty page; checks
/// each page's `next_offset` and returns the events in the order served.
async fn follow(s: &Served, limit: u32, filter: &str, head: i64) -> Vec<Value> {
    let mut offset = 0;
    let mut all = Vec::new();
    loop {
        let (status, page) =
            get(&s.url(&format!("/v1/events?offset={offset}&limit={limit}{filter}"))).await;
        assert_eq!(status, 200, "{page}");
        let got = seqs(&page);
        let next = page["next_offset"].as_i64().unwrap();
        if got.len() == limit as usize {
            assert_eq!(
                next,
                *got.last().unwrap(),
                "a full page ends at its last event"
            );
        } else {
            assert_eq!(next, head, "a short page moves to the head");
        }
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        assert!(got[0] > offset, "{got:?} after {offset}");
        offset = next;
        all.extend(events);
    }
}

each_db!(
    paging_through_1000_events_serves_each_once_in_order,
    |env: Env| async move {
        let appended = events(1000);
        let seqs_appended = env.append(&appended).await;
        let head = *seqs_appended.last().unwrap();
        let s = Served::start(&env.db, ApiConfig::default()).await;
        for limit in [500, 7, 1000] {
            let served = follow(&s, limit, "", head).await;
            assert_eq!(served.len(), 1000, "limit {limit}");
            for ((e, want), seq) in served.iter().zip(&appended).zip(&seqs_appended) {
                assert_eq!(e["seq"].as_i64(), Some(*seq));
                assert_eq!(e["id"].as_str(), Some(want.id.to_string().as_str()));
                assert_eq!(e["type"].as_str(), Some(want.event_type.as_str()));
                assert_eq!(e["source_type"], "order");
                assert_eq!(e["source_id"].as_str(), Some(want.source_id.as_str()));
                assert_eq!(e["content_type"], "application/json");
                let payload: Value = serde_json::from_slice(&want.payload).unwrap();
                assert_eq!(e["payload"], payload);
                assert!(e.get("payload_base64").is_none());
                let at = e["recorded_at"].as_str().unwrap();
                chrono::DateTime::parse_from_rfc3339(at).unwrap();
            }
        }
        // Two pages of 500, exactly.
        let (_, first) = get(&s.url("/v1/events?limit=500")).await;
        assert_eq!(first["next_offset"].as_i64(), Some(seqs_appended[499]));
        let url = format!("/v1/events?limit=500&offset={}", seqs_appended[499]);
        let (_, second) = get(&s.url(&url)).await;
        assert_eq!(seqs(&second), seqs_appended[500..].to_vec());
        assert_eq!(second["next_offset"].as_i64(), Some(head));
        // No limit: the default of 100.
        let (_, page) = get(&s.url("/v1/events")).await;
        assert_eq!(seqs(&page), seqs_appended[..100].to_vec());
        s.stop().await;
    }
);

each_db!(filters_select_by_type_and_source, |env: Env| async move {
    let appended = events(60);
    let seqs_appended = env.append(&appended).await;
    let head = *seqs_appended.last().unwrap();
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let expect = |keep: &dyn Fn(&NewEvent) -> bool| -> Vec<i64> {
        appended
            .iter()
            .zip(&seqs_appended)
            .filter(|(e, _)| keep(e))
            .map(|(_, s)| *s)
            .collect()
    };
    for (filter, keep) in [
        (
            "&type=b",
            &(|e: &NewEvent| e.event_type == "b") as &dyn Fn(&NewEvent) -> bool,
        ),
        ("&source_type=order", &|_: &NewEvent| true),
        ("&source_type=invoice", &|_: &NewEvent| false),
        ("&source_type=order&source_id=3", &|e: &NewEvent| {
            e.source_id == "3"
        }),
        ("&type=c&source_id=4", &|e: &NewEvent| {
            e.event_type == "c" && e.source_id == "4"
        }),
    ] {
        for limit in [3, 1000] {
            let served = follow(&s, limit, filter, head).await;
            let got: Vec<i64> = served.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
            assert_eq!(got, expect(keep), "{filter} limit {limit}");
        }
    }
    // A filter that matches nothing still moves the reader to the head.
    let (_, page) = get(&s.url("/v1/events?type=nothing")).await;
    assert_eq!(
        (seqs(&page).len(), page["next_offset"].as_i64()),
        (0, Some(head))
    );
    s.stop().await;
});

each_db!(
    the_head_gives_empty_pages_and_the_head_route,
    |env: Env| async move {
        let s = Served::start(&env.db, ApiConfig::default()).await;
        let (status, page) = get(&s.url("/v1/events")).await;
        assert_eq!(status, 200);
        assert_eq!(page, serde_json::json!({"events": [], "next_offset": 0}));
        let (_, head) = get(&s.url("/v1/events/head")).await;
        assert_eq!(head, serde_json::json!({"head": 0}));
        let seqs_appended = env.append(&events(5)).await;
        let head = seqs_appended[4];
        let (_, body) = get(&s.url("/v1/events/head")).await;
        assert_eq!(body["head"].as_i64(), Some(head));
        let (_, page) = get(&s.url(&format!("/v1/events?offset={head}"))).await;
        assert_eq!(seqs(&page), Vec::<i64>::new());
        assert_eq!(page["next_offset"].as_i64(), Some(head));
        // Past the head: empty, and next_offset never goes below the offset.
        let (_, page) = get(&s.url(&format!("/v1/events?offset={}", head + 50))).await;
        assert_eq!(seqs(&page), Vec::<i64>::new());
        assert_eq!(page["next_offset"].as_i64(), Some(head + 50));
        s.stop().await;
    }
);

#[tokio::test]
async fn payloads_follow_one_rule() {
    let env = Env::sqlite().await;
    env.append(&[
        NewEvent::new("json", br#"{"a": [1, 2.50, "x"]}"#.to_vec()),
        NewEvent::new("text", "h\u{e9}llo".as_bytes().to_vec()).with_content_type("text/plain"),
        NewEvent::new("bytes", vec![0, 159, 146, 150])
            .with_content_type("application/octet-stream"),
        NewEvent::new("broken", b"{oops".to_vec()),
    ])
    .await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let text = reqwest::get(s.url("/v1/events"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The JSON document as stored, not re-serialised.
    assert!(
        text.contains(r#""payload":{"a": [1, 2.50, "x"]}"#),
        "{text}"
    );
    let page: Value = serde_json::from_str(&text).unwrap();
    let e = page["events"].as_array().unwrap();
    assert_eq!(e[1]["payload"], "h\u{e9}llo");
    assert!(e[1].get("payload_base64").is_none());
    assert_eq!(e[2]["payload_base64"], "AJ+Slg==");
    assert!(e[2].get("payload").is_none());
    assert_eq!(e[3]["payload_base64"], "e29vcHM=");
    s.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400s_that_name_them() {
    let env = Env::sqlite().await;
    env.append(&events(3)).await;
    let s = Served::start(&env.db, at_most(50)).await;
    for (query, parameter) in [
        ("offset=-1", "offset"),
        ("offset=abc", "offset"),
        ("offset=1e3", "offset"),
        ("offset=", "offset"),
        ("limit=0", "limit"),
        ("limit=51", "limit"),
        ("limit=-1", "limit"),
        ("limit=many", "limit"),
        ("limit=99999999999", "limit"),
        ("type=", "type"),
        ("source_type=", "source_type"),
        ("wait=soon", "wait"),
        ("wait=1h", "wait"),
        ("color=red", "color"),
        ("offset=1&offset=2", "offset"),
        ("offset=0&limit=10&kind=x", "kind"),
    ] {
        let (status, body) = get(&s.url(&format!("/v1/events?{query}"))).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(
            body["parameter"].as_str(),
            Some(parameter),
            "{query}: {body}"
        );
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("`{parameter}`")),
            "{query}: {error}"
        );
    }
    let (_, body) = get(&s.url("/v1/events?limit=51")).await;
    assert!(
        body["error"].as_str().unwrap().contains("from 1 to 50"),
        "{body}"
    );
    // Without `limit`, the smaller of 100 and the maximum.
    let s2 = Served::start(&env.db, at_most(2)).await;
    let (_, page) = get(&s2.url("/v1/events")).await;
    assert_eq!(seqs(&page).len(), 2);
    s.stop().await;
    s2.stop().await;
}

#[tokio::test]
async fn max_limit_is_bounded_by_the_store() {
    let env = Env::sqlite().await;
    for max_limit in [0, ferry_store::event_store::MAX_PAGE + 1] {
        let e = api::router(env.db.clone(), at_most(max_limit)).unwrap_err();
        assert!(matches!(e, ApiConfigError::MaxLimit(_)), "{e}");
    }
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let env = Env::sqlite().await;
    env.append(&events(2)).await;
    let token = "t0ken-with.chars_~+/=";
    let s = Served::start(
        &env.db,
        ApiConfig {
            token: Some(BearerToken::new(token).unwrap()),
            ..ApiConfig::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    for path in ["/v1/events", "/v1/events/head", "/v1/events?limit=0"] {
        let no_token = http.get(s.url(path)).send().await.unwrap();
        assert_eq!(no_token.status().as_u16(), 401, "{path}");
        assert_eq!(
            no_token.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer realm=\"ferry\""
        );
        let body: Value = no_token.json().await.unwrap();
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("bearer token is required"));
        for wrong in [
            "Bearer wrong".to_owned(),
            format!("Bearer {token}x"),
            format!("Basic {token}"),
            format!("Bearer {}", &token[..token.len() - 1]),
            "Bearer".to_owned(),
        ] {
            let r = http
                .get(s.url(path))
                .header("authorization", &wrong)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 401, "{path} {wrong}");
            assert!(r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
    }
    let (status, page) = get_with(http.get(s.url("/v1/events")).bearer_auth(token)).await;
    assert_eq!((status, seqs(&page).len()), (200, 2));
    let (status, _) = get_with(
        http.get(s.url("/v1/events/head"))
            .header("authorization", format!("bearer {token}")),
    )
    .await;
    assert_eq!(status, 200);
    // Authenticated, a bad parameter is still a 400.
    let (status, _) = get_with(http.get(s.url("/v1/events?limit=0")).bearer_auth(token)).await;
    assert_eq!(status, 400);
    // /health stays open for probes.
    let health = http.get(s.url("/health")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    s.stop().await;
}

#[tokio::test]
async fn a_non_loopback_address_needs_a_token() {
    let env = Env::sqlite().await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = api::serve(listener, env.db.clone(), ApiConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServeError::Config(ApiConfigError::TokenRequired(a)) if a.ip().is_unspecified()),
        "{e:?}"
    );
    // With a token it serves, on every interface.
    let config = ApiConfig {
        token: Some(BearerToken::new("secret").unwrap()),
        ..ApiConfig::default()
    };
    let s = Served::start_on("0.0.0.0:0".parse().unwrap(), &env.db, config).await;
    let port = s.addr.port();
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/events"))
        .bearer_auth("secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.stop().await;
}

#[tokio::test]
async fn database_failures_are_503s_without_details() {
    // No Ferry tables: every read fails in the database.
    let env = Env::sqlite_unmigrated().await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    for path in ["/v1/events", "/v1/events/head"] {
        let r = reqwest::get(s.url(path)).await.unwrap();
        assert_eq!(r.status().as_u16(), 503, "{path}");
        assert_eq!(r.headers()["retry-after"], "1");
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "the event store is unavailable; try again later"})
        );
        assert!(
            !text.contains("ferry_events") && !text.contains("no such table"),
            "{text}"
        );
    }
    s.stop().await;
    // A closed pool, likewise.
    let env = Env::sqlite().await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    env.db.close().await;
    let r = reqwest::get(s.url("/v1/events")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    s.stop().await;
}

each_db!(
    a_long_poll_answers_when_an_event_arrives,
    |env: Env| async move {
        let s = Served::start(&env.db, ApiConfig::default()).await;
        // Nothing arrives: the page is held for the wait, then comes back empty.
        let started = Instant::now();
        let (status, page) = get(&s.url("/v1/events?wait=300ms")).await;
        assert_eq!((status, seqs(&page).len()), (200, 0));
        assert!(started.elapsed() >= Duration::from_millis(300));
        // An event of another type does not answer a filtered poll; one of its
        // type does, long before the wait is over.
        let url = s.url("/v1/events?type=wanted&wait=20s");
        let poll = tokio::spawn(async move { get(&url).await });
        s.until("the poll waits", |w| w.held() == 1).await;
        env.append(&[NewEvent::new("other", b"1".to_vec())]).await;
        // Two more empty reads: the second began after the append had
        // committed, so it saw the other event and did not answer.
        let reads = s.waiting.empty_reads();
        s.until("the poll read past the other event", |w| {
            w.empty_reads() >= reads + 2
        })
        .await;
        assert_eq!(s.waiting.held(), 1, "answered before a wanted event");
        assert!(!poll.is_finished(), "answered before a wanted event");
        let seq = env.append(&[NewEvent::new("wanted", b"2".to_vec())]).await[0];
        let (status, page) = tokio::time::timeout(Duration::from_secs(15), poll)
            .await
            .expect("the poll answers once the event is there")
            .unwrap();
        assert_eq!((status, seqs(&page)), (200, vec![seq]));
        assert_eq!(page["next_offset"].as_i64(), Some(seq));
        s.stop().await;
    }
);

#[tokio::test]
async fn shutdown_answers_waiting_polls_at_once() {
    let env = Env::sqlite().await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let url = s.url("/v1/events?wait=30s");
    let poll = tokio::spawn(async move { get(&url).await });
    // The poll must be held by the server before the shutdown, or it is
    // refused.
    s.until("the poll waits", |w| w.held() == 1).await;
    let waiting = s.waiting.clone();
    let stopped = tokio::time::timeout(Duration::from_secs(10), s.stop()).await;
    assert!(
        stopped.is_ok(),
        "the server did not answer the poll at once"
    );
    assert_eq!(waiting.held(), 0);
    let (status, page) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll is answered")
        .unwrap();
    assert_eq!((status, seqs(&page).len()), (200, 0));
}

/// docs/openapi/events.yaml names every parameter the server takes and
/// every field it sends, with the server's bounds.
#[tokio::test]
async fn the_openapi_description_matches_the_server() {
    let yaml = include_str!("../../../../docs/openapi/events.yaml");
    for p in api::params::PARAMETERS {
        assert!(yaml.contains(&format!("- name: {p}\n")), "parameter {p}");
    }
    let max = ferry_store::event_store::MAX_PAGE;
    assert!(yaml.contains(&format!("maximum: {max}\n")));
    assert!(yaml.contains(&format!("default: {}\n", api::DEFAULT_LIMIT)));
    let env = Env::sqlite().await;
    env.append(&[
        NewEvent::new("json", b"{}".to_vec()),
        NewEvent::new("bytes", vec![255]).with_content_type("application/octet-stream"),
    ])
    .await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let (_, page) = get(&s.url("/v1/events")).await;
    let (_, head) = get(&s.url("/v1/events/head")).await;
    let (_, error) = get(&s.url("/v1/events?limit=0")).await;
    let mut fields: Vec<String> = Vec::new();
    for object in [&page, &head, &error]
        .into_iter()
        .chain(page["events"].as_array().unwrap())
    {
        fields.extend(object.as_object().unwrap().keys().cloned());
    }
    for field in fields {
        assert!(
            yaml.contains(&format!("        {field}:\n")),
            "field {field}"
        );
    }
    s.stop().await;
}
