//! MariaDB values as JSON, the same whether they come from the binary
//! log or from a snapshot's `SELECT`.
//!
//! | MariaDB type | JSON |
//! |---|---|
//! | `TINYINT` … `BIGINT` (`UNSIGNED` respected) | number |
//! | `FLOAT`, `DOUBLE` | number (`FLOAT` by its shortest decimal form) |
//! | `DECIMAL` | string, every digit kept (`"12.50"`) |
//! | `CHAR`, `VARCHAR`, `TEXT`, … | string (UTF-8; `latin1` columns decoded) |
//! | `JSON` (a `LONGTEXT` checked by `json_valid`) | the parsed JSON |
//! | `BINARY`, `VARBINARY`, `BLOB`, geometry | string, **base64** (standard alphabet, padded) |
//! | `DATE` | `"2024-05-01"` |
//! | `DATETIME` | `"2024-05-01T13:45:00"`, `.ffffff` when not zero |
//! | `TIMESTAMP` | `"2024-05-01T13:45:00Z"` (UTC), `.ffffff` when not zero |
//! | `TIME` | `"-838:59:59"` … `"838:59:59"`, `.ffffff` when not zero |
//! | `YEAR` | number |
//! | `BIT` | number |
//! | `ENUM` | the value's name |
//! | `SET` | the names, comma-separated (`"a,c"`) |
//! | `UUID`, `INET6`, `INET4` | their text (`"2001:db8::1"`) |
//! | `NULL` | `null` |

use base64::Engine as _;
use mysql_async::Value;
use serde_json::Value as Json;

/// How a column's values become JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// An integer of `bytes` bytes.
    Int {
        /// `UNSIGNED`.
        unsigned: bool,
        /// Its width (1, 2, 3, 4 or 8).
        bytes: u8,
    },
    /// `FLOAT` (single precision).
    Float,
    /// `DOUBLE`.
    Double,
    /// `DECIMAL`: a string.
    Decimal,
    /// Character data.
    Text {
        /// In `latin1`: the binary log holds its bytes as they are stored.
        latin1: bool,
    },
    /// A `LONGTEXT` with `CHECK (json_valid(…))`.
    Json,
    /// Bytes, as base64.
    Binary {
        /// `BINARY(n)`: the binary log drops trailing zero bytes, put back.
        width: Option<usize>,
    },
    /// `ENUM`, with its values in order.
    Enum(Vec<String>),
    /// `SET`, with its values in order.
    Set(Vec<String>),
    /// `DATE`.
    Date,
    /// `DATETIME`.
    DateTime,
    /// `TIMESTAMP` (UTC).
    Timestamp,
    /// `TIME`.
    Time,
    /// `YEAR`.
    Year,
    /// `BIT(n)`.
    Bit,
    /// `UUID`: the binary log holds its 16 bytes.
    Uuid,
    /// `INET6`: the binary log holds its 16 bytes.
    Inet6,
    /// `INET4`: the binary log holds its 4 bytes.
    Inet4,
    /// Anything else: text when it is UTF-8, else base64.
    Other,
}

/// Where a value was read: the binary log holds some types in their
/// storage form (an `ENUM`'s index, a `TIMESTAMP`'s epoch seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A rows event.
    Binlog,
    /// A query's result (binary protocol, session time zone UTC).
    Query,
}

impl Kind {
    /// The kind of a column as `information_schema.COLUMNS` describes it.
    pub fn of(data_type: &str, column_type: &str, charset: Option<&str>, json: bool) -> Kind {
        let unsigned = column_type.contains("unsigned");
        match data_type {
            "tinyint" => Kind::Int { unsigned, bytes: 1 },
            "smallint" => Kind::Int { unsigned, bytes: 2 },
            "mediumint" => Kind::Int { unsigned, bytes: 3 },
            "int" | "integer" => Kind::Int { unsigned, bytes: 4 },
            "bigint" => Kind::Int { unsigned, bytes: 8 },
            "float" => Kind::Float,
            "double" | "real" => Kind::Double,
            "decimal" | "numeric" => Kind::Decimal,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => {
                if json {
                    Kind::Json
                } else {
                    Kind::Text {
                        latin1: charset == Some("latin1"),
                    }
                }
            }
            "json" => Kind::Json,
            "binary" => Kind::Binary {
                width: parenthesized(column_type).and_then(|n| n.parse().ok()),
            },
            "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
            | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
            | "multipolygon" | "geometrycollection" => Kind::Binary { width: None },
            "enum" => Kind::Enum(quoted_list(column_type)),
            "set" => Kind::Set(quoted_list(column_type)),
            "date" => Kind::Date,
            "datetime" => Kind::DateTime,
            "timestamp" => Kind::Timestamp,
            "time" => Kind::Time,
            "year" => Kind::Year,
            "bit" => Kind::Bit,
            "uuid" => Kind::Uuid,
            "inet6" => Kind::Inet6,
            "inet4" => Kind::Inet4,
            _ => Kind::Other,
        }
    }

    /// `value` as JSON.
    pub fn to_json(&self, value: &Value, side: Side) -> Json {
        if matches!(value, Value::NULL) {
            return Json::Null;
        }
        match self {
            Kind::Int { unsigned, bytes } => int(value, *unsigned, *bytes),
            Kind::Float => match value {
                // The shortest decimal form, as MariaDB shows it, rather
                // than the widened binary value (1.1, not 1.100000023841858).
                Value::Float(f) => finite(f.to_string().parse().unwrap_or(f64::from(*f))),
                other => number(other),
            },
            Kind::Double => number(value),
            Kind::Decimal => match value {
                Value::Bytes(b) => Json::String(decimal(&String::from_utf8_lossy(b))),
                other => number(other),
            },
            Kind::Text { latin1 } => match value {
                Value::Bytes(b) if *latin1 && side == Side::Binlog => {
                    Json::String(b.iter().map(|&c| char::from(c)).collect())
                }
                Value::Bytes(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
                other => number(other),
            },
            Kind::Json => match value {
                Value::Bytes(b) => serde_json::from_slice(b)
                    .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(b).into_owned())),
                other => number(other),
            },
            Kind::Binary { width } => match value {
                Value::Bytes(b) => {
                    let mut bytes = b.clone();
                    if let Some(w) = *width {
                        if bytes.len() < w {
                            bytes.resize(w, 0);
                        }
                    }
                    Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                other => number(other),
            },
            Kind::Enum(names) => match (value, side) {
                (Value::Int(i), _) => enum_name(names, *i as u64),
                (Value::UInt(i), _) => enum_name(names, *i),
                (Value::Bytes(b), _) => Json::String(String::from_utf8_lossy(b).into_owned()),
                (other, _) => number(other),
            },
            Kind::Set(names) => match (value, side) {
                (Value::Bytes(b), Side::Binlog) => {
                    let mut bits = 0u64;
                    for (i, byte) in b.iter().take(8).enumerate() {
                        bits |= u64::from(*byte) << (8 * i);
                    }
                    set_names(names, bits)
                }
                (Value::Int(i), _) => set_names(names, *i as u64),
                (Value::UInt(i), _) => set_names(names, *i),
                (Value::Bytes(b), Side::Query) => {
                    Json::String(String::from_utf8_lossy(b).into_owned())
                }
                (other, _) => number(other),
            },
            Kind::Date => match value {
                Value::Date(y, m, d, ..) => Json::String(format!("{y:04}-{m:02}-{d:02}")),
                other => text_or_number(other),
            },
            Kind::DateTime => match value {
                Value::Date(y, m, d, h, i, s, us) => {
                    Json::String(date_time(*y, *m, *d, *h, *i, *s, *us))
                }
                other => text_or_number(other),
            },
            Kind::Timestamp => timestamp(value),
            Kind::Time => match value {
                Value::Time(neg, days, h, m, s, us) => {
                    let hours = u64::from(*days) * 24 + u64::from(*h);
                    let sign = if *neg { "-" } else { "" };
                    Json::String(format!("{sign}{hours:02}:{m:02}:{s:02}{}", fraction(*us)))
                }
                other => text_or_number(other),
            },
            Kind::Year => match value {
                // The binary log writes YEAR as 1900 + its byte, so the
                // zero year (0000) reads as 1900, which YEAR cannot hold.
                Value::Bytes(b) => match String::from_utf8_lossy(b).parse::<u64>() {
                    Ok(1900) => Json::from(0),
                    Ok(y) => Json::from(y),
                    Err(_) => text_or_number(value),
                },
                other => number(other),
            },
            Kind::Bit => match value {
                Value::Bytes(b) => {
                    let mut n = 0u64;
                    for byte in b.iter().rev().take(8).rev() {
                        n = (n << 8) | u64::from(*byte);
                    }
                    Json::from(n)
                }
                other => number(other),
            },
            Kind::Uuid | Kind::Inet6 | Kind::Inet4 => match (value, side) {
                (Value::Bytes(b), Side::Binlog) => {
                    address(self, b).unwrap_or_else(|| Kind::Other.to_json(value, side))
                }
                (other, _) => Kind::Other.to_json(other, side),
            },
            Kind::Other => match value {
                Value::Bytes(b) => match std::str::from_utf8(b) {
                    Ok(s) => Json::String(s.to_owned()),
                    Err(_) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
                },
                other => text_or_number(other),
            },
        }
    }
}

/// A `UUID`, `INET6` or `INET4` from its bytes, as MariaDB shows it.
fn address(kind: &Kind, b: &[u8]) -> Option<Json> {
    let text = match kind {
        Kind::Uuid => {
            let b: [u8; 16] = b.try_into().ok()?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
        Kind::Inet6 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string(),
        Kind::Inet4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?).to_string(),
        _ => return None,
    };
    Some(Json::String(text))
}

/// The text between the first `(` and the next `)`: `binary(16)` → `16`.
fn parenthesized(column_type: &str) -> Option<&str> {
    let start = column_type.find('(')? + 1;
    let end = start + column_type[start..].find(')')?;
    Some(&column_type[start..end])
}

/// The quoted values of `enum('a','b''c')` or `set(…)`, unescaped.
pub fn quoted_list(column_type: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(start) = column_type.find('(') else {
        return out;
    };
    let mut chars = column_type[start + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                }
                c => value.push(c),
            }
        }
        out.push(value);
    }
    out
}

fn int(value: &Value, unsigned: bool, bytes: u8) -> Json {
    match *value {
        // A signed reading of an unsigned column (metadata that did not
        // say so): its bits, as the unsigned number they are.
        Value::Int(i) if unsigned && i < 0 => {
            let mask = if bytes >= 8 {
                u64::MAX
            } else {
                (1u64 << (8 * u32::from(bytes))) - 1
            };
            Json::from(i as u64 & mask)
        }
        Value::Int(i) => Json::from(i),
        Value::UInt(u) => Json::from(u),
        ref other => number(other),
    }
}

fn finite(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

/// A value of a type the column's kind did not expect, as best it can.
fn number(value: &Value) -> Json {
    match *value {
        Value::NULL => Json::Null,
        Value::Int(i) => Json::from(i),
        Value::UInt(u) => Json::from(u),
        Value::Float(f) => finite(f64::from(f)),
        Value::Double(d) => finite(d),
        ref other => text_or_number(other),
    }
}

fn text_or_number(value: &Value) -> Json {
    match value {
        Value::Bytes(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Value::Date(y, m, d, h, i, s, us) => Json::String(date_time(*y, *m, *d, *h, *i, *s, *us)),
        Value::Time(neg, days, h, m, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            Json::String(format!("{sign}{hours:02}:{m:02}:{s:02}{}", fraction(*us)))
        }
        other => number(other),
    }
}

fn fraction(us: u32) -> String {
    if us == 0 {
        String::new()
    } else {
        format!(".{us:06}")
    }
}

fn date_time(y: u16, m: u8, d: u8, h: u8, i: u8, s: u8, us: u32) -> String {
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{i:02}:{s:02}{}", fraction(us))
}

/// A `TIMESTAMP`: epoch seconds (`"1714571100"`, `"1714571100.250000"`)
/// in the binary log, a UTC date and time from a query.
fn timestamp(value: &Value) -> Json {
    let epoch = |secs: i64, us: u32| -> Json {
        if secs == 0 && us == 0 {
            // MariaDB's zero timestamp.
            return Json::String("0000-00-00T00:00:00Z".to_owned());
        }
        match chrono::DateTime::from_timestamp(secs, us * 1000) {
            Some(t) => Json::String(format!(
                "{}{}Z",
                t.format("%Y-%m-%dT%H:%M:%S"),
                fraction(us)
            )),
            None => Json::String(secs.to_string()),
        }
    };
    match value {
        Value::Bytes(b) => {
            let text = String::from_utf8_lossy(b);
            let (secs, frac) = text.split_once('.').unwrap_or((&text, ""));
            let us = format!("{frac:0<6}")
                .get(..6)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0);
            match secs.parse() {
                Ok(secs) => epoch(secs, us),
                Err(_) => Json::String(text.into_owned()),
            }
        }
        Value::Int(secs) => epoch(*secs, 0),
        Value::UInt(secs) => epoch(i64::try_from(*secs).unwrap_or(i64::MAX), 0),
        Value::Date(y, m, d, h, i, s, us) => {
            Json::String(format!("{}Z", date_time(*y, *m, *d, *h, *i, *s, *us)))
        }
        other => text_or_number(other),
    }
}

/// A decimal in one canonical form, whichever side wrote it: no leading
/// zeros but one, no negative zero (`0000000012.50` → `12.50`).
pub fn decimal(text: &str) -> String {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let zero = int == "0" && frac.chars().all(|c| c == '0');
    let mut out = String::with_capacity(text.len());
    if negative && !zero {
        out.push('-');
    }
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

fn enum_name(names: &[String], index: u64) -> Json {
    // Index 0 is the empty string MariaDB stores for an invalid value.
    let name = usize::try_from(index)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| names.get(i));
    Json::String(name.cloned().unwrap_or_default())
}

fn set_names(names: &[String], bits: u64) -> Json {
    let chosen: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 64 && bits & (1u64 << i) != 0)
        .map(|(_, n)| n.as_str())
        .collect();
    Json::String(chosen.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    #[test]
    fn kinds_from_information_schema() {
        assert_eq!(
            Kind::of("int", "int(10) unsigned", None, false),
            Kind::Int {
                unsigned: true,
                bytes: 4
            }
        );
        assert_eq!(
            Kind::of("binary", "binary(4)", None, false),
            Kind::Binary { width: Some(4) }
        );
        assert_eq!(
            Kind::of("longtext", "longtext", Some("utf8mb4"), true),
            Kind::Json
        );
        assert_eq!(
            Kind::of("enum", "enum('a','it''s','b\\\\c')", Some("utf8mb4"), false),
            Kind::Enum(vec!["a".into(), "it's".into(), "b\\c".into()])
        );
    }

    #[test]
    fn integers_respect_unsigned() {
        let k = Kind::Int {
            unsigned: true,
            bytes: 1,
        };
        assert_eq!(k.to_json(&Value::Int(-1), Side::Binlog), json!(255));
        let k = Kind::Int {
            unsigned: true,
            bytes: 8,
        };
        assert_eq!(k.to_json(&Value::Int(-1), Side::Binlog), json!(u64::MAX));
        assert_eq!(
            k.to_json(&Value::UInt(u64::MAX), Side::Query),
            json!(u64::MAX)
        );
        let k = Kind::Int {
            unsigned: false,
            bytes: 8,
        };
        assert_eq!(
            k.to_json(&Value::Int(i64::MIN), Side::Query),
            json!(i64::MIN)
        );
    }

    #[test]
    fn decimals_keep_every_digit_in_one_form() {
        assert_eq!(decimal("0000000012.50"), "12.50");
        assert_eq!(decimal("-0.00"), "0.00");
        assert_eq!(decimal("-0.50"), "-0.50");
        assert_eq!(
            decimal("12345678901234567890.123456789"),
            "12345678901234567890.123456789"
        );
        assert_eq!(decimal("0"), "0");
        assert_eq!(
            Kind::Decimal.to_json(&bytes("0000000012.50"), Side::Binlog),
            json!("12.50")
        );
    }

    #[test]
    fn times_read_alike_from_both_sides() {
        let ts = Kind::Timestamp;
        assert_eq!(
            ts.to_json(&bytes("1714571100.250000"), Side::Binlog),
            json!("2024-05-01T13:45:00.250000Z")
        );
        assert_eq!(
            ts.to_json(&Value::Date(2024, 5, 1, 13, 45, 0, 250_000), Side::Query),
            json!("2024-05-01T13:45:00.250000Z")
        );
        assert_eq!(
            ts.to_json(&bytes("1714571100"), Side::Binlog),
            json!("2024-05-01T13:45:00Z")
        );
        assert_eq!(
            Kind::Time.to_json(&Value::Time(true, 1, 2, 3, 4, 0), Side::Binlog),
            json!("-26:03:04")
        );
        assert_eq!(
            Kind::Date.to_json(&Value::Date(2024, 5, 1, 0, 0, 0, 0), Side::Binlog),
            json!("2024-05-01")
        );
        assert_eq!(Kind::Year.to_json(&bytes("1900"), Side::Binlog), json!(0));
        assert_eq!(
            Kind::Year.to_json(&bytes("2024"), Side::Binlog),
            json!(2024)
        );
        assert_eq!(
            Kind::Year.to_json(&Value::Int(2024), Side::Query),
            json!(2024)
        );
    }

    #[test]
    fn enums_sets_bits_and_bytes() {
        let names = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let e = Kind::Enum(names.clone());
        assert_eq!(e.to_json(&Value::Int(2), Side::Binlog), json!("b"));
        assert_eq!(e.to_json(&Value::Int(0), Side::Binlog), json!(""));
        assert_eq!(e.to_json(&Value::Int(9), Side::Binlog), json!(""));
        assert_eq!(e.to_json(&bytes("b"), Side::Query), json!("b"));
        let s = Kind::Set(names);
        assert_eq!(
            s.to_json(&Value::Bytes(vec![5]), Side::Binlog),
            json!("a,c")
        );
        assert_eq!(s.to_json(&bytes("a,c"), Side::Query), json!("a,c"));
        assert_eq!(
            Kind::Bit.to_json(&Value::Bytes(vec![1, 2]), Side::Binlog),
            json!(258)
        );
        let b = Kind::Binary { width: Some(4) };
        assert_eq!(
            b.to_json(&Value::Bytes(vec![1]), Side::Binlog),
            json!("AQAAAA==")
        );
        assert_eq!(
            Kind::Text { latin1: true }.to_json(&Value::Bytes(vec![0xe9]), Side::Binlog),
            json!("é")
        );
        assert_eq!(
            Kind::Json.to_json(&bytes(r#"{"a":[1,2]}"#), Side::Binlog),
            json!({"a": [1, 2]})
        );
        assert_eq!(
            Kind::Float.to_json(&Value::Float(1.1), Side::Binlog),
            json!(1.1)
        );
        assert_eq!(Kind::Double.to_json(&Value::NULL, Side::Binlog), Json::Null);
        let uuid: Vec<u8> = (0..16).map(|i| i * 0x11).collect();
        assert_eq!(
            Kind::Uuid.to_json(&Value::Bytes(uuid), Side::Binlog),
            json!("00112233-4455-6677-8899-aabbccddeeff")
        );
        let mut v6 = vec![0u8; 16];
        v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v6[15] = 1;
        assert_eq!(
            Kind::Inet6.to_json(&Value::Bytes(v6), Side::Binlog),
            json!("2001:db8::1")
        );
        assert_eq!(
            Kind::Inet4.to_json(&Value::Bytes(vec![10, 1, 2, 3]), Side::Binlog),
            json!("10.1.2.3")
        );
        assert_eq!(
            Kind::Inet4.to_json(&bytes("10.1.2.3"), Side::Query),
            json!("10.1.2.3")
        );
    }
}

/// Property tests (issue 13): any value of any kind, from either side, is
/// JSON, never a panic; the values MariaDB writes read back as themselves.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-z']{0,4}", 0..70)
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            (
                any::<bool>(),
                proptest::sample::select(vec![1u8, 2, 3, 4, 8])
            )
                .prop_map(|(unsigned, bytes)| Kind::Int { unsigned, bytes }),
            Just(Kind::Float),
            Just(Kind::Double),
            Just(Kind::Decimal),
            any::<bool>().prop_map(|latin1| Kind::Text { latin1 }),
            Just(Kind::Json),
            proptest::option::of(0usize..300).prop_map(|width| Kind::Binary { width }),
            names().prop_map(Kind::Enum),
            names().prop_map(Kind::Set),
            Just(Kind::Date),
            Just(Kind::DateTime),
            Just(Kind::Timestamp),
            Just(Kind::Time),
            Just(Kind::Year),
            Just(Kind::Bit),
            Just(Kind::Uuid),
            Just(Kind::Inet6),
            Just(Kind::Inet4),
            Just(Kind::Other),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::NULL),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            "-?[0-9]{0,20}(\\.[0-9]{0,8})?".prop_map(|s| Value::Bytes(s.into_bytes())),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<f32>().prop_map(Value::Float),
            any::<f64>().prop_map(Value::Double),
            any::<(u16, u8, u8, u8, u8, u8, u32)>()
                .prop_map(|(y, m, d, h, i, s, us)| Value::Date(y, m, d, h, i, s, us)),
            any::<(bool, u32, u8, u8, u8, u32)>()
                .prop_map(|(n, d, h, m, s, us)| Value::Time(n, d, h, m, s, us)),
        ]
    }

    fn side() -> impl Strategy<Value = Side> {
        prop_oneof![Just(Side::Binlog), Just(Side::Query)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_column_description_is_a_kind(
            data_type in "[a-z]{0,10}|\\PC{0,10}",
            column_type in "\\PC{0,30}",
            charset in proptest::option::of("[a-z0-9]{0,8}"),
            json in any::<bool>(),
        ) {
            let _ = Kind::of(&data_type, &column_type, charset.as_deref(), json);
            let _ = quoted_list(&column_type);
        }

        #[test]
        fn any_value_of_any_kind_is_json(kind in kind(), value in value(), side in side()) {
            let json = kind.to_json(&value, side);
            if matches!(value, Value::NULL) {
                prop_assert!(json.is_null());
            }
        }

        #[test]
        fn integers_read_back(n in any::<i64>(), u in any::<u64>(), bytes in proptest::sample::select(vec![1u8, 2, 3, 4, 8])) {
            prop_assert_eq!(Kind::Int { unsigned: false, bytes }.to_json(&Value::Int(n), Side::Binlog), Json::from(n));
            prop_assert_eq!(Kind::Int { unsigned: true, bytes }.to_json(&Value::UInt(u), Side::Query), Json::from(u));
            // A signed reading of an unsigned column: its bits.
            let width = u32::from(bytes) * 8;
            let masked = if width == 64 { u } else { u & ((1u64 << width) - 1) };
            let signed = if width == 64 { masked as i64 } else { ((masked << (64 - width)) as i64) >> (64 - width) };
            prop_assert_eq!(Kind::Int { unsigned: true, bytes }.to_json(&Value::Int(signed), Side::Binlog), Json::from(masked));
        }

        #[test]
        fn floats_read_back(f in any::<f32>(), d in any::<f64>()) {
            let float = Kind::Float.to_json(&Value::Float(f), Side::Binlog);
            let double = Kind::Double.to_json(&Value::Double(d), Side::Binlog);
            if f.is_finite() {
                prop_assert_eq!(float.as_f64().map(|x| x as f32), Some(f));
            } else {
                prop_assert!(float.is_null());
            }
            if d.is_finite() {
                prop_assert_eq!(double.as_f64(), Some(d));
            } else {
                prop_assert!(double.is_null());
            }
        }

        #[test]
        fn text_reads_back(s in any::<String>(), side in side()) {
            let got = Kind::Text { latin1: false }.to_json(&Value::Bytes(s.clone().into_bytes()), side);
            prop_assert_eq!(got, Json::String(s));
        }

        #[test]
        fn latin1_reads_back(s in "[\\u{0}-\\u{ff}]{0,20}") {
            let bytes: Vec<u8> = s.chars().map(|c| c as u8).collect();
            let got = Kind::Text { latin1: true }.to_json(&Value::Bytes(bytes), Side::Binlog);
            prop_assert_eq!(got, Json::String(s));
        }

        #[test]
        fn bytes_read_back_as_base64(b in proptest::collection::vec(any::<u8>(), 0..64), width in proptest::option::of(0usize..80), side in side()) {
            let got = Kind::Binary { width }.to_json(&Value::Bytes(b.clone()), side);
            let decoded = base64::engine::general_purpose::STANDARD.decode(got.as_str().unwrap()).unwrap();
            let mut want = b;
            if let Some(w) = width {
                if want.len() < w {
                    want.resize(w, 0);
                }
            }
            prop_assert_eq!(decoded, want);
        }

        #[test]
        fn decimals_keep_every_digit(negative in any::<bool>(), int in "[1-9][0-9]{0,30}|0", frac in proptest::option::of("[0-9]{1,30}"), zeros in 0usize..5) {
            let sign = if negative && !(int == "0" && frac.as_deref().is_none_or(|f| f.chars().all(|c| c == '0'))) { "-" } else { "" };
            let canonical = match &frac {
                Some(f) => format!("{sign}{int}.{f}"),
                None => format!("{sign}{int}"),
            };
            let padded = format!("{}{}{}", if negative { "-" } else { "" }, "0".repeat(zeros), &canonical[sign.len()..]);
            prop_assert_eq!(decimal(&padded), canonical.clone());
            prop_assert_eq!(decimal(&canonical), canonical.clone());
            let json = Kind::Decimal.to_json(&Value::Bytes(padded.into_bytes()), Side::Binlog);
            prop_assert_eq!(json, Json::String(canonical));
        }

        #[test]
        fn dates_and_times_read_back(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999, side in side()) {
            let t = chrono::DateTime::from_timestamp_micros(micros).unwrap().naive_utc();
            use chrono::{Datelike, Timelike};
            let us = t.and_utc().timestamp_subsec_micros();
            let value = Value::Date(t.year() as u16, t.month() as u8, t.day() as u8, t.hour() as u8, t.minute() as u8, t.second() as u8, us);
            let date = Kind::Date.to_json(&value, side);
            prop_assert_eq!(chrono::NaiveDate::parse_from_str(date.as_str().unwrap(), "%Y-%m-%d").unwrap(), t.date());
            let dt = Kind::DateTime.to_json(&value, side);
            prop_assert_eq!(chrono::NaiveDateTime::parse_from_str(dt.as_str().unwrap(), "%Y-%m-%dT%H:%M:%S%.f").unwrap(), t);
            // A TIMESTAMP from the binary log: epoch seconds and fraction.
            if micros > 0 {
                let epoch = if us == 0 { format!("{}", micros / 1_000_000) } else { format!("{}.{us:06}", micros / 1_000_000) };
                let ts = Kind::Timestamp.to_json(&Value::Bytes(epoch.clone().into_bytes()), Side::Binlog);
                let back = chrono::DateTime::parse_from_rfc3339(ts.as_str().unwrap()).unwrap();
                prop_assert_eq!(back.timestamp_micros(), micros, "{}", epoch);
            }
        }

        #[test]
        fn times_read_back(negative in any::<bool>(), hours in 0u32..839, m in 0u8..60, s in 0u8..60, us in 0u32..1_000_000) {
            let value = Value::Time(negative, hours / 24, (hours % 24) as u8, m, s, us);
            let got = Kind::Time.to_json(&value, Side::Binlog);
            let sign = if negative { "-" } else { "" };
            let frac = if us == 0 { String::new() } else { format!(".{us:06}") };
            prop_assert_eq!(got, Json::String(format!("{sign}{hours:02}:{m:02}:{s:02}{frac}")));
        }

        #[test]
        fn addresses_read_back(b in any::<[u8; 16]>()) {
            let uuid = Kind::Uuid.to_json(&Value::Bytes(b.to_vec()), Side::Binlog);
            prop_assert_eq!(uuid::Uuid::parse_str(uuid.as_str().unwrap()).unwrap().into_bytes(), b);
            let v6 = Kind::Inet6.to_json(&Value::Bytes(b.to_vec()), Side::Binlog);
            prop_assert_eq!(v6.as_str().unwrap().parse::<std::net::Ipv6Addr>().unwrap().octets(), b);
            let four: [u8; 4] = b[..4].try_into().unwrap();
            let v4 = Kind::Inet4.to_json(&Value::Bytes(four.to_vec()), Side::Binlog);
            prop_assert_eq!(v4.as_str().unwrap().parse::<std::net::Ipv4Addr>().unwrap().octets(), four);
        }

        #[test]
        fn enums_and_sets_read_back(names in proptest::collection::btree_set("[a-z]{1,4}", 1..64), pick in any::<proptest::sample::Index>(), bits in any::<u64>()) {
            let names: Vec<String> = names.into_iter().collect();
            let i = pick.index(names.len());
            prop_assert_eq!(Kind::Enum(names.clone()).to_json(&Value::UInt(i as u64 + 1), Side::Binlog), Json::String(names[i].clone()));
            let bits = bits & (u64::MAX >> (64 - names.len()));
            let chosen: Vec<&str> = names.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, n)| n.as_str()).collect();
            let set = Kind::Set(names.clone()).to_json(&Value::Bytes(bits.to_le_bytes().to_vec()), Side::Binlog);
            prop_assert_eq!(set, Json::String(chosen.join(",")));
        }

        #[test]
        fn bits_read_back(n in any::<u64>(), width in 1usize..=8) {
            let n = if width == 8 { n } else { n & ((1u64 << (8 * width)) - 1) };
            let bytes = n.to_be_bytes()[8 - width..].to_vec();
            prop_assert_eq!(Kind::Bit.to_json(&Value::Bytes(bytes), Side::Binlog), Json::from(n));
        }
    }
}
