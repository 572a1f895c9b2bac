//! One browser's media for one call: a str0m peer in the role a browser
//! takes against trunkgate's browser leg (the daemon offers ICE-lite,
//! `a=setup:actpass`, one host candidate on its shared port): full ICE and
//! controlling, DTLS client (`setup:active`), SRTP, on a UDP socket of its
//! own (the daemon tells browsers apart by address and ICE ufrag, so every
//! call needs its own port here, as every browser tab has).
//!
//! The signalling thread answers the offer and drives the handshake
//! ([`Peer::answer`] → [`PeerEvent::Connected`]); the call's media worker
//! then owns the peer: it writes the generator's stamped payloads through
//! [`Peer::write_rtp`] and reads what [`Peer::handle_datagram`] decrypts.
//! Datagrams str0m wants sent leave at once on the peer's socket. str0m
//! hands up only the newest RTP packet of several received between two
//! polls, so the peer is drained after every datagram and every write.
//!
//! The RTP header toward trunkgate is str0m's (its SSRC, our sequence
//! numbers and timestamps); the payload is the generator's, stamp included.

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

/// What a peer reports.
#[derive(Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// ICE and DTLS are done: SRTP keys are set.
    Connected,
    /// An RTP packet from trunkgate, decrypted: a plain RTP header (str0m's
    /// view of it) and the payload.
    Rtp(Vec<u8>),
    /// ICE gave up on trunkgate, or str0m failed (the reason).
    Gone(String),
}

/// Why a peer could not answer an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The offer is not UTF-8.
    NotText,
    /// str0m refused the offer (its message).
    Offer(String),
    /// The socket's address.
    Socket(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::NotText => f.write_str("offer is not UTF-8"),
            PeerError::Offer(e) => write!(f, "offer refused: {e}"),
            PeerError::Socket(e) => write!(f, "socket: {e}"),
        }
    }
}

/// A browser's WebRTC session for one call.
pub struct Peer {
    rtc: Rtc,
    sock: UdpSocket,
    local: SocketAddr,
    mid: Option<Mid>,
    connected: bool,
    gone: bool,
    next: Option<Instant>,
    /// The answer we gave (re-sent for a re-INVITE that changes nothing).
    answer: String,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("local", &self.local).field("connected", &self.connected).finish_non_exhaustive()
    }
}

impl Peer {
    /// Answers trunkgate's `offer` as a browser would, on `sock` (its one
    /// host candidate); the answer SDP for the 200.
    pub fn answer(now: Instant, cert: &DtlsCert, sock: UdpSocket, offer: &[u8]) -> Result<Peer, PeerError> {
        let local = sock.local_addr().map_err(|e| PeerError::Socket(e.to_string()))?;
        let text = std::str::from_utf8(offer).map_err(|_| PeerError::NotText)?;
        // str0m answers `actpass` with `passive` (the DTLS server); browsers
        // answer `active`. Told that trunkgate is passive, one of the roles
        // it offered, str0m takes the browser's: DTLS client, `setup:active`
        // in the answer, trunkgate the DTLS server as with Chromium.
        let text = text.replace("a=setup:actpass", "a=setup:passive");
        let offer = SdpOffer::from_sdp_string(&text).map_err(|e| PeerError::Offer(e.to_string()))?;
        // Chromium's audio codecs as far as trunkgate can use them, with its
        // telephone-event number (the offer's 101 wins).
        let mut cfg = RtcConfig::new().clear_codecs().set_rtp_mode(true).set_dtls_cert(cert.clone());
        let codecs = cfg.codec_config();
        codecs.enable_opus(true, false);
        codecs.enable_pcmu(true, false);
        codecs.enable_pcma(true, false);
        codecs.add_config(126.into(), None, Codec::Tele, Frequency::EIGHT_KHZ, None, FormatParams::default());
        let mut rtc = cfg.build(now);
        let cand = Candidate::host(local, "udp").map_err(|e| PeerError::Socket(e.to_string()))?;
        rtc.add_local_candidate(cand);
        let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| PeerError::Offer(e.to_string()))?;
        let mut peer = Peer {
            rtc,
            sock,
            local,
            mid: None,
            connected: false,
            gone: false,
            next: Some(now),
            answer: answer.to_sdp_string(),
            send_errors: 0,
        };
        // The checks start at once (str0m sends them from its first poll).
        let mut out = Vec::new();
        peer.drain(&mut out);
        Ok(peer)
    }

    /// The answer SDP.
    pub fn answer_sdp(&self) -> &str {
        &self.answer
    }

    /// The peer's socket (to watch it for input).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Whether ICE and DTLS are done.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the peer is dead (ICE disconnected or str0m failed).
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// When [`Self::handle_timeout`] is next due.
    pub fn timeout(&self) -> Option<Instant> {
        self.next
    }

    /// A datagram that arrived on the peer's socket from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Vec<PeerEvent>) {
        if self.gone {
            return;
        }
        let Ok(contents) = data.try_into() else { return };
        let input =
            Input::Receive(now, Receive { proto: Protocol::Udp, source: from, destination: self.local, contents });
        if let Err(e) = self.rtc.handle_input(input) {
            self.die(e.to_string(), out);
            return;
        }
        self.drain(out);
    }

    /// str0m's timers (ICE checks and keep-alives, DTLS retransmissions, RTCP).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<PeerEvent>) {
        if self.gone {
            return;
        }
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.die(e.to_string(), out);
            return;
        }
        self.drain(out);
    }

    /// Sends one RTP packet (payload type `pt`, extended sequence number
    /// `seq`, RTP timestamp `ts`); false when it could not be written
    /// (not connected yet, or no send stream).
    #[allow(clippy::too_many_arguments)]
    pub fn write_rtp(
        &mut self,
        now: Instant,
        pt: u8,
        seq: u64,
        ts: u32,
        marker: bool,
        payload: &[u8],
        out: &mut Vec<PeerEvent>,
    ) -> bool {
        let (Some(mid), true, false) = (self.mid, self.connected, self.gone) else { return false };
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else { return false };
        tx.write_rtp(RtpWrite::new(Pt::from(pt), seq.into(), ts, now, payload.to_vec()).marker(marker));
        self.drain(out);
        true
    }

    fn die(&mut self, why: String, out: &mut Vec<PeerEvent>) {
        self.gone = true;
        self.next = None;
        out.push(PeerEvent::Gone(why));
    }

    fn drain(&mut self, out: &mut Vec<PeerEvent>) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    if self.sock.send_to(&t.contents, t.destination).is_err() {
                        self.send_errors += 1;
                    }
                }
                Ok(Output::Timeout(t)) => {
                    self.next = Some(t);
                    return;
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected = true;
                        out.push(PeerEvent::Connected);
                    }
                    Event::MediaAdded(m) => self.mid = Some(m.mid),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.die("ICE disconnected".into(), out);
                        return;
                    }
                    Event::RtpPacket(p) => out.push(PeerEvent::Rtp(trunkgate::media::webrtc::rtp_bytes(&p))),
                    _ => {}
                },
                Err(e) => {
                    self.die(e.to_string(), out);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
