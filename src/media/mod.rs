//! Media anchored on trunkgate (issue 8), built up in sans-IO pieces:
//! the port pool ([`ports`]), the RTP relay's core ([`relay`]) and SDP
//! anchoring ([`sdp`]). Next: their socket driver, and the
//! [`MediaSession`](crate::b2bua::MediaSession) implementation that joins
//! them to the call machine.

pub mod ports;
pub mod relay;
pub mod sdp;
