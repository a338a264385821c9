//! Reading the console's query strings and forms, and answering when a
//! request cannot be served.
//!
//! Forms send every field, filled or not, so an empty value means "not
//! given" here (the JSON API, read by programs, is stricter). A malformed
//! value is a 400 page naming the field.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, Utc};

use super::layout;
use crate::AdminError;

/// A query string's or form's fields, empty ones left out.
pub(crate) struct Fields(Vec<(String, String)>);

impl Fields {
    /// Reads a raw (percent-encoded) query string or form body.
    pub(crate) fn parse(raw: &[u8]) -> Self {
        Self(
            url::form_urlencoded::parse(raw)
                .map(|(k, v)| (k.into_owned(), v.trim().to_owned()))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        )
    }

    /// From `RawQuery`.
    pub(crate) fn query(raw: Option<String>) -> Self {
        Self::parse(raw.unwrap_or_default().as_bytes())
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` as an owned string.
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    /// Every value of `name`, in order.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `name` parsed with `parse`; a failure is a 400 naming the field.
    pub(crate) fn parsed<T, E: std::fmt::Display>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, AdminError> {
        self.get(name)
            .map(|v| parse(v).map_err(|e| AdminError::bad(name, e.to_string())))
            .transpose()
    }

    /// A time: RFC 3339, or what a `datetime-local` input sends
    /// (`2026-12-07T09:30`, read as UTC).
    pub(crate) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, AdminError> {
        self.parsed(name, parse_time)
    }
}

/// A time in RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` as UTC.
pub(crate) fn parse_time(v: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, format) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "must be a time such as 2026-12-07T09:30 (UTC) or 2026-12-07T09:30:00Z, not `{v}`"
    ))
}

/// A time as a `datetime-local` input shows it (UTC).
pub(crate) fn time_input(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A query string of `pairs`, values percent-encoded, empty ones left out.
pub(crate) fn query_string<'a>(
    pairs: impl IntoIterator<Item = (&'a str, Option<String>)>,
) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.append_pair(k, &v);
        }
    }
    out.finish()
}

/// A path segment, percent-encoded (ids may hold `/`, `?` or spaces).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request the console could not serve, as a page.
pub(crate) struct PageError(pub(crate) AdminError);

impl From<AdminError> for PageError {
    fn from(e: AdminError) -> Self {
        Self(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = e.status();
        let (title, text) = match &e {
            AdminError::Store(source) => {
                tracing::warn!(error = %crate::overview::chain(source), "console: store failed");
                ("Store unavailable", e.to_string())
            }
            AdminError::Replay { .. } => ("Replay failed", crate::overview::chain(&e)),
            _ => (title_of(status), e.to_string()),
        };
        (status, layout::refusal(title, &text)).into_response()
    }
}

fn title_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "Bad request",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Conflict",
        _ => "Failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_are_not_given_and_bad_ones_are_named() {
        let f = Fields::parse(b"topic=&key=k%201&id=a&id=b&from=2026-12-07T09:30&to=yesterday");
        assert_eq!(f.get("topic"), None);
        assert_eq!(f.get("key"), Some("k 1"));
        assert_eq!(f.all("id"), ["a", "b"]);
        assert_eq!(
            f.time("from").unwrap().unwrap().to_rfc3339(),
            "2026-12-07T09:30:00+00:00"
        );
        match f.time("to").unwrap_err() {
            AdminError::BadParameter { parameter, .. } => assert_eq!(parameter, "to"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_time("2026-12-07T10:30:00+01:00").unwrap(),
            parse_time("2026-12-07T09:30").unwrap()
        );
    }

    #[test]
    fn segments_and_query_strings_are_encoded() {
        assert_eq!(segment("forwarder:a/b c:7"), "forwarder:a%2Fb%20c:7");
        assert_eq!(
            query_string([
                ("kind", Some("outbox".into())),
                ("name", None),
                ("cause", Some("HTTP <n> & co".into()))
            ]),
            "kind=outbox&cause=HTTP+%3Cn%3E+%26+co"
        );
    }
}
