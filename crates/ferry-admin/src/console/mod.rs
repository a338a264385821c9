//! The web console under `/ui`: server-rendered pages over [`Admin`],
//! embedded in the binary (templates compiled in with maud, the stylesheet
//! and the one small script with `include_str!`), working without
//! JavaScript; the script only refreshes the overview and a running job in
//! place and ticks a page's checkboxes at once.
//!
//! Every page needs a session: `POST /ui/login` with a token sets an
//! HttpOnly, SameSite=Strict cookie holding it, and each request looks it
//! up again through [`Admin::caller`], so a token removed from the
//! configuration stops working at once. Every change is a POST carrying a
//! CSRF token derived from the session ([`session`]) from a page of the
//! same origin; read-only callers never see the buttons, and their POSTs
//! are refused with 403 all the same.

mod assets;
mod audit;
mod bulk;
mod dead;
mod layout;
mod login;
mod outbox;
mod overview;
mod query;
mod session;
mod sparkline;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::{Admin, AdminError, NamedStore};
use query::Fields;

/// What every console handler shares.
#[derive(Clone)]
pub(crate) struct Ui {
    admin: Admin,
    csrf: Arc<session::CsrfKey>,
}

/// The store a page shows (`?store=`, else the default), and the names of
/// all of them for its picker.
struct Picked {
    store: NamedStore,
    names: Vec<String>,
}

impl Ui {
    async fn store(&self, q: &Fields) -> Result<Picked, AdminError> {
        let store = self.admin.store(q.get("store"))?;
        let names = self.admin.store_names();
        Ok(Picked { store, names })
    }
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
        .route("/ui/pipelines/{name}/pause", post(overview::pause))
        .route("/ui/pipelines/{name}/resume", post(overview::resume))
        .route("/ui/outbox", get(outbox::list))
        .route("/ui/outbox/{message}", get(outbox::detail))
        .route("/ui/dead", get(dead::groups))
        .route("/ui/dead/items", get(dead::items))
        .route("/ui/dead/item/{id}", get(dead::detail))
        .route("/ui/dead/item/{id}/replay", post(dead::replay))
        .route("/ui/dead/item/{id}/discard", post(dead::discard))
        .route("/ui/dead/selected", post(dead::selected))
        .route("/ui/dead/confirm", get(bulk::confirm))
        .route("/ui/dead/bulk", post(bulk::start))
        .route("/ui/jobs", get(bulk::list))
        .route("/ui/jobs/{id}", get(bulk::page))
        .route("/ui/jobs/{id}/fragment", get(bulk::fragment))
        .route("/ui/audit", get(audit::page))
        .route("/ui/login", get(login::form).post(login::submit))
        .route("/ui/logout", post(login::logout))
        .route("/ui/assets/console.css", get(assets::stylesheet))
        .route("/ui/assets/console.js", get(assets::script))
        .with_state(ui)
}
