//! Circuit breaker: when a subscription's messages keep failing, stop
//! taking more from the broker for a while, then probe with one.
//!
//! * **Closed**: messages flow. Each message that fails transiently counts;
//!   a success (or a permanent failure, which is the message's fault, not
//!   the downstream's) resets the count. After
//!   [`CircuitBreakerConfig::failures`] consecutive failures the circuit
//!   opens.
//! * **Open**: [`Handler::ready`] holds back, so the router stops pulling
//!   from the broker (the messages stay there for other consumers or for
//!   later). Messages already in hand are refused with a transient error,
//!   which the router turns into a nack.
//! * **Half-open**, after [`CircuitBreakerConfig::cool_down`]: the router may
//!   pull one message, the probe. Its success closes the circuit; its
//!   failure opens it for another cool-down.
//!
//! Put it outside [`Retry`](super::Retry), so that it judges messages by
//! their result after in-process retries and its refusals are not retried.
//! A refused message counts as a delivery on brokers that count them:
//! allow for it in [`RetryConfig::max_deliveries`](super::RetryConfig).
//! The state belongs to one subscription (one [`Layer::layer`] call).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::{BoxFuture, HandlerFuture, Message};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{ConfigError, Context, Handler, HandlerError, Layer};

/// When the circuit opens and for how long.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive messages failing transiently that open the circuit.
    pub failures: u32,
    /// How long the circuit stays open before one probe message is let
    /// through, e.g. `"30s"`.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.failures == 0 {
            return Err(ConfigError::invalid(
                "circuit_breaker.failures",
                "must be at least 1",
            ));
        }
        if self.cool_down.is_zero() {
            return Err(ConfigError::invalid(
                "circuit_breaker.cool_down",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

/// The circuit breaker layer; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
}

impl CircuitBreaker {
    /// A breaker per `config`.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self { config }
    }
}

impl Layer for CircuitBreaker {
    fn layer(&self, inner: Arc<dyn Handler>) -> Arc<dyn Handler> {
        Arc::new(BreakerHandler {
            inner,
            config: self.config.clone(),
            state: watch::Sender::new(CircuitState::Closed { failures: 0 }),
        })
    }
}

/// Where a circuit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CircuitState {
    /// Messages flow; `failures` consecutive messages have failed.
    Closed {
        /// Consecutive transient failures so far.
        failures: u32,
    },
    /// Nothing is pulled until `until`.
    Open {
        /// End of the cool-down.
        until: Instant,
    },
    /// One probe message may be pulled and handled.
    HalfOpen {
        /// Whether the probe is being handled, or only pulled.
        probe: Probe,
    },
}

/// The probe of a half-open circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// [`Handler::ready`] let the router pull one message at this time; it
    /// has not reached the handler yet. Should it never (it was malformed,
    /// or shutdown came), the reservation lapses after a cool-down.
    Reserved(Instant),
    /// The probe is being handled.
    Running,
}

struct BreakerHandler {
    inner: Arc<dyn Handler>,
    config: CircuitBreakerConfig,
    state: watch::Sender<CircuitState>,
}

enum Role {
    Normal,
    Probe,
    Refused,
}

/// Opens the circuit again if the probe's handler is dropped unfinished
/// (shutdown), so that a later probe can run.
struct ProbeGuard<'a> {
    state: &'a watch::Sender<CircuitState>,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state.send_replace(CircuitState::Open {
                until: Instant::now(),
            });
        }
    }
}

impl BreakerHandler {
    fn take_role(&self) -> Role {
        let now = Instant::now();
        let mut role = Role::Refused;
        self.state.send_if_modified(|state| match *state {
            CircuitState::Closed { .. } => {
                role = Role::Normal;
                false
            }
            CircuitState::Open { until } if until > now => false,
            CircuitState::Open { .. }
            | CircuitState::HalfOpen {
                probe: Probe::Reserved(_),
            } => {
                *state = CircuitState::HalfOpen {
                    probe: Probe::Running,
                };
                role = Role::Probe;
                true
            }
            CircuitState::HalfOpen {
                probe: Probe::Running,
            } => false,
        });
        role
    }

    fn open(&self, message: &Message, cx: &Context, reason: &str) {
        let until = Instant::now() + self.config.cool_down;
        let before = self.state.send_replace(CircuitState::Open { until });
        // Logged once when the downstream goes down; a failed probe while it
        // stays down is not news.
        if matches!(before, CircuitState::HalfOpen { .. }) {
            tracing::debug!(
                topic = %message.topic,
                group = %cx.group(),
                "circuit still open ({reason})"
            );
        } else {
            tracing::warn!(
                topic = %message.topic,
                group = %cx.group(),
                cool_down = %humantime::format_duration(self.config.cool_down),
                "circuit opened ({reason}); pulling paused"
            );
        }
    }
}

/// A transient failure, or retry giving up on one (a permanent error whose
/// source is transient): both say the downstream is failing. Only a
/// handler's own permanent verdict (poison) says nothing about it.
fn is_downstream_failure(error: &HandlerError) -> bool {
    error.is_transient()
        || std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<HandlerError>())
            .is_some_and(HandlerError::is_transient)
}

impl Handler for BreakerHandler {
    fn handle<'a>(&'a self, message: &'a Message, cx: &'a Context) -> HandlerFuture<'a> {
        Box::pin(async move {
            let role = self.take_role();
            match role {
                Role::Refused => Err(HandlerError::transient("circuit open")),
                Role::Probe => {
                    tracing::debug!(topic = %message.topic, group = %cx.group(), "circuit half-open; probing with one message");
                    let mut guard = ProbeGuard {
                        state: &self.state,
                        armed: true,
                    };
                    let result = self.inner.handle(message, cx).await;
                    guard.armed = false;
                    match &result {
                        Err(e) if is_downstream_failure(e) => {
                            self.open(message, cx, "probe failed")
                        }
                        _ => {
                            self.state
                                .send_replace(CircuitState::Closed { failures: 0 });
                            tracing::info!(topic = %message.topic, group = %cx.group(), "circuit closed; pulling resumed");
                        }
                    }
                    result
                }
                Role::Normal => {
                    let result = self.inner.handle(message, cx).await;
                    let failed = matches!(&result, Err(e) if is_downstream_failure(e));
                    let mut opened = false;
                    self.state.send_if_modified(|state| match state {
                        // Only a closed circuit counts: a message that was in
                        // flight when it opened says nothing new.
                        CircuitState::Closed { failures } => {
                            if !failed {
                                let changed = *failures != 0;
                                *failures = 0;
                                return changed;
                            }
                            *failures += 1;
                            opened = *failures >= self.config.failures;
                            false
                        }
                        _ => false,
                    });
                    if opened {
                        self.open(message, cx, "consecutive failures");
                    }
                    result
                }
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let mut changes = self.state.subscribe();
                let now = Instant::now();
                let cool_down = self.config.cool_down;
                let mut go = false;
                let mut wake = None;
                self.state.send_if_modified(|state| match *state {
                    CircuitState::Closed { .. } => {
                        go = true;
                        false
                    }
                    CircuitState::Open { until } if until > now => {
                        wake = Some(until);
                        false
                    }
                    CircuitState::HalfOpen {
                        probe: Probe::Reserved(at),
                    } if at + cool_down > now => {
                        wake = Some(at + cool_down);
                        false
                    }
                    CircuitState::Open { .. }
                    | CircuitState::HalfOpen {
                        probe: Probe::Reserved(_),
                    } => {
                        *state = CircuitState::HalfOpen {
                            probe: Probe::Reserved(now),
                        };
                        go = true;
                        true
                    }
                    CircuitState::HalfOpen {
                        probe: Probe::Running,
                    } => false,
                });
                if go {
                    return;
                }
                match wake {
                    Some(at) => {
                        tokio::select! {
                            _ = changes.changed() => {}
                            _ = tokio::time::sleep_until(at) => {}
                        }
                    }
                    None => {
                        // The sender lives in `self`, so this only returns on a change.
                        let _ = changes.changed().await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::middleware::testing::{handle, scripted};
    use crate::{handler_fn, HandlerExt};

    fn ready_now(h: &Arc<dyn Handler>) -> bool {
        futures::FutureExt::now_or_never(h.ready()).is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_half_opens_and_closes() {
        let failing = Arc::new(AtomicBool::new(true));
        let f = failing.clone();
        let h = handler_fn(move |_, _| {
            let fail = f.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(HandlerError::transient("down"))
                } else {
                    Ok(())
                }
            }
        })
        .with(CircuitBreaker::new(CircuitBreakerConfig {
            failures: 2,
            cool_down: Duration::from_secs(10),
        }));
        let m = Message::event("t", "{}");
        let cx = Context::new("g", &m, None);
        assert!(h.handle(&m, &cx).await.is_err());
        assert!(ready_now(&h));
        assert!(h.handle(&m, &cx).await.is_err());
        // Open: not ready, and a message in hand is refused unhandled.
        assert!(!ready_now(&h));
        failing.store(false, Ordering::SeqCst);
        assert_eq!(h.handle(&m, &cx).await.unwrap_err().message, "circuit open");
        tokio::time::advance(Duration::from_secs(10)).await;
        // Half-open: one pull, then wait for the probe.
        assert!(ready_now(&h));
        assert!(!ready_now(&h));
        failing.store(true, Ordering::SeqCst);
        assert!(h.handle(&m, &cx).await.is_err());
        assert!(!ready_now(&h), "a failed probe reopens");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(ready_now(&h));
        failing.store(false, Ordering::SeqCst);
        h.handle(&m, &cx).await.unwrap();
        assert!(ready_now(&h) && ready_now(&h), "a good probe closes");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_do_not_open_it() {
        let poison = scripted(Arc::default(), |_| Err(HandlerError::permanent("poison")));
        let h = poison.with(CircuitBreaker::new(CircuitBreakerConfig {
            failures: 1,
            cool_down: Duration::from_secs(10),
        }));
        let m = Message::event("t", "{}");
        for _ in 0..3 {
            assert!(!handle(&h, &m, None).await.unwrap_err().is_transient());
        }
        assert!(ready_now(&h));
    }
}
