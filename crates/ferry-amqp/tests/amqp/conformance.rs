//! The broker conformance suite against a private RabbitMQ node per case,
//! so that the restart case restarts a broker no other test uses.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{self, RabbitNode};
use ferry_amqp::{AmqpConfig, AmqpSink, AmqpSubscriber};
use ferry_conformance::Broker;
use ferry_core::{Capabilities, Sink, Subscriber};

struct Harness {
    node: RabbitNode,
    config: AmqpConfig,
    capabilities: Capabilities,
}

impl Harness {
    async fn new() -> Self {
        let node = RabbitNode::start().await;
        let config = support::config(&node.url());
        let capabilities = AmqpSubscriber::connect(config.clone())
            .await
            .unwrap()
            .capabilities();
        Self {
            node,
            config,
            capabilities,
        }
    }
}

impl Broker for Harness {
    async fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(AmqpSink::connect(self.config.clone()).await.unwrap())
    }

    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(AmqpSubscriber::connect(self.config.clone()).await.unwrap())
    }

    fn capabilities(&self) -> Capabilities {
        // The private node keeps all the adapter claims.
        self.capabilities
    }

    fn redelivery_within(&self) -> Duration {
        // The broker requeues as soon as the dead consumer's channel closes.
        Duration::from_secs(5)
    }

    async fn restart(&self) {
        self.node.restart().await;
    }
}

ferry_conformance::suite!(async { Harness::new().await });
