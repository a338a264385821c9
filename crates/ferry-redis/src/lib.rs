//! Redis Streams: sink and consumer-group subscriber.
