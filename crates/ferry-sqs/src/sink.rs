//! The SQS sink: SendMessageBatch to one queue per topic.

use std::fmt;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use ferry_core::{BoxFuture, Delivery, Message, Sink, SinkError};

use crate::codec::{encode, Encoded};
use crate::error::{classify, code_class, Class};
use crate::queue::{client, queue_name, Queues};
use crate::{SqsConfig, SqsConfigError};

/// The most messages one SendMessageBatch carries.
const MAX_ENTRIES: usize = 10;
/// The most bytes one SendMessageBatch carries, all messages together
/// (256 KiB, SQS's classic limit, which every region accepts).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Sends each message to the SQS queue of its topic.
///
/// * **Queue**: [`SqsConfig::queue_prefix`] + the topic, characters SQS
///   does not allow replaced with `_`, `.fifo` for FIFO queues; created on
///   first use when [`SqsConfig::create_queues`] is on (with the visibility
///   timeout and, when [`SqsConfig::dead_letter_queue`] is set, a redrive
///   policy to it), once per queue and process.
/// * **Body and attributes**: see the [codec](crate#message-encoding): the
///   CloudEvents attributes as message attributes, the other headers in one
///   JSON attribute, a payload that is not text in base64.
/// * **FIFO**: `MessageGroupId` is the message's key (a key SQS cannot take
///   as a group id, with characters outside printable ASCII or longer than
///   128, is replaced by a hash of it), so a key's messages keep their
///   order; a message without a key is a group of its own (its id): it is
///   ordered with nothing and holds nothing up. `MessageDeduplicationId` is
///   the message id, so SQS drops a message sent again within its
///   five-minute window.
///
/// Up to 10 messages (and 256 KiB) per `SendMessageBatch`; see
/// [`Sink::max_per_call`].
///
/// | outcome | result |
/// |---|---|
/// | accepted | delivered |
/// | connection failure, timeout, SQS unavailable, credentials refused | [`Unavailable`](ferry_core::SinkErrorKind::Unavailable) |
/// | throttled, server error, queue missing (and not created) | [`Transient`](ferry_core::SinkErrorKind::Transient) |
/// | larger than SQS accepts, a topic that makes no queue name, other refusals of the message | [`Permanent`](ferry_core::SinkErrorKind::Permanent) |
pub struct SqsSink {
    client: Client,
    queues: Queues,
    config: SqsConfig,
}

impl SqsSink {
    /// Builds the client. Nothing is sent yet: an unreachable endpoint
    /// shows at the first delivery. Invalid settings or missing
    /// credentials fail it.
    pub async fn connect(config: SqsConfig) -> Result<Self, SqsConfigError> {
        config.validate()?;
        let client = client(&config)?;
        Ok(Self {
            queues: Queues::new(client.clone(), config.clone()),
            client,
            config,
        })
    }

    async fn deliver_batch(&self, batch: &[Message]) -> Vec<Delivery> {
        let mut results: Vec<Option<Delivery>> = (0..batch.len()).map(|_| None).collect();
        // Messages by queue, in batch order.
        let mut by_queue: Vec<(String, Vec<(usize, Encoded)>)> = Vec::new();
        for (i, message) in batch.iter().enumerate() {
            let Some(name) = queue_name(&self.config, &message.topic) else {
                results[i] = Some(Err(SinkError::permanent(format!(
                    "topic `{}` does not make an sqs queue name (at most 80 characters)",
                    message.topic
                ))));
                continue;
            };
            let encoded = encode(message, &self.config.source);
            if encoded.size > MAX_BATCH_BYTES {
                results[i] = Some(Err(SinkError::permanent(format!(
                    "message of {} bytes is larger than sqs accepts",
                    encoded.size
                ))));
                continue;
            }
            match by_queue.iter_mut().find(|(queue, _)| *queue == name) {
                Some((_, entries)) => entries.push((i, encoded)),
                None => by_queue.push((name, vec![(i, encoded)])),
            }
        }
        for (name, entries) in by_queue {
            let url = match self.queues.url(&name).await {
                Ok(url) => url,
                Err(failure) => {
                    for (i, _) in &entries {
                        results[*i] = Some(Err(failure.clone().into_sink_error()));
                    }
                    continue;
                }
            };
            for chunk in chunks(entries) {
                for (i, result) in self.send(&name, &url, batch, chunk).await {
                    results[i] = Some(result);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SinkError::transient("no result from sqs"))))
            .collect()
    }

    /// One SendMessageBatch; a result for each of its entries.
    async fn send(
        &self,
        name: &str,
        url: &str,
        batch: &[Message],
        chunk: Vec<(usize, Encoded)>,
    ) -> Vec<(usize, Delivery)> {
        let indexes: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
        let mut request = self.client.send_message_batch().queue_url(url);
        for (i, encoded) in chunk {
            let message = &batch[i];
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(encoded.body)
                .set_message_attributes(Some(encoded.attributes));
            if self.config.fifo {
                entry = entry
                    .message_group_id(group_id(message))
                    .message_deduplication_id(message.broker_dedup_id());
            }
            match entry.build() {
                Ok(entry) => request = request.entries(entry),
                // Only missing required fields fail, and they are set.
                Err(e) => {
                    let e = std::sync::Arc::new(e);
                    return every(&indexes, || {
                        SinkError::permanent("invalid sqs entry").with_source(e.clone())
                    });
                }
            }
        }
        let output = match request.send().await {
            Ok(output) => output,
            Err(e) => {
                let failure = classify(e, "sqs send failed");
                if failure.class == Class::NoQueue {
                    self.queues.forget(name);
                }
                return every(&indexes, || failure.clone().into_sink_error());
            }
        };
        let mut out = Vec::with_capacity(indexes.len());
        for ok in output.successful {
            if let Ok(i) = ok.id.parse::<usize>() {
                out.push((i, Ok(())));
            }
        }
        for failed in output.failed {
            let Ok(i) = failed.id.parse::<usize>() else {
                continue;
            };
            let message = format!(
                "sqs refused the message: {}{}",
                failed.code,
                failed
                    .message
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
            let error = match (failed.sender_fault, code_class(Some(&failed.code))) {
                (_, Class::Unavailable | Class::Denied) => SinkError::unavailable(message),
                (_, Class::Transient | Class::NoQueue) | (false, _) => {
                    SinkError::transient(message)
                }
                (true, Class::Permanent) => SinkError::permanent(message),
            };
            out.push((i, Err(error)));
        }
        out
    }
}

impl Sink for SqsSink {
    fn name(&self) -> &str {
        "sqs"
    }

    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        Box::pin(self.deliver_batch(batch))
    }

    /// One SendMessageBatch holds at most 10 messages.
    fn max_per_call(&self) -> Option<usize> {
        Some(MAX_ENTRIES)
    }
}

impl fmt::Debug for SqsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Splits a queue's messages into SendMessageBatch calls: at most 10
/// messages and 256 KiB each.
fn chunks(entries: Vec<(usize, Encoded)>) -> Vec<Vec<(usize, Encoded)>> {
    let mut out: Vec<Vec<(usize, Encoded)>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let fits = out
            .last()
            .is_some_and(|c| c.len() < MAX_ENTRIES && bytes + entry.1.size <= MAX_BATCH_BYTES);
        if !fits {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += entry.1.size;
        if let Some(chunk) = out.last_mut() {
            chunk.push(entry);
        }
    }
    out
}

/// The FIFO message group of a message: its key when SQS accepts it (1 to
/// 128 printable ASCII characters), else a stable hash of the key, so a key
/// always maps to one group; without a key, its own id.
fn group_id(message: &Message) -> String {
    match message.key.as_deref() {
        None => message.id.to_string(),
        Some(key)
            if !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            key.to_owned()
        }
        Some(key) => format!("ferry-key-{:016x}", fnv1a(key.as_bytes())),
    }
}

/// 64-bit FNV-1a: stable across processes and versions, unlike std's
/// hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn every(indexes: &[usize], error: impl Fn() -> SinkError) -> Vec<(usize, Delivery)> {
    indexes.iter().map(|&i| (i, Err(error()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids() {
        let keyed = |key: &str| group_id(&Message::event("a", "").with_key(key));
        let unkeyed = Message::event("a", "");
        assert_eq!(group_id(&unkeyed), unkeyed.id.to_string());
        assert_eq!(keyed("user-7"), "user-7");
        let hashed = keyed("naïve key");
        assert!(
            hashed.starts_with("ferry-key-") && hashed.len() == 26,
            "{hashed}"
        );
        assert_eq!(hashed, keyed("naïve key"));
        assert_ne!(hashed, keyed("other key"));
        assert!(keyed(&"k".repeat(129)).starts_with("ferry-key-"));
    }

    #[test]
    fn chunks_by_count_and_size() {
        let encoded = |size| Encoded {
            body: String::new(),
            attributes: Default::default(),
            size,
        };
        let sizes: Vec<usize> = (0..25).map(|_| 10).collect();
        let split = chunks(
            sizes
                .into_iter()
                .enumerate()
                .map(|(i, s)| (i, encoded(s)))
                .collect(),
        );
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        let big = MAX_BATCH_BYTES / 2;
        let split = chunks(vec![(0, encoded(big)), (1, encoded(big)), (2, encoded(1))]);
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    }
}
