//! A message payload as an operator's screen shows it.

/// A payload: as text when it is UTF-8, otherwise base64 (standard
/// alphabet, padded). Serialized as `{"encoding":"utf8","data":"…"}` or
/// `{"encoding":"base64","data":"…"}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "encoding", content = "data")]
pub enum PayloadView {
    /// The payload is valid UTF-8.
    #[serde(rename = "utf8")]
    Text(String),
    /// The payload is not UTF-8: its bytes in base64.
    #[serde(rename = "base64")]
    Base64(String),
}

impl PayloadView {
    /// The view of `bytes`.
    pub fn of(bytes: Vec<u8>) -> Self {
        match String::from_utf8(bytes) {
            Ok(text) => PayloadView::Text(text),
            Err(e) => PayloadView::Base64(base64(e.as_bytes())),
        }
    }
}

/// `bytes` in base64 (RFC 4648, standard alphabet, padded).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn text_or_base64_serialized_with_its_encoding() {
        let text = serde_json::to_value(PayloadView::of(b"{\"a\":1}".to_vec())).unwrap();
        assert_eq!(
            text,
            serde_json::json!({"encoding": "utf8", "data": "{\"a\":1}"})
        );
        let bin = serde_json::to_value(PayloadView::of(vec![0xff, 0x00, 0x61])).unwrap();
        assert_eq!(
            bin,
            serde_json::json!({"encoding": "base64", "data": "/wBh"})
        );
    }
}
