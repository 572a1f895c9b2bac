//! Media anchored on trunkgate: every call's RTP and RTCP flow through the
//! node. Sans-IO pieces — the port pool ([`ports`]), the relay's core
//! ([`relay`]), SDP anchoring ([`sdp`]) — a socket driver ([`engine`]) and
//! the [`MediaSession`](crate::b2bua::MediaSession) that joins them to the
//! call machine ([`session`]).

pub mod engine;
pub mod ports;
pub mod relay;
pub mod sdp;
pub mod session;
pub mod webrtc;
