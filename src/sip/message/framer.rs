//! Framing of SIP messages on stream transports (TCP, TLS), sans-IO.
//!
//! Feed received bytes with [`StreamFramer::handle_bytes`], then call
//! [`StreamFramer::poll_event`] until it returns `Ok(None)`. Every message
//! must carry Content-Length (RFC 3261 §18.3). RFC 5626 §4.4.1 keep-alives
//! between messages are recognised: a CRLFCRLF "ping" gives
//! [`KeepAlive::Ping`] (answer with a CRLF "pong"), a lone CRLF is a pong.
//! Memory is bounded: a message above `max_message_size` or more than
//! `max_buffered` bytes waiting between polls is an error. Every error is
//! final (the framer stays failed): close the connection.

use bytes::{Buf, BytesMut};

use super::error::{ContentLengthError, ParseError, RequestProblem};
use super::header::HeaderName;
use super::msg::Message;
use super::parser::{Framing, is_fold_start, line_end, parse_message, trim_sp_ht};
use super::scan::parse_decimal;

/// Limits of a [`StreamFramer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFramerConfig {
    /// Largest message accepted, header section plus body, in bytes.
    /// Default 65536.
    pub max_message_size: usize,
    /// Most bytes held between two polls, in bytes. Feed reads no larger
    /// than `max_buffered - max_message_size` and drain with `poll_event`
    /// after each. Default 131072.
    pub max_buffered: usize,
    /// Report lone-CRLF pongs as [`KeepAlive::Pong`] (a client checking its
    /// flow needs them); by default they are ignored.
    pub report_pongs: bool,
}

impl Default for StreamFramerConfig {
    fn default() -> Self {
        Self { max_message_size: 64 * 1024, max_buffered: 128 * 1024, report_pongs: false }
    }
}

/// An RFC 5626 keep-alive seen between messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// CRLFCRLF: answer with a CRLF pong.
    Ping,
    /// A lone CRLF (only reported with `report_pongs`).
    Pong,
}

/// What the framer found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned and matched at once by the connection's reader; boxing the message would cost an allocation per message"
)]
pub enum StreamEvent {
    /// A complete message.
    Message(Message),
    /// A keep-alive.
    KeepAlive(KeepAlive),
    /// A correctly framed request with a malformed Request-Line
    /// ([`ParseError::BadRequest`]): answer 400 (not to an ACK); the
    /// connection remains usable.
    BadRequest(ParseError),
}

/// Why a stream cannot be read any further. Close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A message is larger than `max_message_size`.
    #[error("message larger than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// More than `max_buffered` bytes waiting: the caller fed faster than
    /// it polled, or the peer floods.
    #[error("more than {limit} bytes buffered")]
    BufferFull {
        /// The limit in force.
        limit: usize,
    },
    /// Content-Length missing, invalid or conflicting.
    #[error("{0}")]
    ContentLength(ContentLengthError),
    /// A CR not followed by LF in a header section.
    #[error("bare CR in header section")]
    BareCr,
    /// The framed bytes are not a usable message.
    #[error("unparsable message: {0}")]
    Parse(ParseError),
}

/// Cuts a byte stream into SIP messages. See the module documentation for
/// the calling order.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    config: StreamFramerConfig,
    failed: Option<FramingError>,
    scan: ScanState,
}

/// How far the header section of the message at the start of the buffer
/// has been scanned, so that bytes trickling in are scanned once (a peer
/// sending one byte per segment must not cost a rescan per byte).
#[derive(Debug, Clone, Copy, Default)]
struct ScanState {
    /// Start of the first line not yet scanned.
    pos: usize,
    /// Where to resume looking for that line's end (no CR/LF before it).
    resume: usize,
    /// True once the start line has been passed.
    past_start_line: bool,
    /// Content-Length seen so far.
    content_length: Option<u64>,
    /// Length of the whole message, once the header section is complete.
    total: Option<usize>,
}

enum Scan {
    NeedMore,
    Complete(usize),
}

impl StreamFramer {
    /// A framer with the given limits.
    pub fn new(config: StreamFramerConfig) -> Self {
        Self { buf: BytesMut::new(), config, failed: None, scan: ScanState::default() }
    }

    /// Bytes received and not yet returned as events.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes.
    pub fn handle_bytes(&mut self, data: &[u8]) -> Result<(), FramingError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len().saturating_add(data.len()) > self.config.max_buffered {
            return Err(self.fail(FramingError::BufferFull { limit: self.config.max_buffered }));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next event, `Ok(None)` when more bytes are needed.
    #[must_use = "events must be handled and errors close the connection"]
    pub fn poll_event(&mut self) -> Result<Option<StreamEvent>, FramingError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            let b = &self.buf[..];
            if b.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(StreamEvent::KeepAlive(KeepAlive::Ping)));
            }
            if b.starts_with(b"\r\n") {
                // "\r\n" or "\r\n\r" may still become a ping.
                if b == b"\r\n" || b == b"\r\n\r" {
                    return Ok(None);
                }
                self.buf.advance(2);
                if self.config.report_pongs {
                    return Ok(Some(StreamEvent::KeepAlive(KeepAlive::Pong)));
                }
                continue;
            }
            if b.first() == Some(&b'\n') {
                // A stray LF from an LF-only peer: ignore like a CRLF.
                self.buf.advance(1);
                continue;
            }
            if b.is_empty() || b == b"\r" {
                return Ok(None);
            }
            let total = match self.scan() {
                Ok(Scan::NeedMore) => return Ok(None),
                Ok(Scan::Complete(n)) => n,
                Err(e) => return Err(self.fail(e)),
            };
            self.scan = ScanState::default();
            let bytes = self.buf.split_to(total).freeze();
            return match parse_message(bytes, Framing::Stream) {
                Ok(m) => Ok(Some(StreamEvent::Message(m))),
                Err(e @ ParseError::BadRequest { problem: RequestProblem::RequestLine(_), .. }) => {
                    Ok(Some(StreamEvent::BadRequest(e)))
                }
                Err(e) => Err(self.fail(FramingError::Parse(e))),
            };
        }
    }

    fn fail(&mut self, e: FramingError) -> FramingError {
        self.failed = Some(e.clone());
        self.buf.clear();
        self.scan = ScanState::default();
        e
    }

    /// Finds the header section end and Content-Length of the message at
    /// the start of the buffer, resuming where the last call stopped.
    fn scan(&mut self) -> Result<Scan, FramingError> {
        let s = &self.buf[..];
        let limit = self.config.max_message_size;
        let st = &mut self.scan;
        if let Some(total) = st.total {
            return Ok(if s.len() >= total { Scan::Complete(total) } else { Scan::NeedMore });
        }
        loop {
            let pos = st.pos;
            let (le, next) = match line_end(s, pos.max(st.resume)) {
                Ok(Some(x)) => x,
                Ok(None) if s.len() > limit => return Err(FramingError::TooLarge { limit }),
                Ok(None) => {
                    // A trailing CR may be the start of this line's CRLF.
                    st.resume = s.len().saturating_sub(1);
                    return Ok(Scan::NeedMore);
                }
                Err(()) => return Err(FramingError::BareCr),
            };
            if next > limit {
                return Err(FramingError::TooLarge { limit });
            }
            if le == pos {
                let n = st.content_length.ok_or(FramingError::ContentLength(ContentLengthError::Missing))?;
                let total = usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_add(next))
                    .filter(|t| *t <= limit)
                    .ok_or(FramingError::TooLarge { limit })?;
                st.total = Some(total);
                return Ok(if s.len() >= total { Scan::Complete(total) } else { Scan::NeedMore });
            }
            let content = s.get(pos..le).unwrap_or_default();
            if st.past_start_line
                && !content.first().is_some_and(|b| is_fold_start(*b))
                && let Some(colon) = memchr::memchr(b':', content)
                && HeaderName::from_bytes(trim_sp_ht(content.get(..colon).unwrap_or_default()))
                    == Some(HeaderName::ContentLength)
            {
                // The value, with any folded continuation lines: the line
                // counts only once the next line shows it is not continued.
                let mut value = content.get(colon + 1..).unwrap_or_default().to_vec();
                let mut look = next;
                loop {
                    match line_end(s, look) {
                        Ok(Some((le2, next2))) => {
                            let c2 = s.get(look..le2).unwrap_or_default();
                            if !c2.first().is_some_and(|b| is_fold_start(*b)) {
                                break;
                            }
                            value.extend_from_slice(c2);
                            look = next2;
                        }
                        Ok(None) if s.len() > limit => return Err(FramingError::TooLarge { limit }),
                        Ok(None) => return Ok(Scan::NeedMore),
                        Err(()) => return Err(FramingError::BareCr),
                    }
                }
                let v = parse_decimal(trim_sp_ht(&value), u64::from(u32::MAX))
                    .map_err(|_| FramingError::ContentLength(ContentLengthError::Invalid))?;
                if st.content_length.is_some_and(|old| old != v) {
                    return Err(FramingError::ContentLength(ContentLengthError::Conflicting));
                }
                st.content_length = Some(v);
            }
            st.past_start_line = true;
            st.pos = next;
            st.resume = next;
        }
    }
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new(StreamFramerConfig::default())
    }
}
