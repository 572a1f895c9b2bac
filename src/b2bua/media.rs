//! The media seam: every SDP body that crosses a call goes through one
//! [`MediaSession`], which turns leg X's offer or answer into what leg Y
//! gets (and, in later implementations, owns the ports and packets behind
//! it). The call machine never edits SDP itself.
//!
//! [`Passthrough`] hands bodies over unchanged: the two peers exchange
//! media directly (`[media] anchor = false`, and the call machine's tests).
//! The RTP relay is [`crate::media::session::RelayMedia`]; the WebRTC
//! termination will be another implementation of the same trait.

use bytes::Bytes;

use super::call::LegId;

/// A message body with its Content-Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// The Content-Type value, e.g. `application/sdp`.
    pub content_type: String,
    /// The bytes.
    pub bytes: Bytes,
}

impl Body {
    /// Whether this is a session description (the only body the media
    /// session sees; others cross the call unchanged).
    pub fn is_sdp(&self) -> bool {
        let ct = self.content_type.split(';').next().unwrap_or("").trim();
        ct.eq_ignore_ascii_case("application/sdp")
    }
}

/// Why a session description could not be carried to the other leg. Each
/// variant names the SIP answer the call machine gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// No codec both legs can relay: answer 488 `no-common-codec`.
    #[error("no codec in common")]
    NoCommonCodec,
    /// The port pool is empty: answer 503 `media-ports-exhausted`.
    #[error("media ports exhausted")]
    PortsExhausted,
    /// The body is no usable session description: answer 488.
    #[error("unusable session description: {detail}")]
    Unusable {
        /// What is wrong with it.
        detail: String,
    },
}

impl MediaError {
    /// The SIP status this failure is answered with.
    pub fn status(&self) -> u16 {
        match self {
            MediaError::NoCommonCodec | MediaError::Unusable { .. } => 488,
            MediaError::PortsExhausted => 503,
        }
    }

    /// The stable token for `Warning: 399` and call records.
    pub fn token(&self) -> &'static str {
        match self {
            MediaError::NoCommonCodec => "no-common-codec",
            MediaError::PortsExhausted => "media-ports-exhausted",
            MediaError::Unusable { .. } => "unusable-sdp",
        }
    }
}

/// One call's media: turns each leg's session descriptions into the other
/// leg's. Sans-IO like the call machine: no sockets here (an implementation
/// that relays packets hands them to its own driver).
pub trait MediaSession: Send {
    /// Leg `leg` exists: its peer's signalling address and ours toward it
    /// (a relay picks the leg's address family and media address from
    /// them), and whether it is a browser (WebRTC: ICE, DTLS-SRTP; its
    /// offers are built for it, never `RTP/AVP`). Called before any body
    /// of the leg crosses the session.
    fn add_leg(&mut self, _leg: LegId, _peer: std::net::SocketAddr, _local: std::net::SocketAddr, _browser: bool) {}

    /// The session description we last gave leg `leg` (offer or answer),
    /// as sent: what an offerless re-INVITE or a session refresh from that
    /// leg is answered with, without disturbing the other leg. `None` when
    /// this session keeps no such state (the request is relayed instead).
    fn local_description(&self, _leg: LegId) -> Option<Body> {
        None
    }

    /// Leg `from` offered `offer`: what to offer leg `to`.
    fn offer(&mut self, from: LegId, to: LegId, offer: &Body) -> Result<Body, MediaError>;

    /// Leg `from` answered `answer` (to the offer `to` made, as carried by
    /// [`offer`](Self::offer)): what to answer leg `to`.
    fn answer(&mut self, from: LegId, to: LegId, answer: &Body) -> Result<Body, MediaError>;

    /// Leg `leg` answered an offer we made it from
    /// [`local_description`](Self::local_description) (a session refresh):
    /// its settings change on its own side only; nothing goes to the other
    /// leg.
    fn refreshed(&mut self, _leg: LegId, _answer: &Body) -> Result<(), MediaError> {
        Ok(())
    }

    /// A digit that came as SIP INFO from the other leg: send it to leg
    /// `to` as RFC 4733 events if that leg takes them (true), else leave
    /// it to the call to relay the INFO (false).
    fn send_dtmf(&mut self, _to: LegId, _digit: char, _duration_ms: u32) -> bool {
        false
    }

    /// Leg `leg` is gone (a fork that lost, or the call's end): free what it
    /// holds. Called once per leg that was given a body.
    fn close_leg(&mut self, leg: LegId);
}

/// Media flows between the peers directly: bodies cross unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct Passthrough;

impl MediaSession for Passthrough {
    fn offer(&mut self, _from: LegId, _to: LegId, offer: &Body) -> Result<Body, MediaError> {
        Ok(offer.clone())
    }

    fn answer(&mut self, _from: LegId, _to: LegId, answer: &Body) -> Result<Body, MediaError> {
        Ok(answer.clone())
    }

    fn close_leg(&mut self, _leg: LegId) {}
}
