//! The SIP transaction layer of RFC 3261 §17 (with the RFC 6026 fixes), sans-IO.
//!
//! - [`timers`]: T1/T2/T4 ([`TimerConfig`]), the timer names A..M
//!   ([`Timer`]) and every duration derived from them, in one place.
//! - [`client_invite`], [`client_non_invite`], [`server_invite`],
//!   [`server_non_invite`]: the four state machines of §17.1.1, §17.1.2,
//!   §17.2.1 and §17.2.2, one type each, usable on their own.
//! - [`key`]: what the caller tells about a message ([`RequestInfo`],
//!   [`ResponseInfo`]) and the transaction identity ([`TsxKey`]).
//! - [`layer`]: [`TransactionLayer`], the table that matches incoming
//!   messages to machines (§17.1.3, §17.2.3, the RFC 2543 fallback, CANCEL,
//!   merged requests of §8.2.2.2), aggregates their timers and removes the
//!   terminated ones.
//!
//! # What this layer does not do
//!
//! It never parses, builds or sends a message and never reads the clock:
//! the SIP parser and the transports are other modules. The caller passes
//! the few fields matching needs (`RequestInfo`, `ResponseInfo`) and an
//! opaque payload `M` for each message the layer may have to (re)send, and
//! gets back [`Transmit`]s, [`Event`]s and the next deadline. `M` is
//! whatever the transport needs: typically the serialized bytes
//! (`Arc<[u8]>`, the default) plus the destination. Cloning it happens on
//! every retransmission, so it should be cheap to clone.
//!
//! Two messages are the transaction's to send but need a message builder:
//! the ACK for a non-2xx final response (client INVITE, §17.1.1.3) and the
//! 100 Trying of a server INVITE (§17.2.1). For both the layer emits an
//! event ([`Event::AckNeeded`], [`Event::TryingDue`]); the caller builds
//! the message from the request it keeps and hands it back
//! ([`TransactionLayer::send_ack`], [`TransactionLayer::send_response`]).
//! The machine then owns it and resends it itself when a retransmission
//! calls for it.
//!
//! # Time
//!
//! Every entry point takes `now: Instant`; nothing here calls
//! `Instant::now()`. `Instant` rather than a `Duration` since an origin:
//! it is what the tokio driver has in hand (`tokio::time::Instant::into_std`),
//! deadlines stay comparable across transactions without agreeing on an
//! origin, and tests still own time completely by starting from one base
//! instant and adding durations to it.
//!
//! # Run loop
//!
//! After any input (`start_client`, `handle_request`, `handle_response`,
//! `send_response`, `send_ack`, `handle_transport_error`,
//! `handle_timeout`), drain the outputs in this order:
//!
//! ```text
//! while let Some((key, event)) = layer.poll_event() {
//!     // may call layer.send_ack / layer.send_response for AckNeeded / TryingDue
//! }
//! while let Some(transmit) = layer.poll_transmit() {
//!     // hand transmit.payload to the transport
//! }
//! // sleep until layer.poll_timeout(), then layer.handle_timeout(now)
//! ```
//!
//! Events first: answering `AckNeeded` or `TryingDue` queues a transmit,
//! and on reliable transports Timer D is zero, so the ACK must be handed
//! over before the next `handle_timeout` retires the transaction.
//!
//! # Panics
//!
//! None on peer input: unknown keys, unexpected responses and requests in
//! any state are ignored or reported as [`TsxError`], never unwrapped.

pub mod client_invite;
pub mod client_non_invite;
pub mod error;
pub mod key;
pub mod layer;
mod outputs;
pub mod server_invite;
pub mod server_non_invite;
pub mod timers;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;

pub use client_invite::{ClientInvite, ClientInviteState};
pub use client_non_invite::{ClientNonInvite, ClientNonInviteState};
pub use error::TsxError;
pub use key::{MAGIC_COOKIE, RequestInfo, ResponseInfo, Role, TsxKey};
pub use layer::{RequestMatch, TransactionLayer, Transmit, TsxState};
pub use server_invite::{AckDisposition, ServerInvite, ServerInviteState};
pub use server_non_invite::{ServerNonInvite, ServerNonInviteState};
pub use timers::{Grid, LINGER_GRID, TIMER_D_MIN, TRYING_DELAY, Timer, TimerConfig};

/// Whether the transport carrying a transaction retransmits by itself.
///
/// Fixed for the life of a transaction (§17: a transaction never changes
/// transport). On a reliable transport the transaction sends nothing twice
/// (Timers A, E and G are never armed) and its wait states last zero
/// (Timers D, I, J and K), because no retransmission can arrive late.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reliability {
    /// UDP: the transaction retransmits and lingers to absorb duplicates.
    Unreliable,
    /// TCP, TLS, WS, WSS: the transport delivers once, in order.
    Reliable,
}

/// A SIP method, as far as the transaction layer cares.
///
/// Only INVITE, ACK and CANCEL change the layer's behaviour; every other
/// method is kept by its token so that two methods still compare equal
/// exactly when their tokens do (methods are case-sensitive, RFC 3261
/// §7.1). Built with [`Method::new`] or `From<&str>`, which map the three
/// special tokens to their variants, so a key never holds `"INVITE"` as an
/// extension method.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(MethodRepr);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum MethodRepr {
    Invite,
    Ack,
    Cancel,
    Other(Arc<str>),
}

impl Method {
    /// INVITE: the client and server INVITE machines.
    pub const INVITE: Method = Method(MethodRepr::Invite);
    /// ACK: never a transaction of its own; matched to the INVITE server
    /// transaction (non-2xx) or passed to the TU (2xx).
    pub const ACK: Method = Method(MethodRepr::Ack);
    /// CANCEL: a non-INVITE transaction of its own that targets an INVITE
    /// server transaction (§9.2).
    pub const CANCEL: Method = Method(MethodRepr::Cancel);

    /// The method named by `token`, case-sensitively.
    pub fn new(token: &str) -> Method {
        match token {
            "INVITE" => Method::INVITE,
            "ACK" => Method::ACK,
            "CANCEL" => Method::CANCEL,
            other => Method(MethodRepr::Other(other.into())),
        }
    }

    /// The method's token, as on the wire.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            MethodRepr::Invite => "INVITE",
            MethodRepr::Ack => "ACK",
            MethodRepr::Cancel => "CANCEL",
            MethodRepr::Other(token) => token,
        }
    }

    /// Whether this is INVITE.
    pub fn is_invite(&self) -> bool {
        matches!(self.0, MethodRepr::Invite)
    }

    /// Whether this is ACK.
    pub fn is_ack(&self) -> bool {
        matches!(self.0, MethodRepr::Ack)
    }

    /// Whether this is CANCEL.
    pub fn is_cancel(&self) -> bool {
        matches!(self.0, MethodRepr::Cancel)
    }
}

impl From<&str> for Method {
    fn from(token: &str) -> Method {
        Method::new(token)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SIP response status code, 100..=699 (RFC 3261 §21).
///
/// A newtype so that the machines never see an out-of-range code: the
/// only constructor checks the range, and the parser's value is passed
/// through it once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u16);

impl StatusCode {
    /// 100 Trying, the answer to [`Event::TryingDue`].
    pub const TRYING: StatusCode = StatusCode(100);
    /// 200 OK.
    pub const OK: StatusCode = StatusCode(200);
    /// 408 Request Timeout: what a TU reports when Timer B or F fires.
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    /// 482 Loop Detected: the answer to a merged request (§8.2.2.2).
    pub const LOOP_DETECTED: StatusCode = StatusCode(482);
    /// 487 Request Terminated: the INVITE's answer after a CANCEL.
    pub const REQUEST_TERMINATED: StatusCode = StatusCode(487);

    /// `code` as a status code, or [`TsxError::InvalidStatus`] outside
    /// 100..=699.
    pub fn new(code: u16) -> Result<StatusCode, TsxError> {
        if (100..=699).contains(&code) { Ok(StatusCode(code)) } else { Err(TsxError::InvalidStatus { code }) }
    }

    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        self.0
    }

    /// The class of the code (its first digit).
    pub fn class(self) -> StatusClass {
        match self.0 {
            100..=199 => StatusClass::Provisional,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            // The constructor keeps the code below 700.
            _ => StatusClass::GlobalFailure,
        }
    }

    /// 1xx: the transaction goes on.
    pub fn is_provisional(self) -> bool {
        self.class() == StatusClass::Provisional
    }

    /// 2xx: for INVITE, the dialog (TU) owns ACK and retransmissions.
    pub fn is_success(self) -> bool {
        self.class() == StatusClass::Success
    }

    /// 200..=699: ends the request's exchange.
    pub fn is_final(self) -> bool {
        !self.is_provisional()
    }
}

impl TryFrom<u16> for StatusCode {
    type Error = TsxError;

    fn try_from(code: u16) -> Result<StatusCode, TsxError> {
        StatusCode::new(code)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The class of a status code (RFC 3261 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// 1xx.
    Provisional,
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// 6xx.
    GlobalFailure,
}

/// What a transaction tells its transaction user (TU).
///
/// Emitted by the machines' `poll_event` and, tagged with the
/// transaction's key, by [`TransactionLayer::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Client: a response the TU must see. Provisional and final responses
    /// in Calling/Trying/Proceeding, and (client INVITE, RFC 6026) every
    /// further 2xx in Accepted: a retransmission or another fork's answer,
    /// which the dialog tells apart by To tag and ACKs itself. Absorbed
    /// retransmissions produce no event.
    Response {
        /// The response's status.
        status: StatusCode,
    },
    /// Client INVITE: a 3xx-6xx arrived; the transaction must ACK it
    /// (§17.1.1.3). Build the ACK (Request-URI, Call-ID, From, CSeq number
    /// and top Via of the INVITE; To of the response; CSeq method ACK) and
    /// pass it to [`TransactionLayer::send_ack`]. Emitted again for a
    /// retransmitted final response while no ACK has been handed over.
    AckNeeded {
        /// The final response being acknowledged.
        status: StatusCode,
    },
    /// Server INVITE: 200 ms went by, or the INVITE was retransmitted,
    /// before the TU sent any response (§17.2.1). Build a 100 Trying and
    /// pass it to [`TransactionLayer::send_response`].
    TryingDue,
    /// A timer that means failure fired: B or F (client: no final response;
    /// the TU acts as on a 408) or H (server INVITE: the ACK never came).
    /// [`Event::Terminated`] follows.
    Timeout {
        /// [`Timer::B`], [`Timer::F`] or [`Timer::H`].
        timer: Timer,
    },
    /// The caller reported a transport error (§17.1.4, §17.2.4). Unless the
    /// transaction is in Accepted (where the TU owns the 2xx and so the
    /// failure), [`Event::Terminated`] follows.
    TransportError,
    /// The transaction reached Terminated. The layer drops it right after
    /// this event; the key may be forgotten.
    Terminated,
}
