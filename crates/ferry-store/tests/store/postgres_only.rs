use super::*;
use sqlx::PgPool;

fn pool(env: &Env) -> PgPool {
    let Database::Postgres(p) = &env.db else {
        unreachable!()
    };
    p.clone()
}

fn pg(env: &Env) -> &PgOutbox {
    let AnyOutbox::Pg(o) = &env.outbox else {
        unreachable!()
    };
    o
}

/// A transaction that takes a lower sequence number but commits after a
/// higher one must still be delivered.
#[tokio::test]
async fn late_committing_lower_sequence_is_not_skipped() {
    let env = pg_env(Retention::Delete).await;
    let p = pool(&env);
    let mut slow = p.begin().await.unwrap();
    let low = ferry_store::outbox::postgres::enqueue(&mut slow, &Message::event("t", "slow"))
        .await
        .unwrap();
    env.enqueue(&[Message::event("t", "fast")]).await;
    let f = filter(OrderPolicy::Ordered);
    assert_eq!(
        payloads(&env.round(&f, |_| Outcome::Delivered).await),
        ["fast"]
    );
    slow.commit().await.unwrap();
    let late = env.round(&f, |_| Outcome::Delivered).await;
    assert_eq!(payloads(&late), ["slow"]);
    assert!(
        low < env
            .scalar("SELECT COALESCE(MAX(seq), 1000000) FROM ferry_outbox")
            .await
    );
}

/// Two relays claiming at the same time never get the same message, and a
/// key is never split across them.
#[tokio::test]
async fn concurrent_claims_are_disjoint_and_keep_keys_whole() {
    let env = pg_env(Retention::Delete).await;
    let ms: Vec<Message> = (0..60)
        .map(|i| Message::event("t", i.to_string()).with_key(format!("k{}", i % 4)))
        .collect();
    env.enqueue(&ms).await;
    let o = pg(&env);
    let f = ClaimFilter {
        limit: 20,
        order: OrderPolicy::Ordered,
        topics: None,
    };
    let a = o.claim(&f).await.unwrap();
    let b = o.claim(&f).await.unwrap();
    let seqs = |x: &ferry_store::outbox::postgres::PgBatch| {
        x.messages().iter().map(|c| c.seq).collect::<Vec<_>>()
    };
    let (sa, sb) = (seqs(&a), seqs(&b));
    assert!(!sa.is_empty());
    assert!(sa.iter().all(|s| !sb.contains(s)), "disjoint");
    // b may only hold messages whose earlier same-key messages are not in a.
    let key_of = |x: &ferry_store::outbox::postgres::PgBatch| {
        x.messages()
            .iter()
            .map(|c| c.message.as_ref().unwrap().key.clone())
            .collect::<Vec<_>>()
    };
    for k in key_of(&b) {
        assert!(!key_of(&a).contains(&k), "key {k:?} split across relays");
    }
    let na = sa.len();
    a.settle(&vec![Outcome::Delivered; na]).await.unwrap();
    let nb = sb.len();
    b.settle(&vec![Outcome::Delivered; nb]).await.unwrap();
}

/// A claim whose session dies is released at once.
#[tokio::test]
async fn a_dead_session_releases_its_claim() {
    let env = pg_env(Retention::Delete).await;
    env.enqueue(&[Message::event("t", "x")]).await;
    let o = pg(&env);
    let f = filter(OrderPolicy::Ordered);
    let held = o.claim(&f).await.unwrap();
    assert_eq!(held.messages().len(), 1);
    assert!(
        o.claim(&f).await.unwrap().messages().is_empty(),
        "locked by the first claim"
    );
    let p = pool(&env);
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'")
        .execute(&p)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        got = env.round(&f, |_| Outcome::Delivered).await;
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(payloads(&got), ["x"]);
    assert!(
        held.settle(&[Outcome::Delivered]).await.is_err(),
        "the dead claim cannot settle"
    );
}

/// The lease: a claim left idle longer than it is ended by the server.
#[tokio::test]
async fn an_idle_claim_expires_after_the_lease() {
    let t = PgTestDb::create().await;
    let db = Database::connect_with(
        &t.url,
        &ConnectOptions {
            max_connections: 4,
            lease: Some(Duration::from_millis(300)),
        },
    )
    .await
    .unwrap();
    db.migrate().await.unwrap();
    let Database::Postgres(p) = &db else {
        unreachable!()
    };
    let o = PgOutbox::new(p.clone(), Retention::Delete);
    let mut tx = p.begin().await.unwrap();
    ferry_store::outbox::postgres::enqueue(&mut tx, &Message::event("t", "x"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let f = filter(OrderPolicy::Ordered);
    let held = o.claim(&f).await.unwrap();
    assert_eq!(held.messages().len(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = o.claim(&f).await.unwrap();
    assert_eq!(
        again.messages().len(),
        1,
        "lease expired, message claimable again"
    );
    again.settle(&[Outcome::Delivered]).await.unwrap();
    assert!(held.settle(&[Outcome::Delivered]).await.is_err());
}

/// The insert trigger wakes a waiting relay long before its poll interval.
#[tokio::test]
async fn notify_wakes_the_relay() {
    let env = pg_env(Retention::Delete).await;
    let o = pg(&env);
    // Let the listener start and consume its initial wake-up.
    o.wait_for_work(Duration::from_millis(500)).await;
    let p = pool(&env);
    let waiter = async {
        o.wait_for_work(Duration::from_secs(30)).await;
        std::time::Instant::now()
    };
    let inserter = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query("INSERT INTO ferry_outbox (topic, payload) VALUES ('t', '{}')")
            .execute(&p)
            .await
            .unwrap();
        std::time::Instant::now()
    };
    let (woke, inserted) = tokio::join!(waiter, inserter);
    assert!(woke >= inserted);
    assert!(
        woke.duration_since(inserted) < Duration::from_secs(10),
        "woken by NOTIFY, not by the 30 s timeout"
    );
}
