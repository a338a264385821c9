//! The Kafka adapter (`ferry_kafka`), errors kept as the source of
//! [`SinkConfigError::Adapter`].

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Sink, Subscriber};
use ferry_kafka::{KafkaConfig, KafkaSink, KafkaSubscriber};
use url::Url;

use crate::adapter::{Adapter, SourceAdapter};
use crate::SinkConfigError;

impl Adapter for KafkaConfig {
    fn read_url(url: &Url) -> Result<Self, SinkConfigError> {
        SinkConfigError::adapter("kafka", KafkaConfig::from_url(url.as_str()))
    }

    fn check(&self) -> Result<(), SinkConfigError> {
        SinkConfigError::adapter("kafka", self.validate())
    }

    fn longest_call(&self) -> Duration {
        KafkaConfig::longest_call(self)
    }

    async fn sink(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        let sink = SinkConfigError::adapter("kafka", KafkaSink::connect(self.clone()).await)?;
        Ok(Arc::new(sink))
    }
}

impl SourceAdapter for KafkaConfig {
    async fn subscriber(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
        let subscriber =
            SinkConfigError::adapter("kafka", KafkaSubscriber::connect(self.clone()).await)?;
        Ok(Arc::new(subscriber))
    }
}
