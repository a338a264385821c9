//! The sink contract: where a pipeline (the relay, a forwarder, a
//! consumer's forward handler) hands messages over.

use std::future::Future;
use std::pin::Pin;

use crate::{ErrorKind, Failure, Message};

/// A boxed future, so that sinks can be chosen at run time (`dyn Sink`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of handing one message to a sink.
pub type Delivery = Result<(), SinkError>;

/// A destination for messages: a webhook, a broker, a null sink.
///
/// # Delivery contract
///
/// The caller is anything that hands messages over: the relay (outbox
/// rows) and a forwarder (stored events), both through the one delivery
/// engine (`ferry-delivery`), or a consumer's forward handler and
/// dead-letter publisher, one message at a time.
///
/// * **At least once.** A caller records a message as delivered only after
///   [`Sink::deliver`] returned `Ok` for it. A crash between the sink's
///   acceptance and that record makes the caller deliver the message again,
///   so a sink must pass the message id to the receiver (`ce-id`,
///   `Nats-Msg-Id`, `Idempotency-Key`, …) for it to drop the duplicate.
/// * **Batches.** `deliver` gets a batch whose messages all have *different*
///   keys (or none): no caller puts two messages of one key in the same
///   call, so a sink may send a batch's messages concurrently and in any
///   order without breaking per-key order.
/// * **One result per message**, in the batch's order. `Ok` means the
///   destination has durably accepted the message (a 2xx, a broker ack).
/// * **Errors** use the core [`ErrorKind`]: transient (retry this message,
///   counting an attempt), permanent (never retry it), unavailable (the
///   destination as a whole is down: no attempt is counted).
/// * A sink must not panic on a bad message; it returns a
///   [`SinkErrorKind::Permanent`] error instead.
/// * Implementations are shared between tasks (`Send + Sync`); `deliver`
///   may be called concurrently by several workers.
/// * **Shutdown.** The relay and the forwarder call [`Sink::shutdown`] once
///   when they stop, after their last `deliver` returned.
pub trait Sink: Send + Sync + 'static {
    /// Short name for logs and metrics, e.g. `http` or `nats`.
    fn name(&self) -> &str;

    /// Delivers each message of `batch`, returning one result per message
    /// in the same order.
    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>>;

    /// The most messages this sink wants per [`Sink::deliver`] call, if it
    /// has a limit. The caller settles each call before the next, so a slow
    /// sink with small calls still makes progress within a batch's time
    /// budget; a pipelining sink (a broker) is fastest with no limit.
    fn max_per_call(&self) -> Option<usize> {
        None
    }

    /// Flushes whatever the sink still buffers (a client's write buffer,
    /// a producer's queue) before the pipeline stops. Messages already
    /// reported `Ok` are durable without it; this only hurries what the
    /// sink does in the background. The sink stays usable afterwards (it
    /// may be shared by several pipelines, each calling this when it
    /// stops). The default does nothing.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

impl<S: Sink + ?Sized> Sink for std::sync::Arc<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
        (**self).deliver(batch)
    }
    fn max_per_call(&self) -> Option<usize> {
        (**self).max_per_call()
    }
    fn shutdown(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        (**self).shutdown()
    }
}

/// What to do after a failed delivery: the core [`ErrorKind`]. For a sink,
/// [`Unavailable`](ErrorKind::Unavailable) means the destination as a whole
/// cannot be reached (connection refused, 503, broker disconnected): the
/// caller pauses and probes the sink without counting an attempt against
/// the message; when other messages of the same call were accepted, the
/// caller treats this one as [`Transient`](ErrorKind::Transient) instead.
pub type SinkErrorKind = ErrorKind;

/// A failed delivery, with what to do next: the core [`Failure`]. Its
/// `message` is stored as the message's last error; `retry_after` is the
/// earliest time the destination asked to be retried (`Retry-After`).
pub type SinkError = Failure;
