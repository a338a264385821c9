//! The cases of the suite, one function each; [`conformance_suite!`](crate::conformance_suite)
//! runs them all.

use std::time::Duration;

use ferry_core::{Message, Subscription};
use futures::StreamExt;

use crate::Broker;

/// A fresh name for a case's topic or group, so that cases do not see
/// each other's messages.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Published messages arrive, intact, and an acknowledged one does not come again.
pub async fn publish_then_receive(broker: &impl Broker) {
    let c = broker.connect().await;
    let topic = unique("conf.basic");
    let sub = Subscription::new(topic.clone(), unique("g"));
    let mut stream = c.subscriber.subscribe(&sub).await.expect("subscribe");
    let sent = Message::event(topic.clone(), "{\"n\":1}")
        .with_key("k1")
        .with_header("x-trace", "t1");
    let results = c.sink.deliver(std::slice::from_ref(&sent)).await;
    assert!(results.iter().all(|r| r.is_ok()), "publish: {results:?}");
    let got = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a message within 30 s")
        .expect("stream open")
        .expect("receive");
    let message = got.message.as_ref().expect("well-formed").clone();
    assert_eq!(message.id, sent.id);
    assert_eq!(message.topic, sent.topic);
    assert_eq!(message.key, sent.key);
    assert_eq!(message.payload, sent.payload);
    assert_eq!(
        message.headers.get("x-trace").map(String::as_str),
        Some("t1")
    );
    got.ack().await.expect("ack");
    let again = tokio::time::timeout(broker.redelivery_after() * 2, stream.next()).await;
    assert!(again.is_err(), "an acked message came again: {again:?}");
}
