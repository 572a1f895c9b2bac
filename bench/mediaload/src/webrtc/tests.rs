//! The generator's browser against trunkgate's own browser leg (the
//! daemon's `BrowserLeg`, ICE-lite, DTLS server) over real loopback
//! sockets, in virtual time: time moves only when nothing is in flight.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use trunkgate::media::webrtc::{BrowserLeg, BrowserOutput, MediaDirection, NodeCert, Voice};

use super::*;
use crate::rtp::{self, Dir, HEADER_LEN, PACKET_LEN, Stamp};

struct Pair {
    now: Instant,
    leg: BrowserLeg,
    leg_sock: UdpSocket,
    peer: Peer,
    leg_up: Vec<BrowserOutput>,
    peer_up: Vec<PeerEvent>,
}

fn recv_all(sock: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0; 2048];
    let mut got = Vec::new();
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        got.push((from, buf[..n].to_vec()));
    }
    got
}

impl Pair {
    fn new() -> Pair {
        let now = trunkgate::clock::instant();
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let leg_sock = UdpSocket::bind(lo).expect("leg socket");
        leg_sock.set_nonblocking(true).expect("nonblocking");
        let leg_addr = leg_sock.local_addr().expect("addr");
        let node = NodeCert::generate().expect("node certificate");
        let mut leg = BrowserLeg::new(now, &node, leg_addr, &[Voice::Pcmu, Voice::Pcma], 101);
        let offer = leg.create_offer(MediaDirection::SendRecv).expect("offer");
        let browser_cert = NodeCert::generate().expect("browser certificate").dtls_cert();
        let sock = crate::net::bind_udp(lo, None, false).expect("peer socket");
        let peer = Peer::answer(now, &browser_cert, sock, offer.as_bytes()).expect("answer");
        let answer = peer.answer_sdp().to_owned();
        assert!(answer.contains("a=setup:active"), "DTLS client, as browsers: {answer}");
        assert!(answer.contains("a=rtpmap:0 PCMU/8000"), "{answer}");
        assert!(!answer.contains("a=ice-lite"), "full ICE: {answer}");
        leg.accept_answer(now, &answer).expect("trunkgate takes the answer");
        Pair { now, leg, leg_sock, peer, leg_up: Vec::new(), peer_up: Vec::new() }
    }

    /// Carries datagrams both ways until `until` holds or `limit` of
    /// virtual time passed.
    fn run(&mut self, limit: Duration, until: impl Fn(&Pair) -> bool) {
        let end = self.now + limit;
        while self.now < end && !until(self) {
            let mut out = Vec::new();
            let leg_next = self.leg.poll(&mut out);
            let mut moved = false;
            for o in out {
                match o {
                    BrowserOutput::Transmit { to, data } => {
                        self.leg_sock.send_to(&data, to).expect("send to the peer");
                        moved = true;
                    }
                    other => self.leg_up.push(other),
                }
            }
            for (from, data) in recv_all(self.peer.socket()) {
                self.peer.handle_datagram(self.now, from, &data, &mut self.peer_up);
                moved = true;
            }
            for (from, data) in recv_all(&self.leg_sock) {
                self.leg.handle_datagram(self.now, from, &data);
                moved = true;
            }
            if moved {
                continue;
            }
            let next = [leg_next, self.peer.timeout()].into_iter().flatten().min().unwrap_or(end);
            self.now = next.max(self.now + Duration::from_millis(1)).min(end);
            self.leg.handle_timeout(self.now);
            self.peer.handle_timeout(self.now, &mut self.peer_up);
        }
    }
}

fn stamped(dir: Dir, seq: u32) -> [u8; PACKET_LEN] {
    let mut buf = [0u8; PACKET_LEN];
    let stamp = Stamp { step: 3, call: 7, dir, seq, sent_ns: 1_000 + u64::from(seq) };
    rtp::write_packet(&mut buf, 0x1234, 160 * seq, seq == 0, &stamp);
    buf
}

/// ICE (the peer controlling against ICE-lite), DTLS (the peer the
/// client) and SRTP both ways, the generator's stamps intact end to end.
#[test]
fn a_peer_connects_to_trunkgates_browser_leg_and_rtp_crosses_both_ways() {
    let mut p = Pair::new();
    p.run(Duration::from_secs(10), |p| p.peer.is_connected() && p.leg.is_connected());
    assert!(p.peer.is_connected(), "the browser's DTLS is done: {:?}", p.peer_up);
    assert!(p.leg.is_connected(), "trunkgate's leg is connected: {:?}", p.leg_up);
    assert_eq!(p.peer_up.first(), Some(&PeerEvent::Connected));
    let peer_addr = p.peer.socket().local_addr().expect("addr");
    assert!(p.leg_up.contains(&BrowserOutput::Connected(peer_addr)), "{:?}", p.leg_up);

    // Browser → trunkgate: three packets through the peer's SRTP.
    let now = p.now;
    for seq in 0..3 {
        let pkt = stamped(Dir::PhoneToPbx, seq);
        let mut ev = Vec::new();
        assert!(p.peer.write_rtp(now, 0, u64::from(seq), 160 * seq, seq == 0, &pkt[HEADER_LEN..], &mut ev));
        assert!(ev.is_empty(), "{ev:?}");
    }
    let rtp_up = |p: &Pair| p.leg_up.iter().filter(|o| matches!(o, BrowserOutput::Rtp(_))).count();
    p.run(Duration::from_millis(200), |p| rtp_up(p) == 3);
    let got: Vec<u32> = p
        .leg_up
        .iter()
        .filter_map(|o| if let BrowserOutput::Rtp(pkt) = o { rtp::read_packet(pkt).ok() } else { None })
        .map(|r| {
            assert_eq!((r.pt, r.stamp.step, r.stamp.call, r.stamp.dir), (0, 3, 7, Dir::PhoneToPbx));
            assert_eq!(r.stamp.sent_ns, 1_000 + u64::from(r.stamp.seq));
            r.stamp.seq
        })
        .collect();
    assert_eq!(got, vec![0, 1, 2]);

    // trunkgate → browser: the relay's packets come up decrypted, one event each.
    let now = p.now;
    for seq in 0..3 {
        assert!(p.leg.write_rtp(now, &stamped(Dir::PbxToPhone, seq)));
    }
    let rtp_down = |p: &Pair| p.peer_up.iter().filter(|e| matches!(e, PeerEvent::Rtp(_))).count();
    p.run(Duration::from_millis(200), |p| rtp_down(p) == 3);
    let got: Vec<u32> = p
        .peer_up
        .iter()
        .filter_map(|e| if let PeerEvent::Rtp(pkt) = e { rtp::read_packet(pkt).ok() } else { None })
        .map(|r| {
            assert_eq!((r.pt, r.ts % 160, r.stamp.dir), (0, 0, Dir::PbxToPhone));
            r.stamp.seq
        })
        .collect();
    assert_eq!(got, vec![0, 1, 2]);
    assert_eq!(p.peer.send_errors, 0);
    assert!(!p.peer.is_gone());
}

#[test]
fn an_offer_that_is_no_sdp_is_refused() {
    let sock = crate::net::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)), None, false).expect("socket");
    let cert = NodeCert::generate().expect("certificate").dtls_cert();
    let now = trunkgate::clock::instant();
    assert!(matches!(Peer::answer(now, &cert, sock.try_clone().expect("clone"), b"v=0\r\n"), Err(PeerError::Offer(_))));
    assert_eq!(Peer::answer(now, &cert, sock, &[0xff, 0xfe]).err(), Some(PeerError::NotText));
}
