//! The conformance suite on moto's SQS (`scripts/sqs.sh`, or the endpoint
//! FERRY_SQS_ENDPOINT names), once with standard queues and once with FIFO
//! queues.
//!
//! moto keeps its queues in memory, so the harness does not claim
//! `persistent` (the adapter does: SQS keeps messages) and the restart case
//! does not run.

use std::time::Duration;

use ferry_conformance::Harness;
use ferry_sqs::{SqsConfig, SqsSink, SqsSubscriber};

/// What the adapter claims for standard queues, and for FIFO queues.
const CLAIMS: [&str; 3] = ["persistent", "redelivers_unacked", "delayed_nack"];
const FIFO_CLAIMS: [&str; 5] = [
    "persistent",
    "redelivers_unacked",
    "delayed_nack",
    "ordered_per_key",
    "dedups_by_id",
];

async fn moto(fifo: bool) -> Harness<SqsConfig> {
    let config = SqsConfig {
        queue_prefix: "ferry-".to_owned(),
        // Long enough for a prefetched batch to be handled one by one
        // while two dozen cases share one moto process.
        visibility_timeout: Duration::from_secs(30),
        ..crate::config(fifo)
    };
    let redelivery_within = config.visibility_timeout;
    Harness::connect(config, SqsSink::connect, SqsSubscriber::connect)
        .await
        .claims(if fifo { &FIFO_CLAIMS } else { &CLAIMS })
        .redelivered_within(redelivery_within)
        .not_persistent()
}

mod standard {
    ferry_conformance::suite!(async { super::moto(false).await });
}

mod fifo {
    ferry_conformance::suite!(async { super::moto(true).await });
}
