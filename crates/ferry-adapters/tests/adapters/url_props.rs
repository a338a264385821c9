//! Property tests of every sink and broker URL (issue 13): any text is a
//! configuration or an error, never a panic; a parameter the adapter
//! refuses is named in the error; a URL shown in an error or a log keeps no
//! secret ([`ferry_core::redact_url`]).

use std::error::Error;

use ferry_adapters::{SinkConfig, SubscriberConfig};
use proptest::prelude::*;

/// The error and its sources, as one line.
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A valid URL of each scheme, and the query parameters its adapter reads.
const ADAPTERS: &[(&str, &[&str])] = &[
    ("http://127.0.0.1:8080/hooks", &[]),
    (
        "nats://127.0.0.1:4222",
        &[
            "subject_prefix",
            "stream",
            "stream_subjects",
            "ack_timeout",
            "ack_wait",
            "source",
        ],
    ),
    (
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        &["exchange", "timeout", "source", "queue_type"],
    ),
    (
        "redis://127.0.0.1:6379/0",
        &["stream_prefix", "claim_idle", "timeout", "maxlen", "source"],
    ),
    (
        "kafka://127.0.0.1:19092",
        &[
            "topic_prefix",
            "create_topics",
            "partitions",
            "replication_factor",
            "delivery_timeout",
            "join_timeout",
            "source",
        ],
    ),
    (
        "sqs+http://key:secret@127.0.0.1:19325",
        &[
            "region",
            "queue_prefix",
            "fifo",
            "create_queues",
            "dead_letter_queue",
            "max_receive_count",
            "visibility_timeout",
            "wait_time",
            "request_timeout",
            "source",
        ],
    ),
    ("null://", &[]),
];

/// Values a setting may be given: good ones, and ones that are wrong for
/// some (not numbers, not durations, zero, huge, empty, not UTF-8 once
/// percent-decoded).
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("5s".to_owned()),
        Just("0s".to_owned()),
        Just("10ms".to_owned()),
        Just("999999999999999999999d".to_owned()),
        Just("18446744073709551615s".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("3".to_owned()),
        Just("4294967296".to_owned()),
        Just("true".to_owned()),
        Just("yes".to_owned()),
        Just("quorum".to_owned()),
        Just("ferry.".to_owned()),
        Just("a.*.>".to_owned()),
        Just("%FF%FE".to_owned()),
        Just("%".to_owned()),
        "[a-zA-Z0-9._*>, /-]{0,10}",
        "\\PC{0,6}",
    ]
}

/// URL-shaped text: a scheme (known or not), an authority, a path, and a
/// query of parameters any adapter reads or none does.
fn url_like() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        "(http|https|nats|tls|amqp|amqps|redis|rediss|kafka|sqs|sqs\\+http|null)",
        "[a-z][a-z0-9+.-]{0,6}",
    ];
    let authority = prop_oneof![
        Just(String::new()),
        "([a-z]{1,4}(:[a-z%0-9]{0,4})?@)?(127\\.0\\.0\\.1|localhost|\\[::1\\]|[a-z0-9.-]{0,8})(:[0-9]{0,6})?",
        "[a-z0-9.:,@\\[\\]%-]{0,16}",
    ];
    let path = "(/|/%2f|/[0-9a-z]{0,3}|/[a-z]/[a-z])?";
    let names: Vec<&'static str> = ADAPTERS
        .iter()
        .flat_map(|(_, n)| n.iter().copied())
        .collect();
    let name = prop_oneof![
        4 => proptest::sample::select(names),
        1 => "[a-z_.]{0,8}".prop_map(|s| Box::leak(s.into_boxed_str()) as &str),
    ];
    let query = proptest::collection::vec((name, value()), 0..4);
    (scheme, authority, path, query, "(#[a-z]{0,3})?").prop_map(
        |(scheme, authority, path, query, fragment)| {
            let query: Vec<String> = query.into_iter().map(|(n, v)| format!("{n}={v}")).collect();
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            format!("{scheme}://{authority}{path}{query}{fragment}")
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_a_config_or_an_error(url in prop_oneof![url_like(), any::<String>()]) {
        match SinkConfig::from_url(&url) {
            Ok(config) => {
                prop_assert!(config.validate().is_ok());
                let _ = (config.kind(), config.longest_call(), format!("{config:?}"));
            }
            Err(e) => prop_assert!(!chain(&e).is_empty()),
        }
        if let Ok(config) = SubscriberConfig::from_url(&url) {
            prop_assert!(config.validate().is_ok());
        }
        // The redacted form of any text is computed without a panic.
        let _ = ferry_core::redact_url(&url);
    }

    #[test]
    fn a_refused_parameter_is_named(
        adapter in 0..ADAPTERS.len(),
        pick in any::<proptest::sample::Index>(),
        unknown in proptest::option::weighted(0.2, "[a-z]{1,6}_[a-z]{1,6}"),
        value in value(),
    ) {
        let (base, names) = ADAPTERS[adapter];
        prop_assume!(!names.is_empty());
        let name = unknown.unwrap_or_else(|| names[pick.index(names.len())].to_owned());
        let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let url = format!("{base}?{name}={value}");
        if let Err(e) = SinkConfig::from_url(&url) {
            let text = chain(&e);
            prop_assert!(text.contains(&format!("`{name}`")), "{url}: {text}");
        }
        // Twice: refused as repeated, or (a librdkafka property given
        // twice) named all the same.
        let twice = format!("{base}?{name}={value}&{name}={value}");
        let e = SinkConfig::from_url(&twice).expect_err("a parameter given twice is refused");
        let text = chain(&e);
        prop_assert!(text.contains(&format!("`{name}`")), "{twice}: {text}");
    }

    #[test]
    fn a_redacted_url_keeps_no_secret(
        scheme in "(postgres|mysql|amqp|https|sqs\\+http|redis)",
        user in "[a-z]{1,6}",
        password in "[A-Z][A-Za-z0-9]{5,12}",
        secret_key in "(password|token|api_key|access_token|sig|Secret|SESSION)",
        secret in "[A-Z][A-Za-z0-9]{5,12}",
        other in "[a-z]{1,4}",
    ) {
        let url = format!("{scheme}://{user}:{password}@host:1/db?{secret_key}={secret}&team={other}");
        let shown = ferry_core::redact_url(&url);
        prop_assert!(!shown.contains(&password), "{} shows the password", shown);
        prop_assert!(!shown.contains(&secret), "{} shows the secret", shown);
        prop_assert!(shown.contains(&format!("team={other}")), "{}", shown);
        // A token given as the user name alone.
        let token = format!("{scheme}://{password}@host/x");
        prop_assert!(!ferry_core::redact_url(&token).contains(&password));
        // Text that is not a URL loses its user information all the same.
        let broken = format!("{scheme}://{user}:{password}@ho st:99999/db?{secret_key}={secret}");
        let shown = ferry_core::redact_url(&broken);
        prop_assert!(!shown.contains(&password) && !shown.contains(&secret), "{}", shown);
    }
}
