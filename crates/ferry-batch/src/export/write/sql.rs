//! `:name` placeholders, and database errors as failures.

use ferry_core::Failure;

use super::Param;

/// How a database spells strings, identifiers and comments.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `sql` with each `:name` outside strings, quoted identifiers and
/// comments replaced by what `place` writes (`::` casts are left alone).
pub(crate) fn translate(
    sql: &str,
    dialect: Dialect,
    mut place: impl FnMut(&str, &mut String) -> Result<(), Failure>,
) -> Result<String, Failure> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 32);
    let (mut i, mut last) = (0, 0);
    while i < b.len() {
        let next = b.get(i + 1).copied();
        i = match b[i] {
            b'\'' => {
                let escape_string = match dialect {
                    Dialect::Mysql => true,
                    Dialect::Sqlite => false,
                    Dialect::Postgres => {
                        i > 0 && matches!(b[i - 1], b'E' | b'e') && (i < 2 || !ident(b[i - 2]))
                    }
                };
                skip_quoted(b, i, b'\'', escape_string)
            }
            b'"' => skip_quoted(b, i, b'"', dialect == Dialect::Mysql),
            b'`' if dialect != Dialect::Postgres => skip_quoted(b, i, b'`', false),
            b'-' if next == Some(b'-') => line_end(b, i),
            b'#' if dialect == Dialect::Mysql => line_end(b, i),
            b'/' if next == Some(b'*') => find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2),
            b'$' if dialect == Dialect::Postgres && (i == 0 || !ident(b[i - 1])) => {
                dollar_quoted(b, i)
            }
            b':' if next == Some(b':') => i + 2,
            b':' if next.is_some_and(ident_start) => {
                let mut end = i + 1;
                while end < b.len() && ident(b[end]) {
                    end += 1;
                }
                out.push_str(&sql[last..i]);
                place(&sql[i + 1..end], &mut out)?;
                last = end;
                end
            }
            _ => i + 1,
        };
    }
    out.push_str(&sql[last..]);
    Ok(out)
}

fn line_end(b: &[u8], i: usize) -> usize {
    memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n)
}

fn find(b: &[u8], from: usize, what: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(what.len())
        .position(|w| w == what)
        .map(|p| from + p)
}

/// The position after the quoted text starting at `i`.
fn skip_quoted(b: &[u8], i: usize, quote: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
        } else if b[j] == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
            } else {
                return j + 1;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

/// PostgreSQL's `$tag$ … $tag$`; a `$` that opens none is passed over.
fn dollar_quoted(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    if j < b.len() && ident_start(b[j]) {
        while j < b.len() && ident(b[j]) && b[j] != b'$' {
            j += 1;
        }
    }
    if b.get(j) != Some(&b'$') {
        return i + 1;
    }
    let tag = &b[i..=j];
    find(b, j + 1, tag).map_or(b.len(), |e| e + tag.len())
}

/// The parameter named `name`, or a permanent failure naming it.
pub(crate) fn param<'p>(params: &'p [(String, Param)], name: &str) -> Result<&'p Param, Failure> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            let known: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
            Failure::permanent(format!(
                "the export query uses :{name}, which is not a parameter (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })
}

/// `p` as a PostgreSQL literal.
pub(crate) fn pg_literal(p: &Param, out: &mut String) -> Result<(), Failure> {
    match p {
        Param::Null => out.push_str("NULL"),
        Param::Int(v) => out.push_str(&format!("CAST({v} AS int8)")),
        Param::Text(s) => {
            if s.contains('\0') {
                return Err(Failure::permanent(
                    "a text parameter holds a NUL character, which PostgreSQL cannot take",
                ));
            }
            out.push('\'');
            out.push_str(&s.replace('\'', "''"));
            out.push('\'');
        }
        Param::Time(t) => {
            out.push_str("CAST('");
            crate::format::text::timestamp(t, out);
            out.push_str("' AS timestamptz)");
        }
    }
    Ok(())
}

/// A database error as a failure: the database's message kept; a query
/// the database refuses is permanent, a lost connection unavailable, a
/// conflict or lack of resources transient.
pub(crate) fn db_failure(what: &str, e: sqlx::Error) -> Failure {
    let failure = match &e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = format!("{what}: {}", d.message());
            match code.get(..2) {
                Some("08") => Failure::unavailable(message),
                Some("40" | "53" | "57") => Failure::transient(message),
                _ if code == "55P03" || code == "HY000" && d.message().contains("Lock wait") => {
                    Failure::transient(message)
                }
                _ => Failure::permanent(message),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::unavailable(format!("{what}: database unreachable")),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            Failure::permanent(format!("{what}: a value cannot be read"))
        }
        _ => Failure::transient(format!("{what}: database error")),
    };
    failure.with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str, dialect: Dialect) -> (String, Vec<String>) {
        let mut seen = Vec::new();
        let out = translate(sql, dialect, |name, out| {
            seen.push(name.to_owned());
            out.push('?');
            Ok(())
        })
        .unwrap();
        (out, seen)
    }

    #[test]
    fn replaces_placeholders_outside_quotes_and_comments() {
        let (out, seen) = names(
            "SELECT a::text, ':x', \":y\", $$ :z $$, $t$ :z $t$ -- :c\n FROM t /* :d */ WHERE b >= :start AND c < :end_1",
            Dialect::Postgres,
        );
        assert_eq!(seen, ["start", "end_1"]);
        assert!(out.ends_with("WHERE b >= ? AND c < ?"), "{out}");
        assert!(out.contains("a::text, ':x'"));
        let (_, seen) = names("SELECT E'\\':x', 'it''s :y', :z", Dialect::Postgres);
        assert_eq!(seen, ["z"]);
        let (_, seen) = names("SELECT '\\':x', `:y`, @v := 1 # :c\n, :w", Dialect::Mysql);
        assert_eq!(seen, ["w"]);
        let (_, seen) = names("SELECT a[1:2], x FROM t WHERE id > :last", Dialect::Sqlite);
        assert_eq!(seen, ["last"]);
    }

    #[test]
    fn literals_are_quoted() {
        let mut out = String::new();
        pg_literal(&Param::Text("it's".into()), &mut out).unwrap();
        assert_eq!(out, "'it''s'");
        assert!(pg_literal(&Param::Text("a\0".into()), &mut out).is_err());
    }
}
