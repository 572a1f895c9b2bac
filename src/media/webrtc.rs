//! The browser leg: ICE-lite, DTLS-SRTP, RTP both ways without transcoding
//! (decision 0005: str0m, sans-IO, RTP mode). Nothing of str0m leaves this
//! module: the relay thread sees datagrams in and out, plain RTP packets in
//! and out, and a few events.
//!
//! Every browser leg of a node shares one UDP port per address family: a
//! datagram belongs to the leg its 5-tuple was learned for, else to the leg
//! whose ICE username fragment its STUN request names ([`stun_ufrag`]);
//! each leg's ufrag is ours, random, and the routing key. ICE-lite learns
//! the browser's address from its checks, so Chromium's mDNS `.local`
//! candidates never need resolving.
//!
//! Toward the browser the RTP header fields are ours (the relay keeps them
//! continuous across PBX source changes), the SSRC is the one str0m
//! announced for the leg, stable for its life, and the rollover counter
//! follows our sequence numbers. No media goes toward the browser before
//! DTLS completes (`connected`).

use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

/// The node's DTLS certificate (ECDSA P-256, self-signed; browsers check
/// its fingerprint from the SDP, not a chain).
#[derive(Clone)]
pub struct NodeCert(DtlsCert);

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCert(..)")
    }
}

impl NodeCert {
    /// The certificate as str0m takes it (a peer of the benchmarks).
    pub fn dtls_cert(&self) -> DtlsCert {
        self.0.clone()
    }

    /// A fresh certificate (made once per node start).
    pub fn generate() -> Result<NodeCert, String> {
        let ck = rcgen::generate_simple_self_signed(vec!["trunkgate".into()]).map_err(|e| e.to_string())?;
        Ok(NodeCert(DtlsCert { certificate: ck.cert.der().to_vec(), private_key: ck.signing_key.serialize_der() }))
    }
}

/// A voice codec the leg may offer: G.711 only (no transcoding; Opus
/// would need it, since PBXs do not speak it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Voice {
    /// PCMU, payload type 0.
    Pcmu,
    /// PCMA, payload type 8.
    Pcma,
}

/// What the leg tells the relay thread.
#[derive(Debug, PartialEq)]
pub enum BrowserOutput {
    /// A datagram for the shared socket.
    Transmit {
        /// The browser's address.
        to: SocketAddr,
        /// The bytes.
        data: Vec<u8>,
    },
    /// ICE and DTLS are done: media may flow (the browser's address).
    Connected(SocketAddr),
    /// An RTP packet from the browser, decrypted, as it came (header and
    /// payload; the relay rewrites what it must).
    Rtp(Vec<u8>),
    /// The browser is gone (ICE disconnected, or DTLS failed).
    Gone,
}

/// One browser's media.
pub struct BrowserLeg {
    rtc: Rtc,
    ufrag: String,
    /// Our ICE password: the key of the checks' MESSAGE-INTEGRITY.
    pass: String,
    /// The browser's answer has been taken (str0m knows its credentials).
    answered: bool,
    /// Checks and DTLS that came before the answer, fed to str0m with it.
    early: Vec<(SocketAddr, Vec<u8>)>,
    /// Our candidate's address (public address, shared port): what the
    /// browser sends to.
    local: SocketAddr,
    mid: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    connected: bool,
    gone: bool,
    remote: Option<SocketAddr>,
    /// The extended sequence number of the last packet toward the browser.
    tx_seq: Option<u64>,
    /// Outputs made by a write, for the next poll.
    queued: Vec<BrowserOutput>,
}

impl std::fmt::Debug for BrowserLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserLeg")
            .field("ufrag", &self.ufrag)
            .field("connected", &self.connected)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

/// Datagrams kept from before the browser's answer (its first checks, at
/// about 50 ms intervals, and its DTLS flight).
const EARLY_KEPT: usize = 16;

/// Payload type of telephone-event/8000 when the PBX's offer named none.
pub const DEFAULT_EVENT_PT: u8 = 101;

impl BrowserLeg {
    /// A leg answering on `local` (our public address and the shared port),
    /// G.711 in `voices` order and telephone-event/8000 as `event_pt`.
    pub fn new(now: Instant, cert: &NodeCert, local: SocketAddr, voices: &[Voice], event_pt: u8) -> BrowserLeg {
        let ufrag = random_token(8);
        let pass = random_token(24);
        let mut cfg = RtcConfig::new().clear_codecs().set_rtp_mode(true).set_dtls_cert(cert.0.clone());
        let codecs = cfg.codec_config();
        for v in voices {
            match v {
                Voice::Pcmu => codecs.enable_pcmu(true, false),
                Voice::Pcma => codecs.enable_pcma(true, false),
            }
        }
        codecs.add_config(event_pt.into(), None, Codec::Tele, Frequency::EIGHT_KHZ, None, FormatParams::default());
        let mut rtc = cfg
            .set_ice_lite(true)
            .set_local_ice_credentials(str0m::IceCreds { ufrag: ufrag.clone(), pass: pass.clone() })
            .build(now);
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        BrowserLeg {
            rtc,
            ufrag,
            pass,
            answered: false,
            early: Vec::new(),
            local,
            mid: None,
            pending: None,
            connected: false,
            gone: false,
            remote: None,
            tx_seq: None,
            queued: Vec::new(),
        }
    }

    /// The leg's ICE username fragment: its routing key on the shared port.
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }

    /// Whether `data` is a check signed with this leg's password (the only
    /// datagram that may teach the shared port a browser's address).
    pub fn is_own_check(&self, data: &[u8]) -> bool {
        is_signed_check(data, &self.ufrag, &self.pass)
    }

    /// Whether ICE and DTLS are done.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Our offer toward the browser (one audio section; `direction` as
    /// the PBX asked: hold offers `sendonly`). `None` when nothing changed
    /// since the last offer/answer (a refresh needs no new one).
    pub fn create_offer(&mut self, direction: MediaDirection) -> Option<String> {
        let mut api = self.rtc.sdp_api();
        match self.mid {
            None => self.mid = Some(api.add_media(MediaKind::Audio, direction.into(), None, None, None)),
            Some(mid) => api.set_direction(mid, direction.into()),
        }
        let (offer, pending) = api.apply()?;
        self.pending = Some(pending);
        Some(offer.to_sdp_string())
    }

    /// The browser's answer to our offer.
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), String> {
        let Some(pending) = self.pending.take() else {
            // The answer to an offer that changed nothing (a session
            // refresh got our current description again): nothing to take.
            return if self.answered { Ok(()) } else { Err("no offer of ours is pending".into()) };
        };
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("browser answer: {e}"))?;
        self.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| format!("browser answer: {e}"))?;
        self.answered = true;
        self.replay_early(now);
        Ok(())
    }

    /// An offer from the browser (its re-INVITE: hold, resume); our answer.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, String> {
        // An offer of ours still pending (glare) is dropped: theirs wins here
        // because SIP already settled the race (491 otherwise).
        self.pending = None;
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| format!("browser offer: {e}"))?;
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(|e| format!("browser offer: {e}"))?;
        if self.mid.is_none() {
            // A browser calling out made the audio section: its mid is ours.
            self.mid = audio_mid(sdp).map(Mid::from);
        }
        self.answered = true;
        Ok(answer.to_sdp_string())
    }

    /// Feeds what came before the answer to str0m, in order.
    fn replay_early(&mut self, now: Instant) {
        for (from, data) in std::mem::take(&mut self.early) {
            self.handle_datagram(now, from, &data);
        }
    }

    /// A datagram for this leg from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        // The browser checks as soon as it has our offer, well before its
        // answer comes back in the 200 (its SIP library waits for ICE
        // gathering). str0m holds such checks until it has the browser's
        // credentials; unanswered, the browser backs off and nominates
        // (which str0m's DTLS waits for) only at its next check, about a
        // second later. RFC 8445 §7.3 lets us answer at once: the check is
        // signed with our password alone.
        //
        // What came before the answer (those checks, and the ClientHello the
        // browser sends once they are answered) is kept and fed to str0m
        // when the answer comes: then a check that nominates the pair
        // connects ICE at once and DTLS goes on (str0m's own queue of early
        // checks does not nominate).
        if !self.answered {
            if let Some(reply) = early_check_reply(data, from, &self.ufrag, &self.pass) {
                self.queued.push(BrowserOutput::Transmit { to: from, data: reply });
            } else if !data.first().is_some_and(|b| (20..=63).contains(b)) {
                // Neither our check nor DTLS (RFC 7983): not for us.
                return;
            }
            if self.early.len() < EARLY_KEPT {
                self.early.push((from, data.to_vec()));
            }
            return;
        }
        let Ok(contents) = data.try_into() else { return };
        let input =
            Input::Receive(now, Receive { proto: Protocol::Udp, source: from, destination: self.local, contents });
        if self.rtc.handle_input(input).is_err() {
            self.gone = true;
        }
        // Drained at once: str0m hands up only the newest RTP packet of
        // several received between two polls.
        self.pump();
    }

    fn pump(&mut self) {
        let mut out = std::mem::take(&mut self.queued);
        self.drain(&mut out);
        self.queued = out;
    }

    /// Time has come (see [`Self::poll`]'s deadline).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.gone = true;
        }
    }

    /// An RTP packet (header and payload, as the relay made it) toward the
    /// browser. Dropped before DTLS completes or if it is no RTP.
    pub fn write_rtp(&mut self, now: Instant, pkt: &[u8]) -> bool {
        let (Some(mid), true) = (self.mid, self.connected) else { return false };
        let Some((pt, marker, seq, ts, payload)) = split_rtp(pkt) else { return false };
        let ext = extend_seq(self.tx_seq, seq);
        self.tx_seq = Some(ext);
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else { return false };
        tx.write_rtp(RtpWrite::new(Pt::from(pt), ext.into(), ts, now, payload.to_vec()).marker(marker));
        self.pump();
        true
    }

    /// Drains what the leg has to say into `out`; returns when it wants
    /// [`Self::handle_timeout`] next.
    pub fn poll(&mut self, out: &mut Vec<BrowserOutput>) -> Option<Instant> {
        out.append(&mut self.queued);
        self.drain(out)
    }

    fn drain(&mut self, out: &mut Vec<BrowserOutput>) -> Option<Instant> {
        if self.gone {
            return None;
        }
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    // ICE-lite answers checks where they came from: the
                    // browser's address is where we send.
                    self.remote = Some(t.destination);
                    out.push(BrowserOutput::Transmit { to: t.destination, data: t.contents.to_vec() });
                }
                Ok(Output::Timeout(t)) => return Some(t),
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected = true;
                        if let Some(remote) = self.remote {
                            out.push(BrowserOutput::Connected(remote));
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.gone = true;
                        out.push(BrowserOutput::Gone);
                        return None;
                    }
                    Event::RtpPacket(p) => out.push(BrowserOutput::Rtp(rtp_bytes(&p))),
                    _ => {}
                },
                Err(_) => {
                    self.gone = true;
                    out.push(BrowserOutput::Gone);
                    return None;
                }
            }
        }
    }
}

/// The `a=mid` of the first audio section of `sdp`.
fn audio_mid(sdp: &str) -> Option<&str> {
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio ");
        } else if in_audio && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(mid.trim());
        }
    }
    None
}

/// The direction of our audio toward the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaDirection {
    /// Both ways.
    SendRecv,
    /// We only send (the PBX holds the browser).
    SendOnly,
    /// We only receive.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl From<MediaDirection> for Direction {
    fn from(d: MediaDirection) -> Direction {
        match d {
            MediaDirection::SendRecv => Direction::SendRecv,
            MediaDirection::SendOnly => Direction::SendOnly,
            MediaDirection::RecvOnly => Direction::RecvOnly,
            MediaDirection::Inactive => Direction::Inactive,
        }
    }
}

/// The local ufrag a STUN request names (`USERNAME` is `ours:theirs`), if
/// `buf` is a STUN message; the routing key of the shared port.
pub fn stun_ufrag(buf: &[u8]) -> Option<&str> {
    if buf.len() < 20 || buf[0] >= 2 || buf.get(4..8) != Some(&[0x21, 0x12, 0xa4, 0x42][..]) {
        return None;
    }
    let mut i = 20;
    while i + 4 <= buf.len() {
        let typ = u16::from_be_bytes([buf[i], buf[i + 1]]);
        let len = usize::from(u16::from_be_bytes([buf[i + 2], buf[i + 3]]));
        let v = buf.get(i + 4..i + 4 + len)?;
        if typ == 0x0006 {
            return std::str::from_utf8(v).ok()?.split(':').next();
        }
        i += 4 + ((len + 3) & !3);
    }
    None
}

const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// The Binding success response to a STUN Binding request for `ufrag`
/// whose MESSAGE-INTEGRITY verifies with `pass` (RFC 8489: XOR-MAPPED-
/// ADDRESS, MESSAGE-INTEGRITY, FINGERPRINT); `None` for anything else.
pub fn early_check_reply(req: &[u8], from: SocketAddr, ufrag: &str, pass: &str) -> Option<Vec<u8>> {
    use hmac::{KeyInit, Mac};
    if !is_signed_check(req, ufrag, pass) {
        return None;
    }
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(&[0x01, 0x01, 0, 0]);
    out.extend_from_slice(&req[4..20]);
    early_reply_body(&mut out, req, from)?;
    // MESSAGE-INTEGRITY, then FINGERPRINT; each computed with the length
    // counting up to its own end.
    let with_mi = u16::try_from(out.len() - 20 + 24).ok()?;
    out[2..4].copy_from_slice(&with_mi.to_be_bytes());
    let mut h = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(pass.as_bytes()).ok()?;
    h.update(&out);
    let mac = h.finalize().into_bytes();
    out.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    out.extend_from_slice(&mac);
    let with_fp = u16::try_from(out.len() - 20 + 8).ok()?;
    out[2..4].copy_from_slice(&with_fp.to_be_bytes());
    let crc = crc32fast::hash(&out) ^ 0x5354_554e;
    out.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
    out.extend_from_slice(&crc.to_be_bytes());
    Some(out)
}

/// Whether `req` is a STUN Binding request for `ufrag` whose
/// MESSAGE-INTEGRITY verifies with `pass`: a check from the leg's browser,
/// not from someone who only learned the username.
pub fn is_signed_check(req: &[u8], ufrag: &str, pass: &str) -> bool {
    verify_check(req, ufrag, pass).is_some()
}

fn verify_check(req: &[u8], ufrag: &str, pass: &str) -> Option<()> {
    use hmac::{KeyInit, Mac};
    if req.len() < 20 || req[0..2] != [0x00, 0x01] || req[4..8] != STUN_MAGIC {
        return None;
    }
    if stun_ufrag(req)? != ufrag {
        return None;
    }
    // The request's MESSAGE-INTEGRITY: HMAC-SHA1 over everything before it,
    // with the header's length counting up to its end.
    let mut i = 20;
    let mut integrity = None;
    while i + 4 <= req.len() {
        let typ = u16::from_be_bytes([req[i], req[i + 1]]);
        let len = usize::from(u16::from_be_bytes([req[i + 2], req[i + 3]]));
        if typ == 0x0008 && len == 20 {
            integrity = Some((i, req.get(i + 4..i + 24)?));
            break;
        }
        i += 4 + ((len + 3) & !3);
    }
    let (at, mac) = integrity?;
    let mut signed = req.get(..at)?.to_vec();
    let len = u16::try_from(at + 24 - 20).ok()?;
    signed[2..4].copy_from_slice(&len.to_be_bytes());
    let mut h = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(pass.as_bytes()).ok()?;
    h.update(&signed);
    h.verify_slice(mac).ok()
}

/// XOR-MAPPED-ADDRESS of a Binding success response to `req` from `from`.
fn early_reply_body(out: &mut Vec<u8>, req: &[u8], from: SocketAddr) -> Option<()> {
    // XOR-MAPPED-ADDRESS.
    let port = from.port() ^ 0x2112;
    match from {
        SocketAddr::V4(a) => {
            out.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            for (b, m) in a.ip().octets().iter().zip(STUN_MAGIC) {
                out.push(b ^ m);
            }
        }
        SocketAddr::V6(a) => {
            out.extend_from_slice(&[0x00, 0x20, 0x00, 0x14, 0x00, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            let key: Vec<u8> = req[4..20].to_vec();
            for (b, m) in a.ip().octets().iter().zip(key) {
                out.push(b ^ m);
            }
        }
    }
    Some(())
}

/// (payload type, marker, sequence, timestamp, payload) of an RTP packet.
fn split_rtp(pkt: &[u8]) -> Option<(u8, bool, u16, u32, &[u8])> {
    if pkt.len() < 12 || pkt[0] >> 6 != 2 {
        return None;
    }
    let cc = usize::from(pkt[0] & 0x0f);
    let mut start = 12 + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        let len = usize::from(u16::from_be_bytes([*pkt.get(start + 2)?, *pkt.get(start + 3)?]));
        start += 4 + 4 * len;
    }
    let mut end = pkt.len();
    if pkt[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*pkt.last()?))?;
    }
    let payload = pkt.get(start..end)?;
    let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
    let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    Some((pkt[1] & 0x7f, pkt[1] & 0x80 != 0, seq, ts, payload))
}

/// The extended sequence number of `seq` after `last` (RFC 3711 §3.3.1):
/// the rollover counter moves when the 16-bit number wraps.
fn extend_seq(last: Option<u64>, seq: u16) -> u64 {
    let Some(last) = last else { return u64::from(seq) };
    let roc = last >> 16;
    let last16 = (last & 0xffff) as u16;
    let candidate = (roc << 16) | u64::from(seq);
    let forward = seq.wrapping_sub(last16);
    if forward < 0x8000 {
        // Ahead of the last one (possibly past a wrap).
        if seq < last16 { ((roc + 1) << 16) | u64::from(seq) } else { candidate }
    } else if seq > last16 && roc > 0 {
        // Behind it, across a wrap: the previous cycle.
        ((roc - 1) << 16) | u64::from(seq)
    } else {
        candidate
    }
}

fn random_token(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut b = vec![0u8; n];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| char::from(ALPHABET[usize::from(*x) % ALPHABET.len()])).collect()
}

/// A decrypted RTP packet from str0m as plain RTP bytes (version 2, no
/// CSRCs or extensions: what the PBX side relays).
pub fn rtp_bytes(p: &str0m::rtp::RtpPacket) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(12 + p.payload.len());
    pkt.push(0x80);
    pkt.push((u8::from(p.header.marker) << 7) | (*p.header.payload_type & 0x7f));
    pkt.extend_from_slice(&p.header.sequence_number.to_be_bytes());
    pkt.extend_from_slice(&p.header.timestamp.to_be_bytes());
    pkt.extend_from_slice(&(*p.header.ssrc).to_be_bytes());
    pkt.extend_from_slice(&p.payload);
    pkt
}

#[cfg(test)]
mod tests;
