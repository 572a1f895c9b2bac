//! Parse + serialize of a typical PBX INVITE (about 900 bytes with SDP).
//!
//! `cargo bench --bench sip_message`; figures go to bench/RESULTS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use trunkgate::sip::message::{Message, parse, parse_bytes};

/// An INVITE as an Asterisk trunk sends it: two Vias, Contact, Allow,
/// Supported, and an SDP offer with PCMU/PCMA/telephone-event.
const INVITE: &str = "INVITE sip:+15550001@192.0.2.1:5060;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.10:5060;rport;branch=z9hG4bKPj2f3c1a9e-8d7b-4c3e-9f21-6a5b4c3d2e1f\r\n\
Via: SIP/2.0/UDP 10.20.30.40:5060;received=198.51.100.10;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 69\r\n\
From: \"Reception\" <sip:+15550100@198.51.100.10>;tag=7d8e9f0a-1b2c-3d4e\r\n\
To: <sip:+15550001@192.0.2.1>\r\n\
Contact: <sip:asterisk@198.51.100.10:5060;transport=udp>\r\n\
Call-ID: 3c4d5e6f-7a8b-9c0d-1e2f-3a4b5c6d7e8f@198.51.100.10\r\n\
CSeq: 18301 INVITE\r\n\
Allow: OPTIONS, INVITE, ACK, BYE, CANCEL, UPDATE, PRACK, REFER\r\n\
Supported: 100rel, timer, replaces, norefersub\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 241\r\n\
\r\n\
v=0\r\n\
o=- 1848474 1848474 IN IP4 198.51.100.10\r\n\
s=Asterisk\r\n\
c=IN IP4 198.51.100.10\r\n\
t=0 0\r\n\
m=audio 17010 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

fn bench(c: &mut Criterion) {
    let bytes = bytes::Bytes::from_static(INVITE.as_bytes());
    // The message must parse with its body intact, or the figure is meaningless.
    match parse(INVITE.as_bytes()) {
        Ok(Message::Request(r)) => assert_eq!(r.body().len(), 241),
        other => panic!("benchmark INVITE does not parse: {other:?}"),
    }
    let mut g = c.benchmark_group("sip_message");
    g.throughput(Throughput::Bytes(INVITE.len() as u64));
    g.bench_function("parse_invite", |b| b.iter(|| parse_bytes(black_box(bytes.clone()))));
    g.bench_function("parse_typed_serialize_invite", |b| {
        b.iter(|| {
            let m = parse_bytes(black_box(bytes.clone())).expect("parses");
            // What the core reads of every request.
            let h = m.headers();
            black_box((h.top_via().ok().map(|v| v.branch().map(str::len)), h.cseq().ok(), h.call_id().ok()));
            black_box(m.to_bytes())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
