//! The SQS subscriber: long polling, visibility timeouts, delete on ack.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
};
use aws_sdk_sqs::Client;
use ferry_core::{
    Acker, BoxFuture, Capabilities, Lag, LagFuture, MessageStream, Received, RetryPolicy,
    SubscribeError, SubscribeFuture, Subscriber, Subscription,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::codec::decode;
use crate::error::{classify, code_class, Class, Failure};
use crate::queue::{client, queue_name, Queues};
use crate::{SqsConfig, SqsConfigError};

/// The most messages one ReceiveMessage returns.
const MAX_RECEIVE: usize = 10;
/// The most messages one DeleteMessageBatch deletes.
const MAX_DELETE: usize = 10;
/// The longest visibility SQS allows, for nack delays.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// Receives the messages of a topic's SQS queue.
///
/// **SQS has no fan-out** (that is SNS's job): every consumer of a queue
/// shares its messages, whatever its [`Subscription::group`], which is
/// recorded in logs only. [`Capabilities::consumer_groups`] is therefore
/// not claimed; for several groups to get every message, give each group
/// its own queue (a `queue_prefix` per group, fed by a sink each).
///
/// * [`subscribe`](Subscriber::subscribe) finds (or creates, see
///   [`SqsConfig::create_queues`]) the topic's queue, mapped as
///   [`SqsSink`](crate::SqsSink) maps it, then long-polls it
///   (`WaitTimeSeconds` = [`SqsConfig::wait_time`]) for up to 10 messages at
///   a time, never more than [`Subscription::prefetch`] unsettled. Each is
///   hidden from other consumers for [`SqsConfig::visibility_timeout`]
///   from its receive: prefetched messages waiting in the stream count
///   against it too.
/// * **Ack** deletes the message, and returns once SQS has answered. The
///   acknowledgements that come in together go out together, up to 10 in
///   one `DeleteMessageBatch` (several such requests may be on their way at
///   once), each acker hearing its own entry's outcome. **Nack** makes it visible again after the
///   delay (`ChangeMessageVisibility`, rounded up to whole seconds, at most
///   12 hours), or at once. A message neither acked nor nacked comes back
///   once its visibility timeout passes; after
///   [`SqsConfig::max_receive_count`] receives it moves to the
///   dead-letter queue, when one is configured.
/// * `delivery_count` is SQS's `ApproximateReceiveCount`.
/// * FIFO queues ([`SqsConfig::fifo`]) keep each key's order (a key's
///   messages are handed out only after the previous ones were deleted or
///   came back, so a consumer holding one unsettled holds up its key) and
///   drop a message sent again with the same id.
/// * [`lag`](Subscriber::lag): `waiting` is `ApproximateNumberOfMessages`
///   plus `…Delayed`, `in_flight` `ApproximateNumberOfMessagesNotVisible`;
///   SQS does not tell the oldest message's age.
pub struct SqsSubscriber {
    client: Client,
    queues: Arc<Queues>,
    config: SqsConfig,
}

impl SqsSubscriber {
    /// Builds the client; nothing is sent before the first subscribe.
    /// Invalid settings or missing credentials fail it.
    pub async fn connect(config: SqsConfig) -> Result<Self, SqsConfigError> {
        config.validate()?;
        let client = client(&config)?;
        Ok(Self {
            queues: Arc::new(Queues::new(client.clone(), config.clone())),
            client,
            config,
        })
    }

    fn queue(&self, subscription: &Subscription) -> Result<String, SubscribeError> {
        queue_name(&self.config, &subscription.topic).ok_or_else(|| {
            SubscribeError::permanent(format!(
                "topic `{}` does not make an sqs queue name (at most 80 characters)",
                subscription.topic
            ))
        })
    }

    async fn start(&self, subscription: &Subscription) -> Result<MessageStream, SubscribeError> {
        let name = self.queue(subscription)?;
        let url = self
            .queues
            .url(&name)
            .await
            .map_err(Failure::into_subscribe_error)?;
        tracing::debug!(queue = %name, group = %subscription.group, "sqs subscription started");
        let prefetch = subscription.prefetch.max(1);
        let (tx, rx) = mpsc::channel(prefetch);
        let (deletes, pending_deletes) = mpsc::unbounded_channel();
        tokio::spawn(delete_batches(
            self.client.clone(),
            url.clone(),
            pending_deletes,
        ));
        let poller = Poller {
            client: self.client.clone(),
            queues: self.queues.clone(),
            config: self.config.clone(),
            name,
            url,
            permits: Arc::new(Semaphore::new(prefetch)),
            deletes,
        };
        tokio::spawn(poller.run(tx));
        let mut rx = rx;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn queue_lag(&self, subscription: &Subscription) -> Result<Lag, SubscribeError> {
        let name = self.queue(subscription)?;
        let Some(url) = self
            .queues
            .lookup(&name)
            .await
            .map_err(Failure::into_subscribe_error)?
        else {
            return Ok(Lag::default());
        };
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| {
                classify(e, "could not read the sqs queue's counts").into_subscribe_error()
            })?;
        let attributes = output.attributes.unwrap_or_default();
        let count =
            |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse::<u64>().ok());
        let visible = count(QueueAttributeName::ApproximateNumberOfMessages);
        let delayed = count(QueueAttributeName::ApproximateNumberOfMessagesDelayed);
        Ok(Lag {
            waiting: visible.map(|v| v + delayed.unwrap_or(0)),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            oldest_age: None,
        })
    }
}

impl Subscriber for SqsSubscriber {
    fn name(&self) -> &str {
        "sqs"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_per_key: self.config.fifo,
            persistent: true,
            consumer_groups: false,
            redelivers_unacked: true,
            dedups_by_id: self.config.fifo,
            delayed_nack: true,
        }
    }

    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        Box::pin(self.start(subscription))
    }

    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        Box::pin(self.queue_lag(subscription))
    }
}

impl fmt::Debug for SqsSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsSubscriber")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Receives from one queue into a subscription's stream.
struct Poller {
    client: Client,
    queues: Arc<Queues>,
    config: SqsConfig,
    name: String,
    url: String,
    permits: Arc<Semaphore>,
    deletes: mpsc::UnboundedSender<PendingDelete>,
}

impl Poller {
    /// Polls until the stream is dropped, or until the queue is gone or the
    /// credentials are refused (the stream then yields the error and ends).
    /// Other failures are retried with backoff, logged when they start and
    /// when they end.
    async fn run(self, tx: mpsc::Sender<Result<Received, SubscribeError>>) {
        let backoff = RetryPolicy::default();
        let mut failures: u32 = 0;
        loop {
            let batch = tokio::select! {
                _ = tx.closed() => return,
                batch = self.receive() => batch,
            };
            match batch {
                Ok(received) => {
                    if failures > 0 {
                        failures = 0;
                        tracing::info!(queue = %self.name, "sqs receiving again");
                    }
                    for item in received {
                        if tx.send(Ok(item)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(failure)
                    if matches!(
                        failure.class,
                        Class::NoQueue | Class::Denied | Class::Permanent
                    ) =>
                {
                    if failure.class == Class::NoQueue {
                        self.queues.forget(&self.name);
                    }
                    let _ = tx.send(Err(failure.into_subscribe_error())).await;
                    return;
                }
                Err(failure) => {
                    if failures == 0 {
                        tracing::warn!(queue = %self.name, error = %failure.message, "sqs receive failed; retrying");
                    }
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(backoff.delay(failures)) => {}
                    }
                }
            }
        }
    }

    /// One ReceiveMessage for as many messages as there are free prefetch
    /// permits (at least one, at most 10).
    async fn receive(&self) -> Result<Vec<Received>, Failure> {
        let Ok(first) = self.permits.clone().acquire_owned().await else {
            return Ok(Vec::new());
        };
        let mut permits = vec![first];
        while permits.len() < MAX_RECEIVE {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let wait = self.config.wait_time;
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(permits.len() as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(self.config.visibility_timeout.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::new().timeout_config(
                    aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                        .operation_timeout(wait + self.config.request_timeout)
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(|e| classify(e, "sqs receive failed"))?;
        let mut out = Vec::new();
        for message in output.messages.unwrap_or_default() {
            let Some(permit) = permits.pop() else { break };
            let Some(receipt) = message.receipt_handle.clone() else {
                continue;
            };
            let count = message
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok());
            let decoded = decode(message.body.as_deref(), message.message_attributes.as_ref());
            out.push(Received::new(
                decoded,
                count,
                SqsAcker {
                    client: self.client.clone(),
                    url: self.url.clone(),
                    receipt,
                    deletes: self.deletes.clone(),
                    _permit: permit,
                },
            ));
        }
        Ok(out)
    }
}

/// A receipt handle to delete, and where to say how that went.
type PendingDelete = (String, oneshot::Sender<Result<(), SubscribeError>>);

/// Deletes the acknowledged messages of one subscription: the receipts
/// that have come in, up to 10, go out in one DeleteMessageBatch, each on a
/// task of its own so that a slow answer does not hold back the next batch.
/// Ends when the subscription's poller and every acker are gone.
async fn delete_batches(
    client: Client,
    url: String,
    mut pending: mpsc::UnboundedReceiver<PendingDelete>,
) {
    let mut batch = Vec::with_capacity(MAX_DELETE);
    while pending.recv_many(&mut batch, MAX_DELETE).await > 0 {
        let waiting = std::mem::replace(&mut batch, Vec::with_capacity(MAX_DELETE));
        tokio::spawn(delete_batch(client.clone(), url.clone(), waiting));
    }
}

/// One DeleteMessageBatch; every acker of `waiting` hears its own outcome.
async fn delete_batch(client: Client, url: String, waiting: Vec<PendingDelete>) {
    let mut request = client.delete_message_batch().queue_url(&url);
    for (i, (receipt, _)) in waiting.iter().enumerate() {
        match DeleteMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(receipt)
            .build()
        {
            Ok(entry) => request = request.entries(entry),
            // Both fields are set: cannot happen, but must not hang an ack.
            Err(e) => {
                let e = Arc::new(e);
                for (_, done) in waiting {
                    let error = SubscribeError::permanent("sqs delete request not built")
                        .with_source(e.clone());
                    let _ = done.send(Err(error));
                }
                return;
            }
        }
    }
    let output = match request.send().await {
        Ok(output) => output,
        Err(e) => {
            let failure = classify(e, "sqs delete failed");
            for (_, done) in waiting {
                let _ = done.send(Err(failure.clone().into_subscribe_error()));
            }
            return;
        }
    };
    let mut outcomes: Vec<Option<Result<(), SubscribeError>>> =
        (0..waiting.len()).map(|_| None).collect();
    for entry in output.successful {
        if let Some(outcome) = entry
            .id
            .parse::<usize>()
            .ok()
            .and_then(|i| outcomes.get_mut(i))
        {
            *outcome = Some(Ok(()));
        }
    }
    for entry in output.failed {
        if let Some(outcome) = entry
            .id
            .parse::<usize>()
            .ok()
            .and_then(|i| outcomes.get_mut(i))
        {
            let class = if entry.sender_fault {
                code_class(Some(&entry.code))
            } else {
                Class::Transient
            };
            let failure = Failure {
                class,
                message: format!("sqs delete failed: {}", entry.code),
                source: None,
            };
            *outcome = Some(Err(failure.into_subscribe_error()));
        }
    }
    for ((_, done), outcome) in waiting.into_iter().zip(outcomes) {
        let outcome = outcome.unwrap_or_else(|| {
            Err(
                Failure::transient("sqs did not answer for the message's delete")
                    .into_subscribe_error(),
            )
        });
        let _ = done.send(outcome);
    }
}

/// Deletes on ack, changes the visibility on nack.
struct SqsAcker {
    client: Client,
    url: String,
    receipt: String,
    deletes: mpsc::UnboundedSender<PendingDelete>,
    _permit: OwnedSemaphorePermit,
}

impl Acker for SqsAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            let SqsAcker {
                receipt,
                deletes,
                _permit,
                ..
            } = *self;
            let (done, outcome) = oneshot::channel();
            let gone = || SubscribeError::unavailable("the deleting task has stopped");
            deletes.send((receipt, done)).map_err(|_| gone())?;
            // The prefetch slot stays taken until SQS has answered.
            let outcome = outcome.await.unwrap_or_else(|_| Err(gone()));
            drop(_permit);
            outcome
        })
    }

    fn nack(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SubscribeError>> {
        Box::pin(async move {
            let delay = delay.unwrap_or_default().min(MAX_VISIBILITY);
            // Rounded up: never visible before the delay has passed.
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            self.client
                .change_message_visibility()
                .queue_url(&self.url)
                .receipt_handle(&self.receipt)
                .visibility_timeout(seconds as i32)
                .send()
                .await
                .map(drop)
                .map_err(|e| classify(e, "sqs visibility change failed").into_subscribe_error())
        })
    }
}
