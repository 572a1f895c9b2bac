//! SIP: messages, transactions (RFC 3261 §17), dialogs (§12) and digest.
//!
//! Protocol logic is sans-IO: machines fed with `(event, now)` that return
//! what to send and when to wake up; the tokio drivers do the I/O.

/// Product token for `Server` and `User-Agent`.
pub const PRODUCT: &str = concat!("trunkgate/", env!("CARGO_PKG_VERSION"));

pub mod dialog;
pub mod digest;
pub mod message;
pub mod registration;
pub mod shard;
pub mod text;
pub mod transaction;
