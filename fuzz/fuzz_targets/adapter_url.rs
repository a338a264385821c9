//! Every adapter's URL form: each adapter crate's `from_url` (NATS,
//! RabbitMQ, Redis, Kafka, SQS), then the registry's `SinkConfig::from_url`
//! and `SubscriberConfig::from_url`, which route by scheme (the webhook's
//! `http(s)://` form is read there: `ferry-http` has no `from_url`). A
//! URL that is read is validated, its longest call computed and its
//! redacted `Debug` form written: none of these may panic.
#![no_main]

use std::fmt::Debug;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fn settled<C: Debug, E: std::error::Error>(
    read: Result<C, E>,
    check: impl Fn(&C) -> Result<(), E>,
    longest: impl Fn(&C) -> Duration,
) {
    match read {
        Ok(config) => {
            let _ = check(&config);
            let _ = longest(&config);
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|url: &str| {
    settled(
        ferry_nats::NatsSinkConfig::from_url(url),
        |c| c.validate(),
        |c| c.longest_call(),
    );
    settled(
        ferry_amqp::AmqpConfig::from_url(url),
        |c| c.validate(),
        |c| c.longest_call(),
    );
    settled(
        ferry_redis::RedisConfig::from_url(url),
        |c| c.validate(),
        |c| c.longest_call(),
    );
    settled(
        ferry_kafka::KafkaConfig::from_url(url),
        |c| c.validate(),
        |c| c.longest_call(),
    );
    settled(
        ferry_sqs::SqsConfig::from_url(url),
        |c| c.validate(),
        |c| c.longest_call(),
    );
    settled(
        ferry_adapters::SinkConfig::from_url(url),
        |c| c.validate(),
        |c| c.longest_call(),
    );
    settled(
        ferry_adapters::SubscriberConfig::from_url(url),
        |c| c.validate(),
        |_| Duration::ZERO,
    );
});
