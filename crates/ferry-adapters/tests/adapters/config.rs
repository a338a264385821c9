//! Choosing a sink from a URL or from the configuration file.

use std::error::Error;
use std::time::Duration;

use ferry_adapters::{HttpSinkConfig, NatsSinkConfig, NullSinkConfig, SinkConfig, SinkConfigError};
use ferry_core::Sink;

fn nats(url: &str) -> NatsSinkConfig {
    match SinkConfig::from_url(url).unwrap() {
        SinkConfig::Nats(config) => config,
        other => panic!("not nats: {other:?}"),
    }
}

#[test]
fn http_url_is_the_endpoint() {
    let url = "https://example.com/hooks/ferry?token=abc";
    let config = SinkConfig::from_url(url).unwrap();
    assert_eq!(
        config,
        SinkConfig::Http(HttpSinkConfig::new(url.parse().unwrap()))
    );
    let SinkConfig::Http(config) = config else {
        unreachable!()
    };
    assert_eq!(config.url.as_str(), url);
    let debug = format!("{config:?}");
    assert!(!debug.contains("abc"), "query values stay out: {debug}");
    assert!(debug.contains("token=***"), "{debug}");
    assert_eq!(config.timeout, Duration::from_secs(5));
    assert_eq!(
        SinkConfig::Http(config.clone()).longest_call(),
        Duration::from_secs(20)
    );
    assert_eq!(config.concurrency, 32);
    assert_eq!(config.source, "/ferry");
    assert!(config.headers.is_empty());
    assert!(SinkConfig::from_url("http://127.0.0.1:8080").is_ok());
}

#[test]
fn nats_url_carries_the_settings() {
    let config = nats(
        "nats://127.0.0.1:4222?subject_prefix=ferry.&stream=FERRY&ack_timeout=2s&source=/ferry/orders",
    );
    assert_eq!(config.url.as_str(), "nats://127.0.0.1:4222");
    assert_eq!(config.subject_prefix, "ferry.");
    assert_eq!(config.stream.as_deref(), Some("FERRY"));
    assert!(config.stream_subjects.is_empty());
    assert_eq!(config.ack_timeout, Duration::from_secs(2));
    assert_eq!(config.source, "/ferry/orders");

    let config = nats("nats://localhost");
    assert_eq!(
        config,
        NatsSinkConfig::new("nats://localhost".parse().unwrap())
    );
    assert_eq!(config.ack_timeout, Duration::from_secs(5));

    let config = nats("nats://localhost:4222?stream=ALL&stream_subjects=orders.>,coupons.*");
    assert_eq!(config.stream_subjects, ["orders.>", "coupons.*"]);
}

#[test]
fn null_url() {
    assert_eq!(
        SinkConfig::from_url("null://").unwrap(),
        SinkConfig::Null(NullSinkConfig {})
    );
    assert!(SinkConfig::from_url("null://somewhere").is_err());
}

#[test]
fn bad_urls_say_what_is_wrong() {
    let cases = [
        ("not a url", "invalid sink url"),
        (
            "ftp://example.com",
            "unknown sink url scheme `ftp` (expected http, https, nats, amqp, redis, kafka, sqs, sqs+http or null)",
        ),
        (
            "nats://localhost?subjectprefix=x.",
            "unknown parameter `subjectprefix` in nats sink url",
        ),
        (
            "nats://localhost?stream=A&stream=B",
            "parameter `stream` given more than once in nats sink url",
        ),
        (
            "nats://localhost?ack_timeout=soon",
            "invalid `ack_timeout` for nats sink: `soon` is not a duration such as `5s`",
        ),
        (
            "nats://localhost?ack_timeout=0s",
            "invalid `ack_timeout` for nats sink: must be more than zero",
        ),
        (
            "nats://localhost?subject_prefix=ferry",
            "invalid `subject_prefix` for nats sink: must be subject tokens followed by `.`, such as `ferry.`",
        ),
        (
            "nats://localhost?stream=FERRY",
            "invalid `stream_subjects` for nats sink: required when `stream` is set and `subject_prefix` is empty",
        ),
        (
            "nats://localhost?subject_prefix=x.&stream=A.B",
            "invalid `stream` for nats sink: must be non-empty, without whitespace, `.`, `*`, `>`, `/` or `\\`",
        ),
        (
            "nats://localhost?source=",
            "invalid `source` for nats sink: must not be empty",
        ),
        ("null://x", "invalid `url` for null sink: must be just `null://`"),
    ];
    for (url, expected) in cases {
        let error = SinkConfig::from_url(url).unwrap_err();
        assert_eq!(error.to_string(), expected, "{url}");
    }
    let error = SinkConfig::from_url("not a url").unwrap_err();
    assert!(matches!(error, SinkConfigError::Url(_)));
    assert!(error.source().is_some());
    let error = SinkConfig::from_url("nats://localhost?ack_timeout=soon").unwrap_err();
    assert!(error.source().is_some());
}

#[test]
fn config_file_tables() {
    let config: SinkConfig = toml::from_str(
        r#"
        type = "http"
        url = "https://example.com/hook"
        timeout = "3s"
        concurrency = 4
        source = "/ferry/orders"
        headers = { Authorization = "Bearer s3cret" }
        "#,
    )
    .unwrap();
    let SinkConfig::Http(http) = &config else {
        panic!("{config:?}")
    };
    assert_eq!(http.timeout, Duration::from_secs(3));
    assert_eq!(http.concurrency, 4);
    assert_eq!(http.headers["Authorization"], "Bearer s3cret");
    assert!(
        !format!("{http:?}").contains("s3cret"),
        "header values stay out of debug output"
    );

    let config: SinkConfig = toml::from_str(
        r#"
        type = "nats"
        url = "nats://127.0.0.1:4222"
        subject_prefix = "ferry."
        stream = "FERRY"
        ack_timeout = "1s"
        "#,
    )
    .unwrap();
    let mut expected = NatsSinkConfig::new("nats://127.0.0.1:4222".parse().unwrap());
    expected.subject_prefix = "ferry.".into();
    expected.stream = Some("FERRY".into());
    expected.ack_timeout = Duration::from_secs(1);
    assert_eq!(config, SinkConfig::Nats(expected));
    assert_eq!(config.longest_call(), Duration::from_secs(1));
    assert_eq!(config.kind(), "nats");
    config.validate().unwrap();

    let config: SinkConfig = toml::from_str(r#"type = "null""#).unwrap();
    assert_eq!(config, SinkConfig::Null(NullSinkConfig {}));
    assert_eq!(config.longest_call(), Duration::ZERO);
}

#[test]
fn config_file_rejects_unknown_fields_and_types() {
    let cases = [
        "type = \"http\"\nurl = \"https://example.com\"\ntimout = \"3s\"",
        "type = \"nats\"\nurl = \"nats://localhost\"\nprefix = \"x.\"",
        "type = \"null\"\nurl = \"null://\"",
        "type = \"kafka\"",
        "url = \"https://example.com\"",
    ];
    for case in cases {
        let error = toml::from_str::<SinkConfig>(case).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("unknown field")
                || text.contains("unknown variant")
                || text.contains("missing field"),
            "{case}: {text}"
        );
    }
}

#[tokio::test]
async fn build_starts_the_sink() {
    for (url, name) in [
        ("null://", "null"),
        ("http://127.0.0.1:9/hook", "http"),
        ("nats://127.0.0.1:4222", "nats"),
    ] {
        let sink = SinkConfig::from_url(url).unwrap().build().await.unwrap();
        assert_eq!(sink.name(), name);
    }

    let mut invalid = HttpSinkConfig::new("https://example.com".parse().unwrap());
    invalid.concurrency = 0;
    assert!(SinkConfig::Http(invalid).build().await.is_err());
    let mut invalid = HttpSinkConfig::new("https://example.com".parse().unwrap());
    invalid.source.clear();
    let error = SinkConfig::Http(invalid).validate().unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid `source` for http sink: must not be empty"
    );
}

/// Every broker URL reaches its adapter, for publishing and for consuming,
/// and an adapter's refusal keeps the adapter's reason.
#[test]
fn broker_urls_choose_their_adapter() {
    use ferry_adapters::SubscriberConfig;
    let cases = [
        (
            "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=ferry",
            "amqp",
        ),
        ("redis://127.0.0.1:6379/0?stream_prefix=ferry.", "redis"),
        ("kafka://127.0.0.1:19092?topic_prefix=ferry.", "kafka"),
        ("sqs+http://127.0.0.1:19325?region=us-east-1", "sqs"),
        (
            "nats://127.0.0.1:4222?stream=FERRY&subject_prefix=ferry.",
            "nats",
        ),
    ];
    for (url, kind) in cases {
        let sink = SinkConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(sink.kind(), kind, "{url}");
        let source = SubscriberConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(source.kind(), kind, "{url}");
    }
    for url in [
        "amqp://127.0.0.1?exchnge=x",
        "redis://127.0.0.1?streamprefix=x",
        "sqs+http://127.0.0.1:1?fifo=maybe",
    ] {
        let err = SinkConfig::from_url(url).unwrap_err();
        let chain = ferry_core::error_chain(&err);
        assert!(
            chain.contains(": "),
            "{url}: the adapter's reason is kept: {chain}"
        );
        assert!(SubscriberConfig::from_url(url).is_err(), "{url}");
    }
    let err = SubscriberConfig::from_url("http://127.0.0.1/").unwrap_err();
    assert!(
        err.to_string().contains("unknown broker url scheme `http`"),
        "{err}"
    );
}
