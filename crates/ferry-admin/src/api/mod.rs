//! The admin API: `/v1/admin/…`, JSON, described by the OpenAPI document
//! it serves at `/v1/admin/openapi.json`.
//!
//! Every route but the document answers only to `Authorization: Bearer
//! <token>` (401 with `WWW-Authenticate` without one or with a wrong one);
//! changes (POST) need an admin token (403 for a read-only one). A console
//! session cookie is not accepted here, so cross-site requests cannot act
//! through it. Errors are `{"error": …, "parameter": …}`; every bad query
//! parameter is a 400 naming it.

mod auth;
mod dead;
mod ops;
mod outbox;
pub(crate) mod params;

use axum::routing::{get, post, MethodRouter};
use axum::Router;

use crate::Admin;

/// Where the API lives.
pub const PREFIX: &str = "/v1/admin";

/// The OpenAPI 3.1 document describing every route.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// One route the API serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedRoute {
    /// `get` or `post`.
    pub method: &'static str,
    /// The path, in OpenAPI's `{param}` form.
    pub path: String,
    /// The query parameters it takes.
    pub query: &'static [&'static str],
}

/// The API's routes as built, with the list of what they serve.
struct Routes {
    router: Router<Admin>,
    served: Vec<ServedRoute>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    fn add(
        mut self,
        method: &'static str,
        path: &str,
        query: &'static [&'static str],
        route: MethodRouter<Admin>,
    ) -> Self {
        let path = format!("{PREFIX}{path}");
        self.router = self.router.route(&path, route);
        self.served.push(ServedRoute {
            method,
            path,
            query,
        });
        self
    }
}

/// The routes that need a token.
fn authenticated() -> Routes {
    Routes::new()
        .add("get", "/overview", ops::NONE, get(ops::overview))
        .add("get", "/outbox", outbox::LIST, get(outbox::list))
        .add(
            "get",
            "/outbox/{message}",
            outbox::DETAIL,
            get(outbox::detail),
        )
        .add("get", "/dead", dead::LIST, get(dead::list))
        .add("get", "/dead/causes", dead::FILTER_ONLY, get(dead::causes))
        .add("get", "/dead/count", dead::FILTER_ONLY, get(dead::count))
        .add("get", "/dead/{id}", dead::STORE_ONLY, get(dead::detail))
        .add(
            "post",
            "/dead/{id}/replay",
            dead::STORE_ONLY,
            post(dead::replay),
        )
        .add(
            "post",
            "/dead/{id}/discard",
            dead::STORE_ONLY,
            post(dead::discard),
        )
        .add(
            "post",
            "/dead/replay",
            dead::STORE_ONLY,
            post(dead::bulk_replay),
        )
        .add(
            "post",
            "/dead/discard",
            dead::STORE_ONLY,
            post(dead::bulk_discard),
        )
        .add("get", "/jobs", ops::NONE, get(ops::jobs))
        .add("get", "/jobs/{id}", ops::NONE, get(ops::job))
        .add(
            "post",
            "/pipelines/{name}/pause",
            ops::NONE,
            post(ops::pause),
        )
        .add(
            "post",
            "/pipelines/{name}/resume",
            ops::NONE,
            post(ops::resume),
        )
        .add("get", "/audit", ops::AUDIT, get(ops::audit))
}

/// The routes anyone may call: the document describes the API, holds
/// nothing secret, and tools fetch it without credentials.
fn public() -> Routes {
    Routes::new().add("get", "/openapi.json", ops::NONE, get(ops::openapi))
}

/// The API's routes, bound to `admin`.
pub(crate) fn routes(admin: Admin) -> Router {
    let auth = axum::middleware::from_fn_with_state(admin.clone(), auth::require_caller);
    authenticated()
        .router
        .route_layer(auth)
        .merge(public().router)
        .with_state(admin)
}

/// Every route the API serves, with its query parameters: what the
/// OpenAPI document must describe.
pub fn served_routes() -> Vec<ServedRoute> {
    authenticated()
        .served
        .into_iter()
        .chain(public().served)
        .collect()
}
