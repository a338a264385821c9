//! The frame every console page shares: head, navigation, the caller and
//! the logout button.

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::{Session, CSRF_FIELD};

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Outbox,
    Dead,
    Jobs,
    Audit,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/ui", "Overview"),
    (Section::Outbox, "/ui/outbox", "Outbox"),
    (Section::Dead, "/ui/dead", "Dead letters"),
    (Section::Jobs, "/ui/jobs", "Bulk jobs"),
    (Section::Audit, "/ui/audit", "Audit log"),
];

/// A whole page for a logged-in operator.
pub(crate) fn page(session: &Session, section: Section, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    a.brand href="/ui" { "Ferry" }
                    nav {
                        @for (s, href, label) in SECTIONS {
                            a href=(href) class=[(s == section).then_some("active")] { (label) }
                        }
                    }
                    div.who {
                        span.caller title="the token you are logged in with" {
                            (session.caller.name)
                            @if !session.caller.may_change() { " " span.badge { "read-only" } }
                        }
                        form.inline method="post" action="/ui/logout" {
                            (csrf_field(session))
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A page without the navigation (login, refusals).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare { main.narrow { (body) } }
        }
    }
}

/// The page of a refused or failed request.
pub(crate) fn refusal(title: &str, why: &str) -> Markup {
    bare(
        title,
        html! {
            h1 { (title) }
            p.error { (why) }
            p { a href="/ui" { "Back to the console" } }
        },
    )
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Ferry" }
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

/// The hidden field carrying the session's CSRF token.
pub(crate) fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(session.csrf); }
}

/// A number with thin separators between thousands.
pub(crate) fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A moment, as "3 min ago" with the exact time on hover.
pub(crate) fn ago(t: DateTime<Utc>) -> Markup {
    let secs = (Utc::now() - t).num_seconds();
    let text = match secs {
        s if s < 0 => exact(t),
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86_400 => format!("{} h ago", s / 3600),
        _ => t.format("%Y-%m-%d %H:%M").to_string(),
    };
    html! { time datetime=(t.to_rfc3339()) title=(exact(t)) { (text) } }
}

/// A moment in full, UTC.
pub(crate) fn exact(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A `<select name="store">` over the stores, when there is more than one
/// (with one, a hidden field).
pub(crate) fn store_picker(stores: &[String], current: &str) -> Markup {
    html! {
        @if stores.len() > 1 {
            label { "Store"
                select name="store" {
                    @for s in stores {
                        option value=(s) selected[s == current] { (s) }
                    }
                }
            }
        } @else {
            input type="hidden" name="store" value=(current);
        }
    }
}

/// Text cut to `max` characters, with the whole of it on hover.
pub(crate) fn clipped(text: &str, max: usize) -> Markup {
    if text.chars().count() <= max {
        return html! { (text) };
    }
    let cut: String = text.chars().take(max).collect();
    html! { span title=(text) { (cut) "…" } }
}

/// `—` for a missing value.
pub(crate) fn dash() -> Markup {
    PreEscaped("<span class=\"none\">—</span>".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1\u{202f}000");
        assert_eq!(count(-1234567), "-1\u{202f}234\u{202f}567");
    }
}
