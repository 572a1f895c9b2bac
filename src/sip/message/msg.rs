//! Requests, responses, their builders and their serialization.
//!
//! Serialization writes the start line, then every header as
//! `Long-Name: value` CRLF (compact names become long names; the value is
//! written byte for byte, a bare LF inside a folded value becomes CRLF),
//! then an empty line and the body. A message without Content-Length gets
//! one appended, since streams need it (RFC 3261 §18.3 SHOULD for all).

use std::fmt;

use bytes::Bytes;

use super::header::{Header, HeaderName, Headers};
use super::method::Method;
use super::uri::Uri;

/// A SIP version `SIP/major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    /// Major number.
    pub major: u8,
    /// Minor number.
    pub minor: u8,
}

impl Version {
    /// SIP/2.0, the only version this stack speaks.
    pub const SIP_2_0: Self = Self { major: 2, minor: 0 };

    /// Parses `SIP/<digits>.<digits>` (`SIP` case-insensitive).
    pub(crate) fn parse(s: &[u8]) -> Option<Self> {
        let (proto, rest) = (s.get(..4)?, s.get(4..)?);
        if !proto.eq_ignore_ascii_case(b"SIP/") {
            return None;
        }
        let dot = memchr::memchr(b'.', rest)?;
        let num = |d: &[u8]| -> Option<u8> {
            if d.is_empty() || d.len() > 3 || !d.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(d).ok()?.parse().ok()
        };
        Some(Self { major: num(rest.get(..dot)?)?, minor: num(rest.get(dot + 1..)?)? })
    }
}

impl Default for Version {
    fn default() -> Self {
        Self::SIP_2_0
    }
}

impl Version {
    /// Appends the version as written on the wire (`SIP/2.0` without the
    /// formatting machinery: every serialized message starts with it).
    fn write_to(&self, out: &mut Vec<u8>) {
        if *self == Self::SIP_2_0 {
            out.extend_from_slice(b"SIP/2.0");
        } else {
            out.extend_from_slice(b"SIP/");
            out.extend_from_slice(itoa::Buffer::new().format(self.major).as_bytes());
            out.push(b'.');
            out.extend_from_slice(itoa::Buffer::new().format(self.minor).as_bytes());
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/{}.{}", self.major, self.minor)
    }
}

/// Why a builder refused to build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A status code outside 100..=699.
    #[error("status code {status} outside 100..=699")]
    InvalidStatus {
        /// The code given.
        status: u16,
    },
    /// A reason phrase with CR or LF.
    #[error("reason phrase contains CR or LF")]
    InvalidReason,
    /// A header name that is not a token.
    #[error("header name is not a token")]
    InvalidHeaderName,
    /// A header value with CR or LF.
    #[error("value of {name} contains CR or LF")]
    InvalidHeaderValue {
        /// The header.
        name: HeaderName,
    },
    /// A To tag that is not a token.
    #[error("tag is not a token")]
    InvalidTag,
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
}

impl Request {
    /// Starts building a request.
    pub fn builder(method: Method, uri: Uri) -> RequestBuilder {
        RequestBuilder { method, uri, lines: Lines::new(), body: None, error: None }
    }

    /// The method of the Request-Line.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The Request-URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Replaces the Request-URI.
    pub fn set_uri(&mut self, uri: Uri) {
        self.uri = uri;
    }

    /// The SIP version of the Request-Line (check it: 505 unless 2.0).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The header lines.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The header lines, to edit.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The body (framed by Content-Length).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Replaces the body and sets Content-Length accordingly.
    pub fn set_body(&mut self, body: Bytes) {
        set_content_length(&mut self.headers, body.len());
        self.body = body;
    }

    /// Keeps only the header lines named in `names`, and no body (nor its
    /// Content-Length): what a UA holds of a request it sent, to build an
    /// ACK or a BYE from it later, without holding on to the rest (nor to
    /// the received message whose buffer a copied line or body shares):
    /// the kept lines are copied into a buffer of their own.
    pub fn keep_only(&mut self, names: &[HeaderName]) {
        self.headers.retain(|h| names.contains(h.name()));
        self.headers.compact();
        self.body = Bytes::new();
    }

    /// Serializes the request (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.uri.raw());
        out.push(b' ');
        self.version.write_to(&mut out);
        out.extend_from_slice(b"\r\n");
        write_rest(&mut out, &self.headers, &self.body);
        out
    }

    fn encoded_len_hint(&self) -> usize {
        64 + self.uri.raw().len() + self.body.len() + self.headers.iter().map(|h| h.value().len() + 24).sum::<usize>()
    }
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub(crate) version: Version,
    pub(crate) status: u16,
    pub(crate) reason: Bytes,
    pub(crate) headers: Headers,
    pub(crate) body: Bytes,
}

impl Response {
    /// Starts building a response. The status must be 100..=699 and the
    /// reason must not contain CR or LF (checked by `build`).
    pub fn builder(status: u16, reason: &str) -> ResponseBuilder {
        ResponseBuilder {
            status,
            reason: Bytes::copy_from_slice(reason.as_bytes()),
            lines: Lines::new(),
            body: None,
            error: None,
        }
    }

    /// A response to `req` per RFC 3261 §8.2.6: every Via (in order), From,
    /// To, Call-ID and CSeq copied byte for byte, Timestamp for a 100, and
    /// `Content-Length: 0`. Add a To tag with
    /// [`with_to_tag`](Self::with_to_tag). A status outside 100..=699 is
    /// clamped to 500; CR/LF in the reason is replaced by SP.
    pub fn from_request(req: &Request, status: u16, reason: &str) -> Self {
        Self::from_headers(&req.headers, status, reason)
    }

    /// Like [`from_request`](Self::from_request) from a header section
    /// alone (for answering a [`ParseError::BadRequest`](super::ParseError)).
    pub fn from_headers(headers: &Headers, status: u16, reason: &str) -> Self {
        let status = if (100..=699).contains(&status) { status } else { 500 };
        let reason: String = reason.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
        let mut out = Headers::with_capacity(8);
        for name in [HeaderName::Via, HeaderName::From, HeaderName::To, HeaderName::CallId, HeaderName::CSeq] {
            out.copy_from(headers, &name);
        }
        if status == 100 {
            out.copy_from(headers, &HeaderName::Timestamp);
        }
        out.push_unchecked(Header::new_unchecked(HeaderName::ContentLength, Bytes::from_static(b"0")));
        Self { version: Version::SIP_2_0, status, reason: Bytes::from(reason), headers: out, body: Bytes::new() }
    }

    /// Adds `;tag=<tag>` to the To header unless it already has a tag
    /// (RFC 3261 §8.2.6.2). The tag must be a token.
    pub fn with_to_tag(mut self, tag: &str) -> Result<Self, BuildError> {
        self.set_to_tag(tag)?;
        Ok(self)
    }

    /// [`with_to_tag`](Self::with_to_tag) in place; on error the response
    /// is left as it was.
    pub fn set_to_tag(&mut self, tag: &str) -> Result<(), BuildError> {
        if !super::scan::is_token_str(tag.as_bytes()) {
            return Err(BuildError::InvalidTag);
        }
        let Some(pos) = self.headers.iter().position(|h| *h.name() == HeaderName::To) else {
            return Ok(());
        };
        let Some(old) = self.headers.iter().nth(pos).map(|h| h.value_bytes().clone()) else {
            return Ok(());
        };
        if super::typed::has_tag(&old) {
            return Ok(());
        }
        let mut v = Vec::with_capacity(old.len() + tag.len() + 5);
        v.extend_from_slice(&old);
        v.extend_from_slice(b";tag=");
        v.extend_from_slice(tag.as_bytes());
        self.headers.replace_at(pos, Header::new_unchecked(HeaderName::To, Bytes::from(v)));
        Ok(())
    }

    /// The status code (100..=699).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase as received (may be empty or non-UTF-8).
    pub fn reason(&self) -> &[u8] {
        &self.reason
    }

    /// The reason phrase as text, invalid UTF-8 replaced.
    pub fn reason_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.reason)
    }

    /// The SIP version of the status line.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The header lines.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The header lines, to edit.
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Replaces the body and sets Content-Length accordingly.
    pub fn set_body(&mut self, body: Bytes) {
        set_content_length(&mut self.headers, body.len());
        self.body = body;
    }

    /// Serializes the response (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.reason.len() + self.body.len() + self.headers.iter().map(|h| h.value().len() + 24).sum::<usize>(),
        );
        self.version.write_to(&mut out);
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.reason);
        out.extend_from_slice(b"\r\n");
        write_rest(&mut out, &self.headers, &self.body);
        out
    }
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request(Request),
    /// A response.
    Response(Response),
}

impl Message {
    /// The header lines.
    pub fn headers(&self) -> &Headers {
        match self {
            Self::Request(r) => r.headers(),
            Self::Response(r) => r.headers(),
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            Self::Request(r) => r.body(),
            Self::Response(r) => r.body(),
        }
    }

    /// Serializes the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Request(r) => r.to_bytes(),
            Self::Response(r) => r.to_bytes(),
        }
    }

    /// The request, if this is one.
    pub fn as_request(&self) -> Option<&Request> {
        match self {
            Self::Request(r) => Some(r),
            Self::Response(_) => None,
        }
    }

    /// The response, if this is one.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Self::Request(_) => None,
            Self::Response(r) => Some(r),
        }
    }
}

/// Writes headers, the empty line and the body.
fn write_rest(out: &mut Vec<u8>, headers: &Headers, body: &Bytes) {
    let mut has_cl = false;
    for h in headers {
        has_cl |= *h.name() == HeaderName::ContentLength;
        out.extend_from_slice(h.name().as_str().as_bytes());
        out.extend_from_slice(b": ");
        write_value(out, h.value());
        out.extend_from_slice(b"\r\n");
    }
    if !has_cl {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Writes a value byte for byte, turning the bare LF of an LF-only fold
/// into CRLF (values never hold a bare CR: the parser refuses it).
/// Values without a fold (nearly all) are copied whole: byte by byte, the
/// serializer took about 4,700 instructions per message.
fn write_value(out: &mut Vec<u8>, v: &[u8]) {
    let mut rest = v;
    while let Some(lf) = memchr::memchr(b'\n', rest) {
        let (line, after) = rest.split_at(lf);
        out.extend_from_slice(line);
        // `line` ends just before the LF: a CR there makes it CRLF already.
        if line.last() != Some(&b'\r') {
            out.push(b'\r');
        }
        out.push(b'\n');
        rest = after.get(1..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}

fn set_content_length(headers: &mut Headers, len: usize) {
    headers.remove_all(&HeaderName::ContentLength);
    // Most messages of a call have no body: their length costs nothing.
    let value = if len == 0 { Bytes::from_static(b"0") } else { Bytes::from(len.to_string()) };
    headers.push_unchecked(Header::new_unchecked(HeaderName::ContentLength, value));
}

/// A builder's header lines: every value copied into one buffer, which the
/// built message's headers then share (one allocation for all of them, and
/// a copy of the message costs reference counts, not a copy of each line).
#[derive(Debug)]
struct Lines {
    buf: Vec<u8>,
    lines: Vec<(HeaderName, std::ops::Range<usize>)>,
}

impl Lines {
    /// Sized for a dialog-forming request's lines at once: grown a line at
    /// a time, the buffer was reallocated four times a message and the
    /// list three (2 % of a call's instructions).
    fn new() -> Lines {
        Lines { buf: Vec::with_capacity(512), lines: Vec::with_capacity(12) }
    }

    fn push(&mut self, name: HeaderName, value: &[u8]) -> Result<(), BuildError> {
        if memchr::memchr2(b'\r', b'\n', value).is_some() {
            return Err(BuildError::InvalidHeaderValue { name });
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(value);
        self.lines.push((name, start..self.buf.len()));
        Ok(())
    }

    fn into_headers(self) -> Headers {
        let buf = Bytes::from(self.buf);
        let mut headers = Headers::with_capacity(self.lines.len() + 2);
        for (name, range) in self.lines {
            headers.push_unchecked(Header::new_unchecked(name, buf.slice(range)));
        }
        headers
    }
}

/// Builds a [`Request`]. Errors are reported by [`build`](Self::build).
#[derive(Debug)]
pub struct RequestBuilder {
    method: Method,
    uri: Uri,
    lines: Lines,
    body: Option<(String, Bytes)>,
    error: Option<BuildError>,
}

impl RequestBuilder {
    /// Appends a header line (the value must not contain CR or LF).
    pub fn header(mut self, name: HeaderName, value: impl AsRef<[u8]>) -> Self {
        if let Err(e) = self.lines.push(name, value.as_ref()) {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.body = Some((content_type.to_owned(), body.into()));
        self
    }

    /// Builds the request; Content-Type (with a body) and Content-Length
    /// are added last, replacing any given.
    pub fn build(self) -> Result<Request, BuildError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut headers = self.lines.into_headers();
        let body = finish_body(&mut headers, self.body)?;
        Ok(Request { method: self.method, uri: self.uri, version: Version::SIP_2_0, headers, body })
    }
}

/// Builds a [`Response`]. Errors are reported by [`build`](Self::build).
#[derive(Debug)]
pub struct ResponseBuilder {
    status: u16,
    reason: Bytes,
    lines: Lines,
    body: Option<(String, Bytes)>,
    error: Option<BuildError>,
}

impl ResponseBuilder {
    /// Appends a header line (the value must not contain CR or LF).
    pub fn header(mut self, name: HeaderName, value: impl AsRef<[u8]>) -> Self {
        if let Err(e) = self.lines.push(name, value.as_ref()) {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        self.body = Some((content_type.to_owned(), body.into()));
        self
    }

    /// Builds the response.
    pub fn build(self) -> Result<Response, BuildError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !(100..=699).contains(&self.status) {
            return Err(BuildError::InvalidStatus { status: self.status });
        }
        if self.reason.iter().any(|b| matches!(b, b'\r' | b'\n')) {
            return Err(BuildError::InvalidReason);
        }
        let mut headers = self.lines.into_headers();
        let body = finish_body(&mut headers, self.body)?;
        Ok(Response { version: Version::SIP_2_0, status: self.status, reason: self.reason, headers, body })
    }
}

fn finish_body(headers: &mut Headers, body: Option<(String, Bytes)>) -> Result<Bytes, BuildError> {
    let body = match body {
        Some((ct, b)) => {
            headers.set(HeaderName::ContentType, ct)?;
            b
        }
        None => Bytes::new(),
    };
    set_content_length(headers, body.len());
    Ok(body)
}
