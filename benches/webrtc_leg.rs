//! What a browser leg costs the media thread that owns the shared port
//! before any packet: making its WebRTC session (str0m: DTLS context on
//! the node's certificate, RustCrypto) and its offer.
//!
//! `cargo bench --bench webrtc_leg`; figures go to bench/RESULTS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use trunkgate::media::webrtc::{BrowserLeg, MediaDirection, NodeCert, Voice};

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

criterion_group!(benches, legs);
criterion_main!(benches);
