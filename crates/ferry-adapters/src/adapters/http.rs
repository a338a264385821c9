//! The webhook adapter (`ferry_http`), errors kept as
//! [`SinkConfigError::Http`]. It has no subscriber.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::Sink;
use ferry_http::{HttpSink, HttpSinkConfig, SetupError};
use url::Url;

use crate::adapter::Adapter;
use crate::SinkConfigError;

impl Adapter for HttpSinkConfig {
    /// The whole URL, query included, is the endpoint; the other settings
    /// take their defaults.
    fn read_url(url: &Url) -> Result<Self, SinkConfigError> {
        Ok(HttpSinkConfig::new(url.clone()))
    }

    fn check(&self) -> Result<(), SinkConfigError> {
        self.validate().map_err(|e| SetupError::from(e).into())
    }

    fn longest_call(&self) -> Duration {
        HttpSinkConfig::longest_call(self)
    }

    async fn sink(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
        Ok(Arc::new(HttpSink::new(self.clone())?))
    }
}
