//! Error causes: the fingerprint that groups failures of the same cause.

/// The longest cause, in characters (the MariaDB columns are
/// `VARCHAR(200)`).
pub const MAX_CAUSE_CHARS: usize = 160;

/// The fingerprint of an error message: failures whose errors differ only
/// in ids, numbers, hex strings and quoted values share it.
///
/// UUIDs become `<uuid>`, runs of 8 or more hex digits (with a digit among
/// them) `<hex>`, numbers (`3`, `1.5`, the `500` of `HTTP 500`, the `123`
/// of `/hooks/123`) `<n>`, and quoted strings (`'…'`, `"…"`, `` `…` ``)
/// keep their quotes around `…`; runs of whitespace become one space, and
/// the result is cut at [`MAX_CAUSE_CHARS`] characters.
///
/// ```
/// use ferry_store::admin::cause_of;
/// assert_eq!(
///     cause_of("HTTP 500 from http://10.0.0.7:8080/hooks/123 after 3s"),
///     cause_of("HTTP 503 from http://10.0.0.9:8080/hooks/98 after 12s"),
/// );
/// ```
pub fn cause_of(error: &str) -> String {
    let chars: Vec<char> = error.chars().collect();
    let mut out = String::with_capacity(error.len().min(4 * MAX_CAUSE_CHARS));
    let mut i = 0;
    let mut pending_space = false;
    while i < chars.len() && out.chars().count() < MAX_CAUSE_CHARS {
        let c = chars[i];
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            i += 1;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        let starts_word = i == 0 || !chars[i - 1].is_alphanumeric();
        if let Some(end) = quoted(&chars, i) {
            out.push(c);
            out.push('…');
            out.push(c);
            i = end + 1;
        } else if starts_word && is_uuid(&chars[i..]) {
            out.push_str("<uuid>");
            i += 36;
        } else if c.is_ascii_alphanumeric() && starts_word {
            let end = (i..chars.len())
                .find(|&j| !chars[j].is_alphanumeric())
                .unwrap_or(chars.len());
            let word = &chars[i..end];
            if word.len() >= 8
                && word.iter().all(char::is_ascii_hexdigit)
                && word.iter().any(char::is_ascii_digit)
            {
                out.push_str("<hex>");
                i = end;
            } else {
                i = push_word(&mut out, &chars, i, end);
            }
        } else if c.is_ascii_digit() {
            i = push_number(&mut out, &chars, i);
        } else {
            out.push(c);
            i += 1;
        }
    }
    out.chars().take(MAX_CAUSE_CHARS).collect()
}

/// Copies the word `chars[start..end]`, numbers in it replaced; returns
/// where it ends (past `end` when a number in it goes on: `12.5`).
fn push_word(out: &mut String, chars: &[char], start: usize, end: usize) -> usize {
    let mut i = start;
    while i < end {
        if chars[i].is_ascii_digit() {
            i = push_number(out, chars, i);
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    i
}

/// Writes `<n>` for the number at `i` (digits, optionally `.digits`);
/// returns where it ends.
fn push_number(out: &mut String, chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
    }
    out.push_str("<n>");
    i
}

/// The index of the quote closing the one at `i`, if `chars[i]` opens a
/// quoted string. A `'` right after a letter is an apostrophe (`can't`).
fn quoted(chars: &[char], i: usize) -> Option<usize> {
    let q = chars[i];
    if !matches!(q, '\'' | '"' | '`') {
        return None;
    }
    if q == '\'' && i > 0 && chars[i - 1].is_alphanumeric() {
        return None;
    }
    let mut j = i + 1;
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            c if c == q => return Some(j),
            _ => j += 1,
        }
    }
    None
}

/// Whether `chars` starts with a UUID (`8-4-4-4-12` hex digits) that is
/// not followed by more of a word.
fn is_uuid(chars: &[char]) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    if chars.len() < 36 {
        return false;
    }
    let mut j = 0;
    for (n, len) in GROUPS.iter().enumerate() {
        if !chars[j..j + len].iter().all(char::is_ascii_hexdigit) {
            return false;
        }
        j += len;
        if n < 4 {
            if chars[j] != '-' {
                return false;
            }
            j += 1;
        }
    }
    chars.get(36).is_none_or(|c| !c.is_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_failures_of_one_endpoint_share_a_cause() {
        let a = cause_of("HTTP 500 from http://orders.internal:8080/hooks/123 after 3s");
        let b = cause_of("HTTP 500 from http://orders.internal:8080/hooks/98765 after 12.5s");
        assert_eq!(a, b);
        assert_eq!(
            a,
            "HTTP <n> from http://orders.internal:<n>/hooks/<n> after <n>s"
        );
        let other_host = cause_of("HTTP 500 from http://billing.internal:8080/hooks/1 after 3s");
        assert_ne!(a, other_host, "another endpoint is another cause");
    }

    #[test]
    fn constraint_violations_share_a_cause_and_differ_from_timeouts() {
        let dup = |c: &str, k: u32| {
            cause_of(&format!(
                "error returned from database: duplicate key value violates unique constraint \"{c}\"\nDETAIL:  Key (id)=({k}) already exists."
            ))
        };
        assert_eq!(dup("orders_pkey", 1), dup("orders_email_key", 4711));
        assert_eq!(
            dup("x", 1),
            "error returned from database: duplicate key value violates unique constraint \"…\" DETAIL: Key (id)=(<n>) already exists."
        );
        let nats = |ms: u32, subject: &str| {
            cause_of(&format!(
                "nats: timed out after {ms}ms waiting for the ack of subject '{subject}' (stream ORDERS)"
            ))
        };
        assert_eq!(nats(5000, "orders.created"), nats(250, "orders.cancelled"));
        assert_ne!(nats(5000, "x"), dup("x", 1));
        assert_ne!(
            nats(5000, "x"),
            cause_of("HTTP 500 from http://h/hooks/1 after 3s")
        );
    }

    #[test]
    fn ids_and_hex_runs_are_placeholders() {
        let a = cause_of(
            "message 0190f5a2-7c1e-7b3a-9f00-0123456789ab refused: digest deadbeef01 mismatch",
        );
        let b = cause_of(
            "message 0190F5A2-7C1E-7B3A-9F00-FFFFFFFFFFFF refused: digest 0011aabbcc99 mismatch",
        );
        assert_eq!(a, b);
        assert_eq!(a, "message <uuid> refused: digest <hex> mismatch");
        // Words are not hex runs, apostrophes are not quotes.
        assert_eq!(
            cause_of("can't   decode\tpayload of deadline"),
            "can't decode payload of deadline"
        );
    }

    #[test]
    fn causes_are_cut_and_whitespace_collapsed() {
        let long = format!("  {}  ", "word ".repeat(100));
        let c = cause_of(&long);
        assert_eq!(c.chars().count(), MAX_CAUSE_CHARS);
        assert!(c.starts_with("word word"));
        assert!(!c.contains("  "));
        assert_eq!(
            cause_of("é".repeat(500).as_str()).chars().count(),
            MAX_CAUSE_CHARS
        );
        assert_eq!(cause_of(""), "");
    }
}
