//! 401 without or with a wrong token, 403 for read-only on every change,
//! and read-only may read.

use ferry_admin::api::served_routes;
use serde_json::json;

use crate::support::{env, ADMIN_TOKEN, PIPELINE, VIEWER_TOKEN};

/// A concrete path for a route's template.
fn concrete(path: &str) -> String {
    path.replace("/jobs/{id}", "/jobs/0190b6c4-8f00-7000-8000-000000000000")
        .replace("{message}", "1")
        .replace("{id}/", "outbox:1/")
        .replace("{id}", "outbox:1")
        .replace("{name}", PIPELINE)
}

#[tokio::test]
async fn every_route_but_the_document_needs_a_valid_bearer_token() {
    let env = env().await;
    let routes = served_routes();
    assert!(routes.len() >= 17, "{routes:?}");
    for route in routes {
        let path = concrete(&route.path);
        if route.path.ends_with("/openapi.json") {
            let a = env.call(route.method, &path, None, None).await;
            assert_eq!(a.status, 200, "the document is public");
            continue;
        }
        let a = env.call(route.method, &path, None, None).await;
        assert_eq!(a.status, 401, "{} {path} without a token", route.method);
        assert_eq!(
            a.headers["www-authenticate"],
            "Bearer realm=\"ferry-admin\""
        );
        assert!(a.body["error"]
            .as_str()
            .unwrap()
            .contains("bearer token is required"));
        let a = env
            .call(route.method, &path, Some("not-the-token"), None)
            .await;
        assert_eq!(a.status, 401, "{} {path} with a wrong token", route.method);
        assert!(a.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        // A console cookie is no credential here.
        let a = env
            .http
            .request(
                route.method.to_uppercase().parse().unwrap(),
                format!("{}{path}", env.base),
            )
            .header("cookie", format!("ferry_session={ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            a.status().as_u16(),
            401,
            "{} {path} with a cookie",
            route.method
        );
    }
}

#[tokio::test]
async fn a_read_only_token_may_read_but_every_change_is_403_and_changes_nothing() {
    let env = env().await;
    env.dead_outbox("orders", 3).await;
    let letter = env.dead_letter("billing", "handler failed: timeout").await;
    for route in served_routes() {
        let path = concrete(&route.path);
        let body = (route.path.ends_with("/dead/replay") || route.path.ends_with("/dead/discard"))
            .then(|| json!({"confirm_count": 4}));
        let a = env
            .call(route.method, &path, Some(VIEWER_TOKEN), body)
            .await;
        match route.method {
            "post" => {
                assert_eq!(a.status, 403, "POST {path} as read-only: {}", a.body);
                assert!(a.body["error"]
                    .as_str()
                    .unwrap()
                    .contains("`grafana` is read-only"));
            }
            _ if path.contains("/jobs/") => assert_eq!(a.status, 404, "{path}"),
            _ => assert_eq!(a.status, 200, "GET {path} as read-only: {}", a.body),
        }
    }
    // Nothing changed: still 3 dead outbox messages and the letter, no
    // pause, no job, no audit entry.
    let count = env.get("/v1/admin/dead/count").await;
    assert_eq!(count["count"], 4);
    assert!(env.db.dead_letter(letter.id).await.unwrap().is_some());
    assert!(env.db.paused().await.unwrap().is_empty());
    assert_eq!(env.get("/v1/admin/jobs").await["jobs"], json!([]));
    assert!(env.audit().await.is_empty());
    // The admin token may change.
    let a = env
        .call(
            "post",
            "/v1/admin/dead/outbox:1/discard",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}
