//! The query string of `GET /v1/events`, read strictly: a parameter that is
//! unknown, repeated, empty or out of range is a 400 that names it.

use std::time::Duration;

use ferry_store::event_store::EventQuery;

/// The parameters `GET /v1/events` takes.
pub const PARAMETERS: [&str; 6] = [
    "offset",
    "limit",
    "type",
    "source_type",
    "source_id",
    "wait",
];

/// A query parameter the API refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadParameter {
    /// The parameter.
    pub parameter: String,
    /// What is wrong with it.
    pub message: String,
}

fn bad(parameter: &str, message: String) -> BadParameter {
    BadParameter {
        parameter: parameter.to_owned(),
        message,
    }
}

/// A parsed request: the store query and how long to hold an empty page.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// What to read.
    pub query: EventQuery,
    /// How long to wait for events when there are none yet.
    pub wait: Duration,
}

/// The limits a request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// `limit` when the request has none.
    pub default_limit: u32,
    /// The largest `limit` accepted.
    pub max_limit: u32,
    /// The largest `wait` accepted.
    pub max_wait: Duration,
}

/// Reads a raw (still percent-encoded) query string.
pub fn parse(raw: &str, bounds: Bounds) -> Result<Request, BadParameter> {
    let mut seen: Vec<String> = Vec::new();
    let mut query = EventQuery {
        offset: 0,
        limit: bounds.default_limit,
        ..EventQuery::default()
    };
    let mut wait = Duration::ZERO;
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        let name = name.into_owned();
        if !PARAMETERS.contains(&name.as_str()) {
            return Err(bad(
                &name,
                format!(
                    "unknown parameter `{name}`; known: {}",
                    PARAMETERS.join(", ")
                ),
            ));
        }
        if seen.contains(&name) {
            return Err(bad(&name, format!("parameter `{name}` is given twice")));
        }
        seen.push(name.clone());
        match name.as_str() {
            "offset" => query.offset = offset(&value)?,
            "limit" => query.limit = limit(&value, bounds.max_limit)?,
            "wait" => wait = wait_for(&value, bounds.max_wait)?,
            filter => {
                if value.is_empty() {
                    return Err(bad(
                        filter,
                        format!("`{filter}` must not be empty; leave it out to match every event"),
                    ));
                }
                let slot = match filter {
                    "type" => &mut query.event_type,
                    "source_type" => &mut query.source_type,
                    _ => &mut query.source_id,
                };
                *slot = Some(value.into_owned());
            }
        }
    }
    Ok(Request { query, wait })
}

fn offset(value: &str) -> Result<i64, BadParameter> {
    match value.parse::<i64>() {
        Ok(n) if n >= 0 && !value.starts_with('+') => Ok(n),
        _ => Err(bad(
            "offset",
            format!("`offset` must be a whole number of at least 0, got `{value}`"),
        )),
    }
}

fn limit(value: &str, max: u32) -> Result<u32, BadParameter> {
    match value.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) && !value.starts_with('+') => Ok(n),
        _ => Err(bad(
            "limit",
            format!("`limit` must be a whole number from 1 to {max}, got `{value}`"),
        )),
    }
}

/// `5s`, `500ms`, `1m`, or a bare number of seconds.
fn wait_for(value: &str, max: Duration) -> Result<Duration, BadParameter> {
    let parsed = match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(value).ok(),
    };
    match parsed {
        Some(d) if d <= max => Ok(d),
        _ => Err(bad(
            "wait",
            format!(
                "`wait` must be a duration such as `5s` or `500ms`, at most {}, got `{value}`",
                humantime::format_duration(max)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        default_limit: 100,
        max_limit: 1000,
        max_wait: Duration::from_secs(30),
    };

    #[test]
    fn defaults_and_every_parameter() {
        let r = parse("", BOUNDS).unwrap();
        assert_eq!(
            (r.query.offset, r.query.limit, r.wait),
            (0, 100, Duration::ZERO)
        );
        let r = parse(
            "offset=12&limit=1000&type=order.cancelled&source_type=order&source_id=a%20b&wait=1500ms",
            BOUNDS,
        )
        .unwrap();
        assert_eq!(r.query.offset, 12);
        assert_eq!(r.query.limit, 1000);
        assert_eq!(r.query.event_type.as_deref(), Some("order.cancelled"));
        assert_eq!(r.query.source_type.as_deref(), Some("order"));
        assert_eq!(r.query.source_id.as_deref(), Some("a b"));
        assert_eq!(r.wait, Duration::from_millis(1500));
        assert_eq!(
            parse("wait=3", BOUNDS).unwrap().wait,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, parameter) in [
            ("offset=-1", "offset"),
            ("offset=abc", "offset"),
            ("offset=", "offset"),
            ("offset=1.5", "offset"),
            ("offset=+3", "offset"),
            ("offset=99999999999999999999", "offset"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=-5", "limit"),
            ("limit=ten", "limit"),
            ("type=", "type"),
            ("source_id=", "source_id"),
            ("wait=forever", "wait"),
            ("wait=31s", "wait"),
            ("ofset=1", "ofset"),
            ("offset=1&offset=2", "offset"),
        ] {
            let e = parse(query, BOUNDS).unwrap_err();
            assert_eq!(e.parameter, parameter, "{query}");
            assert!(
                e.message.contains(&format!("`{parameter}`")),
                "{query}: {e}"
            );
        }
    }
}
