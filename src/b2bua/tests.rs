//! The call machine in virtual time: a scripted PBX and scripted phones
//! exchange real SIP messages with one [`Call`]; the clock jumps to the
//! machine's next deadline, so ring timeouts, 2xx retransmissions and the
//! 32 s wait for a missing ACK take microseconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::call::{BROWSER_GONE, CallConfig, Ids, LegState, OfferAnswer, Phase, Placement};
use super::*;
use crate::config::{RingStrategy, Transport};
use crate::sip::message::{HeaderName, Message, Method, Request, Response};
use crate::store::CallRecord;
use crate::transport::Target;

const T1: Duration = Duration::from_millis(500);
const RING: Duration = Duration::from_secs(10);
const MAX: Duration = Duration::from_secs(3600);
const PBX_SDP: &str =
    "v=0\r\no=pbx 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
const PHONE_SDP: &str =
    "v=0\r\no=phone 1 1 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";

#[derive(Default)]
struct CountingIds(AtomicU64);

impl Ids for CountingIds {
    fn tag(&self) -> String {
        format!("t{}", self.0.fetch_add(1, Ordering::Relaxed))
    }
    fn call_id(&self) -> String {
        format!("b{}@trunkgate", self.0.fetch_add(1, Ordering::Relaxed))
    }
    fn cnonce(&self) -> String {
        format!("c{}", self.0.fetch_add(1, Ordering::Relaxed))
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn peer(remote: &str) -> Peer {
    Peer {
        target: Target { transport: Transport::Udp, addr: addr(remote), conn: None },
        local: addr("203.0.113.1:5060"),
    }
}

fn parse_req(s: &str) -> Request {
    match crate::sip::message::parse(s.as_bytes()).expect("valid request") {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

fn with_body(head: String, body: Option<&str>) -> String {
    match body {
        Some(b) => format!("{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}", b.len()),
        None => format!("{head}Content-Length: 0\r\n\r\n"),
    }
}

/// The PBX's INVITE.
fn pbx_invite(sdp: Option<&str>) -> Request {
    pbx_invite_with("", sdp)
}

/// The PBX's INVITE with `extra` header lines (each ending in CRLF).
fn pbx_invite_with(extra: &str, sdp: Option<&str>) -> Request {
    parse_req(&with_body(
        format!(
            "INVITE sip:+15550001@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKpbx1\r\n\
Max-Forwards: 70\r\nFrom: \"Bob\" <sip:+15551234@192.0.2.10>;tag=pbx\r\nTo: <sip:+15550001@203.0.113.1>\r\n\
Call-ID: a1@pbx\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@192.0.2.10:5060>\r\n{extra}"
        ),
        sdp,
    ))
}

/// A phone's (or the PBX's) response to `req`, with `tag` as To tag.
fn reply(req: &Request, status: u16, tag: &str, body: Option<&str>, contact: &str) -> Response {
    let mut r = Response::from_request(req, status, "X").with_to_tag(tag).expect("tag");
    if status < 300 && status > 100 {
        r.headers_mut().push(HeaderName::Contact, format!("<{contact}>")).expect("contact");
    }
    if let Some(b) = body {
        r.headers_mut().push(HeaderName::ContentType, "application/sdp").expect("ct");
        r.set_body(bytes::Bytes::from(b.to_owned()));
    }
    r
}

fn record() -> CallRecord {
    CallRecord {
        id: 0,
        call_id: "a1@pbx".into(),
        node_id: "n1".into(),
        portal_id: Some("acme".into()),
        trunk: Some("pbx".into()),
        direction: "inbound".into(),
        caller: Some("+15551234".into()),
        callee: Some("+15550001".into()),
        target_user: None,
        started_at: 1_000_000,
        answered_at: None,
        ended_at: None,
        outcome: "admitted".into(),
        sip_status: None,
        reason: None,
        media: None,
    }
}

fn fork(user: &str, port: u16) -> ForkTarget {
    let p = peer(&format!("198.51.100.{port}:5060", port = port % 250));
    ForkTarget { user: user.into(), contact: format!("sip:{user}@{}", p.target.addr), peer: p }
}

/// A command with the virtual instant it came out at.
#[derive(Debug)]
struct Out {
    at: Duration,
    cmd: Command<u32>,
}

/// One call and the world around it.
struct World {
    call: Call<u32>,
    t0: Instant,
    now: Instant,
    out: Vec<Out>,
    /// Server transaction ids for the legs' requests to us.
    next_tsx: u32,
}

impl World {
    fn new(strategy: RingStrategy, groups: Vec<Vec<ForkTarget>>, sdp: Option<&str>) -> World {
        World::with(strategy, groups, pbx_invite(sdp), Box::new(Passthrough))
    }

    /// A call from `invite` whose SDP crosses `media`.
    fn with(
        strategy: RingStrategy,
        groups: Vec<Vec<ForkTarget>>,
        invite: Request,
        media: Box<dyn MediaSession>,
    ) -> World {
        let t0 = crate::clock::instant();
        let config = CallConfig {
            warning_host: Arc::from("tg.test"),
            t1: T1,
            t2: Duration::from_secs(4),
            session_expires: session_timer::DEFAULT_SESSION_EXPIRES,
            min_se: session_timer::DEFAULT_MIN_SE,
        };
        let call = Call::inbound(
            t0,
            config,
            Arc::new(CountingIds::default()),
            media,
            InboundCall {
                invite,
                tsx: 1,
                peer: peer("192.0.2.10:5060"),
                groups,
                strategy,
                ring_timeout: RING,
                max_duration: MAX,
                lease_id: "lease-1".into(),
                domain: "acme.example.com".into(),
                record: record(),
            },
        );
        let mut w = World { call, t0, now: t0, out: Vec::new(), next_tsx: 100 };
        w.collect();
        w
    }

    fn collect(&mut self) {
        while let Some(cmd) = self.call.poll_command() {
            self.out.push(Out { at: self.now - self.t0, cmd });
        }
    }

    /// Jumps to the next deadline (if before `limit` from t0) and fires it.
    fn step(&mut self) -> bool {
        let Some(at) = self.call.poll_timeout() else { return false };
        self.now = self.now.max(at);
        self.call.handle_timeout(self.now);
        self.collect();
        true
    }

    /// Advances the clock by `d` (firing every deadline on the way).
    fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(at) = self.call.poll_timeout() {
            if at > until {
                break;
            }
            self.now = at;
            self.call.handle_timeout(at);
            self.collect();
        }
        self.now = until;
    }

    fn take(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }

    /// The requests sent on `leg` (and drained from the log).
    fn requests(out: &[Out]) -> Vec<(Duration, ReqId, LegId, Request)> {
        out.iter()
            .filter_map(|o| match &o.cmd {
                Command::Request { id, leg, request, .. } => Some((o.at, *id, *leg, request.clone())),
                _ => None,
            })
            .collect()
    }

    fn responses(out: &[Out], tsx: u32) -> Vec<Response> {
        out.iter()
            .filter_map(|o| match &o.cmd {
                Command::Respond { tsx: t, response } if *t == tsx => Some(response.clone()),
                _ => None,
            })
            .collect()
    }

    fn acks(out: &[Out]) -> Vec<(Peer, Request)> {
        out.iter()
            .filter_map(|o| match &o.cmd {
                Command::Ack { peer, request } => Some((*peer, request.clone())),
                _ => None,
            })
            .collect()
    }

    fn records(out: &[Out]) -> Vec<CallRecord> {
        out.iter()
            .filter_map(|o| match &o.cmd {
                Command::Record(r) => Some((**r).clone()),
                _ => None,
            })
            .collect()
    }

    fn releases(out: &[Out]) -> usize {
        out.iter().filter(|o| matches!(o.cmd, Command::ReleaseChannel { .. })).count()
    }

    fn respond(&mut self, id: ReqId, resp: &Response) {
        self.call.handle_response(self.now, id, resp);
        self.collect();
    }

    /// A request from a leg to us, in a new server transaction.
    fn request(&mut self, req: &Request) -> u32 {
        self.next_tsx += 1;
        let tsx = self.next_tsx;
        self.call.handle_request(self.now, tsx, req);
        self.collect();
        tsx
    }

    fn ack(&mut self, req: &Request) {
        self.call.handle_ack(self.now, req);
        self.collect();
    }
}

fn status_of(r: &[Response]) -> Vec<u16> {
    r.iter().map(Response::status).collect()
}

fn body_str(b: &bytes::Bytes) -> &str {
    std::str::from_utf8(b).expect("utf-8 body")
}

/// An in-dialog request as the PBX sends it inside the call's A dialog.
fn pbx_in_dialog(w: &World, method: &str, seq: u32, body: Option<&str>) -> Request {
    let tag = &w.call.legs()[0].dialog().expect("A dialog").id().local_tag;
    parse_req(&with_body(
        format!(
            "{method} sip:trunkgate@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKp{seq}\r\n\
Max-Forwards: 70\r\nFrom: \"Bob\" <sip:+15551234@192.0.2.10>;tag=pbx\r\nTo: <sip:+15550001@203.0.113.1>;tag={tag}\r\n\
Call-ID: a1@pbx\r\nCSeq: {seq} {method}\r\nContact: <sip:pbx@192.0.2.10:5060>\r\n"
        ),
        body,
    ))
}

/// An in-dialog request as the phone sends it inside fork `leg`'s dialog.
fn phone_in_dialog(w: &World, leg: LegId, method: &str, seq: u32, body: Option<&str>) -> Request {
    let l = &w.call.legs()[usize::from(leg.0)];
    let d = l.dialog().expect("B dialog").id();
    parse_req(&with_body(
        format!(
            "{method} sip:trunkgate@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKph{seq}\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@acme.example.com>;tag={}\r\nTo: <sip:x@acme.example.com>;tag={}\r\n\
Call-ID: {}\r\nCSeq: {seq} {method}\r\nContact: <sip:alice@198.51.100.1:5060>\r\n",
            d.remote_tag, d.local_tag, d.call_id
        ),
        body,
    ))
}

/// Rings alice alone and lets her answer: the common start.
fn answered(sdp_in_invite: bool) -> (World, ReqId, Request) {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], sdp_in_invite.then_some(PBX_SDP));
    let out = w.take();
    let (_, id, _, invite) = World::requests(&out).remove(0);
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    if sdp_in_invite {
        w.ack(&pbx_in_dialog(&w, "ACK", 1, None));
    }
    (w, id, invite)
}

/// Every call leaves exactly one record and gives its channel back once.
fn assert_one_end(out: &[Out], outcome: &str) -> CallRecord {
    let recs = World::records(out);
    assert_eq!(recs.len(), 1, "exactly one call record: {recs:?}");
    assert_eq!(World::releases(out), 1, "channel released exactly once");
    assert_eq!(recs[0].outcome, outcome);
    recs[0].clone()
}

#[test]
fn ring_all_rings_every_fork_at_once() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)], vec![fork("bob", 2)]], Some(PBX_SDP));
    let out = w.take();
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|(at, ..)| *at == Duration::ZERO), "both INVITEs at t0: {reqs:?}");
    let uris: Vec<_> = reqs.iter().map(|r| r.3.uri().as_str().to_owned()).collect();
    assert_eq!(uris, ["sip:alice@198.51.100.1:5060", "sip:bob@198.51.100.2:5060"]);
    // The offer reached both forks; each fork has its own Call-ID and From tag.
    assert!(reqs.iter().all(|r| body_str(r.3.body()) == PBX_SDP));
    assert_ne!(reqs[0].3.headers().call_id().unwrap(), reqs[1].3.headers().call_id().unwrap());
    assert!(World::responses(&out, 1).is_empty(), "no 100 from the call: {out:?}");
    // The trunk leg is ours to answer; the forks are ours to place.
    let legs = w.call.legs();
    assert_eq!((legs[0].role(), legs[0].kind()), (call::Role::Uas, call::LegKind::Trunk));
    assert!(legs[1..].iter().all(|l| (l.role(), l.kind()) == (call::Role::Uac, call::LegKind::Phone)));
}

#[test]
fn in_order_rings_the_next_user_only_after_the_ring_timeout() {
    let mut w = World::new(RingStrategy::InOrder, vec![vec![fork("alice", 1)], vec![fork("bob", 2)]], Some(PBX_SDP));
    let first = World::requests(&w.take());
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].3.uri().as_str(), "sip:alice@198.51.100.1:5060");
    assert!(w.step());
    let out = w.take();
    let reqs = World::requests(&out);
    // At exactly t0 + ring timeout: CANCEL alice, INVITE bob.
    let methods: Vec<_> = reqs.iter().map(|r| (r.0, r.3.method().as_str().to_owned(), r.2)).collect();
    assert_eq!(methods, [(RING, "CANCEL".to_owned(), LegId(1)), (RING, "INVITE".to_owned(), LegId(2))]);
    // Bob does not answer either: 480 at 2 × ring timeout, one record.
    assert!(w.step());
    let out = w.take();
    assert_eq!(out.iter().map(|o| o.at).max(), Some(RING * 2));
    assert_eq!(status_of(&World::responses(&out, 1)), [480]);
    let rec = assert_one_end(&out, "no-answer");
    assert_eq!(rec.sip_status, Some(480));
    assert_eq!(rec.ended_at, Some(1_000_000 + 20));
}

#[test]
fn in_order_moves_on_at_once_when_a_user_rejects() {
    let mut w = World::new(RingStrategy::InOrder, vec![vec![fork("alice", 1)], vec![fork("bob", 2)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.advance(Duration::from_secs(2));
    w.respond(id, &reply(&invite, 486, "ph1", None, ""));
    let reqs = World::requests(&w.take());
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].0, reqs[0].3.uri().as_str()), (Duration::from_secs(2), "sip:bob@198.51.100.2:5060"));
    // Bob's ring timer starts when he rings, not at t0.
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + Duration::from_secs(2) + RING));
}

#[test]
fn ring_all_timeout_answers_480_and_cancels_every_fork() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)], vec![fork("bob", 2)]], Some(PBX_SDP));
    let reqs = World::requests(&w.take());
    for (_, id, _, inv) in &reqs {
        w.respond(*id, &reply(inv, 180, &format!("r{}", id.0), None, "sip:x@198.51.100.9"));
    }
    assert_eq!(status_of(&World::responses(&w.take(), 1)), [180, 180]);
    assert!(w.step());
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, 1)), [480]);
    let cancels: Vec<_> =
        World::requests(&out).into_iter().filter(|r| *r.3.method() == Method::Cancel).map(|r| r.2).collect();
    assert_eq!(cancels, [LegId(1), LegId(2)]);
    let warning =
        World::responses(&out, 1)[0].headers().get(&HeaderName::Warning).unwrap().value_str().unwrap().to_owned();
    assert_eq!(warning, "399 tg.test \"unavailable: no user answered\"");
    assert_one_end(&out, "no-answer");
    // The forks answer their CANCELed INVITEs with 487: nothing more to do.
    for (_, id, _, inv) in &reqs {
        w.respond(*id, &reply(inv, 487, &format!("r{}", id.0), None, ""));
    }
    assert!(w.take().is_empty());
}

#[test]
fn forked_180s_from_two_phones_then_one_200() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1), fork("bob", 2)]], Some(PBX_SDP));
    let reqs = World::requests(&w.take());
    let (a, b) = (&reqs[0], &reqs[1]);
    w.respond(a.1, &reply(&a.3, 180, "pa", None, "sip:alice@198.51.100.1"));
    w.respond(b.1, &reply(&b.3, 180, "pb", None, "sip:bob@198.51.100.2"));
    w.respond(b.1, &reply(&b.3, 200, "pb", Some(PHONE_SDP), "sip:bob@198.51.100.2"));
    let out = w.take();
    let to_pbx = World::responses(&out, 1);
    assert_eq!(status_of(&to_pbx), [180, 180, 200]);
    // One To tag toward the PBX for all of them: one dialog on its side.
    let tags: Vec<_> = to_pbx.iter().map(|r| r.headers().to().unwrap().tag().unwrap().to_owned()).collect();
    assert!(tags.windows(2).all(|t| t[0] == t[1]), "{tags:?}");
    assert_eq!(body_str(to_pbx[2].body()), PHONE_SDP);
    // Bob's 2xx ACKed; alice CANCELed.
    let acks = World::acks(&out);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].1.headers().call_id().unwrap(), b.3.headers().call_id().unwrap());
    let cancels: Vec<_> = World::requests(&out).into_iter().filter(|r| *r.3.method() == Method::Cancel).collect();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].2, LegId(1));
    assert_eq!(w.call.phase(), Phase::Answered);
    assert!(World::records(&out).is_empty());
}

#[test]
fn missing_ack_ends_the_call_on_both_legs_after_64_t1() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    let first = World::responses(&w.take(), 1).pop().expect("200 to the PBX").to_bytes();
    let mut retransmits = Vec::new();
    let mut end = None;
    while w.step() {
        for o in w.take() {
            match o.cmd {
                Command::Retransmit { response, .. } => {
                    assert_eq!(response.to_bytes(), first, "a retransmission repeats the 2xx byte for byte");
                    retransmits.push((o.at.as_millis(), response.status()));
                }
                Command::Record(r) => end = Some((o.at, r)),
                Command::Request { leg, request, .. } => assert_eq!(*request.method(), Method::Bye, "leg {leg:?}"),
                _ => {}
            }
        }
        if end.is_some() {
            break;
        }
    }
    let at: Vec<_> = retransmits.iter().map(|r| r.0).collect();
    assert_eq!(at, [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]);
    let (when, rec) = end.expect("call ended");
    assert_eq!(when, T1 * 64);
    assert_eq!((rec.outcome.as_str(), rec.reason.as_deref()), ("failed", Some("no-ack")));
}

#[test]
fn missing_ack_sends_bye_on_both_legs_and_releases_the_channel() {
    let (mut w, ..) = answered(false);
    // Delayed-offer call whose PBX never ACKs: the phone's 2xx was not
    // ACKed yet either; at 64·T1 both legs get their ACK/BYE.
    w.take();
    w.advance(T1 * 64);
    let out = w.take();
    let byes: Vec<_> =
        World::requests(&out).into_iter().filter(|r| *r.3.method() == Method::Bye).map(|r| r.2).collect();
    assert_eq!(byes, [LegId(0), LegId(1)]);
    assert_eq!(World::acks(&out).len(), 1, "the phone's held 2xx is ACKed before its BYE");
    assert_one_end(&out, "failed");
}

#[test]
fn max_duration_hangs_up_both_legs() {
    let (mut w, ..) = answered(true);
    let out = w.take();
    assert!(World::records(&out).is_empty());
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + MAX));
    assert!(w.step());
    let out = w.take();
    let byes: Vec<_> = World::requests(&out).iter().map(|r| (r.0, r.2, r.3.method().as_str().to_owned())).collect();
    assert_eq!(byes, [(MAX, LegId(0), "BYE".into()), (MAX, LegId(1), "BYE".into())]);
    let rec = assert_one_end(&out, "max-duration");
    assert_eq!(rec.answered_at, Some(1_000_000));
    assert_eq!(rec.ended_at, Some(1_000_000 + 3600));
    // BYE on the A leg goes to the PBX's Contact, inside its dialog.
    let bye = &World::requests(&out)[0].3;
    assert_eq!(bye.uri().as_str(), "sip:pbx@192.0.2.10:5060");
    assert_eq!(bye.headers().to().unwrap().tag(), Some("pbx"));
    assert_eq!(bye.headers().cseq().unwrap().seq, 1);
}

#[test]
fn cancel_before_the_answer_then_the_fork_answers_487() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.respond(id, &reply(&invite, 180, "ph1", None, "sip:alice@198.51.100.1"));
    w.take();
    w.call.handle_cancel(w.now);
    w.collect();
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, 1)), [487]);
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(*reqs[0].3.method(), Method::Cancel);
    assert_eq!(reqs[0].3.headers().cseq().unwrap().seq, 1);
    let rec = assert_one_end(&out, "cancelled");
    assert_eq!(rec.sip_status, Some(487));
    assert!(!w.call.is_finished(), "the fork's INVITE still waits for its final answer");
    w.respond(id, &reply(&invite, 487, "ph1", None, ""));
    assert!(w.take().is_empty());
    w.call.handle_response(w.now, reqs[0].1, &reply(&reqs[0].3, 200, "ph1", None, ""));
    assert!(w.call.is_finished());
}

#[test]
fn cancel_crossing_the_phones_200_acks_and_byes_the_phone() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.call.handle_cancel(w.now);
    w.collect();
    w.take();
    // The phone's 200 crossed our CANCEL.
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    let out = w.take();
    assert!(World::responses(&out, 1).is_empty(), "the PBX got its 487 already, nothing else");
    assert_eq!(World::acks(&out).len(), 1);
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(*reqs[0].3.method(), Method::Bye);
    assert_eq!(reqs[0].3.uri().as_str(), "sip:alice@198.51.100.1:5060");
    assert!(World::records(&out).is_empty(), "recorded once, at the CANCEL");
}

#[test]
fn cancel_after_the_200_changes_nothing() {
    let (mut w, ..) = answered(true);
    w.take();
    w.call.handle_cancel(w.now);
    w.collect();
    assert!(w.take().is_empty());
    assert_eq!(w.call.phase(), Phase::Answered);
}

#[test]
fn delayed_offer_carries_the_answer_from_the_pbx_ack_to_the_phone_ack() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], None);
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    assert!(invite.body().is_empty(), "an offerless INVITE stays offerless");
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    let out = w.take();
    let ok = World::responses(&out, 1);
    assert_eq!(body_str(ok[0].body()), PHONE_SDP, "the phone's offer reaches the PBX in the 200");
    assert!(World::acks(&out).is_empty(), "the phone's ACK waits for the answer");
    assert_eq!(w.call.legs()[0].offer_answer(), OfferAnswer::OfferSent(Placement::Response));
    assert_eq!(w.call.legs()[1].offer_answer(), OfferAnswer::OfferReceived(Placement::Response));
    // A retransmitted 2xx from the phone meanwhile: still no ACK.
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    assert!(World::acks(&w.take()).is_empty());
    w.ack(&pbx_in_dialog(&w, "ACK", 1, Some(PBX_SDP)));
    let out = w.take();
    let acks = World::acks(&out);
    assert_eq!(acks.len(), 1);
    assert_eq!(body_str(acks[0].1.body()), PBX_SDP, "the PBX's answer reaches the phone in its ACK");
    assert_eq!(acks[0].1.headers().cseq().unwrap().seq, 1);
    assert_eq!(w.call.legs()[0].offer_answer(), OfferAnswer::Stable);
    assert_eq!(w.call.legs()[1].offer_answer(), OfferAnswer::Stable);
    // Now a retransmitted 2xx gets the same ACK again.
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    let again = World::acks(&w.take());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.body(), acks[0].1.body());
}

#[test]
fn retransmitted_200_is_acked_again_and_not_relayed() {
    let (mut w, id, invite) = answered(true);
    w.take();
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    let out = w.take();
    assert_eq!(World::acks(&out).len(), 1);
    assert!(World::responses(&out, 1).is_empty());
    assert!(World::requests(&out).is_empty());
}

#[test]
fn second_dialog_answering_after_the_first_is_acked_and_hung_up() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.respond(id, &reply(&invite, 200, "first", Some(PHONE_SDP), "sip:alice@198.51.100.1"));
    w.take();
    // A proxy in front of the phone forked: another 2xx, another To tag.
    w.respond(id, &reply(&invite, 200, "second", Some(PHONE_SDP), "sip:alice2@198.51.100.1"));
    let out = w.take();
    assert_eq!(World::acks(&out).len(), 1);
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(*reqs[0].3.method(), Method::Bye);
    assert_eq!(reqs[0].3.headers().to().unwrap().tag(), Some("second"));
    assert!(World::responses(&out, 1).is_empty());
    assert_eq!(w.call.legs()[1].state(), LegState::Up);
}

#[test]
fn bye_from_the_pbx_hangs_up_the_phone_and_crossing_bye_gets_200() {
    let (mut w, ..) = answered(true);
    w.take();
    let bye = pbx_in_dialog(&w, "BYE", 2, None);
    let tsx = w.request(&bye);
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, tsx)), [200]);
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!((reqs[0].2, reqs[0].3.method().clone()), (LegId(1), Method::Bye));
    assert_one_end(&out, "completed");
    // The phone hung up at the same moment: its BYE crosses ours.
    let phone_bye = phone_in_dialog(&w, LegId(1), "BYE", 2, None);
    let tsx = w.request(&phone_bye);
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, tsx)), [200]);
    assert!(World::records(&out).is_empty() && World::requests(&out).is_empty());
    assert!(!w.call.is_finished());
    w.respond(reqs[0].1, &reply(&reqs[0].3, 481, "x", None, ""));
    assert!(w.call.is_finished());
}

#[test]
fn in_dialog_request_with_old_cseq_gets_500_and_unknown_tag_481() {
    let (mut w, ..) = answered(true);
    w.take();
    let old = pbx_in_dialog(&w, "INFO", 1, None);
    let tsx = w.request(&old);
    assert_eq!(status_of(&World::responses(&w.take(), tsx)), [500]);
    let mut stranger = pbx_in_dialog(&w, "BYE", 5, None);
    stranger.headers_mut().set(HeaderName::From, "<sip:x@y>;tag=other").unwrap();
    let tsx = w.request(&stranger);
    assert_eq!(status_of(&World::responses(&w.take(), tsx)), [481]);
    assert_eq!(w.call.phase(), Phase::Answered);
}

/// A re-INVITE with an offer from one side reaches the other with that
/// offer, the answer comes back, we ACK the far side and the originator's
/// ACK stops our 2xx.
fn reinvite_roundtrip(from_pbx: bool) {
    let (mut w, ..) = answered(true);
    w.take();
    let hold = PBX_SDP.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    let (req, to_leg) = if from_pbx {
        (pbx_in_dialog(&w, "INVITE", 2, Some(&hold)), LegId(1))
    } else {
        (phone_in_dialog(&w, LegId(1), "INVITE", 2, Some(&hold)), LegId(0))
    };
    let tsx = w.request(&req);
    let out = w.take();
    let relayed = World::requests(&out);
    assert_eq!(relayed.len(), 1);
    let (_, id, leg, fwd) = relayed[0].clone();
    assert_eq!(leg, to_leg);
    assert_eq!(*fwd.method(), Method::Invite);
    assert_eq!(body_str(fwd.body()), hold);
    // Our own CSeq on the far leg: 1 (PBX leg, our first request) or 2
    // (phone leg, after our INVITE).
    assert_eq!(fwd.headers().cseq().unwrap().seq, if from_pbx { 2 } else { 1 });
    let answer = PHONE_SDP.replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n");
    let tag = fwd.headers().to().unwrap().tag().unwrap().to_owned();
    w.respond(id, &reply(&fwd, 200, &tag, Some(&answer), "sip:far@198.51.100.77"));
    let out = w.take();
    let back = World::responses(&out, tsx);
    assert_eq!(status_of(&back), [200]);
    assert_eq!(body_str(back[0].body()), answer);
    let acks = World::acks(&out);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].1.headers().cseq().unwrap().seq, fwd.headers().cseq().unwrap().seq);
    // The far side's 2xx Contact refreshed its target.
    assert_eq!(
        w.call.legs()[usize::from(to_leg.0)].dialog().unwrap().remote_target().as_str(),
        "sip:far@198.51.100.77"
    );
    // Our 2xx to the originator is retransmitted until its ACK.
    w.advance(T1);
    assert_eq!(w.take().iter().filter(|o| matches!(o.cmd, Command::Retransmit { .. })).count(), 1);
    let ack = if from_pbx { pbx_in_dialog(&w, "ACK", 2, None) } else { phone_in_dialog(&w, LegId(1), "ACK", 2, None) };
    w.ack(&ack);
    w.advance(Duration::from_secs(10));
    assert!(w.take().iter().all(|o| !matches!(o.cmd, Command::Retransmit { .. })));
}

#[test]
fn reinvite_from_the_pbx_is_relayed_with_its_offer_and_answer() {
    reinvite_roundtrip(true);
}

#[test]
fn reinvite_from_the_phone_is_relayed_with_its_offer_and_answer() {
    reinvite_roundtrip(false);
}

#[test]
fn offerless_reinvite_gets_its_offer_in_the_2xx_and_answer_in_the_ack() {
    let (mut w, ..) = answered(true);
    w.take();
    let tsx = w.request(&pbx_in_dialog(&w, "INVITE", 2, None));
    let (_, id, _, fwd) = World::requests(&w.take()).remove(0);
    assert!(fwd.body().is_empty());
    let tag = fwd.headers().to().unwrap().tag().unwrap().to_owned();
    w.respond(id, &reply(&fwd, 200, &tag, Some(PHONE_SDP), "sip:alice@198.51.100.1"));
    let out = w.take();
    assert_eq!(body_str(World::responses(&out, tsx)[0].body()), PHONE_SDP);
    assert!(World::acks(&out).is_empty());
    w.ack(&pbx_in_dialog(&w, "ACK", 2, Some(PBX_SDP)));
    let acks = World::acks(&w.take());
    assert_eq!(acks.len(), 1);
    assert_eq!(body_str(acks[0].1.body()), PBX_SDP);
    assert_eq!(acks[0].1.headers().cseq().unwrap().seq, 2);
}

#[test]
fn failed_reinvite_leaves_the_session_and_accepts_the_next_offer() {
    let (mut w, ..) = answered(true);
    w.take();
    let tsx = w.request(&pbx_in_dialog(&w, "INVITE", 2, Some(PBX_SDP)));
    let (_, id, _, fwd) = World::requests(&w.take()).remove(0);
    assert_eq!(w.call.legs()[1].offer_answer(), OfferAnswer::OfferSent(Placement::Invite));
    let tag = fwd.headers().to().unwrap().tag().unwrap().to_owned();
    w.respond(id, &reply(&fwd, 488, &tag, None, ""));
    assert_eq!(status_of(&World::responses(&w.take(), tsx)), [488]);
    assert!(w.call.legs().iter().all(|l| l.offer_answer() == OfferAnswer::Stable));
    assert_eq!(w.call.phase(), Phase::Answered);
    w.request(&pbx_in_dialog(&w, "INVITE", 3, Some(PBX_SDP)));
    assert_eq!(World::requests(&w.take()).len(), 1, "the next offer is relayed");
}

/// Glare: an offer while another is in progress gets 491 from us,
/// whichever side started first.
fn glare(pbx_first: bool) {
    let (mut w, ..) = answered(true);
    w.take();
    let pbx = pbx_in_dialog(&w, "INVITE", 2, Some(PBX_SDP));
    let phone = phone_in_dialog(&w, LegId(1), "INVITE", 2, Some(PHONE_SDP));
    let (first, second) = if pbx_first { (pbx, phone) } else { (phone, pbx) };
    w.request(&first);
    assert_eq!(World::requests(&w.take()).len(), 1);
    let tsx = w.request(&second);
    let out = w.take();
    let r = World::responses(&out, tsx);
    assert_eq!(status_of(&r), [491]);
    assert!(World::requests(&out).is_empty());
    // An UPDATE with an offer meets the same rule.
    let upd = if pbx_first {
        phone_in_dialog(&w, LegId(1), "UPDATE", 3, Some(PHONE_SDP))
    } else {
        pbx_in_dialog(&w, "UPDATE", 3, Some(PBX_SDP))
    };
    let tsx = w.request(&upd);
    assert_eq!(status_of(&World::responses(&w.take(), tsx)), [491]);
}

#[test]
fn glare_started_by_the_pbx_gets_491() {
    glare(true);
}

#[test]
fn glare_started_by_the_phone_gets_491() {
    glare(false);
}

/// UPDATE (an offer answered in its 2xx, no ACK) and INFO (a body that is
/// no SDP, passed unchanged) from `from_pbx`'s side.
fn update_and_info(from_pbx: bool) {
    let (mut w, ..) = answered(true);
    w.take();
    let mk = |w: &World, m: &str, seq: u32, body: Option<&str>| {
        if from_pbx { pbx_in_dialog(w, m, seq, body) } else { phone_in_dialog(w, LegId(1), m, seq, body) }
    };
    let upd = mk(&w, "UPDATE", 2, Some(PBX_SDP));
    let tsx = w.request(&upd);
    let (_, id, _, fwd) = World::requests(&w.take()).remove(0);
    assert_eq!((fwd.method().as_str(), body_str(fwd.body())), ("UPDATE", PBX_SDP));
    let tag = fwd.headers().to().unwrap().tag().unwrap().to_owned();
    w.respond(id, &reply(&fwd, 200, &tag, Some(PHONE_SDP), "sip:x@198.51.100.1"));
    let out = w.take();
    assert_eq!(body_str(World::responses(&out, tsx)[0].body()), PHONE_SDP);
    assert!(World::acks(&out).is_empty(), "no ACK for an UPDATE");
    assert!(w.call.legs().iter().all(|l| l.offer_answer() == OfferAnswer::Stable));
    let dtmf = "Signal=5\r\nDuration=160\r\n";
    let mut info = mk(&w, "INFO", 3, None);
    info.headers_mut().set(HeaderName::ContentType, "application/dtmf-relay").unwrap();
    info.headers_mut().push(HeaderName::new("Info-Package").unwrap(), "dtmf").unwrap();
    info.set_body(bytes::Bytes::from(dtmf));
    let tsx = w.request(&info);
    let (_, id, _, fwd) = World::requests(&w.take()).remove(0);
    assert_eq!(fwd.headers().content_type().unwrap().unwrap().as_str(), "application/dtmf-relay");
    assert_eq!(body_str(fwd.body()), dtmf);
    let package = fwd.headers().get(&HeaderName::new("Info-Package").unwrap()).and_then(|h| h.value_str());
    assert_eq!(package, Some("dtmf"), "RFC 6086: the package travels with its body");
    let tag = fwd.headers().to().unwrap().tag().unwrap().to_owned();
    w.respond(id, &reply(&fwd, 200, &tag, None, "sip:x@198.51.100.1"));
    assert_eq!(status_of(&World::responses(&w.take(), tsx)), [200]);
}

#[test]
fn update_and_info_from_the_pbx_are_relayed() {
    update_and_info(true);
}

#[test]
fn update_and_info_from_the_phone_are_relayed() {
    update_and_info(false);
}

#[test]
fn relayed_request_that_times_out_is_answered_408() {
    let (mut w, ..) = answered(true);
    w.take();
    let tsx = w.request(&pbx_in_dialog(&w, "INFO", 2, None));
    let (_, id, ..) = World::requests(&w.take()).remove(0);
    w.call.handle_request_failed(w.now, id, 408);
    w.collect();
    assert_eq!(status_of(&World::responses(&w.take(), tsx)), [408]);
    assert_eq!(w.call.phase(), Phase::Answered);
}

#[test]
fn every_fork_failing_answers_the_best_failure() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)], vec![fork("bob", 2)]], Some(PBX_SDP));
    let reqs = World::requests(&w.take());
    w.respond(reqs[0].1, &reply(&reqs[0].3, 404, "a", None, ""));
    assert!(World::responses(&w.take(), 1).is_empty(), "bob still rings");
    w.respond(reqs[1].1, &reply(&reqs[1].3, 486, "b", None, ""));
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, 1)), [486]);
    assert_one_end(&out, "busy");
    assert!(w.call.is_finished());
}

#[test]
fn no_reachable_fork_answers_480_at_once() {
    let mut w = World::new(RingStrategy::RingAll, vec![], Some(PBX_SDP));
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, 1)), [480]);
    assert_one_end(&out, "unavailable");
}

#[test]
fn phone_reinvite_before_the_pbx_ack_is_relayed() {
    // The PBX's ACK is still on its way when the phone (ACKed by us at
    // once) re-INVITEs: the offer/answer of the first exchange is complete,
    // so this is no glare.
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
    w.take();
    let tsx = w.request(&phone_in_dialog(&w, LegId(1), "INVITE", 2, Some(PHONE_SDP)));
    let out = w.take();
    assert!(World::responses(&out, tsx).is_empty());
    let reqs = World::requests(&out);
    assert_eq!((reqs.len(), reqs[0].2), (1, LegId(0)));
}

#[test]
fn forked_1xx_behind_one_fork_make_early_dialogs_and_the_2xx_confirms_one() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    // A proxy in front of alice forks: two 180s with two To tags.
    w.respond(id, &reply(&invite, 180, "x1", None, "sip:desk@198.51.100.1"));
    w.respond(id, &reply(&invite, 180, "x2", None, "sip:mobile@198.51.100.1"));
    w.respond(id, &reply(&invite, 180, "x2", None, "sip:mobile@198.51.100.1"));
    let tags: Vec<_> = w.call.legs()[1].early_dialogs().iter().map(|d| d.id().remote_tag.clone()).collect();
    assert_eq!(tags, ["x1", "x2"]);
    assert_eq!(status_of(&World::responses(&w.take(), 1)), [180, 180, 180]);
    w.respond(id, &reply(&invite, 200, "x2", Some(PHONE_SDP), "sip:mobile@198.51.100.1"));
    let leg = &w.call.legs()[1];
    let d = leg.dialog().expect("confirmed");
    assert_eq!((d.id().remote_tag.as_str(), d.state()), ("x2", crate::sip::dialog::DialogState::Confirmed));
    assert_eq!(d.remote_target().as_str(), "sip:mobile@198.51.100.1");
    assert!(leg.early_dialogs().is_empty());
    let acks = World::acks(&w.take());
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].1.headers().to().unwrap().tag(), Some("x2"));
}

#[test]
fn hang_up_during_a_relayed_reinvite_answers_it_and_still_acks_its_2xx() {
    let (mut w, ..) = answered(true);
    w.take();
    // The PBX re-INVITEs; before the phone answers, the phone hangs up.
    let tsx = w.request(&pbx_in_dialog(&w, "INVITE", 2, Some(PBX_SDP)));
    let (_, id, _, fwd) = World::requests(&w.take()).remove(0);
    let bye_tsx = w.request(&phone_in_dialog(&w, LegId(1), "BYE", 2, None));
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, bye_tsx)), [200]);
    assert_eq!(status_of(&World::responses(&out, tsx)), [487], "the PBX's re-INVITE is not left unanswered");
    assert_one_end(&out, "completed");
    // The phone's 2xx to the re-INVITE crossed its BYE: ACKed, not relayed.
    let tag = fwd.headers().to().unwrap().tag().unwrap().to_owned();
    w.respond(id, &reply(&fwd, 200, &tag, Some(PHONE_SDP), "sip:alice@198.51.100.1"));
    let out = w.take();
    assert_eq!(World::acks(&out).len(), 1);
    assert!(World::responses(&out, tsx).is_empty());
}

#[test]
fn dtmf_relay_bodies_parse_signal_and_duration() {
    use super::call::parse_dtmf_relay;
    assert_eq!(parse_dtmf_relay(b"Signal=5\r\nDuration=160\r\n"), Some(('5', 160)));
    assert_eq!(parse_dtmf_relay(b"Signal= 11\nDuration= 80\n"), Some(('#', 80)));
    assert_eq!(parse_dtmf_relay(b"signal=*\r\n"), Some(('*', 250)), "duration defaults");
    assert_eq!(parse_dtmf_relay(b"Signal=d\r\nDuration=999999\r\n"), Some(('D', 250)), "absurd durations ignored");
    assert_eq!(parse_dtmf_relay(b"Signal=12\r\n"), None);
    assert_eq!(parse_dtmf_relay(b"Duration=100\r\n"), None);
    assert_eq!(parse_dtmf_relay(b"\xff\xfe"), None);
}

// ------------------------------------------------ RFC 4028 session timers

/// The description an anchoring media session gives every leg.
const TG_SDP: &str =
    "v=0\r\no=trunkgate 7 7 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";

fn sdp(s: &str) -> Body {
    Body { content_type: "application/sdp".into(), bytes: bytes::Bytes::from(s.to_owned()) }
}

/// A media session that anchors the media as the relay will: every leg
/// gets [`TG_SDP`], so it has a description of its own per leg. It logs
/// what crosses it.
#[derive(Default, Clone)]
struct Anchored(Arc<std::sync::Mutex<Vec<String>>>);

impl Anchored {
    fn log(&self) -> Vec<String> {
        self.0.lock().expect("log").clone()
    }
}

impl MediaSession for Anchored {
    fn local_description(&self, _leg: LegId) -> Option<Body> {
        Some(sdp(TG_SDP))
    }
    fn offer(&mut self, from: LegId, to: LegId, offer: &Body) -> Result<Body, MediaError> {
        self.0.lock().expect("log").push(format!("offer {}->{}: {}", from.0, to.0, body_str(&offer.bytes)));
        Ok(sdp(TG_SDP))
    }
    fn answer(&mut self, from: LegId, to: LegId, answer: &Body) -> Result<Body, MediaError> {
        self.0.lock().expect("log").push(format!("answer {}->{}: {}", from.0, to.0, body_str(&answer.bytes)));
        Ok(sdp(TG_SDP))
    }
    fn refreshed(&mut self, leg: LegId, answer: &Body) -> Result<(), MediaError> {
        self.0.lock().expect("log").push(format!("refreshed {}: {}", leg.0, body_str(&answer.bytes)));
        Ok(())
    }
    fn close_leg(&mut self, _leg: LegId) {}
}

/// The value of header `name`, if any.
fn hdr(h: &crate::sip::message::Headers, name: &str) -> Option<String> {
    h.get(&HeaderName::new(name).expect("name")).and_then(|v| v.value_str()).map(str::to_owned)
}

fn with_headers<M>(mut m: M, headers: &[(&str, &str)], get: fn(&mut M) -> &mut crate::sip::message::Headers) -> M {
    for (n, v) in headers {
        get(&mut m).push(HeaderName::new(n).expect("name"), v).expect("value");
    }
    m
}

fn req_with(r: Request, headers: &[(&str, &str)]) -> Request {
    with_headers(r, headers, Request::headers_mut)
}

fn resp_with(r: Response, headers: &[(&str, &str)]) -> Response {
    with_headers(r, headers, Response::headers_mut)
}

/// A call whose PBX INVITE (early offer) carries `pbx` header lines, rung
/// to alice who answers with `phone` headers, the PBX's ACK in: the start
/// of every session timer test.
fn answered_with(pbx: &str, phone: &[(&str, &str)], media: Box<dyn MediaSession>) -> (World, Vec<Out>) {
    let mut w =
        World::with(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], pbx_invite_with(pbx, Some(PBX_SDP)), media);
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    let ok = resp_with(reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"), phone);
    w.respond(id, &ok);
    let out = w.take();
    w.ack(&pbx_in_dialog(&w, "ACK", 1, None));
    (w, out)
}

/// Nothing at all went to the PBX: no response, no request, no ACK.
fn assert_pbx_untouched(out: &[Out]) {
    for o in out {
        match &o.cmd {
            Command::Respond { .. } | Command::Retransmit { .. } => panic!("the PBX got {o:?}"),
            Command::Request { leg, .. } => assert_ne!(*leg, LegId::ORIGIN, "{o:?}"),
            Command::Ack { peer, .. } => assert_ne!(peer.target.addr, addr("192.0.2.10:5060"), "{o:?}"),
            _ => {}
        }
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;
const ALLOW_UPDATE: (&str, &str) = ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE");
const WE_REFRESH_1800: (&str, &str) = ("Session-Expires", "1800;refresher=uac");

#[test]
fn too_small_session_interval_on_the_invite_gets_422_before_anything_rings() {
    let invite = pbx_invite_with("Supported: timer\r\nSession-Expires: 89\r\n", Some(PBX_SDP));
    let mut w = World::with(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], invite, Box::new(Passthrough));
    let out = w.take();
    let r = World::responses(&out, 1);
    assert_eq!(status_of(&r), [422], "no 100 Trying, no ringing: {out:?}");
    assert_eq!(r[0].reason_lossy(), "Session Interval Too Small");
    assert_eq!(hdr(r[0].headers(), "Min-SE").as_deref(), Some("90"));
    assert_eq!(
        hdr(r[0].headers(), "Warning").as_deref(),
        Some("399 tg.test \"session-interval-too-small: session interval too small\"")
    );
    assert!(World::requests(&out).is_empty(), "no fork rang");
    let rec = assert_one_end(&out, "failed");
    assert_eq!((rec.sip_status, rec.reason.as_deref()), (Some(422), Some("session-interval-too-small")));
    assert!(w.call.is_finished());
    // Nothing more, ever: no second record, no second release.
    w.call.handle_cancel(w.now);
    w.call.handle_shutdown(w.now);
    w.collect();
    w.advance(S(3600));
    assert!(w.take().is_empty());
    // Exactly Min-SE is accepted: the call rings.
    let invite = pbx_invite_with("Supported: timer\r\nSession-Expires: 90\r\n", Some(PBX_SDP));
    let mut w = World::with(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], invite, Box::new(Passthrough));
    let out = w.take();
    assert!(World::responses(&out, 1).is_empty(), "the 100 is the transaction's: {out:?}");
    assert_eq!(World::requests(&out).len(), 1);
}

#[test]
fn too_small_session_interval_on_a_reinvite_gets_422_and_is_not_relayed() {
    let (mut w, ..) = answered(true);
    w.take();
    let changed = PBX_SDP.replace("o=pbx 1 1", "o=pbx 1 2");
    let reinvite = req_with(pbx_in_dialog(&w, "INVITE", 2, Some(&changed)), &[("Session-Expires", "60")]);
    let tsx = w.request(&reinvite);
    let out = w.take();
    let r = World::responses(&out, tsx);
    assert_eq!(status_of(&r), [422]);
    assert_eq!(hdr(r[0].headers(), "Min-SE").as_deref(), Some("90"));
    assert!(World::requests(&out).is_empty(), "the phone sees nothing");
    assert_eq!(w.call.phase(), Phase::Answered);
    assert!(w.call.legs().iter().all(|l| l.offer_answer() == OfferAnswer::Stable));
    // The same change asking for enough is relayed.
    let reinvite = req_with(pbx_in_dialog(&w, "INVITE", 3, Some(&changed)), &[("Session-Expires", "90")]);
    w.request(&reinvite);
    let reqs = World::requests(&w.take());
    assert_eq!((reqs.len(), reqs[0].2), (1, LegId(1)));
}

#[test]
fn our_2xx_to_the_pbx_carries_its_leg_timer_and_our_invite_asks_for_ours() {
    // (PBX headers, Session-Expires of our 2xx, Require of our 2xx)
    let cases = [
        ("Supported: timer\r\nSession-Expires: 1800;refresher=uac\r\n", Some("1800;refresher=uac"), Some("timer")),
        ("Supported: timer\r\nSession-Expires: 600\r\n", Some("600;refresher=uas"), Some("timer")),
        ("Session-Expires: 600;refresher=uac\r\n", Some("600;refresher=uac"), Some("timer")),
        ("Session-Expires: 600;refresher=uas\r\n", Some("600;refresher=uas"), None),
        ("Supported: timer\r\nSession-Expires: 7200\r\n", Some("1800;refresher=uas"), Some("timer")),
        ("Supported: timer\r\n", Some("1800;refresher=uas"), Some("timer")),
        ("", None, None),
    ];
    for (pbx, se, require) in cases {
        let mut w = World::with(
            RingStrategy::RingAll,
            vec![vec![fork("alice", 1)]],
            pbx_invite_with(pbx, Some(PBX_SDP)),
            Box::new(Passthrough),
        );
        let (_, id, _, invite) = World::requests(&w.take()).remove(0);
        let h = invite.headers();
        assert_eq!(
            (hdr(h, "Session-Expires"), hdr(h, "Min-SE"), hdr(h, "Supported")),
            (Some("1800".into()), Some("90".into()), Some("timer".into())),
            "the phone leg asks for our own interval whatever the PBX said ({pbx:?})"
        );
        w.respond(id, &reply(&invite, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"));
        let ok = World::responses(&w.take(), 1).pop().expect("200");
        assert_eq!(ok.status(), 200);
        let h = ok.headers();
        assert_eq!(hdr(h, "Session-Expires").as_deref(), se, "{pbx:?}");
        assert_eq!(hdr(h, "Require").as_deref(), require, "{pbx:?}");
        assert_eq!(hdr(h, "Supported").as_deref(), Some("timer"));
    }
}

#[test]
fn we_refresh_the_phone_leg_with_update_at_half_its_interval() {
    let (mut w, _) = answered_with("", &[WE_REFRESH_1800, ALLOW_UPDATE, ("Require", "timer")], Box::new(Passthrough));
    w.take();
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(900)));
    assert!(w.step());
    let out = w.take();
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1, "{out:?}");
    let (at, id, leg, upd) = reqs[0].clone();
    assert_eq!((at, leg, upd.method().as_str()), (S(900), LegId(1), "UPDATE"));
    assert_eq!(upd.uri().as_str(), "sip:alice@198.51.100.1:5060");
    assert_eq!(upd.headers().cseq().unwrap().seq, 2);
    assert!(upd.body().is_empty(), "an UPDATE refresh needs no SDP");
    let h = upd.headers();
    assert_eq!(hdr(h, "Session-Expires").as_deref(), Some("1800;refresher=uac"));
    assert_eq!(hdr(h, "Min-SE").as_deref(), Some("90"));
    assert_eq!(hdr(h, "Supported").as_deref(), Some("timer"));
    assert_pbx_untouched(&out);
    // Its 2xx restarts the timer: the next refresh at 900 + 900 s.
    let tag = upd.headers().to().unwrap().tag().unwrap().to_owned();
    w.respond(id, &resp_with(reply(&upd, 200, &tag, None, "sip:alice@198.51.100.1:5060"), &[WE_REFRESH_1800]));
    assert!(w.take().is_empty(), "nothing relayed, nothing ACKed");
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(1800)));
    assert!(w.step());
    let out = w.take();
    let reqs = World::requests(&out);
    assert_eq!(
        reqs.iter().map(|r| (r.0, r.2, r.3.headers().cseq().unwrap().seq)).collect::<Vec<_>>(),
        [(S(1800), LegId(1), 3)]
    );
    assert_pbx_untouched(&out);
    assert_eq!(w.call.phase(), Phase::Answered);
}

/// Alice does not allow UPDATE: we refresh her leg with a re-INVITE
/// offering `offered` (the description she already has).
fn reinvite_refresh(media: Box<dyn MediaSession>, offered: &str) {
    let (mut w, _) = answered_with("", &[WE_REFRESH_1800], media);
    w.take();
    assert!(w.step());
    let out = w.take();
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1, "{out:?}");
    let (at, id, leg, inv) = reqs[0].clone();
    assert_eq!((at, leg, inv.method().as_str()), (S(900), LegId(1), "INVITE"));
    assert_eq!(inv.headers().cseq().unwrap().seq, 2);
    assert_eq!(body_str(inv.body()), offered, "the same description, same version");
    assert_eq!(hdr(inv.headers(), "Session-Expires").as_deref(), Some("1800;refresher=uac"));
    assert_pbx_untouched(&out);
    assert_eq!(w.call.legs()[1].offer_answer(), OfferAnswer::OfferSent(Placement::Invite));
    // Her 2xx (her session unchanged) is ACKed on her leg only.
    let tag = inv.headers().to().unwrap().tag().unwrap().to_owned();
    let ok = resp_with(reply(&inv, 200, &tag, Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"), &[WE_REFRESH_1800]);
    w.respond(id, &ok);
    let out = w.take();
    let acks = World::acks(&out);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].0.target.addr, addr("198.51.100.1:5060"));
    assert_eq!(acks[0].1.headers().cseq().unwrap().seq, 2);
    assert!(acks[0].1.body().is_empty());
    assert_pbx_untouched(&out);
    assert!(w.call.legs().iter().all(|l| l.offer_answer() == OfferAnswer::Stable));
    // Our ACK was lost: her retransmitted 2xx is ACKed again.
    w.respond(id, &ok);
    let out = w.take();
    assert_eq!(World::acks(&out).len(), 1);
    assert_pbx_untouched(&out);
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(1800)));
}

#[test]
fn we_refresh_a_phone_without_update_by_reinvite_with_the_media_sessions_description() {
    reinvite_refresh(Box::new(Anchored::default()), TG_SDP);
}

#[test]
fn we_refresh_a_phone_without_update_by_reinvite_with_the_description_it_has_in_passthrough() {
    // Passthrough keeps no description: the one we last sent her (the
    // PBX's) is offered again.
    reinvite_refresh(Box::new(Passthrough), PBX_SDP);
}

#[test]
fn we_refresh_the_pbx_leg_when_it_leaves_refreshing_to_us() {
    let pbx = "Supported: timer\r\nSession-Expires: 600\r\nAllow: INVITE, ACK, BYE, CANCEL, UPDATE\r\n";
    let (mut w, _) = answered_with(pbx, &[], Box::new(Passthrough));
    w.take();
    assert!(w.step());
    let out = w.take();
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1, "{out:?}");
    let (at, _, leg, upd) = &reqs[0];
    assert_eq!((*at, *leg, upd.method().as_str()), (S(300), LegId(0), "UPDATE"));
    assert_eq!(upd.uri().as_str(), "sip:pbx@192.0.2.10:5060");
    assert_eq!(hdr(upd.headers(), "Session-Expires").as_deref(), Some("600;refresher=uac"));
    assert_eq!(upd.headers().to().unwrap().tag(), Some("pbx"));
}

/// Our refresh of alice's leg fails with `status` (`None`: no answer at
/// all, the transaction timed out).
fn failed_refresh_ends_the_call(status: Option<u16>) {
    let (mut w, _) = answered_with("", &[WE_REFRESH_1800, ALLOW_UPDATE], Box::new(Passthrough));
    w.take();
    assert!(w.step());
    let (_, id, _, upd) = World::requests(&w.take()).remove(0);
    match status {
        Some(s) => w.respond(id, &reply(&upd, s, "ph1", None, "")),
        None => {
            w.call.handle_request_failed(w.now, id, 408);
            w.collect();
        }
    }
    let out = w.take();
    let byes: Vec<_> = World::requests(&out).iter().map(|r| (r.0, r.2, r.3.method().as_str().to_owned())).collect();
    assert_eq!(byes, [(S(900), LegId(0), "BYE".into()), (S(900), LegId(1), "BYE".into())]);
    let rec = assert_one_end(&out, "failed");
    assert_eq!(rec.reason.as_deref(), Some("session-timer-failed"));
    assert_eq!(rec.ended_at, Some(1_000_000 + 900));
}

#[test]
fn refresh_answered_481_ends_the_call_with_session_timer_failed() {
    failed_refresh_ends_the_call(Some(481));
}

#[test]
fn refresh_answered_408_ends_the_call_with_session_timer_failed() {
    failed_refresh_ends_the_call(Some(408));
}

#[test]
fn refresh_that_times_out_ends_the_call_with_session_timer_failed() {
    failed_refresh_ends_the_call(None);
}

#[test]
fn refresh_glare_is_retried_and_an_update_refused_becomes_a_reinvite() {
    let (mut w, _) = answered_with("", &[WE_REFRESH_1800, ALLOW_UPDATE], Box::new(Passthrough));
    w.take();
    assert!(w.step());
    let (_, id, _, upd) = World::requests(&w.take()).remove(0);
    // 491: again 3 s later (we own her leg's Call-ID, §14.1), the call up.
    w.respond(id, &reply(&upd, 491, "ph1", None, ""));
    assert!(w.take().is_empty());
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(903)));
    assert!(w.step());
    let (at, id, _, upd) = World::requests(&w.take()).remove(0);
    assert_eq!((at, upd.method().as_str(), upd.headers().cseq().unwrap().seq), (S(903), "UPDATE", 3));
    // She claimed UPDATE but does not implement it: a re-INVITE at once.
    w.respond(id, &reply(&upd, 501, "ph1", None, ""));
    let reqs = World::requests(&w.take());
    assert_eq!(
        reqs.iter().map(|r| (r.0, r.3.method().as_str().to_owned())).collect::<Vec<_>>(),
        [(S(903), "INVITE".to_owned())]
    );
    assert_eq!(body_str(reqs[0].3.body()), PBX_SDP);
    assert_eq!(w.call.phase(), Phase::Answered);
}

#[test]
fn a_pbx_that_stops_refreshing_is_hung_up_at_the_rfc_4028_deadline() {
    let pbx = "Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n";
    let (mut w, out) = answered_with(pbx, &[], Box::new(Passthrough));
    let ok = World::responses(&out, 1).pop().expect("200");
    assert_eq!(hdr(ok.headers(), "Session-Expires").as_deref(), Some("120;refresher=uac"));
    w.take();
    // 120 − min(32, 120/3) = 88 s after the answer.
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(88)));
    // The PBX refreshes at 60 s with an UPDATE: answered here.
    w.advance(S(60));
    assert!(w.take().is_empty(), "nothing before its refresh");
    let upd = req_with(
        pbx_in_dialog(&w, "UPDATE", 2, None),
        &[("Supported", "timer"), ("Session-Expires", "120;refresher=uac")],
    );
    let tsx = w.request(&upd);
    let out = w.take();
    let r = World::responses(&out, tsx);
    assert_eq!(status_of(&r), [200]);
    assert_eq!(hdr(r[0].headers(), "Session-Expires").as_deref(), Some("120;refresher=uac"));
    assert_eq!(hdr(r[0].headers(), "Require").as_deref(), Some("timer"));
    assert!(r[0].body().is_empty());
    assert!(World::requests(&out).is_empty(), "a refresh is not relayed to the phone");
    // Then nothing: BYE on both legs at 60 + 88 s, not a moment before.
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(148)));
    w.advance(S(88) - Duration::from_millis(1));
    assert!(w.take().is_empty());
    assert!(w.step());
    let out = w.take();
    let byes: Vec<_> = World::requests(&out).iter().map(|r| (r.0, r.2, r.3.method().as_str().to_owned())).collect();
    assert_eq!(byes, [(S(148), LegId(0), "BYE".into()), (S(148), LegId(1), "BYE".into())]);
    let rec = assert_one_end(&out, "failed");
    assert_eq!(rec.reason.as_deref(), Some("session-expired"));
}

#[test]
fn pbx_refresh_reinvite_with_unchanged_origin_is_answered_here_and_a_change_is_relayed() {
    let media = Anchored::default();
    let pbx = "Supported: timer\r\nSession-Expires: 1800;refresher=uac\r\n";
    let (mut w, _) = answered_with(pbx, &[], Box::new(media.clone()));
    w.take();
    let before = media.log().len();
    // Same o= session id and version as its INVITE: a refresh.
    let refresh = req_with(pbx_in_dialog(&w, "INVITE", 2, Some(PBX_SDP)), &[("Session-Expires", "1800;refresher=uac")]);
    w.advance(S(600));
    let tsx = w.request(&refresh);
    let out = w.take();
    let r = World::responses(&out, tsx);
    assert_eq!(status_of(&r), [200]);
    assert_eq!(body_str(r[0].body()), TG_SDP, "answered with the media session's description of the leg");
    assert_eq!(hdr(r[0].headers(), "Session-Expires").as_deref(), Some("1800;refresher=uac"));
    assert!(World::requests(&out).is_empty() && World::acks(&out).is_empty(), "the phone sees nothing: {out:?}");
    assert_eq!(media.log().len(), before, "no offer crossed the media session");
    // Our 2xx is retransmitted until its ACK.
    w.advance(T1);
    assert_eq!(w.take().iter().filter(|o| matches!(o.cmd, Command::Retransmit { .. })).count(), 1);
    w.ack(&pbx_in_dialog(&w, "ACK", 2, None));
    // The refresh restarted the PBX leg's timer: expiry 1768 s after it.
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(600) + S(1768)));
    // A changed session (new o= version) is relayed to the phone.
    let hold = PBX_SDP.replace("o=pbx 1 1", "o=pbx 1 2").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    let tsx = w.request(&pbx_in_dialog(&w, "INVITE", 3, Some(&hold)));
    let out = w.take();
    assert!(World::responses(&out, tsx).is_empty());
    let reqs = World::requests(&out);
    assert_eq!((reqs.len(), reqs[0].2, reqs[0].3.method().as_str()), (1, LegId(1), "INVITE"));
    assert_eq!(media.log().last().map(String::as_str), Some(format!("offer 0->1: {hold}").as_str()));
}

#[test]
fn offerless_reinvite_from_the_pbx_is_answered_with_our_description() {
    let media = Anchored::default();
    let (mut w, _) = answered_with("", &[], Box::new(media.clone()));
    w.take();
    let tsx = w.request(&pbx_in_dialog(&w, "INVITE", 2, None));
    let out = w.take();
    let r = World::responses(&out, tsx);
    assert_eq!(status_of(&r), [200]);
    assert_eq!(body_str(r[0].body()), TG_SDP, "our offer in the 2xx");
    assert!(World::requests(&out).is_empty(), "not relayed: {out:?}");
    assert_eq!(w.call.legs()[0].offer_answer(), OfferAnswer::OfferSent(Placement::Response));
    // The answer in the ACK goes to the media session for the PBX's leg
    // alone; the phone's leg is not disturbed.
    w.ack(&pbx_in_dialog(&w, "ACK", 2, Some(PBX_SDP)));
    let out = w.take();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(media.log().last().map(String::as_str), Some(format!("refreshed 0: {PBX_SDP}").as_str()));
    assert!(w.call.legs().iter().all(|l| l.offer_answer() == OfferAnswer::Stable));
    // Passthrough keeps no description: the same request is relayed.
    let (mut w, ..) = answered(true);
    w.take();
    w.request(&pbx_in_dialog(&w, "INVITE", 2, None));
    assert_eq!(World::requests(&w.take()).len(), 1);
}

#[test]
fn update_without_body_from_the_phone_is_answered_here_even_in_passthrough() {
    let (mut w, ..) = answered(true);
    w.take();
    let tsx = w.request(&phone_in_dialog(&w, LegId(1), "UPDATE", 2, None));
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, tsx)), [200]);
    assert!(World::requests(&out).is_empty(), "not relayed to the PBX");
}

#[test]
fn phone_422_is_retried_once_with_its_min_se() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.respond(id, &resp_with(reply(&invite, 422, "ph1", None, ""), &[("Min-SE", "3600")]));
    let out = w.take();
    assert!(World::responses(&out, 1).is_empty(), "the PBX is not told");
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 1);
    let (_, id, leg, again) = reqs[0].clone();
    assert_eq!((leg, again.method().as_str()), (LegId(1), "INVITE"));
    let (h, h0) = (again.headers(), invite.headers());
    assert_eq!(h.cseq().unwrap().seq, 2);
    assert_eq!(h.call_id().unwrap(), h0.call_id().unwrap());
    assert_eq!(h.from().unwrap().tag(), h0.from().unwrap().tag());
    assert_eq!(hdr(h, "Session-Expires").as_deref(), Some("3600"));
    assert_eq!(hdr(h, "Min-SE").as_deref(), Some("3600"));
    assert_eq!(body_str(again.body()), PBX_SDP);
    // A second 422 fails the fork: nobody else rings, the PBX gets 480.
    w.respond(id, &resp_with(reply(&again, 422, "ph1", None, ""), &[("Min-SE", "7200")]));
    let out = w.take();
    assert!(World::requests(&out).is_empty());
    assert_eq!(status_of(&World::responses(&out, 1)), [480]);
    assert_one_end(&out, "unavailable");
}

#[test]
fn phone_answering_the_retried_invite_answers_the_call() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1)]], Some(PBX_SDP));
    let (_, id, _, invite) = World::requests(&w.take()).remove(0);
    w.respond(id, &resp_with(reply(&invite, 422, "ph1", None, ""), &[("Min-SE", "3600")]));
    let (_, id, _, again) = World::requests(&w.take()).remove(0);
    let ok = resp_with(
        reply(&again, 200, "ph1", Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"),
        &[("Session-Expires", "3600;refresher=uac")],
    );
    w.respond(id, &ok);
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, 1)), [200]);
    let acks = World::acks(&out);
    assert_eq!(acks[0].1.headers().cseq().unwrap().seq, 2, "the ACK names the INVITE that was answered");
    w.ack(&pbx_in_dialog(&w, "ACK", 1, None));
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(1800)), "we refresh at half her 3600 s");
}

/// The PBX (with `pbx` headers) re-INVITEs with a changed session at
/// 60 s; alice answers with her timer. Returns the PBX's 2xx.
fn relayed_reinvite_at_60s(w: &mut World, pbx: &[(&str, &str)]) -> (Request, Response) {
    w.advance(S(60));
    let hold = PBX_SDP.replace("o=pbx 1 1", "o=pbx 1 2").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    let tsx = w.request(&req_with(pbx_in_dialog(w, "INVITE", 2, Some(&hold)), pbx));
    let (_, id, leg, fwd) = World::requests(&w.take()).remove(0);
    assert_eq!(leg, LegId(1));
    let tag = fwd.headers().to().unwrap().tag().unwrap().to_owned();
    let ok = resp_with(reply(&fwd, 200, &tag, Some(PHONE_SDP), "sip:alice@198.51.100.1:5060"), &[WE_REFRESH_1800]);
    w.respond(id, &ok);
    let r = World::responses(&w.take(), tsx).pop().expect("2xx");
    assert_eq!(r.status(), 200);
    w.ack(&pbx_in_dialog(w, "ACK", 2, None));
    (fwd, r)
}

#[test]
fn relayed_reinvite_carries_each_legs_own_timer() {
    let pbx = "Supported: timer\r\nSession-Expires: 120;refresher=uac\r\n";
    let (mut w, _) = answered_with(pbx, &[WE_REFRESH_1800, ALLOW_UPDATE], Box::new(Passthrough));
    w.take();
    let (fwd, ok) =
        relayed_reinvite_at_60s(&mut w, &[("Supported", "timer"), ("Session-Expires", "120;refresher=uac")]);
    // The phone's leg gets its own interval, not the PBX's.
    let h = fwd.headers();
    assert_eq!(
        (hdr(h, "Session-Expires"), hdr(h, "Min-SE"), hdr(h, "Supported")),
        (Some("1800;refresher=uac".into()), Some("90".into()), Some("timer".into()))
    );
    // The PBX's 2xx its own.
    assert_eq!(hdr(ok.headers(), "Session-Expires").as_deref(), Some("120;refresher=uac"));
    assert_eq!(hdr(ok.headers(), "Require").as_deref(), Some("timer"));
    // It refreshed the PBX's leg: its expiry is 60 + 88 s.
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(148)));
}

#[test]
fn relayed_reinvite_refreshes_the_far_leg_too() {
    let (mut w, _) = answered_with("", &[WE_REFRESH_1800, ALLOW_UPDATE], Box::new(Passthrough));
    w.take();
    relayed_reinvite_at_60s(&mut w, &[]);
    // Alice's 2xx restarted her leg's timer: our refresh at 60 + 900 s.
    assert_eq!(w.call.poll_timeout(), Some(w.t0 + S(960)));
}

#[test]
fn an_answered_legs_connection_closing_hangs_up_the_pbx_only() {
    let (mut w, ..) = answered(true);
    w.take();
    w.call.handle_leg_gone(w.now, LegId(1));
    w.collect();
    let out = w.take();
    // The browser cannot be reached: the BYE goes to the PBX alone.
    let reqs: Vec<_> = World::requests(&out).iter().map(|r| (r.2, r.3.method().clone())).collect();
    assert_eq!(reqs, [(LegId(0), Method::Bye)]);
    let rec = assert_one_end(&out, "completed");
    assert_eq!(rec.reason.as_deref(), Some(BROWSER_GONE));
    // Told twice (a sweep after the notice): nothing more happens.
    w.call.handle_leg_gone(w.now, LegId(1));
    w.collect();
    assert!(w.take().is_empty());
}

#[test]
fn a_ringing_forks_connection_closing_fails_that_fork_alone() {
    let mut w = World::new(RingStrategy::RingAll, vec![vec![fork("alice", 1), fork("bob", 2)]], Some(PBX_SDP));
    let out = w.take();
    let reqs = World::requests(&out);
    assert_eq!(reqs.len(), 2, "both forks ring");
    w.call.handle_leg_gone(w.now, reqs[0].2);
    w.collect();
    let out = w.take();
    assert!(World::requests(&out).is_empty(), "no CANCEL toward a closed connection, nothing toward bob");
    assert!(World::records(&out).is_empty(), "the call goes on with bob");
    // bob does not answer either: the PBX gets the best failure of the two.
    w.call.handle_leg_gone(w.now, reqs[1].2);
    w.collect();
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, 1)), [480]);
    assert_one_end(&out, "unavailable");
}

mod outbound;
