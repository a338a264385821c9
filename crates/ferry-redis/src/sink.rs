//! The Redis Streams sink: XADD, a pipeline per batch.

use std::sync::Arc;

use ferry_core::{Delivery, Message, SinkError};
use redis::aio::ConnectionManager;
use redis::{RedisError, Value};

use crate::{ConnectError, RedisConfig};

/// Appends each message to the Redis stream of its topic
/// (`{stream_prefix}{topic}`) with `XADD`, the entry's id chosen by Redis.
///
/// The entry's fields are described in the [crate documentation](crate).
/// A batch goes as one pipeline; a message is delivered once Redis has
/// answered its `XADD` (durably so as far as the server's `appendfsync`
/// setting makes it: a Redis without persistence loses everything on
/// restart). With [`RedisConfig::maxlen`] each `XADD` trims its stream to
/// about that many entries, unread ones included.
///
/// | outcome of an `XADD` | result |
/// |---|---|
/// | an entry id | delivered |
/// | not connected, connection lost, no answer within [`RedisConfig::timeout`] | [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) |
/// | the key holds something other than a stream (`WRONGTYPE`) | [`Permanent`](ferry_core::SinkErrorKind::Permanent) |
/// | out of memory, read-only replica, any other refusal | [`Transient`](ferry_core::SinkErrorKind::Transient) |
pub struct RedisSink {
    config: RedisConfig,
    connection: ConnectionManager,
}

impl RedisSink {
    /// Checks the settings and sets up the connection, which is made on the
    /// first delivery and made again whenever it is lost. A server that is
    /// down does not fail this call; deliveries fail as
    /// [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) until it
    /// answers.
    pub async fn connect(config: RedisConfig) -> Result<Self, ConnectError> {
        config.validate()?;
        let connection = crate::manager(&config)?;
        Ok(Self { config, connection })
    }

    async fn deliver_batch(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // The stream's key, made again only when the topic changes.
        let (mut key, mut key_topic) = (String::new(), None);
        for message in batch {
            if key_topic != Some(message.topic.as_str()) {
                key = self.config.stream_key(&message.topic);
                key_topic = Some(message.topic.as_str());
            }
            let cmd = pipe.cmd("XADD").arg(&key);
            if let Some(maxlen) = self.config.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            cmd.arg("*");
            let fields = if self.config.header_fields {
                crate::entry::header_fields(message, &self.config.source)
            } else {
                crate::entry::fields(message, &self.config.source)
            };
            for (name, value) in fields {
                cmd.arg(name).arg(value);
            }
        }
        let mut connection = self.connection.clone();
        let replies: Result<Vec<Result<Value, RedisError>>, RedisError> =
            pipe.query_async(&mut connection).await;
        match replies {
            Ok(replies) if replies.len() == batch.len() => replies
                .into_iter()
                .map(|r| r.map(drop).map_err(xadd_error))
                .collect(),
            Ok(replies) => {
                let message = format!(
                    "redis answered {} of {} appends",
                    replies.len(),
                    batch.len()
                );
                batch
                    .iter()
                    .map(|_| Err(SinkError::transient(message.clone())))
                    .collect()
            }
            Err(e) => {
                let e = Arc::new(e);
                batch
                    .iter()
                    .map(|_| {
                        Err(SinkError::unavailable("redis is not reachable").with_source(e.clone()))
                    })
                    .collect()
            }
        }
    }
}

fn xadd_error(e: RedisError) -> SinkError {
    if crate::is_unreachable(&e) {
        return SinkError::unavailable("redis connection lost").with_source(e);
    }
    match e.code() {
        Some("WRONGTYPE") => {
            SinkError::permanent("the stream's key holds another type").with_source(e)
        }
        _ => SinkError::transient("redis refused the append").with_source(e),
    }
}

ferry_core::impl_sink!(RedisSink, "redis", deliver_batch);

ferry_core::impl_debug!(
    RedisSink,
    |sink| server: sink.config.redacted_url(),
    stream_prefix: sink.config.stream_prefix
);
