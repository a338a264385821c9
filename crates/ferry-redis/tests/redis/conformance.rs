//! The broker conformance suite against a private persistent Redis per case
//! (append-only file, fsync on every write), so that the restart case can
//! kill and restart a server no other test uses and claim `persistent`.
//! The shared Redis on 6379 keeps nothing on disk and could not.

use std::sync::Arc;
use std::time::Duration;

use crate::support::{self, RedisServer};
use ferry_conformance::Broker;
use ferry_core::{Capabilities, Sink, Subscriber};
use ferry_redis::{RedisConfig, RedisSink, RedisSubscriber};

struct Harness {
    server: RedisServer,
    config: RedisConfig,
    capabilities: Capabilities,
}

impl Harness {
    async fn new() -> Self {
        let server = RedisServer::start().await;
        let config = support::config(&server.url());
        let capabilities = RedisSubscriber::connect(config.clone())
            .await
            .unwrap()
            .capabilities();
        Self {
            server,
            config,
            capabilities,
        }
    }
}

impl Broker for Harness {
    async fn sink(&self) -> Arc<dyn Sink> {
        Arc::new(RedisSink::connect(self.config.clone()).await.unwrap())
    }

    async fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(RedisSubscriber::connect(self.config.clone()).await.unwrap())
    }

    fn capabilities(&self) -> Capabilities {
        // The private server persists every write, so all of it holds.
        self.capabilities
    }

    fn redelivery_within(&self) -> Duration {
        // Claimable after claim_idle, looked for every half of it.
        self.config.claim_idle * 2
    }

    async fn restart(&self) {
        self.server.crash_and_restart().await;
    }
}

ferry_conformance::suite!(async { Harness::new().await });
