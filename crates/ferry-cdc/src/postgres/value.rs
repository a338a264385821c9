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

/// Property tests (issue 13): any text of any type is a JSON value, never
/// a panic; what PostgreSQL prints for the typed types reads back as the
/// value printed, everything else as the text exactly.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// The typed OIDs, some kept as text (numeric, bytea, timestamptz,
    /// text, uuid), and any other.
    fn type_oid() -> impl Strategy<Value = u32> {
        prop_oneof![
            4 => proptest::sample::select(vec![
                oid::BOOL, oid::INT8, oid::INT2, oid::INT4, oid::OID, oid::JSON,
                oid::FLOAT4, oid::FLOAT8, oid::JSONB, 1700, 17, 1184, 1114, 25, 2950,
            ]),
            1 => any::<u32>(),
        ]
    }

    /// JSON documents without floats (a float's digits are not kept by a
    /// JSON number; see `json::parse_row` for the exact reading).
    fn document() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A float as PostgreSQL 12+ prints it: the shortest exact digits,
    /// in exponent form with a sign when large or small.
    fn printed(f: f64) -> Vec<String> {
        let e = format!("{f:e}");
        let pg = match e.split_once('e') {
            Some((m, x)) if !x.starts_with('-') => format!("{m}e+{x}"),
            _ => e.clone(),
        };
        vec![f.to_string(), e, pg]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_text_of_any_type_is_a_value(type_oid in type_oid(), text in any::<String>()) {
            let value = from_text(type_oid, &text);
            // Typed or kept: nothing is dropped (a JSON document may be a
            // string itself).
            if let (Value::String(s), false) = (&value, matches!(type_oid, oid::JSON | oid::JSONB)) {
                prop_assert_eq!(s, &text);
            }
        }

        #[test]
        fn integers_read_back(n in any::<i64>(), type_oid in proptest::sample::select(vec![oid::INT2, oid::INT4, oid::INT8])) {
            prop_assert_eq!(from_text(type_oid, &n.to_string()), Value::from(n));
        }

        #[test]
        fn oids_read_back(n in any::<u32>()) {
            prop_assert_eq!(from_text(oid::OID, &n.to_string()), Value::from(n));
        }

        #[test]
        fn floats_read_back(f in any::<f64>(), type_oid in proptest::sample::select(vec![oid::FLOAT4, oid::FLOAT8])) {
            for text in printed(f) {
                let value = from_text(type_oid, &text);
                if f.is_finite() {
                    prop_assert_eq!(value.as_f64(), Some(f), "{}", text);
                } else {
                    prop_assert_eq!(value, Value::String(text));
                }
            }
        }

        #[test]
        fn special_floats_stay_text(text in proptest::sample::select(vec!["NaN", "Infinity", "-Infinity"])) {
            prop_assert_eq!(from_text(oid::FLOAT8, text), Value::String(text.to_owned()));
        }

        #[test]
        fn booleans_read_back(b in any::<bool>()) {
            prop_assert_eq!(from_text(oid::BOOL, if b { "t" } else { "f" }), Value::Bool(b));
        }

        #[test]
        fn json_documents_read_back(doc in document(), type_oid in proptest::sample::select(vec![oid::JSON, oid::JSONB])) {
            prop_assert_eq!(from_text(type_oid, &doc.to_string()), doc.clone());
            prop_assert_eq!(from_text(type_oid, &serde_json::to_string_pretty(&doc).unwrap()), doc);
        }

        #[test]
        fn numerics_keep_every_digit(int in "-?[0-9]{1,40}", frac in proptest::option::of("[0-9]{0,30}")) {
            let text = match frac {
                Some(f) => format!("{int}.{f}"),
                None => int,
            };
            prop_assert_eq!(from_text(1700, &text), Value::String(text));
        }

        #[test]
        fn bytea_hex_is_kept(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text: String = std::iter::once("\\x".to_owned())
                .chain(bytes.iter().map(|b| format!("{b:02x}")))
                .collect();
            prop_assert_eq!(from_text(17, &text), Value::String(text));
        }

        #[test]
        fn timestamps_are_kept(micros in -210_000_000_000_000_000i64..9_000_000_000_000_000) {
            let t = chrono::DateTime::from_timestamp_micros(micros).unwrap();
            for text in [
                t.format("%Y-%m-%d %H:%M:%S%.f+00").to_string(),
                t.naive_utc().format("%Y-%m-%d %H:%M:%S%.f").to_string(),
            ] {
                prop_assert_eq!(from_text(1184, &text), Value::String(text.clone()));
                prop_assert_eq!(from_text(1114, &text), Value::String(text));
            }
        }
    }
}
