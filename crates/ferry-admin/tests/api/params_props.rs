//! Property test of the GET routes' query strings (issue 13): any query is
//! an answer (200, or the documented 404 for an id in the path that names
//! nothing or an unknown store) or a
//! 400 naming a parameter that was given, never a 500 or a dropped
//! connection. The parameter names come from the served OpenAPI document,
//! so a new parameter is covered as soon as it is documented.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::support::{env, ADMIN_TOKEN};

/// The GET routes, a path parameter's value in place of `{…}`.
fn route() -> impl Strategy<Value = (String, Option<&'static str>)> {
    let segment = prop_oneof![
        Just("1".to_owned()),
        Just("outbox:1".to_owned()),
        Just("inbox:1".to_owned()),
        Just("task:1".to_owned()),
        Just("outbox:9223372036854775808".to_owned()),
        "[a-z:0-9-]{0,10}",
        any::<String>().prop_map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect()),
    ];
    prop_oneof![
        1 => Just(("/v1/admin/overview".to_owned(), None)),
        4 => Just(("/v1/admin/outbox".to_owned(), None)),
        4 => Just(("/v1/admin/dead".to_owned(), None)),
        2 => Just(("/v1/admin/dead/causes".to_owned(), None)),
        2 => Just(("/v1/admin/dead/count".to_owned(), None)),
        1 => Just(("/v1/admin/jobs".to_owned(), None)),
        2 => Just(("/v1/admin/audit".to_owned(), None)),
        1 => segment.clone().prop_map(|s| (format!("/v1/admin/outbox/{s}"), Some("message"))),
        1 => segment.clone().prop_map(|s| (format!("/v1/admin/dead/{s}"), Some("id"))),
        1 => segment.prop_map(|s| (format!("/v1/admin/jobs/{s}"), Some("id"))),
    ]
}

/// Names: the documented ones, in another case, and unknown ones.
fn name(documented: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(documented.clone()),
        1 => proptest::sample::select(documented).prop_map(|n| n.to_uppercase()),
        1 => "[a-z_%0-9]{0,8}",
    ]
}

/// Values: good and bad numbers, times, kinds, statuses, ids and cursors,
/// arbitrary text encoded or raw.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("1000".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        Just("2026-01-01T00:00:00%2B02:00".to_owned()),
        Just("%2B262143-12-31T23:59:59Z".to_owned()),
        Just("outbox".to_owned()),
        Just("outbox,inbox,task".to_owned()),
        Just("pending".to_owned()),
        Just("dead".to_owned()),
        Just("orders".to_owned()),
        Just("ledger".to_owned()),
        Just("outbox:1".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%zz".to_owned()),
        "[a-z:.,0-9-]{1,8}",
        any::<String>().prop_map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect()),
    ]
}

fn query(documented: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::collection::vec((name(documented), value()), 0..5).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        }),
        1 => "[a-z=&%0-9+]{0,16}",
    ]
}

/// Every query parameter the OpenAPI document names.
fn documented(openapi: &Value) -> Vec<String> {
    let mut names: Vec<String> = openapi["paths"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|path| path["get"]["parameters"].as_array())
        .flatten()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn any_query_is_an_answer_or_a_400_naming_a_given_parameter() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (env, documented) = rt.block_on(async {
        let env = env().await;
        let messages: Vec<_> = (0..3)
            .map(|i| ferry_core::Message::event("props.topic", format!("{{\"i\":{i}}}")))
            .collect();
        env.db.enqueue(&messages).await.unwrap();
        let openapi = env.get("/v1/admin/openapi.json").await;
        let documented = documented(&openapi);
        (env, documented)
    });
    assert!(documented.len() > 5, "{documented:?}");
    let mut runner = TestRunner::new(Config {
        cases: 192,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (route(), query(documented));
    let result = runner.run(&strategy, |((path, path_parameter), q)| {
        let target = format!("{path}?{q}");
        let a = rt.block_on(env.call("get", &target, Some(ADMIN_TOKEN), None));
        let given: Vec<String> = url::form_urlencoded::parse(q.as_bytes())
            .map(|(n, _)| n.into_owned())
            .collect();
        match a.status {
            200 => prop_assert!(!a.body.is_null(), "GET {}: not json", target),
            // Documented: an id in the path that names nothing, or an
            // unknown store.
            404 => prop_assert!(
                path_parameter.is_some() || given.iter().any(|n| n == "store"),
                "GET {}: {}",
                target,
                a.body
            ),
            400 => {
                let parameter = a.body["parameter"].as_str().unwrap_or_default();
                let error = a.body["error"].as_str().unwrap_or_default();
                prop_assert!(error.contains(parameter), "GET {}: {}", target, a.body);
                let mut given = given.clone();
                given.extend(path_parameter.map(str::to_owned));
                prop_assert!(
                    given.iter().any(|n| n == parameter),
                    "GET {}: names `{}`, not a given parameter: {}",
                    target,
                    parameter,
                    a.body
                );
            }
            other => prop_assert!(false, "GET {}: {} {}", target, other, a.body),
        }
        Ok(())
    });
    rt.block_on(async move { drop(env) });
    if let Err(e) = result {
        panic!("{e}");
    }
}
