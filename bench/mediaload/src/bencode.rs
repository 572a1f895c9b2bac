//! Bencode, as rtpengine's ng control protocol speaks it: integers, byte
//! strings, lists and dictionaries (keys sorted when encoding). The decoder
//! takes untrusted bytes: bounded depth, no panics, errors instead.

use std::fmt;

/// A bencoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `i<n>e`
    Int(i64),
    /// `<len>:<bytes>`
    Bytes(Vec<u8>),
    /// `l...e`
    List(Vec<Value>),
    /// `d...e`, in the order given (encoding sorts by key).
    Dict(Vec<(Vec<u8>, Value)>),
}

impl Value {
    /// A string value.
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A list of strings.
    pub fn strs(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::str(s)).collect())
    }

    /// A dictionary from string keys.
    pub fn dict(items: Vec<(&str, Value)>) -> Value {
        Value::Dict(items.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
    }

    /// The value under `key` of a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The bytes of a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// A byte string as UTF-8 text (lossy).
    pub fn as_text(&self) -> Option<String> {
        self.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(n) => {
                out.push(b'i');
                out.extend_from_slice(n.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::List(items) => {
                out.push(b'l');
                for v in items {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(items) => {
                let mut sorted: Vec<&(Vec<u8>, Value)> = items.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'd');
                for (k, v) in sorted {
                    Value::Bytes(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// Why bytes are not one bencoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Where it went wrong.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bencode: {} at byte {}", self.what, self.offset)
    }
}

const MAX_DEPTH: usize = 32;

/// Decodes exactly one value filling `buf`.
pub fn decode(buf: &[u8]) -> Result<Value, DecodeError> {
    let (v, end) = decode_at(buf, 0, 0)?;
    if end != buf.len() {
        return Err(DecodeError { offset: end, what: "trailing bytes" });
    }
    Ok(v)
}

fn decode_at(buf: &[u8], i: usize, depth: usize) -> Result<(Value, usize), DecodeError> {
    let err = |offset, what| DecodeError { offset, what };
    if depth > MAX_DEPTH {
        return Err(err(i, "nested too deep"));
    }
    match buf.get(i) {
        None => Err(err(i, "unexpected end")),
        Some(b'i') => {
            let end = find(buf, i + 1, b'e').ok_or(err(i, "unterminated integer"))?;
            let text = std::str::from_utf8(&buf[i + 1..end]).map_err(|_| err(i, "integer not ASCII"))?;
            let n = text.parse::<i64>().map_err(|_| err(i, "bad integer"))?;
            Ok((Value::Int(n), end + 1))
        }
        Some(b'l') => {
            let mut items = Vec::new();
            let mut j = i + 1;
            loop {
                match buf.get(j) {
                    Some(b'e') => return Ok((Value::List(items), j + 1)),
                    None => return Err(err(j, "unterminated list")),
                    Some(_) => {
                        let (v, next) = decode_at(buf, j, depth + 1)?;
                        items.push(v);
                        j = next;
                    }
                }
            }
        }
        Some(b'd') => {
            let mut items = Vec::new();
            let mut j = i + 1;
            loop {
                match buf.get(j) {
                    Some(b'e') => return Ok((Value::Dict(items), j + 1)),
                    None => return Err(err(j, "unterminated dictionary")),
                    Some(_) => {
                        let (k, next) = decode_at(buf, j, depth + 1)?;
                        let Value::Bytes(k) = k else { return Err(err(j, "dictionary key not a string")) };
                        let (v, next) = decode_at(buf, next, depth + 1)?;
                        items.push((k, v));
                        j = next;
                    }
                }
            }
        }
        Some(b'0'..=b'9') => {
            let colon = find(buf, i, b':').ok_or(err(i, "string without ':'"))?;
            let text = std::str::from_utf8(&buf[i..colon]).map_err(|_| err(i, "length not ASCII"))?;
            let len = text.parse::<usize>().map_err(|_| err(i, "bad length"))?;
            let start = colon + 1;
            let end = start.checked_add(len).filter(|&e| e <= buf.len()).ok_or(err(i, "string past the end"))?;
            Ok((Value::Bytes(buf[start..end].to_vec()), end))
        }
        Some(_) => Err(err(i, "unexpected byte")),
    }
}

fn find(buf: &[u8], from: usize, b: u8) -> Option<usize> {
    buf.get(from..)?.iter().position(|&c| c == b).map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_sorted_and_round_trips() {
        let v = Value::dict(vec![
            ("command", Value::str("offer")),
            ("ICE", Value::str("remove")),
            ("replace", Value::strs(&["origin", "session-connection"])),
            ("n", Value::Int(-3)),
        ]);
        let mut out = Vec::new();
        v.encode_into(&mut out);
        assert_eq!(out, b"d3:ICE6:remove7:command5:offer1:ni-3e7:replacel6:origin18:session-connectionee".to_vec());
        let back = decode(&out).expect("decodes");
        assert_eq!(back.get("command").and_then(Value::as_text).as_deref(), Some("offer"));
        assert_eq!(back.get("n"), Some(&Value::Int(-3)));
    }

    #[test]
    fn rtpengine_reply() {
        let r = decode(b"d3:sdp5:v=0\r\n6:result2:oke").expect("decodes");
        assert_eq!(r.get("result").and_then(Value::as_bytes), Some(&b"ok"[..]));
        assert_eq!(r.get("sdp").and_then(Value::as_bytes), Some(&b"v=0\r\n"[..]));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in
            [&b""[..], b"d", b"i12", b"99:abc", b"d3:abce", b"di1ei2ee", b"x", b"4294967296999999999999:a", b"le extra"]
        {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "l".repeat(100) + &"e".repeat(100);
        assert!(decode(deep.as_bytes()).is_err());
    }
}
