//! The inbox and consumer dead letters, on every database.

use std::sync::atomic::{AtomicBool, Ordering};

use ferry_core::MessageId;
use ferry_store::inbox::{InboxDatabase, Recorded};
use ferry_store::DeadLetter;
use sqlx::Pool;

use super::*;
use crate::each_db;

/// Runs a generic inbox check with the pool of whichever database `env` has.
/// (`$f` is expanded once per arm, so a closure works for every pool type.)
macro_rules! with_pool {
    ($env:expr, $f:expr) => {{
        // The whole env, not only `env.db`: an `async move` block that
        // named only the field would let the test database go.
        let env: &Env = &$env;
        $crate::on_pool!(&env.db, |p| ($f)(p).await)
    }};
}

async fn record_committed<DB: InboxDatabase>(
    pool: &Pool<DB>,
    consumer: &str,
    id: MessageId,
) -> Recorded {
    let mut tx = pool.begin().await.unwrap();
    let got = DB::record(&mut tx, consumer, id).await.unwrap();
    tx.commit().await.unwrap();
    got
}

async fn first_then_duplicate<DB: InboxDatabase>(pool: &Pool<DB>) {
    let (a, b) = (MessageId::new(), MessageId::new());
    assert_eq!(record_committed(pool, "billing", a).await, Recorded::First);
    assert_eq!(
        record_committed(pool, "billing", a).await,
        Recorded::Duplicate
    );
    assert_eq!(
        record_committed(pool, "shipping", a).await,
        Recorded::First,
        "each consumer has its own inbox"
    );
    // A duplicate leaves the caller's transaction usable (on PostgreSQL a
    // failed INSERT would abort it): record another id after it and commit.
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        DB::record(&mut tx, "billing", a).await.unwrap(),
        Recorded::Duplicate
    );
    assert_eq!(
        DB::record(&mut tx, "billing", b).await.unwrap(),
        Recorded::First
    );
    tx.commit().await.unwrap();
    assert_eq!(
        record_committed(pool, "billing", b).await,
        Recorded::Duplicate,
        "committed after the duplicate"
    );
}

each_db!(
    inbox_tells_a_redelivery_from_a_first_delivery,
    Retention::Delete,
    |env: Env| async move {
        with_pool!(env, first_then_duplicate);
        assert_eq!(env.scalar("SELECT COUNT(*) FROM ferry_inbox").await, 3);
    }
);

async fn rolled_back<DB: InboxDatabase>(pool: &Pool<DB>) {
    let id = MessageId::new();
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        DB::record(&mut tx, "billing", id).await.unwrap(),
        Recorded::First
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        record_committed(pool, "billing", id).await,
        Recorded::First,
        "the rolled-back record left nothing"
    );
}

each_db!(
    a_rolled_back_record_leaves_no_row,
    Retention::Delete,
    |env: Env| async move {
        with_pool!(env, rolled_back);
    }
);

/// The same through the generic trait.
async fn prune_generic<DB: InboxDatabase>(pool: &Pool<DB>) {
    let id = MessageId::new();
    record_committed(pool, "generic", id).await;
    assert_eq!(
        DB::prune(pool, Duration::from_secs(3600)).await.unwrap(),
        0,
        "nothing that old"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(DB::prune(pool, Duration::ZERO).await.unwrap() >= 1);
    assert_eq!(
        record_committed(pool, "generic", id).await,
        Recorded::First,
        "a pruned id counts as new"
    );
}

each_db!(
    pruning_forgets_old_rows_only,
    Retention::Delete,
    |env: Env| async move {
        let (old, new) = (MessageId::new(), MessageId::new());
        with_pool!(env, (|p| record_committed(p, "billing", old)));
        env.age_inbox_two_hours().await;
        with_pool!(env, (|p| record_committed(p, "billing", new)));
        assert_eq!(
            env.db
                .prune_inbox(Duration::from_secs(3 * 3600))
                .await
                .unwrap(),
            0,
            "nothing is three hours old"
        );
        assert_eq!(
            env.db.prune_inbox(Duration::from_secs(3600)).await.unwrap(),
            1,
            "only the row two hours old goes"
        );
        assert_eq!(env.scalar("SELECT COUNT(*) FROM ferry_inbox").await, 1);
        assert_eq!(
            with_pool!(env, (|p| record_committed(p, "billing", new))),
            Recorded::Duplicate,
            "the recent row is kept"
        );
        assert_eq!(
            with_pool!(env, (|p| record_committed(p, "billing", old))),
            Recorded::First,
            "a pruned id counts as new"
        );
        with_pool!(env, prune_generic);
    }
);

/// Two transactions record the same id at once: the second waits for the
/// first, then sees what the first did.
async fn concurrent_records<DB: InboxDatabase>(pool: &Pool<DB>, first_commits: bool) {
    let id = MessageId::new();
    let mut first = pool.begin().await.unwrap();
    assert_eq!(
        DB::record(&mut first, "billing", id).await.unwrap(),
        Recorded::First
    );
    let done = AtomicBool::new(false);
    let second = async {
        let mut tx = pool.begin().await.unwrap();
        let got = DB::record(&mut tx, "billing", id).await.unwrap();
        done.store(true, Ordering::SeqCst);
        tx.commit().await.unwrap();
        got
    };
    let settle_first = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !done.load(Ordering::SeqCst),
            "the second record waits for the first transaction"
        );
        if first_commits {
            first.commit().await.unwrap();
        } else {
            first.rollback().await.unwrap();
        }
    };
    let (got, ()) = tokio::join!(second, settle_first);
    let expected = if first_commits {
        Recorded::Duplicate
    } else {
        Recorded::First
    };
    assert_eq!(got, expected, "first commits: {first_commits}");
}

#[tokio::test]
async fn concurrent_records_of_one_id_postgres() {
    let env = pg_env(Retention::Delete).await;
    let Database::Postgres(p) = &env.db else {
        unreachable!()
    };
    concurrent_records(p, true).await;
    concurrent_records(p, false).await;
}

#[tokio::test]
async fn concurrent_records_of_one_id_mysql() {
    let env = mysql_env(Retention::Delete).await;
    let Database::Mysql(p) = &env.db else {
        unreachable!()
    };
    concurrent_records(p, true).await;
    concurrent_records(p, false).await;
}

fn assert_same(got: &DeadLetter, sent: &DeadLetter) {
    let close =
        |a: chrono::DateTime<Utc>, b: chrono::DateTime<Utc>| (a - b).num_milliseconds().abs() <= 1;
    assert_eq!(got.id, sent.id);
    assert_eq!(got.consumer, sent.consumer);
    assert_eq!(got.error, sent.error);
    assert_eq!(got.attempts, sent.attempts);
    assert!(close(got.dead_at, sent.dead_at));
    let (g, s) = (&got.message, &sent.message);
    assert_eq!(
        (
            &g.id,
            g.kind,
            &g.topic,
            &g.key,
            &g.headers,
            &g.content_type,
            &g.payload
        ),
        (
            &s.id,
            s.kind,
            &s.topic,
            &s.key,
            &s.headers,
            &s.content_type,
            &s.payload
        )
    );
    assert!(close(g.created_at, s.created_at));
}

each_db!(
    dead_letters_round_trip,
    Retention::Delete,
    |env: Env| async move {
        let binary = Message::command("bill", vec![0u8, 159, 146, 150, 255])
            .with_key("order-7")
            .with_header("traceparent", "00-1")
            .with_content_type("application/octet-stream");
        let a1 = DeadLetter::new("billing", binary, "handler: card declined", 5);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b1 = DeadLetter::new("shipping", Message::event("t", r#"{"a":1}"#), "timeout", 3);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let a2 = DeadLetter::new("billing", Message::event("t", "a\0b"), "refused", 1);
        for d in [&a1, &b1, &a2] {
            env.db.record_dead_letter(d).await.unwrap();
        }
        env.db.record_dead_letter(&a1).await.unwrap();
        assert_eq!(
            env.scalar("SELECT COUNT(*) FROM ferry_dead_letters").await,
            3,
            "recording one again stores it once"
        );
        let all = env.db.dead_letters(None, 10).await.unwrap();
        assert_eq!(all.len(), 3);
        for (got, sent) in all.iter().zip([&a1, &b1, &a2]) {
            assert_same(got, sent);
        }
        let billing = env.db.dead_letters(Some("billing"), 10).await.unwrap();
        assert_eq!(
            billing.iter().map(|d| d.id).collect::<Vec<_>>(),
            [a1.id, a2.id],
            "one consumer's, oldest first"
        );
        assert_eq!(
            env.db.dead_letters(Some("billing"), 1).await.unwrap().len(),
            1
        );
        assert!(env
            .db
            .dead_letters(Some("nobody"), 10)
            .await
            .unwrap()
            .is_empty());
        let read = env.db.dead_letter(a1.id).await.unwrap().expect("read");
        assert_same(&read, &a1);
        let taken = env
            .db
            .take_dead_letter(a1.id)
            .await
            .unwrap()
            .expect("taken");
        assert_same(&taken, &a1);
        assert!(
            env.db.take_dead_letter(a1.id).await.unwrap().is_none(),
            "gone"
        );
        assert!(env.db.dead_letter(a1.id).await.unwrap().is_none());
        assert!(env.db.delete_dead_letter(b1.id).await.unwrap());
        assert!(!env.db.delete_dead_letter(b1.id).await.unwrap());
        let left = env.db.dead_letters(None, 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_same(&left[0], &a2);
    }
);
