//! Start line, header section and body framing.
//!
//! One pass over the bytes: lines are found with `memchr`, header values
//! are `Bytes` slices of the input (no copy), nothing inside a value is
//! interpreted except Content-Length, which frames the body.

use bytes::Bytes;

use super::error::{
    ContentLengthError, HeaderLineProblem, ParseError, RequestLineFlaw, RequestProblem, StartLineProblem,
};
use super::header::{Header, HeaderName, Headers};
use super::method::Method;
use super::msg::{Message, Request, Response, Version};
use super::scan::parse_decimal;
use super::uri::Uri;

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// A whole UDP datagram: without Content-Length the body is the rest
    /// of the datagram (RFC 3261 §18.3, RFC 2543 compatibility); octets
    /// after Content-Length bytes are ignored; a header section that ends
    /// with the data (no empty line, last line complete) is accepted.
    Datagram,
    /// Bytes cut by the stream framer: exactly one message whose
    /// Content-Length is present and matches.
    Stream,
}

/// Finds the end of the line starting at `from`: `(end of content, start
/// of next line)`. `Ok(None)` when the data ends first; `Err` for a CR not
/// followed by LF.
pub(crate) fn line_end(s: &[u8], from: usize) -> Result<Option<(usize, usize)>, ()> {
    let Some(rest) = s.get(from..) else {
        return Ok(None);
    };
    let Some(k) = memchr::memchr2(b'\r', b'\n', rest) else {
        return Ok(None);
    };
    let k = from + k;
    match (s.get(k), s.get(k + 1)) {
        (Some(b'\n'), _) => Ok(Some((k, k + 1))),
        (Some(b'\r'), Some(b'\n')) => Ok(Some((k, k + 2))),
        (Some(b'\r'), None) => Ok(None),
        _ => Err(()),
    }
}

fn is_sp_ht(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A header whose value may continue on folded lines.
struct Pending {
    name: HeaderName,
    start: Option<usize>,
    end: usize,
}

/// Parses one message from `buf`.
pub(crate) fn parse_message(buf: Bytes, framing: Framing) -> Result<Message, ParseError> {
    let s: &[u8] = &buf;
    if s.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0)) {
        return Err(ParseError::Empty);
    }
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let mut pos = 0;
    while matches!(s.get(pos), Some(b'\r' | b'\n')) {
        pos += 1;
    }
    let (sl_end, next) = match line_end(s, pos) {
        Ok(Some(x)) => x,
        Ok(None) => return Err(ParseError::Truncated),
        Err(()) => {
            return Err(ParseError::StartLine { problem: StartLineProblem::BareCr });
        }
    };
    let start_line = s.get(pos..sl_end).unwrap_or_default();
    let is_response = start_line.get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"));
    let start = if is_response {
        StartLine::Status(parse_status_line(&buf, pos, sl_end)?)
    } else {
        StartLine::Request(split_request_line(start_line, pos)?)
    };

    let (headers, content_length, body_start) = parse_headers(&buf, next, framing)?;

    let available = s.len().saturating_sub(body_start);
    let body = match content_length {
        Some(Err(e)) => Err(e),
        Some(Ok(n)) if n > available as u64 => Err(ContentLengthError::ExceedsData { declared: n, available }),
        Some(Ok(n)) => {
            let end = body_start + usize::try_from(n).unwrap_or(available);
            Ok(buf.slice(body_start..end))
        }
        None => match framing {
            Framing::Datagram => Ok(buf.slice(body_start..)),
            Framing::Stream => Err(ContentLengthError::Missing),
        },
    };

    match start {
        StartLine::Status(st) => {
            let body = body.map_err(|problem| ParseError::ResponseFraming { problem })?;
            Ok(Message::Response(Response { version: st.version, status: st.status, reason: st.reason, headers, body }))
        }
        StartLine::Request(rl) => {
            let bad = |problem: RequestProblem, method: Method, headers: Headers| ParseError::BadRequest {
                problem,
                method,
                headers: Box::new(headers),
            };
            let body = match body {
                Ok(b) => b,
                Err(e) => return Err(bad(RequestProblem::ContentLength(e), rl.method, headers)),
            };
            let uri = match request_uri(&buf, &rl) {
                Ok(u) => u,
                Err(flaw) => {
                    return Err(bad(RequestProblem::RequestLine(flaw), rl.method, headers));
                }
            };
            Ok(Message::Request(Request { method: rl.method, uri, version: rl.version, headers, body }))
        }
    }
}

enum StartLine {
    Status(StatusLine),
    Request(RequestLine),
}

struct StatusLine {
    version: Version,
    status: u16,
    reason: Bytes,
}

/// `SIP/2.0 SP 3DIGIT SP reason`; the SP before an empty reason may be
/// missing (liberal).
fn parse_status_line(buf: &Bytes, from: usize, to: usize) -> Result<StatusLine, ParseError> {
    let err = |problem| ParseError::StartLine { problem };
    let line = buf.get(from..to).unwrap_or_default();
    let sp = memchr::memchr(b' ', line).ok_or_else(|| err(StartLineProblem::MissingElement))?;
    let version =
        Version::parse(line.get(..sp).unwrap_or_default()).ok_or_else(|| err(StartLineProblem::InvalidVersion))?;
    let rest = line.get(sp + 1..).unwrap_or_default();
    let code = rest.get(..3).unwrap_or_default();
    let after = rest.get(3);
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) || after.is_some_and(|b| *b != b' ') {
        return Err(err(StartLineProblem::InvalidStatusCode));
    }
    let status = u16::try_from(parse_decimal(code, 999).unwrap_or(0)).unwrap_or(0);
    if !(100..=699).contains(&status) {
        return Err(err(StartLineProblem::InvalidStatusCode));
    }
    let reason_start = from + sp + 1 + 4;
    let reason = if reason_start < to { buf.slice(reason_start..to) } else { Bytes::new() };
    Ok(StatusLine { version, status, reason })
}

struct RequestLine {
    method: Method,
    version: Version,
    /// Absolute range of the Request-URI text (may hold spaces).
    uri_start: usize,
    uri_end: usize,
    trailing_space: bool,
}

/// Splits `Method SP Request-URI SP SIP-Version`: the method ends at the
/// first SP, the version starts after the last one; what lies between is
/// the Request-URI, checked later so that a malformed one can still be
/// answered with 400.
fn split_request_line(line: &[u8], offset: usize) -> Result<RequestLine, ParseError> {
    let err = |problem| ParseError::StartLine { problem };
    let mut end = line.len();
    while end > 0 && line.get(end - 1).is_some_and(|b| is_sp_ht(*b)) {
        end -= 1;
    }
    let trailing_space = end < line.len();
    let l = line.get(..end).unwrap_or_default();
    let sp1 = memchr::memchr(b' ', l).ok_or_else(|| err(StartLineProblem::MissingElement))?;
    let method =
        Method::from_bytes(l.get(..sp1).unwrap_or_default()).ok_or_else(|| err(StartLineProblem::InvalidMethod))?;
    let sp_last = memchr::memrchr(b' ', l).unwrap_or(sp1);
    if sp_last == sp1 {
        return Err(err(StartLineProblem::MissingElement));
    }
    let version = Version::parse(l.get(sp_last + 1..).unwrap_or_default())
        .ok_or_else(|| err(StartLineProblem::InvalidVersion))?;
    Ok(RequestLine { method, version, uri_start: offset + sp1 + 1, uri_end: offset + sp_last, trailing_space })
}

fn request_uri(buf: &Bytes, rl: &RequestLine) -> Result<Uri, RequestLineFlaw> {
    let text = buf.get(rl.uri_start..rl.uri_end).unwrap_or_default();
    if text.first() == Some(&b' ') || text.last() == Some(&b' ') {
        return Err(RequestLineFlaw::ExtraSpace);
    }
    if rl.trailing_space {
        return Err(RequestLineFlaw::TrailingSpace);
    }
    if text.iter().any(|b| is_sp_ht(*b)) {
        return Err(RequestLineFlaw::WhitespaceInUri);
    }
    if text.first() == Some(&b'<') && text.last() == Some(&b'>') {
        return Err(RequestLineFlaw::UriInAngleBrackets);
    }
    let uri = Uri::from_bytes(buf.slice(rl.uri_start..rl.uri_end)).map_err(RequestLineFlaw::InvalidUri)?;
    if uri.as_sip().is_some_and(|u| u.headers_str().is_some()) {
        return Err(RequestLineFlaw::UriWithHeaders);
    }
    Ok(uri)
}

type ContentLength = Option<Result<u64, ContentLengthError>>;

/// Reads header lines from `pos` to the empty line. Returns the headers,
/// the Content-Length verdict and where the body starts.
fn parse_headers(buf: &Bytes, mut pos: usize, framing: Framing) -> Result<(Headers, ContentLength, usize), ParseError> {
    let s: &[u8] = buf;
    // Sized to the header section's line count (folds make it an upper
    // bound), not a fixed guess: 16 lines were 1 KiB and more, past glibc's
    // per-thread cache, so each message's index took the allocator's slow
    // path (and often a realloc beyond 16); an exact size also holds less
    // for the transactions that keep the message.
    let rest = s.get(pos..).unwrap_or_default();
    let head = head_end().find(rest).map_or(rest, |end| rest.get(..end + 2).unwrap_or(rest));
    let lines = memchr::memchr_iter(b'\n', head).count().clamp(1, 64);
    let mut headers = Headers::with_capacity(lines);
    let mut cl: ContentLength = None;
    let mut cur: Option<Pending> = None;
    let mut line = 1usize;
    let section_err = |line, problem| ParseError::HeaderSection { line, problem };
    let body_start = loop {
        line += 1;
        if pos >= s.len() {
            match framing {
                // No empty line but a complete last line: accept (RFC 4475
                // baddn, RFC 5118 §4.10 files end like this).
                Framing::Datagram => break s.len(),
                Framing::Stream => return Err(ParseError::Truncated),
            }
        }
        let (le, next) = match line_end(s, pos) {
            Ok(Some(x)) => x,
            Ok(None) => return Err(ParseError::Truncated),
            Err(()) => return Err(section_err(line, HeaderLineProblem::BareCr)),
        };
        if le == pos {
            break next;
        }
        let content = s.get(pos..le).unwrap_or_default();
        if content.first().is_some_and(|b| is_sp_ht(*b)) {
            let Some(p) = cur.as_mut() else {
                return Err(section_err(line, HeaderLineProblem::ContinuationWithoutHeader));
            };
            if let Some(first) = content.iter().position(|b| !is_sp_ht(*b)) {
                p.start.get_or_insert(pos + first);
                p.end = trimmed_end(s, pos, le);
            }
        } else {
            if let Some(p) = cur.take() {
                finish(buf, p, &mut headers, &mut cl);
            }
            let colon =
                memchr::memchr(b':', content).ok_or_else(|| section_err(line, HeaderLineProblem::MissingColon))?;
            let mut name_end = colon;
            while name_end > 0 && content.get(name_end - 1).is_some_and(|b| is_sp_ht(*b)) {
                name_end -= 1;
            }
            let name = HeaderName::from_shared(buf, content.get(..name_end).unwrap_or_default())
                .ok_or_else(|| section_err(line, HeaderLineProblem::InvalidName))?;
            let vs = pos + colon + 1;
            let first = s.get(vs..le).unwrap_or_default().iter().position(|b| !is_sp_ht(*b));
            cur = Some(Pending { name, start: first.map(|f| vs + f), end: trimmed_end(s, vs, le) });
        }
        pos = next;
    };
    if let Some(p) = cur.take() {
        finish(buf, p, &mut headers, &mut cl);
    }
    Ok((headers, cl, body_start))
}

/// The searcher for the empty line that ends a header section, built once:
/// `memmem::find` builds one per call (some 600 instructions, a tenth of
/// what parsing a whole message costs).
fn head_end() -> &'static memchr::memmem::Finder<'static> {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    &FINDER
}

/// End of `s[from..to]` without trailing SP/HT.
fn trimmed_end(s: &[u8], from: usize, mut to: usize) -> usize {
    while to > from && s.get(to - 1).is_some_and(|b| is_sp_ht(*b)) {
        to -= 1;
    }
    to
}

fn finish(buf: &Bytes, p: Pending, headers: &mut Headers, cl: &mut ContentLength) {
    let value = match p.start {
        Some(start) if start < p.end => buf.slice(start..p.end),
        _ => Bytes::new(),
    };
    if p.name == HeaderName::ContentLength {
        let this = parse_decimal(&value, u64::from(u32::MAX)).map_err(|_| ContentLengthError::Invalid);
        *cl = Some(match (cl.take(), this) {
            (None, v) => v,
            (Some(Err(e)), _) | (Some(Ok(_)), Err(e)) => Err(e),
            (Some(Ok(a)), Ok(b)) if a == b => Ok(a),
            (Some(Ok(_)), Ok(_)) => Err(ContentLengthError::Conflicting),
        });
    }
    headers.push_unchecked(Header::new_unchecked(p.name, value));
}

/// SP/HT trimmed at both ends.
pub(crate) fn trim_sp_ht(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_sp_ht(*b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_sp_ht(*b)).map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or_default()
}

/// True for SP or HT (crate-visible for the framer).
pub(crate) fn is_fold_start(b: u8) -> bool {
    is_sp_ht(b)
}
