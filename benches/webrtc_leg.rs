//! What a browser leg costs the media thread that owns the shared port:
//! making its WebRTC session (str0m: DTLS context on the node's
//! certificate, RustCrypto) and its offer; and a whole set-up, offer to
//! DTLS done, against a full-ICE str0m peer playing the browser in the
//! same process (so the figure holds both ends' CPU: the browser's DTLS
//! client work is about as much as ours).
//!
//! `cargo bench --bench webrtc_leg`; figures go to bench/RESULTS.md.

use std::hint::black_box;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, RtcConfig};
use trunkgate::media::webrtc::{BrowserLeg, BrowserOutput, MediaDirection, NodeCert, Voice};

/// One set-up in virtual time: our offer, the peer's answer, datagrams
/// carried both ways until our leg reports DTLS done.
fn handshake(cert: &NodeCert, peer_cfg: impl Fn() -> RtcConfig, now: Instant) -> bool {
    let (leg_addr, peer_addr): (SocketAddr, SocketAddr) =
        ("127.0.0.1:40000".parse().expect("a"), "127.0.0.1:50000".parse().expect("b"));
    let mut leg = BrowserLeg::new(now, cert, leg_addr, &[Voice::Pcmu], 101);
    let Some(offer) = leg.create_offer(MediaDirection::SendRecv) else { return false };
    let mut peer = peer_cfg().build(now);
    peer.add_local_candidate(Candidate::host(peer_addr, "udp").expect("candidate"));
    let Ok(offer) = SdpOffer::from_sdp_string(&offer) else { return false };
    let Ok(answer) = peer.sdp_api().accept_offer(offer) else { return false };
    if leg.accept_answer(now, &answer.to_sdp_string()).is_err() {
        return false;
    }
    let mut t = now;
    let mut out = Vec::new();
    for _ in 0..2000 {
        let mut to_peer = Vec::new();
        let leg_next = leg.poll(&mut out);
        for o in out.drain(..) {
            match o {
                BrowserOutput::Transmit { data, .. } => to_peer.push(data),
                BrowserOutput::Connected(_) => return true,
                _ => {}
            }
        }
        let mut to_leg = Vec::new();
        let peer_next = loop {
            match peer.poll_output() {
                Ok(Output::Transmit(x)) => to_leg.push(x.contents.to_vec()),
                Ok(Output::Timeout(x)) => break x,
                Ok(Output::Event(Event::Connected) | Output::Event(_)) => {}
                Err(_) => return false,
            }
        };
        if to_peer.is_empty() && to_leg.is_empty() {
            t = [Some(peer_next), leg_next].into_iter().flatten().min().unwrap_or(t).max(t + Duration::from_millis(1));
            leg.handle_timeout(t);
            let _ = peer.handle_input(Input::Timeout(t));
            continue;
        }
        for d in to_leg {
            leg.handle_datagram(t, peer_addr, &d);
        }
        for d in to_peer {
            let Ok(contents) = d.as_slice().try_into() else { continue };
            let r = Receive { proto: Protocol::Udp, source: leg_addr, destination: peer_addr, contents };
            let _ = peer.handle_input(Input::Receive(t, r));
        }
    }
    false
}

fn legs(c: &mut Criterion) {
    let cert = NodeCert::generate().expect("certificate");
    let local = "127.0.0.1:20000".parse().expect("address");
    let now = trunkgate::clock::instant();
    c.bench_function("browser leg: new", |b| {
        b.iter(|| black_box(BrowserLeg::new(now, &cert, local, &[Voice::Pcmu, Voice::Pcma], 101)));
    });
    c.bench_function("browser leg: new + offer", |b| {
        b.iter(|| {
            let mut leg = BrowserLeg::new(now, &cert, local, &[Voice::Pcmu, Voice::Pcma], 101);
            black_box(leg.create_offer(MediaDirection::SendRecv))
        });
    });
}

fn handshakes(c: &mut Criterion) {
    let cert = NodeCert::generate().expect("certificate");
    let peer_cert = NodeCert::generate().expect("certificate");
    let peer_cfg = || {
        let mut cfg = RtcConfig::new().clear_codecs().set_rtp_mode(true).set_dtls_cert(peer_cert.dtls_cert());
        cfg.codec_config().enable_pcmu(true, false);
        cfg
    };
    assert!(handshake(&cert, peer_cfg, trunkgate::clock::instant()), "a set-up completes");
    c.bench_function("browser leg: offer to DTLS done, both ends", |b| {
        b.iter(|| black_box(handshake(&cert, peer_cfg, trunkgate::clock::instant())));
    });
}

criterion_group!(benches, legs, handshakes);
criterion_main!(benches);
