//! Errors of the message layer, one enum per kind of failure.
//!
//! - [`ParseError`]: the bytes are not a message we can frame. Drop it, or
//!   answer 400 when it is a [`ParseError::BadRequest`] (never to an ACK).
//! - [`UriError`]: a URI is malformed.
//! - [`ValueError`]: one header value is malformed (lazy typed access).
//! - [`HeaderError`]: a typed accessor failed (missing, duplicated, invalid).

use super::header::{HeaderName, Headers};
use super::method::Method;

/// Why [`parse`](super::parse) (or the stream framer) refused some bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but CR, LF, SP, HT or NUL: a keep-alive or junk. Drop it
    /// silently.
    #[error("empty message")]
    Empty,
    /// The first line is neither a request line nor a status line. Drop the
    /// message (no response can be built).
    #[error("malformed start line: {problem}")]
    StartLine {
        /// What was wrong.
        problem: StartLineProblem,
    },
    /// A header line could not be split into name and value. Drop the
    /// message: no header of it can be trusted.
    #[error("malformed header section at line {line}: {problem}")]
    HeaderSection {
        /// 1-based line number within the message (the start line is 1).
        line: usize,
        /// What was wrong.
        problem: HeaderLineProblem,
    },
    /// The data ends inside the header section (no complete last line).
    /// Drop the datagram; on a stream this cannot happen (the framer waits).
    #[error("message truncated inside its header section")]
    Truncated,
    /// A response's Content-Length cannot frame it. Drop the response.
    #[error("response framing: {problem}")]
    ResponseFraming {
        /// What was wrong.
        problem: ContentLengthError,
    },
    /// A request whose header section was read but whose request line or
    /// framing is malformed. Over UDP answer `400` with
    /// [`reason`](Self::reply_reason), built with
    /// [`Response::from_headers`](super::Response::from_headers) on
    /// `headers` (unless `method` is ACK, which is never answered); over a
    /// stream close the connection.
    #[error("bad request: {problem}")]
    BadRequest {
        /// What was wrong.
        problem: RequestProblem,
        /// The request method, as far as it could be read.
        method: Method,
        /// The header section, so that a 400 can copy Via, From, To,
        /// Call-ID and CSeq.
        headers: Box<Headers>,
    },
    /// The message is larger than the configured limit. Close the
    /// connection (streams) or drop the datagram.
    #[error("message larger than {limit} bytes")]
    TooLarge {
        /// The limit in force, in bytes.
        limit: usize,
    },
}

impl ParseError {
    /// The status code to answer with, when the error allows an answer at
    /// all (only [`ParseError::BadRequest`], and never for ACK).
    pub fn reply_status(&self) -> Option<u16> {
        match self {
            Self::BadRequest { method, .. } if *method != Method::Ack => Some(super::check::status::BAD_REQUEST),
            _ => None,
        }
    }

    /// The reason phrase for [`reply_status`](Self::reply_status).
    pub fn reply_reason(&self) -> Option<String> {
        match self {
            Self::BadRequest { problem, .. } => Some(problem.to_string()),
            _ => None,
        }
    }
}

/// What is wrong with a start line that makes the message unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartLineProblem {
    /// The start line has fewer than three space-separated parts.
    #[error("missing element")]
    MissingElement,
    /// The method is not a `token`.
    #[error("method is not a token")]
    InvalidMethod,
    /// The SIP-Version is not `SIP/<digits>.<digits>`.
    #[error("invalid SIP version")]
    InvalidVersion,
    /// The status code is not three digits in 100..=699.
    #[error("invalid status code")]
    InvalidStatusCode,
    /// A CR not followed by LF.
    #[error("bare CR")]
    BareCr,
}

/// What is wrong with a header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderLineProblem {
    /// The line has no `:`.
    #[error("missing colon")]
    MissingColon,
    /// The header name is empty or not a `token`.
    #[error("invalid header name")]
    InvalidName,
    /// A continuation line (starting with SP or HT) before any header.
    #[error("continuation line without a header")]
    ContinuationWithoutHeader,
    /// A CR not followed by LF.
    #[error("bare CR")]
    BareCr,
}

/// What is wrong with a request that can still be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestProblem {
    /// The Request-Line is malformed.
    #[error("{0}")]
    RequestLine(RequestLineFlaw),
    /// The body cannot be framed.
    #[error("{0}")]
    ContentLength(ContentLengthError),
}

/// A malformation of a Request-Line whose three parts could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestLineFlaw {
    /// More than one SP between elements (RFC 4475 lwsstart).
    #[error("Extra spaces in Request-Line")]
    ExtraSpace,
    /// SP or HT before the CRLF (RFC 4475 trws).
    #[error("Trailing spaces in Request-Line")]
    TrailingSpace,
    /// Whitespace inside the Request-URI (RFC 4475 lwsruri).
    #[error("Whitespace in Request-URI")]
    WhitespaceInUri,
    /// The Request-URI is enclosed in `<>` (RFC 4475 ltgtruri).
    #[error("Request-URI enclosed in <>")]
    UriInAngleBrackets,
    /// The Request-URI has a headers part (`?h=v`, RFC 4475 escruri).
    #[error("Request-URI with headers")]
    UriWithHeaders,
    /// The Request-URI does not parse.
    #[error("Malformed Request-URI: {0}")]
    InvalidUri(UriError),
}

/// Why a Content-Length cannot frame a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContentLengthError {
    /// Negative, empty or non-numeric, or above 2^32-1.
    #[error("Invalid Content-Length")]
    Invalid,
    /// Two Content-Length headers with different values.
    #[error("Conflicting Content-Length values")]
    Conflicting,
    /// The value is larger than the bytes that follow the header section.
    #[error("Content-Length {declared} exceeds the {available} body bytes")]
    ExceedsData {
        /// The value of the header.
        declared: u64,
        /// The bytes present after the header section.
        available: usize,
    },
    /// No Content-Length on a stream transport (RFC 3261 §18.3 MUST).
    #[error("Missing Content-Length on a stream")]
    Missing,
}

/// A malformed URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Nothing to parse.
    #[error("empty URI")]
    Empty,
    /// No `scheme:` prefix, or an invalid scheme.
    #[error("missing or invalid scheme")]
    InvalidScheme,
    /// A byte that may not appear in a URI (whitespace, control, `<>"`,
    /// non-ASCII).
    #[error("byte 0x{byte:02x} not allowed at offset {offset}")]
    InvalidByte {
        /// Offset in the URI text.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// `@` with nothing before it.
    #[error("empty user part")]
    EmptyUser,
    /// `%` not followed by two hex digits in the user or password.
    #[error("invalid %-escape at offset {offset}")]
    InvalidEscape {
        /// Offset in the URI text.
        offset: usize,
    },
    /// The host is empty or not a hostname / IPv4 address / IPv6 reference.
    #[error("invalid host")]
    InvalidHost,
    /// The port is empty, not a number or above 65535.
    #[error("invalid port")]
    InvalidPort,
    /// An empty `;;` parameter.
    #[error("empty parameter")]
    EmptyParam,
    /// A tel URI without a number.
    #[error("empty telephone number")]
    EmptyNumber,
}

/// A malformed header value (found by a typed accessor).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The value is empty where something is required.
    #[error("empty value")]
    Empty,
    /// The value ends where more was required.
    #[error("unexpected end")]
    UnexpectedEnd,
    /// A byte that the grammar does not allow here.
    #[error("unexpected byte 0x{byte:02x} at offset {offset}")]
    UnexpectedByte {
        /// Offset in the header value.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A quoted string without its closing quote.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A `<` without its `>`.
    #[error("unterminated <")]
    UnterminatedAngleBracket,
    /// An empty list element or parameter (`,,` or `;;`).
    #[error("empty element")]
    EmptyElement,
    /// A number too large for its field (CSeq above 2^32-1, Max-Forwards
    /// above 255, ...).
    #[error("number out of range")]
    NumberOutOfRange,
    /// The URI inside the value is malformed.
    #[error("invalid URI: {0}")]
    Uri(#[from] UriError),
    /// An addr-spec (no `<>`) whose URI has a `?` headers part, which then
    /// must be enclosed in `<>` (RFC 3261 §20).
    #[error("URI with headers must be enclosed in <>")]
    UriNeedsAngleBrackets,
    /// A name or value that must be UTF-8 is not.
    #[error("not UTF-8")]
    InvalidUtf8,
    /// More values than the header allows (single-valued header with a
    /// comma-separated second value).
    #[error("more than one value")]
    MultipleValues,
    /// `Contact: *` combined with other values.
    #[error("'*' combined with other values")]
    StarWithOthers,
    /// A method name that is not a token.
    #[error("invalid method")]
    InvalidMethod,
    /// A warn-code that is not three digits.
    #[error("warn-code must be three digits")]
    InvalidWarnCode,
}

/// A typed header accessor failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A header that is required here is absent.
    #[error("Missing {name} header")]
    Missing {
        /// The header.
        name: HeaderName,
    },
    /// A single-valued header appears more than once.
    #[error("Multiple {name} headers")]
    Duplicate {
        /// The header.
        name: HeaderName,
    },
    /// The header value is malformed.
    #[error("Malformed {name} header: {problem}")]
    Invalid {
        /// The header.
        name: HeaderName,
        /// What was wrong.
        problem: ValueError,
    },
}
