//! The forwarder against real databases and a real webhook receiver:
//! order, offsets and restarts, at-least-once after a crash, exactly-once
//! writes of a transactional handler, stop and skip, a sink that is down.

use crate::support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_adapters::SinkConfig;
use ferry_core::{HandlerFuture, RetryPolicy};
use ferry_delivery::SinkBackoff;
use ferry_events::forwarder::{
    EventHandler, Forwarder, ForwarderConfig, ForwarderError, HandlerError, OnFailure,
    TransactionalHandler, SEQ_HEADER,
};
use ferry_store::event_store::{NewEvent, StoredEvent};
use ferry_testkit::{Mode, Receiver};
use support::{events, table, wait_until, Env, Sql};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const LONG: Duration = Duration::from_secs(30);

fn config(name: &str) -> ForwarderConfig {
    ForwarderConfig {
        name: name.to_owned(),
        batch_size: 10,
        poll_interval: Duration::from_millis(50),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            multiplier: 2.0,
            jitter: 0.0,
        },
        on_failure: OnFailure::Stop,
        backoff: SinkBackoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        shutdown_grace: Duration::from_secs(5),
    }
}

/// How a [`Recorder`] treats one event.
#[derive(Clone, Copy)]
enum Fault {
    /// Fails with a transient error, always.
    Transient,
    /// Fails with a permanent error.
    Permanent,
    /// Panics.
    Panic,
    /// Waits forever (the forwarder is "killed" meanwhile).
    Hang,
}

/// A handler that records what it gets, and fails as told.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<StoredEvent>>>,
    faults: Arc<Mutex<HashMap<i64, Fault>>>,
    /// Each call waits this long first.
    delay: Duration,
}

impl Recorder {
    fn failing(faults: &[(i64, Fault)]) -> Self {
        let r = Self::default();
        r.faults.lock().unwrap().extend(faults.iter().copied());
        r
    }
    fn seqs(&self) -> Vec<i64> {
        self.seen.lock().unwrap().iter().map(|e| e.seq).collect()
    }
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl EventHandler for Recorder {
    fn handle<'a>(&'a self, event: &'a StoredEvent) -> HandlerFuture<'a> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.seen.lock().unwrap().push(event.clone());
            let fault = self.faults.lock().unwrap().get(&event.seq).copied();
            match fault {
                None => Ok(()),
                Some(Fault::Transient) => Err(HandlerError::transient("the service timed out")),
                Some(Fault::Permanent) => Err(HandlerError::permanent("the event is refused")),
                Some(Fault::Panic) => panic!("handler bug"),
                Some(Fault::Hang) => std::future::pending().await,
            }
        })
    }
}

/// A sink to the receiver `r`, from its URL as `ferry forward --to` takes it.
async fn webhook(r: &Receiver) -> std::sync::Arc<dyn ferry_core::Sink> {
    SinkConfig::from_url(&r.url())
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn append<DB: Sql>(env: &Env<DB>, events: &[NewEvent]) -> Vec<i64> {
    env.db.append_events(events).await.unwrap()
}

/// Every event once, in sequence order; stopped, it has saved its offset,
/// and a new forwarder of the same name gets only what came after.
async fn delivers_in_order_and_resumes_after_its_offset<DB: Sql>(env: Env<DB>) {
    let seqs = append(&env, &events(25, 3)).await;
    let first = Recorder::default();
    let running =
        Forwarder::to_handler(&env.db, first.clone(), config("f")).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("25 events handled", LONG, || first.len() == 25).await;
    wait_until("the offset at the last one", LONG, || {
        stats.offset() == seqs[24]
    })
    .await;
    running.stop().await.unwrap();
    assert_eq!(first.seqs(), seqs, "each once, in order");
    assert_eq!(env.db.load_offset("f").await.unwrap(), seqs[24]);
    assert_eq!((stats.delivered(), stats.lag()), (25, 0));

    let more = append(&env, &events(10, 3)).await;
    let second = Recorder::default();
    let running = Forwarder::to_handler(&env.db, second.clone(), config("f"))
        .spawn(&CancellationToken::new());
    wait_until("the 10 new events", LONG, || second.len() == 10).await;
    // Another forwarder, another offset: it starts from the beginning.
    let other = Recorder::default();
    let other_running =
        Forwarder::to_handler(&env.db, other.clone(), config("g")).spawn(&CancellationToken::new());
    wait_until("all 35 for `g`", LONG, || other.len() == 35).await;
    running.stop().await.unwrap();
    other_running.stop().await.unwrap();
    assert_eq!(
        second.seqs(),
        more,
        "nothing at or below the saved offset again"
    );
    assert_eq!(env.db.load_offset("f").await.unwrap(), more[9]);
}
on!(delivers_in_order_and_resumes_after_its_offset: postgres, sqlite, mariadb);

/// The forwarder dies (its task aborted) in the middle of its third page:
/// the two pages before are saved and not delivered again; the events of
/// the third that were handled are delivered again (at least once).
async fn a_crash_before_the_offset_is_saved_delivers_the_page_again<DB: Sql>(env: Env<DB>) {
    let seqs = append(&env, &events(30, 0)).await;
    let first = Recorder::failing(&[(seqs[24], Fault::Hang)]);
    let forwarder = Forwarder::to_handler(&env.db, first.clone(), config("f"));
    let task = tokio::spawn(forwarder.run(CancellationToken::new()));
    wait_until("the 25th event in flight", LONG, || first.len() == 25).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        env.db.load_offset("f").await.unwrap(),
        seqs[19],
        "saved after each page"
    );

    let second = Recorder::default();
    let running = Forwarder::to_handler(&env.db, second.clone(), config("f"))
        .spawn(&CancellationToken::new());
    wait_until("the rest", LONG, || second.len() == 10).await;
    running.stop().await.unwrap();
    assert_eq!(
        second.seqs(),
        seqs[20..],
        "21..25 again, then the rest; nothing before"
    );
}
on!(a_crash_before_the_offset_is_saved_delivers_the_page_again: postgres, sqlite);

/// Under `Stop`, a failing event is tried `max_attempts` times, then the
/// forwarder stops with an error naming it, its offset just before it;
/// a restart tries it again and goes on once it passes.
async fn stop_leaves_the_offset_before_the_failing_event<DB: Sql>(env: Env<DB>) {
    let seqs = append(&env, &events(10, 0)).await;
    let failing = seqs[4];
    let first = Recorder::failing(&[(failing, Fault::Transient)]);
    let forwarder = Forwarder::to_handler(&env.db, first.clone(), config("f"));
    let stats = forwarder.stats();
    let e = tokio::time::timeout(LONG, forwarder.run(CancellationToken::new()))
        .await
        .expect("it stops on its own")
        .unwrap_err();
    let ForwarderError::Stopped {
        seq,
        attempts,
        offset,
        ref error,
        ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!((seq, attempts, offset), (failing, 3, seqs[3]));
    assert!(error.is_transient());
    let text = e.to_string();
    assert!(
        text.contains(&format!("stopped at event {failing}")) && text.contains("3 attempt(s)"),
        "{text}"
    );
    assert_eq!(
        first.seqs(),
        [&seqs[..4], &[failing; 3][..]].concat(),
        "nothing after it"
    );
    assert_eq!(env.db.load_offset("f").await.unwrap(), seqs[3]);
    assert_eq!(
        (stats.delivered(), stats.failed(), stats.offset()),
        (4, 3, seqs[3])
    );
    assert_eq!(stats.lag(), seqs[9] - seqs[3]);

    // A permanent error stops it at the first attempt.
    let permanent = Recorder::failing(&[(failing, Fault::Permanent)]);
    let e = Forwarder::to_handler(&env.db, permanent.clone(), config("f"))
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ForwarderError::Stopped { attempts: 1, .. }),
        "{e}"
    );
    assert_eq!(permanent.seqs(), [failing]);

    // Fixed: it goes on from the failing event.
    let healed = Recorder::default();
    let running = Forwarder::to_handler(&env.db, healed.clone(), config("f"))
        .spawn(&CancellationToken::new());
    wait_until("the rest", LONG, || healed.len() == 6).await;
    running.stop().await.unwrap();
    assert_eq!(healed.seqs(), seqs[4..]);
    assert!(env.db.event_failures(Some("f")).await.unwrap().is_empty());
}
on!(stop_leaves_the_offset_before_the_failing_event: postgres, sqlite, mariadb);

/// Under `Skip`, a failing event is recorded in the failure store after
/// its attempts (a permanent error or a panic after one) and the forwarder
/// goes on.
async fn skip_records_the_failing_events_and_goes_on<DB: Sql>(env: Env<DB>) {
    let seqs = append(&env, &events(12, 0)).await;
    let recorder = Recorder::failing(&[
        (seqs[2], Fault::Transient),
        (seqs[5], Fault::Panic),
        (seqs[8], Fault::Permanent),
    ]);
    let config = ForwarderConfig {
        on_failure: OnFailure::Skip,
        ..config("f")
    };
    let running =
        Forwarder::to_handler(&env.db, recorder.clone(), config).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("the offset at the end", LONG, || stats.offset() == seqs[11]).await;
    running.stop().await.unwrap();
    assert_eq!(
        (stats.delivered(), stats.skipped(), stats.failed()),
        (9, 3, 5)
    );
    let failures = env.db.event_failures(Some("f")).await.unwrap();
    let got: Vec<(i64, i32)> = failures.iter().map(|f| (f.seq, f.attempts)).collect();
    assert_eq!(got, [(seqs[2], 3), (seqs[5], 1), (seqs[8], 1)]);
    assert!(
        failures[0].last_error.contains("the service timed out"),
        "{}",
        failures[0].last_error
    );
    assert!(
        failures[1].last_error.contains("panicked: handler bug"),
        "{}",
        failures[1].last_error
    );
    assert_eq!(
        failures[2].event_id,
        recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .find(|e| e.seq == seqs[8])
            .unwrap()
            .id
    );
    assert_eq!(env.db.load_offset("f").await.unwrap(), seqs[11]);
    let mut handled = recorder.seqs();
    handled.dedup();
    assert_eq!(handled, seqs, "in order, the failing ones too");
}
on!(skip_records_the_failing_events_and_goes_on: postgres, sqlite, mariadb);

/// Writes `applied (id)` for each event in the forwarder's transaction.
/// The first attempt at `fail_once` writes, then fails (its write is rolled
/// back with its savepoint); `hang` never returns.
struct Apply<DB> {
    fail_once: Mutex<Option<i64>>,
    hang: Option<i64>,
    reached_hang: Arc<Notify>,
    calls: Arc<Mutex<Vec<i64>>>,
    _db: std::marker::PhantomData<fn(DB)>,
}

impl<DB: Sql> TransactionalHandler<DB> for Apply<DB> {
    fn handle<'a>(
        &'a self,
        conn: &'a mut DB::Connection,
        event: &'a StoredEvent,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(event.seq);
            if self.hang == Some(event.seq) {
                self.reached_hang.notify_one();
                std::future::pending::<()>().await;
            }
            DB::insert(conn, "applied", event.id.to_string()).await?;
            let mut fail_once = self.fail_once.lock().unwrap();
            if *fail_once == Some(event.seq) {
                *fail_once = None;
                return Err(HandlerError::transient("deadlock detected"));
            }
            Ok(())
        })
    }
}

/// A transactional handler's writes commit with the offset: a failed
/// attempt's write is rolled back, a crash mid-page rolls back the page's
/// writes and its offset together, so each event is written exactly once.
async fn a_transactional_handler_writes_each_event_once<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "applied").await;
    let appended: Vec<NewEvent> = events(25, 0);
    let seqs = append(&env, &appended).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let reached_hang = Arc::new(Notify::new());
    let first = Apply::<DB> {
        fail_once: Mutex::new(Some(seqs[6])),
        hang: Some(seqs[14]),
        reached_hang: reached_hang.clone(),
        calls: calls.clone(),
        _db: std::marker::PhantomData,
    };
    let task = tokio::spawn(
        Forwarder::to_transactional(&env.pool, first, config("tx")).run(CancellationToken::new()),
    );
    tokio::time::timeout(LONG, reached_hang.notified())
        .await
        .expect("reaches event 15");
    task.abort();
    let _ = task.await;
    assert_eq!(env.db.load_offset("tx").await.unwrap(), seqs[9]);
    let written = DB::ids(&env.pool, "applied").await;
    let mut want: Vec<String> = appended[..10].iter().map(|e| e.id.to_string()).collect();
    want.sort();
    assert_eq!(
        written, want,
        "the first page once, the second page's writes rolled back"
    );
    let first_calls = calls.lock().unwrap().clone();
    assert_eq!(
        first_calls.iter().filter(|s| **s == seqs[6]).count(),
        2,
        "event 7 failed once"
    );

    let second = Apply::<DB> {
        fail_once: Mutex::new(None),
        hang: None,
        reached_hang: Arc::new(Notify::new()),
        calls: calls.clone(),
        _db: std::marker::PhantomData,
    };
    let running = Forwarder::to_transactional(&env.pool, second, config("tx"))
        .spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("all applied", LONG, || stats.offset() == seqs[24]).await;
    running.stop().await.unwrap();
    let written = DB::ids(&env.pool, "applied").await;
    let mut want: Vec<String> = appended.iter().map(|e| e.id.to_string()).collect();
    want.sort();
    assert_eq!(written, want, "every event written exactly once");
    assert_eq!(env.db.load_offset("tx").await.unwrap(), seqs[24]);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|s| **s == seqs[11]).count(),
        2,
        "event 12 handled twice, written once"
    );
}
on!(a_transactional_handler_writes_each_event_once: postgres, sqlite, mariadb);

fn apply<DB>(calls: &Arc<Mutex<Vec<i64>>>) -> Apply<DB> {
    Apply {
        fail_once: Mutex::new(None),
        hang: None,
        reached_hang: Arc::new(Notify::new()),
        calls: calls.clone(),
        _db: std::marker::PhantomData,
    }
}

/// Two transactional forwarders of one name over the same events: each
/// transaction takes the stored offset first and passes by what the other
/// committed, so every event is written exactly once.
async fn two_transactional_forwarders_of_one_name_write_each_event_once<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "applied").await;
    let appended = events(80, 0);
    let seqs = append(&env, &appended).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let token = CancellationToken::new();
    let a = Forwarder::to_transactional(&env.pool, apply::<DB>(&calls), config("tx")).spawn(&token);
    let b = Forwarder::to_transactional(&env.pool, apply::<DB>(&calls), config("tx")).spawn(&token);
    let (sa, sb) = (a.stats.clone(), b.stats.clone());
    let last = seqs[79];
    wait_until("both at the last event", LONG, || {
        sa.offset() == last && sb.offset() == last
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let mut want: Vec<String> = appended.iter().map(|e| e.id.to_string()).collect();
    want.sort();
    assert_eq!(
        DB::ids(&env.pool, "applied").await,
        want,
        "every event written exactly once"
    );
    assert_eq!(
        sa.delivered() + sb.delivered(),
        80,
        "each event counted once"
    );
    assert_eq!(env.db.load_offset("tx").await.unwrap(), last);
}
on!(two_transactional_forwarders_of_one_name_write_each_event_once: postgres, sqlite, mariadb);

/// The offset stored ahead of the forwarder's own view (what a COMMIT
/// whose acknowledgement was lost leaves behind): the forwarder passes by
/// the events at or below it instead of writing them again.
async fn a_stored_offset_ahead_of_the_forwarder_is_respected<DB: Sql>(env: Env<DB>) {
    table(&env.pool, "applied").await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let running = Forwarder::to_transactional(&env.pool, apply::<DB>(&calls), config("tx"))
        .spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    // Idle: it has loaded its offset (0) and read an empty store.
    wait_until("the forwarder idle", LONG, || stats.idle() >= 1).await;
    let appended = events(10, 0);
    let mut tx = env.pool.begin().await.unwrap();
    let seqs = DB::append(&mut *tx, &appended).await.unwrap();
    DB::save_offset(&mut *tx, "tx", seqs[4]).await.unwrap();
    tx.commit().await.unwrap();
    wait_until("the offset at the last event", LONG, || {
        stats.offset() == seqs[9]
    })
    .await;
    running.stop().await.unwrap();
    let mut want: Vec<String> = appended[5..].iter().map(|e| e.id.to_string()).collect();
    want.sort();
    assert_eq!(
        DB::ids(&env.pool, "applied").await,
        want,
        "only the last five"
    );
    assert_eq!(*calls.lock().unwrap(), seqs[5..].to_vec());
}
on!(a_stored_offset_ahead_of_the_forwarder_is_respected: postgres, sqlite, mariadb);

/// To a webhook: each event is a CloudEvent whose id is the event id, type
/// the event type, partition key its source, with its sequence number;
/// events of one source arrive in order.
async fn a_sink_gets_each_event_as_a_message<DB: Sql>(env: Env<DB>) {
    let mut sent = events(60, 4);
    for e in sent.iter_mut().step_by(7) {
        e.source_type.clear();
        e.source_id.clear();
    }
    let seqs = append(&env, &sent).await;
    let r = Receiver::start().await;
    let sink = webhook(&r).await;
    let running =
        Forwarder::to_sink(&env.db, sink, config("hook")).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("60 applied", LONG, || r.applied().len() == 60).await;
    wait_until("the offset at the end", LONG, || stats.offset() == seqs[59]).await;
    running.stop().await.unwrap();
    assert_eq!(r.requests().len(), 60, "none twice");
    let by_id: HashMap<String, (usize, &NewEvent)> = sent
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.to_string(), (i, e)))
        .collect();
    let mut last_seq_of_key: HashMap<Option<String>, i64> = HashMap::new();
    for m in r.applied() {
        let (i, e) = by_id[&m.id];
        assert_eq!(m.headers["ce-type"], "t");
        assert_eq!(m.headers[SEQ_HEADER], seqs[i].to_string());
        assert_eq!(&m.body[..], &e.payload[..]);
        let key = (!e.source_id.is_empty()).then(|| format!("s:{}", e.source_id));
        assert_eq!(m.key, key);
        if key.is_some() {
            let before = last_seq_of_key.insert(key.clone(), seqs[i]).unwrap_or(0);
            assert!(seqs[i] > before, "{key:?}: {} after {before}", seqs[i]);
        }
    }
    assert_eq!(env.db.load_offset("hook").await.unwrap(), seqs[59]);
}
on!(a_sink_gets_each_event_as_a_message: postgres, sqlite);

/// A sink that answers 503 to everything is down: the forwarder pauses and
/// probes without counting attempts (with max_attempts 2 and `Skip`,
/// counting would skip the events), then delivers everything once it is
/// back. An event the receiver refuses (400) is skipped at once.
async fn a_sink_that_is_down_costs_no_attempts<DB: Sql>(env: Env<DB>) {
    let r = Receiver::start().await;
    r.set_mode(Mode::Down);
    let seqs = append(&env, &events(5, 0)).await;
    let sink = webhook(&r).await;
    let config = ForwarderConfig {
        on_failure: OnFailure::Skip,
        retry: RetryPolicy {
            max_attempts: 2,
            ..config("").retry
        },
        ..config("hook")
    };
    let running = Forwarder::to_sink(&env.db, sink, config).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    // The first call (5 events), then probes of 1 and 2 events.
    wait_until("several probes while down", LONG, || {
        r.requests_while_down() >= 8
    })
    .await;
    assert_eq!(
        (stats.failed(), stats.skipped(), stats.delivered()),
        (0, 0, 0)
    );
    let first_id = env
        .db
        .read_events(&ferry_store::event_store::EventQuery {
            offset: 0,
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .events[0]
        .id
        .to_string();
    // The delivery engine's probing, as the relay's: 1, 2, 4 … events,
    // one per source (each event without a source is one), oldest first.
    let requests = r.requests();
    assert_eq!(
        requests[5].id, first_id,
        "after the first call, the first probe is the first event alone"
    );
    assert!(
        requests[6..8].iter().any(|m| m.id == first_id) && requests[6].id != requests[7].id,
        "the second probe: the first event and the next"
    );
    r.set_mode(Mode::Up);
    wait_until("all 5 applied", LONG, || r.applied().len() == 5).await;
    let poison = append(&env, &[NewEvent::new("t", "\"poison\"")]).await[0];
    wait_until("the offset past the poison", LONG, || {
        stats.offset() == poison
    })
    .await;
    running.stop().await.unwrap();
    // A probe that straddles the switch to Up (some events taken, some
    // refused as unavailable) counts a transient attempt for the refused
    // ones, which are then delivered: they are never skipped.
    assert!(stats.failed() >= 1, "the poison's attempt");
    assert_eq!((stats.skipped(), stats.delivered()), (1, 5));
    // One call of 5, then probes of 1, 2, 4, 5 … events, every call
    // refused as unavailable (but perhaps the last, which may straddle).
    let unavailable = stats
        .sink_unavailable
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    let probed = |calls: usize| -> usize { (1..=calls).map(|n| (1usize << (n - 1)).min(5)).sum() };
    let probes = r.requests_while_down() - 5;
    assert!(
        unavailable >= 2 && probed(unavailable - 1) <= probes && probes <= probed(unavailable),
        "{unavailable} unavailable calls for {probes} probe requests"
    );
    let failures = env.db.event_failures(Some("hook")).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].seq, failures[0].attempts), (poison, 1));
    // Events without a source share a wave and may arrive in any order.
    let mut applied: Vec<i64> = r
        .applied()
        .iter()
        .map(|m| m.headers[SEQ_HEADER].parse().unwrap())
        .collect();
    applied.sort();
    assert_eq!(applied, seqs, "each once");
}
on!(a_sink_that_is_down_costs_no_attempts: postgres, sqlite);

/// A webhook that refuses one event of one source (503 while it takes the
/// others) holds back that source only: the forwarder goes on delivering
/// every other source, page after page, while it retries the refused event
/// with backoff; that source's later events wait behind it, and the
/// offset stays before it.
async fn a_refused_event_holds_back_its_source_only<DB: Sql>(env: Env<DB>) {
    let mut sent = events(500, 20);
    sent[0] = NewEvent::new("t", "\"refuse\"").with_source("s", "0");
    let seqs = append(&env, &sent).await;
    let r = Receiver::start().await;
    let sink = webhook(&r).await;
    let config = ForwarderConfig {
        batch_size: 100,
        retry: RetryPolicy {
            max_attempts: u32::MAX,
            ..config("").retry
        },
        ..config("hook")
    };
    let running = Forwarder::to_sink(&env.db, sink, config).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    let others = sent.iter().filter(|e| e.source_id != "0").count();
    wait_until("every other source delivered", LONG, || {
        r.applied()
            .iter()
            .filter(|m| m.key.as_deref() != Some("s:0"))
            .count()
            == others
    })
    .await;
    assert!(!running.has_ended());
    assert!(stats.failed() >= 1, "the refused event is being retried");
    assert!(
        r.applied().iter().all(|m| m.key.as_deref() != Some("s:0")),
        "source 0 waits behind its refused first event"
    );
    assert!(
        stats.offset() < seqs[0],
        "the offset stays before the refused event"
    );
    running.stop().await.unwrap();
    assert!(env.db.load_offset("hook").await.unwrap() < seqs[0]);
}
on!(a_refused_event_holds_back_its_source_only: postgres, sqlite);

/// A call in which nothing is accepted, one event refused as unavailable
/// (503) and the next as malformed (400): the permanent refusal counts
/// (the sink is not taken for down for ever), and the forwarder stops
/// naming the refused event with its own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_counts_beside_an_unavailable_one() {
    let env = support::sqlite().await;
    let r = Receiver::start().await;
    let seqs = append(
        &env,
        &[
            NewEvent::new("t", "\"refuse\""),
            NewEvent::new("t", "\"poison\""),
        ],
    )
    .await;
    let sink = webhook(&r).await;
    let run = Forwarder::to_sink(&env.db, sink, config("hook")).run(CancellationToken::new());
    let e = tokio::time::timeout(LONG, run)
        .await
        .expect("stops at the refused event")
        .unwrap_err();
    let ForwarderError::Stopped {
        seq,
        attempts,
        offset,
        error,
        ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!((*seq, *attempts, *offset), (seqs[1], 1, 0), "{e}");
    assert!(!error.is_transient(), "{e}: the 400's error");
    assert!(error.describe().contains("400"), "{}", error.describe());
    assert_eq!(env.db.load_offset("hook").await.unwrap(), 0);
}

/// A row that cannot be decoded (a plain-SQL producer wrote an event id
/// that is not a UUID): the forwarder delivers the events before it, then
/// stops with `Undecodable` naming where it is, instead of retrying as if
/// the database were down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_row_stops_the_forwarder_after_the_events_before_it() {
    let env = support::sqlite().await;
    let seqs = append(&env, &events(3, 0)).await;
    sqlx::query(
        "INSERT INTO ferry_events (event_id, event_type, payload) VALUES ('order-42', 't', '{}')",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    append(&env, &events(2, 0)).await;
    let recorder = Recorder::default();
    let run =
        Forwarder::to_handler(&env.db, recorder.clone(), config("f")).run(CancellationToken::new());
    let e = tokio::time::timeout(LONG, run)
        .await
        .expect("stops instead of retrying")
        .unwrap_err();
    let ForwarderError::Undecodable { after, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*after, seqs[2], "{e}");
    assert_eq!(recorder.seqs(), seqs, "the events before the bad row");
    assert_eq!(env.db.load_offset("f").await.unwrap(), seqs[2]);
}

/// On PostgreSQL an idle forwarder is woken by the store's NOTIFY: with a
/// poll interval of an hour, events still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wakes_an_idle_forwarder() {
    let env = support::pg().await;
    let recorder = Recorder::default();
    let config = ForwarderConfig {
        poll_interval: Duration::from_secs(3600),
        ..config("f")
    };
    let running =
        Forwarder::to_handler(&env.db, recorder.clone(), config).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("the forwarder idle", LONG, || stats.idle() >= 1).await;
    for i in 1..=3 {
        let idle = stats.idle();
        append(&env, &events(1, 0)).await;
        wait_until("the event, by NOTIFY", Duration::from_secs(20), || {
            recorder.len() == i
        })
        .await;
        // Idle again, waiting for an hour unless notified.
        wait_until("the forwarder idle", LONG, || stats.idle() > idle).await;
    }
    running.stop().await.unwrap();
}

/// Shutdown lets the event in flight finish and saves the offset of what
/// was delivered, mid-page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_saves_the_offset_of_what_was_delivered() {
    let env = support::sqlite().await;
    let seqs = append(&env, &events(50, 0)).await;
    let recorder = Recorder {
        delay: Duration::from_millis(20),
        ..Recorder::default()
    };
    let config = ForwarderConfig {
        batch_size: 50,
        ..config("f")
    };
    let running =
        Forwarder::to_handler(&env.db, recorder.clone(), config).spawn(&CancellationToken::new());
    wait_until("some handled", LONG, || recorder.len() >= 5).await;
    running.stop().await.unwrap();
    let handled = recorder.len();
    assert!(handled < 50, "stopped mid-page");
    assert_eq!(env.db.load_offset("f").await.unwrap(), seqs[handled - 1]);
}

#[tokio::test]
async fn an_invalid_configuration_is_refused() {
    let env = support::sqlite().await;
    let config = ForwarderConfig {
        batch_size: 0,
        ..config("f")
    };
    let e = Forwarder::to_handler(&env.db, Recorder::default(), config)
        .run(CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ForwarderError::Config(_)), "{e}");
    assert!(e.to_string().contains("batch_size"), "{e}");
}

/// An event appended with a trace context reaches the sink's receiver
/// with its `traceparent` and `tracestate` (so the receiver, and the
/// forwarder's delivery span, continue the producer's trace); one
/// appended without reaches it with neither.
async fn a_sink_gets_the_trace_context_an_event_was_appended_with<DB: Sql>(env: Env<DB>) {
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let sent = [
        NewEvent::new("traced", "{}")
            .with_trace_context(parent, Some("rojo=00f067aa0ba902b7".to_owned()))
            .unwrap(),
        NewEvent::new("untraced", "{}").without_trace(),
    ];
    let seqs = append(&env, &sent).await;
    let r = Receiver::start().await;
    let sink = webhook(&r).await;
    let running =
        Forwarder::to_sink(&env.db, sink, config("traced")).spawn(&CancellationToken::new());
    let stats = running.stats.clone();
    wait_until("2 applied", LONG, || r.applied().len() == 2).await;
    wait_until("the offset at the end", LONG, || stats.offset() == seqs[1]).await;
    running.stop().await.unwrap();
    let applied = r.applied();
    let traced = applied
        .iter()
        .find(|m| m.id == sent[0].id.to_string())
        .unwrap();
    assert_eq!(
        traced.headers.get("traceparent").map(String::as_str),
        Some(parent)
    );
    assert_eq!(
        traced.headers.get("tracestate").map(String::as_str),
        Some("rojo=00f067aa0ba902b7")
    );
    let untraced = applied
        .iter()
        .find(|m| m.id == sent[1].id.to_string())
        .unwrap();
    assert!(
        !untraced.headers.contains_key("traceparent"),
        "{:?}",
        untraced.headers
    );
    assert!(
        !untraced.headers.contains_key("tracestate"),
        "{:?}",
        untraced.headers
    );
}
on!(a_sink_gets_the_trace_context_an_event_was_appended_with: postgres, sqlite, mariadb);
