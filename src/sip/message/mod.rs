//! SIP messages: a liberal, allocation-light parser, typed header views,
//! serialization, stream framing and the protocol-level request checks.
//!
//! Why our own parser: see `docs/decisions/0001-sip-message-parser.md`.
//!
//! # Map
//!
//! - [`parse`] / [`parse_bytes`]: one datagram (or framed message) →
//!   [`Message`]. Header values stay raw [`bytes::Bytes`] slices of the
//!   input; nothing is re-escaped or re-ordered.
//! - [`Headers`] accessors ([`Headers::vias`], [`Headers::from`],
//!   [`Headers::cseq`], ...): typed views parsed on demand ([`typed`]).
//! - [`Uri`]: `sip`/`sips`/`tel`, any other scheme kept opaque.
//! - [`Request::validate`] / [`check_request`] / [`check_response`]: what
//!   is malformed and which status answers it (constants in
//!   [`status`]).
//! - [`Request::builder`], [`Response::from_request`], `to_bytes`.
//! - [`StreamFramer`]: TCP/TLS framing with RFC 5626 keep-alives.
//!
//! # Round trip
//!
//! `to_bytes` of a parsed message reproduces every header value byte for
//! byte. What is normalised: line endings become CRLF, header names their
//! long canonical form (`v` → `Via`, `cseq` → `CSeq`; unknown names stay as
//! written), the separator becomes `": "`, leading CRLFs and octets after
//! the body are dropped, and a missing Content-Length is added.
//!
//! # Panics
//!
//! None on any input: peer bytes are only read through `get`, iterators
//! and `memchr`; no indexing that can go out of bounds, no `unwrap` on
//! peer data (fuzzed by `fuzz/`).

mod check;
mod error;
mod framer;
mod header;
mod method;
mod msg;
mod params;
mod parser;
mod scan;
pub mod typed;
mod uri;
mod validate;

#[cfg(test)]
mod regression_tests;
#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use check::{CheckConfig, Rejection, RejectionCause, ResponseDiscard, check_request, check_response, status};
pub use error::{
    ContentLengthError, HeaderError, HeaderLineProblem, ParseError, RequestLineFlaw, RequestProblem, StartLineProblem,
    UriError, ValueError,
};
pub use framer::{FramingError, KeepAlive, StreamEvent, StreamFramer, StreamFramerConfig};
pub use header::{Header, HeaderName, Headers, OtherName};
pub use method::Method;
pub use msg::{BuildError, Message, Request, RequestBuilder, Response, ResponseBuilder, Version};
pub use params::{Param, ParamIter, Params};
pub use scan::pct_decode;
pub use typed::{
    AuthHeader, BRANCH_MAGIC_COOKIE, CSeq, Contacts, DisplayName, MediaType, NameAddr, RetryAfter, Rport, Transport,
    Via, Warning,
};
pub use uri::{Host, OtherUri, SipUri, TelUri, Uri};
pub use validate::ValidationError;

/// Parses one UDP datagram (or any buffer holding exactly one message).
///
/// Framing follows RFC 3261 §18.3 for datagrams: the body is
/// Content-Length bytes and anything after it is ignored; without
/// Content-Length the body is the rest of the datagram; a Content-Length
/// larger than what follows, negative, non-numeric or given twice with
/// different values is an error. Header values are not interpreted here:
/// run [`check_request`] (or [`Request::validate`]) next.
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    parse_bytes(Bytes::copy_from_slice(data))
}

/// [`parse`] without copying: the message shares `data`.
pub fn parse_bytes(data: Bytes) -> Result<Message, ParseError> {
    parser::parse_message(data, parser::Framing::Datagram)
}
