//! Protocol-level screening a UAS/B2BUA applies before its own logic
//! (RFC 3261 §8.2 in its order, plus §16.3 Max-Forwards), and the status
//! codes it answers with, all in one place.
//!
//! Order: 505 version → 400 malformed (501 for an unknown method whose CSeq
//! disagrees) → 501/405 method → 416 URI scheme → 483 Max-Forwards → 420
//! Require → 415 body type → 406 Accept. The first failure decides.

use std::borrow::Cow;

use super::header::HeaderName;
use super::method::Method;
use super::msg::{Request, Response, Version};
use super::typed::MediaType;
use super::uri::Uri;
use super::validate::ValidationError;

/// Status codes and reason phrases used by the message layer.
pub mod status {
    /// 400 Bad Request.
    pub const BAD_REQUEST: u16 = 400;
    /// 405 Method Not Allowed (known method, not allowed here).
    pub const METHOD_NOT_ALLOWED: u16 = 405;
    /// 406 Not Acceptable (Accept excludes what we would send).
    pub const NOT_ACCEPTABLE: u16 = 406;
    /// 415 Unsupported Media Type.
    pub const UNSUPPORTED_MEDIA_TYPE: u16 = 415;
    /// 416 Unsupported URI Scheme.
    pub const UNSUPPORTED_URI_SCHEME: u16 = 416;
    /// 420 Bad Extension.
    pub const BAD_EXTENSION: u16 = 420;
    /// 483 Too Many Hops.
    pub const TOO_MANY_HOPS: u16 = 483;
    /// 501 Not Implemented (unknown method).
    pub const NOT_IMPLEMENTED: u16 = 501;
    /// 505 Version Not Supported.
    pub const VERSION_NOT_SUPPORTED: u16 = 505;

    /// The default reason phrase of a status code (RFC 3261 §21 and the
    /// later RFCs' codes). Refusal codes are configurable, so any final
    /// code may be sent: an unlisted one gets its class's name (RFC 3261
    /// §21.4-21.6; the phrase carries no meaning for the peer).
    pub fn reason_phrase(code: u16) -> &'static str {
        listed_phrase(code).unwrap_or(match code {
            400..=499 => "Request Failure",
            500..=599 => "Server Failure",
            600..=699 => "Global Failure",
            _ => "Unknown",
        })
    }

    /// The phrase of a code the RFCs name.
    fn listed_phrase(code: u16) -> Option<&'static str> {
        Some(match code {
            100 => "Trying",
            180 => "Ringing",
            181 => "Call Is Being Forwarded",
            182 => "Queued",
            183 => "Session Progress",
            200 => "OK",
            202 => "Accepted",
            400 => "Bad Request",
            401 => "Unauthorized",
            402 => "Payment Required",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            406 => "Not Acceptable",
            407 => "Proxy Authentication Required",
            408 => "Request Timeout",
            410 => "Gone",
            413 => "Request Entity Too Large",
            414 => "Request-URI Too Long",
            415 => "Unsupported Media Type",
            416 => "Unsupported URI Scheme",
            420 => "Bad Extension",
            421 => "Extension Required",
            422 => "Session Interval Too Small",
            423 => "Interval Too Brief",
            480 => "Temporarily Unavailable",
            481 => "Call/Transaction Does Not Exist",
            482 => "Loop Detected",
            483 => "Too Many Hops",
            484 => "Address Incomplete",
            485 => "Ambiguous",
            486 => "Busy Here",
            487 => "Request Terminated",
            488 => "Not Acceptable Here",
            491 => "Request Pending",
            493 => "Undecipherable",
            500 => "Server Internal Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Server Time-out",
            505 => "Version Not Supported",
            513 => "Message Too Large",
            600 => "Busy Everywhere",
            603 => "Decline",
            604 => "Does Not Exist Anywhere",
            606 => "Not Acceptable",
            607 => "Unwanted",
            608 => "Rejected",
            _ => return None,
        })
    }
}

/// The `application/sdp` media type every INVITE UA must handle.
const SDP: (&str, &str) = ("application", "sdp");

/// What [`check_request`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// Methods implemented; others get 405 (standard methods) or 501
    /// (extension methods), with this list in `Allow`.
    pub allow: Vec<Method>,
    /// Option tags supported; a Require tag outside it gets 420.
    pub supported: Vec<String>,
    /// Also check Proxy-Require against `supported` (proxy role). A UAS,
    /// and so a B2BUA, checks only Require. Default false.
    pub check_proxy_require: bool,
    /// Methods whose body is an SDP offer or answer: a body of another type
    /// gets 415 (RFC 3261 §8.2.3), and for INVITE an Accept without
    /// application/sdp gets 406.
    pub sdp_methods: Vec<Method>,
    /// Answer an OPTIONS with Max-Forwards 0 instead of 483 (RFC 3261 §16.3
    /// MAY). Default false.
    pub answer_options_at_zero_max_forwards: bool,
    /// When set, every rejection carries `Warning: 399 <agent> "<reason>"`.
    pub warn_agent: Option<String>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            allow: vec![
                Method::Invite,
                Method::Ack,
                Method::Bye,
                Method::Cancel,
                Method::Options,
                Method::Register,
                Method::Info,
                Method::Update,
            ],
            supported: Vec::new(),
            check_proxy_require: false,
            sdp_methods: vec![Method::Invite, Method::Update, Method::Prack],
            answer_options_at_zero_max_forwards: false,
            warn_agent: None,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectionCause {
    /// The SIP version is not 2.0.
    VersionNotSupported {
        /// The version received.
        version: Version,
    },
    /// The request is malformed.
    Malformed(ValidationError),
    /// An extension method that is not implemented.
    MethodNotImplemented {
        /// The method.
        method: Method,
    },
    /// A standard method that is not allowed here.
    MethodNotAllowed {
        /// The method.
        method: Method,
    },
    /// The Request-URI scheme is not sip, sips or tel.
    UnsupportedUriScheme {
        /// The scheme as written.
        scheme: String,
    },
    /// Max-Forwards is 0.
    TooManyHops,
    /// Require (or Proxy-Require) lists unsupported option tags.
    BadExtension {
        /// The unsupported tags, as written.
        tags: Vec<String>,
    },
    /// The body type of an offer/answer method is not SDP.
    UnsupportedMediaType {
        /// The Content-Type received.
        content_type: String,
    },
    /// Accept on an INVITE excludes application/sdp.
    NotAcceptable,
}

/// A refusal: the status, its reason phrase, the cause and the headers the
/// response must carry (Allow, Unsupported, Accept, Warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status code.
    pub status: u16,
    /// The reason phrase (for 400, what was wrong).
    pub reason: String,
    /// The cause, structured.
    pub cause: RejectionCause,
    /// Headers to add to the response.
    pub headers: Vec<(HeaderName, String)>,
}

impl Rejection {
    fn new(status: u16, reason: impl Into<String>, cause: RejectionCause) -> Self {
        Self { status, reason: reason.into(), cause, headers: Vec::new() }
    }

    fn with(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The response to send, built per RFC 3261 §8.2.6 with the extra
    /// headers and `to_tag` added to To (unless it has one). `None` for an
    /// ACK, which is never answered.
    pub fn to_response(&self, req: &Request, to_tag: Option<&str>) -> Option<Response> {
        if *req.method() == Method::Ack {
            return None;
        }
        let mut resp = Response::from_request(req, self.status, &self.reason);
        if let Some(tag) = to_tag {
            resp = resp.clone().with_to_tag(tag).unwrap_or(resp);
        }
        for (name, value) in &self.headers {
            // Values are built here and hold no CR/LF.
            let _ = resp.headers_mut().push(name.clone(), value);
        }
        Some(resp)
    }
}

/// Applies the protocol-level checks of RFC 3261 §8.2 (and §16.3 for
/// Max-Forwards) to a parsed request. The caller builds the answer with
/// [`Rejection::to_response`]; an ACK is never answered (drop it).
pub fn check_request(req: &Request, cfg: &CheckConfig) -> Result<(), Rejection> {
    check_inner(req, cfg).map_err(|r| match &cfg.warn_agent {
        Some(agent) => {
            let text = r.reason.replace('\\', "\\\\").replace('"', "\\\"");
            r.with(HeaderName::Warning, format!("399 {agent} \"{text}\""))
        }
        None => r,
    })
}

fn allow_value(cfg: &CheckConfig) -> String {
    cfg.allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

fn check_inner(req: &Request, cfg: &CheckConfig) -> Result<(), Rejection> {
    use status::*;
    let method = req.method();
    if req.version() != Version::SIP_2_0 {
        return Err(Rejection::new(
            VERSION_NOT_SUPPORTED,
            reason_phrase(VERSION_NOT_SUPPORTED),
            RejectionCause::VersionNotSupported { version: req.version() },
        ));
    }
    let allowed = cfg.allow.contains(method);
    match req.validate() {
        Ok(()) => {}
        Err(ValidationError::CSeqMethodMismatch { .. }) if !allowed && method.is_extension() => {
            return Err(not_implemented(method, cfg));
        }
        Err(e) => {
            return Err(Rejection::new(BAD_REQUEST, e.to_string(), RejectionCause::Malformed(e)));
        }
    }
    if !allowed {
        return Err(if method.is_extension() {
            not_implemented(method, cfg)
        } else {
            Rejection::new(
                METHOD_NOT_ALLOWED,
                reason_phrase(METHOD_NOT_ALLOWED),
                RejectionCause::MethodNotAllowed { method: method.clone() },
            )
            .with(HeaderName::Allow, allow_value(cfg))
        });
    }
    if !matches!(req.uri(), Uri::Sip(_) | Uri::Tel(_)) {
        return Err(Rejection::new(
            UNSUPPORTED_URI_SCHEME,
            reason_phrase(UNSUPPORTED_URI_SCHEME),
            RejectionCause::UnsupportedUriScheme { scheme: req.uri().scheme().to_owned() },
        ));
    }
    let h = req.headers();
    let malformed = |e: super::error::HeaderError| {
        let e = ValidationError::Header(e);
        Rejection::new(BAD_REQUEST, e.to_string(), RejectionCause::Malformed(e))
    };
    let zero_ok = cfg.answer_options_at_zero_max_forwards && *method == Method::Options;
    if h.max_forwards().map_err(malformed)? == Some(0) && !zero_ok {
        return Err(Rejection::new(TOO_MANY_HOPS, reason_phrase(TOO_MANY_HOPS), RejectionCause::TooManyHops));
    }
    // RFC 3261 §8.2.2.3: Require is ignored in ACK and CANCEL.
    if !matches!(method, Method::Ack | Method::Cancel) {
        let mut tags = h.require().map_err(malformed)?;
        if cfg.check_proxy_require {
            tags.extend(h.proxy_require().map_err(malformed)?);
        }
        let unsupported: Vec<String> = tags
            .into_iter()
            .filter(|t| !cfg.supported.iter().any(|s| s.eq_ignore_ascii_case(t)))
            .map(str::to_owned)
            .collect();
        if !unsupported.is_empty() {
            let list = unsupported.join(", ");
            return Err(Rejection::new(
                BAD_EXTENSION,
                reason_phrase(BAD_EXTENSION),
                RejectionCause::BadExtension { tags: unsupported },
            )
            .with(HeaderName::Unsupported, list));
        }
    }
    if cfg.sdp_methods.contains(method) && !req.body().is_empty() {
        let ct = h.content_type().map_err(malformed)?;
        let ok = ct.is_some_and(|ct| {
            ct.is(SDP.0, SDP.1)
                || (ct.top_level().eq_ignore_ascii_case("multipart") && multipart_has_sdp(&ct, req.body()))
        });
        if !ok {
            return Err(Rejection::new(
                UNSUPPORTED_MEDIA_TYPE,
                reason_phrase(UNSUPPORTED_MEDIA_TYPE),
                RejectionCause::UnsupportedMediaType {
                    content_type: ct.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                },
            )
            .with(HeaderName::Accept, "application/sdp".to_owned()));
        }
    }
    if *method == Method::Invite
        && let Some(ranges) = h.accept().map_err(malformed)?
        && !ranges.iter().any(|r| r.covers(SDP.0, SDP.1) && r.q() > 0)
    {
        return Err(Rejection::new(NOT_ACCEPTABLE, reason_phrase(NOT_ACCEPTABLE), RejectionCause::NotAcceptable));
    }
    Ok(())
}

fn not_implemented(method: &Method, cfg: &CheckConfig) -> Rejection {
    use status::*;
    Rejection::new(
        NOT_IMPLEMENTED,
        reason_phrase(NOT_IMPLEMENTED),
        RejectionCause::MethodNotImplemented { method: method.clone() },
    )
    .with(HeaderName::Allow, allow_value(cfg))
}

/// True when a multipart body has a part of type application/sdp (one
/// level deep).
fn multipart_has_sdp(ct: &MediaType<'_>, body: &[u8]) -> bool {
    let Some(boundary) = ct.params().get("boundary").and_then(|p| p.unquoted_value()) else {
        return false;
    };
    if boundary.is_empty() {
        return false;
    }
    let delim = format!("--{boundary}");
    memchr::memmem::find_iter(body, delim.as_bytes()).any(|at| {
        let part = body.get(at + delim.len()..).unwrap_or_default();
        part_is_sdp(part)
    })
}

/// Reads the header lines of one body part (after its delimiter) and looks
/// at its Content-Type.
fn part_is_sdp(part: &[u8]) -> bool {
    let mut lines = part.split(|b| *b == b'\n').skip(1);
    lines.by_ref().take(64).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        let Some((name, value)) = split_colon(line) else {
            return false;
        };
        if HeaderName::from_bytes(super::parser::trim_sp_ht(name)) != Some(HeaderName::ContentType) {
            return false;
        }
        let value: Cow<'_, str> = String::from_utf8_lossy(value);
        MediaType::parse(value.trim()).is_ok_and(|m| m.is(SDP.0, SDP.1))
    })
}

fn split_colon(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let c = memchr::memchr(b':', line)?;
    Some((line.get(..c)?, line.get(c + 1..)?))
}

/// Why a UAC discards a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseDiscard {
    /// Not SIP/2.0.
    #[error("unsupported version {version}")]
    Version {
        /// The version received.
        version: Version,
    },
    /// Malformed (RFC 4475 scalarlg: CSeq above 2^32-1).
    #[error("malformed: {0}")]
    Malformed(ValidationError),
    /// More than one Via (RFC 3261 §8.1.3.3: a UAC discards it; RFC 4475
    /// bcast).
    #[error("{count} Via values in a response to a UAC")]
    MultipleVias {
        /// How many Via values there are.
        count: usize,
    },
}

/// The checks a UAC (each leg of a B2BUA is one) applies to a response
/// before matching it to a transaction. Drop the response on `Err`.
pub fn check_response(resp: &Response) -> Result<(), ResponseDiscard> {
    if resp.version() != Version::SIP_2_0 {
        return Err(ResponseDiscard::Version { version: resp.version() });
    }
    let count = resp.validate_counting_vias().map_err(ResponseDiscard::Malformed)?;
    if count > 1 {
        return Err(ResponseDiscard::MultipleVias { count });
    }
    Ok(())
}
