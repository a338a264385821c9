//! The conformance suite on tansu (`scripts/kafka.sh`, or the broker
//! FERRY_KAFKA names).
//!
//! tansu runs with memory storage here and keeps nothing across a restart,
//! so the harness does not claim `persistent` (the adapter does: a Kafka
//! cluster keeps its log) and the restart case does not run.

use std::time::Duration;

use ferry_conformance::Harness;
use ferry_kafka::{KafkaConfig, KafkaSink, KafkaSubscriber};

async fn tansu() -> Harness<KafkaConfig> {
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
    Harness::connect(config, KafkaSink::connect, KafkaSubscriber::connect)
        .await
        .claims(&[
            "ordered_per_key",
            "persistent",
            "consumer_groups",
            "redelivers_unacked",
        ])
        // A consumer that stops leaves its group at once; the survivor's
        // join and rebalance take the time.
        .redelivered_within(Duration::from_secs(30))
        .not_persistent()
}

ferry_conformance::suite!(async { tansu().await });
