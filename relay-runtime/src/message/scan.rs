//! A structural scanner for JSON text PostgreSQL produced (`json`/`jsonb` output, valid by
//! construction): finds where values, array elements and object entries begin and end, in one
//! pass, without building values. Strings are skipped with `memchr`; nothing is unescaped.
//! Text from anywhere else (a broker message) is validated by serde_json instead.

use memchr::memchr2;

/// Where the structure of the text is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    pub at: usize,
    pub expected: &'static str,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed JSON at byte {}: expected {}", self.at, self.expected)
    }
}

type Scan<T> = Result<T, ScanError>;

fn err<T>(at: usize, expected: &'static str) -> Scan<T> {
    Err(ScanError { at, expected })
}

pub fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// `Ok` when only whitespace follows the value that ended at `end`.
pub fn nothing_after(b: &[u8], end: usize) -> Scan<()> {
    if skip_ws(b, end) == b.len() {
        Ok(())
    } else {
        err(end, "the end of the text")
    }
}

/// The end (exclusive) of the string whose opening quote is at `i`.
fn string_end(b: &[u8], i: usize) -> Scan<usize> {
    let mut j = i + 1;
    while j <= b.len() {
        match memchr2(b'"', b'\\', &b[j..]) {
            Some(k) if b[j + k] == b'"' => return Ok(j + k + 1),
            Some(k) => j += k + 2, // an escape: skip the escaped character
            None => break,
        }
    }
    err(i, "the end of a string")
}

/// The end (exclusive) of the value starting at `i`.
pub fn value_end(b: &[u8], i: usize) -> Scan<usize> {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            err(i, "the end of an object or array")
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t' | b':') {
                j += 1;
            }
            if j == i {
                return err(i, "a value");
            }
            Ok(j)
        }
        None => err(i, "a value"),
    }
}

/// Calls `entry(key, value)` with the text ranges of each entry of the object at `i` (key with
/// its quotes); returns the object's end.
pub fn object_entries(
    b: &[u8],
    i: usize,
    mut entry: impl FnMut(std::ops::Range<usize>, std::ops::Range<usize>),
) -> Scan<usize> {
    if b.get(i) != Some(&b'{') {
        return err(i, "an object");
    }
    let mut j = skip_ws(b, i + 1);
    if b.get(j) == Some(&b'}') {
        return Ok(j + 1);
    }
    loop {
        if b.get(j) != Some(&b'"') {
            return err(j, "a key");
        }
        let key_end = string_end(b, j)?;
        let colon = skip_ws(b, key_end);
        if b.get(colon) != Some(&b':') {
            return err(colon, "':'");
        }
        let v = skip_ws(b, colon + 1);
        let v_end = value_end(b, v)?;
        entry(j..key_end, v..v_end);
        j = skip_ws(b, v_end);
        match b.get(j) {
            Some(b',') => j = skip_ws(b, j + 1),
            Some(b'}') => return Ok(j + 1),
            _ => return err(j, "',' or '}'"),
        }
    }
}

/// Calls `element(start)` for each element of the array at `i`; `element` returns the
/// element's end. Returns the array's end.
pub fn array_elements(b: &[u8], i: usize, mut element: impl FnMut(usize) -> Scan<usize>) -> Scan<usize> {
    if b.get(i) != Some(&b'[') {
        return err(i, "an array");
    }
    let mut j = skip_ws(b, i + 1);
    if b.get(j) == Some(&b']') {
        return Ok(j + 1);
    }
    loop {
        j = skip_ws(b, element(j)?);
        match b.get(j) {
            Some(b',') => j = skip_ws(b, j + 1),
            Some(b']') => return Ok(j + 1),
            _ => return err(j, "',' or ']'"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_entries_and_elements() {
        let t = br#"[ {"a" : "x\"}]", "b":[1,{"c":2}], "d":-1.5e3} , true ,"s\\"]"#;
        let mut spans = Vec::new();
        let end = array_elements(t, 0, |s| {
            let e = value_end(t, s)?;
            spans.push(std::str::from_utf8(&t[s..e]).unwrap());
            Ok(e)
        })
        .unwrap();
        assert_eq!(end, t.len());
        assert_eq!(spans, vec![r#"{"a" : "x\"}]", "b":[1,{"c":2}], "d":-1.5e3}"#, "true", r#""s\\""#]);
        let obj = spans[0].as_bytes();
        let mut entries = Vec::new();
        object_entries(obj, 0, |k, v| {
            entries.push((std::str::from_utf8(&obj[k]).unwrap(), std::str::from_utf8(&obj[v]).unwrap()))
        })
        .unwrap();
        assert_eq!(entries, vec![(r#""a""#, r#""x\"}]""#), (r#""b""#, "[1,{\"c\":2}]"), (r#""d""#, "-1.5e3")]);
    }

    #[test]
    fn broken_structure_is_an_error() {
        assert!(value_end(br#""abc"#, 0).is_err());
        assert!(value_end(b"[1, 2", 0).is_err());
        assert!(object_entries(br#"{"a" 1}"#, 0, |_, _| {}).is_err());
        assert!(object_entries(br#"{"a": 1,}"#, 0, |_, _| {}).is_err());
        assert!(array_elements(b"[1 2]", 0, |s| value_end(b"[1 2]", s)).is_err());
        assert_eq!(object_entries(b"{ }", 0, |_, _| {}), Ok(3));
        assert_eq!(array_elements(b"[ ]", 0, Ok), Ok(3));
    }
}
