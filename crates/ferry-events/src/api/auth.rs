//! Bearer-token authentication of the API's routes.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{ApiConfigError, ErrorBody};

/// The secret a client sends as `Authorization: Bearer <token>`. Its
/// `Debug` output hides it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BearerToken(String);

impl BearerToken {
    /// A token of visible ASCII characters (no spaces), not empty.
    pub fn new(token: impl Into<String>) -> Result<Self, ApiConfigError> {
        let token = token.into();
        if token.is_empty() {
            return Err(ApiConfigError::EmptyToken);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiConfigError::TokenCharacters);
        }
        Ok(Self(token))
    }

    /// The secret itself, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, compared in constant time (only the
    /// length may show).
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(given).into()
    }
}

impl TryFrom<String> for BearerToken {
    type Error = ApiConfigError;

    fn try_from(token: String) -> Result<Self, Self::Error> {
        Self::new(token)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// Lets a request through only with the right token (when one is set).
pub(super) async fn require_token(
    State(token): State<Arc<Option<BearerToken>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token.as_ref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(bearer);
    match given {
        Some(given) if token.matches(given) => next.run(request).await,
        Some(_) => {
            tracing::debug!("events api: request with a wrong bearer token");
            unauthorized(
                "Bearer realm=\"ferry\", error=\"invalid_token\"",
                "the bearer token is not valid",
            )
        }
        None => unauthorized(
            "Bearer realm=\"ferry\"",
            "a bearer token is required: send `Authorization: Bearer <token>`",
        ),
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
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, challenge)],
        Json(ErrorBody {
            error: message.to_owned(),
            parameter: None,
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_hidden() {
        assert!(matches!(
            BearerToken::new(""),
            Err(ApiConfigError::EmptyToken)
        ));
        assert!(matches!(
            BearerToken::new("two words"),
            Err(ApiConfigError::TokenCharacters)
        ));
        let t = BearerToken::new("s3cret-Token_1").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(t.matches(b"s3cret-Token_1"));
        assert!(!t.matches(b"s3cret-Token_2"));
        assert!(!t.matches(b"s3cret"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn the_bearer_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
    }
}
