//! Handler middleware, one module each, composable as [`Layer`](crate::Layer)s.
//!
//! A typical stack, outermost first (what
//! [`RouterConfig`](crate::RouterConfig) builds): [`Correlation`] (a span
//! with the ids around everything), [`Dedup`] (duplicates skip everything
//! below), [`CircuitBreaker`] (sees a message's final result after
//! retries, and holds back pulling), [`Retry`] (in process, then back to
//! the broker, then dead letter), [`Timeout`] (each attempt on its own).
//! A [permanent](crate::HandlerErrorKind::Permanent) error that leaves the
//! stack is dead-lettered by the router; [`DeadLetterLayer`] sends one
//! route's poison somewhere else.

pub mod circuit_breaker;
pub mod correlation;
pub mod dead_letter;
pub mod dedup;
pub mod retry;
#[cfg(test)]
mod testing;
pub mod timeout;

pub use circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
pub use correlation::Correlation;
pub use dead_letter::{
    DeadLetter, DeadLetterError, DeadLetterLayer, DeadLetters, SinkDeadLetters, StoreDeadLetters,
};
pub use dedup::{Dedup, DedupConfig};
pub use retry::{Retry, RetryConfig};
pub use timeout::Timeout;
