//! The web console under `/ui`: server-rendered pages over [`Admin`],
//! embedded in the binary (templates compiled in with maud, the stylesheet
//! and the one small script with `include_str!`), working without
//! JavaScript; the script only refreshes the overview in place.
//!
//! Every page needs a session: `POST /ui/login` with a token sets an
//! HttpOnly, SameSite=Strict cookie holding it, and each request looks it
//! up again through [`Admin::caller`], so a token removed from the
//! configuration stops working at once. Every change is a POST carrying a
//! CSRF token derived from the session ([`session`]) from a page of the
//! same origin; read-only callers never see the buttons, and their POSTs
//! are refused with 403 all the same.

mod assets;
mod layout;
mod login;
mod overview;
mod session;
mod sparkline;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::Admin;

/// What every console handler shares.
#[derive(Clone)]
pub(crate) struct Ui {
    admin: Admin,
    csrf: Arc<session::CsrfKey>,
}

/// The console's routes, all under `/ui`, ready to be merged into the
/// daemon's router.
pub(crate) fn routes(admin: Admin) -> Router {
    let ui = Ui {
        admin,
        csrf: Arc::new(session::CsrfKey::random()),
    };
    Router::new()
        .route("/ui", get(overview::page))
        .route("/ui/", get(overview::page))
        .route("/ui/overview/fragment", get(overview::fragment))
        .route("/ui/login", get(login::form).post(login::submit))
        .route("/ui/logout", post(login::logout))
        .route("/ui/assets/console.css", get(assets::stylesheet))
        .route("/ui/assets/console.js", get(assets::script))
        .with_state(ui)
}
