//! Canonical value texts ([`crate::ValueKind`]) from Rust values, for
//! sources whose driver hands over typed values.
//!
//! Each function appends to `out`. The texts are PostgreSQL's: a Float is
//! the shortest text that reads back as the same value, in fixed notation
//! when its decimal exponent is from -4 up to (not including) 15 (6 for a
//! 4-byte float), else `d.ddde±XX`, as PostgreSQL prints `float8` and
//! `float4` (`1e+20`, `1.5e-07`, `-0`, `NaN`, `Infinity`, `-Infinity`).

use std::fmt::Write;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// An 8-byte float.
pub fn float8(v: f64, out: &mut String) {
    if !special(v.is_nan(), v.is_infinite(), v < 0.0, out) {
        shortest(&format!("{v:e}"), 15, out);
    }
}

/// A 4-byte float, with the digits that read back as the same 4-byte value.
pub fn float4(v: f32, out: &mut String) {
    if !special(v.is_nan(), v.is_infinite(), v < 0.0, out) {
        shortest(&format!("{v:e}"), 6, out);
    }
}

fn special(nan: bool, infinite: bool, negative: bool, out: &mut String) -> bool {
    if nan {
        out.push_str("NaN");
    } else if infinite {
        out.push_str(if negative { "-Infinity" } else { "Infinity" });
    }
    nan || infinite
}

/// Rust's shortest `{:e}` text (`-1.5e-7`) in PostgreSQL's layout.
fn shortest(text: &str, fixed_below: i32, out: &mut String) {
    let (mantissa, exp) = text.split_once('e').unwrap_or((text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if (-4..fixed_below).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            for _ in 0..(-exp - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

/// A point in time: `2026-12-07T02:00:00.000000Z`.
pub fn timestamp(v: &DateTime<Utc>, out: &mut String) {
    datetime(&v.naive_utc(), out);
    out.push('Z');
}

/// A time without a zone: `2026-12-07T02:00:00.000000`.
pub fn datetime(v: &NaiveDateTime, out: &mut String) {
    date(&v.date(), out);
    out.push('T');
    time(&v.time(), out);
}

/// A calendar date: `2026-12-07`.
pub fn date(v: &NaiveDate, out: &mut String) {
    let _ = write!(out, "{}", v.format("%Y-%m-%d"));
}

/// A time of day: `02:00:00.000000`.
pub fn time(v: &NaiveTime, out: &mut String) {
    let _ = write!(out, "{}", v.format("%H:%M:%S%.6f"));
}

/// Bytes: `\x` and lower-case hex.
pub fn bytes(v: &[u8], out: &mut String) {
    out.push_str("\\x");
    out.push_str(&hex::encode(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f8(v: f64) -> String {
        let mut s = String::from("x,");
        float8(v, &mut s);
        s.split_off(2)
    }

    fn f4(v: f32) -> String {
        let mut s = String::new();
        float4(v, &mut s);
        s
    }

    #[test]
    fn floats_as_postgresql_prints_them() {
        // Expected texts are PostgreSQL 15's output of the same values.
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(1e14), "100000000000000");
        assert_eq!(f8(123456789012345.6), "123456789012345.6");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(0.00001234), "1.234e-05");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(1e300), "1e+300");
        assert_eq!(f8(5e-324), "5e-324");
        assert_eq!(f8(1.5e-7), "1.5e-07");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(-1.25), "-1.25");
        assert_eq!(f4(1234567.0), "1.234567e+06");
        assert_eq!(f4(123456.0), "123456");
        assert_eq!(f4(12345.5), "12345.5");
        assert_eq!(f4(0.00001), "1e-05");
        assert_eq!(f4(0.1), "0.1");
        assert_eq!(f4(f32::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn floats_read_back_the_same() {
        for v in [
            0.1f64,
            1.0 / 3.0,
            2e-310,
            f64::MAX,
            f64::MIN_POSITIVE,
            -7.25e22,
        ] {
            assert_eq!(f8(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn times_with_microseconds() {
        let t = DateTime::parse_from_rfc3339("2026-12-07T02:03:04.000005+01:00")
            .unwrap()
            .with_timezone(&Utc);
        let mut s = String::new();
        timestamp(&t, &mut s);
        assert_eq!(s, "2026-12-07T01:03:04.000005Z");
        s.clear();
        bytes(&[0, 0xab], &mut s);
        assert_eq!(s, "\\x00ab");
    }
}
