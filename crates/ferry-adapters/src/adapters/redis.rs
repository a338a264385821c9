//! The Redis Streams adapter (`ferry_redis`), errors kept as the source of
//! [`SinkConfigError::Adapter`].

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Sink, Subscriber};
use ferry_redis::{RedisConfig, RedisSink, RedisSubscriber};
use url::Url;

use crate::adapter::{Adapter, SourceAdapter};
use crate::SinkConfigError;

impl Adapter for RedisConfig {
    fn read_url(url: &Url) -> Result<Self, SinkConfigError> {
        SinkConfigError::adapter("redis", RedisConfig::from_url(url.as_str()))
    }

    fn check(&self) -> Result<(), SinkConfigError> {
        SinkConfigError::adapter("redis", self.validate())
    }

    fn longest_call(&self) -> Duration {
        RedisConfig::longest_call(self)
    }

    async fn sink(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        let sink = SinkConfigError::adapter("redis", RedisSink::connect(self.clone()).await)?;
        Ok(Arc::new(sink))
    }
}

impl SourceAdapter for RedisConfig {
    async fn subscriber(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
        let subscriber =
            SinkConfigError::adapter("redis", RedisSubscriber::connect(self.clone()).await)?;
        Ok(Arc::new(subscriber))
    }
}
