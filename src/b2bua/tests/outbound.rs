//! Outbound calls in virtual time: a portal user's INVITE goes out through
//! the portal's trunks in order, failing over only where another trunk
//! could do better, and answering the PBX's digest challenges.

use super::*;
use crate::b2bua::outbound::Credentials;
use crate::sip::digest::{Algorithm, Authenticator, DigestConfig, DigestCredentials};

const INVITE_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// alice's INVITE to +442079460000, from her phone.
fn user_invite() -> Request {
    parse_req(&with_body(
        "INVITE sip:+442079460000@acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5062;branch=z9hG4bKu1\r\n\
Max-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@acme.example.com>;tag=al\r\nTo: <sip:+442079460000@acme.example.com>\r\n\
Call-ID: o1@alice\r\nCSeq: 2 INVITE\r\nContact: <sip:alice@198.51.100.1:5062>\r\n"
            .to_owned(),
        Some(PHONE_SDP),
    ))
}

fn attempt(trunk: &str, last_octet: u8, credentials: Option<Credentials>) -> TrunkAttempt {
    let host = format!("192.0.2.{last_octet}");
    TrunkAttempt {
        trunk: trunk.into(),
        uri: format!("sip:+442079460000@{host}"),
        to: format!("<sip:+442079460000@{host}>"),
        from: format!("\"Alice\" <sip:+15550100@{host}>"),
        extra: vec![("P-Asserted-Identity".into(), format!("<sip:+15550100@{host}>"))],
        peer: peer(&format!("{host}:5060")),
        credentials,
        invite_timeout: INVITE_TIMEOUT,
        answer_timeout: ANSWER_TIMEOUT,
    }
}

fn outbound_record() -> CallRecord {
    CallRecord {
        call_id: "o1@alice".into(),
        direction: "outbound".into(),
        caller: Some("alice".into()),
        callee: Some("+442079460000".into()),
        target_user: Some("alice".into()),
        trunk: None,
        ..record()
    }
}

impl World {
    fn outbound(attempts: Vec<TrunkAttempt>) -> World {
        let t0 = crate::clock::instant();
        let config = CallConfig {
            warning_host: Arc::from("tg.test"),
            t1: T1,
            t2: Duration::from_secs(4),
            session_expires: session_timer::DEFAULT_SESSION_EXPIRES,
            min_se: session_timer::DEFAULT_MIN_SE,
        };
        let call = Call::outbound(
            t0,
            config,
            Arc::new(CountingIds::default()),
            Box::new(Passthrough),
            OutboundCall {
                invite: user_invite(),
                tsx: 1,
                peer: peer("198.51.100.1:5062"),
                attempts,
                max_duration: MAX,
                lease_id: "lease-o1".into(),
                domain: "acme.example.com".into(),
                record: outbound_record(),
            },
        );
        let mut w = World { call, t0, now: t0, out: Vec::new(), next_tsx: 100 };
        w.collect();
        w
    }
}

/// The INVITEs sent, with their instant and the trunk's address.
fn invites(out: &[Out]) -> Vec<(Duration, ReqId, SocketAddr, Request)> {
    out.iter()
        .filter_map(|o| match &o.cmd {
            Command::Request { id, peer, request, .. } if *request.method() == Method::Invite => {
                Some((o.at, *id, peer.target.addr, request.clone()))
            }
            _ => None,
        })
        .collect()
}

fn methods_to(out: &[Out], to: &str) -> Vec<String> {
    out.iter()
        .filter_map(|o| match &o.cmd {
            Command::Request { peer, request, .. } if peer.target.addr == addr(to) => {
                Some(request.method().as_str().to_owned())
            }
            Command::Ack { peer, .. } if peer.target.addr == addr(to) => Some("ACK".to_owned()),
            _ => None,
        })
        .collect()
}

fn header(r: &Request, name: HeaderName) -> &str {
    r.headers().get(&name).and_then(|h| h.value_str()).unwrap_or("")
}

#[test]
fn the_first_trunk_gets_the_users_offer_with_the_trunks_number_and_caller_id() {
    let mut w = World::outbound(vec![attempt("t1", 1, None), attempt("t2", 2, None)]);
    let out = w.take();
    assert!(World::responses(&out, 1).is_empty(), "no 100 from the call: {out:?}");
    let sent = invites(&out);
    assert_eq!(sent.len(), 1, "one trunk at a time: {sent:?}");
    let (at, _, to, inv) = &sent[0];
    assert_eq!((*at, *to), (Duration::ZERO, addr("192.0.2.1:5060")));
    assert_eq!(inv.uri().as_str(), "sip:+442079460000@192.0.2.1");
    assert_eq!(header(inv, HeaderName::To), "<sip:+442079460000@192.0.2.1>");
    assert!(header(inv, HeaderName::From).starts_with("\"Alice\" <sip:+15550100@192.0.2.1>;tag="), "{inv:?}");
    assert_eq!(header(inv, HeaderName::PAssertedIdentity), "<sip:+15550100@192.0.2.1>");
    assert_ne!(header(inv, HeaderName::CallId), "o1@alice", "a call ID of our own");
    assert_eq!(body_str(inv.body()), PHONE_SDP, "the user's offer (media passes through here)");
    assert_eq!(w.call.legs()[1].kind(), call::LegKind::Trunk);
}

#[test]
fn a_503_moves_the_call_to_the_next_trunk_which_answers() {
    let mut w = World::outbound(vec![attempt("t1", 1, None), attempt("t2", 2, None)]);
    let (_, id1, _, inv1) = invites(&w.take()).remove(0);
    w.advance(Duration::from_millis(300));
    w.respond(id1, &reply(&inv1, 503, "p1", None, ""));
    let out = w.take();
    let sent = invites(&out);
    assert_eq!(sent.len(), 1);
    let (at, id2, to, inv2) = sent[0].clone();
    assert_eq!((at, to), (Duration::from_millis(300), addr("192.0.2.2:5060")), "at once, to the second trunk");
    assert!(World::responses(&out, 1).is_empty(), "the user hears nothing of the failure");
    w.respond(id2, &reply(&inv2, 180, "p2", None, "sip:pbx@192.0.2.2"));
    assert_eq!(status_of(&World::responses(&w.take(), 1)), vec![180]);
    w.advance(Duration::from_secs(2));
    w.respond(id2, &reply(&inv2, 200, "p2", Some(PBX_SDP), "sip:pbx@192.0.2.2"));
    let out = w.take();
    let ok = World::responses(&out, 1);
    assert_eq!(status_of(&ok), vec![200]);
    assert_eq!(body_str(ok[0].body()), PBX_SDP, "the PBX's answer reaches the user");
    assert_eq!(methods_to(&out, "192.0.2.2:5060"), vec!["ACK"]);
    assert!(methods_to(&out, "192.0.2.1:5060").is_empty(), "the failed trunk hears nothing more");
    // The user hangs up.
    w.ack(&parse_req(&format!(
        "ACK sip:trunkgate@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5062;branch=z9hG4bKu2\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@acme.example.com>;tag=al\r\nTo: <sip:+442079460000@acme.example.com>;tag={}\r\n\
Call-ID: o1@alice\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n",
        w.call.legs()[0].dialog().expect("A dialog").id().local_tag
    )));
    w.advance(Duration::from_secs(10));
    let bye = parse_req(&format!(
        "BYE sip:trunkgate@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5062;branch=z9hG4bKu3\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@acme.example.com>;tag=al\r\nTo: <sip:+442079460000@acme.example.com>;tag={}\r\n\
Call-ID: o1@alice\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n",
        w.call.legs()[0].dialog().expect("A dialog").id().local_tag
    ));
    let tsx = w.request(&bye);
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, tsx)), vec![200]);
    assert_eq!(methods_to(&out, "192.0.2.2:5060"), vec!["BYE"]);
    let rec = assert_one_end(&out, "completed");
    assert_eq!(rec.trunk.as_deref(), Some("t2"), "the trunk that carried the call");
    assert_eq!(rec.target_user.as_deref(), Some("alice"), "the portal user stays the caller");
    assert_eq!(rec.direction, "outbound");
    assert_eq!(rec.answered_at, Some(1_000_002), "answered 2.3 s in");
}

#[test]
fn a_busy_callee_is_the_answer_and_no_other_trunk_is_tried() {
    for (status, outcome) in [(486, "busy"), (600, "busy"), (603, "declined"), (404, "failed")] {
        let mut w = World::outbound(vec![attempt("t1", 1, None), attempt("t2", 2, None)]);
        let (_, id1, _, inv1) = invites(&w.take()).remove(0);
        w.respond(id1, &reply(&inv1, 180, "p1", None, "sip:pbx@192.0.2.1"));
        w.respond(id1, &reply(&inv1, status, "p1", None, ""));
        let out = w.take();
        assert!(invites(&out).is_empty(), "{status}: no second trunk");
        let expected = if status == 600 { 486 } else { status };
        assert_eq!(status_of(&World::responses(&out, 1)), vec![180, expected]);
        let rec = assert_one_end(&out, outcome);
        assert_eq!((rec.sip_status, rec.trunk.as_deref()), (Some(i64::from(expected)), Some("t1")));
    }
}

#[test]
fn a_silent_trunk_is_left_after_its_invite_timeout_without_a_cancel() {
    let mut w = World::outbound(vec![attempt("t1", 1, None), attempt("t2", 2, None)]);
    let (_, id1, _, inv1) = invites(&w.take()).remove(0);
    assert!(w.step());
    let out = w.take();
    let sent = invites(&out);
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].0, sent[0].2), (INVITE_TIMEOUT, addr("192.0.2.2:5060")));
    assert!(methods_to(&out, "192.0.2.1:5060").is_empty(), "no CANCEL before a provisional response (§9.1)");
    // The first trunk wakes up and answers: it is hung up.
    w.respond(id1, &reply(&inv1, 180, "p1", None, "sip:pbx@192.0.2.1"));
    assert!(World::responses(&w.take(), 1).is_empty(), "its ringing is not the call's");
    w.respond(id1, &reply(&inv1, 200, "p1", Some(PBX_SDP), "sip:pbx@192.0.2.1"));
    let out = w.take();
    assert_eq!(methods_to(&out, "192.0.2.1:5060"), vec!["ACK", "BYE"]);
    assert!(World::responses(&out, 1).is_empty());
    assert_eq!(w.call.phase(), call::Phase::Ringing, "still trying the second trunk");
}

#[test]
fn a_trunk_that_answered_rings_until_its_answer_timeout_then_the_call_ends() {
    let mut w = World::outbound(vec![attempt("t1", 1, None), attempt("t2", 2, None)]);
    let (_, id1, _, inv1) = invites(&w.take()).remove(0);
    w.advance(Duration::from_secs(1));
    w.respond(id1, &Response::from_request(&inv1, 100, "Trying"));
    assert!(w.step());
    let out = w.take();
    assert!(invites(&out).is_empty(), "a trunk that answered is not failed over on time");
    assert_eq!(out.first().map(|o| o.at), Some(Duration::from_secs(1) + ANSWER_TIMEOUT));
    assert_eq!(methods_to(&out, "192.0.2.1:5060"), vec!["CANCEL"]);
    assert_eq!(status_of(&World::responses(&out, 1)), vec![480]);
    assert_one_end(&out, "no-answer");
}

#[test]
fn when_every_trunk_fails_the_user_gets_503_trunks_failed() {
    let mut w = World::outbound(vec![attempt("t1", 1, None), attempt("t2", 2, None)]);
    let (_, id1, _, inv1) = invites(&w.take()).remove(0);
    w.respond(id1, &reply(&inv1, 500, "p1", None, ""));
    let (_, id2, _, _) = invites(&w.take()).remove(0);
    w.call.handle_request_failed(w.now, id2, 408);
    w.collect();
    let out = w.take();
    let r = World::responses(&out, 1);
    assert_eq!(status_of(&r), vec![503]);
    let warning = r[0].headers().get(&HeaderName::Warning).and_then(|h| h.value_str()).unwrap_or("");
    assert_eq!(warning, "399 tg.test \"trunks-failed: no trunk to the PBX answered\"");
    let rec = assert_one_end(&out, "failed");
    assert_eq!((rec.reason.as_deref(), rec.trunk.as_deref()), (Some("trunks-failed"), Some("t2")));
}

/// The PBX challenges with our own authenticator's 407; the INVITE comes
/// again (next CSeq, same Call-ID and From tag) with a Proxy-Authorization
/// that authenticator accepts for the trunk's credentials.
#[test]
fn a_407_is_answered_with_the_trunks_credentials() {
    let creds = Credentials { username: "tg-trunk".into(), password: "s3cret!".into() };
    let mut w = World::outbound(vec![attempt("t1", 1, Some(creds.clone())), attempt("t2", 2, None)]);
    let (_, id1, _, inv1) = invites(&w.take()).remove(0);
    let mut pbx = Authenticator::new(
        DigestConfig { algorithms: vec![Algorithm::Sha256, Algorithm::Md5], ..DigestConfig::default() },
        [9; 32],
    );
    let now = 1_780_000_000;
    let mut challenge = reply(&inv1, 407, "p1", None, "");
    for c in pbx.challenges("pbx.example.com", now, [3; 8], false) {
        challenge.headers_mut().push(HeaderName::ProxyAuthenticate, c).expect("header");
    }
    w.respond(id1, &challenge);
    let out = w.take();
    let sent = invites(&out);
    assert_eq!(sent.len(), 1);
    let (_, id1b, to, again) = sent[0].clone();
    assert_eq!(to, addr("192.0.2.1:5060"), "the same trunk");
    assert_eq!(header(&again, HeaderName::CallId), header(&inv1, HeaderName::CallId));
    assert_eq!(header(&again, HeaderName::From), header(&inv1, HeaderName::From));
    assert_eq!(header(&again, HeaderName::CSeq), "2 INVITE");
    let auth = again.headers().proxy_authorization().expect("parses");
    assert_eq!(auth.len(), 1);
    let c = DigestCredentials::from_params(
        auth[0].params().iter().map(|p| (p.name, p.unquoted_value().map(|v| v.into_owned()).unwrap_or_default())),
    )
    .expect("digest credentials");
    assert_eq!((c.username.as_str(), c.algorithm.as_deref()), ("tg-trunk", Some("SHA-256")), "the stronger one");
    let ha1 = crate::credentials::Ha1::compute("tg-trunk", "pbx.example.com", "s3cret!");
    let verdict = pbx.verify(&c, "INVITE", "pbx.example.com", |_| Some(ha1.sha256.clone()), now);
    assert_eq!(verdict, Ok(Algorithm::Sha256), "the PBX accepts our answer");
    assert!(!format!("{out:?}").contains("s3cret!"), "the secret is never in what we send or log");
    // The PBX refuses again (wrong credentials, not a stale nonce): that
    // trunk has failed; the next one is tried.
    let mut again_407 = reply(&again, 407, "p1", None, "");
    for c in pbx.challenges("pbx.example.com", now, [4; 8], false) {
        again_407.headers_mut().push(HeaderName::ProxyAuthenticate, c).expect("header");
    }
    w.respond(id1b, &again_407);
    let sent = invites(&w.take());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].2, addr("192.0.2.2:5060"));
}

/// A 604 from one carrier may not be another's: the next trunk is tried,
/// and when it says the same, the user hears that 604 (not 503).
#[test]
fn a_604_fails_over_and_reaches_the_user_when_every_trunk_says_it() {
    let mut w = World::outbound(vec![attempt("t1", 1, None), attempt("t2", 2, None)]);
    let (_, id1, _, inv1) = invites(&w.take()).remove(0);
    w.respond(id1, &reply(&inv1, 604, "p1", None, ""));
    let sent = invites(&w.take());
    assert_eq!(sent.len(), 1, "the second trunk");
    let (_, id2, _, inv2) = sent[0].clone();
    w.respond(id2, &reply(&inv2, 604, "p2", None, ""));
    let out = w.take();
    assert_eq!(status_of(&World::responses(&out, 1)), vec![604]);
    assert_one_end(&out, "failed");
}
