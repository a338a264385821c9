//! A column's text, as pgoutput sends it, to a JSON value.

use serde_json::{Number, Value};

/// Type OIDs (`pg_type.oid`) that map to something other than a string.
mod oid {
    pub const BOOL: u32 = 16;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const JSONB: u32 = 3802;
}

/// The value of a column of type `type_oid` whose text form is `text`.
///
/// Integers (`int2`, `int4`, `int8`, `oid`) become JSON numbers, floats
/// too unless they are `NaN` or infinite (then the text PostgreSQL printed);
/// `bool` a boolean; `json` and `jsonb` the parsed document. Everything
/// else, `numeric` included (a JSON number would be read back as a float
/// and lose digits), is the text exactly as PostgreSQL printed it. A value
/// that does not parse as its type says it would is kept as text rather
/// than dropped.
pub fn from_text(type_oid: u32, text: &str) -> Value {
    let parsed = match type_oid {
        oid::INT2 | oid::INT4 | oid::INT8 => text.parse::<i64>().ok().map(Value::from),
        oid::OID => text.parse::<u64>().ok().map(Value::from),
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        oid::BOOL => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        oid::JSON | oid::JSONB => serde_json::from_str(text).ok(),
        _ => None,
    };
    parsed.unwrap_or_else(|| Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_booleans_and_json_are_typed() {
        assert_eq!(from_text(oid::INT2, "-7"), json!(-7));
        assert_eq!(from_text(oid::INT8, "9223372036854775807"), json!(i64::MAX));
        assert_eq!(from_text(oid::OID, "4294967295"), json!(4294967295u64));
        assert_eq!(from_text(oid::FLOAT8, "1.5"), json!(1.5));
        assert_eq!(from_text(oid::BOOL, "t"), json!(true));
        assert_eq!(from_text(oid::BOOL, "f"), json!(false));
        assert_eq!(
            from_text(oid::JSONB, r#"{"a": [1, "x"]}"#),
            json!({"a": [1, "x"]})
        );
    }

    #[test]
    fn what_json_cannot_hold_stays_text() {
        assert_eq!(from_text(oid::FLOAT8, "NaN"), json!("NaN"));
        assert_eq!(from_text(oid::FLOAT4, "-Infinity"), json!("-Infinity"));
        // numeric: never a float.
        assert_eq!(
            from_text(1700, "12345678901234567890.0000000001"),
            json!("12345678901234567890.0000000001")
        );
        assert_eq!(
            from_text(1184, "2024-01-02 03:04:05+00"),
            json!("2024-01-02 03:04:05+00")
        );
        assert_eq!(from_text(17, "\\x00ff"), json!("\\x00ff"));
        // Not what the type promised: kept, not dropped.
        assert_eq!(from_text(oid::INT4, "x"), json!("x"));
        assert_eq!(from_text(oid::JSON, "{"), json!("{"));
    }
}
