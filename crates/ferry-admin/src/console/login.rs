//! Logging in with a token, and out.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::layout;
use super::query::{Fields, PageError};
use super::session::{self, Session};
use super::Ui;
use crate::AdminError;

/// `GET /ui/login`.
pub(crate) async fn form() -> Markup {
    login_page(None)
}

fn login_page(error: Option<&str>) -> Markup {
    layout::bare(
        "Log in",
        html! {
            div.login {
                h1 { "Ferry console" }
                p.muted { "Log in with one of the daemon's admin or read-only tokens." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/ui/login" {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button.primary type="submit" { "Log in" }
                }
            }
        },
    )
}

/// `POST /ui/login`: a known token opens a session.
pub(crate) async fn submit(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> Response {
    if !session::same_origin(&headers) {
        return PageError(AdminError::Forbidden(session::CROSS_SITE.to_owned())).into_response();
    }
    let form = Fields::parse(&body);
    let token = form.get("token").unwrap_or("");
    if token.is_empty() || ui.admin.caller(token.as_bytes()).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            login_page(Some("That token is not one of the daemon's.")),
        )
            .into_response();
    }
    (
        [(SET_COOKIE, session::open_cookie(token))],
        Redirect::to("/ui"),
    )
        .into_response()
}

/// `POST /ui/logout`: closes the session (CSRF checked, so another site
/// cannot log the operator out).
pub(crate) async fn logout(
    State(ui): State<Ui>,
    headers: HeaderMap,
    session: Session,
    body: Bytes,
) -> Response {
    let form = Fields::parse(&body);
    if let Err(refused) = session::check_change(&ui, &headers, &session, &form, false) {
        return PageError(refused).into_response();
    }
    (
        [(SET_COOKIE, session::close_cookie())],
        Redirect::to("/ui/login"),
    )
        .into_response()
}
