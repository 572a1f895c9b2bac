//! What the orchestrator needs from a way of setting calls up (rtpengine's
//! ng protocol, or SIP through trunkgate): start a call naming the two
//! local RTP endpoints, learn where each side must send, end the call.
//!
//! The engines own their sockets and are driven from the orchestrator's
//! loop: `handle_readable` when a socket of [`Signalling::fds`] is
//! readable, `handle_timeout` at [`Signalling::poll_timeout`], then
//! [`Signalling::poll_event`] until it returns None.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::hist::Histogram;
use crate::rtp::Dir;
use crate::webrtc::Peer;

/// What happened to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Both sides know where to send: `dest[d]` for direction `d`.
    Up {
        /// Call index.
        call: u32,
        /// Destinations by [`Dir::index`].
        dest: [SocketAddr; 2],
    },
    /// The call could not be set up.
    Failed {
        /// Call index.
        call: u32,
        /// A short reason (a status code, `timeout`, ...), used as a tally key.
        reason: String,
    },
    /// The call was ended at our request.
    Ended {
        /// Call index.
        call: u32,
    },
    /// The far end ended a call that was up.
    Dropped {
        /// Call index.
        call: u32,
        /// Who ended it.
        reason: String,
    },
    /// A re-offer moved one direction's destination.
    Redirect {
        /// Call index.
        call: u32,
        /// The direction whose destination moved.
        dir: Dir,
        /// The new destination.
        dest: SocketAddr,
    },
}

/// A step's WebRTC handshakes (browser mode): from the browser's 200 OK
/// sent to str0m's `Connected` (ICE and DTLS done) per call.
#[derive(Debug, Clone, Default)]
pub struct Handshakes {
    /// Offers answered (200 OK sent).
    pub answered: u64,
    /// Of those, connected.
    pub connected: u64,
    /// Of those, failed (timeout, ICE or DTLS error).
    pub failed: u64,
    /// 200 OK sent → connected, µs.
    pub us: Histogram,
    /// From the first 200 OK sent to the last handshake done, ns.
    pub span_ns: u64,
}

/// A way of setting calls up.
pub trait Signalling {
    /// Sockets to watch for input.
    fn fds(&self) -> Vec<RawFd>;
    /// A new step starts: call indexes restart at 0.
    fn begin_step(&mut self, step: u32);
    /// Sets call `call` up; `pbx_rtp` and `phone_rtp` are the endpoints to
    /// announce for each side.
    fn start_call(&mut self, now: u64, call: u32, pbx_rtp: SocketAddr, phone_rtp: SocketAddr);
    /// Ends a call that is up (or being set up).
    fn end_call(&mut self, now: u64, call: u32);
    /// Reads everything waiting on the sockets.
    fn handle_readable(&mut self, now: u64);
    /// Runs the timers due at `now`.
    fn handle_timeout(&mut self, now: u64);
    /// The next timer (monotonic ns), if any.
    fn poll_timeout(&self) -> Option<u64>;
    /// The next event, if any.
    fn poll_event(&mut self) -> Option<Event>;
    /// Protocol-level tallies for the report (malformed, retransmissions, ...).
    fn tallies(&self) -> BTreeMap<String, u64>;
    /// Whether the engine is ready for calls (browsers registered); an
    /// error when it never will be.
    fn ready(&self) -> Result<bool, String> {
        Ok(true)
    }
    /// The phone side's WebRTC peer of a call that is [`Event::Up`], for the
    /// media worker to own from now on (browser mode).
    fn take_peer(&mut self, _call: u32) -> Option<Box<Peer>> {
        None
    }
    /// The step's WebRTC handshakes (browser mode).
    fn handshakes(&self) -> Option<Handshakes> {
        None
    }
}
