//! The two dead-letter destinations: a dead-letter topic through a sink,
//! and Ferry's dead-letter table on each database.

use std::sync::Arc;

use ferry_consumer::memory::MemoryBroker;
use ferry_consumer::middleware::dead_letter::{
    ATTEMPTS_HEADER, CONSUMER_HEADER, ERROR_HEADER, TOPIC_HEADER,
};
use ferry_consumer::middleware::DeadLetterLayer;
use ferry_consumer::{
    handler_fn, DeadLetters, HandlerError, HandlerExt, Router, RouterConfig, SinkDeadLetters,
    Stats, StoreDeadLetters,
};
use ferry_core::{Message, Sink, Subscriber, Subscription};
use ferry_testkit::{MysqlTestDb, PgTestDb, SqliteTestDb};
use futures::StreamExt;

use crate::support::{fail_if, topic, wait_for, Graveyard, Running};

fn poison() -> impl ferry_consumer::Handler {
    handler_fn(|m: Message, _| async move {
        fail_if(
            m.payload == "poison",
            HandlerError::permanent("bad payload\nline two"),
        )
    })
}

/// A router with default settings burying in `dead_letters`, `poison()`
/// as `group` of `t`, started and subscribed.
async fn start_poison(
    broker: &MemoryBroker,
    t: &str,
    group: &str,
    dead_letters: Arc<dyn DeadLetters>,
) -> (Running, Stats) {
    let router = Router::builder()
        .subscriber(Arc::new(broker.clone()))
        .dead_letters(dead_letters)
        .config(&RouterConfig::default())
        .event(t, group, poison())
        .build()
        .unwrap();
    let stats = router.stats();
    let running = Running::start(router);
    wait_for("subscribed", || stats.get(t, group).unwrap().subscribed).await;
    (running, stats)
}

#[tokio::test]
async fn sink_dead_letters_go_to_the_dead_topic_with_why_in_headers() {
    let broker = MemoryBroker::new();
    let t = topic("orders");
    let mut dead = broker
        .subscribe(&Subscription::new(format!("{t}.dead"), "ops"))
        .await
        .unwrap();
    let dead_letters = SinkDeadLetters::new(Arc::new(broker.clone()));
    let (running, stats) = start_poison(&broker, &t, "billing", Arc::new(dead_letters)).await;
    let m = Message::event(&t, "poison")
        .with_key("order-7")
        .with_header("x-trace", "1");
    for r in broker.deliver(std::slice::from_ref(&m)).await {
        r.unwrap();
    }
    let received = tokio::time::timeout(std::time::Duration::from_secs(10), dead.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let letter = received.message.as_ref().unwrap().clone();
    received.ack().await.unwrap();
    running.shut_down().await;
    assert_eq!(letter.id, m.id);
    assert_eq!(letter.topic, format!("{t}.dead"));
    assert_eq!(letter.key.as_deref(), Some("order-7"));
    assert_eq!(letter.payload, "poison");
    assert_eq!(letter.headers["x-trace"], "1");
    assert_eq!(letter.headers[ERROR_HEADER], "bad payload line two");
    assert_eq!(letter.headers[ATTEMPTS_HEADER], "1");
    assert_eq!(letter.headers[CONSUMER_HEADER], "billing");
    assert_eq!(letter.headers[TOPIC_HEADER], t);
    assert_eq!(stats.get(&t, "billing").unwrap().dead_lettered, 1);
}

#[tokio::test]
async fn a_dead_letter_layer_sends_one_route_elsewhere() {
    let broker = MemoryBroker::new();
    let t = topic("payments");
    let router_graveyard = Graveyard::new();
    let route_graveyard = Graveyard::new();
    let router = Router::builder()
        .subscriber(Arc::new(broker.clone()))
        .dead_letters(router_graveyard.clone())
        .event(
            &t,
            "g",
            poison().with(DeadLetterLayer::new(route_graveyard.clone())),
        )
        .build()
        .unwrap();
    let stats = router.stats();
    let running = Running::start(router);
    wait_for("subscribed", || stats.get(&t, "g").unwrap().subscribed).await;
    broker.deliver(&[Message::event(&t, "poison")]).await;
    wait_for("the dead letter", || route_graveyard.letters().len() == 1).await;
    running.shut_down().await;
    assert!(router_graveyard.letters().is_empty());
    assert_eq!(stats.get(&t, "g").unwrap().dead_lettered, 1);
}

async fn recorded_in_the_table(url: &str) {
    let db = ferry_store::Database::connect(url).await.unwrap();
    db.migrate().await.unwrap();
    let store = StoreDeadLetters::new(db.clone());
    let m = Message::event("orders", "poison").with_key("k");
    let letter = ferry_consumer::DeadLetter::new("billing", m.clone(), "bad payload", 4);
    store.record(&letter).await.unwrap();
    let stored = db.dead_letters(Some("billing"), 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].message.id, m.id);
    assert_eq!(stored[0].message.payload, m.payload);
    assert_eq!(stored[0].error, "bad payload");
    assert_eq!(stored[0].attempts, 4);
    db.close().await;
}

#[tokio::test]
async fn store_dead_letters_on_sqlite() {
    let db = SqliteTestDb::create();
    recorded_in_the_table(&db.url).await;
}

#[tokio::test]
async fn store_dead_letters_on_postgres() {
    let db = PgTestDb::create().await;
    recorded_in_the_table(&db.url).await;
}

#[tokio::test]
async fn store_dead_letters_on_mariadb() {
    let db = MysqlTestDb::create().await;
    recorded_in_the_table(&db.url).await;
}

/// The same poison message delivered twice (a redelivery after the record's
/// answer was lost, a producer's re-send) is buried once: the letter's id
/// comes from the consumer and the message id.
#[tokio::test]
async fn a_message_buried_twice_is_one_dead_letter() {
    let db_file = SqliteTestDb::create();
    let db = ferry_store::Database::connect(&db_file.url).await.unwrap();
    db.migrate().await.unwrap();
    let broker = MemoryBroker::new();
    let t = topic("buried-twice");
    let dead_letters = StoreDeadLetters::new(db.clone());
    let (running, stats) = start_poison(&broker, &t, "g", Arc::new(dead_letters)).await;
    let m = Message::event(&t, "poison");
    for _ in 0..2 {
        for r in broker.deliver(std::slice::from_ref(&m)).await {
            r.unwrap();
        }
    }
    wait_for("both deliveries buried", || {
        stats.get(&t, "g").is_some_and(|s| s.dead_lettered == 2)
    })
    .await;
    running.shut_down().await;
    let letters = db.dead_letters(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].message.id, m.id);
    db.close().await;
}
