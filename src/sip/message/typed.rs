//! Typed, lazily parsed views of header values.
//!
//! The views borrow from the message (`Via<'a>` lives as long as the
//! [`Headers`] it came from) and hold the raw text of what they parsed, so
//! displaying one gives back the exact bytes received. URIs inside them are
//! owned [`Uri`] values that share the message buffer (no copy).
//!
//! Parsing is liberal where RFC 3261 and RFC 4475 ask for it (LWS and folds
//! around every separator, compact names, leading zeros, unquoted display
//! names directly followed by `<`) and strict where a wrong guess would
//! change meaning (unterminated quotes, empty list elements, numbers out of
//! range, addr-spec URIs with a `?` headers part).

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use bytes::Bytes;

use super::error::{HeaderError, ValueError};
use super::header::{Header, HeaderName, Headers};
use super::method::Method;
use super::params::{Param, Params};
use super::scan::{
    is_token, is_ws, list_continue, parse_decimal, quoted_end, run_end, scan_header_params, scan_header_params_finding,
    skip_ws, text, token_end, trim, unquote_lossy, utf8,
};
use super::uri::{Host, Uri, parse_host, parse_port};

/// `UnexpectedByte` at `i`, or `UnexpectedEnd` past the end.
fn unexpected(s: &[u8], i: usize) -> ValueError {
    match s.get(i) {
        Some(&byte) => ValueError::UnexpectedByte { offset: i, byte },
        None => ValueError::UnexpectedEnd,
    }
}

/// Expects byte `c` at `i` (after whitespace); returns the index after it.
fn expect(s: &[u8], i: usize, c: u8) -> Result<usize, ValueError> {
    let j = skip_ws(s, i);
    if s.get(j) == Some(&c) { Ok(j + 1) } else { Err(unexpected(s, j)) }
}

/// A non-empty token at `i`; returns it and the index after it.
fn token_at(s: &[u8], i: usize) -> Result<(&str, usize), ValueError> {
    let end = token_end(s, i);
    if end == i {
        return Err(unexpected(s, i));
    }
    Ok((utf8(s.get(i..end).unwrap_or_default())?, end))
}

/// Whitespace then end of value, or `MultipleValues` on a comma.
fn expect_end(s: &[u8], i: usize) -> Result<(), ValueError> {
    let j = skip_ws(s, i);
    match s.get(j) {
        None => Ok(()),
        Some(b',') => Err(ValueError::MultipleValues),
        Some(&byte) => Err(ValueError::UnexpectedByte { offset: j, byte }),
    }
}

/// The parameters between `from` and `to`, starting at their first `;`
/// (whitespace before it dropped).
fn params_slice(s: &[u8], from: usize, to: usize) -> Params<'_> {
    Params::header(s.get(skip_ws(s, from)..to).unwrap_or_default())
}

/// Text of a slice that is ASCII by construction.
fn ascii(s: &[u8]) -> &str {
    text(s).unwrap_or("")
}

// ---------------------------------------------------------------- Via ---

/// The transport of a Via (`SIP/2.0/UDP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport<'a> {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// SCTP.
    Sctp,
    /// TLS over SCTP.
    TlsSctp,
    /// WebSocket (RFC 7118).
    Ws,
    /// Secure WebSocket (RFC 7118).
    Wss,
    /// Any other token, as written (`UNKNOWN`).
    Other(&'a str),
}

impl<'a> Transport<'a> {
    /// Classifies a transport token (case-insensitive).
    pub fn from_token(t: &'a str) -> Self {
        const KNOWN: [(&str, Transport<'static>); 7] = [
            ("UDP", Transport::Udp),
            ("TCP", Transport::Tcp),
            ("TLS", Transport::Tls),
            ("SCTP", Transport::Sctp),
            ("TLS-SCTP", Transport::TlsSctp),
            ("WS", Transport::Ws),
            ("WSS", Transport::Wss),
        ];
        KNOWN.iter().find(|(n, _)| n.eq_ignore_ascii_case(t)).map_or(Self::Other(t), |(_, k)| *k)
    }

    /// The canonical upper-case name, or the token as written.
    pub fn as_str(&self) -> &'a str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Sctp => "SCTP",
            Self::TlsSctp => "TLS-SCTP",
            Self::Ws => "WS",
            Self::Wss => "WSS",
            Self::Other(t) => t,
        }
    }

    /// True for connection-oriented, reliable transports (everything but
    /// UDP; unknown transports count as unreliable).
    pub fn is_reliable(&self) -> bool {
        !matches!(self, Self::Udp | Self::Other(_))
    }
}

impl fmt::Display for Transport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `rport` parameter of a Via (RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rport {
    /// `;rport` without a value: the client asks for it to be filled in.
    Requested,
    /// `;rport=5060`, filled in by a server.
    Port(u16),
}

/// The magic cookie that starts every RFC 3261 branch.
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    raw: &'a str,
    protocol_name: &'a str,
    protocol_version: &'a str,
    transport: Transport<'a>,
    host: Host<'a>,
    host_str: &'a str,
    port: Option<u16>,
    params: Params<'a>,
}

impl<'a> Via<'a> {
    /// Parses one via-parm starting at `i`; returns it and the index after
    /// it.
    pub(crate) fn parse_at(s: &'a [u8], i: usize) -> Result<(Self, usize), ValueError> {
        let start = skip_ws(s, i);
        let (protocol_name, j) = token_at(s, start)?;
        let j = skip_ws(s, expect(s, j, b'/')?);
        let (protocol_version, j) = token_at(s, j)?;
        let j = skip_ws(s, expect(s, j, b'/')?);
        let (transport, t_end) = token_at(s, j)?;
        let h = skip_ws(s, t_end);
        if h == t_end {
            return Err(unexpected(s, h));
        }
        let host_end = if s.get(h) == Some(&b'[') {
            let close = memchr::memchr(b']', s.get(h..).unwrap_or_default())
                .ok_or(ValueError::Uri(super::error::UriError::InvalidHost))?;
            h + close + 1
        } else {
            run_end(s, h, |b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        let host_bytes = s.get(h..host_end).unwrap_or_default();
        let host_kind = parse_host(host_bytes)?;
        let host_str = ascii(host_bytes);
        let mut end = host_end;
        let mut port = None;
        let c = skip_ws(s, host_end);
        if s.get(c) == Some(&b':') {
            let p = skip_ws(s, c + 1);
            let pe = run_end(s, p, |b| b.is_ascii_digit());
            port = Some(parse_port(s.get(p..pe).unwrap_or_default())?);
            end = pe;
        }
        let params_end = scan_header_params(s, end)?;
        let via = Via {
            raw: utf8(s.get(start..params_end).unwrap_or_default())?,
            protocol_name,
            protocol_version,
            transport: Transport::from_token(transport),
            host: host_kind.with_text(host_str),
            host_str,
            port,
            params: params_slice(s, end, params_end),
        };
        Ok((via, params_end))
    }

    /// Parses a single Via value (no comma list).
    pub fn parse(s: &'a str) -> Result<Self, ValueError> {
        let (via, end) = Self::parse_at(s.as_bytes(), 0)?;
        expect_end(s.as_bytes(), end)?;
        Ok(via)
    }

    /// The value exactly as received (folds included).
    pub fn as_str(&self) -> &'a str {
        self.raw
    }

    /// `SIP` as written.
    pub fn protocol_name(&self) -> &'a str {
        self.protocol_name
    }

    /// `2.0` as written.
    pub fn protocol_version(&self) -> &'a str {
        self.protocol_version
    }

    /// The transport.
    pub fn transport(&self) -> Transport<'a> {
        self.transport
    }

    /// The sent-by host.
    pub fn host(&self) -> Host<'a> {
        self.host
    }

    /// The sent-by host as written (IPv6 with brackets).
    pub fn host_str(&self) -> &'a str {
        self.host_str
    }

    /// The sent-by port, if written.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// All parameters as written.
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.value("branch")
    }

    /// The branch when it is an RFC 3261 one: the magic cookie followed by
    /// at least one more character. `z9hG4bK` alone (RFC 4475 badbranch) or
    /// an RFC 2543 branch gives `None`: match transactions the RFC 2543
    /// way then.
    pub fn rfc3261_branch(&self) -> Option<&'a str> {
        self.branch().filter(|b| b.len() > BRANCH_MAGIC_COOKIE.len() && b.starts_with(BRANCH_MAGIC_COOKIE))
    }

    /// The `received` parameter as written.
    pub fn received_str(&self) -> Option<&'a str> {
        self.params.value("received")
    }

    /// The `received` address, with or without `[...]` around an IPv6
    /// address (RFC 5118 §4.5: accept both). `None` when absent or not an
    /// address.
    pub fn received(&self) -> Option<IpAddr> {
        let r = self.received_str()?;
        let r = r.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(r);
        r.parse().ok()
    }

    /// The `rport` parameter (RFC 3581). A value that is not a port counts
    /// as [`Rport::Requested`].
    pub fn rport(&self) -> Option<Rport> {
        let p = self.params.get("rport")?;
        Some(p.value.and_then(|v| v.parse::<u16>().ok()).map_or(Rport::Requested, Rport::Port))
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params.value("maddr")
    }

    /// The `ttl` parameter, when it is 0..=255.
    pub fn ttl(&self) -> Option<u8> {
        self.params.value("ttl").and_then(|t| t.parse().ok())
    }
}

impl fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw)
    }
}

// ----------------------------------------------------------- NameAddr ---

/// A display name, as written. It may hold any byte, including non-UTF-8
/// ones that some PBXs send (ISO-8859-1 names).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DisplayName<'a> {
    raw: &'a [u8],
}

impl<'a> DisplayName<'a> {
    /// The bytes as written (quotes and backslashes included when quoted).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// True for a quoted-string display name.
    pub fn is_quoted(&self) -> bool {
        self.raw.first() == Some(&b'"')
    }

    /// The text: quotes removed, quoted-pairs resolved, invalid UTF-8
    /// replaced by U+FFFD.
    pub fn text(&self) -> Cow<'a, str> {
        unquote_lossy(self.raw)
    }
}

impl fmt::Debug for DisplayName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.raw))
    }
}

/// Bytes allowed in an unquoted display name: tokens, plus non-ASCII bytes
/// (liberal: some PBXs send `Müller <sip:...>` unquoted).
const fn is_display_token(b: u8) -> bool {
    is_token(b) || b >= 0x80
}

/// A name-addr or addr-spec with header parameters: the value of From, To,
/// Contact, Route, Record-Route, Diversion, Refer-To, P-Asserted-Identity.
#[derive(Debug, Clone)]
pub struct NameAddr<'a> {
    raw: &'a [u8],
    display_name: Option<DisplayName<'a>>,
    uri: Uri,
    angle_brackets: bool,
    params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one value starting at `i` of `buf`; returns it and the index
    /// after it.
    pub(crate) fn parse_at(buf: &'a Bytes, i: usize) -> Result<(Self, usize), ValueError> {
        let (d, uri_text) = Delimited::of(buf, i)?;
        let uri = Uri::from_bytes(buf.slice_ref(uri_text))?;
        let s: &'a [u8] = buf.as_ref();
        Ok((
            NameAddr {
                raw: s.get(d.start..d.params_end).unwrap_or_default(),
                display_name: d.display_name,
                uri,
                angle_brackets: d.angle_brackets,
                params: d.params,
            },
            d.params_end,
        ))
    }

    /// The `tag` parameter of a single value (From, To) without parsing its
    /// URI: the URI is only delimited. Transactions and dialogs are matched
    /// on tags several times per message, and the URI's parse was most of
    /// the cost (a From/To parse took about 2,000 instructions, 38 of them
    /// per call). A value that [`NameAddr::parse`] refuses for its URI
    /// alone still gives its tag here; such a request is refused by its
    /// checks (`check_request`) all the same.
    pub fn tag_in(buf: &'a Bytes) -> Result<Option<&'a str>, ValueError> {
        let (d, _) = Delimited::finding(buf, 0, Some("tag"))?;
        expect_end(buf, d.params_end)?;
        Ok(d.found)
    }
}

/// A name-addr's parts found, its URI not yet parsed.
struct Delimited<'a> {
    start: usize,
    display_name: Option<DisplayName<'a>>,
    angle_brackets: bool,
    params: Params<'a>,
    params_end: usize,
    /// The value of the parameter asked for by [`Delimited::finding`].
    found: Option<&'a str>,
}

impl<'a> Delimited<'a> {
    /// The parts of the value starting at `i`, and its URI's text.
    fn of(buf: &'a Bytes, i: usize) -> Result<(Self, &'a [u8]), ValueError> {
        Self::finding(buf, i, None)
    }

    /// [`Delimited::of`], with the value of the first header parameter
    /// named `find` picked up while the parameters are scanned.
    fn finding(buf: &'a Bytes, i: usize, find: Option<&str>) -> Result<(Self, &'a [u8]), ValueError> {
        let s: &'a [u8] = buf.as_ref();
        let start = skip_ws(s, i);
        let (display_name, open) = match s.get(start) {
            None => return Err(ValueError::Empty),
            Some(b'"') => {
                let q = quoted_end(s, start)?;
                let open = skip_ws(s, q);
                if s.get(open) != Some(&b'<') {
                    return Err(unexpected(s, open));
                }
                (Some(DisplayName { raw: s.get(start..q).unwrap_or_default() }), Some(open))
            }
            Some(b'<') => (None, Some(start)),
            Some(_) => {
                // Either `token *(LWS token) <` or an addr-spec `scheme:`.
                let mut j = start;
                let mut last_end = start;
                let mut addr_spec = false;
                loop {
                    let te = run_end(s, j, is_display_token);
                    if te == j {
                        break;
                    }
                    if j == start && s.get(te) == Some(&b':') {
                        addr_spec = true;
                        break;
                    }
                    last_end = te;
                    j = skip_ws(s, te);
                }
                if addr_spec {
                    (None, None)
                } else if s.get(j) == Some(&b'<') && last_end > start {
                    (Some(DisplayName { raw: s.get(start..last_end).unwrap_or_default() }), Some(j))
                } else {
                    return Err(unexpected(s, j));
                }
            }
        };
        let (uri, after, angle_brackets) = match open {
            Some(open) => {
                let inner_start = open + 1;
                let close = memchr::memchr(b'>', s.get(inner_start..).unwrap_or_default())
                    .ok_or(ValueError::UnterminatedAngleBracket)?;
                let inner = s.get(inner_start..inner_start + close).unwrap_or_default();
                (inner, inner_start + close + 1, true)
            }
            None => {
                let end = run_end(s, start, |b| !matches!(b, b';' | b',') && !is_ws(b));
                let text = s.get(start..end).unwrap_or_default();
                if text.contains(&b'?') {
                    return Err(ValueError::UriNeedsAngleBrackets);
                }
                (text, end, false)
            }
        };
        let (params_end, found) = scan_header_params_finding(s, after, find)?;
        let params = params_slice(s, after, params_end);
        Ok((Delimited { start, display_name, angle_brackets, params, params_end, found }, uri))
    }
}

impl<'a> NameAddr<'a> {
    /// Parses a single value (no comma list).
    pub fn parse(buf: &'a Bytes) -> Result<Self, ValueError> {
        let (v, end) = Self::parse_at(buf, 0)?;
        expect_end(buf, end)?;
        Ok(v)
    }

    /// The value exactly as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// The display name, if any.
    pub fn display_name(&self) -> Option<DisplayName<'a>> {
        self.display_name
    }

    /// The URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// True for the name-addr form (`<...>`), false for an addr-spec.
    pub fn has_angle_brackets(&self) -> bool {
        self.angle_brackets
    }

    /// The header parameters (after the URI; for an addr-spec every `;`
    /// parameter is one of these, RFC 3261 §20).
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// The `tag` parameter (From/To).
    pub fn tag(&self) -> Option<&'a str> {
        self.params.value("tag")
    }

    /// The `expires` parameter of a Contact: `None` when absent, an error
    /// when not a number or above 2^32-1 (a registrar then uses its
    /// default, RFC 3261 §10.3 step 7).
    pub fn expires(&self) -> Option<Result<u32, ValueError>> {
        self.params.value("expires").map(|v| parse_u32(v.as_bytes()))
    }

    /// The `q` parameter of a Contact in thousandths (`q=0.33` is 330).
    pub fn q(&self) -> Option<Result<u16, ValueError>> {
        self.params.value("q").map(parse_qvalue)
    }
}

impl fmt::Display for NameAddr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.raw))
    }
}

/// Parses a `qvalue` (`0`, `0.5`, `1.000`) into thousandths.
pub(crate) fn parse_qvalue(v: &str) -> Result<u16, ValueError> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::NumberOutOfRange);
    }
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1000,
        _ => return Err(ValueError::NumberOutOfRange),
    };
    let mut thousandths = 0u16;
    let mut scale = 100u16;
    for b in frac.bytes() {
        thousandths += u16::from(b - b'0') * scale;
        scale /= 10;
    }
    let q = whole + thousandths;
    if q > 1000 {
        return Err(ValueError::NumberOutOfRange);
    }
    Ok(q)
}

fn parse_u32(s: &[u8]) -> Result<u32, ValueError> {
    parse_decimal(s, u64::from(u32::MAX)).map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

/// The value of the Contact headers of a message.
#[derive(Debug, Clone)]
pub enum Contacts<'a> {
    /// `Contact: *` (REGISTER removing all bindings).
    Star,
    /// Zero or more contacts.
    List(Vec<NameAddr<'a>>),
}

// --------------------------------------------------------------- CSeq ---

/// The CSeq header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number (at most 2^32-1).
    pub seq: u32,
    /// The method.
    pub method: Method,
}

impl CSeq {
    /// Parses a CSeq value (`0009\r\n  INVITE` is 9 INVITE).
    pub fn parse(s: &[u8]) -> Result<Self, ValueError> {
        let i = skip_ws(s, 0);
        let de = run_end(s, i, |b| b.is_ascii_digit());
        if de == i {
            return Err(unexpected(s, i));
        }
        let seq = parse_u32(s.get(i..de).unwrap_or_default())?;
        let m = skip_ws(s, de);
        if m == de {
            return Err(unexpected(s, m));
        }
        let me = token_end(s, m);
        let method = Method::from_bytes(s.get(m..me).unwrap_or_default()).ok_or_else(|| unexpected(s, m))?;
        expect_end(s, me)?;
        Ok(Self { seq, method })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

// ---------------------------------------------------------- MediaType ---

/// A media type or media range (`application/sdp`, `multipart/mixed;
/// boundary=x`, `*/*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType<'a> {
    raw: &'a str,
    top: &'a str,
    sub: &'a str,
    params: Params<'a>,
}

impl<'a> MediaType<'a> {
    pub(crate) fn parse_at(s: &'a [u8], i: usize) -> Result<(Self, usize), ValueError> {
        let start = skip_ws(s, i);
        let (top, j) = token_at(s, start)?;
        let j = skip_ws(s, expect(s, j, b'/')?);
        let (sub, j) = token_at(s, j)?;
        let end = scan_header_params(s, j)?;
        Ok((
            MediaType { raw: utf8(s.get(start..end).unwrap_or_default())?, top, sub, params: params_slice(s, j, end) },
            end,
        ))
    }

    /// Parses one media type.
    pub fn parse(s: &'a str) -> Result<Self, ValueError> {
        let (m, end) = Self::parse_at(s.as_bytes(), 0)?;
        expect_end(s.as_bytes(), end)?;
        Ok(m)
    }

    /// The type as written (`application`).
    pub fn top_level(&self) -> &'a str {
        self.top
    }

    /// The subtype as written (`sdp`).
    pub fn subtype(&self) -> &'a str {
        self.sub
    }

    /// Parameters (`boundary`, `q`, `charset`).
    pub fn params(&self) -> Params<'a> {
        self.params
    }

    /// True when this is exactly `top/sub` (case-insensitive).
    pub fn is(&self, top: &str, sub: &str) -> bool {
        self.top.eq_ignore_ascii_case(top) && self.sub.eq_ignore_ascii_case(sub)
    }

    /// True when this media range (with `*` wildcards) covers `top/sub`.
    pub fn covers(&self, top: &str, sub: &str) -> bool {
        (self.top == "*" || self.top.eq_ignore_ascii_case(top))
            && (self.sub == "*" || self.sub.eq_ignore_ascii_case(sub))
    }

    /// The `q` parameter in thousandths (1000 when absent or malformed).
    pub fn q(&self) -> u16 {
        self.params.value("q").and_then(|q| parse_qvalue(q).ok()).unwrap_or(1000)
    }

    /// The value as received.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

impl fmt::Display for MediaType<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.raw)
    }
}

// --------------------------------------------------------------- Auth ---

/// An Authorization, Proxy-Authorization, WWW-Authenticate or
/// Proxy-Authenticate value: a scheme and its auth-params (or a token68
/// blob). Unknown schemes parse too (RFC 4475 regaut01).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader<'a> {
    raw: &'a str,
    scheme: &'a str,
    params: Vec<Param<'a>>,
    token68: Option<&'a str>,
}

impl<'a> AuthHeader<'a> {
    /// Parses one value.
    pub fn parse(s: &'a [u8]) -> Result<Self, ValueError> {
        let start = skip_ws(s, 0);
        let (scheme, j) = token_at(s, start)?;
        let raw = utf8(trim(s))?;
        let k = skip_ws(s, j);
        if k >= s.len() {
            return Ok(Self { raw, scheme, params: Vec::new(), token68: None });
        }
        if k == j {
            return Err(unexpected(s, k));
        }
        match Self::auth_params(s, k) {
            Ok(params) => Ok(Self { raw, scheme, params, token68: None }),
            Err(e) => {
                let te = run_end(s, k, |b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
                });
                let te = run_end(s, te, |b| b == b'=');
                if te > k && skip_ws(s, te) >= s.len() {
                    Ok(Self { raw, scheme, params: Vec::new(), token68: Some(utf8(s.get(k..te).unwrap_or_default())?) })
                } else {
                    Err(e)
                }
            }
        }
    }

    fn auth_params(s: &'a [u8], mut i: usize) -> Result<Vec<Param<'a>>, ValueError> {
        let mut out = Vec::new();
        loop {
            let (name, ne) = token_at(s, i)?;
            let v = skip_ws(s, expect(s, ne, b'=')?);
            let ve = match s.get(v) {
                Some(b'"') => quoted_end(s, v)?,
                _ => token_end(s, v),
            };
            if ve == v {
                return Err(unexpected(s, v));
            }
            out.push(Param { name, value: Some(utf8(s.get(v..ve).unwrap_or_default())?) });
            match list_continue(s, ve)? {
                Some(next) => i = next,
                None => return Ok(out),
            }
        }
    }

    /// The scheme as written (`Digest`).
    pub fn scheme(&self) -> &'a str {
        self.scheme
    }

    /// The auth-params in order, values as written (quotes included).
    pub fn params(&self) -> &[Param<'a>] {
        &self.params
    }

    /// The raw value of an auth-param (name case-insensitive).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.iter().find(|p| p.name.eq_ignore_ascii_case(name)).and_then(|p| p.value)
    }

    /// The unquoted value of an auth-param.
    pub fn param_unquoted(&self, name: &str) -> Option<Cow<'a, str>> {
        self.param(name).map(|v| unquote_lossy(v.as_bytes()))
    }

    /// The token68 blob of schemes like Basic, if the value is one.
    pub fn token68(&self) -> Option<&'a str> {
        self.token68
    }

    /// The value as received.
    pub fn as_str(&self) -> &'a str {
        self.raw
    }
}

// ------------------------------------------------ Warning, Retry-After ---

/// One Warning value (RFC 3261 §20.43).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warning<'a> {
    code: u16,
    agent: &'a str,
    text: &'a [u8],
}

impl<'a> Warning<'a> {
    pub(crate) fn parse_at(s: &'a [u8], i: usize) -> Result<(Self, usize), ValueError> {
        let start = skip_ws(s, i);
        let ce = run_end(s, start, |b| b.is_ascii_digit());
        if ce - start != 3 {
            return Err(ValueError::InvalidWarnCode);
        }
        let code = u16::try_from(parse_decimal(s.get(start..ce).unwrap_or_default(), 999)?)
            .map_err(|_| ValueError::InvalidWarnCode)?;
        let a = skip_ws(s, ce);
        if a == ce {
            return Err(unexpected(s, a));
        }
        let ae = run_end(s, a, |b| !is_ws(b) && b != b'"' && b != b',');
        if ae == a {
            return Err(unexpected(s, a));
        }
        let agent = utf8(s.get(a..ae).unwrap_or_default())?;
        let t = skip_ws(s, ae);
        if s.get(t) != Some(&b'"') {
            return Err(unexpected(s, t));
        }
        let te = quoted_end(s, t)?;
        Ok((Warning { code, agent, text: s.get(t..te).unwrap_or_default() }, te))
    }

    /// The three-digit warn-code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The warn-agent (`host[:port]` or a pseudonym).
    pub fn agent(&self) -> &'a str {
        self.agent
    }

    /// The warn-text, unquoted.
    pub fn text(&self) -> Cow<'a, str> {
        unquote_lossy(self.text)
    }
}

/// The Retry-After header (RFC 3261 §20.33).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter<'a> {
    seconds: u32,
    comment: Option<&'a [u8]>,
    params: Params<'a>,
}

impl<'a> RetryAfter<'a> {
    /// Parses a Retry-After value.
    pub fn parse(s: &'a [u8]) -> Result<Self, ValueError> {
        let i = skip_ws(s, 0);
        let de = run_end(s, i, |b| b.is_ascii_digit());
        if de == i {
            return Err(unexpected(s, i));
        }
        let seconds = parse_u32(s.get(i..de).unwrap_or_default())?;
        let mut j = skip_ws(s, de);
        let mut comment = None;
        if s.get(j) == Some(&b'(') {
            let mut depth = 0usize;
            let mut k = j;
            loop {
                match s.get(k) {
                    None => return Err(ValueError::UnexpectedEnd),
                    Some(b'\\') => k += 1,
                    Some(b'(') => depth += 1,
                    Some(b')') => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            break;
                        }
                    }
                    Some(_) => {}
                }
                k += 1;
            }
            comment = s.get(j..=k);
            j = k + 1;
        } else {
            j = de;
        }
        let end = scan_header_params(s, j)?;
        expect_end(s, end)?;
        Ok(Self { seconds, comment, params: params_slice(s, j, end) })
    }

    /// The delay in seconds.
    pub fn seconds(&self) -> u32 {
        self.seconds
    }

    /// The comment with its parentheses, as written.
    pub fn comment(&self) -> Option<&'a [u8]> {
        self.comment
    }

    /// Parameters (`duration`).
    pub fn params(&self) -> Params<'a> {
        self.params
    }
}

// ------------------------------------------------ accessors on Headers ---

fn invalid(name: HeaderName, problem: ValueError) -> HeaderError {
    HeaderError::Invalid { name, problem }
}

impl Headers {
    /// The only line with this name: `Missing` or `Duplicate` otherwise.
    pub fn single(&self, name: HeaderName) -> Result<&Header, HeaderError> {
        self.single_at(name).map(|(_, h)| h)
    }

    /// [`Headers::single`], with the line's index.
    fn single_at(&self, name: HeaderName) -> Result<(usize, &Header), HeaderError> {
        match self.single_index(&name) {
            Ok(i) => self.at(i).map(|h| (i, h)).ok_or(HeaderError::Missing { name }),
            Err(true) => Err(HeaderError::Duplicate { name }),
            Err(false) => Err(HeaderError::Missing { name }),
        }
    }

    /// The line with this name if present: `Duplicate` when there are more.
    pub fn optional(&self, name: HeaderName) -> Result<Option<&Header>, HeaderError> {
        match self.single(name) {
            Ok(h) => Ok(Some(h)),
            Err(HeaderError::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Collects a comma-separated list spread over any number of lines.
    fn list<'a, T>(
        &'a self,
        name: HeaderName,
        allow_empty: bool,
        parse: impl Fn(&'a Bytes, usize) -> Result<(T, usize), ValueError>,
    ) -> Result<Vec<T>, HeaderError> {
        let mut out = Vec::new();
        for h in self.get_all(&name) {
            let s = h.value();
            let mut i = skip_ws(s, 0);
            if i >= s.len() {
                if allow_empty {
                    continue;
                }
                return Err(invalid(name.clone(), ValueError::Empty));
            }
            loop {
                let (v, end) = parse(h.value_bytes(), i).map_err(|e| invalid(name.clone(), e))?;
                out.push(v);
                match list_continue(s, end).map_err(|e| invalid(name.clone(), e))? {
                    Some(next) => i = next,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Every Via value, top first, across lines and comma lists.
    pub fn vias(&self) -> Result<Vec<Via<'_>>, HeaderError> {
        self.list(HeaderName::Via, false, |b, i| Via::parse_at(b, i))
    }

    /// The topmost Via value only (cheaper than [`vias`](Self::vias)).
    pub fn top_via(&self) -> Result<Via<'_>, HeaderError> {
        let h = self.get(&HeaderName::Via).ok_or(HeaderError::Missing { name: HeaderName::Via })?;
        let s = h.value();
        let (via, end) = Via::parse_at(s, skip_ws(s, 0)).map_err(|e| invalid(HeaderName::Via, e))?;
        list_continue(s, end).map_err(|e| invalid(HeaderName::Via, e))?;
        Ok(via)
    }

    /// The From header.
    pub fn from(&self) -> Result<NameAddr<'_>, HeaderError> {
        self.name_addr(HeaderName::From)
    }

    /// The To header.
    pub fn to(&self) -> Result<NameAddr<'_>, HeaderError> {
        self.name_addr(HeaderName::To)
    }

    /// The From tag, if any, without parsing the From URI
    /// ([`NameAddr::tag_in`]).
    pub fn from_tag(&self) -> Result<Option<&str>, HeaderError> {
        self.tag_of(HeaderName::From)
    }

    /// The To tag, if any, without parsing the To URI.
    pub fn to_tag(&self) -> Result<Option<&str>, HeaderError> {
        self.tag_of(HeaderName::To)
    }

    fn tag_of(&self, name: HeaderName) -> Result<Option<&str>, HeaderError> {
        let from = name == HeaderName::From;
        if let Some(tag) = self.cached_tag(from) {
            return Ok(tag);
        }
        let (line, h) = self.single_at(name.clone())?;
        let tag = NameAddr::tag_in(h.value_bytes()).map_err(|e| invalid(name, e))?;
        self.cache_tag(from, line, tag);
        Ok(tag)
    }

    fn name_addr(&self, name: HeaderName) -> Result<NameAddr<'_>, HeaderError> {
        let h = self.single(name.clone())?;
        NameAddr::parse(h.value_bytes()).map_err(|e| invalid(name, e))
    }

    /// The Call-ID: one line, non-empty, no whitespace or control bytes.
    pub fn call_id(&self) -> Result<&str, HeaderError> {
        let h = self.single(HeaderName::CallId)?;
        let v = h.value();
        if v.is_empty() {
            return Err(invalid(HeaderName::CallId, ValueError::Empty));
        }
        if let Some(offset) = v.iter().position(|b| !(0x21..=0x7e).contains(b)) {
            let byte = v.get(offset).copied().unwrap_or(0);
            return Err(invalid(HeaderName::CallId, ValueError::UnexpectedByte { offset, byte }));
        }
        Ok(ascii(v))
    }

    /// The CSeq header.
    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        let h = self.single(HeaderName::CSeq)?;
        CSeq::parse(h.value()).map_err(|e| invalid(HeaderName::CSeq, e))
    }

    /// Max-Forwards (0..=255), `None` when absent.
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        let Some(h) = self.optional(HeaderName::MaxForwards)? else {
            return Ok(None);
        };
        parse_decimal(h.value(), 255)
            .map(|v| Some(u8::try_from(v).unwrap_or(u8::MAX)))
            .map_err(|e| invalid(HeaderName::MaxForwards, e))
    }

    /// The Contact headers: `*`, or the list of contacts (empty when
    /// absent).
    pub fn contacts(&self) -> Result<Contacts<'_>, HeaderError> {
        let lines = self.count(&HeaderName::Contact);
        let star = self.get_all(&HeaderName::Contact).any(|h| trim(h.value()) == b"*");
        if star {
            return if lines == 1 {
                Ok(Contacts::Star)
            } else {
                Err(invalid(HeaderName::Contact, ValueError::StarWithOthers))
            };
        }
        self.list(HeaderName::Contact, false, NameAddr::parse_at).map(Contacts::List)
    }

    /// Route values, in order.
    pub fn routes(&self) -> Result<Vec<NameAddr<'_>>, HeaderError> {
        self.list(HeaderName::Route, false, NameAddr::parse_at)
    }

    /// Record-Route values, in order.
    pub fn record_routes(&self) -> Result<Vec<NameAddr<'_>>, HeaderError> {
        self.list(HeaderName::RecordRoute, false, NameAddr::parse_at)
    }

    /// Diversion values (RFC 5806), in order.
    pub fn diversions(&self) -> Result<Vec<NameAddr<'_>>, HeaderError> {
        self.list(HeaderName::Diversion, false, NameAddr::parse_at)
    }

    /// Content-Length, `None` when absent. Repeated identical values are
    /// accepted; differing ones are `Duplicate`.
    pub fn content_length(&self) -> Result<Option<u32>, HeaderError> {
        let mut value = None;
        for h in self.get_all(&HeaderName::ContentLength) {
            let v = parse_u32(h.value()).map_err(|e| invalid(HeaderName::ContentLength, e))?;
            if value.is_some_and(|old| old != v) {
                return Err(HeaderError::Duplicate { name: HeaderName::ContentLength });
            }
            value = Some(v);
        }
        Ok(value)
    }

    /// Content-Type, `None` when absent.
    pub fn content_type(&self) -> Result<Option<MediaType<'_>>, HeaderError> {
        let Some(h) = self.optional(HeaderName::ContentType)? else {
            return Ok(None);
        };
        let s = h.value();
        let (m, end) = MediaType::parse_at(s, 0).map_err(|e| invalid(HeaderName::ContentType, e))?;
        expect_end(s, end).map_err(|e| invalid(HeaderName::ContentType, e))?;
        Ok(Some(m))
    }

    /// Expires in seconds, `None` when absent. Values above 2^32-1 are
    /// errors; RFC 3261 §20.19 lets the caller treat them as 3600.
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        let Some(h) = self.optional(HeaderName::Expires)? else {
            return Ok(None);
        };
        parse_u32(h.value()).map(Some).map_err(|e| invalid(HeaderName::Expires, e))
    }

    fn option_tags(&self, name: HeaderName) -> Result<Vec<&str>, HeaderError> {
        self.list(name, true, |b, i| token_at(b, i))
    }

    /// Require option tags.
    pub fn require(&self) -> Result<Vec<&str>, HeaderError> {
        self.option_tags(HeaderName::Require)
    }

    /// Proxy-Require option tags.
    pub fn proxy_require(&self) -> Result<Vec<&str>, HeaderError> {
        self.option_tags(HeaderName::ProxyRequire)
    }

    /// Supported option tags.
    pub fn supported(&self) -> Result<Vec<&str>, HeaderError> {
        self.option_tags(HeaderName::Supported)
    }

    /// Unsupported option tags.
    pub fn unsupported(&self) -> Result<Vec<&str>, HeaderError> {
        self.option_tags(HeaderName::Unsupported)
    }

    /// Allow: the methods listed.
    pub fn allow(&self) -> Result<Vec<Method>, HeaderError> {
        self.list(HeaderName::Allow, true, |b, i| {
            let (t, end) = token_at(b, i)?;
            Method::from_bytes(t.as_bytes()).map(|m| (m, end)).ok_or(ValueError::InvalidMethod)
        })
    }

    /// Accept: `None` when absent, else the media ranges (possibly none:
    /// an empty Accept accepts no body at all).
    pub fn accept(&self) -> Result<Option<Vec<MediaType<'_>>>, HeaderError> {
        if !self.contains(&HeaderName::Accept) {
            return Ok(None);
        }
        self.list(HeaderName::Accept, true, |b, i| MediaType::parse_at(b, i)).map(Some)
    }

    fn auth(&self, name: HeaderName) -> Result<Vec<AuthHeader<'_>>, HeaderError> {
        self.get_all(&name).map(|h| AuthHeader::parse(h.value()).map_err(|e| invalid(name.clone(), e))).collect()
    }

    /// Authorization values (one per line; never comma-combined).
    pub fn authorization(&self) -> Result<Vec<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::Authorization)
    }

    /// Proxy-Authorization values.
    pub fn proxy_authorization(&self) -> Result<Vec<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::ProxyAuthorization)
    }

    /// WWW-Authenticate challenges.
    pub fn www_authenticate(&self) -> Result<Vec<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::WwwAuthenticate)
    }

    /// Proxy-Authenticate challenges.
    pub fn proxy_authenticate(&self) -> Result<Vec<AuthHeader<'_>>, HeaderError> {
        self.auth(HeaderName::ProxyAuthenticate)
    }

    /// Warning values.
    pub fn warnings(&self) -> Result<Vec<Warning<'_>>, HeaderError> {
        self.list(HeaderName::Warning, false, |b, i| Warning::parse_at(b, i))
    }

    /// Retry-After, `None` when absent.
    pub fn retry_after(&self) -> Result<Option<RetryAfter<'_>>, HeaderError> {
        let Some(h) = self.optional(HeaderName::RetryAfter)? else {
            return Ok(None);
        };
        RetryAfter::parse(h.value()).map(Some).map_err(|e| invalid(HeaderName::RetryAfter, e))
    }
}

/// The first header param of a value, for quick looks such as a To tag.
pub(crate) fn has_tag(buf: &Bytes) -> bool {
    NameAddr::tag_in(buf).is_ok_and(|t| t.is_some())
}
