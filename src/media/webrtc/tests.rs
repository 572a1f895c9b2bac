//! The browser leg against a full-ICE str0m peer playing the browser, in
//! one process and in virtual time: ICE-lite, DTLS and SRTP for real, the
//! network a queue of datagrams.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::*;

const LEG: &str = "127.0.0.1:40000";
const BROWSER: &str = "127.0.0.1:50000";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// The "browser": full ICE, Chromium's numbering for telephone-event (126).
fn browser(now: Instant) -> Rtc {
    let cert = NodeCert::generate().expect("cert");
    let mut cfg = RtcConfig::new().clear_codecs().set_rtp_mode(true).set_dtls_cert(cert.0);
    let codecs = cfg.codec_config();
    codecs.enable_opus(true, false);
    codecs.enable_pcmu(true, false);
    codecs.enable_pcma(true, false);
    codecs.add_config(126.into(), None, Codec::Tele, Frequency::EIGHT_KHZ, None, FormatParams::default());
    let mut rtc = cfg.build(now);
    rtc.add_local_candidate(Candidate::host(addr(BROWSER), "udp").expect("candidate"));
    rtc
}

struct Net {
    now: Instant,
    leg: BrowserLeg,
    browser: Rtc,
    /// What the browser got: RTP packets (pt, seq, ts, marker, payload).
    got: Vec<(u8, u16, u32, bool, Vec<u8>)>,
    /// What the leg handed up.
    up: Vec<BrowserOutput>,
    browser_connected: bool,
    browser_next: Instant,
    leg_next: Option<Instant>,
    browser_mid: Option<Mid>,
    /// Datagrams from the browser for the next round.
    later: Vec<Vec<u8>>,
    /// The browser's ICE found a working pair.
    browser_ice: bool,
    /// Drop the browser's nominating checks (USE-CANDIDATE).
    drop_nominations: bool,
    /// Nominating checks dropped.
    nominations_dropped: usize,
}

impl Net {
    /// Our leg and the browser at `now`, nothing in flight.
    fn new(now: Instant, leg: BrowserLeg, browser: Rtc) -> Net {
        Net {
            now,
            leg,
            browser,
            got: Vec::new(),
            up: Vec::new(),
            browser_connected: false,
            browser_next: now,
            leg_next: Some(now),
            browser_mid: None,
            later: Vec::new(),
            browser_ice: false,
            drop_nominations: false,
            nominations_dropped: 0,
        }
    }

    /// Runs both ends, delivering every datagram, until `until` holds or
    /// `limit` of virtual time passed.
    fn run(&mut self, limit: Duration, until: impl Fn(&Net) -> bool) {
        let end = self.now + limit;
        while self.now < end && !until(self) {
            let mut to_browser = Vec::new();
            let mut out = Vec::new();
            self.leg_next = self.leg.poll(&mut out);
            for o in out {
                match o {
                    BrowserOutput::Transmit { to, data } => {
                        assert_eq!(to, addr(BROWSER), "ICE-lite answers where the checks came from");
                        to_browser.push(data);
                    }
                    other => self.up.push(other),
                }
            }
            let mut to_leg = std::mem::take(&mut self.later);
            self.poll_browser(&mut to_leg);
            if to_browser.is_empty() && to_leg.is_empty() {
                if until(self) {
                    break;
                }
                // Nothing in flight: jump to the next wake-up.
                let next = [Some(self.browser_next), self.leg_next].into_iter().flatten().min().unwrap_or(end);
                let next = next.max(self.now + Duration::from_millis(1));
                if next > end {
                    // Not past the end: what happens next is the caller's.
                    self.now = end;
                    break;
                }
                self.now = next;
                self.leg.handle_timeout(self.now);
                self.browser.handle_input(Input::Timeout(self.now)).expect("browser timeout");
                continue;
            }
            for d in to_leg {
                assert!(stun_ufrag(&d).is_none_or(|u| u == self.leg.ufrag()), "checks name our ufrag");
                if self.drop_nominations && nominates(&d) {
                    self.nominations_dropped += 1;
                    continue;
                }
                self.leg.handle_datagram(self.now, addr(BROWSER), &d);
            }
            for d in to_browser {
                let contents = d.as_slice().try_into().expect("datagram");
                let r = Receive { proto: Protocol::Udp, source: addr(LEG), destination: addr(BROWSER), contents };
                self.browser.handle_input(Input::Receive(self.now, r)).expect("browser input");
                // Polled after each datagram, as a relay thread does: str0m
                // hands up only the newest RTP packet of several received
                // between two polls.
                let mut more = std::mem::take(&mut self.later);
                self.poll_browser(&mut more);
                self.later = more;
            }
        }
    }

    fn poll_browser(&mut self, to_leg: &mut Vec<Vec<u8>>) {
        loop {
            match self.browser.poll_output().expect("browser output") {
                Output::Transmit(t) => {
                    assert_eq!(t.destination, addr(LEG), "one shared port");
                    to_leg.push(t.contents.to_vec());
                }
                Output::Timeout(t) => {
                    self.browser_next = t;
                    return;
                }
                Output::Event(Event::Connected) => self.browser_connected = true,
                Output::Event(Event::MediaAdded(m)) => self.browser_mid = Some(m.mid),
                Output::Event(Event::IceConnectionStateChange(
                    str0m::IceConnectionState::Connected | str0m::IceConnectionState::Completed,
                )) => self.browser_ice = true,
                Output::Event(Event::RtpPacket(p)) => self.got.push((
                    *p.header.payload_type,
                    p.header.sequence_number,
                    p.header.timestamp,
                    p.header.marker,
                    p.payload.to_vec(),
                )),
                Output::Event(_) => {}
            }
        }
    }
}

/// A STUN binding request carrying USE-CANDIDATE (RFC 8445 §7.1.2).
fn nominates(d: &[u8]) -> bool {
    if d.len() < 20 || d[0..2] != [0x00, 0x01] {
        return false;
    }
    let mut i = 20;
    while i + 4 <= d.len() {
        let kind = u16::from_be_bytes([d[i], d[i + 1]]);
        let len = usize::from(u16::from_be_bytes([d[i + 2], d[i + 3]]));
        if kind == 0x0025 {
            return true;
        }
        i += 4 + len.div_ceil(4) * 4;
    }
    false
}

fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, (u8::from(marker) << 7) | pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A connected pair: our offer (PCMU, PCMA, events as 101), the browser's
/// answer, ICE and DTLS through.
fn connected() -> (Net, Mid) {
    let now = crate::clock::instant();
    let cert = NodeCert::generate().expect("cert");
    let mut leg = BrowserLeg::new(now, &cert, addr(LEG), &[Voice::Pcmu, Voice::Pcma], 101);
    let offer = leg.create_offer(MediaDirection::SendRecv).expect("an offer");
    assert!(offer.contains("a=ice-lite"), "{offer}");
    assert!(offer.contains("UDP/TLS/RTP/SAVPF 0 8 101"), "G.711 and events only, in our order: {offer}");
    assert!(offer.contains("a=rtcp-mux") && offer.contains("a=fingerprint:sha-256"), "{offer}");
    assert!(offer.contains(&format!("a=ice-ufrag:{}", leg.ufrag())), "{offer}");
    assert!(offer.contains("127.0.0.1 40000 typ host"), "our one host candidate: {offer}");
    let mut b = browser(now);
    let answer = b.sdp_api().accept_offer(SdpOffer::from_sdp_string(&offer).expect("offer parses")).expect("answer");
    // The browser takes our events as 101 (its own 126 stays unused).
    assert!(answer.to_sdp_string().contains("a=rtpmap:101 telephone-event/8000"), "{answer}");
    leg.accept_answer(now, &answer.to_sdp_string()).expect("answer accepted");
    let mut net = Net::new(now, leg, b);
    net.run(Duration::from_secs(10), |n| n.browser_connected && !n.up.is_empty());
    assert!(net.leg.is_connected() && net.browser_connected, "ICE + DTLS within 10 s of virtual time");
    assert_eq!(net.up.first(), Some(&BrowserOutput::Connected(addr(BROWSER))), "{:?}", net.up);
    let mid = net.browser_mid.expect("the browser added the audio section");
    (net, mid)
}

#[test]
fn rtp_crosses_both_ways_after_dtls_with_our_header_fields_and_events_in_the_browsers_numbers() {
    let (mut net, mid) = connected();

    // Toward the browser: three voice packets across the 16-bit wrap and
    // an RFC 4733 packet, our numbers kept exactly (SRTP's rollover counter
    // follows, or the third would not decrypt).
    let now = net.now;
    for (i, seq) in [65534u16, 65535, 0].into_iter().enumerate() {
        let ts = 1000 + 160 * i as u32;
        assert!(net.leg.write_rtp(now, &rtp(0, i == 0, seq, ts, &[0x55 + i as u8; 160])));
    }
    assert!(net.leg.write_rtp(now, &rtp(101, true, 1, 1480, &[5, 0x0a, 0x00, 0xa0])));
    net.run(Duration::from_millis(200), |n| n.got.len() == 4);
    let got: Vec<(u8, u16, u32, bool, usize)> =
        net.got.iter().map(|(pt, seq, ts, m, p)| (*pt, *seq, *ts, *m, p.len())).collect();
    assert_eq!(
        got,
        vec![
            (0, 65534, 1000, true, 160),
            (0, 65535, 1160, false, 160),
            (0, 0, 1320, false, 160),
            (101, 1, 1480, true, 4)
        ]
    );
    assert_eq!(net.got[2].4, vec![0x57; 160], "payload byte for byte");
    assert_eq!(net.got[3].4, vec![5, 0x0a, 0x00, 0xa0]);

    // From the browser: voice and a digit come up as plain RTP.
    let now = net.now;
    {
        let mut api = net.browser.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("browser's send stream");
        tx.write_rtp(RtpWrite::new(Pt::from(0), 7000.into(), 48_000, now, vec![0x11; 160]));
        tx.write_rtp(RtpWrite::new(Pt::from(101), 7001.into(), 48_160, now, vec![9, 0x8a, 0x03, 0x20]).marker(true));
    }
    let rtp_up = |n: &Net| n.up.iter().filter(|o| matches!(o, BrowserOutput::Rtp(_))).count();
    net.run(Duration::from_millis(200), |n| rtp_up(n) == 2);
    let up: Vec<&Vec<u8>> =
        net.up.iter().filter_map(|o| if let BrowserOutput::Rtp(p) = o { Some(p) } else { None }).collect();
    assert_eq!(up.len(), 2, "{:?}", net.up);
    assert_eq!(split_rtp(up[0]), Some((0, false, 7000, 48_000, &[0x11u8; 160][..])));
    assert_eq!(split_rtp(up[1]), Some((101, true, 7001, 48_160, &[9u8, 0x8a, 0x03, 0x20][..])));
}

#[test]
fn nothing_goes_to_the_browser_before_dtls_completes() {
    let now = crate::clock::instant();
    let cert = NodeCert::generate().expect("cert");
    let mut leg = BrowserLeg::new(now, &cert, addr(LEG), &[Voice::Pcma], 101);
    let offer = leg.create_offer(MediaDirection::SendRecv).expect("offer");
    assert!(offer.contains("UDP/TLS/RTP/SAVPF 8 101"), "{offer}");
    assert!(!leg.write_rtp(now, &rtp(8, false, 1, 160, &[0xd5; 160])), "refused before DTLS");
    let mut out = Vec::new();
    leg.poll(&mut out);
    assert!(out.iter().all(|o| !matches!(o, BrowserOutput::Transmit { .. })), "no checks of our own: ICE-lite");
}

#[test]
fn a_hold_from_either_side_is_a_new_offer_answer() {
    let (mut net, _) = connected();
    // The PBX holds: we offer sendonly; the browser answers recvonly.
    let offer = net.leg.create_offer(MediaDirection::SendOnly).expect("a new offer");
    assert!(offer.contains("a=sendonly"), "{offer}");
    let answer = net.browser.sdp_api().accept_offer(SdpOffer::from_sdp_string(&offer).expect("offer")).expect("answer");
    assert!(answer.to_sdp_string().contains("a=recvonly"), "{answer}");
    net.leg.accept_answer(net.now, &answer.to_sdp_string()).expect("accepted");
    // The same direction again: nothing to negotiate, and the browser's
    // answer to the description it already has changes nothing.
    assert_eq!(net.leg.create_offer(MediaDirection::SendOnly), None);
    let now = net.now;
    net.leg.accept_answer(now, &answer.to_sdp_string()).expect("a repeated answer is no error");
    // The browser resumes with an offer of its own (its re-INVITE).
    let mut api = net.browser.sdp_api();
    let mid = net.browser_mid.expect("mid");
    api.set_direction(mid, str0m::media::Direction::SendRecv);
    let (offer, pending) = api.apply().expect("browser offer");
    let ours = net.leg.accept_offer(&offer.to_sdp_string()).expect("answered");
    assert!(ours.contains("a=sendrecv"), "{ours}");
    net.browser
        .sdp_api()
        .accept_answer(pending, str0m::change::SdpAnswer::from_sdp_string(&ours).expect("answer"))
        .expect("browser took our answer");
}

#[test]
fn stun_requests_name_the_leg_and_other_datagrams_do_not() {
    // A binding request with USERNAME "abcd:efgh" (RFC 8489 layout).
    let mut m = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&[0x00, 0x06, 0x00, 0x09]);
    m.extend_from_slice(b"abcd:efgh\0\0\0");
    assert_eq!(stun_ufrag(&m), Some("abcd"));
    assert_eq!(stun_ufrag(&m[..24]), None, "truncated");
    assert_eq!(stun_ufrag(&rtp(0, false, 1, 1, &[0; 20])), None, "RTP");
    assert_eq!(stun_ufrag(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None, "DTLS");
}

#[test]
fn the_rollover_counter_follows_the_sequence() {
    assert_eq!(extend_seq(None, 65535), 65535);
    assert_eq!(extend_seq(Some(65535), 0), 65536, "wrap");
    assert_eq!(extend_seq(Some(65536), 65535), 65535, "late packet from before the wrap");
    assert_eq!(extend_seq(Some(65536 + 10), 11), 65536 + 11);
    assert_eq!(extend_seq(Some(3 * 65536 + 65000), 200), 4 * 65536 + 200);
}

#[test]
fn checks_before_the_answer_are_answered_at_once_so_media_starts_when_it_comes() {
    let now = crate::clock::instant();
    let cert = NodeCert::generate().expect("cert");
    let mut leg = BrowserLeg::new(now, &cert, addr(LEG), &[Voice::Pcmu], 101);
    let offer = leg.create_offer(MediaDirection::SendRecv).expect("offer");
    let mut b = browser(now);
    let answer = b.sdp_api().accept_offer(SdpOffer::from_sdp_string(&offer).expect("offer")).expect("answer");
    let mut net = Net::new(now, leg, b);
    // The browser checks while its answer is still on its way (a browser's
    // SIP library waits for ICE gathering before it answers): 150 ms.
    net.run(Duration::from_millis(150), |_| false);
    assert!(net.browser_ice, "the browser's checks were answered before its answer arrived");
    let answered_at = net.now;
    net.leg.accept_answer(answered_at, &answer.to_sdp_string()).expect("answer accepted");
    net.run(Duration::from_secs(5), |n| !n.up.is_empty());
    assert_eq!(net.up.first(), Some(&BrowserOutput::Connected(addr(BROWSER))));
    let took = net.now - answered_at;
    assert!(took < Duration::from_millis(100), "DTLS done {took:?} after the answer, not at the browser's next check");
}

#[test]
fn an_early_check_is_answered_only_when_it_is_ours_and_signed_with_our_password() {
    use hmac::{KeyInit, Mac};
    // A Binding request: USERNAME "ours:theirs", MESSAGE-INTEGRITY with `pass`.
    let request = |user: &str, pass: &str| {
        let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        m.extend_from_slice(b"tid-12bytes!");
        let u = user.as_bytes();
        m.extend_from_slice(&[0x00, 0x06, 0x00, u.len() as u8]);
        m.extend_from_slice(u);
        m.resize(m.len() + (4 - u.len() % 4) % 4, 0);
        let len = (m.len() - 20 + 24) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let mut h = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(pass.as_bytes()).expect("key");
        h.update(&m);
        let mac = h.finalize().into_bytes();
        m.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
        m.extend_from_slice(&mac);
        m
    };
    let from = addr("192.0.2.7:40000");
    let reply = early_check_reply(&request("abcd:wxyz", "secret"), from, "abcd", "secret").expect("answered");
    assert_eq!(&reply[0..2], &[0x01, 0x01], "Binding success");
    assert_eq!(&reply[8..20], b"tid-12bytes!", "same transaction");
    // XOR-MAPPED-ADDRESS: the browser's address as we saw it.
    assert_eq!(&reply[20..24], &[0x00, 0x20, 0x00, 0x08]);
    assert_eq!(u16::from_be_bytes([reply[26], reply[27]]) ^ 0x2112, 40000);
    assert_eq!([reply[28] ^ 0x21, reply[29] ^ 0x12, reply[30] ^ 0xa4, reply[31] ^ 0x42], [192, 0, 2, 7]);
    // FINGERPRINT last, over everything before it.
    let n = reply.len();
    let crc = crc32fast::hash(&reply[..n - 8]) ^ 0x5354_554e;
    assert_eq!(&reply[n - 8..n - 4], &[0x80, 0x28, 0x00, 0x04]);
    assert_eq!(&reply[n - 4..], &crc.to_be_bytes());
    assert_eq!(usize::from(u16::from_be_bytes([reply[2], reply[3]])), n - 20, "length counts every attribute");

    assert_eq!(early_check_reply(&request("abcd:wxyz", "guess"), from, "abcd", "secret"), None, "wrong password");
    // Only a signed check may teach the shared port a browser's address.
    assert!(is_signed_check(&request("abcd:wxyz", "secret"), "abcd", "secret"));
    assert!(!is_signed_check(&request("abcd:wxyz", "guess"), "abcd", "secret"), "knows the ufrag only");
    assert_eq!(early_check_reply(&request("efgh:wxyz", "secret"), from, "abcd", "secret"), None, "another leg's");
    assert_eq!(early_check_reply(&rtp(0, false, 1, 1, &[0; 40]), from, "abcd", "secret"), None, "no STUN");
}

/// Our ICE-lite leg does not wait for the browser's nomination to start
/// DTLS (vendor/is/VENDORED.md): with every nominating check lost, the
/// first checked pair carries the handshake and media. (Waiting for
/// USE-CANDIDATE, as RFC 8445 has a lite agent do, cost every browser call
/// ~45 ms of Chromium's check pacing before its first audio.)
#[test]
fn dtls_starts_on_the_first_checked_pair_without_waiting_for_the_nomination() {
    let now = crate::clock::instant();
    let cert = NodeCert::generate().expect("cert");
    let mut leg = BrowserLeg::new(now, &cert, addr(LEG), &[Voice::Pcmu, Voice::Pcma], 101);
    let offer = leg.create_offer(MediaDirection::SendRecv).expect("an offer");
    let mut b = browser(now);
    let answer = b.sdp_api().accept_offer(SdpOffer::from_sdp_string(&offer).expect("offer parses")).expect("answer");
    leg.accept_answer(now, &answer.to_sdp_string()).expect("answer accepted");
    let mut net = Net::new(now, leg, b);
    net.drop_nominations = true;
    net.run(Duration::from_secs(10), |n| n.browser_connected && n.leg.is_connected());
    assert!(net.leg.is_connected() && net.browser_connected, "DTLS done with no nomination seen");
    assert!(net.nominations_dropped > 0, "the browser did nominate: every such check was lost");
    assert!(net.now - now < Duration::from_millis(200), "at once, not after retries: {:?}", net.now - now);
}
