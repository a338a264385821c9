//! The router and its middleware against the in-process broker.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_consumer::memory::MemoryBroker;
use ferry_consumer::middleware::{CircuitBreakerConfig, DedupConfig, RetryConfig};
use ferry_consumer::{
    command_group, handler_fn, BuildError, Handler, HandlerError, Router, RouterBuilder,
    RouterConfig, RouterError, Stats,
};
use ferry_core::{
    Capabilities, Lag, LagFuture, Message, MessageId, RetryPolicy, Sink, SubscribeError,
    SubscribeFuture, Subscriber, Subscription,
};
use tokio::time::Instant;

use crate::support::{fail_if, topic, wait_for, Counting, Graveyard, Running};

/// A router on `subscriber` with a graveyard and `config` (no middleware
/// unless it asks).
fn builder(
    subscriber: Arc<dyn Subscriber>,
    graveyard: &Arc<Graveyard>,
    config: RouterConfig,
) -> RouterBuilder {
    Router::builder()
        .subscriber(subscriber)
        .dead_letters(graveyard.clone())
        .config(&config)
}

/// Settings without retry, so each failure goes straight back to the broker.
fn bare() -> RouterConfig {
    RouterConfig {
        retry: None,
        ..RouterConfig::default()
    }
}

/// Default settings with a quick retry: `per_delivery` attempts in
/// process, on up to `max_deliveries` deliveries.
fn fast_retry(per_delivery: u32, max_deliveries: u32) -> RouterConfig {
    RouterConfig {
        retry: Some(RetryConfig {
            backoff: RetryPolicy {
                max_attempts: per_delivery,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                multiplier: 2.0,
                jitter: 0.0,
            },
            max_deliveries,
        }),
        ..RouterConfig::default()
    }
}

/// Starts the router and waits until every subscription is established,
/// so that what is published next reaches its groups.
async fn start(router: Router) -> (Running, Stats) {
    let stats = router.stats();
    let running = Running::start(router);
    wait_for("subscriptions", || {
        stats.snapshot().iter().all(|s| s.subscribed)
    })
    .await;
    (running, stats)
}

/// A router on `subscriber` with `handler` as group `g` of the event `t`,
/// started: its graveyard, the running router and its stats.
async fn start_g(
    subscriber: Arc<dyn Subscriber>,
    t: &str,
    config: RouterConfig,
    handler: impl Handler,
) -> (Arc<Graveyard>, Running, Stats) {
    let graveyard = Graveyard::new();
    let router = builder(subscriber, &graveyard, config)
        .event(t, "g", handler)
        .build()
        .unwrap();
    let (running, stats) = start(router).await;
    (graveyard, running, stats)
}

/// A router with one route, `handler` as group `g` of a fresh topic
/// `name-…` on a fresh in-process broker, started: the broker, the topic,
/// the graveyard, the running router and its stats.
async fn one_route(
    name: &str,
    config: RouterConfig,
    handler: impl Handler,
) -> (MemoryBroker, String, Arc<Graveyard>, Running, Stats) {
    let broker = MemoryBroker::new();
    let t = topic(name);
    let (graveyard, running, stats) = start_g(Arc::new(broker.clone()), &t, config, handler).await;
    (broker, t, graveyard, running, stats)
}

async fn publish(broker: &MemoryBroker, messages: &[Message]) {
    for result in broker.deliver(messages).await {
        result.unwrap();
    }
}

fn counter(stats: &Stats, field: fn(&ferry_consumer::SubscriptionStats) -> u64) -> u64 {
    stats.snapshot().iter().map(field).sum()
}

#[tokio::test]
async fn events_fan_out_to_every_group() {
    let broker = MemoryBroker::new();
    let t = topic("fan-out");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = |seen: Arc<Mutex<Vec<(String, MessageId)>>>| {
        handler_fn(move |m: Message, cx| {
            seen.lock().unwrap().push((cx.group().to_owned(), m.id));
            async { Ok(()) }
        })
    };
    let graveyard = Graveyard::new();
    let router = builder(Arc::new(broker.clone()), &graveyard, bare())
        .event(&t, "billing", recorder(seen.clone()))
        .event(&t, "mailer", recorder(seen.clone()))
        .build()
        .unwrap();
    let (running, stats) = start(router).await;
    let sent: Vec<Message> = (0..5).map(|i| Message::event(&t, format!("{i}"))).collect();
    publish(&broker, &sent).await;
    wait_for("both groups", || seen.lock().unwrap().len() == 10).await;
    running.shut_down().await;
    let seen = seen.lock().unwrap().clone();
    for group in ["billing", "mailer"] {
        let got: HashSet<MessageId> = seen
            .iter()
            .filter(|(g, _)| g == group)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(got, sent.iter().map(|m| m.id).collect(), "{group}");
        assert_eq!(stats.get(&t, group).unwrap().handled, 5);
    }
}

#[tokio::test]
async fn routes_that_conflict_do_not_build() {
    let broker: Arc<dyn Subscriber> = Arc::new(MemoryBroker::new());
    let ok = || handler_fn(|_, _| async { Ok(()) });
    let graveyard = Graveyard::new();
    let err = builder(broker.clone(), &graveyard, bare())
        .command("coupon.issue", ok())
        .command("coupon.issue", ok())
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, BuildError::DuplicateCommand { ref topic } if topic == "coupon.issue"));
    assert_eq!(
        err.to_string(),
        "command `coupon.issue` has more than one handler; a command has exactly one"
    );
    let err = builder(broker.clone(), &graveyard, bare())
        .event("user.signed_up", "mailer", ok())
        .event("user.signed_up", "mailer", ok())
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, BuildError::DuplicateEvent { .. }), "{err}");
    let err = builder(broker.clone(), &graveyard, bare())
        .event("coupon.issue", "audit", ok())
        .command("coupon.issue", ok())
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, BuildError::KindConflict { .. }), "{err}");
    let err = Router::builder()
        .subscriber(broker.clone())
        .event("a", "g", ok())
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, BuildError::NoDeadLetters), "{err}");
    let err = builder(
        broker.clone(),
        &graveyard,
        RouterConfig {
            prefetch: 0,
            ..bare()
        },
    )
    .event("a", "g", ok())
    .build()
    .err()
    .unwrap();
    assert!(matches!(err, BuildError::Config(_)), "{err}");
    // One event in two groups, and one command: fine.
    let router = builder(broker, &graveyard, bare())
        .event("user.signed_up", "mailer", ok())
        .event("user.signed_up", "billing", ok())
        .command("coupon.issue", ok())
        .build()
        .unwrap();
    let groups: Vec<String> = router
        .stats()
        .snapshot()
        .into_iter()
        .map(|s| s.group)
        .collect();
    assert_eq!(
        groups,
        ["mailer", "billing", &command_group("coupon.issue")]
    );
}

#[tokio::test]
async fn a_command_reaches_its_one_handler() {
    let broker = MemoryBroker::new();
    let t = topic("command");
    let calls = Arc::new(AtomicU32::new(0));
    let graveyard = Graveyard::new();
    let router = builder(Arc::new(broker.clone()), &graveyard, bare())
        .command(&t, flaky(0, calls.clone()))
        .build()
        .unwrap();
    let (running, stats) = start(router).await;
    publish(&broker, &[Message::command(&t, "{}")]).await;
    wait_for("the command", || calls.load(Ordering::SeqCst) == 1).await;
    running.shut_down().await;
    assert_eq!(stats.get(&t, &command_group(&t)).unwrap().handled, 1);
}

#[tokio::test]
async fn messages_of_a_key_are_handled_in_order_and_keys_concurrently() {
    #[derive(Default)]
    struct Seen {
        order: HashMap<String, Vec<u32>>,
        active: HashSet<String>,
        overlap_within_key: bool,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let running_now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (s, r, m) = (seen.clone(), running_now.clone(), most.clone());
    let handler = handler_fn(move |msg: Message, _| {
        let (seen, running_now, most) = (s.clone(), r.clone(), m.clone());
        async move {
            let key = msg.key.clone().unwrap();
            let n: u32 = std::str::from_utf8(&msg.payload).unwrap().parse().unwrap();
            {
                let mut seen = seen.lock().unwrap();
                if !seen.active.insert(key.clone()) {
                    seen.overlap_within_key = true;
                }
            }
            let now = running_now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(u64::from(n % 3))).await;
            running_now.fetch_sub(1, Ordering::SeqCst);
            let mut seen = seen.lock().unwrap();
            seen.active.remove(&key);
            seen.order.entry(key).or_default().push(n);
            Ok(())
        }
    });
    let (broker, t, _, running, stats) = one_route("order", bare(), handler).await;
    let keys = ["k0", "k1", "k2", "k3"];
    let messages: Vec<Message> = (0..25)
        .flat_map(|n| keys.map(|k| Message::event(&t, n.to_string()).with_key(k)))
        .collect();
    publish(&broker, &messages).await;
    wait_for("every message", || counter(&stats, |s| s.handled) == 100).await;
    running.shut_down().await;
    let seen = seen.lock().unwrap();
    assert!(
        !seen.overlap_within_key,
        "two messages of one key ran at once"
    );
    for k in keys {
        assert_eq!(seen.order[k], (0..25).collect::<Vec<_>>(), "{k}");
    }
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "different keys never ran concurrently"
    );
}

#[tokio::test]
async fn poison_and_malformed_messages_are_dead_lettered_while_others_flow() {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let handler = handler_fn(move |m: Message, _| {
        let poison = m.payload == "poison";
        if !poison {
            h.lock().unwrap().push(m.id);
        }
        async move { fail_if(poison, HandlerError::permanent("poison pill")) }
    });
    let (broker, t, graveyard, running, stats) =
        one_route("poison", RouterConfig::default(), handler).await;
    // One key: the poison must not block the messages behind it.
    let messages: Vec<Message> = ["ok", "poison", "ok", "poison", "ok"]
        .iter()
        .map(|p| Message::event(&t, *p).with_key("k"))
        .collect();
    publish(&broker, &messages).await;
    broker.publish_raw(
        &t,
        vec![
            ("ce-type".to_owned(), t.clone()),
            ("x-from".to_owned(), "elsewhere".to_owned()),
        ],
        Bytes::from_static(b"not a ferry message"),
    );
    wait_for("dead letters", || graveyard.letters().len() == 3).await;
    wait_for("good messages", || handled.lock().unwrap().len() == 3).await;
    let snapshot = stats.get(&t, "g").unwrap();
    assert_eq!(
        (snapshot.handled, snapshot.dead_lettered, snapshot.failed),
        (3, 3, 0)
    );
    running.shut_down().await;
    let letters = graveyard.letters();
    let poisoned: Vec<&ferry_consumer::DeadLetter> = letters
        .iter()
        .filter(|l| l.error == "poison pill")
        .collect();
    assert_eq!(
        poisoned
            .iter()
            .map(|l| l.message.id)
            .collect::<HashSet<_>>(),
        HashSet::from([messages[1].id, messages[3].id])
    );
    assert!(poisoned
        .iter()
        .all(|l| l.consumer == "g" && l.attempts == 1));
    let malformed = letters.iter().find(|l| l.error != "poison pill").unwrap();
    assert_eq!(
        malformed.error,
        "malformed cloudevent: missing ce-id header"
    );
    assert_eq!(malformed.message.topic, t);
    assert_eq!(malformed.message.payload, "not a ferry message");
    assert_eq!(malformed.message.headers["x-from"], "elsewhere");
    // Everything settled: nothing left on the broker.
    let lag = broker.lag(&Subscription::new(&t, "g")).await.unwrap();
    assert_eq!((lag.waiting, lag.in_flight), (Some(0), Some(0)));
}

/// A handler failing transiently its first `failures` calls (none with 0),
/// counting every call in `calls`.
fn flaky(failures: u32, calls: Arc<AtomicU32>) -> impl Handler {
    handler_fn(move |_, _| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { fail_if(n < failures, HandlerError::transient("downstream down")) }
    })
}

#[tokio::test]
async fn a_failing_message_is_retried_in_process_until_it_succeeds() {
    let calls = Arc::new(AtomicU32::new(0));
    let (broker, t, graveyard, running, stats) =
        one_route("retry", fast_retry(3, 1), flaky(2, calls.clone())).await;
    publish(&broker, &[Message::event(&t, "{}")]).await;
    wait_for("success", || counter(&stats, |s| s.handled) == 1).await;
    running.shut_down().await;
    let s = stats.get(&t, "g").unwrap();
    assert_eq!((s.retried, s.failed, s.dead_lettered), (2, 0, 0));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(graveyard.letters().is_empty());
}

#[tokio::test]
async fn a_failing_message_is_handed_back_to_the_broker_and_redelivered() {
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let d = deliveries.clone();
    let handler = handler_fn(move |_, cx| {
        let count = cx.delivery_count().unwrap();
        d.lock().unwrap().push(count);
        async move { fail_if(count < 3, HandlerError::transient("not yet")) }
    });
    let (broker, t, _, running, stats) = one_route("redeliver", fast_retry(1, 5), handler).await;
    publish(&broker, &[Message::event(&t, "{}")]).await;
    wait_for("success", || counter(&stats, |s| s.handled) == 1).await;
    running.shut_down().await;
    assert_eq!(*deliveries.lock().unwrap(), [1, 2, 3]);
    assert_eq!(stats.get(&t, "g").unwrap().failed, 2);
}

#[tokio::test]
async fn exhausted_retries_dead_letter_with_the_attempt_count() {
    let calls = Arc::new(AtomicU32::new(0));
    let (broker, t, graveyard, running, stats) = one_route(
        "exhausted",
        fast_retry(2, 3),
        flaky(u32::MAX, calls.clone()),
    )
    .await;
    let m = Message::event(&t, "{}");
    publish(&broker, std::slice::from_ref(&m)).await;
    wait_for("the dead letter", || graveyard.letters().len() == 1).await;
    running.shut_down().await;
    let letter = &graveyard.letters()[0];
    assert_eq!(letter.message.id, m.id);
    assert_eq!(letter.attempts, 6);
    assert_eq!(letter.error, "gave up after 6 attempts: downstream down");
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    let s = stats.get(&t, "g").unwrap();
    assert_eq!(
        (s.failed, s.dead_lettered, s.retried, s.handled),
        (2, 1, 3, 0)
    );
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_is_retried() {
    let calls = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let c = calls.clone();
    let handler = handler_fn(move |m: Message, _| {
        let payload = String::from_utf8(m.payload.to_vec()).unwrap();
        let n = {
            let mut calls = c.lock().unwrap();
            let n = calls.entry(payload.clone()).or_default();
            *n += 1;
            *n
        };
        async move {
            if payload == "always slow" || n == 1 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok(())
        }
    });
    let config = RouterConfig {
        timeout: Some(Duration::from_millis(50)),
        ..fast_retry(2, 1)
    };
    let (broker, t, graveyard, running, stats) = one_route("timeout", config, handler).await;
    let began = Instant::now();
    publish(
        &broker,
        &[
            Message::event(&t, "slow once"),
            Message::event(&t, "always slow"),
        ],
    )
    .await;
    wait_for("the retry", || counter(&stats, |s| s.handled) == 1).await;
    wait_for("the dead letter", || graveyard.letters().len() == 1).await;
    assert!(began.elapsed() < Duration::from_secs(5));
    running.shut_down().await;
    assert_eq!(
        graveyard.letters()[0].error,
        "gave up after 2 attempts: handler timed out after 50ms"
    );
    assert_eq!(calls.lock().unwrap()["slow once"], 2);
}

#[tokio::test]
async fn an_open_circuit_stops_pulling_then_probes_and_closes() {
    let broker = MemoryBroker::new();
    let t = topic("breaker");
    let counting = Counting::new(Arc::new(broker.clone()));
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let handler = handler_fn(move |_, _| {
        let fail = f.load(Ordering::SeqCst);
        async move { fail_if(fail, HandlerError::transient("downstream down")) }
    });
    let cool_down = Duration::from_millis(1000);
    let config = RouterConfig {
        // One message at a time, so that every pull can be counted.
        prefetch: 1,
        circuit_breaker: Some(CircuitBreakerConfig {
            failures: 3,
            cool_down,
        }),
        ..bare()
    };
    let (graveyard, running, stats) = start_g(counting.clone(), &t, config, handler).await;
    publish(
        &broker,
        &(0..10)
            .map(|i| Message::event(&t, format!("{i}")))
            .collect::<Vec<_>>(),
    )
    .await;
    wait_for("three failures", || counter(&stats, |s| s.failed) == 3).await;
    assert_eq!(counting.received(), 3);
    // Open: nothing is pulled during the cool-down.
    tokio::time::sleep(cool_down / 3).await;
    assert_eq!(counting.received(), 3, "pulled while open");
    // Half-open: one probe, which fails and reopens the circuit.
    wait_for("the probe", || counter(&stats, |s| s.failed) == 4).await;
    assert_eq!(counting.received(), 4);
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(cool_down / 3).await;
    assert_eq!(counting.received(), 4, "pulled while reopened");
    // The next probe succeeds and closes it: everything flows.
    wait_for("every message", || counter(&stats, |s| s.handled) == 10).await;
    assert_eq!(counting.received(), 14);
    running.shut_down().await;
    assert!(graveyard.letters().is_empty());
}

#[tokio::test]
async fn shutdown_lets_running_handlers_finish_within_the_deadline_and_gives_back_the_rest() {
    let started = Arc::new(Mutex::new(HashSet::new()));
    let done = Arc::new(Mutex::new(HashSet::new()));
    let (s, d) = (started.clone(), done.clone());
    let handler = handler_fn(move |m: Message, _| {
        let (started, done) = (s.clone(), d.clone());
        async move {
            started.lock().unwrap().insert(m.id);
            let wait = if m.payload.starts_with(b"slow") {
                30_000
            } else {
                200
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
            done.lock().unwrap().insert(m.id);
            Ok(())
        }
    });
    let config = RouterConfig {
        shutdown_timeout: Duration::from_millis(500),
        ..bare()
    };
    let (broker, t, graveyard, running, stats) = one_route("shutdown", config, handler).await;
    let slow_a = Message::event(&t, "slow").with_key("a");
    let behind_a = Message::event(&t, "fast").with_key("a");
    let slow = Message::event(&t, "slow");
    let fast = Message::event(&t, "fast");
    publish(
        &broker,
        &[slow_a.clone(), behind_a.clone(), slow.clone(), fast.clone()],
    )
    .await;
    wait_for("handlers to start", || started.lock().unwrap().len() == 3).await;
    assert_eq!(counter(&stats, |s| s.in_flight), 4);
    let began = Instant::now();
    let report = running.shut_down().await;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The fast one finished within the deadline; the slow ones were cut
    // off, and the one behind a slow key never started.
    assert!(done.lock().unwrap().contains(&fast.id));
    let nacked: HashSet<MessageId> = report.subscriptions[0].nacked.iter().copied().collect();
    assert_eq!(nacked, HashSet::from([slow_a.id, behind_a.id, slow.id]));
    assert_eq!(report.nacked(), 3);
    assert_eq!(counter(&stats, |s| s.in_flight), 0);

    // The next consumer of the group gets exactly those.
    let again = Arc::new(Mutex::new(HashSet::new()));
    let a = again.clone();
    let next = builder(Arc::new(broker.clone()), &graveyard, bare())
        .event(
            &t,
            "g",
            handler_fn(move |m: Message, _| {
                a.lock().unwrap().insert(m.id);
                async { Ok(()) }
            }),
        )
        .build()
        .unwrap();
    let (running, _) = start(next).await;
    wait_for("redeliveries", || again.lock().unwrap().len() == 3).await;
    running.shut_down().await;
    assert_eq!(*again.lock().unwrap(), nacked);
}

#[tokio::test]
async fn dedup_drops_a_duplicate() {
    let calls = Arc::new(AtomicU32::new(0));
    let config = RouterConfig {
        dedup: Some(DedupConfig::default()),
        ..bare()
    };
    let (broker, t, _, running, stats) = one_route("dedup", config, flaky(0, calls.clone())).await;
    let m = Message::event(&t, "{}");
    // A relay's re-send after a crash: the same message twice.
    publish(&broker, std::slice::from_ref(&m)).await;
    wait_for("the first", || counter(&stats, |s| s.handled) == 1).await;
    publish(&broker, &[m]).await;
    wait_for("the duplicate", || counter(&stats, |s| s.handled) == 2).await;
    running.shut_down().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stats_show_the_lag_read_from_the_broker() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let handler = handler_fn(move |_, _| {
        let gate = g.clone();
        async move {
            let _ = gate.acquire().await.unwrap();
            Ok(())
        }
    });
    let config = RouterConfig {
        prefetch: 1,
        lag: ferry_consumer::LagConfig {
            interval: Duration::from_millis(20),
            warn_waiting: Some(1),
            warn_oldest_age: None,
        },
        ..bare()
    };
    let (broker, t, _, running, stats) = one_route("lag", config, handler).await;
    publish(
        &broker,
        &(0..3).map(|_| Message::event(&t, "{}")).collect::<Vec<_>>(),
    )
    .await;
    let behind = Lag {
        waiting: Some(2),
        in_flight: Some(1),
        oldest_age: None,
    };
    let lag_now = || stats.get(&t, "g").unwrap().lag;
    wait_for("the backlog", || {
        lag_now().is_some_and(|l| (l.waiting, l.in_flight) == (behind.waiting, behind.in_flight))
    })
    .await;
    assert!(lag_now().unwrap().oldest_age.is_some());
    assert_eq!(stats.get(&t, "g").unwrap().in_flight, 1);
    gate.add_permits(3);
    wait_for("caught up", || {
        lag_now().is_some_and(|l| l.waiting == Some(0) && l.in_flight == Some(0))
    })
    .await;
    running.shut_down().await;
    assert_eq!(stats.get(&t, "g").unwrap().handled, 3);
}

/// A subscriber whose first `failures` subscribes fail with `kind`.
struct Refusing {
    inner: MemoryBroker,
    failures: AtomicU32,
    permanent: bool,
}

impl Subscriber for Refusing {
    fn name(&self) -> &str {
        "refusing"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn subscribe<'a>(&'a self, subscription: &'a Subscription) -> SubscribeFuture<'a> {
        let refuse = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            let error = if self.permanent {
                SubscribeError::permanent("no such queue")
            } else {
                SubscribeError::unavailable("connection refused")
            };
            return Box::pin(async move { Err(error) });
        }
        self.inner.subscribe(subscription)
    }
    fn lag<'a>(&'a self, subscription: &'a Subscription) -> LagFuture<'a> {
        self.inner.lag(subscription)
    }
}

#[tokio::test]
async fn an_unavailable_broker_is_retried_and_a_permanent_refusal_fails_the_router() {
    let broker = MemoryBroker::new();
    let t = topic("subscribe");
    let graveyard = Graveyard::new();
    let config = RouterConfig {
        resubscribe: RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            multiplier: 2.0,
            jitter: 0.0,
        },
        ..bare()
    };
    let flaky = Arc::new(Refusing {
        inner: broker.clone(),
        failures: AtomicU32::new(5),
        permanent: false,
    });
    let router = builder(flaky.clone(), &graveyard, config.clone())
        .event(&t, "g", handler_fn(|_, _| async { Ok(()) }))
        .build()
        .unwrap();
    let (running, stats) = start(router).await;
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0);
    publish(&broker, &[Message::event(&t, "{}")]).await;
    wait_for("the message", || counter(&stats, |s| s.handled) == 1).await;
    running.shut_down().await;

    let refusing = Arc::new(Refusing {
        inner: broker.clone(),
        failures: AtomicU32::new(1),
        permanent: true,
    });
    let router = builder(refusing, &graveyard, config)
        .event(&t, "g", handler_fn(|_, _| async { Ok(()) }))
        .event(&t, "other", handler_fn(|_, _| async { Ok(()) }))
        .build()
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), router.run(std::future::pending()))
        .await
        .expect("the router stops by itself");
    let err = result.unwrap_err();
    assert!(matches!(err, RouterError::Subscribe { .. }), "{err}");
    assert!(
        ferry_core::error_chain(&err).ends_with("failed: no such queue"),
        "{}",
        ferry_core::error_chain(&err)
    );
}

/// A handler that panics: its message is dead-lettered (not redelivered in
/// a loop, which a panic that skips the retry layer would cause), and the
/// messages behind it on its key are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_its_message_and_the_key_flows() {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (h, c) = (handled.clone(), calls.clone());
    let handler = handler_fn(move |m: Message, _| {
        let (h, c) = (h.clone(), c.clone());
        async move {
            if m.payload == "boom" {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                panic!("a bug in the handler");
            }
            h.lock().unwrap().push(m.id);
            Ok(())
        }
    });
    let (broker, t, graveyard, running, _stats) =
        one_route("panic", RouterConfig::default(), handler).await;
    let messages: Vec<Message> = ["ok", "boom", "ok"]
        .iter()
        .map(|p| Message::event(&t, *p).with_key("k"))
        .collect();
    publish(&broker, &messages).await;
    wait_for("the messages around the panic", || {
        handled.lock().unwrap().len() == 2
    })
    .await;
    wait_for("the dead letter", || graveyard.letters().len() == 1).await;
    running.shut_down().await;
    let letters = graveyard.letters();
    assert_eq!(letters[0].message.id, messages[1].id);
    assert_eq!(letters[0].error, "handler panicked");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "not redelivered"
    );
}
