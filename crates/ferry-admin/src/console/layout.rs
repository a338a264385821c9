//! The frame every console page shares: head, navigation, the caller and
//! the logout button.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::session::{Session, CSRF_FIELD};

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Outbox,
    Dead,
    Audit,
}

const SECTIONS: [(Section, &str, &str); 4] = [
    (Section::Overview, "/ui", "Overview"),
    (Section::Outbox, "/ui/outbox", "Outbox"),
    (Section::Dead, "/ui/dead", "Dead letters"),
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
        if i > 0 && (digits.len() - i) % 3 == 0 {
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
