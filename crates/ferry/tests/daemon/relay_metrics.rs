//! `ferry run` with a `[[pipeline]]` table and `[http]`: `/metrics` shows
//! the relay's counters and its outbox's backlog.

use super::*;

use ferry_testkit::Mode;

/// The value of the sample `series` (name and labels) in `text`, if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `/metrics` at `url` once `done` holds for it; fails after `limit`.
async fn scrape_until(
    url: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(url).await;
        if done(&text) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting for {what}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 20 messages and a poison one wait in the outbox while the receiver is
/// down: the backlog gauge reads 21 and nothing is delivered. Once it is
/// up: 20 delivered, 1 dead-lettered, at least one batch, backlog 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_shows_a_relays_counters_and_backlog() {
    const N: usize = 20;
    let t = SqliteTestDb::create();
    let db = migrated(&t.url).await;
    let mut messages = keyed(N, 4);
    messages.push(Message::event("t", "poison").with_key("k0"));
    enqueue(&db, &messages).await;
    let r = Receiver::start().await;
    r.set_mode(Mode::Down);
    let dir = TempDir::new();
    let port = free_port();
    let file = dir.0.join("ferry.toml");
    std::fs::write(
        &file,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[pipeline]]\nname = \"orders\"\ndatabase = \"{}\"\npoll_interval = \"50ms\"\n\
             [pipeline.sink_backoff]\ninitial = \"50ms\"\nmax = \"200ms\"\n\
             [pipeline.sink]\ntype = \"http\"\nurl = \"{}\"\n",
            t.url,
            r.url()
        ),
    )
    .unwrap();
    let mut child = Reaped(spawn_ferry(&["run", "--config", file.to_str().unwrap()]));
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let backlog = "ferry_relay_backlog_messages{pipeline=\"orders\"}";
    let delivered = "ferry_relay_delivered_total{pipeline=\"orders\"}";

    // The first read comes at start; the receiver is down, so all wait.
    let text = scrape_until(
        &metrics,
        "the backlog to be read",
        Duration::from_secs(30),
        |t| sample(t, backlog).is_some(),
    )
    .await;
    assert_eq!(sample(&text, backlog), Some((N + 1) as f64), "{text}");
    assert_eq!(sample(&text, delivered), Some(0.0), "{text}");
    assert!(r.applied().is_empty());

    r.set_mode(Mode::Up);
    wait_until("20 applied", Duration::from_secs(30), || {
        r.applied().len() == N
    })
    .await;
    // The backlog is read every 10 s.
    let text = scrape_until(
        &metrics,
        "the backlog to reach 0",
        Duration::from_secs(40),
        |t| sample(t, backlog) == Some(0.0),
    )
    .await;
    assert_eq!(sample(&text, delivered), Some(N as f64), "{text}");
    assert_eq!(
        sample(
            &text,
            "ferry_relay_dead_lettered_total{pipeline=\"orders\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "ferry_relay_batches_total{pipeline=\"orders\"}").is_some_and(|b| b >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "ferry_relay_failed_total{pipeline=\"orders\"}").is_some(),
        "{text}"
    );
    stop(&mut child.0);
}
