//! The broker conformance suite against a private RabbitMQ node per case,
//! so that the restart case restarts a broker no other test uses.

use std::time::Duration;

use crate::support::{self, RabbitNode};
use ferry_amqp::{AmqpConfig, AmqpSink, AmqpSubscriber};
use ferry_conformance::{Harness, Server};

impl Server for RabbitNode {
    async fn restart(&self) {
        RabbitNode::restart(self).await;
    }
}

/// The private node keeps all the adapter claims.
async fn harness() -> Harness<AmqpConfig, RabbitNode> {
    let node = RabbitNode::start().await;
    let config = support::config(&node.url());
    Harness::connect(config, AmqpSink::connect, AmqpSubscriber::connect)
        .await
        .claims(&[
            "persistent",
            "consumer_groups",
            "redelivers_unacked",
            "delayed_nack",
        ])
        // The broker requeues as soon as the dead consumer's channel closes.
        .redelivered_within(Duration::from_secs(5))
        .on(node)
}

ferry_conformance::suite!(async { harness().await });
