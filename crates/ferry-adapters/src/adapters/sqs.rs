//! The Amazon SQS adapter (`ferry_sqs`), errors kept as the source of
//! [`SinkConfigError::Adapter`].

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Sink, Subscriber};
use ferry_sqs::{SqsConfig, SqsSink, SqsSubscriber};
use url::Url;

use crate::adapter::{Adapter, SourceAdapter};
use crate::SinkConfigError;

impl Adapter for SqsConfig {
    fn read_url(url: &Url) -> Result<Self, SinkConfigError> {
        SinkConfigError::adapter("sqs", SqsConfig::from_url(url.as_str()))
    }

    fn check(&self) -> Result<(), SinkConfigError> {
        SinkConfigError::adapter("sqs", self.validate())
    }

    fn longest_call(&self) -> Duration {
        SqsConfig::longest_call(self)
    }

    async fn sink(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        let sink = SinkConfigError::adapter("sqs", SqsSink::connect(self.clone()).await)?;
        Ok(Arc::new(sink))
    }
}

impl SourceAdapter for SqsConfig {
    async fn subscriber(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
        let subscriber =
            SinkConfigError::adapter("sqs", SqsSubscriber::connect(self.clone()).await)?;
        Ok(Arc::new(subscriber))
    }
}
