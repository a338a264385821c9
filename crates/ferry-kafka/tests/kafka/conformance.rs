//! The conformance suite on tansu (`scripts/kafka.sh`, or the broker
//! FERRY_KAFKA names).
//!
//! tansu runs with memory storage here and keeps nothing across a restart,
//! so the harness does not claim `persistent` (the adapter does: a Kafka
//! cluster keeps its log) and the restart case does not run.

use std::sync::Arc;
use std::time::Duration;

use ferry_conformance::Broker;
use ferry_core::{Capabilities, Sink, Subscriber};
use ferry_kafka::{KafkaConfig, KafkaSink, KafkaSubscriber};

struct Tansu {
    config: KafkaConfig,
}

impl Tansu {
    fn new() -> Self {
        let mut config = KafkaConfig::new([crate::broker()]);
        config.topic_prefix = "ferry.".to_owned();
        // Several partitions, so that the members of a group share a topic.
        config.partitions = 3;
        config.join_timeout = Duration::from_secs(60);
        // tansu 0.6 reports a partition's high watermark as the last record
        // batch's base offset + 1, so lag undercounts batched records: one
        // record per batch keeps the watermark right.
        config
            .properties
            .insert("batch.num.messages".to_owned(), "1".to_owned());
        Self { config }
    }
}

impl Broker for Tansu {
    async fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(KafkaSink::connect(self.config.clone()).await.unwrap())
    }

    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(KafkaSubscriber::connect(self.config.clone()).await.unwrap())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: true,
            persistent: false,
            consumer_groups: true,
            redelivers_unacked: true,
            dedups_by_id: false,
            delayed_nack: false,
        }
    }

    /// A consumer that stops leaves its group at once; the survivor's join
    /// and rebalance take the time.
    fn redelivery_within(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn restart(&self) {
        unreachable!("persistent is not claimed: tansu's memory storage keeps nothing");
    }
}

ferry_conformance::suite!(async { Tansu::new() });
