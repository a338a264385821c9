//! Hands a batch to the sink in waves that keep per-key order, and
//! decides each message's [`Outcome`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::Utc;
use ferry_core::{ErrorKind, Message, RetryPolicy, Sink, SinkError};
use tokio::time::Instant;

use crate::{AfterGiveUp, Item, OrderPolicy, Outcome};

/// What a batch's delivery came to.
#[derive(Debug)]
pub struct BatchResult {
    /// One per message of the batch, in its order.
    pub outcomes: Vec<Outcome>,
    /// Set when the sink reported itself unavailable: the error. The
    /// messages of that call are [`Outcome::Released`] without an attempt
    /// counted, and the batch stopped there.
    pub unavailable: Option<String>,
    /// Set when the batch ran out of its time budget: the sink call cut off
    /// counts as a failed attempt, the messages not yet tried are released.
    pub over_budget: bool,
    /// Set when the sink answered a call with something other than
    /// "unavailable" (accepted or refused a message): it is up.
    pub sink_answered: bool,
    /// For each [`Outcome::Failed`], the kind of the error (for callers
    /// that report it, e.g. a forwarder stopping at an event).
    pub kinds: Vec<Option<ErrorKind>>,
}

/// What to do with a message after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this long.
    Retry {
        /// The wait: the policy's backoff, or the destination's
        /// `Retry-After` when longer (capped at the policy's maximum).
        after: Duration,
    },
    /// Stop trying: the error is permanent or the attempts are spent.
    GiveUp,
}

/// The next step for a message whose `attempts`-th attempt (this one
/// included) failed with an error of `kind`: one rule for every pipeline.
pub fn decide(
    kind: ErrorKind,
    attempts: u32,
    retry_after: Option<Duration>,
    retry: &RetryPolicy,
) -> Decision {
    if !kind.is_retryable() || !retry.allows_another(attempts) {
        return Decision::GiveUp;
    }
    let mut after = retry.delay(attempts);
    if let Some(asked) = retry_after {
        after = after.max(asked.min(retry.max_backoff));
    }
    Decision::Retry { after }
}

/// Delivers `items` to `sink` in waves (see the [crate docs](crate)),
/// within `budget` if one is given. It logs nothing per message: the
/// caller logs outcomes in its own words (the relay's dead letters, the
/// forwarder's skipped events).
pub async fn deliver<I: Item>(
    sink: &dyn Sink,
    items: &[I],
    order: OrderPolicy,
    after_give_up: AfterGiveUp,
    retry: &RetryPolicy,
    budget: Option<Duration>,
) -> BatchResult {
    let deadline = budget.and_then(|b| Instant::now().checked_add(b));
    let mut result = BatchResult {
        outcomes: vec![Outcome::Released; items.len()],
        unavailable: None,
        over_budget: false,
        sink_answered: false,
        kinds: vec![None; items.len()],
    };
    // One queue per key, in the batch's order; each unkeyed message is alone.
    let mut queues: Vec<VecDeque<usize>> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let message = match item.message() {
            Ok(m) => m,
            Err(reason) => {
                result.outcomes[i] = Outcome::Failed {
                    error: format!("malformed message: {reason}"),
                    retry_at: None,
                };
                result.kinds[i] = Some(ErrorKind::Permanent);
                continue;
            }
        };
        match message.key.as_deref() {
            Some(key) => {
                let q = *by_key.entry(key).or_insert_with(|| {
                    queues.push(VecDeque::new());
                    queues.len() - 1
                });
                queues[q].push_back(i);
            }
            None => queues.push(VecDeque::from([i])),
        }
    }

    // A wave sends the head of every queue: for each slot, (its queue, its
    // index in `items`), and the messages themselves.
    let mut slots: Vec<(usize, usize)> = Vec::with_capacity(queues.len());
    let mut wave: Vec<Message> = Vec::with_capacity(queues.len());
    // A wave goes out in the sink's preferred chunks, each settled before
    // the next, so that a slow sink makes progress within the budget and
    // a timeout costs at most one chunk.
    let chunk = sink.max_per_call().unwrap_or(usize::MAX).max(1);
    let mut given_up = false;
    'waves: loop {
        slots.clear();
        wave.clear();
        for (qn, q) in queues.iter_mut().enumerate() {
            if let Some(i) = q.pop_front() {
                slots.push((qn, i));
                wave.push(
                    items[i]
                        .message()
                        .expect("malformed messages are not queued")
                        .clone(),
                );
            }
        }
        if wave.is_empty() {
            break;
        }
        for start in (0..wave.len()).step_by(chunk) {
            let end = start.saturating_add(chunk).min(wave.len());
            // Stay inside the budget (a relay's claim lease): past it, the
            // rest waits for the next batch, and no call is started.
            let left = match deadline.map(|d| d.checked_duration_since(Instant::now())) {
                Some(None) => {
                    result.over_budget = true;
                    break 'waves;
                }
                Some(Some(left)) => Some(left),
                None => None,
            };
            let call = sink.deliver(&wave[start..end]);
            let answered = match left {
                None => Some(call.await),
                Some(left) => tokio::time::timeout(left, call).await.ok(),
            };
            let results = match answered {
                Some(results) => {
                    result.sink_answered |= results
                        .iter()
                        .any(|r| !matches!(r, Err(e) if e.kind == ErrorKind::Unavailable));
                    results
                }
                None => {
                    // Unknown whether these arrived: count a failed attempt
                    // (with backoff) and let the receiver drop any duplicate.
                    result.over_budget = true;
                    (start..end)
                        .map(|_| {
                            Err(SinkError::transient(
                                "delivery did not finish within the batch's time budget",
                            ))
                        })
                        .collect()
                }
            };
            // The sink says it is down, yet it took some of this chunk: it is
            // this message that fails, not the sink. Count the attempt, so a
            // message the sink always refuses is given up instead of waiting
            // forever.
            let some_ok = results.iter().any(Result::is_ok);
            for (pos, &(queue, i)) in slots[start..end].iter().enumerate() {
                let outcome = match results.get(pos) {
                    Some(Ok(())) => Outcome::Delivered,
                    Some(Err(e)) if e.kind == ErrorKind::Unavailable && !some_ok => {
                        result.unavailable.get_or_insert_with(|| e.describe());
                        Outcome::Released
                    }
                    Some(Err(e)) => {
                        result.kinds[i] = Some(e.kind);
                        failure(e, &items[i], retry)
                    }
                    None => failure(
                        &SinkError::transient(format!(
                            "sink `{}` returned no result for this message",
                            sink.name()
                        )),
                        &items[i],
                        retry,
                    ),
                };
                let retrying = matches!(
                    outcome,
                    Outcome::Failed {
                        retry_at: Some(_),
                        ..
                    }
                );
                if retrying && order == OrderPolicy::Ordered {
                    // The rest of a failing message's key waits for it.
                    queues[queue].clear();
                }
                given_up |= matches!(outcome, Outcome::Failed { retry_at: None, .. });
                result.outcomes[i] = outcome;
            }
            if given_up && after_give_up == AfterGiveUp::Stop {
                break 'waves;
            }
            if result.unavailable.is_some() || result.over_budget {
                // Stop at once; everything not yet settled stays as it was.
                break 'waves;
            }
        }
    }
    result
}

fn failure<I: Item>(e: &SinkError, item: &I, retry: &RetryPolicy) -> Outcome {
    let error = e.describe();
    match decide(e.kind, item.attempts() + 1, e.retry_after, retry) {
        Decision::GiveUp => Outcome::Failed {
            error,
            retry_at: None,
        },
        Decision::Retry { after } => Outcome::Failed {
            error,
            retry_at: Some(
                chrono::Duration::from_std(after)
                    .ok()
                    .and_then(|d| Utc::now().checked_add_signed(d))
                    .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ferry_core::{BoxFuture, Delivery};

    use super::*;
    use crate::{tally, Claimed};

    /// A sink that answers from a script keyed by payload and records each
    /// wave it was given.
    struct Scripted {
        answer: Box<dyn Fn(&str) -> Delivery + Send + Sync>,
        waves: Mutex<Vec<Vec<String>>>,
    }

    impl Sink for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
            let names: Vec<String> = batch
                .iter()
                .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
                .collect();
            let out = names.iter().map(|n| (self.answer)(n)).collect();
            self.waves.lock().unwrap().push(names);
            Box::pin(async move { out })
        }
    }

    fn claimed(items: &[(&str, Option<&str>)]) -> Vec<Claimed> {
        items
            .iter()
            .enumerate()
            .map(|(i, (p, k))| {
                let mut m = Message::event("t", p.to_string());
                m.key = k.map(str::to_owned);
                Claimed {
                    seq: i as i64,
                    attempts: 0,
                    message: Ok(m),
                }
            })
            .collect()
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    /// Delivers `claimed` in order, with the test policy and a minute's budget.
    async fn deliver_to(sink: &dyn Sink, claimed: &[Claimed]) -> BatchResult {
        deliver_within(sink, claimed, Duration::from_secs(60)).await
    }

    async fn deliver_within(sink: &dyn Sink, claimed: &[Claimed], budget: Duration) -> BatchResult {
        deliver(
            sink,
            claimed,
            OrderPolicy::Ordered,
            AfterGiveUp::Continue,
            &policy(),
            Some(budget),
        )
        .await
    }

    /// (delivered, retrying, dead)
    fn counts(r: &BatchResult) -> (u64, u64, u64) {
        tally(&r.outcomes)
    }

    /// Refuses the message `payload` with `error()`, accepts the others.
    fn refusing(
        payload: &'static str,
        error: fn() -> SinkError,
    ) -> impl Fn(&str) -> Delivery + Send + Sync + 'static {
        move |p| if p == payload { Err(error()) } else { Ok(()) }
    }

    /// [`run`] on [`BATCH`], ordered.
    async fn run_ordered(
        answer: impl Fn(&str) -> Delivery + Send + Sync + 'static,
    ) -> (BatchResult, Vec<Vec<String>>) {
        run(answer, BATCH, OrderPolicy::Ordered).await
    }

    async fn run(
        answer: impl Fn(&str) -> Delivery + Send + Sync + 'static,
        items: &[(&str, Option<&str>)],
        order: OrderPolicy,
    ) -> (BatchResult, Vec<Vec<String>>) {
        let sink = Scripted {
            answer: Box::new(answer),
            waves: Mutex::default(),
        };
        let r = deliver(
            &sink,
            &claimed(items),
            order,
            AfterGiveUp::Continue,
            &policy(),
            Some(Duration::from_secs(60)),
        )
        .await;
        (r, sink.waves.into_inner().unwrap())
    }

    const BATCH: &[(&str, Option<&str>)] = &[
        ("a1", Some("a")),
        ("b1", Some("b")),
        ("a2", Some("a")),
        ("n", None),
        ("a3", Some("a")),
    ];

    #[tokio::test]
    async fn waves_hold_one_message_per_key_in_order() {
        let (r, waves) = run(|_| Ok(()), BATCH, OrderPolicy::Ordered).await;
        assert_eq!(waves, vec![vec!["a1", "b1", "n"], vec!["a2"], vec!["a3"]]);
        assert!(r.outcomes.iter().all(|o| *o == Outcome::Delivered));
        assert_eq!(counts(&r), (5, 0, 0));
    }

    #[tokio::test]
    async fn ordered_failure_holds_back_its_key_only() {
        let (r, waves) = run_ordered(refusing("a2", || SinkError::transient("503"))).await;
        assert_eq!(waves, vec![vec!["a1", "b1", "n"], vec!["a2"]]);
        assert!(matches!(
            r.outcomes[2],
            Outcome::Failed {
                retry_at: Some(_),
                ..
            }
        ));
        assert_eq!(r.outcomes[4], Outcome::Released, "a3 waits behind a2");
        assert_eq!(r.outcomes[1], Outcome::Delivered);
    }

    #[tokio::test]
    async fn unordered_failure_lets_the_key_continue() {
        let (r, waves) = run(
            refusing("a2", || SinkError::transient("503")),
            BATCH,
            OrderPolicy::Unordered,
        )
        .await;
        assert_eq!(waves, vec![vec!["a1", "b1", "n"], vec!["a2"], vec!["a3"]]);
        assert_eq!(r.outcomes[4], Outcome::Delivered);
        assert_eq!(counts(&r).1, 1);
    }

    #[tokio::test]
    async fn permanent_errors_dead_letter_at_once_and_free_the_key() {
        let (r, _) = run_ordered(refusing("a1", || SinkError::permanent("http 400"))).await;
        assert_eq!(
            r.outcomes[0],
            Outcome::Failed {
                error: "http 400".into(),
                retry_at: None
            }
        );
        assert_eq!(r.outcomes[2], Outcome::Delivered);
        assert_eq!(counts(&r).2, 1);
    }

    #[tokio::test]
    async fn a_give_up_under_stop_ends_the_batch_after_its_call() {
        let sink = Scripted {
            answer: Box::new(refusing("a1", || SinkError::permanent("http 400"))),
            waves: Mutex::default(),
        };
        let r = deliver(
            &sink,
            &claimed(BATCH),
            OrderPolicy::Ordered,
            AfterGiveUp::Stop,
            &policy(),
            None,
        )
        .await;
        let waves = sink.waves.into_inner().unwrap();
        assert_eq!(waves, vec![vec!["a1", "b1", "n"]], "nothing after the call");
        assert!(matches!(
            r.outcomes[0],
            Outcome::Failed { retry_at: None, .. }
        ));
        assert_eq!(r.outcomes[1], Outcome::Delivered);
        assert_eq!(r.outcomes[2], Outcome::Released, "a2 waits");
        assert_eq!(r.outcomes[4], Outcome::Released);
    }

    #[tokio::test]
    async fn exhausted_attempts_dead_letter() {
        let sink = Scripted {
            answer: Box::new(|_| Err(SinkError::transient("timeout"))),
            waves: Mutex::default(),
        };
        let mut c = claimed(&[("x", None)]);
        c[0].attempts = 2; // the third attempt is the last
        let r = deliver_to(&sink, &c).await;
        assert!(
            matches!(&r.outcomes[0], Outcome::Failed { retry_at: None, error } if error == "timeout")
        );
    }

    #[tokio::test]
    async fn unavailable_sink_releases_everything_without_counting() {
        let (r, waves) = run_ordered(|_| Err(SinkError::unavailable("connection refused"))).await;
        assert_eq!(waves.len(), 1, "stops after the first wave");
        assert!(r.outcomes.iter().all(|o| *o == Outcome::Released));
        assert_eq!(r.unavailable.as_deref(), Some("connection refused"));
    }

    #[tokio::test]
    async fn a_sink_refusing_everything_has_answered() {
        let (r, _) = run_ordered(|_| Err(SinkError::permanent("http 400"))).await;
        assert!(r.sink_answered && r.unavailable.is_none());
        assert_eq!(counts(&r), (0, 0, 5));
        let (r, _) = run_ordered(|_| Err(SinkError::unavailable("connection refused"))).await;
        assert!(!r.sink_answered, "\"unavailable\" is no answer");
    }

    #[tokio::test]
    async fn one_message_refused_as_unavailable_among_accepted_ones_is_a_transient_failure() {
        let (r, _) = run_ordered(refusing("b1", || {
            SinkError::unavailable("http 504 gateway timeout")
        }))
        .await;
        assert!(
            r.unavailable.is_none(),
            "the sink is up: it took the others"
        );
        assert!(
            matches!(&r.outcomes[1], Outcome::Failed { retry_at: Some(_), error } if error.contains("504"))
        );
        assert_eq!(counts(&r).1, 1);
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let (r, _) = run(
            |_| Err(SinkError::transient("429").with_retry_after(Duration::from_secs(120))),
            &[("x", None)],
            OrderPolicy::Ordered,
        )
        .await;
        let Outcome::Failed {
            retry_at: Some(at), ..
        } = &r.outcomes[0]
        else {
            panic!()
        };
        assert!(*at > Utc::now() + chrono::Duration::seconds(100));
    }

    #[tokio::test]
    async fn malformed_messages_are_dead_lettered_with_the_reason() {
        let sink = Scripted {
            answer: Box::new(|_| Ok(())),
            waves: Mutex::default(),
        };
        let mut c = claimed(&[("ok", None)]);
        c.push(Claimed {
            seq: 9,
            attempts: 0,
            message: Err("headers must be a json object".into()),
        });
        let r = deliver_to(&sink, &c).await;
        assert_eq!(r.outcomes[0], Outcome::Delivered);
        assert!(
            matches!(&r.outcomes[1], Outcome::Failed { retry_at: None, error } if error.contains("json object"))
        );
    }

    /// The scripted sink, asking for at most two messages per call.
    struct Small(Scripted);

    impl Sink for Small {
        fn name(&self) -> &str {
            "small"
        }
        fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
            self.0.deliver(batch)
        }
        fn max_per_call(&self) -> Option<usize> {
            Some(2)
        }
    }

    #[tokio::test]
    async fn calls_respect_the_sinks_limit() {
        let sink = Small(Scripted {
            answer: Box::new(|_| Ok(())),
            waves: Mutex::default(),
        });
        let r = deliver_to(&sink, &claimed(BATCH)).await;
        assert_eq!(counts(&r), (5, 0, 0));
        let calls = sink.0.waves.into_inner().unwrap();
        assert_eq!(
            calls,
            vec![vec!["a1", "b1"], vec!["n"], vec!["a2"], vec!["a3"]]
        );
    }

    /// A sink that takes 200 ms per wave.
    struct Slow;

    impl Sink for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn deliver<'a>(&'a self, batch: &'a [Message]) -> BoxFuture<'a, Vec<Delivery>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                batch.iter().map(|_| Ok(())).collect()
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_stops_at_its_time_budget() {
        let items: Vec<(&str, Option<&str>)> = vec![
            ("1", Some("k")),
            ("2", Some("k")),
            ("3", Some("k")),
            ("4", Some("k")),
        ];
        let r = deliver_within(&Slow, &claimed(&items), Duration::from_millis(500)).await;
        assert!(r.over_budget);
        // waves at 0-200 and 200-400 ms complete; the third is cut at 500 ms
        // and counts as a failed attempt (it may have arrived); the fourth
        // is not tried.
        assert_eq!(r.outcomes[..2], [Outcome::Delivered, Outcome::Delivered]);
        assert!(
            matches!(&r.outcomes[2], Outcome::Failed { retry_at: Some(_), error } if error.contains("time budget"))
        );
        assert_eq!(r.outcomes[3], Outcome::Released);
    }

    #[test]
    fn decide_retries_transient_and_unavailable_and_gives_up_otherwise() {
        let p = policy();
        assert_eq!(decide(ErrorKind::Permanent, 1, None, &p), Decision::GiveUp);
        assert_eq!(
            decide(ErrorKind::Transient, 3, None, &p),
            Decision::GiveUp,
            "spent"
        );
        assert_eq!(
            decide(ErrorKind::Transient, 1, None, &p),
            Decision::Retry { after: p.delay(1) }
        );
        assert!(matches!(
            decide(ErrorKind::Unavailable, 2, None, &p),
            Decision::Retry { .. }
        ));
        let asked = decide(ErrorKind::Transient, 1, Some(Duration::from_secs(3600)), &p);
        assert_eq!(
            asked,
            Decision::Retry {
                after: p.max_backoff
            },
            "capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_budget_a_slow_sink_is_waited_for() {
        let items: Vec<(&str, Option<&str>)> = vec![("1", Some("k")), ("2", Some("k"))];
        let r = deliver(
            &Slow,
            &claimed(&items),
            OrderPolicy::Ordered,
            AfterGiveUp::Continue,
            &policy(),
            None,
        )
        .await;
        assert!(!r.over_budget);
        assert_eq!(counts(&r), (2, 0, 0));
    }
}
