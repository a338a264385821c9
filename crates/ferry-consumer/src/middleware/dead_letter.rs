//! Dead letters: where a message goes that will never be handled (poison,
//! retries exhausted, bytes that are not a message), so that the rest keep
//! flowing and an operator can look at it and replay it.
//!
//! [`DeadLetters`] is the destination; [`SinkDeadLetters`] publishes to a
//! dead-letter topic through any [`Sink`], [`StoreDeadLetters`] records in
//! Ferry's dead-letter table. The router dead-letters every permanent
//! error that leaves a handler; [`DeadLetterLayer`] sends one route's
//! poison to a destination of its own.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{BoxFuture, HandlerFuture, Message, Sink};

use crate::{Context, Handler, HandlerError, Layer};

/// Header naming the error that killed a message.
pub const ERROR_HEADER: &str = "ferry-dead-error";
/// Header with the number of attempts made.
pub const ATTEMPTS_HEADER: &str = "ferry-dead-attempts";
/// Header naming the consumer group that gave up.
pub const CONSUMER_HEADER: &str = "ferry-dead-consumer";
/// Header with the topic the message was consumed from.
pub const TOPIC_HEADER: &str = "ferry-dead-topic";
/// Header with when the message was dead-lettered (RFC 3339).
pub const DEAD_AT_HEADER: &str = "ferry-dead-at";

/// How long to wait before a message whose dead letter could not be
/// recorded is tried again.
pub const RECORD_RETRY: Duration = Duration::from_secs(1);

/// A message given up on, with why: the store's record, shared by every
/// [`DeadLetters`] destination. A malformed message is rebuilt with a fresh
/// id, the topic it was consumed from, and the headers and bytes as they
/// arrived.
pub use ferry_store::DeadLetter;

/// A place for dead letters.
///
/// Recording must be durable before it returns `Ok`: the router
/// acknowledges the message to its broker right after. On an error the
/// message is given back to the broker and dead-lettered again later, so
/// an implementation may see one letter twice (the message id tells).
pub trait DeadLetters: Send + Sync + 'static {
    /// Records `letter`.
    fn record<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), DeadLetterError>>;
}

impl<D: DeadLetters + ?Sized> DeadLetters for Arc<D> {
    fn record<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        (**self).record(letter)
    }
}

/// A dead letter that could not be recorded; the message is given back to
/// its broker and tried again later.
#[derive(Debug, thiserror::Error)]
#[error("could not record dead letter: {message}")]
pub struct DeadLetterError {
    /// What went wrong, short and lowercase.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DeadLetterError {
    /// An error with this description.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

/// Publishes dead letters through a [`Sink`] to a dead-letter topic: the
/// message's own topic with a suffix (`<topic>.dead` by default), or one
/// fixed topic. The message keeps its id, key, headers and payload; the
/// error, attempts, consumer group, original topic and time are added as
/// `ferry-dead-*` headers.
pub struct SinkDeadLetters {
    sink: Arc<dyn Sink>,
    topic: DeadTopic,
}

enum DeadTopic {
    Suffix(String),
    Fixed(String),
}

/// Longest error kept in a header: brokers limit header sizes.
const MAX_ERROR_HEADER: usize = 1024;

impl SinkDeadLetters {
    /// Dead letters of topic `t` go to `t.dead` through `sink`.
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        Self {
            sink,
            topic: DeadTopic::Suffix(".dead".to_owned()),
        }
    }

    /// Dead letters of topic `t` go to `t` followed by `suffix`.
    pub fn with_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.topic = DeadTopic::Suffix(suffix.into());
        self
    }

    /// All dead letters go to `topic`.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = DeadTopic::Fixed(topic.into());
        self
    }

    /// The dead-letter topic for messages of `topic`.
    pub fn topic_for(&self, topic: &str) -> String {
        match &self.topic {
            DeadTopic::Suffix(suffix) => format!("{topic}{suffix}"),
            DeadTopic::Fixed(fixed) => fixed.clone(),
        }
    }

    /// The message published for `letter`.
    fn dead_message(&self, letter: &DeadLetter) -> Message {
        let mut message = letter.message.clone();
        message.topic = self.topic_for(&letter.message.topic);
        // The copy keeps the message id (consumers of the dead-letter topic
        // dedup by it), but a broker that drops repeated ids (JetStream, SQS
        // FIFO) must not take it for the original, published moments ago:
        // the letter's id makes its broker dedup id its own.
        message
            .with_header(ferry_core::REPLAY_HEADER, letter.id.to_string())
            .with_header(ERROR_HEADER, header_value(&letter.error, MAX_ERROR_HEADER))
            .with_header(ATTEMPTS_HEADER, letter.attempts.to_string())
            .with_header(CONSUMER_HEADER, header_value(&letter.consumer, 256))
            .with_header(TOPIC_HEADER, header_value(&letter.message.topic, 256))
            .with_header(
                DEAD_AT_HEADER,
                letter
                    .dead_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            )
    }
}

/// `text` fit for a header on any broker: control characters become
/// spaces, and it is cut to at most `max` bytes on a character boundary.
fn header_value(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

impl DeadLetters for SinkDeadLetters {
    fn record<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            let batch = [self.dead_message(letter)];
            match self.sink.deliver(&batch).await.into_iter().next() {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(DeadLetterError::new(format!(
                    "{} sink refused the dead letter",
                    self.sink.name()
                ))
                .with_source(e)),
                None => Err(DeadLetterError::new(format!(
                    "{} sink returned no result",
                    self.sink.name()
                ))),
            }
        })
    }
}

/// Records dead letters in Ferry's dead-letter table (see
/// `ferry dead list`), on any database the store supports.
pub struct StoreDeadLetters {
    database: ferry_store::Database,
}

impl StoreDeadLetters {
    /// Records into `database`, whose migrations must have run.
    pub fn new(database: ferry_store::Database) -> Self {
        Self { database }
    }
}

impl DeadLetters for StoreDeadLetters {
    fn record<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            self.database
                .record_dead_letter(letter)
                .await
                .map_err(|e| DeadLetterError::new("database error").with_source(e))
        })
    }
}

/// The dead letter's id for `message` buried by `consumer`: the same each
/// time, so that burying it again (the record's answer was lost and the
/// message came back) stores it once. The message id with a hash of the
/// consumer mixed in, so two consumers burying one message keep a letter
/// each.
fn letter_id(consumer: &str, message: &Message) -> uuid::Uuid {
    // FNV-1a over 128 bits: a fixed function, the same in every build.
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in consumer.bytes() {
        hash ^= u128::from(b);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    uuid::Uuid::from_u128(message.id.0.as_u128() ^ hash)
}

/// Dead-letters `message` into `dead_letters`, marking the context so the
/// router counts it; an error becomes a transient handler error, so the
/// message is given back and tried again.
pub(crate) async fn bury(
    dead_letters: &dyn DeadLetters,
    message: &Message,
    cx: &Context,
    error: &HandlerError,
) -> Result<(), HandlerError> {
    let mut letter = DeadLetter::new(
        cx.group(),
        message.clone(),
        error.describe(),
        error.attempts.or(cx.delivery_count()).unwrap_or(1).max(1),
    );
    letter.id = letter_id(cx.group(), message);
    match dead_letters.record(&letter).await {
        Ok(()) => {
            tracing::warn!(
                message_id = %message.id,
                topic = %message.topic,
                group = %cx.group(),
                attempts = letter.attempts,
                error = %letter.error,
                "message dead-lettered"
            );
            cx.mark_dead_lettered();
            Ok(())
        }
        Err(e) => Err(
            HandlerError::transient("message could not be dead-lettered")
                .with_retry_after(RECORD_RETRY)
                .with_source(e),
        ),
    }
}

/// Sends the messages its handler fails permanently to a [`DeadLetters`]
/// destination and acknowledges them; transient errors pass through.
pub struct DeadLetterLayer {
    dead_letters: Arc<dyn DeadLetters>,
}

impl DeadLetterLayer {
    /// Dead-letters into `dead_letters`.
    pub fn new(dead_letters: Arc<dyn DeadLetters>) -> Self {
        Self { dead_letters }
    }
}

impl Layer for DeadLetterLayer {
    fn layer(&self, inner: Arc<dyn Handler>) -> Arc<dyn Handler> {
        Arc::new(DeadLetterHandler {
            inner,
            dead_letters: self.dead_letters.clone(),
        })
    }
}

struct DeadLetterHandler {
    inner: Arc<dyn Handler>,
    dead_letters: Arc<dyn DeadLetters>,
}

impl Handler for DeadLetterHandler {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        Box::pin(async move {
            match self.inner.handle(message, cx).await {
                Err(e) if !e.is_transient() => {
                    bury(self.dead_letters.as_ref(), message, cx, &e).await
                }
                other => other,
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        self.inner.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_single_line_and_bounded() {
        assert_eq!(header_value("a\r\nb\tc", 100), "a  b c");
        assert_eq!(header_value("ééé", 5), "éé");
    }

    #[test]
    fn dead_topic_naming() {
        let sink: Arc<dyn Sink> = Arc::new(crate::memory::MemoryBroker::new());
        let d = SinkDeadLetters::new(sink.clone());
        assert_eq!(d.topic_for("orders"), "orders.dead");
        let d = SinkDeadLetters::new(sink.clone()).with_suffix("-dlq");
        assert_eq!(d.topic_for("orders"), "orders-dlq");
        let d = SinkDeadLetters::new(sink).with_topic("graveyard");
        assert_eq!(d.topic_for("orders"), "graveyard");
    }
}
