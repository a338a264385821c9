//! The broker conformance suite against a private persistent Redis per case
//! (append-only file, fsync on every write), so that the restart case can
//! kill and restart a server no other test uses and claim `persistent`.
//! The shared Redis on 6379 keeps nothing on disk and could not.

use crate::support::{self, RedisServer};
use ferry_conformance::{Harness, Server};
use ferry_redis::{RedisConfig, RedisSink, RedisSubscriber};

impl Server for RedisServer {
    async fn restart(&self) {
        self.crash_and_restart().await;
    }
}

/// The private server persists every write, so all the adapter claims
/// hold.
async fn harness() -> Harness<RedisConfig, RedisServer> {
    let server = RedisServer::start().await;
    let config = support::config(&server.url());
    // Claimable after claim_idle, looked for every half of it.
    let redelivery_within = config.claim_idle * 2;
    Harness::connect(config, RedisSink::connect, RedisSubscriber::connect)
        .await
        .claims(&[
            "persistent",
            "consumer_groups",
            "redelivers_unacked",
            "delayed_nack",
        ])
        .redelivered_within(redelivery_within)
        .on(server)
}

ferry_conformance::suite!(async { harness().await });
