//! Heap held per connected browser leg: 1,000 legs, each set up (offer,
//! ICE, DTLS) against a full-ICE str0m peer in the same process, with only
//! the allocations made inside trunkgate's leg counted (the peers' are
//! not), and the total still held once every leg is connected.
//!
//! `cargo bench --bench webrtc_leg_memory`; figures go to bench/RESULTS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use str0m::change::SdpOffer;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc, RtcConfig};
use trunkgate::media::webrtc::{BrowserLeg, BrowserOutput, MediaDirection, NodeCert, Voice};

/// Bytes held by allocations made while [`COUNTING`] is set.
static HELD: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; only a
// counter moves beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            HELD.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.with(Cell::get) {
            HELD.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            HELD.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` with the leg's allocations counted.
fn leg<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

fn main() {
    const LEGS: u16 = 1000;
    let cert = NodeCert::generate().expect("certificate");
    let peer_cert = NodeCert::generate().expect("certificate");
    let now = trunkgate::clock::instant();
    let mut legs: Vec<BrowserLeg> = Vec::new();
    let mut peers: Vec<Rtc> = Vec::new();
    for i in 0..LEGS {
        let leg_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 20_000));
        let peer_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 2], 30_000 + i));
        let mut l = leg(|| BrowserLeg::new(now, &cert, leg_addr, &[Voice::Pcmu, Voice::Pcma], 101));
        let offer = leg(|| l.create_offer(MediaDirection::SendRecv)).expect("offer");
        let mut cfg = RtcConfig::new().clear_codecs().set_rtp_mode(true).set_dtls_cert(peer_cert.dtls_cert());
        cfg.codec_config().enable_pcmu(true, false);
        let mut peer = cfg.build(now);
        peer.add_local_candidate(Candidate::host(peer_addr, "udp").expect("candidate"));
        let answer = peer.sdp_api().accept_offer(SdpOffer::from_sdp_string(&offer).expect("offer")).expect("answer");
        leg(|| l.accept_answer(now, &answer.to_sdp_string())).expect("answer taken");
        // Carry datagrams until the leg reports DTLS done.
        let mut t = now;
        let mut connected = false;
        let mut out = Vec::new();
        for _ in 0..2000 {
            let leg_next = leg(|| l.poll(&mut out));
            let mut to_peer = Vec::new();
            for o in out.drain(..) {
                match o {
                    BrowserOutput::Transmit { data, .. } => to_peer.push(data),
                    BrowserOutput::Connected(_) => connected = true,
                    _ => {}
                }
            }
            if connected {
                break;
            }
            let mut to_leg = Vec::new();
            let peer_next = loop {
                match peer.poll_output().expect("peer") {
                    Output::Transmit(x) => to_leg.push(x.contents.to_vec()),
                    Output::Timeout(x) => break x,
                    Output::Event(_) => {}
                }
            };
            if to_peer.is_empty() && to_leg.is_empty() {
                t = [Some(peer_next), leg_next]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(t)
                    .max(t + Duration::from_millis(1));
                leg(|| l.handle_timeout(t));
                peer.handle_input(Input::Timeout(t)).expect("peer timeout");
                continue;
            }
            for d in to_leg {
                leg(|| l.handle_datagram(t, peer_addr, &d));
            }
            for d in to_peer {
                let contents = d.as_slice().try_into().expect("datagram");
                let r = Receive { proto: Protocol::Udp, source: leg_addr, destination: peer_addr, contents };
                peer.handle_input(Input::Receive(t, r)).expect("peer input");
            }
        }
        assert!(connected, "leg {i} connected");
        legs.push(l);
        peers.push(peer);
    }
    let held = HELD.load(Ordering::Relaxed);
    println!(
        "{LEGS} connected browser legs hold {:.1} MB of heap: {:.1} KB per leg",
        held as f64 / 1e6,
        held as f64 / f64::from(LEGS) / 1024.0
    );
    drop(peers);
    drop(legs);
}
