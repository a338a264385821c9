//! 400 naming each bad parameter, and 404s.

use serde_json::json;

use crate::support::env;

#[tokio::test]
async fn every_bad_query_parameter_is_a_400_naming_it() {
    let env = env().await;
    let cases: &[(&str, &str)] = &[
        ("/v1/admin/overview?x=1", "x"),
        ("/v1/admin/outbox?status=lost", "status"),
        ("/v1/admin/outbox?topic=", "topic"),
        ("/v1/admin/outbox?key=a&key=b", "key"),
        ("/v1/admin/outbox?id=42", "id"),
        ("/v1/admin/outbox?created_from=yesterday", "created_from"),
        (
            "/v1/admin/outbox?created_to=2026-13-01T00:00:00Z",
            "created_to",
        ),
        ("/v1/admin/outbox?before=-3", "before"),
        ("/v1/admin/outbox?before=abc", "before"),
        ("/v1/admin/outbox?limit=0", "limit"),
        ("/v1/admin/outbox?limit=1001", "limit"),
        ("/v1/admin/outbox?limit=ten", "limit"),
        ("/v1/admin/outbox?store=", "store"),
        ("/v1/admin/outbox?colour=red", "colour"),
        ("/v1/admin/outbox/abc", "message"),
        ("/v1/admin/outbox/-1", "message"),
        ("/v1/admin/outbox/1?limit=5", "limit"),
        ("/v1/admin/dead?kind=inbox", "kind"),
        ("/v1/admin/dead?kind=outbox,nope", "kind"),
        ("/v1/admin/dead?failed_from=now", "failed_from"),
        ("/v1/admin/dead?failed_to=1700000000", "failed_to"),
        ("/v1/admin/dead?after=page-2", "after"),
        ("/v1/admin/dead?limit=5000", "limit"),
        ("/v1/admin/dead?name=a&name=b", "name"),
        ("/v1/admin/dead?cause=", "cause"),
        ("/v1/admin/dead/causes?limit=5", "limit"),
        ("/v1/admin/dead/causes?kind=x", "kind"),
        ("/v1/admin/dead/count?after=x", "after"),
        ("/v1/admin/dead/count?failed_from=x", "failed_from"),
        ("/v1/admin/dead/outbox:x", "id"),
        ("/v1/admin/dead/inbox:1", "id"),
        ("/v1/admin/dead/outbox:1?kind=task", "kind"),
        ("/v1/admin/jobs?limit=3", "limit"),
        ("/v1/admin/jobs/42", "id"),
        ("/v1/admin/audit?before=0", "before"),
        ("/v1/admin/audit?limit=-1", "limit"),
        ("/v1/admin/audit?actor=alice", "actor"),
    ];
    for (path, parameter) in cases {
        let a = env
            .call("get", path, Some(crate::support::ADMIN_TOKEN), None)
            .await;
        assert_eq!(a.status, 400, "GET {path}: {}", a.body);
        assert_eq!(a.body["parameter"], *parameter, "GET {path}: {}", a.body);
        assert!(
            a.body["error"].as_str().unwrap().contains(parameter),
            "{}",
            a.body
        );
    }
    let posts: &[(&str, Option<serde_json::Value>, &str)] = &[
        ("/v1/admin/dead/outbox:x/replay", None, "id"),
        ("/v1/admin/dead/consumer:1/discard", None, "id"),
        ("/v1/admin/dead/outbox:1/replay?force=1", None, "force"),
        ("/v1/admin/dead/replay", None, "body"),
        (
            "/v1/admin/dead/replay",
            Some(json!({"filter": {}})),
            "confirm_count",
        ),
        (
            "/v1/admin/dead/discard",
            Some(json!({"confirm_count": "all"})),
            "confirm_count",
        ),
        (
            "/v1/admin/dead/discard",
            Some(json!({"confirm_count": 1, "filter": {"kinds": ["inbox"]}})),
            "filter.kinds",
        ),
        (
            "/v1/admin/dead/replay",
            Some(json!({"confirm_count": 1, "filter": {"failed_to": "soon"}})),
            "filter.failed_to",
        ),
        (
            "/v1/admin/dead/replay",
            Some(json!({"confirm_count": 1, "filter": {"topic": "x"}})),
            "filter.topic",
        ),
        (
            "/v1/admin/dead/replay",
            Some(json!({"confirm_count": 1, "dry_run": true})),
            "dry_run",
        ),
        (
            "/v1/admin/dead/replay?store=",
            Some(json!({"confirm_count": 1})),
            "store",
        ),
        ("/v1/admin/pipelines/orders-relay/pause?now=1", None, "now"),
    ];
    for (path, body, parameter) in posts {
        let a = env.post(path, body.clone()).await;
        assert_eq!(a.status, 400, "POST {path}: {}", a.body);
        assert_eq!(a.body["parameter"], *parameter, "POST {path}: {}", a.body);
    }
    // The limit bounds themselves are fine.
    for limit in [1, 1000] {
        env.get(&format!("/v1/admin/outbox?limit={limit}")).await;
        env.get(&format!("/v1/admin/dead?limit={limit}")).await;
        env.get(&format!("/v1/admin/audit?limit={limit}")).await;
    }
}

#[tokio::test]
async fn unknown_stores_items_jobs_and_pipelines_are_404s() {
    let env = env().await;
    let token = Some(crate::support::ADMIN_TOKEN);
    let gets = [
        "/v1/admin/outbox?store=nope",
        "/v1/admin/outbox/12345",
        "/v1/admin/outbox/0190b6c4-8f00-7000-8000-000000000000",
        "/v1/admin/dead?store=nope",
        "/v1/admin/dead/causes?store=nope",
        "/v1/admin/dead/count?store=nope",
        "/v1/admin/dead/outbox:12345",
        "/v1/admin/dead/consumer:0190b6c4-8f00-7000-8000-000000000000",
        "/v1/admin/dead/forwarder:audit-feed:9",
        "/v1/admin/dead/task:0190b6c4-8f00-7000-8000-000000000000",
        "/v1/admin/jobs/0190b6c4-8f00-7000-8000-000000000000",
        "/v1/admin/audit?store=nope",
    ];
    for path in gets {
        let a = env.call("get", path, token, None).await;
        assert_eq!(a.status, 404, "GET {path}: {}", a.body);
        assert!(a.body["error"].is_string());
    }
    let a = env
        .call("get", "/v1/admin/dead?store=nope", token, None)
        .await;
    assert_eq!(
        a.body["error"], "no store `nope`; known: orders, ledger",
        "the 404 names the store"
    );
    for path in [
        "/v1/admin/dead/outbox:12345/replay",
        "/v1/admin/dead/consumer:0190b6c4-8f00-7000-8000-000000000000/replay",
        "/v1/admin/dead/forwarder:audit-feed:9/replay",
        "/v1/admin/dead/task:0190b6c4-8f00-7000-8000-000000000000/replay",
        "/v1/admin/dead/outbox:12345/discard",
        "/v1/admin/dead/outbox:1/discard?store=nope",
        "/v1/admin/pipelines/nope/pause",
        "/v1/admin/pipelines/nope/resume",
    ] {
        let a = env.post(path, None).await;
        assert_eq!(a.status, 404, "POST {path}: {}", a.body);
    }
    let a = env
        .post(
            "/v1/admin/dead/replay?store=nope",
            Some(json!({"confirm_count": 0})),
        )
        .await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(
        env.audit().await.is_empty(),
        "nothing was changed, nothing audited"
    );
}
