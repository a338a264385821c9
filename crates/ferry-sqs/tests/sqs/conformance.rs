//! The conformance suite on moto's SQS (`scripts/sqs.sh`, or the endpoint
//! FERRY_SQS_ENDPOINT names), once with standard queues and once with FIFO
//! queues.
//!
//! moto keeps its queues in memory, so the harness does not claim
//! `persistent` (the adapter does: SQS keeps messages) and the restart case
//! does not run.

use std::sync::Arc;
use std::time::Duration;

use ferry_conformance::Broker;
use ferry_core::{Capabilities, Sink, Subscriber};
use ferry_sqs::{SqsConfig, SqsSink, SqsSubscriber};

struct Moto {
    config: SqsConfig,
}

impl Moto {
    fn new(fifo: bool) -> Self {
        let config = SqsConfig {
            endpoint: Some(crate::endpoint().parse().unwrap()),
            access_key_id: Some("test".to_owned()),
            secret_access_key: Some("test".to_owned()),
            queue_prefix: "ferry-".to_owned(),
            fifo,
            // Long enough for a prefetched batch to be handled one by one
            // while two dozen cases share one moto process.
            visibility_timeout: Duration::from_secs(30),
            wait_time: Duration::from_secs(1),
            ..SqsConfig::default()
        };
        Self { config }
    }
}

impl Broker for Moto {
    async fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(SqsSink::connect(self.config.clone()).await.unwrap())
    }

    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(SqsSubscriber::connect(self.config.clone()).await.unwrap())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: false,
            ordered_per_key: self.config.fifo,
            dedups_by_id: self.config.fifo,
            consumer_groups: false,
            redelivers_unacked: true,
            delayed_nack: true,
        }
    }

    fn redelivery_within(&self) -> Duration {
        self.config.visibility_timeout
    }

    async fn restart(&self) {
        unreachable!("persistent is not claimed: moto keeps nothing");
    }
}

mod standard {
    ferry_conformance::suite!(async { super::Moto::new(false) });
}

mod fifo {
    ferry_conformance::suite!(async { super::Moto::new(true) });
}
