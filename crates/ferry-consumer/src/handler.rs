//! The handler contract: what the router calls for each message, and what a
//! handler's error tells it to do next.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use ferry_core::{BoxFuture, HandlerFuture, Message, Sink, SinkErrorKind};

use crate::middleware::correlation;

/// Handles the messages of one subscription.
///
/// # Delivery contract
///
/// * **At least once.** The router acknowledges a message only after
///   [`Handler::handle`] returned `Ok` for it. A crash, a lost ack, a nack
///   or a producer's re-send means a handler may see a message again, with
///   the same [`Message::id`]: make the handler idempotent, or wrap it in
///   the [inbox](crate::inbox), which applies each message once in the
///   handler's own database transaction.
/// * **Order.** Messages with the same [`Message::key`] are handled one
///   after another, in the order the broker hands them out; messages of
///   different keys (or none) concurrently. A handler is therefore called
///   from several tasks at once (`Send + Sync`). A message given back to
///   the broker (a transient error once in-process retries are over) lets
///   the messages of its key behind it go first.
/// * **Errors** say what happens next: [`HandlerErrorKind::Transient`] is
///   retried (in process by the [retry](crate::middleware::retry)
///   middleware, then by the broker), [`HandlerErrorKind::Permanent`] is
///   dead-lettered at once and the message acknowledged.
/// * **Cancellation.** At shutdown a handler still running after the
///   deadline is dropped at an `.await` and its message given back to the
///   broker; whatever it did before is not rolled back unless it ran in a
///   transaction (the inbox's is).
/// * A handler must not panic on a bad message; it returns a permanent
///   error instead.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a>;

    /// Resolves when the handler is willing to take another message; the
    /// router waits for it before it pulls the next one from the broker (as
    /// tower's `poll_ready`). Always ready unless a middleware such as the
    /// [circuit breaker](crate::middleware::circuit_breaker) holds it
    /// back; middleware forwards it to the handler it wraps.
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        (**self).handle(message, cx)
    }
    fn ready(&self) -> BoxFuture<'_, ()> {
        (**self).ready()
    }
}

/// Wraps a handler in another that adds behaviour (retry, timeout, …), as
/// tower's `Layer`. A router applies its layers once per subscription, so
/// state a layer creates in [`Layer::layer`] (a circuit breaker, a dedup
/// memory) belongs to that subscription.
pub trait Layer: Send + Sync + 'static {
    /// The handler `inner` with this layer's behaviour around it.
    fn layer(&self, inner: Arc<dyn Handler>) -> Arc<dyn Handler>;
}

/// Wrapping a handler in layers.
pub trait HandlerExt: Handler + Sized {
    /// This handler wrapped in `layer`; chain calls to stack layers, the
    /// last one outermost.
    fn with(self, layer: impl Layer) -> Arc<dyn Handler> {
        layer.layer(Arc::new(self))
    }
}

impl<H: Handler> HandlerExt for H {}

/// What a handler knows about the delivery of the message it handles.
#[derive(Clone, Debug)]
pub struct Context {
    group: Arc<str>,
    delivery_count: Option<u32>,
    correlation_id: String,
    causation_id: Option<String>,
    pub(crate) report: Arc<Report>,
}

/// What middleware tells the router about a message beyond its result.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// The message was dead-lettered (the `Ok` means "settled", not "handled").
    pub(crate) dead_lettered: AtomicBool,
    /// In-process retries made for this delivery.
    pub(crate) retries: AtomicU32,
}

impl Context {
    /// The context of `message` delivered to consumer group `group` for the
    /// `delivery_count`-th time (when the broker counts). The correlation id
    /// is the message's `ferry-correlation-id` header, or its own id when it
    /// starts a conversation; the causation id its `ferry-causation-id`.
    pub fn new(group: impl Into<Arc<str>>, message: &Message, delivery_count: Option<u32>) -> Self {
        Self {
            group: group.into(),
            delivery_count,
            correlation_id: correlation::correlation_id(message),
            causation_id: message.headers.get(correlation::CAUSATION_ID).cloned(),
            report: Arc::default(),
        }
    }

    /// The consumer group the message was delivered to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// How many times the broker has delivered the message, this time
    /// included, when it counts.
    pub fn delivery_count(&self) -> Option<u32> {
        self.delivery_count
    }

    /// The id shared by every message of one conversation.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The id of the message that caused this one, if it says.
    pub fn causation_id(&self) -> Option<&str> {
        self.causation_id.as_deref()
    }

    pub(crate) fn mark_dead_lettered(&self) {
        self.report.dead_lettered.store(true, Ordering::Relaxed);
    }

    pub(crate) fn count_retry(&self) {
        self.report.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the router should do after a handler failed: the core
/// [`ErrorKind`](ferry_core::ErrorKind). Transient and unavailable are
/// retried (by the retry middleware, then by the broker); permanent is
/// dead-lettered at once, without burning retries.
pub type HandlerErrorKind = ferry_core::ErrorKind;

/// A failed handler call, with what to do next: the core
/// [`HandlerError`](ferry_core::HandlerError), shared with the forwarder's
/// event handlers.
pub use ferry_core::HandlerError;

/// A handler made of an async closure; see [`handler_fn`].
pub struct HandlerFn<F>(F);

/// Makes a handler of an async closure. It gets the message and its context
/// by value (both are cheap to clone: the payload is shared), so the
/// returned future can be `'static`:
///
/// ```
/// use ferry_consumer::{handler_fn, HandlerError};
/// let h = handler_fn(|message, _cx| async move {
///     if message.payload.is_empty() {
///         return Err(HandlerError::permanent("empty payload"));
///     }
///     Ok(())
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    HandlerFn(f)
}

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Message, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        Box::pin((self.0)(message.clone(), cx.clone()))
    }
}

/// A handler that hands each message on to a [`Sink`] (a webhook, another
/// broker): the consumer half of a bridge. A sink's transient and
/// unavailable errors are transient here, its permanent errors permanent,
/// and its `Retry-After` is kept.
pub struct Forward {
    sink: Arc<dyn Sink>,
}

impl Forward {
    /// Forwards to `sink`.
    pub fn new(sink: Arc<dyn Sink>) -> Self {
        Self { sink }
    }
}

impl Handler for Forward {
    fn handle<'a>(&'a self, message: &'a Message, _cx: &'a Context) -> HandlerFuture<'a> {
        Box::pin(async move {
            let batch = std::slice::from_ref(message);
            let result = self.sink.deliver(batch).await.into_iter().next();
            match result {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => {
                    // The router holds one message: it cannot tell a down
                    // sink from a refused message, so both are retried.
                    let kind = match e.kind {
                        SinkErrorKind::Permanent => HandlerErrorKind::Permanent,
                        _ => HandlerErrorKind::Transient,
                    };
                    let mut err = HandlerError::new(
                        kind,
                        format!("{} sink refused the message", self.sink.name()),
                    );
                    err.retry_after = e.retry_after;
                    Err(err.with_source(e))
                }
                None => Err(HandlerError::transient(format!(
                    "{} sink returned no result",
                    self.sink.name()
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_core::{Delivery, SinkError};

    use super::*;

    /// Answers every message with a clone of one error, or accepts it.
    struct Answering(Option<SinkErrorKind>);

    impl Sink for Answering {
        fn name(&self) -> &str {
            "answering"
        }
        fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
            let answer = || match self.0 {
                None => Ok(()),
                Some(SinkErrorKind::Permanent) => Err(SinkError::permanent("400")),
                Some(SinkErrorKind::Transient) => {
                    Err(SinkError::transient("429").with_retry_after(Duration::from_secs(7)))
                }
                // Unavailable (the kinds are non-exhaustive).
                Some(_) => Err(SinkError::unavailable("refused")),
            };
            Box::pin(std::future::ready(batch.iter().map(|_| answer()).collect()))
        }
    }

    async fn forward(answer: Option<SinkErrorKind>) -> Result<(), HandlerError> {
        let m = Message::event("t", "{}");
        Forward::new(Arc::new(Answering(answer)))
            .handle(&m, &Context::new("g", &m, None))
            .await
    }

    #[tokio::test]
    async fn forward_maps_sink_errors() {
        forward(None).await.unwrap();
        let e = forward(Some(SinkErrorKind::Permanent)).await.unwrap_err();
        assert_eq!(e.kind, HandlerErrorKind::Permanent);
        assert_eq!(e.describe(), "answering sink refused the message: 400");
        let e = forward(Some(SinkErrorKind::Transient)).await.unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        let e = forward(Some(SinkErrorKind::Unavailable)).await.unwrap_err();
        assert!(e.is_transient());
    }
}
