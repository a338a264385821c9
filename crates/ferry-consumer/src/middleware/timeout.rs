//! Timeout: an attempt that takes too long fails, transiently.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{BoxFuture, HandlerFuture, Message};

use crate::{Context, Handler, HandlerError, Layer};

/// Fails an attempt that has not finished within a time limit with a
/// [transient](crate::HandlerErrorKind::Transient) error (the handler's
/// future is dropped). Put it inside [`Retry`](super::Retry) to limit each
/// attempt, outside to limit all of them together.
#[derive(Clone, Copy, Debug)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// Limits each call to `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl Layer for Timeout {
    fn layer(&self, inner: Arc<dyn Handler>) -> Arc<dyn Handler> {
        Arc::new(TimeoutHandler {
            inner,
            limit: self.limit,
        })
    }
}

struct TimeoutHandler {
    inner: Arc<dyn Handler>,
    limit: Duration,
}

impl Handler for TimeoutHandler {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, self.inner.handle(message, cx)).await {
                Ok(result) => result,
                Err(_) => Err(HandlerError::transient(format!(
                    "handler timed out after {}",
                    humantime::format_duration(self.limit)
                ))),
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
    use crate::middleware::testing::handle;
    use crate::{handler_fn, HandlerExt};

    #[tokio::test]
    async fn slow_attempts_fail_transiently() {
        let h = handler_fn(|m: Message, _| async move {
            if m.payload == "slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok(())
        })
        .with(Timeout::new(Duration::from_millis(30)));
        let slow = Message::event("t", "slow");
        let err = handle(&h, &slow, None).await.unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.message, "handler timed out after 30ms");
        let fast = Message::event("t", "fast");
        handle(&h, &fast, None).await.unwrap();
    }
}
