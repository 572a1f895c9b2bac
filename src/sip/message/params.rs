//! `;name=value` parameter lists, as borrowed views over their raw text.
//!
//! The text was validated when the URI or header value was parsed, so the
//! views only re-scan it: no allocation, and the raw text (with its escapes
//! and case) is what the caller sees.

use std::borrow::Cow;
use std::fmt;

use super::scan::{next_header_param, pct_decode, text, unquote_lossy};

/// Where a parameter list comes from, which decides how it is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// URI parameters: no whitespace, no quoting, `%` escapes.
    Uri,
    /// Header parameters: LWS around `;` and `=`, quoted-string values.
    Header,
}

/// A list of parameters (`;a=b;c`) as written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Params<'a> {
    raw: &'a [u8],
    kind: Kind,
}

impl<'a> Params<'a> {
    /// URI parameters; `raw` is empty or starts with `;`.
    pub(crate) fn uri(raw: &'a [u8]) -> Self {
        Self { raw, kind: Kind::Uri }
    }

    /// Header parameters already validated by `scan_header_params`.
    pub(crate) fn header(raw: &'a [u8]) -> Self {
        Self { raw, kind: Kind::Header }
    }

    /// No parameter at all.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The parameters exactly as written, from the first `;`.
    pub fn as_str(&self) -> &'a str {
        text(self.raw).unwrap_or("")
    }

    /// The parameters in order.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter { raw: self.raw, pos: 0, kind: self.kind }
    }

    /// The first parameter with this name (names compare ASCII
    /// case-insensitively, RFC 3261 §19.1.4 and §7.3.1).
    pub fn get(&self, name: &str) -> Option<Param<'a>> {
        self.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The raw value of the first parameter with this name, when it has one.
    pub fn value(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|p| p.value)
    }

    /// True when a parameter with this name is present (with or without a
    /// value).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl fmt::Debug for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl fmt::Display for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'a> IntoIterator for Params<'a> {
    type Item = Param<'a>;
    type IntoIter = ParamIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// One parameter as written: no unquoting, no unescaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The name as written.
    pub name: &'a str,
    /// The value as written (quotes and escapes included), `None` for a
    /// valueless parameter such as `lr`.
    pub value: Option<&'a str>,
}

impl<'a> Param<'a> {
    /// The value with surrounding quotes removed and quoted-pairs resolved
    /// (header parameters).
    pub fn unquoted_value(&self) -> Option<Cow<'a, str>> {
        self.value.map(|v| unquote_lossy(v.as_bytes()))
    }

    /// The name with `%HH` escapes decoded once (URI parameters).
    pub fn decoded_name(&self) -> Cow<'a, [u8]> {
        pct_decode(self.name.as_bytes())
    }

    /// The value with `%HH` escapes decoded once (URI parameters):
    /// `v%61lue%25%34%31` gives `value%41`, never `valueA`.
    pub fn decoded_value(&self) -> Option<Cow<'a, [u8]>> {
        self.value.map(|v| pct_decode(v.as_bytes()))
    }
}

/// Iterator over [`Params`].
#[derive(Debug, Clone)]
pub struct ParamIter<'a> {
    raw: &'a [u8],
    pos: usize,
    kind: Kind,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        loop {
            match self.kind {
                Kind::Uri => {
                    let rest = self.raw.get(self.pos..)?;
                    if rest.is_empty() {
                        return None;
                    }
                    // Skip the leading ';'.
                    let rest = rest.strip_prefix(b";").unwrap_or(rest);
                    let len = memchr::memchr(b';', rest).unwrap_or(rest.len());
                    let item = rest.get(..len)?;
                    self.pos += len + 1;
                    if item.is_empty() {
                        continue;
                    }
                    let (name, value) = match memchr::memchr(b'=', item) {
                        Some(eq) => (item.get(..eq)?, item.get(eq + 1..)),
                        None => (item, None),
                    };
                    let Some(name) = text(name) else {
                        continue;
                    };
                    let value = value.and_then(text);
                    return Some(Param { name, value });
                }
                Kind::Header => {
                    let p = next_header_param(self.raw, self.pos).ok()??;
                    self.pos = p.end;
                    let Some(name) = text(p.name) else {
                        continue;
                    };
                    let value = p.value.and_then(text);
                    return Some(Param { name, value });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_params() {
        let p = Params::uri(b";transport=udp;lr;n%61me=v%61lue%25%34%31");
        let all: Vec<_> = p.iter().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(p.value("TRANSPORT"), Some("udp"));
        assert!(p.contains("lr"));
        assert_eq!(p.get("lr").and_then(|p| p.value), None);
        let n = all[2];
        assert_eq!(&*n.decoded_name(), b"name");
        assert_eq!(n.decoded_value().as_deref(), Some(&b"value%41"[..]));
    }

    #[test]
    fn header_params() {
        let p = Params::header(b" ;   tag    = 1918181833n ; q = 0.33;x=\"a b\"");
        assert_eq!(p.value("tag"), Some("1918181833n"));
        assert_eq!(p.value("q"), Some("0.33"));
        assert_eq!(p.get("x").and_then(|x| x.unquoted_value()).as_deref(), Some("a b"));
    }
}
