//! SIP: messages, transactions (RFC 3261 §17), and later dialogs and digest.
//!
//! Protocol logic is sans-IO: machines fed with `(event, now)` that return
//! what to send and when to wake up; the tokio drivers do the I/O.

pub mod digest;
pub mod message;
pub mod shard;
pub mod transaction;
