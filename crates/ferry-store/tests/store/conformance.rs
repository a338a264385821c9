use super::*;
use crate::{each_db, each_fresh_db};

each_db!(
    plain_sql_insert_gets_every_default,
    Retention::Delete,
    |env: Env| async move {
        // The exact statement from docs/outbox.md.
        env.exec(r#"INSERT INTO ferry_outbox (topic, message_key, payload) VALUES ('user.signed_up', 'user-42', '{"user_id":42}')"#)
        .await;
        // JSON with escapes must survive too. (MariaDB string literals
        // treat a backslash as an escape: the producer doubles it.)
        if env.db.kind() == DatabaseKind::Mysql {
            env.exec(r#"INSERT INTO ferry_outbox (topic, payload) VALUES ('t', '{"s":"a\\nb \\"q\\" \\u00e9"}')"#).await;
        } else {
            env.exec(r#"INSERT INTO ferry_outbox (topic, payload) VALUES ('t', '{"s":"a\nb \"q\" \u00e9"}')"#).await;
        }
        let got = env.claim_raw(&filter(OrderPolicy::Ordered)).await;
        assert_eq!(got.len(), 2);
        let m = got[0].message.as_ref().unwrap();
        assert_eq!(m.topic, "user.signed_up");
        assert_eq!(m.key.as_deref(), Some("user-42"));
        assert_eq!(&m.payload[..], br#"{"user_id":42}"#);
        assert_eq!(m.kind, ferry_core::Kind::Event);
        assert_eq!(m.content_type, "application/json");
        assert!(m.headers.is_empty());
        assert_eq!(m.id.0.get_version_num(), 7, "default id is a UUIDv7");
        assert!((Utc::now() - m.created_at).num_seconds().abs() < 60);
        let m2 = got[1].message.as_ref().unwrap();
        assert_eq!(&m2.payload[..], br#"{"s":"a\nb \"q\" \u00e9"}"#);
        assert_ne!(m.id, m2.id);
        let millis = |id: &ferry_core::MessageId| {
            let (secs, nanos) = id.0.get_timestamp().expect("a UUIDv7").to_unix();
            u128::from(secs) * 1000 + u128::from(nanos) / 1_000_000
        };
        assert!(millis(&m.id) <= millis(&m2.id), "{} then {}", m.id, m2.id);
        assert_eq!(
            env.scalar(
                "SELECT COUNT(*) FROM ferry_outbox WHERE status = 'pending' AND attempts = 0"
            )
            .await,
            2
        );
    }
);

each_db!(
    migrate_twice_is_a_no_op,
    Retention::Delete,
    |env: Env| async move {
        assert!(env.db.migrate().await.unwrap().is_empty());
        assert_eq!(
            env.scalar("SELECT COUNT(*) FROM ferry_schema_migrations")
                .await,
            6
        );
    }
);

each_db!(
    a_newer_schema_is_refused,
    Retention::Delete,
    |env: Env| async move {
        env.db.check_schema().await.unwrap();
        env.exec("INSERT INTO ferry_schema_migrations (version, name, applied_at) VALUES (99, 'future', 'x')")
            .await;
        let migrated = env.db.migrate().await;
        assert!(
            matches!(
                migrated,
                Err(StoreError::SchemaTooNew {
                    found: 99,
                    known: 6
                })
            ),
            "{migrated:?}"
        );
        let checked = env.db.check_schema().await;
        assert!(
            matches!(
                checked,
                Err(StoreError::SchemaTooNew {
                    found: 99,
                    known: 6
                })
            ),
            "{checked:?}"
        );
    }
);

each_db!(
    an_older_schema_is_refused_until_migrated,
    Retention::Delete,
    |env: Env| async move {
        env.db.check_schema().await.unwrap();
        // As if the database had been migrated by a build that knew
        // migrations 1 to 3 only.
        env.exec("DELETE FROM ferry_schema_migrations WHERE version IN (4, 5, 6)")
            .await;
        let checked = env.db.check_schema().await;
        assert!(
            matches!(
                checked,
                Err(StoreError::SchemaTooOld { found: 3, known: 6 })
            ),
            "{checked:?}"
        );
        let e = checked.unwrap_err();
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "database schema is at version 3, older than this ferry build needs (6): run ferry migrate"
        );
        // Only the newest version counts: with it back, the check passes.
        env.exec("INSERT INTO ferry_schema_migrations (version, name, applied_at) VALUES (6, 'admin', 'x')")
            .await;
        env.db.check_schema().await.unwrap();
    }
);

each_fresh_db!(a_missing_schema_is_reported, |kind| async move {
    let t = FreshDb::create(kind).await;
    let db = Database::connect(t.url()).await.unwrap();
    let checked = db.check_schema().await;
    assert!(
        matches!(checked, Err(StoreError::SchemaMissing)),
        "{checked:?}"
    );
    db.migrate().await.unwrap();
    db.check_schema().await.unwrap();
});

each_fresh_db!(
    concurrent_migrations_apply_each_version_once,
    |kind| async move {
        // Who wins the race varies from run to run: run it a few times.
        for _ in 0..25 {
            let t = FreshDb::create(kind).await;
            let a = Database::connect(t.url()).await.unwrap();
            let b = Database::connect(t.url()).await.unwrap();
            let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
            let mut applied = ra.unwrap();
            applied.extend(rb.unwrap());
            applied.sort_unstable();
            assert_eq!(
                applied,
                [1, 2, 3, 4, 5, 6],
                "each migration reported by the run that applied it"
            );
            a.close().await;
            b.close().await;
        }
    }
);

each_db!(
    rolled_back_transaction_leaves_nothing,
    Retention::Delete,
    |env: Env| async move {
        let m = Message::event("t", "x");
        crate::enqueue_each!(&env.db, [&m], rollback);
        assert!(env
            .claim_raw(&filter(OrderPolicy::Ordered))
            .await
            .is_empty());
    }
);

each_db!(
    rust_api_round_trips_every_field,
    Retention::Delete,
    |env: Env| async move {
        let same = |a: &Message, b: &Message| {
            assert_eq!(a.id, b.id);
            assert_eq!(a.kind, b.kind);
            assert_eq!(a.topic, b.topic);
            assert_eq!(a.key, b.key);
            assert_eq!(a.headers, b.headers);
            assert_eq!(a.content_type, b.content_type);
            assert_eq!(a.payload, b.payload);
            assert!((a.created_at - b.created_at).num_milliseconds().abs() <= 1);
        };
        for single_rows in [true, false] {
            let binary = Message::command("bin", vec![0u8, 159, 146, 150, 255])
                .with_key("k")
                .with_header("traceparent", "00-1")
                .with_content_type("application/octet-stream");
            let text = Message::event("text", r#"{"a":"\\"}"#);
            // Valid UTF-8, but PostgreSQL text cannot hold a NUL.
            let nul = Message::event("nul", "a\0b").with_content_type("text/plain");
            let sent = [binary, text, nul];
            if single_rows {
                env.enqueue_in_tx(&sent).await;
            } else {
                env.enqueue(&sent).await;
            }
            if let Database::Postgres(_) = env.db {
                assert_eq!(
                    env.scalar("SELECT COUNT(*) FROM ferry_outbox WHERE payload IS NULL AND payload_bytes IS NOT NULL")
                        .await,
                    2,
                    "the binary and the NUL payloads are bytes"
                );
            }
            let got = env
                .round(&filter(OrderPolicy::Ordered), |_| Outcome::Delivered)
                .await;
            assert_eq!(got.len(), sent.len(), "single rows: {single_rows}");
            for (got, sent) in got.iter().zip(&sent) {
                same(got, sent);
            }
        }
    }
);

each_db!(
    a_dropped_batch_is_released_as_it_was,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[Message::event("t", "x")]).await;
        let f = filter(OrderPolicy::Ordered);
        // One failed attempt first, so that "unchanged" is not just zero.
        assert_eq!(env.round(&f, |_| retry_in(0)).await.len(), 1);
        let dropped = env.claim_and_drop(&f).await;
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].attempts, 1);
        // PostgreSQL rolls the dropped transaction back in the background.
        let mut again = Vec::new();
        for _ in 0..50 {
            again = env.claim_raw(&f).await;
            if !again.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(again.len(), 1, "claimable again");
        assert_eq!(again[0].seq, dropped[0].seq);
        assert_eq!(again[0].attempts, 1, "no attempt recorded");
    }
);

each_db!(
    delivered_messages_are_deleted,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[Message::event("t", "1"), Message::event("t", "2")])
            .await;
        let sent = env
            .round(&filter(OrderPolicy::Ordered), |_| Outcome::Delivered)
            .await;
        assert_eq!(payloads(&sent), ["1", "2"]);
        assert_eq!(env.scalar("SELECT COUNT(*) FROM ferry_outbox").await, 0);
        assert!(env
            .round(&filter(OrderPolicy::Ordered), |_| Outcome::Delivered)
            .await
            .is_empty());
    }
);

each_db!(
    delivered_messages_are_kept_then_purged,
    Retention::Keep(Duration::from_secs(3600)),
    |env: Env| async move {
        env.enqueue(&[Message::event("t", "1")]).await;
        env.round(&filter(OrderPolicy::Ordered), |_| Outcome::Delivered)
            .await;
        assert_eq!(
        env.scalar("SELECT COUNT(*) FROM ferry_outbox WHERE status = 'delivered' AND delivered_at IS NOT NULL AND attempts = 1").await,
        1
    );
        assert_eq!(env.purge(Duration::from_secs(3600)).await, 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(env.purge(Duration::from_millis(1)).await, 1);
        assert_eq!(env.scalar("SELECT COUNT(*) FROM ferry_outbox").await, 0);
    }
);

each_db!(
    failures_retry_later_then_die_with_their_reason,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[Message::event("t", "a")]).await;
        let f = filter(OrderPolicy::Ordered);
        assert_eq!(env.round(&f, |_| retry_in(300)).await.len(), 1);
        assert!(
            env.round(&f, |_| Outcome::Delivered).await.is_empty(),
            "not due yet"
        );
        let due = env.next_retry_in(None).await.expect("a retry is scheduled");
        assert!(
            due > Duration::ZERO && due <= Duration::from_millis(300),
            "{due:?}"
        );
        assert!(
            env.next_retry_in(Some(&["other".to_owned()]))
                .await
                .is_none(),
            "filtered by topic"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            env.round(&f, |_| dead("http 400 bad request")).await.len(),
            1
        );
        let dead_list = env.db.dead_messages(10).await.unwrap();
        assert_eq!(dead_list.len(), 1);
        assert_eq!(dead_list[0].attempts, 2);
        assert_eq!(
            dead_list[0].last_error.as_deref(),
            Some("http 400 bad request")
        );
        assert!(
            env.round(&f, |_| Outcome::Delivered).await.is_empty(),
            "dead is not claimed"
        );
        assert!(env.next_retry_in(None).await.is_none());
    }
);

each_db!(
    dead_letters_replay_and_discard,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[
            Message::event("t", "a"),
            Message::event("t", "b"),
            Message::event("t", "c"),
        ])
        .await;
        let f = filter(OrderPolicy::Ordered);
        env.round(&f, |_| dead("nope")).await;
        let dead_list = env.db.dead_messages(10).await.unwrap();
        assert_eq!(dead_list.len(), 3);
        // one by sequence number, one by id, then the rest
        assert_eq!(
            env.db
                .replay_dead(Some(&seq_ref(dead_list[0].seq)))
                .await
                .unwrap(),
            1
        );
        let by_id: MessageRef = dead_list[1].message_id.parse().unwrap();
        assert_eq!(env.db.discard_dead(&by_id).await.unwrap(), 1);
        assert!(env.db.discard_dead(&by_id).await.is_err(), "already gone");
        assert!(env.db.replay_dead(Some(&seq_ref(999_999))).await.is_err());
        let again = env.round(&f, |_| Outcome::Delivered).await;
        assert_eq!(payloads(&again), ["a"]);
        assert_eq!(env.db.replay_dead(None).await.unwrap(), 1);
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["c"]
        );
        let stats = env.db.outbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.dead), (0, 0));
    }
);

each_db!(
    ordered_mode_holds_back_only_the_failing_key,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[
            Message::event("t", "a1").with_key("a"),
            Message::event("t", "b1").with_key("b"),
            Message::event("t", "a2").with_key("a"),
            Message::event("t", "b2").with_key("b"),
        ])
        .await;
        let f = filter(OrderPolicy::Ordered);
        // a1 fails; the relay releases a2 behind it (not attempted).
        let first = env
            .round(&f, |m| match &m.payload[..] {
                b"a1" => retry_in(400),
                b"a2" => Outcome::Released,
                _ => Outcome::Delivered,
            })
            .await;
        assert_eq!(payloads(&first), ["a1", "b1", "a2", "b2"]);
        env.enqueue(&[
            Message::event("t", "b3").with_key("b"),
            Message::event("t", "n"),
        ])
        .await;
        let second = env.round(&f, |_| Outcome::Delivered).await;
        assert_eq!(
            payloads(&second),
            ["b3", "n"],
            "key a is held back, others flow"
        );
        tokio::time::sleep(Duration::from_millis(450)).await;
        // a1 is due again: it goes first, a2 still waits behind it.
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["a1"]
        );
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["a2"]
        );
    }
);

each_db!(
    unordered_mode_lets_later_messages_pass_a_retry,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[
            Message::event("t", "a1").with_key("a"),
            Message::event("t", "a2").with_key("a"),
        ])
        .await;
        let f = filter(OrderPolicy::Unordered);
        let first = env
            .round(&f, |m| {
                if &m.payload[..] == b"a1" {
                    retry_in(60_000)
                } else {
                    Outcome::Released
                }
            })
            .await;
        assert_eq!(payloads(&first), ["a1", "a2"]);
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["a2"]
        );
    }
);

each_db!(
    topic_filter_claims_only_its_topics,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[
            Message::event("x", "1"),
            Message::event("y", "2"),
            Message::event("z", "3"),
        ])
        .await;
        let f = ClaimFilter {
            limit: 10,
            topics: Some(vec!["x".into(), "z".into()]),
            ..filter(OrderPolicy::Ordered)
        };
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["1", "3"]
        );
        assert_eq!(env.scalar("SELECT COUNT(*) FROM ferry_outbox").await, 1);
    }
);

each_db!(
    malformed_rows_come_back_as_errors_not_panics,
    Retention::Delete,
    |env: Env| async move {
        env.exec(
            r#"INSERT INTO ferry_outbox (topic, headers, payload) VALUES ('t', '[1,2]', 'x')"#,
        )
        .await;
        let got = env.claim_raw(&filter(OrderPolicy::Ordered)).await;
        assert_eq!(got.len(), 1);
        assert!(got[0].message.as_ref().unwrap_err().contains("json object"));
    }
);

each_db!(
    batch_limit_is_respected_in_sequence_order,
    Retention::Delete,
    |env: Env| async move {
        let ms: Vec<Message> = (0..25)
            .map(|i| Message::event("t", i.to_string()).with_key(format!("k{}", i % 3)))
            .collect();
        env.enqueue(&ms).await;
        let f = ClaimFilter {
            limit: 10,
            ..filter(OrderPolicy::Ordered)
        };
        let mut all = Vec::new();
        loop {
            let got = env.round(&f, |_| Outcome::Delivered).await;
            if got.is_empty() {
                break;
            }
            assert!(got.len() <= 10);
            all.extend(got);
        }
        let expected: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        assert_eq!(payloads(&all), expected);
    }
);

each_db!(
    one_per_key_claims_the_first_due_message_of_each_key,
    Retention::Delete,
    |env: Env| async move {
        env.enqueue(&[
            Message::event("t", "a0").with_key("a"),
            Message::event("t", "a1").with_key("a"),
            Message::event("t", "n0"),
            Message::event("t", "b0").with_key("b"),
            Message::event("t", "b1").with_key("b"),
            Message::event("t", "n1"),
        ])
        .await;
        let f = ClaimFilter {
            one_per_key: true,
            ..filter(OrderPolicy::Unordered)
        };
        // a0 fails and waits: in unordered mode a1 is now the first due
        // message of key a.
        let first = env
            .round(&f, |m| {
                if &m.payload[..] == b"a0" {
                    retry_in(60_000)
                } else {
                    Outcome::Released
                }
            })
            .await;
        assert_eq!(payloads(&first), ["a0", "n0", "b0", "n1"]);
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["a1", "n0", "b0", "n1"]
        );
        assert_eq!(
            payloads(&env.round(&f, |_| Outcome::Delivered).await),
            ["b1"]
        );
    }
);
