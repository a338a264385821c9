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
