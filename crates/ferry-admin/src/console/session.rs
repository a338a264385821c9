//! The console's session and its CSRF protection.
//!
//! The session cookie holds the token the operator logged in with
//! (percent-encoded), HttpOnly so no script can read it, SameSite=Strict
//! so other sites' pages do not send it, Path=/ui. It is checked again on
//! every request through [`Admin::caller`](crate::Admin::caller).
//!
//! A change is accepted only from a POST whose form carries the session's
//! CSRF token — HMAC-SHA256 of the session token under a key drawn at
//! random when the process starts, compared in constant time — and whose
//! `Origin` (or, without one, `Referer`) names the same host as `Host`.

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, HOST, ORIGIN, REFERER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::query::Fields;
use super::Ui;
use crate::{AdminError, Caller};

/// The session cookie's name.
pub(crate) const COOKIE_NAME: &str = "ferry_session";
/// The hidden form field carrying the CSRF token.
pub(crate) const CSRF_FIELD: &str = "csrf";

/// The per-process key CSRF tokens are derived with.
pub(crate) struct CsrfKey([u8; 32]);

impl CsrfKey {
    /// A fresh random key: tokens of an earlier process are not accepted.
    pub(crate) fn random() -> Self {
        Self(rand::random())
    }

    /// The CSRF token of the session holding `token`, hex encoded.
    pub(crate) fn token_for(&self, token: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("hmac takes any key length");
        mac.update(token);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `given` is the CSRF token of the session holding `token`,
    /// compared in constant time.
    pub(crate) fn verify(&self, token: &[u8], given: &str) -> bool {
        self.token_for(token)
            .as_bytes()
            .ct_eq(given.as_bytes())
            .into()
    }
}

/// A logged-in operator.
pub(crate) struct Session {
    /// Who they are and what they may do.
    pub(crate) caller: Caller,
    /// The CSRF token every form of theirs carries.
    pub(crate) csrf: String,
    token: Vec<u8>,
}

impl Session {
    /// Whether `given` is this session's CSRF token.
    pub(crate) fn csrf_ok(&self, ui: &Ui, given: Option<&str>) -> bool {
        given.is_some_and(|g| ui.csrf.verify(&self.token, g))
    }
}

impl FromRequestParts<Ui> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Self, Response> {
        let token = session_token(&parts.headers).ok_or_else(to_login)?;
        let caller = ui.admin.caller(&token).ok_or_else(to_login)?;
        Ok(Self {
            caller,
            csrf: ui.csrf.token_for(&token),
            token,
        })
    }
}

/// The redirect to the login page.
pub(crate) fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

/// The token in the session cookie, if any.
pub(crate) fn session_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| {
            url::form_urlencoded::parse(format!("t={value}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned().into_bytes())
                .unwrap_or_default()
        })
        .filter(|t| !t.is_empty())
}

/// The `Set-Cookie` value opening a session with `token`.
pub(crate) fn open_cookie(token: &str) -> HeaderValue {
    let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={encoded}; HttpOnly; SameSite=Strict; Path=/ui"
    ))
    .expect("a percent-encoded token is a valid header value")
}

/// The `Set-Cookie` value closing the session.
pub(crate) fn close_cookie() -> HeaderValue {
    HeaderValue::from_static("ferry_session=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0")
}

/// Whether the request's `Origin` (or, without one, its `Referer`) names
/// the host it was sent to. A request with neither passes: browsers send
/// `Origin` with every POST, and the CSRF token still has to match.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(ORIGIN)
        .or_else(|| headers.get(REFERER))
        .map(|v| v.to_str().unwrap_or(""));
    match from {
        None => true,
        Some(from) => authority(from).is_some_and(|a| a.eq_ignore_ascii_case(host)),
    }
}

/// `host[:port]` of an absolute http(s) URL.
fn authority(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|a| !a.is_empty())
}

/// Why a form from another site is refused.
pub(crate) const CROSS_SITE: &str = "this form was sent from another site";

/// Checks a change: same origin, the session's CSRF token, and (when
/// `needs_admin`) a caller that may change things.
pub(crate) fn check_change(
    ui: &Ui,
    headers: &HeaderMap,
    session: &Session,
    form: &Fields,
    needs_admin: bool,
) -> Result<(), AdminError> {
    if !same_origin(headers) {
        return Err(AdminError::Forbidden(CROSS_SITE.to_owned()));
    }
    if !session.csrf_ok(ui, form.get(CSRF_FIELD)) {
        return Err(AdminError::Forbidden(
            "the form's CSRF token is missing or stale: reload the page and try again".to_owned(),
        ));
    }
    if needs_admin && !session.caller.may_change() {
        return Err(AdminError::Forbidden(format!(
            "the token `{}` is read-only: it may look but not change",
            session.caller.name
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_one_session_and_one_process() {
        let key = CsrfKey::random();
        let t = key.token_for(b"secret-a");
        assert_eq!(t.len(), 64);
        assert!(key.verify(b"secret-a", &t));
        assert!(!key.verify(b"secret-b", &t));
        assert!(!key.verify(b"secret-a", &t[..63]));
        assert!(!key.verify(b"secret-a", ""));
        assert!(!CsrfKey::random().verify(b"secret-a", &t));
    }

    #[test]
    fn the_cookie_round_trips_any_token() {
        let token = "a;b=c%d\"e,f\\g";
        let cookie = open_cookie(token);
        let value = cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; {value}")).unwrap(),
        );
        assert_eq!(session_token(&headers).unwrap(), token.as_bytes());
        headers.insert(COOKIE, HeaderValue::from_static("ferry_session="));
        assert!(session_token(&headers).is_none());
    }

    #[test]
    fn origin_must_name_the_host() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "ops.example:443"),
            ("referer", "https://ops.example:443/ui/dead?x=1")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "ops.example"),
            ("referer", "https://ops.example.evil/ui")
        ])));
        assert!(!same_origin(&headers(&[("origin", "http://a")])));
    }
}
