//! Bearer tokens on the API: who calls, or 401.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{Admin, AdminError};

/// Lets a request through with a known token, its [`Caller`](crate::Caller)
/// in the request's extensions; 401 otherwise.
pub(super) async fn require_caller(
    State(admin): State<Admin>,
    mut request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(bearer);
    let Some(given) = given else {
        return unauthorized(
            "Bearer realm=\"ferry-admin\"",
            "a bearer token is required: send `Authorization: Bearer <token>`",
        );
    };
    match admin.caller(given) {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            tracing::debug!("admin api: request with a wrong bearer token");
            unauthorized(
                "Bearer realm=\"ferry-admin\", error=\"invalid_token\"",
                "the bearer token is not valid",
            )
        }
    }
}

/// The credentials of `Bearer <token>` (the scheme in any case).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let space = header.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = header.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let credentials = rest.trim_ascii();
    (!credentials.is_empty()).then_some(credentials)
}

fn unauthorized(challenge: &'static str, message: &str) -> Response {
    let mut response = AdminError::Unauthenticated(message.to_owned()).into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        challenge.parse().expect("a valid header value"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }
}
