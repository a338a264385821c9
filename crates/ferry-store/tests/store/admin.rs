//! The operations console's store API (`ferry_store::admin`), on every
//! database: the outbox browser, the dead-letter view over the four kinds
//! of failure, grouping by cause, bulk actions in chunks, the audit log and
//! pause flags.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Duration as Span, Utc};
use ferry_store::admin::{
    cause_of, AuditEntry, DeadCursor, DeadFilter, DeadId, DeadItem, DeadKind, OutboxFilter,
    OutboxStatus, PayloadView,
};
use ferry_store::event_store::NewEvent;
use ferry_store::task_failures::TaskFailure;
use ferry_store::DeadLetter;
use uuid::Uuid;

use super::*;
use crate::each_db;

const KEEP: Retention = Retention::Keep(Duration::from_secs(3600));

/// What the test knows of a message it wrote.
#[derive(Clone, Debug)]
struct Known {
    topic: String,
    key: Option<String>,
    status: OutboxStatus,
    second_batch: bool,
}

/// Every page of `filter`, `page` rows at a time; checks that pages are
/// newest first with no row twice.
async fn browse_all(db: &Database, filter: &OutboxFilter, page: u32) -> Vec<(i64, String)> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let p = db.browse_outbox(filter, before, page).await.unwrap();
        assert!(p.rows.len() <= page as usize);
        all.extend(p.rows.iter().map(|r| (r.seq, r.message_id.clone())));
        match p.next_before {
            Some(next) => {
                assert_eq!(p.rows.len(), page as usize, "only full pages have a next");
                before = Some(next);
            }
            None => break,
        }
    }
    assert!(
        all.windows(2).all(|w| w[0].0 > w[1].0),
        "newest first, no row twice: {all:?}"
    );
    all
}

/// 30 messages in two batches (topics orders/users, keys k0/k1 on some),
/// then one relay round: i % 7 == 0 dies, 1 waits for a retry, 2 is
/// delivered (kept), the rest stay pending; and a binary one, pending.
async fn outbox_fixture(env: &Env) -> (HashMap<String, Known>, DateTime<Utc>) {
    let message = |i: usize| {
        let m = Message::event(
            if i.is_multiple_of(3) {
                "orders"
            } else {
                "users"
            },
            i.to_string(),
        )
        .with_header("trace", format!("t{i}"));
        if i.is_multiple_of(5) {
            m.with_key(format!("k{}", i % 2))
        } else {
            m
        }
    };
    let first: Vec<Message> = (0..15).map(message).collect();
    env.enqueue(&first).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second: Vec<Message> = (15..30).map(message).collect();
    env.enqueue(&second).await;
    let claimed = env
        .round(&filter(OrderPolicy::Ordered), |m| {
            let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            match i % 7 {
                0 => dead(&format!(
                    "HTTP 500 from http://hooks.test/hooks/{i} after {i}s"
                )),
                1 => retry_in(60_000),
                2 => Outcome::Delivered,
                _ => Outcome::Released,
            }
        })
        .await;
    assert_eq!(claimed.len(), 30);
    let binary = Message::event("bin", vec![0xff_u8, 0x00, 0x61]).with_key("k0");
    env.enqueue(std::slice::from_ref(&binary)).await;
    let mut known = HashMap::new();
    for (i, m) in first.iter().chain(&second).enumerate() {
        let status = match i % 7 {
            0 => OutboxStatus::Dead,
            1 => OutboxStatus::Retrying,
            2 => OutboxStatus::Delivered,
            _ => OutboxStatus::Pending,
        };
        known.insert(
            m.id.0.to_string(),
            Known {
                topic: m.topic.clone(),
                key: m.key.clone(),
                status,
                second_batch: i >= 15,
            },
        );
    }
    known.insert(
        binary.id.0.to_string(),
        Known {
            topic: "bin".into(),
            key: Some("k0".into()),
            status: OutboxStatus::Pending,
            second_batch: true,
        },
    );
    (known, mid)
}

each_db!(
    outbox_browser_filters_and_pages,
    KEEP,
    |env: Env| async move {
        let (known, mid) = outbox_fixture(&env).await;
        let all = browse_all(&env.db, &OutboxFilter::default(), 4).await;
        assert_eq!(all.len(), 31);
        let ids =
            |rows: &[(i64, String)]| rows.iter().map(|r| r.1.clone()).collect::<BTreeSet<_>>();
        assert_eq!(ids(&all), known.keys().cloned().collect());
        let expect = |pred: &dyn Fn(&Known) -> bool| {
            known
                .iter()
                .filter(|(_, k)| pred(k))
                .map(|(id, _)| id.clone())
                .collect::<BTreeSet<_>>()
        };
        let cases: Vec<(OutboxFilter, BTreeSet<String>)> = vec![
            (
                OutboxFilter {
                    status: Some(OutboxStatus::Pending),
                    ..Default::default()
                },
                expect(&|k| k.status == OutboxStatus::Pending),
            ),
            (
                OutboxFilter {
                    status: Some(OutboxStatus::Retrying),
                    ..Default::default()
                },
                expect(&|k| k.status == OutboxStatus::Retrying),
            ),
            (
                OutboxFilter {
                    status: Some(OutboxStatus::Delivered),
                    ..Default::default()
                },
                expect(&|k| k.status == OutboxStatus::Delivered),
            ),
            (
                OutboxFilter {
                    status: Some(OutboxStatus::Dead),
                    ..Default::default()
                },
                expect(&|k| k.status == OutboxStatus::Dead),
            ),
            (
                OutboxFilter {
                    topic: Some("orders".into()),
                    ..Default::default()
                },
                expect(&|k| k.topic == "orders"),
            ),
            (
                OutboxFilter {
                    key: Some("k0".into()),
                    ..Default::default()
                },
                expect(&|k| k.key.as_deref() == Some("k0")),
            ),
            (
                OutboxFilter {
                    status: Some(OutboxStatus::Pending),
                    key: Some("k0".into()),
                    ..Default::default()
                },
                expect(&|k| k.key.as_deref() == Some("k0") && k.status == OutboxStatus::Pending),
            ),
            (
                OutboxFilter {
                    created_from: Some(mid),
                    ..Default::default()
                },
                expect(&|k| k.second_batch),
            ),
            (
                OutboxFilter {
                    created_to: Some(mid),
                    topic: Some("users".into()),
                    ..Default::default()
                },
                expect(&|k| !k.second_batch && k.topic == "users"),
            ),
        ];
        for (f, expected) in cases {
            assert!(!expected.is_empty(), "{f:?} matches something");
            assert!(expected.len() < 31, "{f:?} leaves something out");
            for page in [1, 3, 1000] {
                let got = browse_all(&env.db, &f, page).await;
                assert_eq!(ids(&got), expected, "{f:?}, pages of {page}");
                assert_eq!(got.len(), expected.len(), "{f:?}, pages of {page}");
            }
        }
        // Statuses as the rows show them.
        let page = env
            .db
            .browse_outbox(&OutboxFilter::default(), None, 1000)
            .await
            .unwrap();
        for row in &page.rows {
            let k = &known[&row.message_id];
            assert_eq!(row.status, k.status, "{row:?}");
            assert_eq!(row.topic, k.topic);
            assert_eq!(row.key, k.key);
            match row.status {
                OutboxStatus::Dead => {
                    assert_eq!(row.attempts, 1);
                    assert!(row
                        .last_error
                        .as_deref()
                        .unwrap()
                        .starts_with("HTTP 500 from"));
                }
                OutboxStatus::Delivered => assert!(row.delivered_at.is_some()),
                OutboxStatus::Retrying => assert!(row.next_attempt_at > Utc::now()),
                OutboxStatus::Pending => assert_eq!(row.attempts, 0),
            }
        }
        // One message by id, whole.
        let (id, _) = known
            .iter()
            .find(|(_, k)| k.status == OutboxStatus::Dead)
            .unwrap();
        let uuid: Uuid = id.parse().unwrap();
        let one = browse_all(
            &env.db,
            &OutboxFilter {
                message_id: Some(uuid),
                ..Default::default()
            },
            5,
        )
        .await;
        assert_eq!(one.len(), 1);
        let by_id = env
            .db
            .outbox_message(&MessageRef::Id(uuid))
            .await
            .unwrap()
            .unwrap();
        let by_seq = env
            .db
            .outbox_message(&seq_ref(one[0].0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_id, by_seq);
        let i: usize = match &by_id.payload {
            PayloadView::Text(t) => t.parse().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(by_id.headers["trace"], format!("t{i}"));
        assert_eq!(by_id.content_type, "application/json");
        assert_eq!(by_id.row.status, OutboxStatus::Dead);
        let json = serde_json::to_value(&by_id).unwrap();
        assert_eq!(json["status"], "dead");
        assert_eq!(json["payload"]["encoding"], "utf8");
        let bin = browse_all(
            &env.db,
            &OutboxFilter {
                topic: Some("bin".into()),
                ..Default::default()
            },
            5,
        )
        .await;
        let bin = env
            .db
            .outbox_message(&seq_ref(bin[0].0))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bin.payload, PayloadView::Base64("/wBh".into()));
        assert!(env
            .db
            .outbox_message(&seq_ref(999_999))
            .await
            .unwrap()
            .is_none());
        assert!(matches!(
            env.db
                .browse_outbox(&OutboxFilter::default(), None, 0)
                .await,
            Err(StoreError::InvalidPageLimit { limit: 0, .. })
        ));
        assert_eq!(
            "retrying".parse::<OutboxStatus>().unwrap(),
            OutboxStatus::Retrying
        );
        let e = "stuck".parse::<OutboxStatus>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid outbox status `stuck`: expected pending, retrying, delivered or dead"
        );
    }
);

fn http_error(i: usize) -> String {
    format!("HTTP 500 from http://hooks.test/hooks/{i} after {i}s")
}

fn dup_error(i: usize) -> String {
    format!("duplicate key value violates unique constraint \"orders_pkey\": Key (id)=({i}) already exists")
}

fn nats_error(i: usize) -> String {
    format!(
        "nats: timed out after {}ms waiting for ack on 'orders.{i}'",
        1000 + i
    )
}

fn smtp_error(i: usize) -> String {
    format!("smtp: 421 4.7.0 try again later (queue {i:x}deadbeef)")
}

/// Dead items of every kind: 6 outbox (relay, 2 of them made dead again
/// by plain SQL without a cause or a death time), 10 consumer dead letters
/// of `billing` (half with their cause cleared by plain SQL), 4 forwarder
/// failures, 5 task failures; consumer and task items share failure
/// times, so the order of ties is exercised. Returns every id.
async fn dead_fixture(env: &Env) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let ms: Vec<Message> = (0..6)
        .map(|i| Message::event("orders", i.to_string()))
        .collect();
    env.enqueue(&ms).await;
    env.round(&filter(OrderPolicy::Ordered), |m| {
        let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        if i < 4 {
            dead(&http_error(i))
        } else {
            Outcome::Released
        }
    })
    .await;
    // Two made dead by plain SQL: no cause, no dead_at.
    env.exec(&format!(
        "UPDATE ferry_outbox SET status = 'dead', attempts = 2, last_error = '{}' WHERE status = 'pending'",
        http_error(77)
    ))
    .await;
    let page = env
        .db
        .browse_outbox(
            &OutboxFilter {
                status: Some(OutboxStatus::Dead),
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(page.rows.len(), 6);
    ids.extend(page.rows.iter().map(|r| DeadId::outbox(r.seq).to_string()));

    let base = Utc::now() - Span::minutes(10);
    for i in 0..10 {
        let mut d = DeadLetter::new(
            "billing",
            Message::event("payments", format!("{{\"n\":{i}}}")).with_header("h", "v"),
            if i < 7 { dup_error(i) } else { nats_error(i) },
            i as u32 + 1,
        );
        // Pairs of letters at the same time.
        d.dead_at = base + Span::seconds(i as i64 / 2);
        env.db.record_dead_letter(&d).await.unwrap();
        ids.insert(DeadId::consumer(d.id).to_string());
    }
    env.exec("UPDATE ferry_dead_letters SET cause = NULL WHERE attempts <= 5")
        .await;

    let seqs = env
        .db
        .append_events(
            &(0..4)
                .map(|i| NewEvent::new("order.paid", format!("{{\"e\":{i}}}")))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let page = env
        .db
        .read_events(&ferry_store::event_store::EventQuery {
            offset: 0,
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    for (i, e) in page.events.iter().enumerate() {
        env.db
            .record_event_failure("orders:fwd", e, 5, &nats_error(i))
            .await
            .unwrap();
        ids.insert(DeadId::forwarder("orders:fwd", e.seq).to_string());
    }
    assert_eq!(seqs.len(), 4);

    for i in 0..5 {
        let t = TaskFailure {
            id: Uuid::now_v7(),
            task: "send-mail".into(),
            input: Some(serde_json::json!({"to": format!("u{i}@example.com")})),
            error: smtp_error(i),
            attempts: 3,
            first_failed_at: base,
            // The same times as the consumer letters.
            last_failed_at: base + Span::seconds(i as i64),
        };
        env.db.record_task_failure(&t).await.unwrap();
        ids.insert(DeadId::task(t.id).to_string());
    }
    ids
}

/// Every page of `filter`, `page` items at a time; checks the order and
/// that no item comes twice.
async fn dead_all(db: &Database, filter: &DeadFilter, page: u32) -> Vec<DeadItem> {
    let mut all: Vec<DeadItem> = Vec::new();
    let mut after: Option<DeadCursor> = None;
    loop {
        let p = db.dead_items(filter, after.as_ref(), page).await.unwrap();
        assert!(p.items.len() <= page as usize);
        all.extend(p.items);
        match p.next {
            // Through its string form, as the API passes it.
            Some(next) => after = Some(next.to_string().parse().unwrap()),
            None => break,
        }
    }
    for w in all.windows(2) {
        assert!(
            (w[0].failed_at, &w[0].id) > (w[1].failed_at, &w[1].id),
            "newest first, no item twice: {:?} then {:?}",
            w[0].id,
            w[1].id
        );
    }
    all
}

each_db!(
    dead_view_lists_every_kind_with_paging,
    Retention::Delete,
    |env: Env| async move {
        let ids = dead_fixture(&env).await;
        assert_eq!(ids.len(), 25);
        for page in [1, 4, 7, 1000] {
            let all = dead_all(&env.db, &DeadFilter::default(), page).await;
            let got: BTreeSet<String> = all.iter().map(|i| i.id.to_string()).collect();
            assert_eq!(got, ids, "pages of {page}");
            assert_eq!(all.len(), 25);
        }
        assert_eq!(env.db.count_dead(&DeadFilter::default()).await.unwrap(), 25);
        let all = dead_all(&env.db, &DeadFilter::default(), 1000).await;
        for item in &all {
            assert_eq!(item.kind, item.id.kind());
            assert_eq!(item.cause, cause_of(&item.error), "{item:?}");
            match item.kind {
                DeadKind::Outbox => {
                    assert_eq!(item.name, "orders");
                    assert_eq!(item.topic.as_deref(), Some("orders"));
                    assert!(item.message_id.is_some());
                }
                DeadKind::Consumer => {
                    assert_eq!(item.name, "billing");
                    assert_eq!(item.topic.as_deref(), Some("payments"));
                }
                DeadKind::Forwarder => {
                    assert_eq!(item.name, "orders:fwd");
                    assert_eq!(item.attempts, 5);
                }
                DeadKind::Task => {
                    assert_eq!(item.name, "send-mail");
                    assert_eq!(item.attempts, 3);
                }
            }
        }
        // Filters.
        let by_kind = |kinds: Vec<DeadKind>| DeadFilter {
            kinds,
            ..Default::default()
        };
        for (kind, n) in [
            (DeadKind::Outbox, 6),
            (DeadKind::Consumer, 10),
            (DeadKind::Forwarder, 4),
            (DeadKind::Task, 5),
        ] {
            let items = dead_all(&env.db, &by_kind(vec![kind]), 3).await;
            assert_eq!(items.len(), n, "{kind}");
            assert!(items.iter().all(|i| i.kind == kind));
            assert_eq!(
                env.db.count_dead(&by_kind(vec![kind])).await.unwrap(),
                n as u64
            );
        }
        let two = dead_all(
            &env.db,
            &by_kind(vec![DeadKind::Task, DeadKind::Consumer]),
            4,
        )
        .await;
        assert_eq!(two.len(), 15);
        let named = DeadFilter {
            name: Some("billing".into()),
            ..Default::default()
        };
        assert_eq!(dead_all(&env.db, &named, 3).await.len(), 10);
        let dup = DeadFilter {
            cause: Some(cause_of(&dup_error(0))),
            ..Default::default()
        };
        let dups = dead_all(&env.db, &dup, 2).await;
        assert_eq!(dups.len(), 7, "stored and fingerprinted causes alike");
        assert!(dups.iter().all(|i| i.error.starts_with("duplicate key")));
        assert_eq!(env.db.count_dead(&dup).await.unwrap(), 7);
        let http = DeadFilter {
            cause: Some(cause_of(&http_error(1))),
            ..Default::default()
        };
        assert_eq!(
            dead_all(&env.db, &http, 4).await.len(),
            6,
            "relay and plain SQL deaths"
        );
        assert_eq!(env.db.count_dead(&http).await.unwrap(), 6);
        // Times: the consumer letters and tasks sit in [base, base + 5 s).
        let base = all
            .iter()
            .filter(|i| i.kind == DeadKind::Task)
            .map(|i| i.failed_at)
            .min()
            .unwrap();
        let window = DeadFilter {
            failed_from: Some(base + Span::seconds(1)),
            failed_to: Some(base + Span::seconds(3)),
            ..Default::default()
        };
        let in_window = dead_all(&env.db, &window, 2).await;
        // Consumer letters 2..=5 (times +1, +1, +2, +2) and tasks 1, 2.
        assert_eq!(in_window.len(), 6, "{in_window:?}");
        assert_eq!(env.db.count_dead(&window).await.unwrap(), 6);
        // A cursor of another page, or a malformed one.
        assert!(matches!(
            "12.consumer:nope".parse::<DeadCursor>(),
            Err(StoreError::InvalidArgument {
                parameter: "cursor",
                ..
            })
        ));
        assert!(matches!(
            env.db.dead_items(&DeadFilter::default(), None, 0).await,
            Err(StoreError::InvalidPageLimit { .. })
        ));
    }
);

each_db!(
    dead_causes_group_stored_and_fingerprinted,
    Retention::Delete,
    |env: Env| async move {
        dead_fixture(&env).await;
        let groups = env.db.dead_causes(&DeadFilter::default()).await.unwrap();
        let summary: Vec<(DeadKind, &str, u64)> = groups
            .iter()
            .map(|g| (g.kind, g.name.as_str(), g.count))
            .collect();
        assert_eq!(
            summary,
            [
                (DeadKind::Consumer, "billing", 7),
                (DeadKind::Outbox, "orders", 6),
                (DeadKind::Task, "send-mail", 5),
                (DeadKind::Forwarder, "orders:fwd", 4),
                (DeadKind::Consumer, "billing", 3),
            ],
            "largest first: {groups:#?}"
        );
        assert_eq!(groups[0].cause, cause_of(&dup_error(0)));
        assert!(groups[0].example.starts_with("duplicate key value"));
        assert_eq!(groups[1].cause, cause_of(&http_error(0)));
        assert_eq!(groups[4].cause, cause_of(&nats_error(0)));
        assert_eq!(
            groups[3].cause, groups[4].cause,
            "one cause, two kinds: two groups"
        );
        // Latest: the newest failure of the group.
        let tasks = dead_all(
            &env.db,
            &DeadFilter {
                kinds: vec![DeadKind::Task],
                ..Default::default()
            },
            10,
        )
        .await;
        assert_eq!(groups[2].latest, tasks[0].failed_at);
        // Filtered groups.
        let billing = env
            .db
            .dead_causes(&DeadFilter {
                name: Some("billing".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(billing.iter().map(|g| g.count).collect::<Vec<_>>(), [7, 3]);
        let nats = env
            .db
            .dead_causes(&DeadFilter {
                cause: Some(cause_of(&nats_error(3))),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            nats.iter().map(|g| (g.kind, g.count)).collect::<Vec<_>>(),
            [(DeadKind::Forwarder, 4), (DeadKind::Consumer, 3)]
        );
    }
);

each_db!(
    dead_detail_and_single_actions,
    Retention::Delete,
    |env: Env| async move {
        dead_fixture(&env).await;
        let all = dead_all(&env.db, &DeadFilter::default(), 1000).await;
        let first = |kind| all.iter().find(|i| i.kind == kind).unwrap().clone();

        let outbox = first(DeadKind::Outbox);
        let d = env.db.dead_detail(&outbox.id).await.unwrap().unwrap();
        assert_eq!(d.item, outbox);
        assert!(matches!(d.payload, Some(PayloadView::Text(_))));
        assert_eq!(d.content_type.as_deref(), Some("application/json"));

        let consumer = first(DeadKind::Consumer);
        let d = env.db.dead_detail(&consumer.id).await.unwrap().unwrap();
        assert_eq!(d.headers["h"], "v");
        assert!(matches!(&d.payload, Some(PayloadView::Text(t)) if t.starts_with("{\"n\":")));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["id"], consumer.id.to_string());
        assert_eq!(json["kind"], "consumer");

        let fwd = first(DeadKind::Forwarder);
        let d = env.db.dead_detail(&fwd.id).await.unwrap().unwrap();
        assert_eq!(d.headers["event_type"], "order.paid");
        assert!(matches!(&d.payload, Some(PayloadView::Text(t)) if t.starts_with("{\"e\":")));
        let ferry_store::admin::DeadKey::Forwarder { reader, seq } = &fwd.id.0 else {
            unreachable!()
        };
        let event = env
            .db
            .event_failure_event(reader, *seq)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.seq, *seq);
        assert!(env
            .db
            .event_failure_event("nobody", *seq)
            .await
            .unwrap()
            .is_none());

        let task = first(DeadKind::Task);
        let d = env.db.dead_detail(&task.id).await.unwrap().unwrap();
        assert!(d.input.unwrap()["to"]
            .as_str()
            .unwrap()
            .ends_with("@example.com"));
        assert!(d.payload.is_none());

        // Discard one of each kind; replay one outbox message.
        for item in [&consumer, &fwd, &task] {
            assert!(env.db.discard_dead_item(&item.id).await.unwrap());
            assert!(!env.db.discard_dead_item(&item.id).await.unwrap(), "gone");
            assert!(env.db.dead_detail(&item.id).await.unwrap().is_none());
        }
        let ferry_store::admin::DeadKey::Outbox { seq } = outbox.id.0 else {
            unreachable!()
        };
        assert!(env.db.replay_outbox_dead_item(seq).await.unwrap());
        assert!(
            !env.db.replay_outbox_dead_item(seq).await.unwrap(),
            "no longer dead"
        );
        assert!(
            !env.db.discard_dead_item(&outbox.id).await.unwrap(),
            "pending: not discarded"
        );
        assert!(env.db.dead_detail(&outbox.id).await.unwrap().is_none());
        let row = env
            .db
            .outbox_message(&seq_ref(seq))
            .await
            .unwrap()
            .unwrap()
            .row;
        assert_eq!((row.status, row.attempts), (OutboxStatus::Pending, 0));
        assert_eq!(env.db.count_dead(&DeadFilter::default()).await.unwrap(), 21);
        let other = all
            .iter()
            .filter(|i| i.kind == DeadKind::Outbox)
            .nth(1)
            .unwrap();
        assert!(env.db.discard_dead_item(&other.id).await.unwrap());
        assert_eq!(env.db.count_dead(&DeadFilter::default()).await.unwrap(), 20);
        assert!(env
            .db
            .dead_detail(&DeadId::consumer(Uuid::now_v7()))
            .await
            .unwrap()
            .is_none());
    }
);

each_db!(
    bulk_actions_work_in_chunks,
    Retention::Delete,
    |env: Env| async move {
        // Outbox: 25 dead of topic bulk (5 by plain SQL, without a cause),
        // 3 dead of topic keep, one bulk message with another error.
        let ms: Vec<Message> = (0..29)
            .map(|i| {
                Message::event(
                    if (25..28).contains(&i) {
                        "keep"
                    } else {
                        "bulk"
                    },
                    i.to_string(),
                )
            })
            .collect();
        env.enqueue(&ms).await;
        env.round(&filter(OrderPolicy::Ordered), |m| {
            let i: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            match i {
                20..25 => Outcome::Released,
                28 => dead("schema registry: subject not found"),
                _ => dead(&http_error(i)),
            }
        })
        .await;
        env.exec(&format!(
        "UPDATE ferry_outbox SET status = 'dead', attempts = 1, last_error = '{}' WHERE status = 'pending'",
        http_error(99)
    ))
    .await;
        let bulk = DeadFilter {
            kinds: vec![DeadKind::Outbox],
            name: Some("bulk".into()),
            cause: Some(cause_of(&http_error(0))),
            ..Default::default()
        };
        assert_eq!(env.db.count_dead(&bulk).await.unwrap(), 25);
        let mut chunks = Vec::new();
        loop {
            let n = env.db.replay_outbox_dead_chunk(&bulk, 10).await.unwrap();
            chunks.push(n);
            if n == 0 {
                break;
            }
        }
        assert_eq!(chunks, [10, 10, 5, 0]);
        let pending = OutboxFilter {
            status: Some(OutboxStatus::Pending),
            ..Default::default()
        };
        let replayed = env
            .db
            .browse_outbox(&pending, None, 100)
            .await
            .unwrap()
            .rows;
        assert_eq!(replayed.len(), 25);
        assert!(replayed
            .iter()
            .all(|r| r.topic == "bulk" && r.attempts == 0));
        let still_dead = env
            .db
            .count_dead(&DeadFilter {
                kinds: vec![DeadKind::Outbox],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(still_dead, 4, "keep's 3 and the other cause untouched");
        assert_eq!(
            env.db
                .replay_outbox_dead_chunk(
                    &DeadFilter {
                        kinds: vec![DeadKind::Task],
                        ..Default::default()
                    },
                    10
                )
                .await
                .unwrap(),
            0,
            "only the outbox kind is replayed"
        );

        // Consumer letters: 25 of bulk with the dup cause (10 with the cause
        // cleared), 5 of bulk with another, 5 of other.
        let base = Utc::now() - Span::minutes(5);
        let mut bulk_ids = Vec::new();
        for i in 0..35 {
            let (consumer, error) = match i {
                0..25 => ("bulk", dup_error(i)),
                25..30 => ("bulk", nats_error(i)),
                _ => ("other", dup_error(i)),
            };
            let mut d = DeadLetter::new(consumer, Message::event("t", i.to_string()), error, 1);
            d.dead_at = base + Span::milliseconds(i as i64 * 10);
            if i < 25 {
                bulk_ids.push(d.id);
            }
            env.db.record_dead_letter(&d).await.unwrap();
        }
        let cleared: Vec<String> = bulk_ids[..10].iter().map(|id| format!("'{id}'")).collect();
        env.exec(&format!(
            "UPDATE ferry_dead_letters SET cause = NULL WHERE id IN ({})",
            cleared.join(", ")
        ))
        .await;
        let letters = DeadFilter {
            kinds: vec![DeadKind::Consumer],
            name: Some("bulk".into()),
            cause: Some(cause_of(&dup_error(0))),
            ..Default::default()
        };
        assert_eq!(env.db.count_dead(&letters).await.unwrap(), 25);
        // Read, publish (here: note), delete; 10 at a time, oldest first.
        let mut taken = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let chunk = env.db.take_dead_chunk(&letters, 10).await.unwrap();
            sizes.push(chunk.len());
            if chunk.is_empty() {
                break;
            }
            // Reading does not delete.
            assert_eq!(env.db.take_dead_chunk(&letters, 10).await.unwrap(), chunk);
            for d in chunk {
                assert!(env.db.delete_dead_letter(d.id).await.unwrap());
                taken.push(d.id);
            }
        }
        assert_eq!(sizes, [10, 10, 5, 0]);
        assert_eq!(taken, bulk_ids, "oldest first, each once");
        assert_eq!(
            env.db
                .count_dead(&DeadFilter {
                    kinds: vec![DeadKind::Consumer],
                    ..Default::default()
                })
                .await
                .unwrap(),
            10
        );

        // Discard across kinds: everything dead with the dup or http cause.
        for i in 0..5 {
            let mut d = DeadLetter::new("other", Message::event("t", "x"), dup_error(100 + i), 1);
            d.dead_at = base;
            env.db.record_dead_letter(&d).await.unwrap();
        }
        let dup = DeadFilter {
            cause: Some(cause_of(&dup_error(0))),
            ..Default::default()
        };
        assert_eq!(env.db.count_dead(&dup).await.unwrap(), 10);
        let mut chunks = Vec::new();
        loop {
            let n = env.db.discard_dead_chunk(&dup, 4).await.unwrap();
            chunks.push(n);
            if n == 0 {
                break;
            }
        }
        assert_eq!(chunks, [4, 4, 2, 0]);
        assert_eq!(
            env.db.count_dead(&DeadFilter::default()).await.unwrap(),
            5 + 4,
            "nats letters and outbox untouched"
        );
        assert!(matches!(
            env.db.discard_dead_chunk(&dup, 0).await,
            Err(StoreError::InvalidArgument {
                parameter: "chunk",
                ..
            })
        ));
    }
);

each_db!(
    audit_log_and_pauses,
    Retention::Delete,
    |env: Env| async move {
        // The whole env, not only env.db: the test database lives as long.
        let env = env;
        for (i, action) in ["dead.replay", "dead.discard", "pipeline.pause"]
            .iter()
            .enumerate()
        {
            env.db
                .record_audit(&AuditEntry {
                    actor: "ops-token".into(),
                    action: action.to_string(),
                    target: format!("t{i}"),
                    count: i as i64 * 10,
                    detail: (i == 1).then(|| "{\"cause\":\"x\"}".to_owned()),
                })
                .await
                .unwrap();
        }
        let first = env.db.audit_log(None, 2).await.unwrap();
        assert_eq!(
            first
                .iter()
                .map(|r| r.entry.action.as_str())
                .collect::<Vec<_>>(),
            ["pipeline.pause", "dead.discard"]
        );
        assert_eq!(first[1].entry.detail.as_deref(), Some("{\"cause\":\"x\"}"));
        assert_eq!(first[0].entry.count, 20);
        assert!(first[0].id > first[1].id);
        assert!((Utc::now() - first[0].at).num_seconds().abs() < 60);
        let rest = env.db.audit_log(Some(first[1].id), 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].entry.target, "t0");
        assert_eq!(rest[0].entry.detail, None);
        let json = serde_json::to_value(&rest[0]).unwrap();
        assert_eq!(json["actor"], "ops-token");

        assert!(env.db.paused().await.unwrap().is_empty());
        assert!(env.db.pause("orders-relay", "alice").await.unwrap());
        assert!(
            !env.db.pause("orders-relay", "bob").await.unwrap(),
            "already paused"
        );
        assert!(env.db.pause("billing", "bob").await.unwrap());
        let paused = env.db.paused().await.unwrap();
        assert_eq!(
            paused
                .iter()
                .map(|p| (p.name.as_str(), p.by.as_str()))
                .collect::<Vec<_>>(),
            [("billing", "bob"), ("orders-relay", "alice")]
        );
        assert!(env.db.resume("orders-relay").await.unwrap());
        assert!(!env.db.resume("orders-relay").await.unwrap());
        assert_eq!(env.db.paused().await.unwrap().len(), 1);
    }
);
