//! Regression tests for the bugs that made us drop rsipstack's message
//! module (DEPENDENCIES.md, "SIP messages: not rsip 0.4"), measured on
//! rsipstack 0.7.14:
//!
//! 1. `Via: a, b` on one line: the second value leaked into the first
//!    value's branch, so the top Via's branch (the transaction key) was
//!    wrong and the second hop vanished.
//! 2. `%2B` in an E.164 user part was re-escaped to `%252B` on
//!    serialization: the PBX then saw a different number.
//! 3. `;transport=udp` in a Contact URI was dropped on a typed round
//!    trip: later requests in the dialog went out on the wrong transport.
//! 4. An extension method such as `FOOBAR` was rejected by the parser, so
//!    the UAS could not answer the 501 RFC 3261 §8.2.1 requires.
//!
//! Plus rsip 0.4's failures on basic RFC 3261 input (compact forms,
//! folding, whitespace before the colon, truncated datagrams).

use super::*;

const INVITE_HEAD: &str = "INVITE sip:%2B4930123456@trunk.example.com;user=phone SIP/2.0\r\n";

fn request(text: &str) -> Request {
    match parse(text.as_bytes()) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

#[test]
fn comma_separated_vias_keep_their_own_branches() {
    let r = request(
        "OPTIONS sip:a@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK111, SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK222;received=192.0.2.1\r\n\
         Via: SIP/2.0/UDP pbx.example.com;branch=z9hG4bK333;rport\r\n\
         From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n\
         Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    let vias = r.headers().vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].branch(), Some("z9hG4bK111"));
    assert_eq!(vias[0].host(), Host::Domain("p1.example.com"));
    assert_eq!(vias[0].params().iter().count(), 1);
    assert_eq!(vias[1].branch(), Some("z9hG4bK222"));
    assert_eq!(vias[1].transport(), Transport::Tcp);
    assert_eq!(vias[1].port(), Some(5070));
    assert_eq!(vias[1].received(), Some("192.0.2.1".parse().unwrap()));
    assert_eq!(vias[2].branch(), Some("z9hG4bK333"));
    assert_eq!(vias[2].rport(), Some(Rport::Requested));
    assert_eq!(r.headers().top_via().unwrap().branch(), Some("z9hG4bK111"));
    // A response copies the line as it was: still two values on one line.
    let resp = Response::from_request(&r, 200, "OK");
    let text = String::from_utf8(resp.to_bytes()).unwrap();
    assert!(text.contains(
        "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK111, SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK222;received=192.0.2.1\r\n"
    ));
}

#[test]
fn escaped_plus_in_user_part_is_never_re_escaped() {
    let text = format!(
        "{INVITE_HEAD}Via: SIP/2.0/UDP pbx.example.com;branch=z9hG4bK1\r\n\
         From: \"Caller\" <sip:%2B4940111@pbx.example.com;user=phone>;tag=9\r\n\
         To: <sip:%2B4930123456@trunk.example.com;user=phone>\r\n\
         Call-ID: c2\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let r = request(&text);
    let ruri = r.uri().as_sip().unwrap();
    assert_eq!(ruri.user(), Some("%2B4930123456"));
    assert_eq!(ruri.user_decoded().as_deref(), Some(&b"+4930123456"[..]));
    assert_eq!(r.uri().to_string(), "sip:%2B4930123456@trunk.example.com;user=phone");
    let from = r.headers().from().unwrap();
    assert_eq!(from.uri().as_sip().unwrap().user(), Some("%2B4940111"));
    let out = String::from_utf8(r.to_bytes()).unwrap();
    assert!(!out.contains("%25"), "{out}");
    assert_eq!(out, text);
    // Decoding is single-pass: %252B decodes to %2B, never to +.
    assert_eq!(&*pct_decode(b"%252B"), b"%2B");
}

#[test]
fn contact_transport_param_survives_round_trip() {
    let text = "REGISTER sip:trunk.example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKr1;rport\r\n\
         From: <sip:pbx@trunk.example.com>;tag=a\r\nTo: <sip:pbx@trunk.example.com>\r\n\
         Call-ID: c3\r\nCSeq: 2 REGISTER\r\nMax-Forwards: 70\r\n\
         Contact: <sip:pbx@192.0.2.7:5060;transport=udp;line=x7>;expires=3600;q=0.5\r\n\
         Content-Length: 0\r\n\r\n";
    let r = request(text);
    let Contacts::List(contacts) = r.headers().contacts().unwrap() else { panic!("star") };
    let c = &contacts[0];
    let uri = c.uri().as_sip().unwrap();
    assert_eq!(uri.transport(), Some("udp"));
    assert_eq!(uri.params().value("line"), Some("x7"));
    assert_eq!(c.expires(), Some(Ok(3600)));
    assert_eq!(c.q(), Some(Ok(500)));
    assert_eq!(c.uri().to_string(), "sip:pbx@192.0.2.7:5060;transport=udp;line=x7");
    let out = String::from_utf8(r.to_bytes()).unwrap();
    assert!(out.contains("Contact: <sip:pbx@192.0.2.7:5060;transport=udp;line=x7>;expires=3600;q=0.5\r\n"));
    assert_eq!(out, text);
}

#[test]
fn extension_method_parses_and_gets_501_with_allow() {
    let r = request(
        "FOOBAR sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKf\r\n\
         From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: c4\r\n\
         CSeq: 1 FOOBAR\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(*r.method(), Method::Extension("FOOBAR".into()));
    let rej = check_request(&r, &CheckConfig::default()).unwrap_err();
    assert_eq!(rej.status, 501);
    assert!(
        rej.headers
            .iter()
            .any(|(n, v)| *n == HeaderName::Allow && v == "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE")
    );
    let resp = rej.to_response(&r, Some("t1")).unwrap();
    assert_eq!(resp.status(), 501);
    assert_eq!(resp.headers().to().unwrap().tag(), Some("t1"));
}

#[test]
fn rsip_failures_are_handled() {
    // Compact forms, folding, whitespace before the colon.
    let r = request(
        "OPTIONS sip:a@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKc\r\n\
         f: <sip:b@example.com>;tag=1\r\nt: <sip:a@example.com>\r\ni: c5\r\n\
         CSeq  :\r\n 1\r\n OPTIONS\r\nMax-Forwards: 70\r\nl: 0\r\n\r\n",
    );
    assert_eq!(r.headers().call_id().unwrap(), "c5");
    assert_eq!(r.headers().cseq().unwrap().seq, 1);
    assert!(r.validate().is_ok());
    // A datagram cut inside the header section is refused, not taken as
    // a message with junk as body.
    let cut = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;bra";
    assert_eq!(parse(cut), Err(ParseError::Truncated));
}
