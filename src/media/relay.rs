//! The RTP relay's sans-IO core: one [`RelaySession`] per relayed stream
//! (two sides, each a local port pair trunkgate owns). A packet goes in
//! with the side it arrived on, its source and `now`; out comes where to
//! send it (from the other side's port), its header rewritten in place,
//! and counters. No socket, no clock: the driver owns both.
//!
//! - **Symmetric RTP with safe latching**: each side sends to where its
//!   peer's packets come from. A side latches once per offer/answer
//!   ([`RelaySession::expect`] opens it): to the first RTP packet from the
//!   address its SDP announced, or, if the peer is behind NAT, to the first
//!   RTP packet from anywhere. Once latched, only the announced address can
//!   move it; packets from any other source are strays, counted and
//!   dropped (RTP Bleed, CVE-2017-14114).
//! - **Continuity toward each side**: trunkgate is the RTP source its peers
//!   see, with one SSRC per direction. When the incoming source changes
//!   (hold music, transfer, re-INVITE), sequence numbers and timestamps
//!   continue from the last ones sent, so receivers (and SRTP later) never
//!   see a jump.
//! - **Figures** per direction: packets, bytes, sequence gaps (loss),
//!   RFC 3550 interarrival jitter, strays.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The side of a relayed stream (A: the trunk leg's peer; B: the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// First side.
    A,
    /// Second side.
    B,
}

impl Side {
    /// 0 for A, 1 for B (arrays of per-side state).
    pub fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Which of a side's two local ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The even RTP port (also RTCP with rtcp-mux).
    Rtp,
    /// The odd RTCP port.
    Rtcp,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it (rewritten in place) from the other side's port `via` to `to`.
    Forward {
        /// The other side's peer.
        to: SocketAddr,
        /// The local port it leaves from.
        via: Port,
    },
    /// The other side does not want media now (its SDP said `sendonly` or
    /// `inactive`: hold): dropped.
    Held,
    /// Accepted, but the other side has no address yet (no SDP, no packet).
    NoDestination,
    /// From a source that is not this side's peer: counted, dropped.
    Stray,
    /// Not RTP (too short, wrong version): dropped.
    Malformed,
    /// The end of an RFC 4733 digit from this side, toward a side that
    /// takes no telephone-event: carry it in signalling (SIP INFO).
    Dtmf {
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
        /// Its length, milliseconds.
        duration_ms: u32,
    },
    /// An RFC 4733 packet whose digit was already reported (its start,
    /// updates, retransmitted end): dropped.
    DtmfPart,
}

/// Figures of one direction (packets that arrived on one side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionStats {
    /// RTP packets relayed.
    pub packets: u64,
    /// Their bytes (RTP header included).
    pub bytes: u64,
    /// Sequence numbers never seen (gaps).
    pub lost: u64,
    /// RFC 3550 interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Packets from sources that are not the peer, dropped.
    pub stray: u64,
    /// RTCP packets relayed.
    pub rtcp_packets: u64,
    /// Packets dropped because the other side was on hold.
    pub held: u64,
}

/// Where a side's peer is.
#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    /// What its SDP said (c= and m= port).
    announced: Option<SocketAddr>,
    /// Where its packets come from.
    latched: Option<SocketAddr>,
    /// May latch to the first packet (a new offer/answer happened).
    learning: bool,
    last_packet: Option<Instant>,
}

impl Peer {
    fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.announced)
    }

    /// Safe latching: whether a packet from `source` belongs to this peer
    /// (and latches it if so).
    fn accept(&mut self, source: SocketAddr) -> bool {
        let accepted = match self.latched {
            Some(l) if l == source => true,
            _ if self.announced == Some(source) => true,
            _ => self.learning,
        };
        if accepted {
            // Latch once per offer/answer (the announced address may always
            // take it back: it is what the signalling said).
            self.latched = Some(source);
            self.learning = false;
        }
        accepted
    }
}

/// A side's media settings from its latest offer/answer.
#[derive(Debug, Clone, Copy)]
struct SideMedia {
    rtcp: Peer,
    /// RTCP on the RTP port (RFC 5761).
    mux: bool,
    /// Its SDP wants media (not `sendonly`/`inactive`).
    receives: bool,
    /// Payload types it sends, in the other side's numbering.
    pt_map: [u8; 128],
    /// Payload types that are RFC 4733 events when this side sends them.
    events_in: [Option<u8>; 2],
    /// The type of events sent to this side (`None`: it takes none).
    events_out: Option<u8>,
    /// RTP timestamp of the last digit reported from this side.
    last_digit: Option<u32>,
    /// Clock rate of the events it sends and of those it takes (8000, or
    /// 48000 beside Opus).
    event_rates: (u32, u32),
}

impl Default for SideMedia {
    fn default() -> Self {
        SideMedia {
            rtcp: Peer::default(),
            mux: false,
            receives: true,
            pt_map: std::array::from_fn(|i| u8::try_from(i).unwrap_or(0)),
            events_in: [None; 2],
            events_out: None,
            last_digit: None,
            event_rates: (8000, 8000),
        }
    }
}

/// The rewriting toward one side: our SSRC and where its numbers go on.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    ssrc: u32,
    /// The incoming SSRC we map from, and the offsets.
    source: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    last_seq: u16,
    last_ts: u32,
    last_sent: Option<Instant>,
}

/// Per-direction receive state for loss and jitter.
#[derive(Debug, Clone, Copy, Default)]
struct Receive {
    source: Option<u32>,
    highest_seq: u16,
    /// Transit time of the previous packet (arrival in ts units − ts).
    transit: Option<i64>,
    /// Jitter × 16 (RFC 3550 A.8 keeps it scaled).
    jitter16: u64,
}

/// One relayed RTP stream between two sides.
#[derive(Debug, Clone)]
pub struct RelaySession {
    peers: [Peer; 2],
    media: [SideMedia; 2],
    /// Toward each side (indexed by the receiving side).
    out: [Outgoing; 2],
    recv: [Receive; 2],
    stats: [DirectionStats; 2],
    /// Timestamp units per second (8000 for G.711).
    clock_rate: u32,
    epoch: Instant,
}

const RTP_HEADER: usize = 12;

impl RelaySession {
    /// A session whose outgoing SSRCs toward A and B are `ssrcs` (random,
    /// chosen by the caller), at `clock_rate` Hz.
    pub fn new(now: Instant, ssrcs: [u32; 2], clock_rate: u32) -> RelaySession {
        let out = |ssrc| Outgoing {
            ssrc,
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            last_seq: 0,
            last_ts: 0,
            last_sent: None,
        };
        RelaySession {
            peers: [Peer::default(); 2],
            media: [SideMedia::default(); 2],
            out: [out(ssrcs[0]), out(ssrcs[1])],
            recv: [Receive::default(); 2],
            stats: [DirectionStats::default(); 2],
            clock_rate: clock_rate.max(1),
            epoch: now,
        }
    }

    /// A new offer/answer told where `side`'s peer receives (`None`: hold
    /// with `c=0.0.0.0`, or no SDP yet): the side may latch again, once.
    pub fn expect(&mut self, side: Side, announced: Option<SocketAddr>) {
        let p = &mut self.peers[side.index()];
        p.announced = announced.filter(|a| !a.ip().is_unspecified() && a.port() != 0);
        p.learning = true;
    }

    /// Where `side`'s peer receives RTCP (`a=rtcp`, else RTP port + 1) and
    /// whether it multiplexes RTCP on the RTP port: from the same offer/answer
    /// as [`expect`](Self::expect); its RTCP source may latch once too.
    pub fn expect_rtcp(&mut self, side: Side, announced: Option<SocketAddr>, mux: bool) {
        let m = &mut self.media[side.index()];
        m.rtcp.announced = announced.filter(|a| !a.ip().is_unspecified() && a.port() != 0);
        m.rtcp.learning = true;
        m.mux = mux;
    }

    /// Side `side` has a new peer (another fork answered): nothing of the
    /// old one is kept but our numbering toward it (which continues).
    pub fn reset_side(&mut self, side: Side) {
        let i = side.index();
        self.peers[i] = Peer::default();
        self.media[i] = SideMedia::default();
        self.recv[i] = Receive::default();
    }

    /// Whether `side`'s peer wants media now (its SDP's direction).
    pub fn set_receives(&mut self, side: Side, receives: bool) {
        self.media[side.index()].receives = receives;
    }

    /// How payload types sent by `side` are renumbered for the other side
    /// (see [`crate::media::sdp::payload_map`]).
    pub fn set_payload_map(&mut self, side: Side, map: [u8; 128]) {
        self.media[side.index()].pt_map = map;
    }

    /// RFC 4733 payload types: those that are events when `side` sends
    /// them, and the one it receives events with (`None`: digits toward it
    /// go as SIP INFO, see [`Verdict::Dtmf`]).
    pub fn set_events(&mut self, side: Side, events_in: [Option<u8>; 2], events_out: Option<u8>) {
        let m = &mut self.media[side.index()];
        m.events_in = events_in;
        m.events_out = events_out;
    }

    /// The clock rates of the events `side` sends and takes
    /// (`telephone-event/8000` or `/48000`): an event from a side sending
    /// at one rate to a side taking the other has its duration re-timed.
    pub fn set_event_rates(&mut self, side: Side, sends: u32, takes: u32) {
        self.media[side.index()].event_rates = (sends.max(1), takes.max(1));
    }

    /// RFC 4733 packets of `digit` toward `side` (a digit that came as SIP
    /// INFO from the other leg): start, then the end three times (§2.5.1.4),
    /// all at once with the digit's final duration, in our numbering toward
    /// `side`. Empty when `side` takes no events or the digit is unknown.
    pub fn dtmf_packets(&mut self, now: Instant, side: Side, digit: char, duration_ms: u32) -> Vec<Vec<u8>> {
        let i = side.index();
        let (Some(pt), Some(event)) = (self.media[i].events_out, event_code(digit)) else { return Vec::new() };
        let rate = self.clock_rate;
        let out = &mut self.out[i];
        let ts = match out.last_sent {
            Some(at) => out.last_ts.wrapping_add(ticks(now.saturating_duration_since(at), rate).max(1)),
            None => ticks(now.saturating_duration_since(self.epoch), rate),
        };
        let duration =
            u16::try_from(u64::from(duration_ms.clamp(40, 8000)) * u64::from(rate) / 1000).unwrap_or(u16::MAX);
        let mut packets = Vec::with_capacity(4);
        for (n, end) in [false, true, true, true].into_iter().enumerate() {
            let seq = out.last_seq.wrapping_add(1);
            out.last_seq = seq;
            let mut p = vec![0x80, if n == 0 { 0x80 | pt } else { pt }];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&out.ssrc.to_be_bytes());
            // Event, E bit and volume (10 dBm0 down), duration.
            let d = if end { duration } else { duration.min(u16::try_from(rate / 50).unwrap_or(160)) };
            p.extend_from_slice(&[event, if end { 0x80 | 10 } else { 10 }]);
            p.extend_from_slice(&d.to_be_bytes());
            packets.push(p);
        }
        out.last_ts = ts;
        out.last_sent = Some(now);
        packets
    }

    /// The RTP clock rate (timestamp units per second) of the stream.
    pub fn set_clock_rate(&mut self, rate: u32) {
        self.clock_rate = rate.max(1);
    }

    /// Figures of packets that arrived on `side`.
    pub fn stats(&self, side: Side) -> DirectionStats {
        let mut s = self.stats[side.index()];
        s.jitter = u32::try_from(self.recv[side.index()].jitter16 / 16).unwrap_or(u32::MAX);
        s
    }

    /// When `side` last sent us an RTP or RTCP packet its peer owns.
    pub fn last_packet(&self, side: Side) -> Option<Instant> {
        let i = side.index();
        match (self.peers[i].last_packet, self.media[i].rtcp.last_packet) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Where packets toward `side` go now.
    pub fn destination(&self, side: Side) -> Option<SocketAddr> {
        self.peers[side.index()].destination()
    }

    /// An RTP packet arrived on `side`'s port from `source`. On
    /// [`Verdict::Forward`] `packet` has been rewritten for the other side.
    pub fn handle_rtp(&mut self, now: Instant, side: Side, source: SocketAddr, packet: &mut [u8]) -> Verdict {
        if packet.len() < RTP_HEADER || packet[0] >> 6 != 2 {
            return Verdict::Malformed;
        }
        let i = side.index();
        let peer = &mut self.peers[i];
        if !peer.accept(source) {
            self.stats[i].stray += 1;
            return Verdict::Stray;
        }
        peer.last_packet = Some(now);
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ts = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        self.account(i, now, seq, ts, ssrc, packet.len());
        // A digit toward a side that takes no events: reported once (at its
        // first end packet), never relayed.
        let pt = packet[1] & 0x7f;
        let o = side.other().index();
        let event = self.media[i].events_in.contains(&Some(pt));
        if event && self.media[o].events_out.is_none() {
            return self.digit_from(i, ts, packet);
        }
        let (from_rate, to_rate) = (self.media[i].event_rates.0, self.media[o].event_rates.1);
        if event && from_rate != to_rate && packet.len() >= RTP_HEADER + 4 {
            // RFC 4733 durations count the event's clock: re-timed.
            let d = u64::from(u16::from_be_bytes([packet[14], packet[15]]));
            let d = u16::try_from(d * u64::from(to_rate) / u64::from(from_rate)).unwrap_or(u16::MAX);
            packet[14..16].copy_from_slice(&d.to_be_bytes());
        }
        // Toward the other side.
        let to = self.peers[o].destination();
        let out = &mut self.out[o];
        if out.source != Some(ssrc) {
            // A new source: continue our numbers from the last ones sent
            // (timestamps advanced by the time since, in clock units).
            let (next_seq, next_ts) = match out.last_sent {
                Some(at) => {
                    let gap = now.saturating_duration_since(at);
                    let ticks = ticks(gap, self.clock_rate).max(1);
                    (out.last_seq.wrapping_add(1), out.last_ts.wrapping_add(ticks))
                }
                None => (seq, ts),
            };
            out.seq_offset = next_seq.wrapping_sub(seq);
            out.ts_offset = next_ts.wrapping_sub(ts);
            out.source = Some(ssrc);
        }
        let new_seq = seq.wrapping_add(out.seq_offset);
        let new_ts = ts.wrapping_add(out.ts_offset);
        // Only move forward: a late packet does not rewind the "last".
        if out.last_sent.is_none() || seq_newer(new_seq, out.last_seq) {
            out.last_seq = new_seq;
            out.last_ts = new_ts;
            out.last_sent = Some(now);
        }
        let pt = packet[1] & 0x7f;
        packet[1] = (packet[1] & 0x80) | self.media[i].pt_map[usize::from(pt)];
        packet[2..4].copy_from_slice(&new_seq.to_be_bytes());
        packet[4..8].copy_from_slice(&new_ts.to_be_bytes());
        packet[8..12].copy_from_slice(&out.ssrc.to_be_bytes());
        if !self.media[o].receives {
            self.stats[i].held += 1;
            return Verdict::Held;
        }
        match to {
            Some(to) => Verdict::Forward { to, via: Port::Rtp },
            None => Verdict::NoDestination,
        }
    }

    /// An RTCP packet arrived on `side` from `source` (on its RTCP port, or
    /// muxed on its RTP port). Sender SSRCs are rewritten to ours toward the
    /// other side, report blocks about our stream to the source they report
    /// on, and the SR's RTP timestamp to our timeline, so the far end sees
    /// one consistent source.
    pub fn handle_rtcp(&mut self, now: Instant, side: Side, source: SocketAddr, packet: &mut [u8]) -> Verdict {
        if packet.len() < 8 || packet[0] >> 6 != 2 {
            return Verdict::Malformed;
        }
        let i = side.index();
        let m = &mut self.media[i];
        // Muxed RTCP comes from the RTP source.
        let ok = if m.mux && self.peers[i].latched == Some(source) { true } else { m.rtcp.accept(source) };
        if !ok {
            self.stats[i].stray += 1;
            return Verdict::Stray;
        }
        m.rtcp.last_packet = Some(now);
        self.stats[i].rtcp_packets += 1;
        let o = side.other().index();
        let toward = self.out[o];
        let reported = self.recv[o].source;
        let ours_toward_sender = self.out[i].ssrc;
        rewrite_rtcp(packet, toward.ssrc, toward.ts_offset, ours_toward_sender, reported);
        let dest = &self.media[o];
        let (to, via) =
            if dest.mux { (self.peers[o].destination(), Port::Rtp) } else { (dest.rtcp.destination(), Port::Rtcp) };
        match to {
            Some(to) => Verdict::Forward { to, via },
            None => Verdict::NoDestination,
        }
    }

    fn digit_from(&mut self, i: usize, ts: u32, packet: &[u8]) -> Verdict {
        let Some(ev) = packet.get(RTP_HEADER..RTP_HEADER + 4) else { return Verdict::Malformed };
        let end = ev[1] & 0x80 != 0;
        let m = &mut self.media[i];
        if !end || m.last_digit == Some(ts) {
            return Verdict::DtmfPart;
        }
        let Some(digit) = digit_of(ev[0]) else { return Verdict::DtmfPart };
        m.last_digit = Some(ts);
        let duration = u32::from(u16::from_be_bytes([ev[2], ev[3]]));
        Verdict::Dtmf { digit, duration_ms: duration * 1000 / self.clock_rate.max(1) }
    }

    fn account(&mut self, i: usize, now: Instant, seq: u16, ts: u32, ssrc: u32, len: usize) {
        let st = &mut self.stats[i];
        st.packets += 1;
        st.bytes += len as u64;
        let r = &mut self.recv[i];
        if r.source != Some(ssrc) {
            *r = Receive { source: Some(ssrc), highest_seq: seq, transit: None, jitter16: r.jitter16 };
        } else if seq_newer(seq, r.highest_seq) {
            let gap = seq.wrapping_sub(r.highest_seq);
            st.lost += u64::from(gap - 1);
            r.highest_seq = seq;
        }
        // RFC 3550 A.8: J += (|D| - J) / 16, on arrival times in ts units.
        let arrival = i64::from(ticks(now.saturating_duration_since(self.epoch), self.clock_rate));
        let transit = arrival - i64::from(ts);
        if let Some(prev) = r.transit {
            let d = (transit - prev).unsigned_abs();
            r.jitter16 = r.jitter16 + d - ((r.jitter16 + 8) >> 4);
        }
        r.transit = Some(transit);
    }
}

/// RFC 4733 §3.2 event code of a DTMF digit.
pub fn event_code(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        d @ 'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

/// The DTMF digit of an RFC 4733 event code.
pub fn digit_of(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + code - 12)),
        _ => None,
    }
}

/// Whether a packet on an RTP port is muxed RTCP (RFC 5761 §4: payload
/// types 64–95 with the marker bit, i.e. RTCP packet types 192–223).
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (192..=223).contains(&packet[1])
}

/// Rewrites a compound RTCP packet in place (see
/// [`RelaySession::handle_rtcp`]). Stops at the first malformed part.
fn rewrite_rtcp(p: &mut [u8], sender: u32, ts_offset: u32, ours_toward_sender: u32, reported: Option<u32>) {
    let mut at = 0;
    while at + 8 <= p.len() {
        let count = usize::from(p[at] & 0x1f);
        let kind = p[at + 1];
        let len = (usize::from(u16::from_be_bytes([p[at + 2], p[at + 3]])) + 1) * 4;
        if p[at] >> 6 != 2 || at + len > p.len() {
            return;
        }
        // Every common type starts with its sender's (or chunk's) SSRC.
        if matches!(kind, 200..=204) {
            p[at + 4..at + 8].copy_from_slice(&sender.to_be_bytes());
        }
        let blocks = match kind {
            200 if len >= 28 => {
                let ts = u32::from_be_bytes([p[at + 16], p[at + 17], p[at + 18], p[at + 19]]);
                p[at + 16..at + 20].copy_from_slice(&ts.wrapping_add(ts_offset).to_be_bytes());
                Some(at + 28)
            }
            201 => Some(at + 8),
            _ => None,
        };
        if let (Some(start), Some(reported)) = (blocks, reported) {
            for b in 0..count {
                let s = start + b * 24;
                if s + 24 > at + len {
                    break;
                }
                let about = u32::from_be_bytes([p[s], p[s + 1], p[s + 2], p[s + 3]]);
                if about == ours_toward_sender {
                    p[s..s + 4].copy_from_slice(&reported.to_be_bytes());
                }
            }
        }
        at += len;
    }
}

/// `d` in clock units (wrapping like RTP timestamps).
fn ticks(d: Duration, rate: u32) -> u32 {
    let t = d.as_micros() * u128::from(rate) / 1_000_000;
    (t & 0xffff_ffff) as u32
}

/// RFC 3550 sequence comparison: `a` comes after `b` (modulo 2^16).
fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    }

    fn fields(p: &[u8]) -> (u16, u32, u32) {
        (
            u16::from_be_bytes([p[2], p[3]]),
            u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    const PBX: &str = "192.0.2.10:4000";
    const PHONE: &str = "198.51.100.5:5000";

    fn session() -> (Instant, RelaySession) {
        let t0 = crate::clock::instant();
        let mut s = RelaySession::new(t0, [0xAAAA_0001, 0xBBBB_0002], 8000);
        s.expect(Side::A, Some(addr(PBX)));
        s.expect(Side::B, Some(addr(PHONE)));
        (t0, s)
    }

    #[test]
    fn relays_to_the_other_side_with_our_ssrc() {
        let (t0, mut s) = session();
        let mut p = rtp(100, 8000, 0x1234);
        assert_eq!(s.handle_rtp(t0, Side::A, addr(PBX), &mut p), Verdict::Forward { to: addr(PHONE), via: Port::Rtp });
        assert_eq!(fields(&p), (100, 8000, 0xBBBB_0002));
        assert_eq!(&p[12..], &[0xd5; 160][..], "the payload is untouched");
        let st = s.stats(Side::A);
        assert_eq!((st.packets, st.bytes, st.lost, st.stray), (1, 172, 0, 0));
    }

    #[test]
    fn latches_to_a_natted_source_once_and_drops_strangers() {
        let (t0, mut s) = session();
        // The PBX is behind NAT: its packets come from another address.
        let nat = addr("203.0.113.50:31000");
        let mut p = rtp(1, 160, 7);
        assert!(matches!(s.handle_rtp(t0, Side::A, nat, &mut p), Verdict::Forward { .. }));
        // Packets toward A now go where A's packets come from.
        assert_eq!(s.destination(Side::A), Some(nat));
        // A stranger (RTP Bleed) cannot take the latch.
        let mut p = rtp(2, 320, 7);
        assert_eq!(s.handle_rtp(t0, Side::A, addr("203.0.113.66:40000"), &mut p), Verdict::Stray);
        assert_eq!(s.destination(Side::A), Some(nat));
        assert_eq!(s.stats(Side::A).stray, 1);
        // A new offer/answer opens the latch once more.
        s.expect(Side::A, Some(addr(PBX)));
        let moved = addr("203.0.113.50:31002");
        let mut p = rtp(3, 480, 7);
        assert!(matches!(s.handle_rtp(t0, Side::A, moved, &mut p), Verdict::Forward { .. }));
        assert_eq!(s.destination(Side::A), Some(moved));
        let mut p = rtp(4, 640, 7);
        assert_eq!(s.handle_rtp(t0, Side::A, nat, &mut p), Verdict::Stray);
    }

    #[test]
    fn the_announced_address_always_wins_back_the_latch() {
        let (t0, mut s) = session();
        let early = addr("203.0.113.66:40000");
        let mut p = rtp(1, 160, 7);
        s.handle_rtp(t0, Side::A, early, &mut p);
        let mut p = rtp(2, 320, 7);
        assert!(matches!(s.handle_rtp(t0, Side::A, addr(PBX), &mut p), Verdict::Forward { .. }));
        assert_eq!(s.destination(Side::A), Some(addr(PBX)));
        let mut p = rtp(3, 480, 7);
        assert_eq!(s.handle_rtp(t0, Side::A, early, &mut p), Verdict::Stray);
    }

    #[test]
    fn a_new_source_continues_sequence_and_timestamp_without_a_jump() {
        let (t0, mut s) = session();
        for i in 0..3u16 {
            let mut p = rtp(500 + i, 10_000 + u32::from(i) * 160, 0x1111);
            s.handle_rtp(t0 + Duration::from_millis(20 * u64::from(i)), Side::A, addr(PBX), &mut p);
        }
        // Hold music from another SSRC with unrelated numbers, 20 ms later.
        let mut p = rtp(9, 777_000, 0x2222);
        s.handle_rtp(t0 + Duration::from_millis(60), Side::A, addr(PBX), &mut p);
        assert_eq!(fields(&p), (503, 10_000 + 2 * 160 + 160, 0xBBBB_0002));
        let mut p = rtp(10, 777_160, 0x2222);
        s.handle_rtp(t0 + Duration::from_millis(80), Side::A, addr(PBX), &mut p);
        assert_eq!(fields(&p), (504, 10_000 + 4 * 160, 0xBBBB_0002));
    }

    #[test]
    fn sequence_gaps_count_as_loss_and_wrap_around() {
        let (t0, mut s) = session();
        for seq in [65_533u16, 65_534, 0, 1, 5] {
            let mut p = rtp(seq, 0, 9);
            s.handle_rtp(t0, Side::B, addr(PHONE), &mut p);
        }
        // 65535 missing, then 2, 3, 4 missing.
        assert_eq!(s.stats(Side::B).lost, 4);
        assert_eq!(s.stats(Side::B).packets, 5);
    }

    #[test]
    fn steady_packets_have_no_jitter_and_late_ones_do() {
        let (t0, mut s) = session();
        for i in 0..50u32 {
            let mut p = rtp(i as u16, i * 160, 9);
            s.handle_rtp(t0 + Duration::from_millis(20 * u64::from(i)), Side::A, addr(PBX), &mut p);
        }
        assert_eq!(s.stats(Side::A).jitter, 0);
        // Every other packet 10 ms late (80 ticks at 8 kHz): J tends to 80.
        for i in 50..400u32 {
            let late = if i % 2 == 0 { 10 } else { 0 };
            let mut p = rtp(i as u16, i * 160, 9);
            s.handle_rtp(t0 + Duration::from_millis(20 * u64::from(i) + late), Side::A, addr(PBX), &mut p);
        }
        let j = s.stats(Side::A).jitter;
        assert!((75..=80).contains(&j), "jitter {j}");
    }

    #[test]
    fn no_destination_until_the_other_side_is_known_and_garbage_is_dropped() {
        let t0 = crate::clock::instant();
        let mut s = RelaySession::new(t0, [1, 2], 8000);
        s.expect(Side::A, Some(addr(PBX)));
        let mut p = rtp(1, 1, 1);
        assert_eq!(s.handle_rtp(t0, Side::A, addr(PBX), &mut p), Verdict::NoDestination);
        let mut short = vec![0x80; 11];
        assert_eq!(s.handle_rtp(t0, Side::A, addr(PBX), &mut short), Verdict::Malformed);
        let mut v1 = rtp(2, 2, 1);
        v1[0] = 0x40;
        assert_eq!(s.handle_rtp(t0, Side::A, addr(PBX), &mut v1), Verdict::Malformed);
        // Hold from an old PBX: c=0.0.0.0 announces nothing.
        s.expect(Side::B, Some(addr("0.0.0.0:5000")));
        assert_eq!(s.destination(Side::B), None);
    }

    fn rtcp_rr(sender: u32, about: u32) -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7];
        p.extend_from_slice(&sender.to_be_bytes());
        p.extend_from_slice(&about.to_be_bytes());
        p.extend_from_slice(&[0; 20]);
        p
    }

    #[test]
    fn rtcp_goes_to_the_rtcp_port_or_muxed_with_ssrcs_rewritten() {
        let (t0, mut s) = session();
        s.expect_rtcp(Side::A, Some(addr("192.0.2.10:4001")), false);
        s.expect_rtcp(Side::B, Some(addr("198.51.100.5:5001")), true);
        // The PBX's stream, so reports about it can be mapped.
        let mut p = rtp(1, 160, 0x1234);
        s.handle_rtp(t0, Side::A, addr(PBX), &mut p);
        // The phone (muxed) reports on our stream toward it (SSRC BBBB_0002)
        // from its RTP address: toward the PBX it reports on the PBX's own.
        let mut r = rtcp_rr(0x5555, 0xBBBB_0002);
        assert!(is_rtcp(&r) && !is_rtcp(&p));
        assert_eq!(
            s.handle_rtcp(t0, Side::B, addr(PHONE), &mut r),
            Verdict::Forward { to: addr("192.0.2.10:4001"), via: Port::Rtcp }
        );
        assert_eq!(&r[4..8], &0xAAAA_0001u32.to_be_bytes(), "our SSRC toward the PBX");
        assert_eq!(&r[8..12], &0x1234u32.to_be_bytes(), "about the PBX's stream");
        // The PBX's RTCP toward the muxing phone leaves from our RTP port.
        let mut r = rtcp_rr(0x1234, 0xAAAA_0001);
        assert_eq!(
            s.handle_rtcp(t0, Side::A, addr("192.0.2.10:4001"), &mut r),
            Verdict::Forward { to: addr(PHONE), via: Port::Rtp }
        );
        // A stranger's RTCP is stray; so is a truncated compound's garbage.
        let mut r = rtcp_rr(1, 2);
        assert_eq!(s.handle_rtcp(t0, Side::A, addr("203.0.113.9:4001"), &mut r), Verdict::Stray);
        assert_eq!(s.stats(Side::A).rtcp_packets, 1);
        assert_eq!(s.stats(Side::B).rtcp_packets, 1);
        assert_eq!(s.last_packet(Side::B), Some(t0));
    }

    #[test]
    fn payload_types_are_renumbered_and_a_held_side_gets_nothing() {
        let (t0, mut s) = session();
        let mut map: [u8; 128] = std::array::from_fn(|i| i as u8);
        map[101] = 96;
        s.set_payload_map(Side::A, map);
        let mut p = rtp(1, 160, 7);
        p[1] = 0x80 | 101; // marker + telephone-event
        assert!(matches!(s.handle_rtp(t0, Side::A, addr(PBX), &mut p), Verdict::Forward { .. }));
        assert_eq!(p[1], 0x80 | 96, "marker kept, type renumbered");
        // The phone put the PBX on hold (sendonly): nothing goes to the phone
        s.set_receives(Side::B, false);
        let mut p = rtp(2, 320, 7);
        assert_eq!(s.handle_rtp(t0, Side::A, addr(PBX), &mut p), Verdict::Held);
        assert_eq!(s.stats(Side::A).held, 1);
        // ...while its own packets still reach the PBX.
        let mut p = rtp(1, 160, 9);
        assert!(matches!(s.handle_rtp(t0, Side::B, addr(PHONE), &mut p), Verdict::Forward { .. }));
    }

    #[test]
    fn digits_toward_a_side_without_events_are_reported_once_and_made_for_one_with() {
        let (t0, mut s) = session();
        // The PBX sends events as 101; the phone takes none.
        s.set_events(Side::A, [Some(101), None], Some(101));
        let ev = |e: u8, end: bool, dur: u16, seq: u16| {
            let mut p = rtp(seq, 8000, 7);
            p.truncate(12);
            p[1] = 101;
            p.extend_from_slice(&[e, if end { 0x8a } else { 0x0a }]);
            p.extend_from_slice(&dur.to_be_bytes());
            p
        };
        let got: Vec<Verdict> = [ev(5, false, 160, 1), ev(5, true, 800, 2), ev(5, true, 800, 3), ev(5, true, 800, 4)]
            .into_iter()
            .map(|mut p| s.handle_rtp(t0, Side::A, addr(PBX), &mut p))
            .collect();
        assert_eq!(
            got,
            [Verdict::DtmfPart, Verdict::Dtmf { digit: '5', duration_ms: 100 }, Verdict::DtmfPart, Verdict::DtmfPart]
        );
        // Voice still flows.
        let mut p = rtp(5, 8160, 7);
        assert!(matches!(s.handle_rtp(t0, Side::A, addr(PBX), &mut p), Verdict::Forward { .. }));
        // A digit from INFO toward the PBX: start + three ends, our SSRC,
        // consecutive sequence numbers after what we sent it.
        s.set_events(Side::B, [None, None], None);
        let mut p = rtp(700, 16000, 9);
        s.handle_rtp(t0, Side::B, addr(PHONE), &mut p);
        let (seq0, _, our_ssrc) = fields(&p);
        let made = s.dtmf_packets(t0 + Duration::from_millis(20), Side::A, '#', 250);
        assert_eq!(made.len(), 4);
        for (n, m) in made.iter().enumerate() {
            let (seq, _, ssrc) = fields(m);
            assert_eq!((seq, ssrc), (seq0.wrapping_add(1 + n as u16), our_ssrc));
            assert_eq!(m[1] & 0x7f, 101);
            assert_eq!(m[12], 11, "# is event 11");
            assert_eq!(m[13] & 0x80 != 0, n > 0, "E bit on the ends");
        }
        assert_eq!(made[0][1] & 0x80, 0x80, "marker on the start");
        assert_eq!(u16::from_be_bytes([made[3][14], made[3][15]]), 2000, "250 ms at 8 kHz");
        assert!(s.dtmf_packets(t0, Side::B, '1', 100).is_empty(), "the phone takes no events");
    }

    #[test]
    fn events_are_re_timed_between_8_and_48_khz() {
        let (t0, mut s) = session();
        // The PBX sends telephone-event/8000 as 101; the phone (an Opus
        // leg) takes telephone-event/48000 as 110.
        let mut map: [u8; 128] = std::array::from_fn(|i| i as u8);
        map[101] = 110;
        s.set_payload_map(Side::A, map);
        s.set_events(Side::A, [Some(101), None], Some(101));
        s.set_events(Side::B, [Some(110), None], Some(110));
        s.set_event_rates(Side::A, 8000, 8000);
        s.set_event_rates(Side::B, 48000, 48000);
        let mut p = rtp(1, 8000, 7);
        p.truncate(12);
        p[1] = 0x80 | 101;
        p.extend_from_slice(&[5, 0x8a, 0x03, 0x20]); // digit 5, end, 800 (100 ms at 8 kHz)
        assert!(matches!(s.handle_rtp(t0, Side::A, addr(PBX), &mut p), Verdict::Forward { .. }));
        assert_eq!(p[1], 0x80 | 110);
        assert_eq!(u16::from_be_bytes([p[14], p[15]]), 4800, "100 ms at 48 kHz");
        assert_eq!(&p[12..14], &[5, 0x8a], "event and flags untouched");
        // Back: 48 kHz durations to 8 kHz.
        let mut q = rtp(1, 48000, 9);
        q.truncate(12);
        q[1] = 110;
        q.extend_from_slice(&[1, 0x0a, 0x12, 0xc0]); // 4800
        s.set_payload_map(Side::B, std::array::from_fn(|i| if i == 110 { 101 } else { i as u8 }));
        assert!(matches!(s.handle_rtp(t0, Side::B, addr(PHONE), &mut q), Verdict::Forward { .. }));
        assert_eq!((q[1], u16::from_be_bytes([q[14], q[15]])), (101, 800));
    }
}
