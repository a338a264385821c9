//! The console's rules over plain HTTP, against a real SQLite store: pages
//! need a session, the session cookie's flags, CSRF and same-origin checks
//! on every change, read-only callers refused, malformed fields named.
#![allow(missing_docs)]

mod console_support;

use console_support::{Env, ADMIN_TOKEN, STORE, VIEWER_TOKEN};
use ferry_store::admin::{DeadFilter, DeadKind};
use ferry_store::DatabaseKind;
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::{Client, StatusCode};

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with `token`; returns the `Cookie` header value.
async fn login(env: &Env, token: &str) -> String {
    let r = client()
        .post(env.url("/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    cookie.split(';').next().unwrap().to_owned()
}

/// A page's HTML.
async fn page(env: &Env, cookie: &str, path: &str) -> (StatusCode, String) {
    let r = client()
        .get(env.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The CSRF token in a page's forms.
fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..at + 64].to_owned()
}

async fn consumer_letters(env: &Env) -> u64 {
    let filter = DeadFilter {
        kinds: vec![DeadKind::Consumer],
        ..DeadFilter::default()
    };
    env.db.count_dead(&filter).await.unwrap()
}

async fn consumer_letter_id(env: &Env) -> String {
    let filter = DeadFilter {
        kinds: vec![DeadKind::Consumer],
        ..DeadFilter::default()
    };
    let page = env.db.dead_items(&filter, None, 10).await.unwrap();
    page.items[0].id.to_string()
}

#[tokio::test]
async fn pages_need_a_session_held_in_a_strict_http_only_cookie() {
    let env = Env::start(DatabaseKind::Sqlite).await;
    for path in [
        "/ui",
        "/ui/outbox",
        "/ui/dead",
        "/ui/overview/fragment",
        "/ui/audit",
    ] {
        let r = client().get(env.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()[LOCATION], "/ui/login", "{path}");
    }
    let r = client()
        .post(env.url("/ui/login"))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get(SET_COOKIE).is_none());

    let r = client()
        .post(env.url("/ui/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/ui");
    let set = r.headers()[SET_COOKIE].to_str().unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(flag), "{flag} missing from {set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let (status, html) = page(&env, &cookie, "/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("ops-alice"), "the page names the caller");
    // A cookie with a token that is not (or no longer) configured is no session.
    let (status, _) = page(&env, "ferry_session=console-admin-secreT", "/ui").await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    // Logging out needs the CSRF token too, then clears the cookie.
    let r = client()
        .post(env.url("/ui/logout"))
        .header(COOKIE, &cookie)
        .form(&[("x", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client()
        .post(env.url("/ui/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cleared = r.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("ferry_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
}

#[tokio::test]
async fn a_change_needs_the_sessions_csrf_token_and_the_same_origin() {
    let env = Env::start(DatabaseKind::Sqlite).await;
    env.consumer_letter().await;
    let id = consumer_letter_id(&env).await;
    let alice = login(&env, ADMIN_TOKEN).await;
    let viewer = login(&env, VIEWER_TOKEN).await;
    let (_, html) = page(&env, &alice, "/ui/dead").await;
    let token = csrf(&html);
    let (_, viewer_html) = page(&env, &viewer, "/ui/dead").await;
    assert_ne!(csrf(&viewer_html), token, "each session has its own token");
    let discard = format!("/ui/dead/item/{id}/discard");
    let post = |cookie: &str, form: Vec<(&'static str, String)>, origin: Option<&str>| {
        let mut r = client()
            .post(env.url(&discard))
            .header(COOKIE, cookie)
            .form(&form);
        if let Some(o) = origin {
            r = r.header(ORIGIN, o);
        }
        r.send()
    };
    let store = ("store", STORE.to_owned());

    // No token, a wrong one, another session's, a cross-site origin.
    let refused = [
        (vec![store.clone()], None),
        (vec![store.clone(), ("csrf", "0".repeat(64))], None),
        (vec![store.clone(), ("csrf", csrf(&viewer_html))], None),
        (
            vec![store.clone(), ("csrf", token.clone())],
            Some("http://evil.example"),
        ),
    ];
    for (form, origin) in refused {
        let r = post(&alice, form.clone(), origin).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{form:?} {origin:?}");
    }
    assert_eq!(consumer_letters(&env).await, 1, "nothing was discarded");

    let r = post(&alice, vec![store, ("csrf", token)], Some(&env.base))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(consumer_letters(&env).await, 0);
    let audit = env.db.audit_log(None, 10).await.unwrap();
    assert_eq!(audit[0].entry.actor, "ops-alice");
    assert!(audit[0].entry.action.ends_with("discard"), "{:?}", audit[0]);
    assert_eq!(audit[0].entry.target, id);
}

#[tokio::test]
async fn a_read_only_token_sees_no_change_buttons_and_its_posts_are_refused() {
    let env = Env::start(DatabaseKind::Sqlite).await;
    env.consumer_letter().await;
    let id = consumer_letter_id(&env).await;
    let viewer = login(&env, VIEWER_TOKEN).await;
    let alice = login(&env, ADMIN_TOKEN).await;
    let detail = format!("/ui/dead/item/{id}?store={STORE}");
    let items = format!("/ui/dead/items?store={STORE}");

    let (status, html) = page(&env, &viewer, &detail).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("read-only"));
    for button in ["id=\"replay\"", "id=\"discard\""] {
        assert!(
            !html.contains(button),
            "{button} shown to a read-only token"
        );
    }
    let (_, list) = page(&env, &viewer, &items).await;
    assert!(
        !list.contains("type=\"checkbox\""),
        "no selection for a read-only token"
    );
    assert!(!list.contains("replay-all"));
    let (_, overview) = page(&env, &viewer, "/ui").await;
    assert!(
        !overview.contains("/pause\""),
        "no pause button for a read-only token"
    );
    // The admin sees them on the same pages.
    let (_, admin_html) = page(&env, &alice, &detail).await;
    assert!(admin_html.contains("id=\"discard\""));
    let (_, admin_list) = page(&env, &alice, &items).await;
    assert!(admin_list.contains("type=\"checkbox\""));

    // A forged POST with the viewer's own valid CSRF token.
    for path in [
        format!("/ui/dead/item/{id}/discard"),
        format!("/ui/dead/item/{id}/replay"),
        "/ui/pipelines/orders/pause".to_owned(),
    ] {
        let r = client()
            .post(env.url(&path))
            .header(COOKIE, &viewer)
            .form(&[("store", STORE.to_owned()), ("csrf", csrf(&html))])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert!(r.text().await.unwrap().contains("read-only"));
    }
    let r = client()
        .post(env.url("/ui/dead/bulk"))
        .header(COOKIE, &viewer)
        .form(&[
            ("store", STORE),
            ("action", "discard"),
            ("count", "1"),
            ("csrf", &csrf(&html)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(consumer_letters(&env).await, 1);
    assert!(env.db.paused().await.unwrap().is_empty());
}

#[tokio::test]
async fn malformed_fields_are_a_400_naming_them() {
    let env = Env::start(DatabaseKind::Sqlite).await;
    let alice = login(&env, ADMIN_TOKEN).await;
    for (path, field) in [
        ("/ui/outbox?status=lost", "status"),
        ("/ui/outbox?id=42x", "id"),
        ("/ui/outbox?from=yesterday", "from"),
        ("/ui/dead/items?kind=inbox", "kind"),
        ("/ui/dead/items?after=nope", "after"),
        ("/ui/dead/item/outbox:x", "id"),
        ("/ui/dead/confirm?action=explode", "action"),
    ] {
        let (status, html) = page(&env, &alice, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(html.contains(&format!("`{field}`")), "{path}: {html}");
    }
    let (status, _) = page(&env, &alice, "/ui/outbox?store=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Empty fields, as a form sends them, are no filter.
    let (status, _) = page(&env, &alice, "/ui/outbox?status=&topic=&from=").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_console_needs_nothing_from_outside() {
    let env = Env::start(DatabaseKind::Sqlite).await;
    let alice = login(&env, ADMIN_TOKEN).await;
    for path in ["/ui/assets/console.css", "/ui/assets/console.js"] {
        let r = client().get(env.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("@import"),
            "{path}"
        );
    }
    for path in ["/ui", "/ui/outbox", "/ui/dead", "/ui/jobs", "/ui/audit"] {
        let (status, html) = page(&env, &alice, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        for attr in ["src=\"", "href=\""] {
            for (at, _) in html.match_indices(attr) {
                let url = &html[at + attr.len()..];
                assert!(
                    url.starts_with('/') || url.starts_with('?'),
                    "{path} loads {}",
                    &url[..40.min(url.len())]
                );
            }
        }
    }
}
