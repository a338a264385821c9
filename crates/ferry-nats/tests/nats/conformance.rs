//! The conformance suite on NATS JetStream: each case gets a private
//! nats-server (so that the restart case restarts only its own).

use std::time::Duration;

use ferry_conformance::Harness;
use ferry_nats::{NatsSink, NatsSinkConfig, NatsSubscriber};
use ferry_testkit::nats_server::NatsServer;

async fn nats() -> Harness<NatsSinkConfig, NatsServer> {
    let server = NatsServer::start().await;
    let mut config = NatsSinkConfig::new(server.url().parse().unwrap());
    config.subject_prefix = "conformance.".to_owned();
    config.stream = Some("CONFORMANCE".to_owned());
    config.ack_wait = Duration::from_secs(2);
    let redelivery_within = config.ack_wait;
    Harness::connect(config, NatsSink::connect, NatsSubscriber::connect)
        .await
        .claims(&[
            "ordered_per_key",
            "persistent",
            "consumer_groups",
            "redelivers_unacked",
            "dedups_by_id",
            "delayed_nack",
        ])
        .redelivered_within(redelivery_within)
        .on(server)
}

ferry_conformance::suite!(async { nats().await });
