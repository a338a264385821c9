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
    let low = crate::late_committing_lower_sequence_is_not_skipped!(&env, Postgres, postgres);
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
    crate::concurrent_claims_are_disjoint_and_keep_keys_whole(&env, pg(&env)).await;
}

/// The single-relay shortcut: nothing pending outside the batch, so no gap
/// probes, and every message of a key in the batch comes back.
#[tokio::test]
async fn a_lone_claim_takes_whole_keys() {
    let env = pg_env(Retention::Delete).await;
    let ms: Vec<Message> = (0..30)
        .map(|i| Message::event("t", i.to_string()).with_key(format!("k{}", i % 3)))
        .collect();
    env.enqueue(&ms).await;
    let f = ClaimFilter {
        limit: 30,
        ..filter(OrderPolicy::Ordered)
    };
    assert_eq!(env.round(&f, |_| Outcome::Delivered).await.len(), 30);
}

/// A claim whose session dies is released at once.
#[tokio::test]
async fn a_dead_session_releases_its_claim() {
    let env = pg_env(Retention::Delete).await;
    let p = pool(&env);
    crate::a_dead_session_releases_its_claim(&env, pg(&env), || async {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'")
            .execute(&p)
            .await
            .unwrap();
    })
    .await;
}

/// The lease: a claim left idle longer than it is ended by the server.
#[tokio::test]
async fn an_idle_claim_expires_after_the_lease() {
    let env = pg_env_with(Retention::Delete, short_lease()).await;
    crate::an_idle_claim_expires_after_the_lease(&env, pg(&env), None, Duration::from_millis(600))
        .await;
}

/// The insert trigger wakes a waiting relay long before its poll interval.
#[tokio::test]
async fn notify_wakes_the_relay() {
    let env = pg_env(Retention::Delete).await;
    let o = pg(&env);
    let p = pool(&env);
    // The listener wakes the relay once it listens; after that wake-up only
    // a NOTIFY (or a lost connection) wakes it before the timeout.
    let started = std::time::Instant::now();
    o.wait_for_work(Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the listener never started"
    );
    let waiter = async {
        // A stray wake-up before the row is visible waits again.
        loop {
            o.wait_for_work(Duration::from_secs(30)).await;
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ferry_outbox")
                .fetch_one(&p)
                .await
                .unwrap();
            if n > 0 {
                return std::time::Instant::now();
            }
        }
    };
    let inserter = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let inserting = std::time::Instant::now();
        sqlx::query("INSERT INTO ferry_outbox (topic, payload) VALUES ('t', '{}')")
            .execute(&p)
            .await
            .unwrap();
        inserting
    };
    let (woke, inserting) = tokio::join!(waiter, inserter);
    assert!(woke >= inserting);
    assert!(
        woke.duration_since(inserting) < Duration::from_secs(10),
        "woken by NOTIFY, not by the 30 s timeout"
    );
}
