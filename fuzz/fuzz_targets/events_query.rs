//! The query string of the events API's `GET /v1/events`
//! (`ferry_events::api::params::parse`), read with the API's default
//! bounds and with the tightest ones: a request within the bounds or a
//! `BadParameter` with a message. Round trip: a parsed request written
//! back as a query string parses to the same request.
#![no_main]

use std::time::Duration;

use ferry_events::api::params::{parse, Bounds};
use ferry_events::api::{DEFAULT_LIMIT, DEFAULT_MAX_LIMIT, DEFAULT_MAX_WAIT};
use libfuzzer_sys::fuzz_target;

fn check(raw: &str, bounds: Bounds) {
    let request = match parse(raw, bounds) {
        Ok(request) => request,
        Err(e) => {
            assert!(!e.message.is_empty(), "{raw:?}: an error without a message");
            return;
        }
    };
    let query = &request.query;
    assert!(query.offset >= 0);
    assert!(query.limit == bounds.default_limit || (1..=bounds.max_limit).contains(&query.limit));
    assert!(request.wait <= bounds.max_wait);

    let mut written = url::form_urlencoded::Serializer::new(String::new());
    if query.offset != 0 {
        written.append_pair("offset", &query.offset.to_string());
    }
    if query.limit != bounds.default_limit {
        written.append_pair("limit", &query.limit.to_string());
    }
    for (name, value) in [
        ("type", &query.event_type),
        ("source_type", &query.source_type),
        ("source_id", &query.source_id),
    ] {
        if let Some(value) = value {
            written.append_pair(name, value);
        }
    }
    if !request.wait.is_zero() {
        written.append_pair(
            "wait",
            &humantime::format_duration(request.wait).to_string(),
        );
    }
    let written = written.finish();
    let again = parse(&written, bounds).unwrap_or_else(|e| panic!("{raw:?} -> {written:?}: {e}"));
    assert_eq!(again, request, "{raw:?} -> {written:?}");
}

fuzz_target!(|raw: &str| {
    check(
        raw,
        Bounds {
            default_limit: DEFAULT_LIMIT.min(DEFAULT_MAX_LIMIT),
            max_limit: DEFAULT_MAX_LIMIT,
            max_wait: DEFAULT_MAX_WAIT,
        },
    );
    check(
        raw,
        Bounds {
            default_limit: 1,
            max_limit: 1,
            max_wait: Duration::ZERO,
        },
    );
});
