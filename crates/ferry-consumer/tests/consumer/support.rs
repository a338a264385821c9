//! Helpers shared by the tests: a subscriber that counts what it hands out,
//! a dead-letter destination that keeps what it gets, running a router, and
//! waiting for a condition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_consumer::middleware::DeadLetterError;
use ferry_consumer::{DeadLetter, DeadLetters, HandlerError, Router, RouterError, ShutdownReport};
use ferry_core::{
    BoxFuture, Capabilities, LagFuture, MessageStream, SubscribeFuture, Subscriber, Subscription,
};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A unique topic name for one test: `name-<a fresh UUIDv7>`.
pub use ferry_testkit::broker::unique as topic;

/// Wraps a subscriber and counts the messages its streams hand out.
pub struct Counting {
    inner: Arc<dyn Subscriber>,
    received: Arc<AtomicU64>,
}

impl Counting {
    pub fn new(inner: Arc<dyn Subscriber>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            received: Arc::default(),
        })
    }

    /// Messages handed out so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Subscriber for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        Box::pin(async move {
            let stream = self.inner.subscribe(subscription).await?;
            let received = self.received.clone();
            let counted = stream.inspect(move |item| {
                if item.is_ok() {
                    received.fetch_add(1, Ordering::SeqCst);
                }
            });
            Ok(Box::pin(counted) as MessageStream)
        })
    }
    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        self.inner.lag(subscription)
    }
}

/// Keeps every dead letter it is given.
#[derive(Default)]
pub struct Graveyard {
    letters: Mutex<Vec<DeadLetter>>,
}

impl Graveyard {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn letters(&self) -> Vec<DeadLetter> {
        self.letters.lock().unwrap().clone()
    }
}

impl DeadLetters for Graveyard {
    fn record<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        self.letters.lock().unwrap().push(letter.clone());
        Box::pin(async { Ok(()) })
    }
}

/// A router running in a task of its own, stopped by `stop`.
pub struct Running {
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<ShutdownReport, RouterError>>,
}

impl Running {
    pub fn start(router: Router) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(router.run(stop.clone().cancelled_owned()));
        Self { stop, task }
    }

    /// Stops the router and returns its report.
    pub async fn shut_down(self) -> ShutdownReport {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("router stops")
            .expect("router task")
            .expect("router ends without error")
    }
}

/// `Err(error)` when `failing`, else `Ok(())`: what a handler that fails
/// on some calls returns.
pub fn fail_if(failing: bool, error: HandlerError) -> Result<(), HandlerError> {
    if failing {
        Err(error)
    } else {
        Ok(())
    }
}

/// Waits up to 10 s for `condition`, panicking with `what` otherwise.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
