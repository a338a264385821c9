//! Queue names, the SQS client, and finding or creating queues.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::operation::get_queue_url::GetQueueUrlError;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;

use crate::error::{classify, Class, Failure};
use crate::{SqsConfig, SqsConfigError};

/// The longest queue name SQS accepts, `.fifo` included.
pub(crate) const MAX_QUEUE_NAME: usize = 80;

/// Whether SQS allows `c` in a queue name (besides a FIFO queue's `.fifo`).
fn is_legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// A non-empty name of legal characters.
pub(crate) fn is_queue_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(is_legal)
}

/// The queue of `topic`: the prefix, the topic with every character SQS
/// does not allow replaced with `_`, and `.fifo` for FIFO queues. `None`
/// when it is empty or longer than 80 characters.
pub(crate) fn queue_name(config: &SqsConfig, topic: &str) -> Option<String> {
    let mut name = config.queue_prefix.clone();
    name.extend(topic.chars().map(|c| if is_legal(c) { c } else { '_' }));
    if config.fifo {
        name.push_str(".fifo");
    }
    (!topic.is_empty() && name.len() <= MAX_QUEUE_NAME).then_some(name)
}

/// The dead-letter queue's name, with `.fifo` for FIFO queues.
fn dead_letter_name(config: &SqsConfig) -> Option<String> {
    let name = config.dead_letter_queue.as_ref()?;
    Some(match config.fifo && !name.ends_with(".fifo") {
        true => format!("{name}.fifo"),
        false => name.clone(),
    })
}

/// An SQS client for `config`: its endpoint, region and static
/// credentials, with `request_timeout` on every operation.
pub(crate) fn client(config: &SqsConfig) -> Result<Client, SqsConfigError> {
    let credentials = match (&config.access_key_id, &config.secret_access_key) {
        (Some(id), Some(secret)) => Credentials::new(id, secret, None, None, "ferry-config"),
        _ => {
            let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
            match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => {
                    Credentials::new(id, secret, var("AWS_SESSION_TOKEN"), None, "ferry-env")
                }
                _ => return Err(SqsConfigError::NoCredentials),
            }
        }
    };
    let timeouts = aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
        .operation_timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .build();
    let mut builder = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .credentials_provider(credentials)
        .timeout_config(timeouts);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
    }
    Ok(Client::from_conf(builder.build()))
}

/// Queue URLs by name, looked up (or created) once per process.
pub(crate) struct Queues {
    client: Client,
    config: SqsConfig,
    urls: Mutex<HashMap<String, String>>,
}

impl Queues {
    pub(crate) fn new(client: Client, config: SqsConfig) -> Self {
        Self {
            client,
            config,
            urls: Mutex::new(HashMap::new()),
        }
    }

    fn urls(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A cache: a panic elsewhere cannot leave it wrong.
        self.urls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a queue whose URL stopped working (it was deleted).
    pub(crate) fn forget(&self, name: &str) {
        self.urls().remove(name);
    }

    /// The URL of the queue `name`, created first when it is missing and
    /// [`SqsConfig::create_queues`] is on.
    pub(crate) async fn url(&self, name: &str) -> Result<String, Failure> {
        if let Some(url) = self.urls().get(name) {
            return Ok(url.clone());
        }
        let url = if self.config.create_queues {
            self.create(name).await?
        } else {
            self.lookup(name)
                .await?
                .ok_or_else(|| Failure::no_queue(name))?
        };
        self.urls().insert(name.to_owned(), url.clone());
        Ok(url)
    }

    /// The URL of an existing queue, `None` when there is no such queue.
    pub(crate) async fn lookup(&self, name: &str) -> Result<Option<String>, Failure> {
        if let Some(url) = self.urls().get(name) {
            return Ok(Some(url.clone()));
        }
        match self.client.get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url),
            Err(e) => {
                let queue_missing = e
                    .as_service_error()
                    .is_some_and(GetQueueUrlError::is_queue_does_not_exist);
                let failure = classify(e, "could not look up the sqs queue");
                if queue_missing || failure.class == Class::NoQueue {
                    Ok(None)
                } else {
                    Err(failure)
                }
            }
        }
    }

    /// Creates `name` with Ferry's attributes, or finds it when it exists
    /// (with whatever attributes it has).
    async fn create(&self, name: &str) -> Result<String, Failure> {
        let mut request = self.client.create_queue().queue_name(name).attributes(
            QueueAttributeName::VisibilityTimeout,
            self.config.visibility_timeout.as_secs().to_string(),
        );
        if self.config.fifo {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        if let Some(dead) = dead_letter_name(&self.config).filter(|dead| dead != name) {
            let arn = self.dead_letter_arn(&dead).await?;
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": self.config.max_receive_count.to_string(),
            });
            request = request.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        match request.send().await {
            Ok(out) => out
                .queue_url
                .ok_or_else(|| Failure::transient("sqs created a queue without a url")),
            Err(e) => {
                // An existing queue with other attributes: use it as it is.
                let exists = e
                    .as_service_error()
                    .is_some_and(|e| e.is_queue_name_exists());
                if !exists {
                    return Err(classify(e, "could not create the sqs queue"));
                }
                self.lookup(name)
                    .await?
                    .ok_or_else(|| Failure::no_queue(name))
            }
        }
    }

    /// The ARN of the dead-letter queue, created when missing.
    async fn dead_letter_arn(&self, name: &str) -> Result<String, Failure> {
        let mut request = self.client.create_queue().queue_name(name);
        if self.config.fifo {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let url = match request.send().await {
            Ok(out) => out.queue_url,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_queue_name_exists()) =>
            {
                self.lookup(name).await?
            }
            Err(e) => return Err(classify(e, "could not create the sqs dead-letter queue")),
        }
        .ok_or_else(|| Failure::no_queue(name))?;
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify(e, "could not read the sqs dead-letter queue's arn"))?;
        attributes
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| Failure::transient("sqs did not tell the dead-letter queue's arn"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        let mut config = SqsConfig {
            queue_prefix: "ferry-".to_owned(),
            ..SqsConfig::default()
        };
        assert_eq!(
            queue_name(&config, "order.placed").as_deref(),
            Some("ferry-order_placed")
        );
        assert_eq!(queue_name(&config, "a b/é").as_deref(), Some("ferry-a_b__"));
        assert_eq!(queue_name(&config, ""), None);
        assert!(queue_name(&config, &"x".repeat(74)).is_some());
        assert_eq!(queue_name(&config, &"x".repeat(75)), None);
        config.fifo = true;
        assert_eq!(queue_name(&config, "a").as_deref(), Some("ferry-a.fifo"));
        assert_eq!(queue_name(&config, &"x".repeat(70)), None);
        config.dead_letter_queue = Some("dead".to_owned());
        assert_eq!(dead_letter_name(&config).as_deref(), Some("dead.fifo"));
    }
}
