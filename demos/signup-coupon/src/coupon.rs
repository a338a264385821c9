//! The coupon service: slow, unreliable, and idempotent by message id.
//!
//! It is the kind of downstream a signup must not wait for. Every call
//! sleeps a random time; then the call may fail before doing anything, or
//! issue the coupon and fail anyway (the caller cannot tell the two apart and
//! must send again). Repeated deliveries are recognised by their CloudEvents
//! `ce-id` (the outbox message id) and answered 200 without a second coupon.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use ferry_relay::CancellationToken;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

/// How slow and how unreliable the coupon service is.
#[derive(Clone, Debug, PartialEq)]
pub struct CouponBehaviour {
    /// Shortest time a call takes.
    pub min_latency: Duration,
    /// Longest time a call takes.
    pub max_latency: Duration,
    /// Share of calls (0 to 1) that fail without issuing anything: the first
    /// half of them answer 503, the second half 500.
    pub fail_rate: f64,
    /// Share of calls (0 to 1) that issue the coupon, then answer 500: the
    /// response is lost and the caller must send again.
    pub lost_rate: f64,
    /// Seed of the random latencies and failures. The k-th call always draws
    /// the same latency and fate, whatever request it turns out to be.
    pub seed: u64,
}

impl Default for CouponBehaviour {
    fn default() -> Self {
        Self {
            min_latency: Duration::from_millis(50),
            max_latency: Duration::from_millis(400),
            fail_rate: 0.30,
            lost_rate: 0.10,
            seed: rand::random(),
        }
    }
}

impl CouponBehaviour {
    /// Checks that the numbers make sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.min_latency <= self.max_latency,
            "coupon min latency must not exceed its max latency"
        );
        for (name, rate) in [("fail rate", self.fail_rate), ("lost rate", self.lost_rate)] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "coupon {name} must be between 0 and 1, got {rate}"
            );
        }
        anyhow::ensure!(
            self.fail_rate + self.lost_rate <= 1.0,
            "coupon fail rate and lost rate must add up to at most 1"
        );
        Ok(())
    }
}

/// What the coupon service did, read once the relay has stopped.
#[derive(Clone, Debug, Default)]
pub struct CouponLedger {
    /// Coupon codes issued, by user id.
    pub coupons: HashMap<i64, Vec<String>>,
    /// Time each call took, as the service saw it.
    pub call_latencies: Vec<Duration>,
    /// Calls that failed before issuing anything (503 or 500).
    pub failed_before: u64,
    /// Calls that did their work (or recognised a duplicate), then answered 500.
    pub lost_responses: u64,
    /// Deliveries of an already handled message id, answered without issuing.
    pub duplicates_suppressed: u64,
    /// Calls rejected as malformed (no `ce-id`, bad body); 0 in a healthy run.
    pub rejected: u64,
    /// Message ids already handled: the idempotency record, kept under the
    /// same lock as the coupons so that recording an id and issuing its
    /// coupon are one step.
    pub handled: HashSet<String>,
}

impl CouponLedger {
    /// Calls received.
    pub fn calls(&self) -> u64 {
        self.call_latencies.len() as u64
    }

    /// Calls that did not answer 2xx.
    pub fn failed_calls(&self) -> u64 {
        self.failed_before + self.lost_responses + self.rejected
    }

    /// Coupons issued in all.
    pub fn issued(&self) -> u64 {
        self.coupons.values().map(|c| c.len() as u64).sum()
    }
}

struct Shared {
    behaviour: CouponBehaviour,
    rng: Mutex<StdRng>,
    ledger: Mutex<CouponLedger>,
}

/// What a call's dice decided.
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
}

/// The running coupon service.
pub struct CouponService {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<std::io::Result<()>>,
}

impl CouponService {
    /// Starts the service on a random port of 127.0.0.1; it stops when
    /// `shutdown` is cancelled.
    pub async fn start(
        behaviour: CouponBehaviour,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(behaviour.seed)),
            behaviour,
            ledger: Mutex::default(),
        });
        let app = Router::new()
            .route("/coupons", post(receive))
            .with_state(shared.clone());
        let (addr, task) = crate::serve(app, shutdown).await?;
        Ok(Self { addr, shared, task })
    }

    /// The webhook URL the relay posts to.
    pub fn url(&self) -> String {
        format!("http://{}/coupons", self.addr)
    }

    /// Users who hold at least one coupon so far.
    pub fn users_served(&self) -> usize {
        self.shared
            .ledger
            .lock()
            .expect("ledger lock")
            .coupons
            .len()
    }

    /// Waits for the server to stop, then returns what it did.
    pub async fn finish(self) -> anyhow::Result<CouponLedger> {
        self.task.await??;
        let ledger = self.shared.ledger.lock().expect("ledger lock").clone();
        Ok(ledger)
    }
}

/// Handles one delivery: `ce-id` identifies it, the body is the
/// `user.signed_up` payload.
async fn receive(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let started = Instant::now();
    let (latency, fate) = shared.draw();
    tokio::time::sleep(latency).await;
    let answer = handle(&shared, &headers, &body, fate);
    let mut ledger = shared.ledger.lock().expect("ledger lock");
    ledger.call_latencies.push(started.elapsed());
    match answer.1 {
        Outcome::FailedBefore => ledger.failed_before += 1,
        Outcome::Lost => ledger.lost_responses += 1,
        Outcome::Rejected => ledger.rejected += 1,
        Outcome::Done => {}
    }
    answer.0
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
                (StatusCode::SERVICE_UNAVAILABLE, "coupon service overloaded"),
                Outcome::FailedBefore,
            )
        }
        Fate::Broken => {
            return (
                (StatusCode::INTERNAL_SERVER_ERROR, "coupon service failed"),
                Outcome::FailedBefore,
            )
        }
        Fate::Lost | Fate::Succeed => {}
    }
    let Some(id) = headers.get("ce-id").and_then(|v| v.to_str().ok()) else {
        return (
            (StatusCode::BAD_REQUEST, "missing ce-id"),
            Outcome::Rejected,
        );
    };
    let Some(user_id) = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("user_id")?.as_i64())
    else {
        return (
            (StatusCode::BAD_REQUEST, "body needs a user_id"),
            Outcome::Rejected,
        );
    };
    // `insert` checks and records the id in one step under the lock, so a
    // message is handled once even if two deliveries of it were to overlap.
    {
        let mut ledger = shared.ledger.lock().expect("ledger lock");
        if ledger.handled.insert(id.to_owned()) {
            let coupons = ledger.coupons.entry(user_id).or_default();
            coupons.push(format!("WELCOME-{user_id}-{}", coupons.len() + 1));
        } else {
            ledger.duplicates_suppressed += 1;
        }
    }
    match fate {
        Fate::Lost => (
            (StatusCode::INTERNAL_SERVER_ERROR, "coupon service failed"),
            Outcome::Lost,
        ),
        _ => ((StatusCode::OK, "coupon issued"), Outcome::Done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(fail_rate: f64, lost_rate: f64) -> Shared {
        Shared {
            behaviour: CouponBehaviour {
                fail_rate,
                lost_rate,
                seed: 1,
                ..CouponBehaviour::default()
            },
            rng: Mutex::new(StdRng::seed_from_u64(1)),
            ledger: Mutex::default(),
        }
    }

    fn delivery(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("ce-id", id.parse().unwrap());
        h
    }

    #[test]
    fn a_redelivery_after_a_lost_response_issues_nothing() {
        let s = shared(0.0, 0.0);
        let body = br#"{"user_id":7,"email":"a@example.com"}"#;
        let (answer, _) = handle(&s, &delivery("m1"), body, Fate::Lost);
        assert_eq!(answer.0, StatusCode::INTERNAL_SERVER_ERROR);
        let (answer, _) = handle(&s, &delivery("m1"), body, Fate::Succeed);
        assert_eq!(answer.0, StatusCode::OK);
        let ledger = s.ledger.lock().unwrap();
        assert_eq!(ledger.coupons[&7].len(), 1);
        assert_eq!(ledger.duplicates_suppressed, 1);
    }

    #[test]
    fn failures_before_issuing_leave_no_trace() {
        let s = shared(0.0, 0.0);
        let body = br#"{"user_id":7}"#;
        let (answer, _) = handle(&s, &delivery("m1"), body, Fate::Unavailable);
        assert_eq!(answer.0, StatusCode::SERVICE_UNAVAILABLE);
        let (answer, _) = handle(&s, &delivery("m1"), body, Fate::Broken);
        assert_eq!(answer.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(s.ledger.lock().unwrap().coupons.is_empty());
        assert!(s.ledger.lock().unwrap().handled.is_empty());
    }

    #[test]
    fn malformed_deliveries_are_rejected() {
        let s = shared(0.0, 0.0);
        let (answer, _) = handle(&s, &HeaderMap::new(), b"{}", Fate::Succeed);
        assert_eq!(answer.0, StatusCode::BAD_REQUEST);
        let (answer, _) = handle(&s, &delivery("m1"), b"{}", Fate::Succeed);
        assert_eq!(answer.0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn rates_shape_the_fates() {
        let s = shared(0.3, 0.1);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            let (latency, fate) = s.draw();
            assert!((Duration::from_millis(50)..=Duration::from_millis(400)).contains(&latency));
            counts[fate as usize] += 1;
        }
        // 15 % 503, 15 % 500, 10 % lost, 60 % fine; wide bounds, fixed seed.
        assert!((1_300..1_700).contains(&counts[0]), "{counts:?}");
        assert!((1_300..1_700).contains(&counts[1]), "{counts:?}");
        assert!((800..1_200).contains(&counts[2]), "{counts:?}");
        assert!((5_700..6_300).contains(&counts[3]), "{counts:?}");
    }
}
