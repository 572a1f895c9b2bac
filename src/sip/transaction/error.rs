//! The transaction layer's error type.

use std::time::Duration;

use super::layer::TsxState;
use super::{StatusCode, TsxKey};

/// Why a call into the transaction layer was refused.
///
/// Refusals never change a transaction's state: the call had no effect.
/// Peer input never produces one of these (unexpected messages are
/// absorbed, §17); they report mistakes of the caller or a race with a
/// transaction that just ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsxError {
    /// No live transaction has this key: it terminated (its
    /// [`Event::Terminated`](super::Event::Terminated) was emitted) or never
    /// existed. Forget the key; a final response for it cannot be sent
    /// through the layer any more.
    #[error("no transaction {key}")]
    UnknownTransaction {
        /// The key the caller passed.
        key: TsxKey,
    },
    /// A client transaction with this branch and method is still alive.
    /// Generate a fresh branch for every new request (§8.1.1.7).
    #[error("transaction {key} already exists")]
    DuplicateTransaction {
        /// The key of the live transaction.
        key: TsxKey,
    },
    /// ACK never creates a client transaction (§17.1.1.3 builds the non-2xx
    /// ACK inside the INVITE transaction; §13.2.2.4 sends the 2xx ACK from
    /// the dialog directly to the transport).
    #[error("ACK is not sent through a client transaction")]
    AckIsNotATransaction,
    /// A client transaction's branch must start with `z9hG4bK` (§8.1.1.7);
    /// without it the peer falls back to RFC 2543 matching. Generate the
    /// branch with the cookie.
    #[error("branch {branch:?} lacks the z9hG4bK magic cookie")]
    MissingMagicCookie {
        /// The rejected branch.
        branch: String,
    },
    /// A status code outside 100..=699. The parser should have refused the
    /// message; drop it.
    #[error("status code {code} is outside 100..=699")]
    InvalidStatus {
        /// The rejected code.
        code: u16,
    },
    /// The operation exists only for the other role or method (for example
    /// `send_response` on a client key, `send_ack` on a non-INVITE one). A
    /// bug in the caller.
    #[error("{operation} does not apply to transaction {key}")]
    WrongTransactionKind {
        /// The operation attempted.
        operation: &'static str,
        /// The key the caller passed.
        key: TsxKey,
    },
    /// The TU passed a response the machine must discard in its state
    /// (§17.2.1, §17.2.2: e.g. a second final response, or a non-2xx after
    /// a 2xx). Nothing was sent; log it.
    #[error("response {status} not allowed in state {state:?}")]
    ResponseNotAllowed {
        /// The refused response.
        status: StatusCode,
        /// The transaction's state.
        state: TsxState,
    },
    /// An ACK was handed over outside the client INVITE's Completed state
    /// (the 2xx ACK belongs to the dialog, not the transaction). Nothing
    /// was sent.
    #[error("ACK not expected in state {state:?}")]
    AckNotExpected {
        /// The transaction's state.
        state: TsxState,
    },
    /// [`TimerConfig::t1`](super::TimerConfig::t1) is zero: every
    /// retransmission timer would fire at once. Configure a positive T1.
    #[error("T1 must be greater than zero")]
    ZeroT1,
    /// T2 below T1 would make the capped timers (E, G) shrink. Configure
    /// T2 >= T1.
    #[error("T2 ({t2:?}) must not be below T1 ({t1:?})")]
    T2BelowT1 {
        /// The configured T1.
        t1: Duration,
        /// The configured T2.
        t2: Duration,
    },
}
