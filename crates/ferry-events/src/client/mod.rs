//! A client of the HTTP offset API that remembers how far it got.
//!
//! # Delivery contract: at least once
//!
//! [`EventsClient::next_page`] hands out the page after the client's
//! position; the caller handles its events, then calls
//! [`EventsClient::commit`], which stores the page's `next_offset` durably
//! in an [`OffsetStore`]. A client made later (after a restart, a crash, a
//! drop) starts from the committed offset. So an event is handed out at
//! least once: a crash between handling a page and committing it hands the
//! page out again. Handle events idempotently, keyed by the event id
//! ([`StoredEvent::id`]), or store the offset in the same transaction as
//! the effects.
//!
//! The server is retried with the client's [`RetryPolicy`] while it is
//! unreachable or answers 5xx or 429; a 400 (a bad parameter), a 401 (a
//! missing or wrong token) and any other answer are errors at once, since
//! asking again would get the same answer.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_events::client::{ClientConfig, EventsClient, FileOffsetStore};
//!
//! let config = ClientConfig {
//!     limit: 500,
//!     wait: Some(std::time::Duration::from_secs(10)),
//!     ..ClientConfig::new("http://127.0.0.1:9464".parse()?)
//! };
//! let mut client = EventsClient::new(config, FileOffsetStore::new("billing.offset")).await?;
//! loop {
//!     let page = client.next_page().await?;
//!     for event in &page.events {
//!         println!("{} {} {}", event.seq, event.event_type, event.id);
//!     }
//!     client.commit(&page).await?;
//! }
//! # }
//! ```

mod offsets;

use std::time::Duration;

use ferry_core::RetryPolicy;
use ferry_store::event_store::{StoredEvent, MAX_PAGE};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use url::Url;

use crate::api::body::BodyError;
use crate::api::{BearerToken, ErrorBody, HeadBody, PageBody};

pub use offsets::{DatabaseOffsetStore, FileOffsetStore, OffsetError, OffsetStore};

/// What a client reads and how.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:9464` (a path prefix,
    /// as behind a proxy, is kept: `https://host/ferry/` asks for
    /// `https://host/ferry/v1/events`).
    pub url: Url,
    /// Sent as `Authorization: Bearer …` when set.
    pub token: Option<BearerToken>,
    /// Events per page: default 100, from 1 to [`MAX_PAGE`] (10000;
    /// [`EventsClient::new`] refuses others with [`ClientError::Config`]).
    /// Keep it at most the server's `max_limit` (1000 by default): a
    /// server refuses a larger one with 400, so every call fails with
    /// [`ClientError::Rejected`] naming the parameter `limit`.
    pub limit: u32,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events of this source type.
    pub source_type: Option<String>,
    /// Only events of this source id.
    pub source_id: Option<String>,
    /// Ask the server to hold an empty page this long for new events (long
    /// poll; sent in whole milliseconds). Keep it at most the server's
    /// `max_wait` (30 s by default): a server refuses a longer one with
    /// 400, so every call fails with [`ClientError::Rejected`] naming the
    /// parameter `wait`. `None`: an empty page comes back at once.
    pub wait: Option<Duration>,
    /// Time limit of one request, on top of `wait` (default 30 s).
    pub timeout: Duration,
    /// Retries while the server is unreachable or answers 5xx/429: after
    /// `max_attempts` attempts the call returns
    /// [`ClientError::Unavailable`]; calling again starts over.
    pub retry: RetryPolicy,
}

impl ClientConfig {
    /// Checks what can be checked without asking the server (its own
    /// `max_limit` and `max_wait` are known only to it): a `limit` from 1
    /// to [`MAX_PAGE`], a valid retry policy, a base URL.
    pub fn validate(&self) -> Result<(), ClientError> {
        if !(1..=MAX_PAGE).contains(&self.limit) {
            return Err(ClientError::config(format!(
                "limit must be from 1 to {MAX_PAGE}, got {}",
                self.limit
            )));
        }
        self.retry
            .validate()
            .map_err(|e| ClientError::config_from("invalid retry policy", e))?;
        if self.url.cannot_be_a_base() {
            return Err(ClientError::config(format!(
                "`{}` cannot be a base url",
                self.url
            )));
        }
        Ok(())
    }

    /// Defaults for the server at `url`.
    pub fn new(url: Url) -> Self {
        Self {
            url,
            token: None,
            limit: crate::api::DEFAULT_LIMIT,
            event_type: None,
            source_type: None,
            source_id: None,
            wait: None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy {
                max_attempts: 10,
                initial_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(30),
                ..RetryPolicy::default()
            },
        }
    }
}

/// A page handed out by [`EventsClient::next_page`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsPage {
    /// The offset it was read from.
    pub offset: i64,
    /// The events, in sequence order, with their payloads' bytes as stored.
    pub events: Vec<StoredEvent>,
    /// What [`EventsClient::commit`] stores for this page.
    pub next_offset: i64,
}

/// A call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work (a base URL that cannot take a path,
    /// a limit out of range, a retry policy out of range); fix it.
    #[error("invalid client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The server refused the token (401). Retrying does not help.
    #[error("the events api refused the request: {message} (401)")]
    Unauthorized {
        /// The server's words.
        message: String,
    },
    /// The server refused the request (a 4xx other than 401 and 429, e.g. a
    /// 400 naming a parameter). Retrying does not help.
    #[error("the events api refused the request: {message} ({status})")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The server's words.
        message: String,
        /// The parameter at fault, on a 400.
        parameter: Option<String>,
    },
    /// The server stayed unreachable or failing for every attempt of the
    /// retry policy. Calling again later may succeed.
    #[error("the events api is unavailable after {attempts} attempt(s): {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure, in words.
        last: String,
        /// The last transport error, when it was one.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// A 200 whose body is not what the API sends. Retrying does not help.
    #[error("the events api answered with a body that cannot be read")]
    Malformed(#[source] MalformedBody),
    /// The offset could not be loaded or saved; see the source for whether
    /// a retry helps.
    #[error("offset store failed")]
    Offset(#[from] OffsetError),
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MalformedBody {
    /// Not the JSON the API sends.
    #[error("not the expected json")]
    Json(#[from] serde_json::Error),
    /// An event that breaks the payload rules.
    #[error("bad event")]
    Event(#[from] BodyError),
    /// A page whose `next_offset` goes back, or whose events are not after
    /// the offset asked for, in order.
    #[error("{0}")]
    Order(String),
}

impl ClientError {
    fn config(reason: impl Into<String>) -> Self {
        ClientError::Config {
            reason: reason.into(),
            source: None,
        }
    }

    fn config_from(reason: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ClientError::Config {
            reason: reason.to_owned(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether calling again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable { .. } => true,
            ClientError::Offset(OffsetError::Store { source, .. }) => source.is_retryable(),
            _ => false,
        }
    }
}

/// Follows the event log over HTTP from a durable offset; see the
/// [module](self) for the delivery contract. One client per reader: two
/// clients on one offset store would commit over each other.
#[derive(Debug)]
pub struct EventsClient<S> {
    http: reqwest::Client,
    events_url: Url,
    head_url: Url,
    config: ClientConfig,
    store: S,
    committed: i64,
    position: i64,
}

impl<S: OffsetStore> EventsClient<S> {
    /// A client that starts from the offset in `store`; fails with
    /// [`ClientError::Config`] when the configuration does not pass
    /// [`ClientConfig::validate`].
    pub async fn new(config: ClientConfig, store: S) -> Result<Self, ClientError> {
        config.validate()?;
        let mut base = config.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let join = |path: &str| {
            base.join(path)
                .map_err(|e| ClientError::config_from("cannot make the api's url", e))
        };
        let (events_url, head_url) = (join("v1/events")?, join("v1/events/head")?);
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| ClientError::config_from("cannot build the http client", e))?;
        let committed = store.load().await?;
        Ok(Self {
            http,
            events_url,
            head_url,
            config,
            store,
            committed,
            position: committed,
        })
    }

    /// The offset stored durably: a new client starts after it.
    pub fn committed(&self) -> i64 {
        self.committed
    }

    /// The offset the next [`next_page`](Self::next_page) reads after.
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The offset store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The next page after [`position`](Self::position), which then moves
    /// to the page's `next_offset` (in memory only: see
    /// [`commit`](Self::commit)). An empty page means the reader is at the
    /// head (after `wait`, when set).
    pub async fn next_page(&mut self) -> Result<EventsPage, ClientError> {
        let offset = self.position;
        let mut url = self.events_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("offset", &offset.to_string());
            q.append_pair("limit", &self.config.limit.to_string());
            for (name, value) in [
                ("type", &self.config.event_type),
                ("source_type", &self.config.source_type),
                ("source_id", &self.config.source_id),
            ] {
                if let Some(value) = value {
                    q.append_pair(name, value);
                }
            }
            if let Some(wait) = self.config.wait {
                q.append_pair("wait", &format!("{}ms", wait.as_millis()));
            }
        }
        let timeout = self.config.timeout + self.config.wait.unwrap_or_default();
        let body: PageBody = self.get(url, timeout).await?;
        let page = checked_page(offset, body).map_err(ClientError::Malformed)?;
        self.position = page.next_offset;
        Ok(page)
    }

    /// Stores `page.next_offset` durably: every event of the page, and of
    /// the pages before it, is handled. An offset at or below the committed
    /// one changes nothing.
    pub async fn commit(&mut self, page: &EventsPage) -> Result<(), ClientError> {
        self.commit_offset(page.next_offset).await
    }

    /// Stores `offset` durably (an event's `seq`, to commit part of a
    /// page). At or below the committed offset it changes nothing.
    pub async fn commit_offset(&mut self, offset: i64) -> Result<(), ClientError> {
        if offset <= self.committed {
            return Ok(());
        }
        self.store.save(offset).await?;
        self.committed = offset;
        self.position = self.position.max(offset);
        Ok(())
    }

    /// Moves the position back to the committed offset, to be handed the
    /// uncommitted pages again (after a failure to handle one, say).
    pub fn rewind(&mut self) {
        self.position = self.committed;
    }

    /// The highest sequence number committed in the event store.
    pub async fn head(&self) -> Result<i64, ClientError> {
        let body: HeadBody = self.get(self.head_url.clone(), self.config.timeout).await?;
        Ok(body.head)
    }

    /// GET `url`, retrying per the policy while the server is unreachable
    /// or failing.
    async fn get<T: DeserializeOwned>(
        &self,
        url: Url,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let mut failed = 0u32;
        loop {
            let (last, source) = match self.attempt(&url, timeout).await {
                Attempt::Done(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| ClientError::Malformed(e.into()))
                }
                Attempt::Refused(e) => return Err(e),
                Attempt::Failed { last, source } => (last, source),
            };
            failed += 1;
            if !self.config.retry.allows_another(failed) {
                return Err(ClientError::Unavailable {
                    attempts: failed,
                    last,
                    source,
                });
            }
            let pause = self.config.retry.delay(failed);
            tracing::warn!(
                url = %url.path(),
                attempt = failed,
                error = %last,
                pause = ?pause,
                "events api unavailable; retrying"
            );
            tokio::time::sleep(pause).await;
        }
    }

    async fn attempt(&self, url: &Url, timeout: Duration) -> Attempt {
        let mut request = self.http.get(url.clone()).timeout(timeout);
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token.expose());
        }
        let failed = |e: reqwest::Error| Attempt::Failed {
            last: ferry_core::error_chain(&e),
            source: Some(e),
        };
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(e),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return failed(e),
        };
        if status.is_success() {
            return Attempt::Done(bytes);
        }
        let said = serde_json::from_slice::<ErrorBody>(&bytes).ok();
        let message = said.as_ref().map_or_else(
            || String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            |b| b.error.clone(),
        );
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Attempt::Failed {
                last: format!("{message} ({})", status.as_u16()),
                source: None,
            };
        }
        if status == StatusCode::UNAUTHORIZED {
            return Attempt::Refused(ClientError::Unauthorized { message });
        }
        Attempt::Refused(ClientError::Rejected {
            status: status.as_u16(),
            message,
            parameter: said.and_then(|b| b.parameter),
        })
    }
}

enum Attempt {
    Done(bytes::Bytes),
    Refused(ClientError),
    Failed {
        last: String,
        source: Option<reqwest::Error>,
    },
}

/// The page, checked against the offset it was asked from: events after
/// it in strictly increasing order, `next_offset` not going back.
fn checked_page(offset: i64, body: PageBody) -> Result<EventsPage, MalformedBody> {
    let mut events = Vec::with_capacity(body.events.len());
    let mut last = offset;
    for event in body.events {
        let event = event.into_stored()?;
        if event.seq <= last {
            return Err(MalformedBody::Order(format!(
                "event {} comes after {last}",
                event.seq
            )));
        }
        last = event.seq;
        events.push(event);
    }
    if body.next_offset < last {
        return Err(MalformedBody::Order(format!(
            "next_offset {} is below {last}",
            body.next_offset
        )));
    }
    Ok(EventsPage {
        offset,
        events,
        next_offset: body.next_offset,
    })
}
