//! MariaDB's concurrency: the same claims as PostgreSQL's (see
//! postgres_only.rs), with MariaDB's own ways to kill a session and its
//! lease (`idle_transaction_timeout`).

use super::*;
use sqlx::MySqlPool;

fn pool(env: &Env) -> MySqlPool {
    let Database::Mysql(p) = &env.db else {
        unreachable!()
    };
    p.clone()
}

fn my(env: &Env) -> &MysqlOutbox {
    let AnyOutbox::Mysql(o) = &env.outbox else {
        unreachable!()
    };
    o
}

/// A transaction that takes a lower sequence number but commits after a
/// higher one must still be delivered.
#[tokio::test]
async fn late_committing_lower_sequence_is_not_skipped() {
    let env = mysql_env(Retention::Delete).await;
    let low = crate::late_committing_lower_sequence_is_not_skipped!(&env, Mysql, mysql);
    assert!(low >= 1);
}

/// A claim held open does not block producers (no gap locks: the claim
/// runs at READ COMMITTED).
#[tokio::test]
async fn a_held_claim_does_not_block_producers() {
    let env = mysql_env(Retention::Delete).await;
    env.enqueue(&[Message::event("t", "1").with_key("k")]).await;
    let held = my(&env).claim(&filter(OrderPolicy::Ordered)).await.unwrap();
    assert_eq!(held.messages().len(), 1);
    let p = pool(&env);
    let mut conn = p.acquire().await.unwrap();
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 2")
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    for i in 2..5 {
        ferry_store::outbox::mysql::enqueue(
            &mut tx,
            &Message::event("t", i.to_string()).with_key("k"),
        )
        .await
        .expect("the insert is not blocked by the claim");
    }
    tx.commit().await.unwrap();
    held.settle(&[Outcome::Delivered]).await.unwrap();
    let rest = env
        .round(&filter(OrderPolicy::Ordered), |_| Outcome::Delivered)
        .await;
    assert_eq!(payloads(&rest), ["2", "3", "4"]);
}

/// Two relays claiming at the same time never get the same message, and a
/// key is never split across them.
#[tokio::test]
async fn concurrent_claims_are_disjoint_and_keep_keys_whole() {
    let env = mysql_env(Retention::Delete).await;
    crate::concurrent_claims_are_disjoint_and_keep_keys_whole(&env, my(&env)).await;
}

/// Sessions of this test's database with a transaction open.
async fn sessions_in_transaction(p: &MySqlPool) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT p.id FROM information_schema.innodb_trx t
         JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id
         WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()",
    )
    .fetch_all(p)
    .await
    .unwrap()
}

/// A claim whose session dies is released at once.
#[tokio::test]
async fn a_dead_session_releases_its_claim() {
    let env = mysql_env(Retention::Delete).await;
    let p = pool(&env);
    crate::a_dead_session_releases_its_claim(&env, my(&env), || async {
        let sessions = sessions_in_transaction(&p).await;
        assert_eq!(sessions.len(), 1, "the claim's session");
        sqlx::query(&format!("KILL {}", sessions[0]))
            .execute(&p)
            .await
            .unwrap();
    })
    .await;
}

/// The lease: a claim left idle longer than it is ended by the server
/// (`idle_transaction_timeout`, whole seconds: 300 ms rounds up to 1 s).
#[tokio::test]
async fn an_idle_claim_expires_after_the_lease() {
    let env = mysql_env_with(Retention::Delete, short_lease()).await;
    crate::an_idle_claim_expires_after_the_lease(
        &env,
        my(&env),
        Some(Duration::from_millis(500)),
        Duration::from_millis(2000),
    )
    .await;
}

/// An in-process producer wakes a waiting relay through the waker.
#[tokio::test]
async fn the_waker_wakes_a_waiting_relay() {
    let env = mysql_env(Retention::Delete).await;
    let o = my(&env);
    let waker = o.waker();
    let started = std::time::Instant::now();
    let ((), ()) = tokio::join!(o.wait_for_work(Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waker.wake();
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
}

/// Purging delivered messages while a batch is being settled neither waits
/// for the batch nor deadlocks with it (a ranged DELETE did: the settling
/// batch lost its outcomes and was sent again).
#[tokio::test]
async fn purge_beside_a_settling_batch_does_not_deadlock() {
    let env = mysql_env(Retention::Keep(Duration::from_secs(3600))).await;
    env.enqueue(&[Message::event("t", "old")]).await;
    env.round(&filter(OrderPolicy::Unordered), |_| Outcome::Delivered)
        .await;
    env.enqueue(&[Message::event("t", "held")]).await;
    let held = my(&env)
        .claim(&filter(OrderPolicy::Unordered))
        .await
        .unwrap();
    assert_eq!(held.messages().len(), 1);
    let settle = async {
        // Let the purge reach the rows first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        held.settle(&[Outcome::Delivered]).await
    };
    let (purged, settled) = tokio::join!(my(&env).purge_delivered(Duration::ZERO), settle);
    settled.expect("the batch is settled");
    assert_eq!(purged.expect("the purge succeeds"), 1, "the old message");
    let delivered = env
        .scalar("SELECT COUNT(*) FROM ferry_outbox WHERE status = 'delivered'")
        .await;
    assert_eq!(delivered, 1, "the held message, delivered after the purge");
}
