//! Rows as the databases write them in JSON, read without losing
//! precision.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::change::Row;

/// Parses a JSON object the database wrote (a trigger's `json_object`,
/// `to_jsonb`), keeping every number exact: an integer that fits `i64`/`u64`
/// and a decimal that reads back as the same text stay numbers; any other
/// number (a `numeric(30,10)`, a 20-digit integer) becomes a string of
/// its digits rather than a rounded float.
pub fn parse_row(text: &str) -> Result<Row, serde_json::Error> {
    let raw: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_str(text)?;
    let mut row = Row::new();
    for (k, v) in raw {
        row.insert(k, exact(v.get())?);
    }
    Ok(row)
}

/// `value` as compact JSON appended to `out`: the same bytes as
/// `serde_json::to_value(value)?.to_string()`, without the copy. Only for
/// values that always serialize (rows, strings, numbers, times): a map
/// with non-string keys would be cut short.
pub(crate) fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing to a Vec cannot fail, nor can serializing these values.
    let written = serde_json::to_writer(out, value);
    debug_assert!(written.is_ok(), "{written:?}");
}

/// Text assembled from UTF-8 pieces and JSON.
pub(crate) fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// One JSON value, numbers kept exact at the top level (nested JSON —
/// a `json` column's content — is parsed as it is).
fn exact(text: &str) -> Result<Value, serde_json::Error> {
    let t = text.trim();
    let numeric = t.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if !numeric {
        return serde_json::from_str(t);
    }
    if let Ok(i) = t.parse::<i64>() {
        return Ok(i.into());
    }
    if let Ok(u) = t.parse::<u64>() {
        return Ok(u.into());
    }
    if significant_digits(t) <= 15 {
        if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Ok(Value::Number(n));
        }
    }
    Ok(Value::String(t.to_owned()))
}

/// Significant digits of a decimal's mantissa: up to 15 always survive the
/// round trip through an `f64`.
fn significant_digits(text: &str) -> usize {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0');
    let digits = if mantissa.contains('.') {
        digits.trim_end_matches('0')
    } else {
        digits
    };
    digits.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_stay_exact() {
        let row = parse_row(
            r#"{"i": 42, "big": 123456789012345678901234, "d": 12.50, "p": 1234567890123.123456789, "f": 0.1, "s": "x", "j": {"a": [1, 2.5]}, "n": null}"#,
        )
        .unwrap();
        assert_eq!(row["i"], 42);
        assert_eq!(row["big"], "123456789012345678901234");
        assert_eq!(row["d"], 12.5);
        assert_eq!(row["p"], "1234567890123.123456789");
        assert_eq!(row["f"], 0.1);
        assert_eq!(row["s"], "x");
        assert_eq!(row["j"]["a"][1], 2.5);
        assert!(row["n"].is_null());
    }

    #[test]
    fn not_an_object_is_an_error() {
        assert!(parse_row("[1]").is_err());
        assert!(parse_row("{").is_err());
    }
}
