//! Property test of `GET /v1/events`' query string (issue 13): any query
//! is a page (200) or a 400 that names the parameter at fault, never a 500
//! or a dropped connection; served on a loopback port over SQLite, as the
//! other API tests.

use crate::api_common;

use api_common::{events, Env};
use ferry_events::api::{params::PARAMETERS, ApiConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// Names: the API's, in another case, and unknown ones.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(PARAMETERS.to_vec()).prop_map(str::to_owned),
        1 => proptest::sample::select(PARAMETERS.to_vec()).prop_map(str::to_uppercase),
        1 => "[a-z_%0-9]{0,8}",
    ]
}

/// Values: good and bad numbers, durations short enough not to hold the
/// test (a long wait over the head would), arbitrary text encoded or raw.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_owned()),
        Just("1".to_owned()),
        Just("3".to_owned()),
        Just("+1".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("4294967296".to_owned()),
        Just("1e3".to_owned()),
        Just("10ms".to_owned()),
        Just("0s".to_owned()),
        Just("99999h".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%zz".to_owned()),
        Just("a%2Cb".to_owned()),
        "[a-z.]{1,6}",
        any::<String>().prop_map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        5 => proptest::collection::vec((name(), value()), 0..5).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        }),
        1 => "[a-z=&%0-9+]{0,16}",
    ]
}

#[test]
fn any_query_is_a_page_or_a_400_naming_the_parameter() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_env, served) = rt.block_on(async {
        let env = Env::sqlite().await;
        env.append(&events(5)).await;
        let served = api_common::Served::start(&env.db, ApiConfig::default()).await;
        (env, served)
    });
    let http = reqwest::Client::new();
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&query(), |q| {
        let url = served.url(&format!("/v1/events?{q}"));
        let (status, body) = rt.block_on(async {
            let response = http.get(&url).send().await.expect("an answer");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("a json body");
            (status, body)
        });
        match status {
            200 => prop_assert!(body["events"].is_array(), "{}", body),
            400 => {
                // A parameter of an empty name (`=1`) is named `` all the same.
                let parameter = body["parameter"].as_str().expect("a parameter");
                let error = body["error"].as_str().unwrap_or_default();
                prop_assert!(error.contains(&format!("`{parameter}`")), "{}: {}", q, body);
                let given: Vec<String> = url::form_urlencoded::parse(q.as_bytes())
                    .map(|(n, _)| n.into_owned())
                    .collect();
                prop_assert!(given.iter().any(|n| n == parameter), "{}: {}", q, body);
            }
            other => prop_assert!(false, "{} for {}: {}", other, q, body),
        }
        Ok(())
    });
    rt.block_on(served.stop());
    if let Err(e) = result {
        panic!("{e}");
    }
}
