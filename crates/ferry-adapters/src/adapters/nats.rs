//! The NATS JetStream adapter (`ferry_nats`), errors kept as
//! [`SinkConfigError::Nats`].

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Sink, Subscriber};
use ferry_nats::{ConnectError, NatsSink, NatsSinkConfig, NatsSubscriber};
use url::Url;

use crate::adapter::{Adapter, SubscriberAdapter};
use crate::SinkConfigError;

impl Adapter for NatsSinkConfig {
    fn read_url(url: &Url) -> Result<Self, SinkConfigError> {
        NatsSinkConfig::from_url(url.as_str()).map_err(|e| ConnectError::from(e).into())
    }

    fn check(&self) -> Result<(), SinkConfigError> {
        self.validate().map_err(|e| ConnectError::from(e).into())
    }

    fn longest_call(&self) -> Duration {
        NatsSinkConfig::longest_call(self)
    }

    async fn sink(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        Ok(Arc::new(NatsSink::connect(self.clone()).await?))
    }
}

impl SubscriberAdapter for NatsSinkConfig {
    async fn subscriber(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
        Ok(Arc::new(NatsSubscriber::connect(self.clone()).await?))
    }
}
