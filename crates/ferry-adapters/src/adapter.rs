//! What the registry needs of an adapter: reading its URL, checking its
//! settings, starting its sink and subscriber. Each adapter compiled in
//! implements it (in `adapters/`); an adapter left out is replaced by a
//! stand-in from [`crate::disabled`] that refuses to be chosen.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Sink, Subscriber};
use url::Url;

use crate::SinkConfigError;

/// An adapter's settings, as the registry uses them.
pub(crate) trait Adapter: Sized {
    /// The settings of a URL whose scheme names this adapter; not yet
    /// validated.
    fn read_url(url: &Url) -> Result<Self, SinkConfigError>;

    /// Checks the settings.
    fn check(&self) -> Result<(), SinkConfigError>;

    /// The longest one call of [`Sink::deliver`] can take.
    fn longest_call(&self) -> Duration;

    /// Starts the adapter's sink.
    fn sink(&self) -> impl Future<Output = Result<Arc<dyn Sink>, SinkConfigError>> + Send;
}

/// An adapter that can also be consumed from.
pub(crate) trait SubscriberAdapter: Adapter {
    /// Connects the adapter's subscriber.
    fn subscriber(
        &self,
    ) -> impl Future<Output = Result<Arc<dyn Subscriber>, SinkConfigError>> + Send;
}
