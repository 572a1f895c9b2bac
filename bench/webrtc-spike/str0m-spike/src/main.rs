//! str0m 0.25 spike: an ICE-lite answerer relay thread owning ONE UDP socket
//! (server), and a process of full-ICE offerers (clients) for the load test.
//!
//!   str0m-spike server --udp 127.0.0.1:40000 --http 127.0.0.1:8080 --legs 1000 [--continuous]
//!   str0m-spike clients --http 127.0.0.1:8080 --legs 1000 --window 50

#[path = "../../common/common.rs"]
mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::*;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

#[global_allocator]
static GLOBAL: Counting = Counting;

const PT_PCMU: u8 = 0;
const PT_TE: u8 = 101;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1).cloned())
}
fn flag(name: &str) -> bool {
    std::env::args().any(|x| x == name)
}

/// One per-node certificate, ECDSA P-256, made with rcgen on ring.
fn node_cert() -> DtlsCert {
    let ck = rcgen::generate_simple_self_signed(vec!["trunkgate".into()]).unwrap();
    DtlsCert {
        certificate: ck.cert.der().to_vec(),
        private_key: ck.signing_key.serialize_der(),
    }
}

/// G.711 + telephone-event/8000 only, RTP mode (no depacketizing).
fn audio_config(cert: &DtlsCert) -> RtcConfig {
    let mut cfg = RtcConfig::new()
        .clear_codecs()
        .set_rtp_mode(true)
        .set_dtls_cert(cert.clone());
    if let Some(v) = arg("--dtls") {
        use str0m::config::DtlsVersion;
        cfg = cfg.set_dtls_version(match v.as_str() {
            "1.3" => DtlsVersion::Dtls13,
            "auto" => DtlsVersion::Auto,
            _ => DtlsVersion::Dtls12,
        });
    }
    let codecs = cfg.codec_config();
    codecs.enable_pcmu(true, false);
    codecs.enable_pcma(true, false);
    codecs.add_config(
        PT_TE.into(),
        None,
        Codec::Tele,
        Frequency::EIGHT_KHZ,
        None,
        FormatParams::default(),
    );
    cfg
}

struct Leg {
    rtc: Rtc,
    mid: Option<Mid>,
    next_timeout: Instant,
    connected: bool,
    dead: bool,
    rx: [u64; 128],
    /// The telephone-event/8000 PT both sides agreed on (the offerer's number).
    te_pt: Option<u8>,
    tx_seq: u64,
    tx_ts: u32,
}

impl Leg {
    fn new(rtc: Rtc, now: Instant) -> Self {
        Leg { rtc, mid: None, next_timeout: now, connected: false, dead: false, rx: [0; 128], te_pt: None, tx_seq: 1000, tx_ts: 160_000 }
    }

    /// Drain outputs until the next timeout; returns events that matter.
    fn drive(&mut self, socket: &UdpSocket, events: &mut Vec<Ev>) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    return;
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected = true;
                        self.te_pt = self.te_pt.or_else(|| self.negotiated_te_pt());
                        events.push(Ev::Connected);
                    }
                    Event::MediaAdded(m) => {
                        self.mid = Some(m.mid);
                        self.te_pt = self.negotiated_te_pt();
                    }
                    Event::RtpPacket(p) => {
                        // Raw RTP: header fields + payload as received, no depacketizing.
                        let pt = *p.header.payload_type & 0x7f;
                        self.rx[pt as usize] += 1;
                        if Some(pt) == self.te_pt && self.rx[pt as usize] <= 3 && std::env::var("SHOW_TE").is_ok() {
                            // RFC 4733 payload straight from the wire: event, E/vol, duration.
                            println!("rx telephone-event pt={pt} seq={} ts={} m={} payload={:02x?}",
                                p.seq_no, p.header.timestamp, p.header.marker, &p.payload[..]);
                        }
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.dead = true;
                    }
                    _ => {}
                },
                Err(e) => {
                    eprintln!("rtc error: {e:?}");
                    self.dead = true;
                    return;
                }
            }
        }
    }

    /// The negotiated telephone-event/8000 payload type, if any.
    fn negotiated_te_pt(&self) -> Option<u8> {
        let media = self.rtc.media(self.mid?)?;
        if std::env::var("DEBUG_PT").is_ok() {
            let cfg: Vec<_> = self.rtc.codec_config().params().iter().map(|p| (*p.pt(), p.spec().codec, p.spec().clock_rate)).collect();
            println!("codec_config {cfg:?} remote_pts {:?}", media.remote_pts());
        }
        self.rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| {
                p.spec().codec == Codec::Tele
                    && p.spec().clock_rate == Frequency::EIGHT_KHZ
                    && media.remote_pts().contains(&p.pt())
            })
            .map(|p| *p.pt())
    }

    /// Write one RTP packet with our own PT/seq/ts; str0m only encrypts it.
    fn write(&mut self, now: Instant, pt: u8, marker: bool, ts: u32, payload: &[u8]) -> bool {
        let Some(mid) = self.mid else { return false };
        let seq = self.tx_seq;
        self.tx_seq += 1;
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else { return false };
        tx.write_rtp(RtpWrite::new(Pt::from(pt), seq.into(), ts, now, payload.to_vec()).marker(marker));
        true
    }

    /// A burst: 3 PCMU frames and one RFC 4733 event (digit 5) of 3 packets.
    fn send_burst(&mut self, now: Instant) {
        for _ in 0..3 {
            let ts = self.tx_ts;
            self.write(now, PT_PCMU, false, ts, &[0xff; 160]);
            self.tx_ts += 160;
        }
        let ts = self.tx_ts;
        let Some(te) = self.te_pt else { return };
        self.write(now, te, true, ts, &[5, 0x0a, 0x00, 0xa0]);
        self.write(now, te, false, ts, &[5, 0x0a, 0x01, 0x40]);
        self.write(now, te, false, ts, &[5, 0x8a, 0x03, 0x20]);
        self.tx_ts += 800;
    }
}

enum Ev {
    Connected,
}

fn server() {
    let udp: SocketAddr = arg("--udp").unwrap_or("127.0.0.1:40000".into()).parse().unwrap();
    let http: SocketAddr = arg("--http").unwrap_or("127.0.0.1:8080".into()).parse().unwrap();
    let want: usize = arg("--legs").map(|v| v.parse().unwrap()).unwrap_or(1);
    let continuous = flag("--continuous");

    let socket = UdpSocket::bind(udp).unwrap();
    let local = socket.local_addr().unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    let (offer_tx, offer_rx) = mpsc::channel::<OfferReq>();
    let report = Arc::new(Mutex::new(String::from("starting")));
    let listener = std::net::TcpListener::bind(http).unwrap();
    let rep = report.clone();
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || serve_http(listener, PAGE, offer_tx, rep))
        .unwrap();
    let cert = node_cert();
    println!("str0m server: udp {local} http {http} legs {want}");

    let base = snapshot();
    let mut legs: Vec<Leg> = Vec::with_capacity(want);
    let mut by_ufrag: HashMap<String, usize> = HashMap::new();
    let mut by_addr: HashMap<SocketAddr, usize> = HashMap::new();
    let mut buf = vec![0u8; 2000];
    let mut events = Vec::new();
    let mut n_connected = 0usize;
    let mut first_leg: Option<Instant> = None;
    let mut measured: Option<String> = None;
    let mut next_tick = Instant::now();
    let mut unrouted = 0u64;

    loop {
        // 1. Signalling: new legs.
        while let Ok((offer, reply)) = offer_rx.try_recv() {
            let now = Instant::now();
            first_leg.get_or_insert(now);
            let ufrag = format!("tg{:06}", legs.len());
            let mut rtc = audio_config(&cert)
                .set_ice_lite(true)
                .set_local_ice_credentials(str0m::IceCreds { ufrag: ufrag.clone(), pass: format!("{ufrag}pass0123456789abcdef") })
                .build(now);
            rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
            // Probe: what Chromium sends without a media permission, mDNS host candidates.
            let offer = if std::env::var("MDNS_MUNGE").is_ok() {
                offer.lines().map(|l| if l.starts_with("a=candidate:") {
                    let mut f: Vec<String> = l.split(' ').map(str::to_owned).collect();
                    f[4] = "0b5c1c6e-5e2a-4c8e-9a57-3f1d2b7c9e10.local".into();
                    f.join(" ")
                } else { l.to_owned() }).collect::<Vec<_>>().join("\r\n") + "\r\n"
            } else { offer };
            let offer = match SdpOffer::from_sdp_string(&offer) {
                Ok(o) => o,
                Err(e) => { let _ = reply.send(format!("bad offer {e:?}")); continue; }
            };
            let answer = rtc.sdp_api().accept_offer(offer).unwrap();
            let _ = reply.send(answer.to_sdp_string());
            by_ufrag.insert(ufrag, legs.len());
            let mut leg = Leg::new(rtc, now);
            leg.drive(&socket, &mut events);
            legs.push(leg);
        }

        // 2. Network input, demultiplexed: 5-tuple first, then STUN USERNAME.
        for _ in 0..256 {
            let Ok((n, source)) = socket.recv_from(&mut buf) else { break };
            let data = &buf[..n];
            let idx = match by_addr.get(&source) {
                Some(&i) => Some(i),
                None => stun_local_ufrag(data).and_then(|u| by_ufrag.get(u).copied()).inspect(|&i| {
                    by_addr.insert(source, i);
                }),
            };
            let Some(i) = idx else { unrouted += 1; continue };
            let Ok(contents) = data.try_into() else { continue };
            let now = Instant::now();
            let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: local, contents });
            let leg = &mut legs[i];
            if leg.rtc.handle_input(input).is_ok() {
                leg.drive(&socket, &mut events);
            }
            let evs: Vec<Ev> = events.drain(..).collect();
            for e in evs {
                match e {
                    Ev::Connected => {
                        n_connected += 1;
                        let v = leg.rtc.direct_api().dtls_protocol_version();
                        if n_connected == 1 || continuous {
                            println!("leg {i} connected from {source}, DTLS {v:?}, telephone-event pt {:?}, mid {:?}", leg.te_pt, leg.mid);
                        }
                        if !continuous {
                            leg.send_burst(now);
                            leg.drive(&socket, &mut events);
                        }
                    }
                }
            }
            events.clear();
        }

        // 3. Timers.
        let now = Instant::now();
        for leg in legs.iter_mut().filter(|l| !l.dead && l.next_timeout <= now) {
            if leg.rtc.handle_input(Input::Timeout(now)).is_ok() {
                leg.drive(&socket, &mut events);
            }
        }
        events.clear();

        // 4. Continuous media toward browsers: 20 ms PCMU, our own seq/ts.
        if continuous && now >= next_tick {
            next_tick += Duration::from_millis(20);
            for leg in legs.iter_mut().filter(|l| l.connected && !l.dead) {
                let ts = leg.tx_ts;
                leg.tx_ts += 160;
                leg.write(now, PT_PCMU, false, ts, &[0xff; 160]);
                if leg.tx_seq % 100 == 0 {
                    leg.send_burst(now);
                }
                leg.drive(&socket, &mut events);
            }
            events.clear();
        }

        // 5. Figures.
        if n_connected >= want && measured.is_none() {
            let secs = first_leg.unwrap().elapsed().as_secs_f64();
            let snap = snapshot();
            let m = format!(
                "{}\nhandshakes: {want} legs connected in {secs:.2} s since first offer = {:.0} /s",
                per_leg_report("str0m server", want, base, snap),
                want as f64 / secs
            );
            println!("{m}");
            measured = Some(m);
        }
        let rx_pcmu: u64 = legs.iter().map(|l| l.rx[PT_PCMU as usize]).sum();
        let rx_te: u64 = legs.iter().map(|l| l.te_pt.map(|p| l.rx[p as usize]).unwrap_or(0)).sum();
        let pts: Vec<(usize, u64)> = (0..128).map(|pt| (pt, legs.iter().map(|l| l.rx[pt]).sum::<u64>())).filter(|x| x.1 > 0).collect();
        *report.lock().unwrap() = format!(
            "rx by pt {pts:?}\n{}",
            format!(
            "{}\nserver: legs={} connected={n_connected} rx_pcmu={rx_pcmu} rx_te={rx_te} unrouted={unrouted}\n",
            measured.clone().unwrap_or_default(),
            legs.len()
        ));
    }
}

fn clients() {
    let http: SocketAddr = arg("--http").unwrap_or("127.0.0.1:8080".into()).parse().unwrap();
    let want: usize = arg("--legs").map(|v| v.parse().unwrap()).unwrap_or(1);
    let window: usize = arg("--window").map(|v| v.parse().unwrap()).unwrap_or(50);
    let cert = node_cert();

    let mut poll = mio::Poll::new().unwrap();
    let mut mio_events = mio::Events::with_capacity(1024);
    let mut sockets: Vec<(mio::net::UdpSocket, SocketAddr)> = Vec::new();
    let mut legs: Vec<Leg> = Vec::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 2000];
    let start = Instant::now();
    let mut connected = 0usize;
    let mut all_at: Option<Instant> = None;
    let deadline = start + Duration::from_secs(arg("--timeout").map(|v| v.parse().unwrap()).unwrap_or(300));

    // A std socket per client, wrapped for mio; str0m transmits go through the std one.
    let mut std_socks: Vec<UdpSocket> = Vec::new();
    loop {
        let now = Instant::now();
        // Start new offers while fewer than `window` are handshaking.
        while legs.len() < want && legs.len() - connected < window {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            let addr = s.local_addr().unwrap();
            let mut ms = mio::net::UdpSocket::from_std(s.try_clone().unwrap());
            poll.registry().register(&mut ms, mio::Token(legs.len()), mio::Interest::READABLE).unwrap();
            let mut rtc = audio_config(&cert).build(now);
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            let mut change = rtc.sdp_api();
            let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
            let (offer, pending) = change.apply().unwrap();
            let answer = http_post(http, "/offer", &offer.to_sdp_string());
            rtc.sdp_api().accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
            let mut leg = Leg::new(rtc, now);
            leg.mid = Some(mid);
            leg.drive(&s, &mut events);
            events.clear();
            legs.push(leg);
            sockets.push((ms, addr));
            std_socks.push(s);
        }

        poll.poll(&mut mio_events, Some(Duration::from_millis(2))).unwrap();
        for ev in mio_events.iter() {
            let i = ev.token().0;
            loop {
                let Ok((n, source)) = std_socks[i].recv_from(&mut buf) else { break };
                let Ok(contents) = (&buf[..n]).try_into() else { continue };
                let now = Instant::now();
                let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: sockets[i].1, contents });
                if legs[i].rtc.handle_input(input).is_ok() {
                    legs[i].drive(&std_socks[i], &mut events);
                }
                for e in events.drain(..) {
                    let Ev::Connected = e;
                    connected += 1;
                    legs[i].send_burst(now);
                    legs[i].drive(&std_socks[i], &mut Vec::new());
                }
            }
        }
        let now = Instant::now();
        for (i, leg) in legs.iter_mut().enumerate().filter(|(_, l)| !l.dead && l.next_timeout <= now) {
            if leg.rtc.handle_input(Input::Timeout(now)).is_ok() {
                leg.drive(&std_socks[i], &mut events);
            }
        }
        events.clear();
        if connected >= want && all_at.is_none() {
            all_at = Some(now);
            let secs = (now - start).as_secs_f64();
            println!("clients: {want} connected in {secs:.2} s = {:.0} handshakes/s (window {window})", want as f64 / secs);
        }
        if let Some(t) = all_at {
            if now - t > Duration::from_secs(3) {
                break;
            }
        }
        if now > deadline {
            println!("clients: DEADLINE, connected {connected} of {want}");
            break;
        }
    }
    let rx_pcmu: u64 = legs.iter().map(|l| l.rx[PT_PCMU as usize]).sum();
    let rx_te: u64 = legs.iter().map(|l| l.te_pt.map(|p| l.rx[p as usize]).unwrap_or(0)).sum();
    println!("clients: connected={connected} rx_pcmu={rx_pcmu} rx_te={rx_te} (expect 3 and 3 per leg)");
    println!("--- server report ---\n{}", http_get(http, "/report"));
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("server") => server(),
        Some("clients") => clients(),
        _ => eprintln!("usage: str0m-spike server|clients ..."),
    }
}
