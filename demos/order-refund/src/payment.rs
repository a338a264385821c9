//! The payment service's refund endpoint: slow, unreliable, and idempotent
//! by the key it is given.
//!
//! It is the kind of downstream a cancellation must not wait for. Every
//! call sleeps a random time; then the call may fail before doing anything,
//! or refund and fail anyway (the caller cannot tell the two apart and must
//! send again). A repeated `Idempotency-Key` (the event id) is answered 200
//! without a second refund, unless deduplication is switched off to show
//! what a double refund looks like.
//!
//! It runs in the demo's own process, so it outlives every crash of the
//! shop and keeps count of the refunds per order.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The header that makes a refund request idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How slow and how unreliable the payment service is.
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentBehaviour {
    /// Shortest time a call takes.
    pub min_latency: Duration,
    /// Longest time a call takes.
    pub max_latency: Duration,
    /// Share of calls (0 to 1) that fail without refunding: the first half
    /// of them answer 503, the second half 500.
    pub fail_rate: f64,
    /// Share of calls (0 to 1) that refund, then answer 500: the response
    /// is lost and the caller must send again.
    pub lost_rate: f64,
    /// Whether a repeated idempotency key is recognised. Always on in the
    /// demo; off only to show that the checks catch a double refund.
    pub deduplicate: bool,
    /// Seed of the random latencies and failures. The k-th call always
    /// draws the same latency and fate, whatever request it turns out to be.
    pub seed: u64,
}

impl Default for PaymentBehaviour {
    fn default() -> Self {
        Self {
            min_latency: Duration::from_millis(30),
            max_latency: Duration::from_millis(150),
            fail_rate: 0.30,
            lost_rate: 0.10,
            deduplicate: true,
            seed: rand::random(),
        }
    }
}

impl PaymentBehaviour {
    /// Checks that the numbers make sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.min_latency <= self.max_latency,
            "payment min latency must not exceed its max latency"
        );
        for (name, rate) in [("fail rate", self.fail_rate), ("lost rate", self.lost_rate)] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "payment {name} must be between 0 and 1, got {rate}"
            );
        }
        anyhow::ensure!(
            self.fail_rate + self.lost_rate < 1.0,
            "payment fail rate and lost rate must add up to less than 1, or no refund is ever answered"
        );
        Ok(())
    }
}

/// One refund the service made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refund {
    /// The amount refunded, in cents.
    pub amount_cents: i64,
    /// The idempotency key it was asked with.
    pub key: String,
}

/// What the payment service did.
#[derive(Clone, Debug, Default)]
pub struct PaymentLedger {
    /// Refunds made, by order id.
    pub refunds: HashMap<i64, Vec<Refund>>,
    /// Time each call took, as the service saw it.
    pub call_latencies: Vec<Duration>,
    /// Calls that failed before refunding anything (503 or 500).
    pub failed_before: u64,
    /// Calls that refunded (or recognised a repeat), then answered 500.
    pub lost_responses: u64,
    /// Calls with a key already handled, answered without refunding.
    pub duplicates_suppressed: u64,
    /// Calls rejected as malformed (no key, bad body); 0 in a healthy run.
    pub rejected: u64,
    /// Keys already handled: the idempotency record, kept under the same
    /// lock as the refunds so that recording a key and refunding are one
    /// step.
    pub handled: HashSet<String>,
}

impl PaymentLedger {
    /// Calls received.
    pub fn calls(&self) -> u64 {
        self.call_latencies.len() as u64
    }

    /// Calls that did not answer 2xx.
    pub fn failed_calls(&self) -> u64 {
        self.failed_before + self.lost_responses + self.rejected
    }

    /// Refunds made in all.
    pub fn refunds_made(&self) -> u64 {
        self.refunds.values().map(|r| r.len() as u64).sum()
    }
}

struct Shared {
    behaviour: PaymentBehaviour,
    rng: Mutex<StdRng>,
    ledger: Mutex<PaymentLedger>,
}

/// What a call's dice decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fate {
    Unavailable,
    Broken,
    Lost,
    Succeed,
}

impl Shared {
    /// One call's latency and fate, drawn together so that a seed fixes the
    /// sequence of calls' fates.
    fn draw(&self) -> (Duration, Fate) {
        let b = &self.behaviour;
        let mut rng = self.rng.lock().expect("rng lock poisoned");
        let latency = rng.gen_range(b.min_latency..=b.max_latency);
        let roll: f64 = rng.gen();
        let fate = if roll < b.fail_rate / 2.0 {
            Fate::Unavailable
        } else if roll < b.fail_rate {
            Fate::Broken
        } else if roll < b.fail_rate + b.lost_rate {
            Fate::Lost
        } else {
            Fate::Succeed
        };
        (latency, fate)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, PaymentLedger> {
        self.ledger.lock().expect("ledger lock poisoned")
    }
}

/// The running payment service.
pub struct PaymentService {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<std::io::Result<()>>,
}

impl PaymentService {
    /// Starts the service on a random port of 127.0.0.1; it stops when
    /// `shutdown` is cancelled.
    pub async fn start(
        behaviour: PaymentBehaviour,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(behaviour.seed)),
            behaviour,
            ledger: Mutex::default(),
        });
        let app = Router::new()
            .route("/refunds", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        Ok(Self { addr, shared, task })
    }

    /// The refund endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/refunds", self.addr)
    }

    /// Orders refunded at least once so far.
    pub fn orders_refunded(&self) -> usize {
        self.shared.ledger().refunds.len()
    }

    /// Calls received so far.
    pub fn calls(&self) -> u64 {
        self.shared.ledger().calls()
    }

    /// A copy of the ledger as it is now.
    pub fn ledger(&self) -> PaymentLedger {
        self.shared.ledger().clone()
    }

    /// Waits for the server to stop, then returns what it did.
    pub async fn finish(self) -> anyhow::Result<PaymentLedger> {
        self.task.await??;
        let ledger = self.shared.ledger().clone();
        Ok(ledger)
    }
}

/// The body of a refund request.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct RefundRequest {
    /// The order to refund.
    pub order_id: i64,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// Handles one refund request.
async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let started = Instant::now();
    let (latency, fate) = shared.draw();
    tokio::time::sleep(latency).await;
    let (answer, outcome) = handle(&shared, &headers, &body, fate);
    let mut ledger = shared.ledger();
    ledger.call_latencies.push(started.elapsed());
    match outcome {
        Outcome::FailedBefore => ledger.failed_before += 1,
        Outcome::Lost => ledger.lost_responses += 1,
        Outcome::Rejected => ledger.rejected += 1,
        Outcome::Done => {}
    }
    answer
}

enum Outcome {
    FailedBefore,
    Lost,
    Rejected,
    Done,
}

fn handle(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    fate: Fate,
) -> ((StatusCode, &'static str), Outcome) {
    match fate {
        Fate::Unavailable => {
            return (
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "payment service overloaded",
                ),
                Outcome::FailedBefore,
            )
        }
        Fate::Broken => {
            return (
                (StatusCode::INTERNAL_SERVER_ERROR, "payment service failed"),
                Outcome::FailedBefore,
            )
        }
        Fate::Lost | Fate::Succeed => {}
    }
    let Some(key) = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    else {
        return (
            (StatusCode::BAD_REQUEST, "missing idempotency-key"),
            Outcome::Rejected,
        );
    };
    let Ok(request) = serde_json::from_slice::<RefundRequest>(body) else {
        return (
            (
                StatusCode::BAD_REQUEST,
                "body needs order_id and amount_cents",
            ),
            Outcome::Rejected,
        );
    };
    // `insert` checks and records the key in one step under the lock, so a
    // key is handled once even if two requests with it were to overlap.
    {
        let mut ledger = shared.ledger();
        if ledger.handled.insert(key.to_owned()) || !shared.behaviour.deduplicate {
            ledger
                .refunds
                .entry(request.order_id)
                .or_default()
                .push(Refund {
                    amount_cents: request.amount_cents,
                    key: key.to_owned(),
                });
        } else {
            ledger.duplicates_suppressed += 1;
        }
    }
    match fate {
        Fate::Lost => (
            (StatusCode::INTERNAL_SERVER_ERROR, "payment service failed"),
            Outcome::Lost,
        ),
        _ => ((StatusCode::OK, "refunded"), Outcome::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(deduplicate: bool) -> Shared {
        Shared {
            behaviour: PaymentBehaviour {
                deduplicate,
                seed: 1,
                ..PaymentBehaviour::default()
            },
            rng: Mutex::new(StdRng::seed_from_u64(1)),
            ledger: Mutex::default(),
        }
    }

    fn keyed(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(IDEMPOTENCY_KEY, key.parse().unwrap());
        h
    }

    const BODY: &[u8] = br#"{"order_id":7,"amount_cents":1250}"#;

    #[test]
    fn a_repeat_after_a_lost_response_refunds_nothing() {
        let s = shared(true);
        let (answer, _) = handle(&s, &keyed("e1"), BODY, Fate::Lost);
        assert_eq!(answer.0, StatusCode::INTERNAL_SERVER_ERROR);
        let (answer, _) = handle(&s, &keyed("e1"), BODY, Fate::Succeed);
        assert_eq!(answer.0, StatusCode::OK);
        let ledger = s.ledger();
        assert_eq!(
            ledger.refunds[&7],
            vec![Refund {
                amount_cents: 1250,
                key: "e1".to_owned()
            }]
        );
        assert_eq!(ledger.duplicates_suppressed, 1);
    }

    #[test]
    fn without_deduplication_a_repeat_refunds_twice() {
        let s = shared(false);
        handle(&s, &keyed("e1"), BODY, Fate::Lost);
        handle(&s, &keyed("e1"), BODY, Fate::Succeed);
        assert_eq!(s.ledger().refunds[&7].len(), 2);
    }

    #[test]
    fn failures_before_refunding_leave_no_trace() {
        let s = shared(true);
        let (answer, _) = handle(&s, &keyed("e1"), BODY, Fate::Unavailable);
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
        let (answer, _) = handle(&s, &keyed("e1"), BODY, Fate::Broken);
        assert_eq!(answer.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(s.ledger().refunds.is_empty());
        assert!(s.ledger().handled.is_empty());
    }

    #[test]
    fn malformed_requests_are_rejected() {
        let s = shared(true);
        let (answer, _) = handle(&s, &HeaderMap::new(), BODY, Fate::Succeed);
        assert_eq!(answer.0, StatusCode::BAD_REQUEST);
        let (answer, _) = handle(&s, &keyed("e1"), b"{}", Fate::Succeed);
        assert_eq!(answer.0, StatusCode::BAD_REQUEST);
        assert!(s.ledger().refunds.is_empty());
    }

    #[test]
    fn rates_shape_the_fates() {
        let s = Shared {
            behaviour: PaymentBehaviour {
                fail_rate: 0.3,
                lost_rate: 0.1,
                seed: 1,
                ..PaymentBehaviour::default()
            },
            rng: Mutex::new(StdRng::seed_from_u64(1)),
            ledger: Mutex::default(),
        };
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            let (latency, fate) = s.draw();
            assert!((Duration::from_millis(30)..=Duration::from_millis(150)).contains(&latency));
            *counts.entry(fate).or_insert(0u32) += 1;
        }
        // 15 % 503, 15 % 500, 10 % lost, 60 % fine; wide bounds, fixed seed.
        let n = |f| counts.get(&f).copied().unwrap_or(0);
        assert!((1_300..1_700).contains(&n(Fate::Unavailable)), "{counts:?}");
        assert!((1_300..1_700).contains(&n(Fate::Broken)), "{counts:?}");
        assert!((800..1_200).contains(&n(Fate::Lost)), "{counts:?}");
        assert!((5_700..6_300).contains(&n(Fate::Succeed)), "{counts:?}");
    }
}
