//! Media anchored on trunkgate, end to end: the real daemon relays the RTP
//! of calls between sipp as the PBX (playing Debian's G.711 and RFC 4733
//! captures) and a phone whose media socket is the test's own, so every
//! byte that arrives can be checked. Ports come from a range of the test's
//! own, so which pair each leg gets is known: the pool hands pairs out in
//! order (the PBX leg first, then the phone's).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::calls::{PBX_IP, exactly_n_records, leases, pbx, wait_calls, wait_no_calls};
use common::daemon::{Daemon, SippChild, free_port_on, sipp_start};

const CAPTURES: &str = "/usr/share/sip-tester";

fn trunk(media: &str) -> String {
    let public = if media.contains("public_address") { "" } else { "public_address = [\"127.0.0.1\"]\n" };
    format!(
        "[media]\n{public}{media}\n\
         [[trunk]]\nname = \"acme-pbx\"\nportal = \"acme\"\nsources = [\"127.0.0.2/32\"]\n\
         [[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\nring_timeout_s = 5\n"
    )
}

/// A port range of 8 pairs nobody uses now, drawn from 12000-19999: above
/// the pairs other tests' daemons take first (the default range starts at
/// 10000 and hands pairs out in order) and below the peers' 20000-32000.
fn port_range() -> (u16, u16) {
    loop {
        let mut r = [0u8; 2];
        getrandom::fill(&mut r).expect("random");
        let p = (12_000 + u16::from_le_bytes(r) % 7_980) & !1;
        let free = (p..p + 16).all(|q| UdpSocket::bind(("0.0.0.0", q)).is_ok() && UdpSocket::bind(("::", q)).is_ok());
        if free {
            return (p, p + 15);
        }
    }
}

fn prepared(media: &str) -> Daemon {
    let d = Daemon::prepare(&trunk(media));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d
}

fn set_contact(d: &Daemon, port: u16) {
    let contact = format!("sip:alice@127.0.0.1:{port}");
    d.cli(&["user", "set-contact", "--portal", "acme", "--username", "alice", "--contact", &contact]);
}

/// The phone: sipp answering with SDP that points at `rtp` (a socket of
/// the test).
fn phone(d: &Daemon, scenario: &str, rtp: u16) -> SippChild {
    let s = sipp_start(Path::new(scenario), None, "127.0.0.1", 0, &["-m", "1", "-key", "rtp", &rtp.to_string()]);
    set_contact(d, s.port);
    s
}

/// A call whose two ends' media are sockets of the test: a daemon on a
/// range of its own (`extra` adds `[media]` keys), the phone answering with
/// `phone_scenario`, the PBX calling with `pbx_scenario` (its SDP at
/// `[rtp]`) and holding `hold_ms`; returns once the call is up.
struct SocketCall {
    d: Daemon,
    min: u16,
    pbx_rtp: UdpSocket,
    phone_rtp: UdpSocket,
    user: SippChild,
    call: SippChild,
}

fn socket_call(phone_scenario: &str, pbx_scenario: &str, hold_ms: &str, extra: &str) -> SocketCall {
    let (min, max) = port_range();
    let mut d = prepared(&format!("port_min = {min}\nport_max = {max}\n{extra}"));
    d.start();
    let pbx_rtp = UdpSocket::bind((PBX_IP, 0)).expect("pbx rtp");
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").expect("phone rtp");
    let user = phone(&d, phone_scenario, phone_rtp.local_addr().expect("addr").port());
    let pbx_port = pbx_rtp.local_addr().expect("addr").port().to_string();
    let call = pbx(&d, Path::new(pbx_scenario), "+15550001", &["-d", hold_ms, "-key", "rtp", &pbx_port]);
    wait_calls(&d, "the call up", |l| l.len() == 1);
    SocketCall { d, min, pbx_rtp, phone_rtp, user, call }
}

/// RTP packets of a capture (Ethernet, IPv4, UDP), in order.
fn capture(name: &str) -> Vec<Vec<u8>> {
    common::capture(name)
}

fn seq(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2], p[3]])
}
fn ts(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[4], p[5], p[6], p[7]])
}
fn ssrc(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[8], p[9], p[10], p[11]])
}

fn rtp_packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 8];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xd5; 160]);
    p
}

/// Receives on `sock` until `quiet` passes without a packet (or `max`).
fn receive_all(sock: &UdpSocket, quiet: Duration, max: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    sock.set_read_timeout(Some(quiet)).expect("timeout");
    let start = common::wall_now();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while start.elapsed() < max {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => got.push((from, buf[..n].to_vec())),
            Err(_) if got.is_empty() => {}
            Err(_) => break,
        }
    }
    got
}

fn figure(rec: &Value, leg: &str, name: &str) -> u64 {
    rec["media"][leg][name].as_u64().unwrap_or_else(|| panic!("media.{leg}.{name} in {rec}"))
}

/// The PBX's audio and digit reach the phone through trunkgate's port,
/// byte for byte, as one continuous stream (one SSRC, consecutive
/// sequence numbers across the two captures' sources) with the digit's
/// payload type renumbered 101 → 96 as the phone asked; the phone's audio
/// reaches the PBX; a stranger's packets to the same port are counted and
/// dropped; the record has the exact figures; the ports close after BYE.
#[test]
fn pbx_audio_and_digits_reach_the_phone_through_trunkgate_and_back() {
    let (min, max) = port_range();
    let mut d = prepared(&format!("port_min = {min}\nport_max = {max}\n"));
    d.start();
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").expect("phone rtp");
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("stranger");
    let user = phone(&d, "user_answer_media.xml", phone_rtp.local_addr().expect("addr").port());
    let mp = free_port_on(PBX_IP).to_string();
    let call = pbx(
        &d,
        Path::new("pbx_call_media.xml"),
        "+15550001",
        &[
            "-mp",
            &mp,
            "-d",
            "1500",
            "-key",
            "audio",
            &format!("{CAPTURES}/g711a.pcap"),
            "-key",
            "dtmf",
            &format!("{CAPTURES}/dtmf_2833_1.pcap"),
        ],
    );

    // What the PBX plays arrives here; the first packet tells trunkgate's
    // port toward the phone (symmetric RTP: it sends from where it listens).
    phone_rtp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 2048];
    let (n, relay) = match phone_rtp.recv_from(&mut buf) {
        Ok(r) => r,
        Err(e) => {
            let (_, out) = call.wait();
            let (_, uout) = user.wait();
            panic!("no audio reached the phone ({e}):\nPBX:\n{out}\nphone:\n{uout}\ndaemon:\n{}", d.log_text());
        }
    };
    let first = buf[..n].to_vec();
    assert_eq!(relay, format!("127.0.0.1:{}", min + 2).parse().unwrap(), "the phone leg's pair is the second");
    // The phone talks back (50 packets, 20 ms apart) while a stranger sends
    // to the same port.
    for i in 0..50u16 {
        phone_rtp.send_to(&rtp_packet(1000 + i, 160 * u32::from(i), 0xfeed), relay).expect("send");
        if i < 20 {
            stranger.send_to(&rtp_packet(i, 0, 0xbad), relay).expect("send");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut got = vec![(relay, first)];
    got.extend(receive_all(&phone_rtp, Duration::from_secs(2), Duration::from_secs(15)));
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");

    let audio = capture("g711a.pcap");
    let digit = capture("dtmf_2833_1.pcap");
    assert_eq!(got.len(), audio.len() + digit.len(), "every packet the PBX sent arrived, once");
    assert!(got.iter().all(|(from, _)| *from == relay), "all from trunkgate's port");
    let sent: Vec<&Vec<u8>> = audio.iter().chain(digit.iter()).collect();
    let ours = ssrc(&got[0].1);
    for (i, ((_, p), orig)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(&p[12..], &orig[12..], "packet {i}: payload unchanged");
        assert_eq!(ssrc(p), ours, "packet {i}: one SSRC toward the phone");
        if i < audio.len() {
            assert_eq!(p[1] & 0x7f, 8, "PCMA keeps its type");
        } else {
            assert_eq!(p[1] & 0x7f, 96, "telephone-event renumbered to the phone's 96");
            assert_eq!(p[1] & 0x80, orig[1] & 0x80, "marker kept");
        }
    }
    // Sequence numbers continue from the audio into the digit (another
    // source in the PBX): consecutive, as the captures' own steps were.
    let last_audio = &got[audio.len() - 1].1;
    let first_digit = &got[audio.len()].1;
    assert_eq!(seq(first_digit), seq(last_audio).wrapping_add(1), "no jump at the source change");
    assert!(ts(first_digit).wrapping_sub(ts(last_audio)) < 8000 * 2, "timestamps continue within the gap");
    // Every step within a source is the capture's own (the digit's ends
    // repeat a number; the audio's numbers are consecutive).
    for (i, w) in got.windows(2).enumerate() {
        if i + 1 == audio.len() {
            continue; // the source change, checked above
        }
        let step = seq(&w[1].1).wrapping_sub(seq(&w[0].1));
        assert_eq!(step, seq(sent[i + 1]).wrapping_sub(seq(sent[i])), "packet {}: sequence step kept", i + 1);
    }

    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    let total = (audio.len() + digit.len()) as u64;
    assert_eq!(figure(rec, "pbx", "rx_packets"), total, "{rec}");
    assert_eq!(figure(rec, "user", "tx_packets"), total, "{rec}");
    assert_eq!(figure(rec, "user", "rx_packets"), 50, "{rec}");
    assert_eq!(figure(rec, "user", "rx_stray"), 20, "the stranger's packets: counted, dropped: {rec}");
    assert_eq!(figure(rec, "pbx", "tx_packets"), 50, "only the phone's packets reached the PBX: {rec}");
    assert_eq!(figure(rec, "pbx", "rx_lost"), 0, "{rec}");
    // The pairs are closed: the ports can be bound again.
    for port in min..min + 4 {
        common::retry_until(5, &format!("port {port} closed after the call"), || {
            UdpSocket::bind(("0.0.0.0", port)).map(drop).map_err(|e| e.to_string())
        });
    }
}

/// A full pool refuses the next call with 503 `media-ports-exhausted`
/// before anything rings, and loses nothing: once the call holding the
/// ports ends, the next call gets them.
#[test]
fn a_full_port_pool_answers_503_and_every_pair_comes_back() {
    let (min, _) = port_range();
    // Two pairs: exactly one call (PBX leg + phone leg).
    let mut d = prepared(&format!("port_min = {min}\nport_max = {}\n", min + 3));
    d.start();
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let port = rtp.local_addr().expect("addr").port();
    let user = phone(&d, "user_answer_media.xml", port);
    let first = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "3000"]);
    wait_calls(&d, "the first call up", |l| l.len() == 1);
    let (ok, out) = pbx(&d, Path::new("pbx_call_refused_media.xml"), "+15550001", &[]).wait();
    assert!(ok, "the second call is refused with 503:\n{out}");
    let (ok, out) = first.wait();
    assert!(ok, "{out}");
    assert!(user.wait().0);
    // The ports are back: a third call gets them.
    let user = phone(&d, "user_answer_media.xml", port);
    let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "200"]).wait();
    assert!(ok, "the third call completes:\n{out}");
    assert!(user.wait().0);
    let recs = exactly_n_records(&mut d, 3);
    let refusal = recs.iter().find(|r| r["sip_status"] == 503).unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(refusal["reason"], "media-ports-exhausted", "{refusal}");
    assert_eq!(recs.iter().filter(|r| r["outcome"] == "completed").count(), 2, "{recs:#?}");
}

/// A leg that sends nothing ends the call: BYE on both legs at the media
/// timeout, reason `media-timeout`, channel released.
#[test]
fn silent_media_ends_the_call_with_media_timeout() {
    let (min, max) = port_range();
    let mut d = prepared(&format!("port_min = {min}\nport_max = {max}\ntimeout_s = 2\nhold_timeout_s = 2\n"));
    d.start();
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    let user = phone(&d, "user_answer_media.xml", rtp.local_addr().expect("addr").port());
    let started = common::wall_now();
    // The PBX would hold the call for 30 s and sends no RTP; it must get
    // trunkgate's BYE instead (the scenario accepts it).
    let call = pbx(&d, Path::new("pbx_call_wait_bye.xml"), "+15550001", &[]);
    wait_calls(&d, "the call up", |l| l.len() == 1);
    let (ok, out) = call.wait();
    assert!(ok, "the PBX got a BYE:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "the phone got a BYE:\n{uout}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "ended by the media timeout, not the scenario's: {took:?}");
    // Leases are written behind (in batches every 10 ms or so): the
    // channel comes back within moments, or this fails after 10 s.
    wait_no_calls(&d);
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["reason"], "media-timeout", "{rec}");
    assert_eq!(figure(rec, "pbx", "rx_packets"), 0, "{rec}");
}

/// Hold (RFC 6337): the PBX's re-INVITE with `a=sendonly` reaches the
/// phone as trunkgate's own offer, the phone's `recvonly` comes back, and
/// from then on the phone's packets do not reach the PBX (counted as held).
/// The call's live figures show in `trunkgate calls --json` meanwhile.
#[test]
fn hold_stops_the_held_direction_and_live_figures_show_in_calls() {
    let (min, max) = port_range();
    let mut d = prepared(&format!("port_min = {min}\nport_max = {max}\n"));
    d.start();
    let phone_rtp = UdpSocket::bind("127.0.0.1:0").expect("phone rtp");
    let user = phone(&d, "user_answer_media_hold.xml", phone_rtp.local_addr().expect("addr").port());
    let call = pbx(&d, Path::new("pbx_call_hold.xml"), "+15550001", &["-d", "7000"]);
    wait_calls(&d, "the call up", |l| l.len() == 1);
    // The re-INVITE goes 500 ms after the ACK; give it time to complete.
    std::thread::sleep(Duration::from_millis(1500));
    let relay: SocketAddr = format!("127.0.0.1:{}", min + 2).parse().expect("addr");
    for i in 0..30u16 {
        phone_rtp.send_to(&rtp_packet(i, 160 * u32::from(i), 0xfeed), relay).expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Live figures reach the lease within the publication interval (5 s).
    common::retry_until(12, "live media figures in calls --json", || {
        let l = leases(&d);
        let held =
            l.first().map(|c| (c["media"]["user"]["rx_packets"].as_u64(), c["media"]["pbx"]["tx_held"].as_u64()));
        if held == Some((Some(30), Some(30))) { Ok(()) } else { Err(format!("{l:?}")) }
    });
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(figure(rec, "user", "rx_packets"), 30, "{rec}");
    assert_eq!(figure(rec, "pbx", "tx_packets"), 0, "nothing reached the PBX on hold: {rec}");
    assert_eq!(figure(rec, "pbx", "tx_held"), 30, "{rec}");
}

/// Legs of different address families: an IPv4 PBX and an IPv6 phone.
/// Each gets SDP with trunkgate's address of its own family, and packets
/// cross between the families both ways, byte for byte (sent through
/// io_uring here).
#[test]
fn an_ipv4_pbx_and_an_ipv6_phone_talk_through_trunkgate() {
    let (min, max) = port_range();
    // With io_uring sends (the other tests use the default sendmmsg path).
    let d0 = prepared(&format!(
        "public_address = [\"127.0.0.1\", \"::1\"]\nport_min = {min}\nport_max = {max}\nio_uring = true\n"
    ));
    let text = std::fs::read_to_string(&d0.config).expect("config");
    let text = text.replace(
        "listen = [\"udp://127.0.0.1:0\"",
        // The IPv4 listener last: the test's PBX calls the last one logged.
        "listen = [\"udp://[::1]:0\", \"udp://127.0.0.1:0\"",
    );
    std::fs::write(&d0.config, text).expect("write");
    let mut d = d0;
    d.start();
    let pbx_rtp = UdpSocket::bind((PBX_IP, 0)).expect("pbx rtp");
    let phone_rtp = UdpSocket::bind("[::1]:0").expect("phone rtp (IPv6 loopback)");
    let user = sipp_start(
        Path::new("user_answer_media6.xml"),
        None,
        "::1",
        0,
        &["-m", "1", "-key", "rtp", &phone_rtp.local_addr().expect("addr").port().to_string()],
    );
    let contact = format!("sip:alice@[::1]:{}", user.port);
    d.cli(&["user", "set-contact", "--portal", "acme", "--username", "alice", "--contact", &contact]);
    let call = pbx(
        &d,
        Path::new("pbx_call_rtp.xml"),
        "+15550001",
        &["-d", "2500", "-key", "rtp", &pbx_rtp.local_addr().expect("addr").port().to_string()],
    );
    if common::retry_until_ok(10, || leases(&d).len() == 1).is_err() {
        let (_, out) = call.wait();
        let (_, uout) = user.wait();
        panic!("the call did not come up:\nPBX:\n{out}\nphone:\n{uout}\ndaemon:\n{}", d.log_text());
    }
    // The pools are per family: each leg has the first pair of its own.
    let toward_pbx: SocketAddr = format!("127.0.0.1:{min}").parse().expect("addr");
    let toward_phone: SocketAddr = format!("[::1]:{min}").parse().expect("addr");
    for i in 0..10u16 {
        pbx_rtp.send_to(&rtp_packet(i, 160 * u32::from(i), 0x4444), toward_pbx).expect("send v4");
        phone_rtp.send_to(&rtp_packet(500 + i, 160 * u32::from(i), 0x6666), toward_phone).expect("send v6");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And a digit from the phone, in its numbering (telephone-event 96).
    let mut digit = digit_packets(7, 600, 1600);
    for p in &mut digit {
        p[1] = (p[1] & 0x80) | 96;
        phone_rtp.send_to(p, toward_phone).expect("send v6");
    }
    let at_phone = receive_all(&phone_rtp, Duration::from_millis(500), Duration::from_secs(3));
    let at_pbx = receive_all(&pbx_rtp, Duration::from_millis(500), Duration::from_secs(3));
    assert_eq!(at_phone.len(), 10, "the PBX's packets reached the IPv6 phone");
    assert_eq!(at_pbx.len(), 14, "the phone's packets and digit reached the IPv4 PBX");
    assert!(at_phone.iter().all(|(from, p)| *from == toward_phone && p[12..] == [0xd5; 160]));
    assert!(at_pbx[..10].iter().all(|(from, p)| *from == toward_pbx && p[12..] == [0xd5; 160]));
    for ((from, p), sent) in at_pbx[10..].iter().zip(&digit) {
        assert_eq!(*from, toward_pbx);
        assert_eq!(p[1] & 0x7f, 101, "the PBX's telephone-event number");
        assert_eq!(p[12..], sent[12..], "the event itself unchanged");
    }
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    assert!(!d.log_text().contains("no io_uring"), "the io_uring path ran:\n{}", d.log_text());
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!((figure(rec, "pbx", "tx_packets"), figure(rec, "user", "tx_packets")), (14, 10), "{rec}");
}

/// The PBX's RFC 4733 packet stream.
fn digit_packets(event: u8, seq0: u16, ts: u32) -> Vec<Vec<u8>> {
    (0..4u16)
        .map(|n| {
            let mut p = vec![0x80, if n == 0 { 0x80 | 101 } else { 101 }];
            p.extend_from_slice(&(seq0 + n).to_be_bytes());
            p.extend_from_slice(&ts.to_be_bytes());
            p.extend_from_slice(&0x4444u32.to_be_bytes());
            let dur: u16 = if n == 0 { 160 } else { 1600 };
            p.extend_from_slice(&[event, if n == 0 { 10 } else { 0x80 | 10 }]);
            p.extend_from_slice(&dur.to_be_bytes());
            p
        })
        .collect()
}

/// A phone without telephone-event: the PBX's RFC 4733 digit reaches it
/// as SIP INFO (`application/dtmf-relay`, once, not as RTP), and its INFO
/// digit reaches the PBX as RFC 4733 packets in the PBX's payload type.
#[test]
fn digits_cross_between_rfc4733_and_sip_info() {
    let SocketCall { mut d, min, pbx_rtp, phone_rtp, user, call } =
        socket_call("user_answer_dtmf_info.xml", "pbx_call_rtp.xml", "2500", "");
    let relay: SocketAddr = format!("127.0.0.1:{min}").parse().expect("addr");
    // Voice, then digit 1 (start, three ends), then voice.
    pbx_rtp.send_to(&rtp_packet(10, 0, 0x4444), relay).expect("send");
    for p in digit_packets(1, 11, 160) {
        pbx_rtp.send_to(&p, relay).expect("send");
    }
    pbx_rtp.send_to(&rtp_packet(15, 1920, 0x4444), relay).expect("send");
    // The phone's INFO 5 comes back as RFC 4733 at the PBX.
    let at_pbx = receive_all(&pbx_rtp, Duration::from_millis(800), Duration::from_secs(5));
    let at_phone = receive_all(&phone_rtp, Duration::from_millis(300), Duration::from_secs(2));
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side (INFO Signal=1 expected):\n{uout}");
    assert_eq!(at_phone.len(), 2, "the two voice packets only, no event packets: {at_phone:?}");
    assert!(at_phone.iter().all(|(_, p)| p[1] & 0x7f == 8));
    assert_eq!(at_pbx.len(), 4, "start and three ends of digit 5: {at_pbx:?}");
    for (n, (from, p)) in at_pbx.iter().enumerate() {
        assert_eq!(*from, relay);
        assert_eq!(p[1] & 0x7f, 101, "the PBX's telephone-event type");
        assert_eq!(p[12], 5, "digit 5");
        assert_eq!(p[13] & 0x80 != 0, n > 0, "E bit on the ends");
    }
    assert_eq!(u16::from_be_bytes([at_pbx[3].1[14], at_pbx[3].1[15]]), 1600, "200 ms at 8 kHz");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
}

/// A real phone: baresip, registered, answers; the PBX plays the G.711
/// capture. The INVITE baresip gets points at trunkgate's port (not the
/// PBX's), baresip decodes real (non-silent) audio from it, and the
/// record shows every packet of each side relayed to the other.
#[test]
fn baresip_hears_the_pbx_through_trunkgate_and_talks_back() {
    use common::baresip::{Baresip, CALL_ESTABLISHED, CALL_TERMINATED};
    let (min, max) = port_range();
    let mut d = prepared(&format!("port_min = {min}\nport_max = {max}\n"));
    d.start();
    let phone = Baresip::start("alice", "acme.example.com", "alice-secret-1", d.udp);
    phone.wait_registered();
    let mp = free_port_on(PBX_IP).to_string();
    let (ok, out) = pbx(
        &d,
        Path::new("pbx_call_media.xml"),
        "+15550001",
        &[
            "-mp",
            &mp,
            "-d",
            "500",
            "-key",
            "audio",
            &format!("{CAPTURES}/g711a.pcap"),
            "-key",
            "dtmf",
            &format!("{CAPTURES}/dtmf_2833_1.pcap"),
        ],
    )
    .wait();
    assert!(ok, "PBX side:\n{out}");
    let invite = phone.wait_sip(&["INVITE sip:alice"]);
    assert!(invite.contains("o=trunkgate "), "{invite}");
    assert!(invite.contains(&format!("m=audio {} RTP/AVP", min + 2)), "the phone leg's pair: {invite}");
    assert!(
        !invite.contains(&format!("m=audio {mp} ")) && !invite.contains("127.0.0.2"),
        "nothing of the PBX: {invite}"
    );
    phone.wait_for(&[CALL_ESTABLISHED]);
    phone.wait_for(&[CALL_TERMINATED]);
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    let from_pbx = figure(rec, "pbx", "rx_packets");
    assert_eq!(from_pbx, 236 + 10, "the capture and the digit: {rec}");
    // baresip takes telephone-event? Either way every voice packet reached it.
    assert!(figure(rec, "user", "tx_packets") >= 236, "{rec}");
    let from_phone = figure(rec, "user", "rx_packets");
    assert!(from_phone > 100, "baresip's audio (50 packets/s for ~8 s): {rec}");
    assert_eq!(figure(rec, "pbx", "tx_packets"), from_phone, "every packet of the phone reached the PBX: {rec}");
    // baresip sends RTCP (on its own port): relayed to the PBX's RTCP port.
    let rtcp = figure(rec, "user", "rx_rtcp");
    assert!(rtcp > 0, "baresip's RTCP: {rec}");
    assert_eq!(figure(rec, "pbx", "tx_rtcp"), rtcp, "{rec}");
    // What baresip decoded is the PBX's speech, not silence.
    let dec = phone
        .recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("-dec"))
        .unwrap_or_else(|| panic!("a decoded recording: {:?}", phone.recordings()));
    let pcm = std::fs::read(&dec).expect("recording");
    let loud =
        pcm[44.min(pcm.len())..].chunks_exact(2).filter(|s| i16::from_le_bytes([s[0], s[1]]).abs() > 500).count();
    assert!(loud > 8000, "{loud} loud samples in {}", dec.display());
}

/// An offer with no codec the relay can carry is answered 488 with
/// `Warning: 399 … no-common-codec` before any phone rings, and recorded.
#[test]
fn no_common_codec_is_488_before_anything_rings() {
    let (min, max) = port_range();
    let mut d = prepared(&format!("port_min = {min}\nport_max = {max}\n"));
    d.start();
    let rtp = UdpSocket::bind("127.0.0.1:0").expect("rtp");
    // A phone that would answer: it must never be rung.
    let _user = phone(&d, "user_answer_media.xml", rtp.local_addr().expect("addr").port());
    let (ok, out) = pbx(&d, Path::new("pbx_call_no_common_codec.xml"), "+15550001", &[]).wait();
    assert!(ok, "488 with its Warning:\n{out}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!((rec["sip_status"].as_u64(), rec["reason"].as_str()), (Some(488), Some("no-common-codec")), "{rec}");
    assert!(rec["target_user"].is_null(), "nobody answered: {rec}");
}

/// An offerless re-INVITE from the PBX (a session refresh) is answered by
/// trunkgate from the current session: its 200 carries the description the
/// PBX already has, the phone sees nothing (its scenario would fail on a
/// re-INVITE), and media keeps flowing both ways afterwards.
#[test]
fn offerless_reinvite_is_answered_from_the_current_session() {
    let SocketCall { mut d, min, pbx_rtp, phone_rtp, user, call } =
        socket_call("user_answer_media.xml", "pbx_call_offerless_reinvite.xml", "2000", "");
    // After the refresh (300 ms after the ACK).
    std::thread::sleep(Duration::from_millis(800));
    let toward_pbx: SocketAddr = format!("127.0.0.1:{min}").parse().expect("addr");
    let toward_phone: SocketAddr = format!("127.0.0.1:{}", min + 2).parse().expect("addr");
    for i in 0..10u16 {
        pbx_rtp.send_to(&rtp_packet(i, 160 * u32::from(i), 1), toward_pbx).expect("send");
        phone_rtp.send_to(&rtp_packet(i, 160 * u32::from(i), 2), toward_phone).expect("send");
    }
    let at_phone = receive_all(&phone_rtp, Duration::from_millis(500), Duration::from_secs(3));
    let at_pbx = receive_all(&pbx_rtp, Duration::from_millis(500), Duration::from_secs(3));
    assert_eq!((at_phone.len(), at_pbx.len()), (10, 10), "media flows after the refresh");
    let (ok, out) = call.wait();
    assert!(ok, "PBX side (200 with our description):\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side (no re-INVITE reached it):\n{uout}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
}
