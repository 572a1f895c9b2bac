//! The B2BUA: which trunk a request comes from, which number it dials and
//! where that number rings (`trunks`), and each call as a sans-IO machine
//! ([`call`]) whose SDP crosses one [`media::MediaSession`].

pub mod call;
pub mod media;
pub mod outbound;
pub mod session_timer;
mod trunks;

#[cfg(test)]
mod tests;

pub use call::{Call, CallConfig, Command, ForkTarget, InboundCall, LegId, OutboundCall, Peer, ReqId, TrunkAttempt};
pub use media::{Body, MediaError, MediaSession, Passthrough};
pub use trunks::{DialledNumber, Route, Trunk, TrunkTable, dialled_number};
