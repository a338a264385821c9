//! One policy for showing a URL in logs, errors and debug output.

/// Query keys whose values are masked: any key containing one of these
/// (case-insensitive), e.g. `password`, `api_key`, `access_token`, `sig`.
const SECRET_KEYS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "sig",
    "credential",
    "session",
];

/// `url` fit for a log line or an error message: the password of its user
/// information (or the user name when it comes without a password: a
/// token, as in `https://TOKEN@host`) and the value of every query
/// parameter whose name looks secret (see `SECRET_KEYS`: password, token,
/// key, auth, signature, code, …) become `***`; everything else is kept so the URL still says where it
/// points. A URL that does not parse loses all of its user information and
/// its whole query, since nothing tells which part is which.
///
/// ```
/// use ferry_core::redact_url;
/// assert_eq!(redact_url("postgres://bob:s3cret@db/app"), "postgres://bob:***@db/app");
/// assert_eq!(
///     redact_url("https://hooks.example/in?token=abc&team=7"),
///     "https://hooks.example/in?token=***&team=7"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return redact_text(url);
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    } else if !u.username().is_empty() {
        let _ = u.set_username("***");
    }
    if u.query().is_some_and(|q| !q.is_empty()) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let value = if looks_secret(&k) {
                    "***".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

/// [`redact_url`] for a URL that does not parse: masks, as plain text, any
/// user information (everything between `://` and the last `@`) and the query.
fn redact_text(url: &str) -> String {
    let (head, rest) = match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if start + 3 <= at => {
            (format!("{}***", &url[..start + 3]), &url[at..])
        }
        _ => (String::new(), url),
    };
    match rest.split_once('?') {
        Some((before, _)) => format!("{head}{before}?***"),
        None => format!("{head}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url as redact;

    #[test]
    fn masks_passwords_and_secret_looking_query_values() {
        assert_eq!(
            redact("postgres://bob:secret@h/db"),
            "postgres://bob:***@h/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(
            redact("postgres://h/db?password=s3cret&sslmode=require"),
            "postgres://h/db?password=***&sslmode=require"
        );
        assert_eq!(
            redact("https://h/in?X-Amz-Signature=abc&API_KEY=k&auth_token=t&team=7"),
            "https://h/in?X-Amz-Signature=***&API_KEY=***&auth_token=***&team=7"
        );
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("redis://:pw@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            redact("nats://127.0.0.1:4222?stream=FERRY&subject_prefix=ferry."),
            "nats://127.0.0.1:4222?stream=FERRY&subject_prefix=ferry."
        );
    }

    #[test]
    fn masks_what_it_cannot_tell_apart_in_urls_that_do_not_parse() {
        assert!(!redact("postgres://u:secret@h:99999/db").contains("secret"));
        assert!(!redact("postgres://u:p@ss:secret@h:99999/db").contains("secret"));
        assert_eq!(
            redact("postgres://u:secret@h:99999/db"),
            "postgres://***@h:99999/db"
        );
        assert!(!redact("postgres://u:se?cret@h:99999/db").contains("cret"));
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact("postgres://h:99999/db?password=secret"),
            "postgres://h:99999/db?***"
        );
    }
}
