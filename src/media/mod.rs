//! Media anchored on trunkgate. Today: the RTP relay's sans-IO core
//! ([`relay`]); its driver (sockets, port pool) and the
//! [`MediaSession`](crate::b2bua::MediaSession) implementation that rewrites
//! SDP toward it come next (issue 8).

pub mod relay;
