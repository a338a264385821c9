//! Query strings read strictly: a parameter that is unknown, given twice
//! (unless it may repeat), empty or malformed is a 400 naming it.

use chrono::{DateTime, Utc};

use crate::AdminError;

/// `limit` when a request has none.
pub(crate) const DEFAULT_LIMIT: u32 = 50;
/// The largest `limit` accepted.
pub(crate) const MAX_LIMIT: u32 = 1000;

/// The parameters of one request, checked against what its route takes.
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Reads `raw` (still percent-encoded); `known` lists what the route
    /// takes, `repeatable` those of them that may come more than once.
    pub(crate) fn parse(
        raw: Option<&str>,
        known: &[&str],
        repeatable: &[&str],
    ) -> Result<Self, AdminError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let (name, value) = (name.into_owned(), value.into_owned());
            if !known.contains(&name.as_str()) {
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                return Err(AdminError::bad(
                    &name,
                    format!("unknown parameter; this route takes: {known}"),
                ));
            }
            if !repeatable.contains(&name.as_str()) && pairs.iter().any(|(n, _)| *n == name) {
                return Err(AdminError::bad(&name, "given twice"));
            }
            if value.is_empty() {
                return Err(AdminError::bad(&name, "empty; leave it out instead"));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, if given.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, comma lists split.
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.trim().to_owned())
            .collect()
    }

    /// `name` read with `parse`; a failure names the parameter.
    pub(crate) fn get<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, AdminError> {
        self.text(name)
            .map(|v| parse(v).map_err(|m| AdminError::bad(name, m)))
            .transpose()
    }

    /// `limit`, 1..=1000, 50 when not given.
    pub(crate) fn limit(&self) -> Result<u32, AdminError> {
        Ok(self.get("limit", limit)?.unwrap_or(DEFAULT_LIMIT))
    }

    /// A timestamp parameter (RFC 3339).
    pub(crate) fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, AdminError> {
        self.get(name, time)
    }

    /// A sequence-number parameter (a positive integer).
    pub(crate) fn seq(&self, name: &str) -> Result<Option<i64>, AdminError> {
        self.get(name, seq)
    }
}

/// A page size, 1..=1000.
pub(crate) fn limit(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number from 1 to {MAX_LIMIT}, not `{v}`"
        )),
    }
}

/// An RFC 3339 timestamp.
pub(crate) fn time(v: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("must be an RFC 3339 time such as 2026-12-07T09:30:00Z, not `{v}`"))
}

/// A positive 64-bit integer.
pub(crate) fn seq(v: &str) -> Result<i64, String> {
    match v.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("must be a positive whole number, not `{v}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(e: AdminError) -> String {
        match e {
            AdminError::BadParameter { parameter, .. } => parameter,
            other => panic!("not a bad parameter: {other:?}"),
        }
    }

    #[test]
    fn unknown_repeated_and_empty_parameters_are_named() {
        let known = ["limit", "kind"];
        let e = Params::parse(Some("limit=5&colour=red"), &known, &[])
            .err()
            .unwrap();
        assert_eq!(parameter(e), "colour");
        let e = Params::parse(Some("limit=5&limit=6"), &known, &[])
            .err()
            .unwrap();
        assert_eq!(parameter(e), "limit");
        let e = Params::parse(Some("kind="), &known, &["kind"])
            .err()
            .unwrap();
        assert_eq!(parameter(e), "kind");
        let p = Params::parse(Some("kind=outbox,task&kind=consumer"), &known, &["kind"]).unwrap();
        assert_eq!(p.list("kind"), ["outbox", "task", "consumer"]);
    }

    #[test]
    fn limits_times_and_sequence_numbers() {
        let p = |q: &str| Params::parse(Some(q), &["limit", "from", "before"], &[]).unwrap();
        assert_eq!(p("").limit().unwrap(), DEFAULT_LIMIT);
        assert_eq!(p("limit=1000").limit().unwrap(), 1000);
        for bad in ["limit=0", "limit=1001", "limit=x", "limit=-1"] {
            assert_eq!(parameter(p(bad).limit().err().unwrap()), "limit");
        }
        assert!(p("from=2026-12-07T09:30:00Z")
            .time("from")
            .unwrap()
            .is_some());
        assert_eq!(
            parameter(p("from=yesterday").time("from").err().unwrap()),
            "from"
        );
        assert_eq!(p("before=7").seq("before").unwrap(), Some(7));
        assert_eq!(
            parameter(p("before=0").seq("before").err().unwrap()),
            "before"
        );
    }
}
