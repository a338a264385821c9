//! What the middleware's unit tests share: handlers that answer as told
//! and count their calls, and one call of a handler.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use ferry_core::Message;

use crate::{handler_fn, Context, Handler, HandlerError};

/// A handler that counts its calls in `calls` and answers what `answer`
/// says for the call's number (0 for the first).
pub fn scripted(
    calls: Arc<AtomicU32>,
    answer: impl Fn(u32) -> Result<(), HandlerError> + Send + Sync + 'static,
) -> impl Handler {
    handler_fn(move |_, _| {
        let result = answer(calls.fetch_add(1, Ordering::SeqCst));
        async move { result }
    })
}

/// A handler failing transiently (`error`) on its first `failures` calls,
/// then succeeding.
pub fn flaky(failures: u32, calls: Arc<AtomicU32>, error: &'static str) -> impl Handler {
    scripted(calls, move |n| {
        if n < failures {
            Err(HandlerError::transient(error))
        } else {
            Ok(())
        }
    })
}

/// `h` handling `m` in group `g`, the broker having counted `delivery`.
pub async fn handle(
    h: &Arc<dyn Handler>,
    m: &Message,
    delivery: Option<u32>,
) -> Result<(), HandlerError> {
    h.handle(m, &Context::new("g", m, delivery)).await
}
