//! The RabbitMQ adapter (`ferry_amqp`), errors kept as the source of
//! [`SinkConfigError::Adapter`].

use std::sync::Arc;
use std::time::Duration;

use ferry_amqp::{AmqpConfig, AmqpSink, AmqpSubscriber};
use ferry_core::{Sink, Subscriber};
use url::Url;

use crate::adapter::{Adapter, SourceAdapter};
use crate::SinkConfigError;

impl Adapter for AmqpConfig {
    fn read_url(url: &Url) -> Result<Self, SinkConfigError> {
        SinkConfigError::adapter("amqp", AmqpConfig::from_url(url.as_str()))
    }

    fn check(&self) -> Result<(), SinkConfigError> {
        SinkConfigError::adapter("amqp", self.validate())
    }

    fn longest_call(&self) -> Duration {
        AmqpConfig::longest_call(self)
    }

    async fn sink(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        let sink = SinkConfigError::adapter("amqp", AmqpSink::connect(self.clone()).await)?;
        Ok(Arc::new(sink))
    }
}

impl SourceAdapter for AmqpConfig {
    async fn subscriber(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
        let subscriber =
            SinkConfigError::adapter("amqp", AmqpSubscriber::connect(self.clone()).await)?;
        Ok(Arc::new(subscriber))
    }
}
