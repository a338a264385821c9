//! The conformance suite on NATS JetStream: each case gets a private
//! nats-server (so that the restart case restarts only its own).

use std::sync::Arc;
use std::time::Duration;

use ferry_conformance::Broker;
use ferry_core::{Capabilities, Sink, Subscriber};
use ferry_nats::{NatsSink, NatsSinkConfig, NatsSubscriber};
use ferry_testkit::nats_server::NatsServer;

struct Nats {
    server: NatsServer,
    config: NatsSinkConfig,
}

impl Nats {
    async fn start() -> Self {
        let server = NatsServer::start().await;
        let mut config = NatsSinkConfig::new(server.url().parse().unwrap());
        config.subject_prefix = "conformance.".to_owned();
        config.stream = Some("CONFORMANCE".to_owned());
        config.ack_wait = Duration::from_secs(2);
        Self { server, config }
    }
}

impl Broker for Nats {
    async fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(NatsSink::connect(self.config.clone()).await.unwrap())
    }
    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(NatsSubscriber::connect(self.config.clone()).await.unwrap())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: true,
            persistent: true,
            consumer_groups: true,
            redelivers_unacked: true,
            dedups_by_id: true,
            delayed_nack: true,
        }
    }
    fn redelivery_within(&self) -> Duration {
        self.config.ack_wait
    }
    async fn restart(&self) {
        self.server.restart().await;
    }
}

ferry_conformance::suite!(async { Nats::start().await });
