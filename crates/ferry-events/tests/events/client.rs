//! The offset API's Rust client against the real server and real
//! databases: durable offsets in a file and in a database, resuming after a
//! drop, riding out a server restart, and errors that are not retried.

use crate::api_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use api_common::{events, Env, Served};
use ferry_core::RetryPolicy;
use ferry_events::api::{ApiConfig, BearerToken};
use ferry_events::client::{
    ClientConfig, ClientError, DatabaseOffsetStore, EventsClient, FileOffsetStore, OffsetStore,
};
use ferry_store::event_store::{EventQuery, NewEvent};
use ferry_testkit::TempDir;
use uuid::Uuid;

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        multiplier: 2.0,
        jitter: 0.0,
    }
}

fn config(s: &Served, limit: u32) -> ClientConfig {
    ClientConfig {
        limit,
        retry: fast_retry(100),
        ..ClientConfig::new(s.url("").parse().unwrap())
    }
}

/// 100 events; a client reads two pages of 30 and commits the first only,
/// then is dropped. Its successor gets the second page again (at least
/// once), and from there every event once; a third client starts at the
/// head.
async fn resumes_from_the_durable_offset<S: OffsetStore + Clone>(store: S) {
    let env = Env::postgres().await;
    let appended = env.append(&events(100)).await;
    let head = *appended.last().unwrap();
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let mut seen: HashMap<Uuid, usize> = HashMap::new();

    let mut client = EventsClient::new(config(&s, 30), store.clone())
        .await
        .unwrap();
    assert_eq!(client.committed(), 0);
    let first = client.next_page().await.unwrap();
    assert_eq!(first.events.len(), 30);
    client.commit(&first).await.unwrap();
    let second = client.next_page().await.unwrap();
    assert_eq!(second.offset, appended[29]);
    assert_eq!(second.events[0].seq, appended[30]);
    for e in first.events.iter().chain(&second.events) {
        *seen.entry(e.id).or_default() += 1;
    }
    assert_eq!(client.committed(), appended[29]);
    drop(client); // crashed before committing the second page

    let mut client = EventsClient::new(config(&s, 30), store.clone())
        .await
        .unwrap();
    assert_eq!(client.committed(), appended[29]);
    let again = client.next_page().await.unwrap();
    assert_eq!(again, second, "the uncommitted page comes again");
    let mut page = again;
    loop {
        for e in &page.events {
            *seen.entry(e.id).or_default() += 1;
        }
        client.commit(&page).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        page = client.next_page().await.unwrap();
    }
    assert_eq!(client.committed(), head);
    drop(client);

    let stored = env
        .db
        .read_events(&EventQuery {
            offset: 0,
            limit: 1000,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(seen.len(), 100, "every event handed out");
    for e in &stored.events {
        let twice = second.events.iter().any(|x| x.id == e.id);
        assert_eq!(seen[&e.id], if twice { 2 } else { 1 }, "event {}", e.seq);
    }

    let mut client = EventsClient::new(config(&s, 30), store).await.unwrap();
    assert_eq!(client.committed(), head);
    let page = client.next_page().await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.next_offset, head);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_a_file_offset() {
    let dir = TempDir::new();
    let store = FileOffsetStore::new(dir.0.join("billing.offset"));
    resumes_from_the_durable_offset(store.clone()).await;
    assert!(
        std::fs::read_to_string(store.path())
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_a_database_offset() {
    // The client's own database, not the API's.
    let own = Env::sqlite().await;
    let store = DatabaseOffsetStore::new(own.db.clone(), "billing-http");
    resumes_from_the_durable_offset(store).await;
    assert!(own.db.load_offset("billing-http").await.unwrap() > 0);
}

each_db!(payloads_come_back_as_stored, |env: Env| async move {
    let sent = [
        NewEvent::new("json", br#"{"a": [1, 2.50, "x"], "n": null}"#.to_vec()),
        NewEvent::new("text", "h\u{e9}llo \"you\"".as_bytes().to_vec())
            .with_content_type("text/plain; charset=utf-8"),
        NewEvent::new("bytes", vec![0, 159, 146, 150, 255])
            .with_content_type("application/octet-stream"),
        NewEvent::new("broken", b"{oops".to_vec()).with_source("order", "7"),
    ];
    env.append(&sent).await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let dir = TempDir::new();
    let mut client = EventsClient::new(config(&s, 10), FileOffsetStore::new(dir.0.join("o")))
        .await
        .unwrap();
    let page = client.next_page().await.unwrap();
    let stored = env
        .db
        .read_events(&EventQuery {
            offset: 0,
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.events, stored.events);
    assert_eq!(page.next_offset, stored.next_offset);
    s.stop().await;
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_long_polls() {
    let env = Env::sqlite().await;
    let appended = env.append(&events(30)).await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let dir = TempDir::new();
    let mut client = EventsClient::new(
        ClientConfig {
            event_type: Some("b".to_owned()),
            source_type: Some("order".to_owned()),
            source_id: Some("1".to_owned()),
            wait: Some(Duration::from_secs(20)),
            ..config(&s, 100)
        },
        FileOffsetStore::new(dir.0.join("o")),
    )
    .await
    .unwrap();
    let page = client.next_page().await.unwrap();
    // i % 3 == 1 and i % 5 == 1: i = 1, 16.
    let want: Vec<i64> = vec![appended[1], appended[16]];
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
    client.commit(&page).await.unwrap();
    assert_eq!(client.committed(), appended[29]);
    // The next call waits on the server until a matching event arrives.
    let db = env.db.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        db.append_events(&[NewEvent::new("b", b"{}".to_vec()).with_source("order", "1")])
            .await
            .unwrap()[0]
    });
    let page = client.next_page().await.unwrap();
    let seq = append.await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![seq]
    );
    assert_eq!(client.head().await.unwrap(), seq);
    s.stop().await;
}

/// The server stops between two pages; a listener that drops every
/// connection stands in for it until the client has been refused twice;
/// then the server comes back on the same port and the client's call,
/// retrying all along, gets the next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_going_when_the_server_restarts() {
    let env = Env::sqlite().await;
    let appended = env.append(&events(20)).await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let addr = s.addr;
    let dir = TempDir::new();
    let mut client = EventsClient::new(config(&s, 10), FileOffsetStore::new(dir.0.join("o")))
        .await
        .unwrap();
    let first = client.next_page().await.unwrap();
    client.commit(&first).await.unwrap();
    s.stop().await;

    let dead = tokio::net::TcpListener::bind(addr).await.unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let (twice_tx, twice_rx) = tokio::sync::oneshot::channel();
    let dropping = tokio::spawn({
        let refused = refused.clone();
        async move {
            let mut twice = Some(twice_tx);
            loop {
                let (conn, _) = dead.accept().await.unwrap();
                drop(conn);
                if refused.fetch_add(1, Ordering::SeqCst) + 1 >= 2 {
                    if let Some(tx) = twice.take() {
                        let _ = tx.send(dead);
                        return;
                    }
                }
            }
        }
    });
    let next = tokio::spawn(async move {
        let page = client.next_page().await;
        (client, page)
    });
    let dead = tokio::time::timeout(Duration::from_secs(20), twice_rx)
        .await
        .expect("the client retries")
        .unwrap();
    dropping.await.unwrap();
    drop(dead);
    let s = Served::start_on(addr, &env.db, ApiConfig::default()).await;
    let (mut client, page) = tokio::time::timeout(Duration::from_secs(20), next)
        .await
        .expect("the client gets through once the server is back")
        .unwrap();
    let page = page.unwrap();
    assert!(refused.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        appended[10..].to_vec()
    );
    client.commit(&page).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_not_retried() {
    let env = Env::sqlite().await;
    let s = Served::start(
        &env.db,
        ApiConfig {
            token: Some(BearerToken::new("right").unwrap()),
            ..ApiConfig::default()
        },
    )
    .await;
    let dir = TempDir::new();
    let store = || FileOffsetStore::new(dir.0.join("o"));
    // A retry policy that would take minutes: a refusal must not use it.
    let patient = RetryPolicy {
        max_attempts: 1000,
        initial_backoff: Duration::from_secs(5),
        max_backoff: Duration::from_secs(5),
        multiplier: 1.0,
        jitter: 0.0,
    };
    let client_with = |token: Option<&str>, limit: u32, event_type: Option<&str>| ClientConfig {
        token: token.map(|t| BearerToken::new(t).unwrap()),
        event_type: event_type.map(str::to_owned),
        retry: patient.clone(),
        ..config(&s, limit)
    };
    for token in [None, Some("wrong")] {
        let mut c = EventsClient::new(client_with(token, 10, None), store())
            .await
            .unwrap();
        let e = tokio::time::timeout(Duration::from_secs(4), c.next_page())
            .await
            .expect("no retry")
            .unwrap_err();
        assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
        assert!(!e.is_retryable());
        let e = c.head().await.unwrap_err();
        assert!(matches!(e, ClientError::Unauthorized { .. }), "{e}");
    }
    // A limit or wait above the server's maximum (1000, 30 s) is refused
    // by the server, with the parameter named.
    for (limit, event_type, wait, parameter) in [
        (5000, None, None, "limit"),
        (10, Some(""), None, "type"),
        (10, None, Some(Duration::from_secs(31)), "wait"),
    ] {
        let config = ClientConfig {
            wait,
            ..client_with(Some("right"), limit, event_type)
        };
        let mut c = EventsClient::new(config, store()).await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(4), c.next_page())
            .await
            .expect("no retry")
            .unwrap_err();
        match &e {
            ClientError::Rejected {
                status: 400,
                parameter: Some(p),
                ..
            } => assert_eq!(p, parameter),
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains(&format!("`{parameter}`")), "{e}");
    }
    let mut c = EventsClient::new(client_with(Some("right"), 10, None), store())
        .await
        .unwrap();
    assert!(c.next_page().await.unwrap().events.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_configuration_no_server_accepts_is_refused_at_once() {
    let dir = TempDir::new();
    let base = ClientConfig::new("http://127.0.0.1:9".parse().unwrap());
    for limit in [0, ferry_store::event_store::MAX_PAGE + 1] {
        let e = EventsClient::new(
            ClientConfig {
                limit,
                ..base.clone()
            },
            FileOffsetStore::new(dir.0.join("o")),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::Config { .. }), "{e:?}");
        assert!(e.to_string().contains("limit"), "{e}");
        assert!(!e.is_retryable());
    }
    let mut retry = base.retry.clone();
    retry.max_attempts = 0;
    let e = EventsClient::new(
        ClientConfig {
            retry,
            ..base.clone()
        },
        FileOffsetStore::new(dir.0.join("o")),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::Config { .. }), "{e:?}");
    // The cause is kept as the source, not formatted into the message.
    let source = std::error::Error::source(&e).expect("the retry policy's error");
    assert!(!e.to_string().contains(&source.to_string()), "{e}");
    assert!(base.validate().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_once_the_retries_are_spent() {
    // Nothing listens on the port.
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let dir = TempDir::new();
    let config = ClientConfig {
        retry: fast_retry(3),
        ..ClientConfig::new(format!("http://{addr}").parse().unwrap())
    };
    let mut c = EventsClient::new(config, FileOffsetStore::new(dir.0.join("o")))
        .await
        .unwrap();
    let e = c.next_page().await.unwrap_err();
    assert!(
        matches!(e, ClientError::Unavailable { attempts: 3, .. }),
        "{e}"
    );
    assert!(e.is_retryable());
    assert_eq!(c.position(), 0);

    // A server whose database fails answers 503: retried, then unavailable.
    let env = Env::sqlite_unmigrated().await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let config = ClientConfig {
        retry: fast_retry(2),
        ..ClientConfig::new(s.url("/").parse().unwrap())
    };
    let mut c = EventsClient::new(config, FileOffsetStore::new(dir.0.join("p")))
        .await
        .unwrap();
    let e = c.next_page().await.unwrap_err();
    match &e {
        ClientError::Unavailable {
            attempts: 2, last, ..
        } => {
            assert!(
                last.contains("503") && last.contains("unavailable"),
                "{last}"
            )
        }
        other => panic!("{other}"),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_hands_uncommitted_pages_out_again() {
    let env = Env::sqlite().await;
    let appended = env.append(&events(10)).await;
    let s = Served::start(&env.db, ApiConfig::default()).await;
    let dir = TempDir::new();
    let mut c = EventsClient::new(config(&s, 4), FileOffsetStore::new(dir.0.join("o")))
        .await
        .unwrap();
    let a = c.next_page().await.unwrap();
    let b = c.next_page().await.unwrap();
    assert_eq!(b.offset, appended[3]);
    c.commit(&a).await.unwrap();
    c.rewind();
    assert_eq!(c.next_page().await.unwrap(), b);
    // Committing part of a page, then an older page, never moves back.
    c.commit_offset(appended[5]).await.unwrap();
    c.commit(&a).await.unwrap();
    assert_eq!(c.committed(), appended[5]);
    assert_eq!(c.store().load().await.unwrap(), appended[5]);
    s.stop().await;
}
