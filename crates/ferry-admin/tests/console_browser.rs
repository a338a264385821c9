//! The console in a real browser (headless Chromium over chromedriver)
//! against real stores (a SQLite file, a PostgreSQL database), a real
//! ferry-relay relay and a real HTTP receiver: an operator logs in, sees a
//! backlog drain live, finds the dead letters grouped by cause, replays
//! one and sees the receiver get it, replays all matching a cause after
//! confirming the count, discards a selection, pauses the relay; a
//! read-only token sees no buttons and its forged POST is refused; a POST
//! without the CSRF token is refused; logging out ends the session.
//!
//! `FERRY_SCREENSHOTS=docs/console` writes the main pages as PNGs (from
//! the SQLite run).
#![allow(missing_docs)]

mod browser;
mod console_support;

use std::time::Duration;

use browser::Browser;
use console_support::{Env, ADMIN_TOKEN, VIEWER_TOKEN};
use ferry_store::DatabaseKind;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_through_the_console_sqlite() {
    walkthrough(DatabaseKind::Sqlite, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_through_the_console_postgres() {
    walkthrough(DatabaseKind::Postgres, false).await;
}

async fn login(b: &Browser, token: &str, screenshots: bool) {
    b.goto("/ui").await;
    b.find("#token").await;
    assert_eq!(b.path().await, "/ui/login", "no session: the login page");
    if screenshots {
        b.screenshot("login").await;
    }
    b.fill("#token", token).await;
    b.click(".login button[type=submit]").await;
    b.find("h1").await;
    b.wait_text("h1", "the overview", |t| t == "Overview").await;
}

/// A POST from the page's own script: `fields` as a form, answered status.
async fn post_status(b: &Browser, path: &str, fields: serde_json::Value) -> u64 {
    b.run(
        "return fetch(arguments[0], {method: 'POST', body: new URLSearchParams(arguments[1]), \
         redirect: 'manual'}).then(r => r.status)",
        vec![json!(path), fields],
    )
    .await
    .as_u64()
    .unwrap()
}

/// Clicks "Show" on the cause group whose row mentions `cause`.
async fn show_group(b: &Browser, cause: &str) {
    b.find("table.groups").await;
    for row in b.all("table.groups tr.group").await {
        if row.text().await.unwrap().contains(cause) {
            let show = row.find(fantoccini::Locator::Css("a.show")).await.unwrap();
            show.click().await.unwrap();
            b.find("table.items").await;
            return;
        }
    }
    panic!("no cause group mentions `{cause}`");
}

async fn walkthrough(kind: DatabaseKind, screenshots: bool) {
    let env = Env::start(kind).await;
    // A backlog builds up in waves while the relay is not running yet.
    for _ in 0..4 {
        env.enqueue(10, 0, 0).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    env.consumer_letter().await;
    env.backlog(40).await;

    let b = Browser::start(&env.base).await;
    login(&b, ADMIN_TOKEN, screenshots).await;
    b.wait_text("tr[data-component=orders] td.backlog", "40", |t| t == "40")
        .await;
    for section in [
        "Relays",
        "Consumers",
        "Forwarders",
        "CDC captures",
        "Exports",
    ] {
        b.wait_page_text(section).await;
    }
    for fact in ["order.placed", "7.0 MiB", "18\u{202f}234", "7.5 h"] {
        b.wait_page_text(fact).await;
    }
    assert!(
        b.has("tr[data-component=orders] svg.spark").await,
        "a backlog sparkline"
    );

    // Poison among new messages, then the relay: the backlog drains on the
    // page without a reload (the script refreshes the table).
    let poisoned = env.enqueue(0, 4, 2).await;
    env.start_relay().await;
    env.settled(6).await;
    b.wait_text("tr[data-component=orders] td.backlog", "0", |t| t == "0")
        .await;
    b.wait_text(
        "tr[data-component=orders] td.num:nth-of-type(3)",
        "a rate",
        |t| t.ends_with("/s"),
    )
    .await;
    if screenshots {
        b.screenshot("overview").await;
    }

    // The outbox browser: delivered and dead messages, newest first.
    b.click("nav a[href='/ui/outbox']").await;
    b.wait_text("h1", "the outbox", |t| t == "Outbox").await;
    assert!(b.has("table.messages [data-status=dead]").await);
    assert!(b.has("table.messages [data-status=delivered]").await);
    if screenshots {
        b.screenshot("outbox").await;
    }

    // Dead letters grouped by cause: the 400s, the 422s, the consumer's.
    b.click("nav a[href='/ui/dead']").await;
    b.find("table.groups").await;
    let groups = b.all("table.groups tr.group").await;
    assert_eq!(groups.len(), 3, "three causes");
    let text = b.text("table.groups").await;
    assert!(
        text.contains("customer_id") && text.contains("amount must be positive"),
        "{text}"
    );
    if screenshots {
        b.screenshot("dead-letters").await;
    }

    // Show the missing-field group and open one of its items.
    show_group(&b, "customer_id").await;
    b.find("table.items").await;
    assert_eq!(b.all("table.items tbody tr").await.len(), 4);
    if screenshots {
        b.screenshot("dead-letter-items").await;
    }
    b.click("table.items tbody tr td.id a").await;
    b.find("#replay").await;
    let error = b.text("pre.error-text").await;
    assert!(
        error.contains("400") && error.contains("customer_id"),
        "{error}"
    );
    if screenshots {
        b.screenshot("dead-letter").await;
    }
    let message_id = b.text("dl.facts dd.mono").await;
    assert!(
        poisoned.contains(&message_id),
        "{message_id} is one of the refused"
    );

    // The receiver is fixed; replay this one: pending again, then delivered.
    env.receiver.fix();
    b.click("#replay").await;
    b.wait_page_text("Replayed").await;
    let status = b.text("[data-status]").await;
    assert!(status == "pending" || status == "delivered", "{status}");
    env.delivered(&message_id).await;
    b.goto(&b.path().await.replace("&done=replayed", "")).await;
    b.wait_text("[data-status]", "delivered", |t| t == "delivered")
        .await;

    // Everything left of that cause, after confirming the count.
    b.goto("/ui/dead").await;
    show_group(&b, "customer_id").await;
    b.click("#replay-all").await;
    let count = b.text("#match-count").await;
    assert_eq!(count, "3", "the confirmation shows the count");
    if screenshots {
        b.screenshot("confirm").await;
    }
    b.click("#confirm").await;
    b.wait_text("[data-state]", "done", |t| t.starts_with("done"))
        .await;
    assert_eq!(b.text("#done").await, "3");
    if screenshots {
        b.screenshot("job").await;
    }
    for id in &poisoned[..4] {
        env.delivered(id).await;
    }

    // A selection: both 422s, discarded.
    b.goto("/ui/dead").await;
    show_group(&b, "amount must be positive").await;
    b.find("table.items").await;
    for check in b.all("table.items tbody input[type=checkbox]").await {
        check.click().await.unwrap();
    }
    b.click("button[value=discard]").await;
    b.wait_text("h1", "the outcome", |t| t == "Discarded 2 of 2")
        .await;

    // The consumer's letter: this process does not run that consumer.
    b.goto("/ui/dead/items?kind=consumer").await;
    b.click("table.items tbody tr td.id a").await;
    let letter_path = b.path().await;
    b.click("#replay").await;
    b.wait_page_text("is not run by this process").await;

    // A POST without the CSRF token, from the page itself: refused.
    b.goto(&letter_path).await;
    let discard_path = letter_path.split('?').next().unwrap().to_owned() + "/discard";
    assert_eq!(
        post_status(&b, &discard_path, json!({"store": "orders"})).await,
        403
    );

    // Pause and resume the relay.
    b.goto("/ui").await;
    b.click("tr[data-component=orders] form[action$='/pause'] button")
        .await;
    b.wait_text("tr[data-component=orders] .state", "paused", |t| {
        t == "paused"
    })
    .await;
    b.click("tr[data-component=orders] form[action$='/resume'] button")
        .await;
    b.wait_text("tr[data-component=orders] .state", "running", |t| {
        t == "running"
    })
    .await;

    // The audit log has it all, by name.
    b.click("nav a[href='/ui/audit']").await;
    b.find("table.audit").await;
    let audit = b.text("table.audit").await;
    for action in ["replay", "bulk_replay", "discard", "pause", "resume"] {
        assert!(
            audit.contains(action),
            "{action} missing from the audit log: {audit}"
        );
    }
    assert!(audit.contains("ops-alice"));
    if screenshots {
        b.screenshot("audit").await;
    }

    // Logging out ends the session.
    b.click("header .who button").await;
    b.find("#token").await;
    b.goto("/ui/dead").await;
    b.find("#token").await;
    assert_eq!(b.path().await, "/ui/login");

    // A read-only token: no buttons, and a forged POST with its own valid
    // CSRF token is refused.
    login(&b, VIEWER_TOKEN, false).await;
    assert!(!b.has("form[action$='/pause']").await);
    b.goto(&letter_path).await;
    b.find("pre.error-text").await;
    assert!(!b.has("#replay").await && !b.has("#discard").await);
    let token = b
        .find("input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let replay_path = letter_path.split('?').next().unwrap().to_owned() + "/replay";
    assert_eq!(
        post_status(&b, &replay_path, json!({"store": "orders", "csrf": token})).await,
        403
    );
    b.goto("/ui/dead/items").await;
    b.find("table.items").await;
    assert!(!b.has("table.items input[type=checkbox]").await);
    assert!(!b.has("#replay-all").await);
    b.close().await;
}
