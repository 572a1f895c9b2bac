//! rtc 0.21.1 (webrtc-rs sans-IO core) spike: an ICE-lite answerer relay
//! thread owning ONE UDP socket (server), and a process of full-ICE offerers
//! (clients) for the load test. Same command line as str0m-spike.

#[path = "../../common/common.rs"]
mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use rtc::crypto::{self, SignatureScheme};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_PCMA, MIME_TYPE_PCMU, MIME_TYPE_TELEPHONE_EVENT, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp;
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

#[global_allocator]
static GLOBAL: Counting = Counting;

const PT_PCMU: u8 = 0;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1).cloned())
}
fn flag(name: &str) -> bool {
    std::env::args().any(|x| x == name)
}

/// One per-node certificate, ECDSA P-256, through rtc's ring provider.
fn node_cert() -> RTCCertificate {
    let provider = crypto::default_provider().unwrap();
    RTCCertificate::generate(
        provider.crypto(),
        SignatureScheme::EcdsaP256Sha256,
        CertificateParams::new(vec!["trunkgate".to_owned()]).unwrap(),
    )
    .unwrap()
}

fn codec(mime: &str, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 8000,
        channels: 1,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    }
}

/// G.711 + telephone-event/8000 only (telephone-event is not a default codec).
fn media_engine() -> MediaEngine {
    let mut m = MediaEngine::default();
    for (mime, pt, fmtp) in [(MIME_TYPE_PCMU, 0, ""), (MIME_TYPE_PCMA, 8, ""), (MIME_TYPE_TELEPHONE_EVENT, 101, "0-16")] {
        m.register_codec(
            RTCRtpCodecParameters { rtp_codec: codec(mime, fmtp), payload_type: pt, ..Default::default() },
            RtpCodecKind::Audio,
        )
        .unwrap();
    }
    m
}

fn build_pc(cert: &RTCCertificate, lite: Option<&str>) -> RTCPeerConnection {
    let mut se = SettingEngineBuilder::new();
    if let Some(ufrag) = lite {
        se = se.with_lite(true).with_ice_credentials(ufrag.to_owned(), format!("{ufrag}pass0123456789abcdef"));
    }
    RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().with_certificates(vec![cert.clone()]).build())
        .with_setting_engine(se.build())
        .with_media_engine(media_engine())
        .build(Instant::now())
        .unwrap()
}

/// Our audio track with our own SSRC. A track's codec becomes the
/// transceiver's codec preference (PCMU only, no telephone-event) unless the
/// transceiver already has preferences: set all three first.
fn add_audio_track(pc: &mut RTCPeerConnection, ssrc: u32) -> RTCRtpSenderId {
    if pc.get_transceivers().next().is_none() {
        // Offerer: make the audio transceiver first, receive-only until the track lands.
        pc.add_transceiver_from_kind(
            RtpCodecKind::Audio,
            Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, streams: vec![], send_encodings: vec![] }),
        )
        .unwrap();
    }
    let all: Vec<RTCRtpCodecParameters> = [(MIME_TYPE_PCMU, 0, ""), (MIME_TYPE_PCMA, 8, ""), (MIME_TYPE_TELEPHONE_EVENT, 101, "0-16")]
        .into_iter()
        .map(|(mime, pt, fmtp)| RTCRtpCodecParameters { rtp_codec: codec(mime, fmtp), payload_type: pt, ..Default::default() })
        .collect();
    let ids: Vec<_> = pc.get_transceivers().collect();
    for id in ids {
        pc.rtp_transceiver(id).unwrap().set_codec_preferences(all.clone()).unwrap();
    }
    let track = MediaStreamTrack::new(
        format!("tg-stream-{ssrc}"),
        format!("tg-track-{ssrc}"),
        "audio".to_owned(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
            codec: codec(MIME_TYPE_PCMU, ""),
            ..Default::default()
        }],
    );
    pc.add_track(track).unwrap()
}

fn add_host(pc: &mut RTCPeerConnection, addr: SocketAddr) {
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .unwrap();
    pc.add_local_candidate(RTCIceCandidate::from(&c).to_json().unwrap()).unwrap();
}

struct Leg {
    pc: RTCPeerConnection,
    sender: RTCRtpSenderId,
    ssrc: u32,
    local: SocketAddr,
    next_timeout: Instant,
    connected: bool,
    dead: bool,
    rx: [u64; 128],
    te_pt: Option<u8>,
    tx_seq: u16,
    tx_ts: u32,
}

enum Ev {
    Connected,
}

impl Leg {
    fn new(pc: RTCPeerConnection, sender: RTCRtpSenderId, ssrc: u32, local: SocketAddr) -> Self {
        Leg { pc, sender, ssrc, local, next_timeout: Instant::now(), connected: false, dead: false, rx: [0; 128], te_pt: None, tx_seq: 1000, tx_ts: 160_000 }
    }

    fn input(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let r = self.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext { local_addr: self.local, peer_addr: source, ecn: None, transport_protocol: TransportProtocol::UDP },
            message: BytesMut::from(data),
        });
        if let Err(e) = r {
            if std::env::var("SHOW_ERR").is_ok() {
                eprintln!("handle_read: {e}");
            }
        }
    }

    fn drive(&mut self, socket: &UdpSocket, events: &mut Vec<Ev>) {
        while let Some(msg) = self.pc.poll_write() {
            let _ = socket.send_to(&msg.message, msg.transport.peer_addr);
        }
        while let Some(ev) = self.pc.poll_event() {
            match ev {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Connected) => {
                    self.connected = true;
                    self.te_pt = self.negotiated_te_pt();
                    events.push(Ev::Connected);
                }
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(RTCPeerConnectionState::Failed) => self.dead = true,
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_track, p) = message {
                // Raw RTP: rtp::Packet { header, payload } as received.
                let pt = p.header.payload_type & 0x7f;
                self.rx[pt as usize] += 1;
                if Some(pt) == self.te_pt && self.rx[pt as usize] <= 3 && std::env::var("SHOW_TE").is_ok() {
                    println!("rx telephone-event pt={pt} seq={} ts={} m={} payload={:02x?}",
                        p.header.sequence_number, p.header.timestamp, p.header.marker, &p.payload[..]);
                }
            }
        }
        // Sending may have queued more.
        while let Some(msg) = self.pc.poll_write() {
            let _ = socket.send_to(&msg.message, msg.transport.peer_addr);
        }
        self.next_timeout = self.pc.poll_timeout().unwrap_or(Instant::now() + Duration::from_secs(3600));
    }

    fn negotiated_te_pt(&mut self) -> Option<u8> {
        let mut s = self.pc.rtp_sender(self.sender)?;
        if std::env::var("SHOW_SDP").is_ok() {
            let cs: Vec<_> = s.get_parameters().rtp_parameters.codecs.iter().map(|c| (c.payload_type, c.rtp_codec.mime_type.clone())).collect();
            println!("sender codecs {cs:?}");
        }
        s.get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_TELEPHONE_EVENT) && c.rtp_codec.clock_rate == 8000)
            .map(|c| c.payload_type)
    }

    /// Write one RTP packet with our own SSRC/PT/seq/ts; rtc only encrypts it.
    fn write(&mut self, now: Instant, pt: u8, marker: bool, ts: u32, payload: &[u8]) -> bool {
        let seq = self.tx_seq;
        self.tx_seq = self.tx_seq.wrapping_add(1);
        let ssrc = self.ssrc;
        let Some(mut s) = self.pc.rtp_sender(self.sender) else { return false };
        let pkt = rtp::packet::Packet {
            header: rtp::header::Header { version: 2, marker, payload_type: pt, sequence_number: seq, timestamp: ts, ssrc, ..Default::default() },
            payload: Bytes::copy_from_slice(payload),
        };
        match s.write_rtp(now, pkt) {
            Ok(()) => true,
            Err(e) => {
                if std::env::var("SHOW_ERR").is_ok() {
                    eprintln!("write_rtp pt {pt}: {e}");
                }
                false
            }
        }
    }

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

/// Drop telephone-event at rates other than 8000 from an offer.
fn strip_te48(sdp: &str) -> String {
    let pts: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter(|l| l.contains("telephone-event/") && !l.contains("telephone-event/8000"))
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect();
    let mut out = String::new();
    for line in sdp.lines() {
        if pts.iter().any(|pt| line.starts_with(&format!("a=rtpmap:{pt} ")) || line.starts_with(&format!("a=fmtp:{pt} "))) {
            continue;
        }
        if line.starts_with("m=audio") {
            let kept: Vec<&str> = line.split(' ').filter(|f| !pts.iter().any(|p| p == f)).collect();
            out.push_str(&kept.join(" "));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
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
    std::thread::Builder::new().name("http".into()).spawn(move || serve_http(listener, PAGE, offer_tx, rep)).unwrap();
    let cert = node_cert();
    println!("rtc server: udp {local} http {http} legs {want}");

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
        while let Ok((offer, reply)) = offer_rx.try_recv() {
            let now = Instant::now();
            first_leg.get_or_insert(now);
            let ufrag = format!("tg{:06}", legs.len());
            let mut pc = build_pc(&cert, Some(&ufrag));
            // Workaround probe: rtc matches telephone-event by name only and picks
            // the offer's first one (Chromium: 110 telephone-event/48000).
            let offer = if std::env::var("STRIP_TE48").is_ok() { strip_te48(&offer) } else { offer };
            let offer = match RTCSessionDescription::offer(offer) {
                Ok(o) => o,
                Err(e) => { let _ = reply.send(format!("bad offer {e}")); continue; }
            };
            pc.set_remote_description(now, offer).unwrap();
            let ssrc = 0x7467_0000 + legs.len() as u32;
            let sender = add_audio_track(&mut pc, ssrc);
            add_host(&mut pc, local);
            let answer = pc.create_answer(None).unwrap();
            pc.set_local_description(now, answer.clone()).unwrap();
            if std::env::var("SHOW_SDP").is_ok() {
                println!("--- answer ---\n{}", answer.sdp);
            }
            let _ = reply.send(answer.sdp.clone());
            by_ufrag.insert(ufrag, legs.len());
            let mut leg = Leg::new(pc, sender, ssrc, local);
            leg.drive(&socket, &mut events);
            legs.push(leg);
        }

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
            let now = Instant::now();
            let leg = &mut legs[i];
            leg.input(now, source, data);
            leg.drive(&socket, &mut events);
            let evs: Vec<Ev> = events.drain(..).collect();
            for e in evs {
                let Ev::Connected = e;
                n_connected += 1;
                if n_connected == 1 || continuous {
                    println!("leg {i} connected from {source}, telephone-event pt {:?}", leg.te_pt);
                }
                if !continuous {
                    leg.send_burst(now);
                    leg.drive(&socket, &mut events);
                }
            }
            events.clear();
        }

        let now = Instant::now();
        for leg in legs.iter_mut().filter(|l| !l.dead && l.next_timeout <= now) {
            let _ = leg.pc.handle_timeout(now);
            leg.drive(&socket, &mut events);
        }
        events.clear();

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

        if n_connected >= want && measured.is_none() {
            let secs = first_leg.unwrap().elapsed().as_secs_f64();
            let snap = snapshot();
            let m = format!(
                "{}\nhandshakes: {want} legs connected in {secs:.2} s since first offer = {:.0} /s",
                per_leg_report("rtc server", want, base, snap),
                want as f64 / secs
            );
            println!("{m}");
            measured = Some(m);
        }
        let rx_pcmu: u64 = legs.iter().map(|l| l.rx[PT_PCMU as usize]).sum();
        let rx_te: u64 = legs.iter().map(|l| l.te_pt.map(|p| l.rx[p as usize]).unwrap_or(0)).sum();
        let pts: Vec<(usize, u64)> = (0..128).map(|pt| (pt, legs.iter().map(|l| l.rx[pt]).sum::<u64>())).filter(|x| x.1 > 0).collect();
        *report.lock().unwrap() = format!(
            "rx by pt {pts:?}\n{}\nserver: legs={} connected={n_connected} rx_pcmu={rx_pcmu} rx_te={rx_te} unrouted={unrouted}\n",
            measured.clone().unwrap_or_default(),
            legs.len()
        );
    }
}

fn clients() {
    let http: SocketAddr = arg("--http").unwrap_or("127.0.0.1:8080".into()).parse().unwrap();
    let want: usize = arg("--legs").map(|v| v.parse().unwrap()).unwrap_or(1);
    let window: usize = arg("--window").map(|v| v.parse().unwrap()).unwrap_or(50);
    let cert = node_cert();

    let mut poll = mio::Poll::new().unwrap();
    let mut mio_events = mio::Events::with_capacity(1024);
    let mut keep: Vec<mio::net::UdpSocket> = Vec::new();
    let mut socks: Vec<UdpSocket> = Vec::new();
    let mut legs: Vec<Leg> = Vec::new();
    let mut events = Vec::new();
    let mut buf = vec![0u8; 2000];
    let start = Instant::now();
    let mut connected = 0usize;
    let mut all_at: Option<Instant> = None;
    let deadline = start + Duration::from_secs(arg("--timeout").map(|v| v.parse().unwrap()).unwrap_or(300));

    loop {
        while legs.len() < want && legs.len() - connected < window {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            let addr = s.local_addr().unwrap();
            let mut ms = mio::net::UdpSocket::from_std(s.try_clone().unwrap());
            poll.registry().register(&mut ms, mio::Token(legs.len()), mio::Interest::READABLE).unwrap();
            let mut pc = build_pc(&cert, None);
            let ssrc = 0x5000_0000 + legs.len() as u32;
            let sender = add_audio_track(&mut pc, ssrc);
            add_host(&mut pc, addr);
            let now = Instant::now();
            let offer = pc.create_offer(None).unwrap();
            pc.set_local_description(now, offer.clone()).unwrap();
            let answer = http_post(http, "/offer", &offer.sdp);
            pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer).unwrap()).unwrap();
            let mut leg = Leg::new(pc, sender, ssrc, addr);
            leg.drive(&s, &mut events);
            events.clear();
            legs.push(leg);
            keep.push(ms);
            socks.push(s);
        }

        poll.poll(&mut mio_events, Some(Duration::from_millis(2))).unwrap();
        for ev in mio_events.iter() {
            let i = ev.token().0;
            loop {
                let Ok((n, source)) = socks[i].recv_from(&mut buf) else { break };
                let now = Instant::now();
                legs[i].input(now, source, &buf[..n]);
                legs[i].drive(&socks[i], &mut events);
                for e in events.drain(..) {
                    let Ev::Connected = e;
                    connected += 1;
                    legs[i].send_burst(now);
                    legs[i].drive(&socks[i], &mut Vec::new());
                }
            }
        }
        let now = Instant::now();
        for (i, leg) in legs.iter_mut().enumerate().filter(|(_, l)| !l.dead && l.next_timeout <= now) {
            let _ = leg.pc.handle_timeout(now);
            leg.drive(&socks[i], &mut events);
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
        _ => eprintln!("usage: rtc-spike server|clients ..."),
    }
}
