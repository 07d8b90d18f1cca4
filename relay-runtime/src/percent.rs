//! Percent-encoding (RFC 3986 §2.1) as connection URLs and protocol headers use it. Decoding
//! works on bytes, so any text decodes without panicking: an escape that is not two hex digits
//! is kept as it is.

use std::fmt::Write as _;

/// Appends `s` with every byte for which `keep` is false written as `%XX`.
pub fn encode(out: &mut String, s: &str, keep: impl Fn(u8) -> bool) {
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `s` with its `%XX` escapes decoded; `Err` holds the bytes when they are not UTF-8.
pub fn decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bytes_and_keeps_what_is_no_escape() {
        assert_eq!(decode("Euro%20%E2%82%AC").unwrap(), "Euro €");
        assert_eq!(decode("100%").unwrap(), "100%");
        assert_eq!(decode("%zz%4").unwrap(), "%zz%4");
        // A multi-byte character right after `%` is not an escape (and no panic).
        assert_eq!(decode("%é%").unwrap(), "%é%");
        assert!(decode("%C0%A0").is_err(), "not UTF-8");
        let mut s = String::new();
        encode(&mut s, "a b/é", |b| b.is_ascii_alphanumeric());
        assert_eq!(s, "a%20b%2F%C3%A9");
    }
}
