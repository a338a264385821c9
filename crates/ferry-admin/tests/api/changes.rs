//! Changing one item, pausing, and the audit log.

use std::time::Duration;

use serde_json::json;

use ferry_store::DatabaseKind;

use crate::support::{env, env_on, wait_for, CONSUMER, FORWARDER, PIPELINE};

#[tokio::test]
async fn replay_one_of_each_kind_reaches_the_receiver_and_is_audited() {
    replay_one_of_each_kind(DatabaseKind::Postgres).await;
}

#[tokio::test]
async fn replay_one_of_each_kind_on_mariadb() {
    replay_one_of_each_kind(DatabaseKind::Mysql).await;
}

#[tokio::test]
async fn replay_one_of_each_kind_on_sqlite() {
    replay_one_of_each_kind(DatabaseKind::Sqlite).await;
}

async fn replay_one_of_each_kind(kind: DatabaseKind) {
    let env = env_on(kind, |_| {}).await;
    let dead = env.dead_outbox("orders", 2).await;
    let letter = env.dead_letter(CONSUMER, "handler failed: timeout").await;
    let stranger = env.dead_letter("not-ours", "handler failed: timeout").await;
    let event = env.event_failure(FORWARDER, "sink refused: 422").await;
    let task = env.task_failure("send-invoice", "smtp timeout").await;
    let relay = env.start_relay().await;

    // Outbox: pending again, the relay delivers it.
    let row = env.get("/v1/admin/outbox?status=dead&limit=1").await["rows"][0].clone();
    let seq = row["seq"].as_i64().unwrap();
    let replayed = row["message_id"].as_str().unwrap().to_owned();
    let a = env
        .post(&format!("/v1/admin/dead/outbox:{seq}/replay"), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"id": format!("outbox:{seq}"), "to": "outbox"})
    );
    assert!(dead.iter().any(|m| m.id.0.to_string() == replayed));
    wait_for(
        "the relay to deliver the replayed message",
        Duration::from_secs(10),
        || async { env.receiver.applied().contains(&replayed) },
    )
    .await;
    let again = env
        .post(&format!("/v1/admin/dead/outbox:{seq}/replay"), None)
        .await;
    assert_eq!(again.status, 404, "no longer dead: {}", again.body);

    // Consumer letter: republished (the receiver gets it), then gone.
    let a = env
        .post(
            &format!("/v1/admin/dead/consumer:{}/replay", letter.id),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["to"], "broker");
    assert!(env
        .receiver
        .applied()
        .contains(&letter.message.id.0.to_string()));
    assert!(env.db.dead_letter(letter.id).await.unwrap().is_none());

    // A letter of a consumer this process does not run: 409, kept.
    let a = env
        .post(
            &format!("/v1/admin/dead/consumer:{}/replay", stranger.id),
            None,
        )
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("not-ours"),
        "{}",
        a.body
    );
    assert!(env.db.dead_letter(stranger.id).await.unwrap().is_some());

    // The receiver refusing: 502 with its answer, the letter kept.
    env.receiver.refuse(true);
    let refused = env.dead_letter(CONSUMER, "handler failed: timeout").await;
    let a = env
        .post(
            &format!("/v1/admin/dead/consumer:{}/replay", refused.id),
            None,
        )
        .await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(env.db.dead_letter(refused.id).await.unwrap().is_some());
    env.receiver.refuse(false);

    // Forwarder failure: the event delivered with its id, then discarded.
    let a = env
        .post(
            &format!("/v1/admin/dead/forwarder:{FORWARDER}:{}/replay", event.seq),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["to"], "sink");
    assert_eq!(
        env.receiver.body_of(&event.id.to_string()).as_deref(),
        Some("{\"order\":7}")
    );
    assert!(env
        .db
        .event_failures(Some(FORWARDER))
        .await
        .unwrap()
        .is_empty());

    // Task failure: refused with the reason, kept.
    let a = env
        .post(&format!("/v1/admin/dead/task:{}/replay", task.id), None)
        .await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.body["error"].as_str().unwrap().contains("rerun"),
        "{}",
        a.body
    );
    env.get(&format!("/v1/admin/dead/task:{}", task.id)).await;

    // Discard works for every kind.
    let seq2 = env.get("/v1/admin/outbox?status=dead&limit=1").await["rows"][0]["seq"]
        .as_i64()
        .unwrap();
    for id in [
        format!("outbox:{seq2}"),
        format!("consumer:{}", stranger.id),
        format!("task:{}", task.id),
    ] {
        let a = env
            .post(&format!("/v1/admin/dead/{id}/discard"), None)
            .await;
        assert_eq!(a.status, 200, "{id}: {}", a.body);
        assert_eq!(a.body["id"], id);
        let a = env
            .call(
                "get",
                &format!("/v1/admin/dead/{id}"),
                Some(crate::support::ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(a.status, 404, "{id} gone");
    }
    let event2 = env.event_failure(FORWARDER, "sink refused: 422").await;
    let a = env
        .post(
            &format!(
                "/v1/admin/dead/forwarder:{FORWARDER}:{}/discard",
                event2.seq
            ),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    // The audit log: every change that happened, by alice, newest first;
    // the refused ones are not there.
    let audit = env.audit().await;
    let seen: Vec<(String, String, i64)> = audit
        .iter()
        .map(|e| {
            assert_eq!(e["actor"], "alice");
            assert!(e["at"].is_string());
            (
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
                e["count"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, i64)> = vec![
        (
            "dead.discard".into(),
            format!("forwarder:{FORWARDER}:{}", event2.seq),
            1,
        ),
        ("dead.discard".into(), format!("task:{}", task.id), 1),
        (
            "dead.discard".into(),
            format!("consumer:{}", stranger.id),
            1,
        ),
        ("dead.discard".into(), format!("outbox:{seq2}"), 1),
        (
            "dead.replay".into(),
            format!("forwarder:{FORWARDER}:{}", event.seq),
            1,
        ),
        ("dead.replay".into(), format!("consumer:{}", letter.id), 1),
        ("dead.replay".into(), format!("outbox:{seq}"), 1),
    ];
    assert_eq!(seen, expected);
    // Paging the audit log with `before`.
    let id = audit[2]["id"].as_i64().unwrap();
    let older = env
        .get(&format!("/v1/admin/audit?before={id}&limit=2"))
        .await;
    assert_eq!(older["entries"].as_array().unwrap().len(), 2);
    assert_eq!(older["entries"][0]["id"], audit[3]["id"]);
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn pause_and_resume_set_the_flag_the_overview_shows_and_are_audited() {
    let env = env().await;
    let paused = |o: &serde_json::Value| {
        o["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == PIPELINE)
            .unwrap()["paused"]
            .clone()
    };
    assert_eq!(paused(&env.get("/v1/admin/overview").await), false);
    let a = env
        .post(&format!("/v1/admin/pipelines/{PIPELINE}/pause"), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, json!({"pipeline": PIPELINE, "paused": true}));
    assert_eq!(paused(&env.get("/v1/admin/overview").await), true);
    let flags = env.db.paused().await.unwrap();
    assert_eq!(flags.len(), 1);
    assert_eq!(
        (flags[0].name.as_str(), flags[0].by.as_str()),
        (PIPELINE, "alice")
    );
    let a = env
        .post(&format!("/v1/admin/pipelines/{PIPELINE}/resume"), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["paused"], false);
    assert_eq!(paused(&env.get("/v1/admin/overview").await), false);
    assert!(env.db.paused().await.unwrap().is_empty());
    let actions: Vec<_> = env
        .audit()
        .await
        .iter()
        .map(|e| (e["action"].clone(), e["target"].clone(), e["actor"].clone()))
        .collect();
    assert_eq!(
        actions,
        [
            (json!("pipeline.resume"), json!(PIPELINE), json!("alice")),
            (json!("pipeline.pause"), json!(PIPELINE), json!("alice")),
        ]
    );
    // The ledger store's audit log is another one.
    let ledger = env.get("/v1/admin/audit?store=ledger").await;
    assert_eq!(ledger["entries"], json!([]));
}
