//! Where librdkafka's own log lines and client errors go.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;

/// A client context that logs librdkafka's log lines and global errors at
/// debug level (target `ferry_kafka::quiet`) instead of rdkafka's default
/// of one line per event at their own level.
///
/// While brokers are down librdkafka reports every failed connection
/// attempt (`BrokerTransportFailure`, `AllBrokersDown`), many a second.
/// The same failures reach Ferry as failed deliveries or subscriptions,
/// which the relay and the consumer log once when the broker goes down
/// and once when it is back.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self::error(error, reason);
    }
}

impl ConsumerContext for Quiet {}

/// A librdkafka log line, at debug level.
pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    tracing::debug!(?level, facility = fac, "librdkafka: {log_message}");
}

/// A librdkafka client error, at debug level.
pub(crate) fn error(error: KafkaError, reason: &str) {
    tracing::debug!(%error, "librdkafka: {reason}");
}
