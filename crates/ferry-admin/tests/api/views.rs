//! Looking: the overview, the outbox browser and the dead-letter view.

use ferry_core::Message;
use serde_json::{json, Value};

use crate::support::{env, CONSUMER, FORWARDER, PIPELINE};

fn seqs(page: &Value) -> Vec<i64> {
    page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_outbox_by_status_topic_key_id_and_time_newest_first_in_pages() {
    let env = env().await;
    let before_all = chrono::Utc::now();
    let messages: Vec<Message> = (0..25)
        .map(|i| {
            Message::event(
                if i % 2 == 0 { "orders" } else { "refunds" },
                format!("body {i}"),
            )
            .with_key(format!("k{}", i % 3))
            .with_header("tenant", "acme")
        })
        .collect();
    env.db.enqueue(&messages).await.unwrap();
    let all = env.get("/v1/admin/outbox?limit=1000").await;
    assert_eq!(seqs(&all).len(), 25);
    assert!(seqs(&all).windows(2).all(|w| w[0] > w[1]), "newest first");
    assert!(all["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "pending"));

    // Pages of 10 by `before`, together the whole list, once each.
    let mut paged = Vec::new();
    let mut path = "/v1/admin/outbox?limit=10".to_owned();
    loop {
        let page = env.get(&path).await;
        paged.extend(seqs(&page));
        match page["next_before"].as_i64() {
            Some(b) => path = format!("/v1/admin/outbox?limit=10&before={b}"),
            None => break,
        }
    }
    assert_eq!(paged, seqs(&all));

    let orders = env.get("/v1/admin/outbox?topic=orders&limit=1000").await;
    assert_eq!(seqs(&orders).len(), 13);
    let k0 = env.get("/v1/admin/outbox?topic=orders&key=k0").await;
    assert!(k0["rows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["key"] == "k0" && r["topic"] == "orders"));
    assert_eq!(seqs(&k0).len(), 5, "{k0}");
    let id = messages[7].id.0;
    let one = env.get(&format!("/v1/admin/outbox?id={id}")).await;
    assert_eq!(one["rows"][0]["message_id"], id.to_string());
    assert_eq!(seqs(&one).len(), 1);
    let from = before_all.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_eq!(
        seqs(
            &env.get(&format!("/v1/admin/outbox?created_from={from}&limit=100"))
                .await
        )
        .len(),
        25
    );
    assert!(seqs(
        &env.get(&format!("/v1/admin/outbox?created_to={from}"))
            .await
    )
    .is_empty());
    assert!(seqs(&env.get("/v1/admin/outbox?status=dead").await).is_empty());
    assert!(seqs(&env.get("/v1/admin/outbox?status=delivered").await).is_empty());

    // Detail by sequence number and by id: headers, payload, attempts.
    let seq = one["rows"][0]["seq"].as_i64().unwrap();
    for which in [seq.to_string(), id.to_string()] {
        let m = env.get(&format!("/v1/admin/outbox/{which}")).await;
        assert_eq!(m["seq"], seq);
        assert_eq!(m["message_id"], id.to_string());
        assert_eq!(m["headers"]["tenant"], "acme");
        assert_eq!(m["payload"], json!({"encoding": "utf8", "data": "body 7"}));
        assert_eq!(m["attempts"], 0);
    }

    // The second store is another database.
    assert!(seqs(&env.get("/v1/admin/outbox?store=ledger").await).is_empty());
    env.ledger
        .enqueue(&[Message::event("ledger", "x")])
        .await
        .unwrap();
    assert_eq!(
        seqs(&env.get("/v1/admin/outbox?store=ledger").await).len(),
        1
    );
}

#[tokio::test]
async fn one_dead_letter_view_over_every_kind_with_causes_counts_and_details() {
    let env = env().await;
    let dead = env.dead_outbox("orders", 4).await;
    let letter = env
        .dead_letter(CONSUMER, "handler failed: connection refused")
        .await;
    env.dead_letter(CONSUMER, "handler failed: connection refused")
        .await;
    let event = env.event_failure(FORWARDER, "sink refused: 422").await;
    let task = env
        .task_failure("send-invoice", "smtp timeout after 30s")
        .await;

    let all = env.get("/v1/admin/dead?limit=1000").await;
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 8, "{all}");
    let kinds: std::collections::BTreeMap<String, usize> =
        items.iter().fold(Default::default(), |mut m, i| {
            *m.entry(i["kind"].as_str().unwrap().to_owned()).or_default() += 1;
            m
        });
    assert_eq!(
        kinds,
        [
            ("consumer".into(), 2),
            ("forwarder".into(), 1),
            ("outbox".into(), 4),
            ("task".into(), 1)
        ]
        .into()
    );
    // As times: RFC 3339 text drops trailing zeros of the fraction
    // (`.139Z` is before `.139009Z` but sorts after it as text).
    let times: Vec<chrono::DateTime<chrono::Utc>> = items
        .iter()
        .map(|i| i["failed_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // Paging with `after` covers the same items once.
    let mut paged = Vec::new();
    let mut path = "/v1/admin/dead?limit=3".to_owned();
    loop {
        let page = env.get(&path).await;
        paged.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].clone()),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/admin/dead?limit=3&after={}", urlencode(next)),
            None => break,
        }
    }
    assert_eq!(
        paged,
        items.iter().map(|i| i["id"].clone()).collect::<Vec<_>>()
    );

    // Filters: kind (repeated or a comma list), name.
    let count = |q: &str| {
        let env = &env;
        let q = q.to_owned();
        async move {
            env.get(&format!("/v1/admin/dead/count{q}")).await["count"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(count("").await, 8);
    assert_eq!(count("?kind=outbox").await, 4);
    assert_eq!(count("?kind=consumer&kind=task").await, 3);
    assert_eq!(count("?kind=consumer,forwarder").await, 3);
    assert_eq!(count(&format!("?name={CONSUMER}")).await, 2);
    assert_eq!(count("?name=orders&kind=outbox").await, 4);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        count(&format!("?failed_from={}", urlencode(&future))).await,
        0
    );
    assert_eq!(
        count(&format!("?failed_to={}", urlencode(&future))).await,
        8
    );

    // Grouped by cause: the two consumer letters are one group.
    let causes = env.get("/v1/admin/dead/causes").await;
    let groups = causes.as_array().unwrap();
    let consumer = groups.iter().find(|g| g["kind"] == "consumer").unwrap();
    assert_eq!(consumer["count"], 2);
    assert_eq!(consumer["name"], CONSUMER);
    let cause = consumer["cause"].as_str().unwrap().to_owned();
    assert_eq!(count(&format!("?cause={}", urlencode(&cause))).await, 2);
    let outbox = groups.iter().find(|g| g["kind"] == "outbox").unwrap();
    assert_eq!(outbox["count"], 4);
    assert_eq!(
        groups
            .iter()
            .map(|g| g["count"].as_u64().unwrap())
            .sum::<u64>(),
        8
    );
    let only_tasks = env.get("/v1/admin/dead/causes?kind=task").await;
    assert_eq!(only_tasks.as_array().unwrap().len(), 1);

    // Details of each kind.
    let seq = env.get("/v1/admin/outbox?status=dead&limit=1").await["rows"][0]["seq"]
        .as_i64()
        .unwrap();
    let d = env.get(&format!("/v1/admin/dead/outbox:{seq}")).await;
    assert_eq!(d["kind"], "outbox");
    assert!(d["payload"]["data"]
        .as_str()
        .unwrap()
        .starts_with("orders #"));
    assert!(d["error"].as_str().unwrap().contains("400"), "{d}");
    assert!(dead.iter().any(|m| d["message_id"] == m.id.0.to_string()));
    let d = env
        .get(&format!("/v1/admin/dead/consumer:{}", letter.id))
        .await;
    assert_eq!(d["name"], CONSUMER);
    assert_eq!(d["payload"]["data"], format!("payment for {CONSUMER}"));
    assert_eq!(d["attempts"], 5);
    let d = env
        .get(&format!(
            "/v1/admin/dead/forwarder:{FORWARDER}:{}",
            event.seq
        ))
        .await;
    assert_eq!(d["error"], "sink refused: 422");
    assert_eq!(d["payload"]["data"], "{\"order\":7}");
    let d = env.get(&format!("/v1/admin/dead/task:{}", task.id)).await;
    assert_eq!(d["input"], json!({"invoice": 12}));
    assert_eq!(d["name"], "send-invoice");
}

#[tokio::test]
async fn the_overview_has_rates_samples_and_pause_flags() {
    let env =
        crate::support::env_with(|c| c.sample_every = std::time::Duration::from_millis(50)).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sampler = env.admin.spawn_sampler(shutdown.clone());
    let relay = env.start_relay().await;
    let messages: Vec<Message> = (0..200)
        .map(|i| Message::event("orders", format!("{i}")))
        .collect();
    env.db.enqueue(&messages).await.unwrap();
    crate::support::wait_for("delivery", std::time::Duration::from_secs(20), || async {
        env.receiver.applied().len() == 200
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let o = env.get("/v1/admin/overview").await;
    assert_eq!(o["stores"], json!(["orders", "ledger"]));
    let relay_view = o["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == PIPELINE)
        .unwrap();
    assert_eq!(relay_view["kind"], "relay");
    assert_eq!(relay_view["done_total"], 200);
    assert_eq!(relay_view["paused"], false);
    let samples = relay_view["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{relay_view}");
    assert!(
        samples
            .iter()
            .any(|s| s["rate"].as_f64().unwrap_or(0.0) > 0.0),
        "{relay_view}"
    );
    let consumer = o["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == CONSUMER)
        .unwrap();
    assert!(
        consumer.get("paused").is_none(),
        "only relays have a pause flag"
    );
    shutdown.cancel();
    sampler.await.unwrap();
    relay.stop().await.unwrap();
}

pub fn urlencode(s: &str) -> String {
    url_escape(s)
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
