//! Kafka: idempotent producer sink and consumer-group subscriber.
