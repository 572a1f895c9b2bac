//! Byte-level lexing shared by the start-line, URI and header-value parsers.
//!
//! Every function takes a slice and an index and returns an index: none of
//! them indexes out of bounds (they use `get`), so peer input cannot make
//! them panic.

use std::borrow::Cow;

use super::error::ValueError;

/// `token` characters of RFC 3261 §25.1 (note that `%` is one of them).
pub(crate) const fn is_token(b: u8) -> bool {
    matches!(
        b,
        b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'!'
            | b'%'
            | b'*'
            | b'_'
            | b'+'
            | b'`'
            | b'\''
            | b'~'
    )
}

/// Whitespace inside a header value. CR and LF only ever appear in a stored
/// value as part of a fold (the header-section parser guarantees it), so
/// treating them as whitespace is the same as unfolding.
pub(crate) const fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Characters accepted in an unquoted parameter value: `token`, plus what a
/// `host` (IPv6 references) needs, plus a few that real peers put there.
pub(crate) const fn is_param_value(b: u8) -> bool {
    is_token(b) || matches!(b, b':' | b'[' | b']' | b'/' | b'@' | b'?' | b'&' | b'$')
}

/// True when every byte is a token character and there is at least one.
pub(crate) fn is_token_str(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| is_token(*b))
}

/// Index of the first non-whitespace byte at or after `i` (or `s.len()`).
pub(crate) fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|b| is_ws(*b)) {
        i += 1;
    }
    i
}

/// Index just after the run of token characters starting at `i`.
pub(crate) fn token_end(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|b| is_token(*b)) {
        i += 1;
    }
    i
}

/// Index just after the run of bytes matching `pred` starting at `i`.
pub(crate) fn run_end(s: &[u8], mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
    while s.get(i).is_some_and(|b| pred(*b)) {
        i += 1;
    }
    i
}

/// `s[i]` must be `"`; returns the index just after the closing quote.
/// Backslash escapes the next byte (quoted-pair).
pub(crate) fn quoted_end(s: &[u8], i: usize) -> Result<usize, ValueError> {
    let mut j = i + 1;
    loop {
        match s.get(j) {
            None => return Err(ValueError::UnterminatedQuote),
            Some(b'"') => return Ok(j + 1),
            Some(b'\\') => {
                if j + 1 >= s.len() {
                    return Err(ValueError::UnterminatedQuote);
                }
                j += 2;
            }
            Some(_) => j += 1,
        }
    }
}

/// Removes the surrounding quotes of a quoted-string and resolves its
/// quoted-pairs. Text that is not quoted is returned as it is.
pub(crate) fn unquote(raw: &[u8]) -> Cow<'_, [u8]> {
    let inner = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => return Cow::Borrowed(raw),
    };
    if !inner.contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&next) = it.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// Unquotes and converts to text, replacing invalid UTF-8 with U+FFFD.
pub(crate) fn unquote_lossy(raw: &[u8]) -> Cow<'_, str> {
    match unquote(raw) {
        Cow::Borrowed(b) => String::from_utf8_lossy(b),
        Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
    }
}

/// `from_utf8` with our error type.
pub(crate) fn utf8(s: &[u8]) -> Result<&str, ValueError> {
    text(s).ok_or(ValueError::InvalidUtf8)
}

/// `from_utf8(s).ok()` with the check for ASCII (nearly every SIP token,
/// host and parameter) inlined: the short values of a message are turned
/// into text a few hundred times per call, and `from_utf8`'s own call and
/// set-up cost about 100 instructions each (callgrind, issue 11).
#[inline]
pub(crate) fn text(s: &[u8]) -> Option<&str> {
    if s.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    } else {
        std::str::from_utf8(s).ok()
    }
}

/// Parses an unsigned decimal that must fit in `max`. Leading zeros are
/// accepted (`0068`), signs and empty input are not.
pub(crate) fn parse_decimal(s: &[u8], max: u64) -> Result<u64, ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    let mut v: u64 = 0;
    for (offset, &b) in s.iter().enumerate() {
        if !b.is_ascii_digit() {
            return Err(ValueError::UnexpectedByte { offset, byte: b });
        }
        v = v.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))).ok_or(ValueError::NumberOutOfRange)?;
        if v > max {
            return Err(ValueError::NumberOutOfRange);
        }
    }
    Ok(v)
}

/// One `;name[=value]` parameter found by [`next_header_param`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawParam<'a> {
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
    /// Index just after the parameter (no trailing whitespace).
    pub end: usize,
}

/// Header parameters: `*( LWS ";" LWS name [ LWS "=" LWS value ] )`.
///
/// Returns `Ok(None)` when the next non-whitespace byte is not `;`.
pub(crate) fn next_header_param(s: &[u8], i: usize) -> Result<Option<RawParam<'_>>, ValueError> {
    let j = skip_ws(s, i);
    if s.get(j) != Some(&b';') {
        return Ok(None);
    }
    let name_start = skip_ws(s, j + 1);
    let name_end = token_end(s, name_start);
    if name_end == name_start {
        return Err(match s.get(name_start) {
            None | Some(b';' | b',') => ValueError::EmptyElement,
            Some(&byte) => ValueError::UnexpectedByte { offset: name_start, byte },
        });
    }
    let name = &s[name_start..name_end];
    let k = skip_ws(s, name_end);
    if s.get(k) != Some(&b'=') {
        return Ok(Some(RawParam { name, value: None, end: name_end }));
    }
    let v_start = skip_ws(s, k + 1);
    let v_end = match s.get(v_start) {
        Some(b'"') => quoted_end(s, v_start)?,
        _ => run_end(s, v_start, is_param_value),
    };
    if v_end == v_start {
        return Err(match s.get(v_start) {
            None => ValueError::UnexpectedEnd,
            Some(&byte) => ValueError::UnexpectedByte { offset: v_start, byte },
        });
    }
    Ok(Some(RawParam { name, value: Some(&s[v_start..v_end]), end: v_end }))
}

/// Validates a run of header parameters starting at `i` and returns the
/// index just after the last one (or `i` when there is none). Names and
/// values must be UTF-8 (they are exposed as `&str`).
pub(crate) fn scan_header_params(s: &[u8], i: usize) -> Result<usize, ValueError> {
    scan_header_params_finding(s, i, None).map(|(end, _)| end)
}

/// [`scan_header_params`], also giving the value of the first parameter
/// named `find` (ASCII case-insensitive; `None` when it has no value), as
/// [`Params::value`](super::Params::value) would: one pass where a tag
/// lookup took two (the scan, then the parameters scanned again).
pub(crate) fn scan_header_params_finding<'a>(
    s: &'a [u8],
    i: usize,
    find: Option<&str>,
) -> Result<(usize, Option<&'a str>), ValueError> {
    let mut end = i;
    let mut found = None;
    let mut seen = false;
    while let Some(p) = next_header_param(s, end)? {
        let name = utf8(p.name)?;
        let value = match p.value {
            Some(v) => Some(utf8(v)?),
            None => None,
        };
        if !seen && find.is_some_and(|f| f.eq_ignore_ascii_case(name)) {
            seen = true;
            found = value;
        }
        end = p.end;
    }
    Ok((end, found))
}

/// After one list element: skips whitespace and expects either the end of
/// the value or a comma. Returns the index where the next element starts,
/// or `None` at the end.
pub(crate) fn list_continue(s: &[u8], i: usize) -> Result<Option<usize>, ValueError> {
    let j = skip_ws(s, i);
    match s.get(j) {
        None => Ok(None),
        Some(b',') => {
            let k = skip_ws(s, j + 1);
            if k >= s.len() || s.get(k) == Some(&b',') { Err(ValueError::EmptyElement) } else { Ok(Some(k)) }
        }
        Some(&byte) => Err(ValueError::UnexpectedByte { offset: j, byte }),
    }
}

/// Trims whitespace (including folds) at both ends.
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    let start = skip_ws(s, 0);
    let mut end = s.len();
    while end > start && s.get(end - 1).is_some_and(|b| is_ws(*b)) {
        end -= 1;
    }
    s.get(start..end).unwrap_or_default()
}

/// Decodes `%HH` escapes in one pass: the output is never decoded again, so
/// `%2541` becomes `%41`, not `A`. A `%` that is not followed by two hex
/// digits is kept as it is.
pub fn pct_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%'
            && let (Some(h), Some(l)) = (s.get(i + 1).and_then(|c| hex_val(*c)), s.get(i + 2).and_then(|c| hex_val(*c)))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    Cow::Owned(out)
}

/// Value of one hex digit.
pub(crate) const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_limits() {
        assert_eq!(parse_decimal(b"0068", 255), Ok(68));
        assert_eq!(parse_decimal(b"256", 255), Err(ValueError::NumberOutOfRange));
        assert_eq!(parse_decimal(b"36893488147419103232", u64::from(u32::MAX)), Err(ValueError::NumberOutOfRange));
        assert!(parse_decimal(b"-1", 10).is_err());
        assert!(parse_decimal(b"", 10).is_err());
    }

    #[test]
    fn pct_decode_is_single_pass() {
        assert_eq!(&*pct_decode(b"v%61lue%25%34%31"), b"value%41");
        assert_eq!(&*pct_decode(b"%2B49"), b"+49");
        assert_eq!(&*pct_decode(b"%00"), b"\0");
        assert_eq!(&*pct_decode(b"100%"), b"100%");
        assert_eq!(&*pct_decode(b"%zz%4"), b"%zz%4");
    }

    #[test]
    fn unquote_pairs() {
        assert_eq!(&*unquote(br#""J Rosenberg \\\"""#), br#"J Rosenberg \""#);
        assert_eq!(&*unquote(b"plain"), b"plain");
        assert_eq!(&*unquote(b"\"a\\"), b"\"a\\");
    }

    #[test]
    fn header_params_with_lws() {
        let s = b" ;   tag    = 1918181833n ;x; y=\"q;,\"";
        let end = scan_header_params(s, 0).unwrap();
        assert_eq!(end, s.len());
        let p = next_header_param(s, 0).unwrap().unwrap();
        assert_eq!(p.name, b"tag");
        assert_eq!(p.value, Some(&b"1918181833n"[..]));
        assert_eq!(scan_header_params(b";;", 0), Err(ValueError::EmptyElement));
    }
}
