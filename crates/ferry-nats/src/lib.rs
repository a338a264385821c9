//! NATS JetStream: sink and subscriber.
