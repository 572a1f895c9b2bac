//! URIs: `sip:`/`sips:` (RFC 3261 §19.1), `tel:` (RFC 3966) and any other
//! scheme kept opaque.
//!
//! A [`Uri`] owns its raw text (a [`Bytes`] slice of the message, so no
//! copy) plus the offsets of its parts. Accessors return the text as
//! written: escapes are never decoded behind the caller's back, and
//! [`Display`](fmt::Display) gives back the original text byte for byte.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use bytes::Bytes;

use super::error::UriError;
use super::params::Params;
use super::scan::{hex_val, pct_decode};

/// A host: domain name, IPv4 address or IPv6 reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host<'a> {
    /// A host name as written (compare it case-insensitively).
    Domain(&'a str),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written `[...]` in SIP).
    Ipv6(Ipv6Addr),
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(d) => f.write_str(d),
            Self::Ipv4(a) => write!(f, "{a}"),
            Self::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

/// The parsed form of a host, without the borrowed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostKind {
    Domain,
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
}

impl HostKind {
    /// Rebuilds the public [`Host`] from the host text.
    pub(crate) fn with_text(self, text: &str) -> Host<'_> {
        match self {
            Self::Domain => Host::Domain(text),
            Self::Ipv4(a) => Host::Ipv4(a),
            Self::Ipv6(a) => Host::Ipv6(a),
        }
    }
}

/// Parses a host as it appears in a SIP URI or a Via sent-by: `[v6]`,
/// dotted IPv4 or a host name (letters, digits, `-`, `.`, and `_`, which
/// real peers use).
pub(crate) fn parse_host(s: &[u8]) -> Result<HostKind, UriError> {
    match s {
        [] => Err(UriError::InvalidHost),
        [b'[', inner @ .., b']'] => parse_ipv6(inner).map(HostKind::Ipv6),
        _ if s.iter().all(|b| b.is_ascii_digit() || *b == b'.') => super::scan::text(s)
            .and_then(|t| t.parse::<Ipv4Addr>().ok())
            .map(HostKind::Ipv4)
            .ok_or(UriError::InvalidHost),
        _ => {
            let ok_chars = s.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            let ok_start = s.first().is_some_and(|b| b.is_ascii_alphanumeric());
            if ok_chars && ok_start && !s.windows(2).any(|w| w == b"..") {
                Ok(HostKind::Domain)
            } else {
                Err(UriError::InvalidHost)
            }
        }
    }
}

/// Parses the inside of an IPv6 reference. Tolerates the extra colon that
/// RFC 3261's ABNF allows before an embedded IPv4 part (`2001:db8:::192.0.2.1`,
/// RFC 5118 §4.10).
fn parse_ipv6(inner: &[u8]) -> Result<Ipv6Addr, UriError> {
    let text = super::scan::text(inner).ok_or(UriError::InvalidHost)?;
    if let Ok(a) = text.parse::<Ipv6Addr>() {
        return Ok(a);
    }
    if text.contains(":::") {
        return text.replacen(":::", "::", 1).parse::<Ipv6Addr>().map_err(|_| UriError::InvalidHost);
    }
    Err(UriError::InvalidHost)
}

/// Parses a port: 1 to 5 digits, at most 65535.
pub(crate) fn parse_port(s: &[u8]) -> Result<u16, UriError> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return Err(UriError::InvalidPort);
    }
    super::scan::text(s).and_then(|t| t.parse::<u16>().ok()).ok_or(UriError::InvalidPort)
}

/// A byte range inside a URI's raw text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn of(self, raw: &[u8]) -> &[u8] {
        raw.get(self.start..self.end).unwrap_or_default()
    }
}

/// Text of an ASCII-validated span.
fn span_str(raw: &Bytes, span: Span) -> &str {
    super::scan::text(span.of(raw)).unwrap_or("")
}

/// A URI of any scheme.
#[derive(Debug, Clone)]
pub enum Uri {
    /// `sip:` or `sips:`.
    Sip(SipUri),
    /// `tel:`.
    Tel(TelUri),
    /// Any other scheme, kept opaque (`nobodyKnowsThisScheme:...`,
    /// `soap.beep://...`, `http://...`).
    Other(OtherUri),
}

impl Uri {
    /// Parses a URI from text (copies it).
    pub fn parse(text: &str) -> Result<Self, UriError> {
        Self::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Parses a URI without copying its text.
    pub fn from_bytes(raw: Bytes) -> Result<Self, UriError> {
        if raw.is_empty() {
            return Err(UriError::Empty);
        }
        if let Some(offset) = raw.iter().position(|b| *b <= 0x20 || *b >= 0x7f || matches!(b, b'<' | b'>' | b'"')) {
            return Err(UriError::InvalidByte { offset, byte: raw.get(offset).copied().unwrap_or(0) });
        }
        let colon = memchr::memchr(b':', &raw).ok_or(UriError::InvalidScheme)?;
        let scheme = raw.get(..colon).unwrap_or_default();
        let valid_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid_scheme {
            return Err(UriError::InvalidScheme);
        }
        if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
            SipUri::parse(raw, colon).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case(b"tel") {
            TelUri::parse(raw, colon).map(Uri::Tel)
        } else if raw.len() == colon + 1 {
            Err(UriError::Empty)
        } else {
            Ok(Uri::Other(OtherUri { raw, colon }))
        }
    }

    /// The scheme as written (`sip`, `SIPS`, `tel`, ...).
    pub fn scheme(&self) -> &str {
        match self {
            Self::Sip(u) => u.scheme(),
            Self::Tel(_) => span_str(self.raw(), Span { start: 0, end: 3 }),
            Self::Other(u) => u.scheme(),
        }
    }

    /// The whole URI exactly as written.
    pub fn as_str(&self) -> &str {
        super::scan::text(self.raw()).unwrap_or("")
    }

    /// The raw text.
    pub fn raw(&self) -> &Bytes {
        match self {
            Self::Sip(u) => &u.raw,
            Self::Tel(u) => &u.raw,
            Self::Other(u) => &u.raw,
        }
    }

    /// The SIP/SIPS form, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Self::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The tel form, if this is one.
    pub fn as_tel(&self) -> Option<&TelUri> {
        match self {
            Self::Tel(u) => Some(u),
            _ => None,
        }
    }
}

impl PartialEq for Uri {
    /// Textual equality (byte for byte). RFC 3261 §19.1.4 comparison is
    /// a separate concern.
    fn eq(&self, other: &Self) -> bool {
        self.raw() == other.raw()
    }
}

impl Eq for Uri {}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Uri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone)]
pub struct SipUri {
    raw: Bytes,
    colon: usize,
    user: Option<Span>,
    password: Option<Span>,
    host: Span,
    host_kind: HostKind,
    port: Option<u16>,
    params: Span,
    headers: Option<Span>,
}

impl SipUri {
    fn parse(raw: Bytes, colon: usize) -> Result<Self, UriError> {
        let len = raw.len();
        let start = colon + 1;
        let rest = raw.get(start..).unwrap_or_default();
        // The user part may hold `;`, `?`, `:` and `,` (RFC 4475 semiuri,
        // intmeth), so the first `@` decides where it ends.
        let (user, password, host_start) = match memchr::memchr(b'@', rest) {
            Some(at) => {
                if at == 0 {
                    return Err(UriError::EmptyUser);
                }
                let userinfo = Span { start, end: start + at };
                check_escapes(&raw, userinfo)?;
                match memchr::memchr(b':', userinfo.of(&raw)) {
                    Some(c) => (
                        Some(Span { start, end: start + c }),
                        Some(Span { start: start + c + 1, end: start + at }),
                        start + at + 1,
                    ),
                    None => (Some(userinfo), None, start + at + 1),
                }
            }
            None => (None, None, start),
        };
        let b = |i: usize| raw.get(i).copied();
        let host_end = if b(host_start) == Some(b'[') {
            let close = memchr::memchr(b']', raw.get(host_start..).unwrap_or_default()).ok_or(UriError::InvalidHost)?;
            host_start + close + 1
        } else {
            let mut i = host_start;
            while let Some(c) = b(i) {
                if matches!(c, b':' | b';' | b'?') {
                    break;
                }
                i += 1;
            }
            i
        };
        let host = Span { start: host_start, end: host_end };
        let host_kind = parse_host(host.of(&raw))?;
        let mut pos = host_end;
        let mut port = None;
        if b(pos) == Some(b':') {
            let p_start = pos + 1;
            let mut i = p_start;
            while b(i).is_some_and(|c| c != b';' && c != b'?') {
                i += 1;
            }
            port = Some(parse_port(raw.get(p_start..i).unwrap_or_default())?);
            pos = i;
        }
        match b(pos) {
            None | Some(b';' | b'?') => {}
            Some(_) => return Err(UriError::InvalidHost),
        }
        let params_start = pos;
        while b(pos).is_some_and(|c| c != b'?') {
            pos += 1;
        }
        let params = Span { start: params_start, end: pos };
        check_uri_params(&raw, params)?;
        let headers = (pos < len).then_some(Span { start: pos + 1, end: len });
        Ok(Self { raw, colon, user, password, host, host_kind, port, params, headers })
    }

    /// `sip` or `sips` as written.
    pub fn scheme(&self) -> &str {
        span_str(&self.raw, Span { start: 0, end: self.colon })
    }

    /// True for `sips:`.
    pub fn is_secure(&self) -> bool {
        self.colon == 4
    }

    /// The user part exactly as written, escapes included
    /// (`user;par=u%40example.net`, `%2B4930...`).
    pub fn user(&self) -> Option<&str> {
        self.user.map(|s| span_str(&self.raw, s))
    }

    /// The user part with `%HH` escapes decoded exactly once (it may hold
    /// NUL or non-UTF-8 bytes, hence bytes).
    pub fn user_decoded(&self) -> Option<Cow<'_, [u8]>> {
        self.user.map(|s| pct_decode(s.of(&self.raw)))
    }

    /// The password as written (deprecated by RFC 3261, kept for fidelity).
    pub fn password(&self) -> Option<&str> {
        self.password.map(|s| span_str(&self.raw, s))
    }

    /// The host.
    pub fn host(&self) -> Host<'_> {
        self.host_kind.with_text(self.host_str())
    }

    /// The host as written (IPv6 with its brackets).
    pub fn host_str(&self) -> &str {
        span_str(&self.raw, self.host)
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The URI parameters (`;transport=tcp;lr`).
    pub fn params(&self) -> Params<'_> {
        Params::uri(self.params.of(&self.raw))
    }

    /// The `transport` parameter value as written.
    pub fn transport(&self) -> Option<&str> {
        self.params().value("transport")
    }

    /// True when the `lr` parameter is present (loose routing).
    pub fn lr(&self) -> bool {
        self.params().contains("lr")
    }

    /// The `maddr` parameter value.
    pub fn maddr(&self) -> Option<&str> {
        self.params().value("maddr")
    }

    /// The `user` parameter value (`phone`, `ip`, ...).
    pub fn user_param(&self) -> Option<&str> {
        self.params().value("user")
    }

    /// The headers part after `?`, as written.
    pub fn headers_str(&self) -> Option<&str> {
        self.headers.map(|s| span_str(&self.raw, s))
    }

    /// The headers part split into `(name, value)` pairs, as written.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers_str()
            .unwrap_or("")
            .split('&')
            .filter(|h| !h.is_empty())
            .map(|h| h.split_once('=').unwrap_or((h, "")))
    }

    /// The whole URI as written.
    pub fn as_str(&self) -> &str {
        super::scan::text(&self.raw).unwrap_or("")
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `%` must be followed by two hex digits in user and password.
fn check_escapes(raw: &[u8], span: Span) -> Result<(), UriError> {
    let s = span.of(raw);
    for (i, &b) in s.iter().enumerate() {
        if b == b'%' {
            let ok =
                s.get(i + 1).and_then(|c| hex_val(*c)).is_some() && s.get(i + 2).and_then(|c| hex_val(*c)).is_some();
            if !ok {
                return Err(UriError::InvalidEscape { offset: span.start + i });
            }
        }
    }
    Ok(())
}

/// Every `;` must introduce a non-empty name.
fn check_uri_params(raw: &[u8], span: Span) -> Result<(), UriError> {
    let s = span.of(raw);
    if s.is_empty() {
        return Ok(());
    }
    for item in s.get(1..).unwrap_or_default().split(|b| *b == b';') {
        if item.is_empty() || item.first() == Some(&b'=') {
            return Err(UriError::EmptyParam);
        }
    }
    Ok(())
}

/// A `tel:` URI (RFC 3966).
#[derive(Debug, Clone)]
pub struct TelUri {
    raw: Bytes,
    number: Span,
    params: Span,
}

impl TelUri {
    fn parse(raw: Bytes, colon: usize) -> Result<Self, UriError> {
        let start = colon + 1;
        let rest = raw.get(start..).unwrap_or_default();
        let n_len = memchr::memchr(b';', rest).unwrap_or(rest.len());
        let number = Span { start, end: start + n_len };
        let digits = number.of(&raw);
        if digits.is_empty() {
            return Err(UriError::EmptyNumber);
        }
        for (i, &b) in digits.iter().enumerate() {
            let ok = b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'.' | b'(' | b')' | b'*' | b'#')
                || (b == b'+' && i == 0);
            if !ok {
                return Err(UriError::InvalidByte { offset: start + i, byte: b });
            }
        }
        let params = Span { start: number.end, end: raw.len() };
        check_uri_params(&raw, params)?;
        Ok(Self { raw, number, params })
    }

    /// The number as written, visual separators included (`+1-201-555-0123`).
    pub fn number(&self) -> &str {
        span_str(&self.raw, self.number)
    }

    /// True for a global number (starts with `+`).
    pub fn is_global(&self) -> bool {
        self.number().starts_with('+')
    }

    /// The parameters (`;phone-context=...`).
    pub fn params(&self) -> Params<'_> {
        Params::uri(self.params.of(&self.raw))
    }

    /// The whole URI as written.
    pub fn as_str(&self) -> &str {
        super::scan::text(&self.raw).unwrap_or("")
    }
}

/// A URI of a scheme this parser does not interpret.
#[derive(Debug, Clone)]
pub struct OtherUri {
    raw: Bytes,
    colon: usize,
}

impl OtherUri {
    /// The scheme as written.
    pub fn scheme(&self) -> &str {
        span_str(&self.raw, Span { start: 0, end: self.colon })
    }

    /// Everything after `scheme:`.
    pub fn opaque(&self) -> &str {
        super::scan::text(self.raw.get(self.colon + 1..).unwrap_or_default()).unwrap_or("")
    }

    /// The whole URI as written.
    pub fn as_str(&self) -> &str {
        super::scan::text(&self.raw).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri {
        match Uri::parse(s) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn sip_parts() {
        let u = sip("sips:alice:pw@[2001:db8::10]:5070;transport=tcp;lr?Subject=hi&X=1");
        assert!(u.is_secure());
        assert_eq!(u.user(), Some("alice"));
        assert_eq!(u.password(), Some("pw"));
        assert_eq!(u.host(), Host::Ipv6("2001:db8::10".parse().unwrap()));
        assert_eq!(u.host_str(), "[2001:db8::10]");
        assert_eq!(u.port(), Some(5070));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.lr());
        assert_eq!(u.headers().collect::<Vec<_>>(), vec![("Subject", "hi"), ("X", "1")]);
    }

    #[test]
    fn semicolon_user_part() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user(), Some("user;par=u%40example.net"));
        assert_eq!(u.user_decoded().as_deref(), Some(&b"user;par=u@example.net"[..]));
        assert_eq!(u.host(), Host::Domain("example.com"));
        assert!(u.params().is_empty());
    }

    #[test]
    fn e164_escape_kept() {
        let text = "sip:%2B4930123456@trunk.example.com;user=phone";
        let u = sip(text);
        assert_eq!(u.user(), Some("%2B4930123456"));
        assert_eq!(u.user_decoded().as_deref(), Some(&b"+4930123456"[..]));
        assert_eq!(u.to_string(), text);
    }

    #[test]
    fn ipv6_variants() {
        assert_eq!(sip("sip:[2001:db8::10:5070]").host(), Host::Ipv6("2001:db8::10:5070".parse().unwrap()));
        assert_eq!(sip("sip:[2001:db8::10:5070]").port(), None);
        assert_eq!(sip("sip:user@[2001:db8:::192.0.2.1]").host(), Host::Ipv6("2001:db8::192.0.2.1".parse().unwrap()));
        assert_eq!(Uri::parse("sip:2001:db8::10").err(), Some(UriError::InvalidHost));
        assert_eq!(Uri::parse("sip:host:db8::10").err(), Some(UriError::InvalidPort));
        assert!(Uri::parse("sip:[2001:db8::10").is_err());
    }

    #[test]
    fn other_schemes() {
        let u = Uri::parse("soap.beep://192.0.2.103:3002").unwrap();
        assert!(matches!(u, Uri::Other(_)));
        assert_eq!(u.scheme(), "soap.beep");
        let t = Uri::parse("tel:+1-201-555-0123;phone-context=example.com").unwrap();
        let tel = t.as_tel().unwrap();
        assert_eq!(tel.number(), "+1-201-555-0123");
        assert!(tel.is_global());
        assert_eq!(tel.params().value("phone-context"), Some("example.com"));
    }

    #[test]
    fn rejects() {
        assert!(Uri::parse("<sip:a@b>").is_err());
        assert!(Uri::parse("sip:a@b; lr").is_err());
        assert!(Uri::parse("sip:@b").is_err());
        assert!(Uri::parse("sip:a%zz@b").is_err());
        assert!(Uri::parse("sip:a@b;;lr").is_err());
        assert!(Uri::parse("sip:a@b:99999").is_err());
        assert!(Uri::parse("sip:").is_err());
        assert!(Uri::parse("nocolon").is_err());
        assert!(Uri::parse("1x:abc").is_err());
    }
}
