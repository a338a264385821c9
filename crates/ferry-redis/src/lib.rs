//! Ferry's Redis Streams adapter: a sink (`XADD`) and a consumer-group
//! subscriber (`XREADGROUP`, `XACK`, reclaiming with `XAUTOCLAIM`).
//!
//! Both take a [`RedisConfig`], from the configuration file or from a URL
//! such as `redis://127.0.0.1:6379/0?stream_prefix=ferry.&claim_idle=30s`
//! ([`RedisConfig::from_url`]).
//!
//! # Entry format
//!
//! A message on topic `t` is one entry of the stream `{stream_prefix}t`,
//! with two fields, in this order, so that any Redis client can read it:
//!
//! | field | value |
//! |---|---|
//! | `payload` | the payload, as raw bytes |
//! | `headers` | the headers, one JSON object of strings, in this order |
//!
//! | header | value |
//! |---|---|
//! | `ce-specversion` | `1.0` |
//! | `ce-id` | the message id (a UUID): the receiver's idempotency key |
//! | `ce-type` | the topic |
//! | `ce-source` | [`RedisConfig::source`] |
//! | `ce-time` | the creation time, RFC 3339 with microseconds |
//! | `ce-partitionkey` | the ordering key, when there is one |
//! | `ce-ferrykind` | `event` or `command` |
//! | `content-type` | the payload's media type |
//! | `<name>` | each of the message's own headers |
//!
//! These are the CloudEvents binary-mode attributes of
//! [`binary_headers`](ferry_core::cloudevents::binary_headers), e.g.
//! `{"ce-specversion":"1.0","ce-id":"0193…","ce-type":"order.placed",…}`.
//! One field for all headers keeps an entry cheap for Redis to append and
//! to hand out, and for readers to parse.
//!
//! Earlier versions wrote each header as a field of its own, `h:<name>`
//! (`payload`, `h:ce-specversion`, `h:ce-id`, … in the order above). The
//! subscriber reads that layout too, and entries with both (a header in
//! only one of them), so entries written before and producers that still
//! write it keep working; with [`RedisConfig::header_fields`] the sink
//! writes it, for readers that know only that layout.
//!
//! Header names and values are UTF-8. An entry with another field, a field
//! that is not UTF-8, a `headers` field that is not a JSON object of
//! strings, a header both in `headers` and as an `h:` field, or no
//! `payload` is read as malformed.
//!
//! # Durability
//!
//! Redis acknowledges an `XADD` when it is in memory; whether it survives a
//! restart depends on the server's persistence (`appendonly yes` with
//! `appendfsync always` loses nothing that was acknowledged).

mod config;
mod entry;
mod sink;
mod subscriber;

pub use config::{ConfigError, RedisConfig, DEFAULT_SOURCE};
pub use sink::RedisSink;
pub use subscriber::RedisSubscriber;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

/// [`RedisSink::connect`] or [`RedisSubscriber::connect`] failed: the
/// settings are wrong. A server that cannot be reached is not this error
/// (the adapter connects when it is used).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The redis client could not be set up from the settings.
    #[error("could not set up the redis client")]
    Client(#[source] RedisError),
}

fn client(config: &RedisConfig) -> Result<redis::Client, ConnectError> {
    redis::Client::open(config.url.as_str()).map_err(ConnectError::Client)
}

/// A connection manager that connects on first use and again after a loss,
/// trying once per command so that a call stays within the timeout.
fn manager(config: &RedisConfig) -> Result<ConnectionManager, ConnectError> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.timeout))
        .set_response_timeout(Some(config.timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client(config)?, manager_config)
        .map_err(ConnectError::Client)
}

/// Whether the server could not be reached, rather than refusing.
fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        // The server is there but cannot serve now: loading its data, a
        // replica after a failover, out of memory, busy with a script.
        || e.code().is_some_and(|c| {
            matches!(
                c,
                "LOADING" | "MASTERDOWN" | "READONLY" | "OOM" | "BUSY" | "TRYAGAIN"
            )
        })
}
