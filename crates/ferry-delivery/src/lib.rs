//! Ferry's delivery engine: the one place that decides how a batch of
//! messages reaches a [`Sink`](ferry_core::Sink). The relay (outbox rows)
//! and the forwarder (stored events) both call it, so they behave alike.
//!
//! # What it does
//!
//! * **Waves, per-key order.** [`deliver`] sends a batch in *waves*: each
//!   wave holds the next message of every key (a message without a key is
//!   a key of its own), and the next wave goes only when this one is
//!   settled. So two messages of one key are never in one sink call, and
//!   they reach the sink in the batch's order.
//! * **Ordering policy.** With [`OrderPolicy::Ordered`] a message that will
//!   be retried holds back the rest of its key (only its key) for the rest
//!   of the batch; with [`OrderPolicy::Unordered`] they go on.
//! * **Retry or give up.** A failed message's next step is decided by
//!   [`decide`]: a [transient](ferry_core::ErrorKind::Transient) failure is
//!   retried after the [`RetryPolicy`](ferry_core::RetryPolicy)'s backoff
//!   (or the sink's `Retry-After`, capped) until its attempts are spent; a
//!   [permanent](ferry_core::ErrorKind::Permanent) one, or spent attempts,
//!   give it up (the caller dead-letters, skips or stops; with
//!   [`AfterGiveUp::Stop`] nothing more of the batch is sent after it).
//! * **A sink that is down.** A call in which nothing was accepted and some
//!   message was refused as [unavailable](ferry_core::ErrorKind::Unavailable)
//!   means the sink is down: those messages are released without counting
//!   an attempt and the batch stops ([`BatchResult::unavailable`]). The
//!   caller records it in its sink [`Health`], which pauses with capped
//!   backoff and logs once per change of state, and then sends probes of
//!   [`probe_limit`] messages — 1, 2, 4 … [`MAX_PROBE`], one per key — so
//!   that one message the sink keeps refusing shares a call with others
//!   and is retried on its own instead of holding everything. A message
//!   refused as unavailable while others of its call were accepted is a
//!   transient failure of that message.
//! * **A window over a stream.** A pipeline reading an ordered stream
//!   whose position may only advance over what is settled (the
//!   forwarder's stored events, a CDC pipeline's changes) keeps the items
//!   read past it in a [`Window`]. Each [round](Window::round) hands the
//!   engine, per key, the first unsettled item and those after it up to
//!   the first that waits for a retry (one per key while probing), so a
//!   retry holds back its own key only and the other keys keep flowing;
//!   [`Window::apply`] records the engine's result, and the position moves
//!   to the end of the [settled prefix](Window::pop_settled).
//! * **Time budget.** A batch may be given a budget: a sink call not
//!   finished by then counts as a failed attempt (the messages may have
//!   arrived), and what was not tried is released.
//!
//! # Guarantee
//!
//! At least once: a message's [`Outcome`] is
//! [`Delivered`](Outcome::Delivered) only after the sink returned `Ok` for
//! it. The caller records outcomes durably; a crash before that delivers
//! the message again, and receivers drop the duplicate by message id.

mod health;
mod outcome;
mod probe;
mod waves;
mod window;

pub use health::{Health, SinkBackoff};
pub use outcome::{tally, AfterGiveUp, Claimed, Item, OrderPolicy, Outcome};
pub use probe::{probe_limit, MAX_PROBE};
pub use waves::{decide, deliver, BatchResult, Decision};
pub use window::{Attempt, Entry, Failure, Round, Window};
