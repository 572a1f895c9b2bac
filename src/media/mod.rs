//! Media anchored on trunkgate (issue 8), built up in sans-IO pieces:
//! the port pool ([`ports`]) and the RTP relay's core ([`relay`]). Next:
//! their socket driver, and the [`MediaSession`](crate::b2bua::MediaSession)
//! implementation that rewrites SDP toward them (see
//! `docs/decisions/0003-sdp-crate.md`).

pub mod ports;
pub mod relay;
