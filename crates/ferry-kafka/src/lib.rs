//! Ferry's Kafka adapter: an idempotent producer sink and a consumer-group subscriber
