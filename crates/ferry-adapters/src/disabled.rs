//! Stand-ins for the settings of adapters whose cargo feature is off.
//!
//! [`SinkConfig`](crate::SinkConfig) and [`SubscriberConfig`](crate::SubscriberConfig)
//! keep a variant for every adapter, so that a configuration naming one
//! left out of the build gets a clear error instead of "unknown variant".
//! Its settings are then one of these types: they have no values, so the
//! variant cannot be made, and reading one (a `type = "kafka"` table, a
//! `kafka://` URL) fails with "ferry was built without the `kafka`
//! feature". With every feature on, this module is empty.

#![cfg_attr(
    all(
        feature = "http",
        feature = "nats",
        feature = "amqp",
        feature = "redis",
        feature = "kafka",
        feature = "sqs"
    ),
    allow(unused_imports, unused_macros)
)]

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{Sink, Subscriber};
use url::Url;

use crate::adapter::{Adapter, SubscriberAdapter};
use crate::SinkConfigError;

/// Defines the stand-in `$name` for the adapter of feature `$feature`,
/// when that feature is off.
macro_rules! stand_in {
    ($name:ident, $feature:literal) => {
        #[cfg(not(feature = $feature))]
        #[doc = concat!("The settings of the `", $feature, "` adapter, left out of this build.")]
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name {}

        #[cfg(not(feature = $feature))]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                Err(serde::de::Error::custom(SinkConfigError::Disabled(
                    $feature,
                )))
            }
        }

        #[cfg(not(feature = $feature))]
        impl Adapter for $name {
            fn read_url(_: &Url) -> Result<Self, SinkConfigError> {
                Err(SinkConfigError::Disabled($feature))
            }

            fn check(&self) -> Result<(), SinkConfigError> {
                match *self {}
            }

            fn longest_call(&self) -> Duration {
                match *self {}
            }

            async fn sink(&self) -> Result<Arc<dyn Sink>, SinkConfigError> {
                match *self {}
            }
        }
    };
}

/// [`stand_in!`] for each adapter that can also be consumed from.
macro_rules! source_stand_ins {
    ($($name:ident: $feature:literal),+ $(,)?) => {
        $(
            stand_in!($name, $feature);

            #[cfg(not(feature = $feature))]
            impl SubscriberAdapter for $name {
                async fn subscriber(&self) -> Result<Arc<dyn Subscriber>, SinkConfigError> {
                    match *self {}
                }
            }
        )+
    };
}

stand_in!(HttpSinkConfig, "http");
source_stand_ins! {
    NatsSinkConfig: "nats",
    AmqpConfig: "amqp",
    RedisConfig: "redis",
    KafkaConfig: "kafka",
    SqsConfig: "sqs",
}

/// Run with `--no-default-features --features http,nats`, as
/// scripts/test.sh does.
#[cfg(all(test, not(feature = "kafka")))]
mod tests {
    use crate::{SinkConfig, SinkConfigError, SubscriberConfig};

    #[test]
    fn a_left_out_adapter_is_refused_by_name() {
        let said = "ferry was built without the `kafka` feature";
        let error = SinkConfig::from_url("kafka://127.0.0.1:9092").unwrap_err();
        assert!(
            matches!(error, SinkConfigError::Disabled("kafka")),
            "{error:?}"
        );
        assert_eq!(error.to_string(), said);
        let error = SubscriberConfig::from_url("kafka://127.0.0.1:9092").unwrap_err();
        assert_eq!(error.to_string(), said);
        let table = "type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"";
        let error = toml::from_str::<SinkConfig>(table).unwrap_err();
        assert!(error.to_string().contains(said), "{error}");
        let error = toml::from_str::<SubscriberConfig>(table).unwrap_err();
        assert!(error.to_string().contains(said), "{error}");
        // The others still work.
        assert_eq!(SinkConfig::from_url("null://").unwrap().kind(), "null");
    }
}
