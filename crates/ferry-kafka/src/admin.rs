//! Creating the topics Ferry publishes to and consumes from.

use std::collections::HashSet;
use std::sync::Mutex;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::quiet::Quiet;
use crate::{KafkaConfig, KafkaConfigError};

/// Creates missing topics with the admin API, once per topic and process.
pub(crate) struct Topics {
    admin: Option<AdminClient<Quiet>>,
    config: KafkaConfig,
    known: Mutex<HashSet<String>>,
}

impl Topics {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, KafkaConfigError> {
        let admin = if config.create_topics {
            Some(
                config
                    .client_config()
                    .create_with_context(Quiet)
                    .map_err(KafkaConfigError::Client)?,
            )
        } else {
            None
        };
        Ok(Self {
            admin,
            config: config.clone(),
            known: Mutex::new(HashSet::new()),
        })
    }

    /// Makes sure `topic` exists, creating it when it is missing (and
    /// [`KafkaConfig::create_topics`] is on). An existing topic is left as
    /// it is.
    pub(crate) async fn ensure(&self, topic: &str) -> Result<(), KafkaError> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        if self.known().contains(topic) {
            return Ok(());
        }
        let replication = TopicReplication::Fixed(self.config.replication_factor.unwrap_or(-1));
        let new = NewTopic::new(topic, self.config.partitions, replication);
        let options = AdminOptions::new()
            .request_timeout(Some(self.config.delivery_timeout))
            .operation_timeout(Some(self.config.delivery_timeout));
        let results = admin.create_topics([&new], &options).await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        self.known().insert(topic.to_owned());
        Ok(())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set only caches; a panic elsewhere cannot leave it wrong.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The librdkafka error code of `e`, admin results included (rdkafka's own
/// `rdkafka_error_code` leaves those out).
pub(crate) fn error_code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    match e {
        KafkaError::AdminOp(code) => Some(*code),
        _ => e.rdkafka_error_code(),
    }
}
