//! The OpenAPI document describes exactly what the router serves.

use std::collections::BTreeSet;

use ferry_admin::api::served_routes;
use serde_json::Value;

use crate::support::env;

#[tokio::test]
async fn the_document_describes_every_served_route_and_parameter_and_nothing_else() {
    let env = env().await;
    let doc = env.call("get", "/v1/admin/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.headers["content-type"], "application/json");
    let doc = doc.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let query: BTreeSet<String> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            let path_params: BTreeSet<String> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            let in_template: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(str::to_owned)
                .collect();
            assert_eq!(path_params, in_template, "{method} {path}: path parameters");
            assert!(
                op["responses"]["200"].is_object() || op["responses"]["202"].is_object(),
                "{method} {path}"
            );
            if method == "post" {
                assert!(
                    op["responses"]["403"].is_object(),
                    "{method} {path} documents 403"
                );
            }
            documented.insert((method.clone(), path.clone(), query));
        }
    }
    let served: BTreeSet<(String, String, BTreeSet<String>)> = served_routes()
        .into_iter()
        .map(|r| {
            (
                r.method.to_owned(),
                r.path,
                r.query.iter().map(|q| (*q).to_owned()).collect(),
            )
        })
        .collect();
    assert_eq!(documented, served);
    // Every schema referenced is defined.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "{r} is not defined");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn answers_have_the_properties_the_document_requires() {
    let env = env().await;
    env.dead_outbox("orders", 2).await;
    env.dead_letter(crate::support::CONSUMER, "handler failed: timeout")
        .await;
    env.task_failure("send-invoice", "smtp timeout").await;
    let doc = env.get("/v1/admin/openapi.json").await;
    let a = env
        .post(
            "/v1/admin/dead/discard",
            Some(serde_json::json!({"filter": {"kinds": ["task"]}, "confirm_count": 1})),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    check(
        &doc,
        &doc["paths"]["/v1/admin/dead/discard"]["post"],
        "202",
        &a.body,
    );
    let job = a.body["job"]["id"].as_str().unwrap().to_owned();
    crate::support::wait_for(
        "the job to finish",
        std::time::Duration::from_secs(10),
        || async { !env.get(&format!("/v1/admin/jobs/{job}")).await["finished_at"].is_null() },
    )
    .await;
    let seq = env.get("/v1/admin/outbox?limit=1").await["rows"][0]["seq"].clone();
    let dead = env.get("/v1/admin/dead?limit=1").await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (template, path) in [
        ("/v1/admin/overview", "/v1/admin/overview".to_owned()),
        ("/v1/admin/outbox", "/v1/admin/outbox".to_owned()),
        (
            "/v1/admin/outbox/{message}",
            format!("/v1/admin/outbox/{seq}"),
        ),
        ("/v1/admin/dead", "/v1/admin/dead".to_owned()),
        ("/v1/admin/dead/causes", "/v1/admin/dead/causes".to_owned()),
        ("/v1/admin/dead/count", "/v1/admin/dead/count".to_owned()),
        ("/v1/admin/dead/{id}", format!("/v1/admin/dead/{dead}")),
        ("/v1/admin/jobs", "/v1/admin/jobs".to_owned()),
        ("/v1/admin/jobs/{id}", format!("/v1/admin/jobs/{job}")),
        ("/v1/admin/audit", "/v1/admin/audit".to_owned()),
    ] {
        let body = env.get(&path).await;
        check(&doc, &doc["paths"][template]["get"], "200", &body);
    }
    let a = env
        .call(
            "get",
            "/v1/admin/outbox?limit=0",
            Some(crate::support::ADMIN_TOKEN),
            None,
        )
        .await;
    check(
        &doc,
        &doc["paths"]["/v1/admin/outbox"]["get"],
        "400",
        &a.body,
    );
}

/// Checks `body` against the schema `op` documents for `status`: every
/// required property present, recursively (first element of arrays).
fn check(doc: &Value, op: &Value, status: &str, body: &Value) {
    let schema = &op["responses"][status]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "no schema for {status}: {op}");
    conforms(doc, schema, body, "$");
}

fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().for_each(|s| conforms(doc, s, value, at));
    }
    if value.is_null() {
        return;
    }
    if let Some(required) = schema["required"].as_array() {
        let object = value
            .as_object()
            .unwrap_or_else(|| panic!("{at}: not an object: {value}"));
        for key in required {
            let key = key.as_str().unwrap();
            assert!(object.contains_key(key), "{at}: `{key}` missing in {value}");
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (key, s) in props {
            if let Some(v) = value.get(key) {
                conforms(doc, s, v, &format!("{at}.{key}"));
            }
        }
    }
    if let (Some(items), Some(first)) = (
        schema.get("items"),
        value.as_array().and_then(|a| a.first()),
    ) {
        conforms(doc, items, first, &format!("{at}[0]"));
    }
}
