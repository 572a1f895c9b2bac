//! Unit tests across the message module: round trips, framing edges,
//! typed views, checks, the stream framer.

use super::*;

const WSINV: &[u8] = include_bytes!("../../../tests/data/sip-torture/wsinv.dat");
const LONGREQ: &[u8] = include_bytes!("../../../tests/data/sip-torture/longreq.dat");
const ESC01: &[u8] = include_bytes!("../../../tests/data/sip-torture/esc01.dat");
const INTMETH: &[u8] = include_bytes!("../../../tests/data/sip-torture/intmeth.dat");
const MPART01: &[u8] = include_bytes!("../../../tests/data/sip-torture/mpart01.dat");

fn req(data: &[u8]) -> Request {
    match parse(data) {
        Ok(Message::Request(r)) => r,
        other => panic!("not a request: {other:?}"),
    }
}

fn resp(data: &[u8]) -> Response {
    match parse(data) {
        Ok(Message::Response(r)) => r,
        other => panic!("not a response: {other:?}"),
    }
}

fn options(extra: &str) -> String {
    format!(
        "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n\
         From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: id1\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n{extra}\r\n"
    )
}

/// Every header value of `a` equals the one of `b`, in order.
fn assert_same_values(a: &Headers, b: &Headers) {
    let av: Vec<_> = a.iter().map(|h| (h.name().clone(), h.value().to_vec())).collect();
    let bv: Vec<_> = b.iter().map(|h| (h.name().clone(), h.value().to_vec())).collect();
    assert_eq!(av, bv);
}

#[test]
fn round_trip_keeps_values_byte_exact() {
    for data in [WSINV, LONGREQ, ESC01, INTMETH, MPART01] {
        let first = req(data);
        let bytes = first.to_bytes();
        let second = req(&bytes);
        assert_same_values(first.headers(), second.headers());
        assert_eq!(first.body(), second.body());
        assert_eq!(first.uri(), second.uri());
        assert_eq!(bytes, second.to_bytes(), "serialization is a fixed point");
        // Every raw value appears verbatim in the output.
        for h in first.headers() {
            assert!(memchr::memmem::find(&bytes, h.value()).is_some(), "{:?} missing", h);
        }
    }
}

#[test]
fn round_trip_normalises_names_and_line_endings() {
    let lf = "OPTIONS sip:a@example.com SIP/2.0\nv: SIP/2.0/UDP h;branch=z9hG4bKx\ncseq: 1\n OPTIONS\nX-Odd  :  kept;;,,\nl: 0\n\n";
    let r = req(lf.as_bytes());
    let out = String::from_utf8(r.to_bytes()).unwrap();
    assert_eq!(
        out,
        "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nCSeq: 1\r\n OPTIONS\r\nX-Odd: kept;;,,\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn wsinv_fields() {
    let r = req(WSINV);
    let h = r.headers();
    assert_eq!(r.uri().as_sip().unwrap().params().as_str(), ";unknownparam");
    let to = h.to().unwrap();
    assert_eq!(to.tag(), Some("1918181833n"));
    assert!(!to.has_angle_brackets());
    let from = h.from().unwrap();
    assert_eq!(from.display_name().unwrap().text(), "J Rosenberg \\\"");
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(h.max_forwards(), Ok(Some(68)));
    assert_eq!(h.cseq().unwrap(), CSeq { seq: 9, method: Method::Invite });
    assert_eq!(h.call_id(), Ok("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(h.content_length(), Ok(Some(150)));
    let vias = h.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].transport(), Transport::Udp);
    assert_eq!(vias[0].protocol_version(), "2.0");
    assert_eq!(vias[0].host(), Host::Ipv4("192.0.2.2".parse().unwrap()));
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert_eq!(vias[1].transport(), Transport::Tcp);
    assert_eq!(vias[1].host_str(), "spindle.example.com");
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].host_str(), "192.168.255.111");
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    let subject = h.get(&HeaderName::Subject).unwrap();
    assert_eq!(subject.value(), b"");
    let nf = h.get(&HeaderName::new("NewFangledHeader").unwrap()).unwrap();
    assert_eq!(nf.value(), b"newfangled value\r\n continued newfangled value");
    let odd = h.get(&HeaderName::new("UnknownHeaderWithUnusualValue").unwrap()).unwrap();
    assert_eq!(odd.value(), b";;,,;;,;");
    let routes = h.routes().unwrap();
    assert_eq!(routes.len(), 1);
    let ru = routes[0].uri().as_sip().unwrap();
    assert!(ru.lr());
    assert_eq!(ru.params().value("unknownwith"), Some("value"));
    assert!(ru.params().contains("unknown-no-value"));
    let Contacts::List(c) = h.contacts().unwrap() else { panic!() };
    assert_eq!(c[0].display_name().unwrap().text(), "Quoted string \"\"");
    assert_eq!(c[0].params().value("newparam"), Some("newvalue"));
    assert!(c[0].params().contains("secondparam"));
    assert_eq!(c[0].q(), Some(Ok(330)));
    assert!(r.validate().is_ok());
}

#[test]
fn content_length_framing() {
    let base = options("");
    let with = |cl: &str, body: &str| {
        let mut s = base.trim_end_matches("\r\n").to_owned();
        s.push_str("\r\n");
        s.push_str(cl);
        s.push_str("\r\n");
        s.push_str(body);
        s
    };
    // Exact, trailing octets ignored, missing = rest of datagram.
    let r = req(with("Content-Length: 4\r\nContent-Type: text/plain\r\n", "abcdXYZ").as_bytes());
    assert_eq!(&r.body()[..], b"abcd");
    let r = req(with("Content-Type: text/plain\r\n", "abcdXYZ").as_bytes());
    assert_eq!(&r.body()[..], b"abcdXYZ");
    // Identical duplicates are fine.
    let r = req(with("l: 2\r\nContent-Length: 02\r\n", "ab").as_bytes());
    assert_eq!(&r.body()[..], b"ab");
    let bad = |cl: &str, body: &str| match parse(with(cl, body).as_bytes()) {
        Err(ParseError::BadRequest { problem: RequestProblem::ContentLength(e), headers, .. }) => {
            assert!(headers.contains(&HeaderName::CallId));
            e
        }
        other => panic!("{cl}: {other:?}"),
    };
    assert_eq!(bad("Content-Length: -1\r\n", ""), ContentLengthError::Invalid);
    assert_eq!(bad("Content-Length: five\r\n", ""), ContentLengthError::Invalid);
    assert_eq!(bad("Content-Length:\r\n", ""), ContentLengthError::Invalid);
    assert_eq!(bad("Content-Length: 99999999999\r\n", ""), ContentLengthError::Invalid);
    assert_eq!(bad("Content-Length: 1\r\nContent-Length: 2\r\n", "ab"), ContentLengthError::Conflicting);
    assert_eq!(bad("Content-Length: 10\r\n", "abc"), ContentLengthError::ExceedsData { declared: 10, available: 3 });
    // A response with bad framing is dropped, not answered.
    let e = parse(b"SIP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nab").unwrap_err();
    assert!(matches!(e, ParseError::ResponseFraming { .. }));
    assert_eq!(e.reply_status(), None);
}

#[test]
fn answering_a_bad_request_line() {
    let text = options("Content-Length: 0\r\n").replace("sip:a@example.com", "<sip:a@example.com>");
    let e = parse(text.as_bytes()).unwrap_err();
    assert_eq!(e.reply_status(), Some(400));
    assert_eq!(e.reply_reason().as_deref(), Some("Request-URI enclosed in <>"));
    let ParseError::BadRequest { headers, .. } = &e else { panic!() };
    let answer = Response::from_headers(headers, 400, &e.reply_reason().unwrap());
    assert_eq!(answer.headers().call_id(), Ok("id1"));
    // An ACK is never answered.
    let ack = text.replace("OPTIONS", "ACK");
    assert_eq!(parse(ack.as_bytes()).unwrap_err().reply_status(), None);
}

#[test]
fn status_lines() {
    let tail = "Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\nContent-Length: 0\r\n\r\n";
    let r = resp(format!("SIP/2.0 180 Ringing\r\n{tail}").as_bytes());
    assert_eq!((r.status(), r.reason()), (180, &b"Ringing"[..]));
    assert_eq!(resp(format!("SIP/2.0 100 \r\n{tail}").as_bytes()).reason(), b"");
    assert_eq!(resp(format!("SIP/2.0 100\r\n{tail}").as_bytes()).reason(), b"");
    let latin1 = resp(b"SIP/2.0 486 Besch\xe4ftigt\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(latin1.reason(), b"Besch\xe4ftigt");
    assert_eq!(latin1.reason_lossy(), "Besch\u{fffd}ftigt");
    for bad in ["099", "700", "4294967301", "20", "2x0", "200x"] {
        let e = parse(format!("SIP/2.0 {bad} X\r\n{tail}").as_bytes()).unwrap_err();
        assert_eq!(e, ParseError::StartLine { problem: StartLineProblem::InvalidStatusCode }, "{bad}");
    }
    assert!(matches!(parse(b"SIP/2.x 200 OK\r\n\r\n"), Err(ParseError::StartLine { .. })));
}

#[test]
fn empty_and_garbage() {
    assert_eq!(parse(b""), Err(ParseError::Empty));
    assert_eq!(parse(b"\r\n\r\n"), Err(ParseError::Empty));
    assert_eq!(parse(b"\0\0\0\0"), Err(ParseError::Empty));
    assert!(matches!(parse(b"hello\r\n\r\n"), Err(ParseError::StartLine { .. })));
    assert!(matches!(
        parse(b"OPTIONS sip:a SIP/2.0\r\nNoColonHere\r\n\r\n"),
        Err(ParseError::HeaderSection { line: 2, problem: HeaderLineProblem::MissingColon })
    ));
    assert!(matches!(
        parse(b"OPTIONS sip:a SIP/2.0\r\n folded-first: x\r\n\r\n"),
        Err(ParseError::HeaderSection { problem: HeaderLineProblem::ContinuationWithoutHeader, .. })
    ));
    assert!(matches!(
        parse(b"OPTIONS sip:a SIP/2.0\r\nX: a\rb\r\n\r\n"),
        Err(ParseError::HeaderSection { problem: HeaderLineProblem::BareCr, .. })
    ));
    assert!(matches!(
        parse(b"OPTIONS sip:a SIP/2.0\r\nBad Name: x\r\n\r\n"),
        Err(ParseError::HeaderSection { problem: HeaderLineProblem::InvalidName, .. })
    ));
}

#[test]
fn scalar_limits() {
    let r = req(options("Content-Length: 0\r\n").replace("CSeq: 1", "CSeq: 4294967295").as_bytes());
    assert_eq!(r.headers().cseq().unwrap().seq, u32::MAX);
    let r = req(options("Content-Length: 0\r\n").replace("CSeq: 1", "CSeq: 4294967296").as_bytes());
    assert!(matches!(
        r.validate(),
        Err(ValidationError::Header(HeaderError::Invalid {
            name: HeaderName::CSeq,
            problem: ValueError::NumberOutOfRange
        }))
    ));
    let r = req(options("Content-Length: 0\r\n").replace("Max-Forwards: 70", "Max-Forwards: 256").as_bytes());
    assert!(r.validate().is_err());
    let r = req(options("Expires: 99999999999\r\nRetry-After: 5 (lunch) ;duration=60\r\n").as_bytes());
    assert!(r.headers().expires().is_err());
    let ra = r.headers().retry_after().unwrap().unwrap();
    assert_eq!(ra.seconds(), 5);
    assert_eq!(ra.comment(), Some(&b"(lunch)"[..]));
    assert_eq!(ra.params().value("duration"), Some("60"));
}

#[test]
fn a_tag_read_without_the_uri_is_the_parsed_values_tag() {
    // The same answer as a full parse wherever the value parses: tags in
    // quotes, in the URI's own parameters and of an addr-spec.
    for v in [
        "<sip:a@example.com>;tag=1",
        "\"x;tag=2\" <sip:a@example.com;tag=3>;tag=4",
        "Bob <sip:b@example.com;transport=tcp>",
        "sip:c@example.com;tag=5;other",
        "  \"Q\\\">\" <sip:d@example.com> ; tag = 6 ",
        "<sip:e@example.com>;TAG=7;tag=8",
        // The first `tag` decides, with or without a value.
        "<sip:f@example.com>;tag;tag=9",
        // Non-ASCII UTF-8 in a quoted parameter value.
        "<sip:g@example.com>;x=\"Müller\";tag=10",
    ] {
        let b = Bytes::from(v);
        let parsed = NameAddr::parse(&b).unwrap().tag();
        assert_eq!(NameAddr::tag_in(&b).unwrap(), parsed, "{v}");
    }
    let b = Bytes::from("<sip:a@example.com>;tag=1");
    assert_eq!(NameAddr::tag_in(&b).unwrap(), Some("1"));
    let b = Bytes::from("\"x;tag=2\" <sip:a@example.com;tag=3>;tag=4");
    assert_eq!(NameAddr::tag_in(&b).unwrap(), Some("4"));
    let b = Bytes::from("<sip:f@example.com>;tag;tag=9");
    assert_eq!(NameAddr::tag_in(&b).unwrap(), None);
    // A parameter that is not UTF-8 is refused by both.
    let b = Bytes::from(&b"<sip:h@example.com>;x=\"\xff\";tag=11"[..]);
    assert!(NameAddr::parse(&b).is_err() && NameAddr::tag_in(&b).is_err());
    // What breaks the value's framing breaks both.
    for v in ["<sip:a@example.com;tag=1", "\"open <sip:a@example.com>", "<sip:a@x>;tag=1 junk", ""] {
        let b = Bytes::from(v);
        assert!(NameAddr::parse(&b).is_err() && NameAddr::tag_in(&b).is_err(), "{v}");
    }
    // The headers' accessors: missing and duplicated lines are errors.
    let r = req(options("Content-Length: 0\r\n").as_bytes());
    assert_eq!(r.headers().from_tag().unwrap(), r.headers().from().unwrap().tag());
    assert_eq!(r.headers().to_tag().unwrap(), None);
    let r = req(options("To: <sip:x@example.com>;tag=9\r\nContent-Length: 0\r\n").as_bytes());
    assert!(r.headers().to_tag().is_err());
}

/// The From and To tags are remembered once found, and forgotten by any
/// change to the lines: a remembered answer never outlives the line it came
/// from.
#[test]
fn remembered_tags_follow_changes_to_the_lines() {
    let mut r = req(options("Content-Length: 0\r\n").as_bytes());
    // Asked twice: the second answer (remembered) is the first one.
    assert_eq!(r.headers().from_tag().unwrap(), Some("1"));
    assert_eq!(r.headers().from_tag().unwrap(), Some("1"));
    assert_eq!(r.headers().to_tag().unwrap(), None);
    assert_eq!(r.headers().to_tag().unwrap(), None);
    // Asking does not change what the headers are equal to.
    let fresh = req(options("Content-Length: 0\r\n").as_bytes());
    assert_eq!(r.headers(), fresh.headers());
    // A line pushed in front moves the From: still found, at its new place.
    r.headers_mut().push_front(HeaderName::Via, "SIP/2.0/UDP p.example.com;branch=z9hG4bKp").unwrap();
    assert_eq!(r.headers().from_tag().unwrap(), Some("1"));
    // Replaced: the new tag, not the remembered one.
    r.headers_mut().set(HeaderName::To, "<sip:a@example.com>;tag=abc").unwrap();
    assert_eq!(r.headers().to_tag().unwrap(), Some("abc"));
    r.headers_mut().set(HeaderName::From, "<sip:b@example.com>;tag=2").unwrap();
    assert_eq!(r.headers().from_tag().unwrap(), Some("2"));
    // A second To makes the To an error again; removing both, missing.
    r.headers_mut().push(HeaderName::To, "<sip:c@example.com>;tag=d").unwrap();
    assert!(matches!(r.headers().to_tag(), Err(HeaderError::Duplicate { .. })));
    r.headers_mut().remove_all(&HeaderName::To);
    assert!(matches!(r.headers().to_tag(), Err(HeaderError::Missing { .. })));
    // Kept lines copied into a buffer of their own: read from there.
    let mut c = r.clone();
    c.headers_mut().retain(|h| h.name() != &HeaderName::Via);
    assert_eq!(c.headers().from_tag().unwrap(), Some("2"));
    // A clone keeps its own answers, right for its own lines.
    let mut d = c.clone();
    d.headers_mut().set(HeaderName::From, "<sip:b@example.com>;tag=3").unwrap();
    assert_eq!((c.headers().from_tag().unwrap(), d.headers().from_tag().unwrap()), (Some("2"), Some("3")));
}

#[test]
fn name_addr_forms() {
    let r = req(options(
        "Diversion: <sip:100@pbx.example.com>;reason=unconditional;counter=1, \"Ops\" <tel:+4930111>;reason=busy\r\n\
         P-Asserted-Identity: Müller <sip:m@example.com>\r\nContent-Length: 0\r\n",
    )
    .as_bytes());
    let d = r.headers().diversions().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].params().value("reason"), Some("unconditional"));
    assert_eq!(d[1].uri().as_tel().unwrap().number(), "+4930111");
    assert_eq!(d[1].display_name().unwrap().text(), "Ops");
    let pai = r.headers().get(&HeaderName::PAssertedIdentity).unwrap();
    let na = NameAddr::parse(pai.value_bytes()).unwrap();
    assert_eq!(na.display_name().unwrap().text(), "Müller");
    // Non-UTF-8 (ISO-8859-1) display name in From.
    let latin = options("Content-Length: 0\r\n")
        .replace("From: <sip:b@example.com>;tag=1", "From: \"Müller\" <sip:b@example.com>;tag=1");
    let mut bytes = latin.into_bytes();
    // `replace` worked on UTF-8 text; put the raw 0xFC byte back.
    let pos = bytes.windows(2).position(|w| w == [0xc3, 0xbc]).unwrap();
    bytes.splice(pos..pos + 2, [0xfc]);
    let r = req(&bytes);
    let from = r.headers().from().unwrap();
    assert_eq!(from.display_name().unwrap().as_bytes(), b"\"M\xfcller\"");
    assert_eq!(from.tag(), Some("1"));
    assert!(r.validate().is_ok());
    // addr-spec: parameters belong to the header.
    let r = req(options("Contact: sip:+1972@gw1.example.net;unknownparam\r\nContent-Length: 0\r\n").as_bytes());
    let Contacts::List(c) = r.headers().contacts().unwrap() else { panic!() };
    assert!(c[0].params().contains("unknownparam"));
    assert!(c[0].uri().as_sip().unwrap().params().is_empty());
}

#[test]
fn multiple_from_values_on_one_line() {
    let r = req(options("Content-Length: 0\r\n")
        .replace("From: <sip:b@example.com>;tag=1", "From: <sip:b@example.com>;tag=1, <sip:c@example.com>")
        .as_bytes());
    assert!(matches!(
        r.validate(),
        Err(ValidationError::Header(HeaderError::Invalid {
            name: HeaderName::From,
            problem: ValueError::MultipleValues
        }))
    ));
}

#[test]
fn auth_headers() {
    let r = req(options(
        "Authorization: Digest username=\"pbx\", realm=\"trunk, main\", nonce=\"abc\", uri=\"sip:a@example.com\",\r\n response=\"0123\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"x\"\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\nContent-Length: 0\r\n",
    )
    .as_bytes());
    let a = r.headers().authorization().unwrap();
    assert_eq!(a[0].scheme(), "Digest");
    assert_eq!(a[0].param_unquoted("realm").as_deref(), Some("trunk, main"));
    assert_eq!(a[0].param("algorithm"), Some("MD5"));
    assert_eq!(a[0].param("NC"), Some("00000001"));
    assert_eq!(a[0].params().len(), 9);
    let p = r.headers().proxy_authorization().unwrap();
    assert_eq!(p[0].token68(), Some("dXNlcjpwYXNz"));
    let www = resp(
        b"SIP/2.0 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"x\", nonce=\"n\", qop=\"auth,auth-int\", stale=FALSE\r\nContent-Length: 0\r\n\r\n",
    );
    let c = www.headers().www_authenticate().unwrap();
    assert_eq!(c[0].param_unquoted("qop").as_deref(), Some("auth,auth-int"));
}

#[test]
fn lists_accept_warning_allow() {
    let r = resp(
        b"SIP/2.0 503 Service Unavailable\r\nAccept: application/sdp;q=0.5, multipart/*\r\n\
          Warning: 399 trunkgate.example.com \"portal blocked: inactivity\", 307 [2001:db8::1]:5060 \"x\"\r\n\
          Allow: INVITE, ACK,BYE , FOOBAR\r\nSupported:\r\nRequire: timer, 100rel\r\nContent-Length: 0\r\n\r\n",
    );
    let h = r.headers();
    let acc = h.accept().unwrap().unwrap();
    assert_eq!(acc.len(), 2);
    assert_eq!(acc[0].q(), 500);
    assert!(acc[1].covers("multipart", "mixed"));
    let w = h.warnings().unwrap();
    assert_eq!(w[0].code(), 399);
    assert_eq!(w[0].agent(), "trunkgate.example.com");
    assert_eq!(w[0].text(), "portal blocked: inactivity");
    assert_eq!(w[1].agent(), "[2001:db8::1]:5060");
    assert_eq!(h.allow().unwrap(), vec![Method::Invite, Method::Ack, Method::Bye, Method::Extension("FOOBAR".into())]);
    assert_eq!(h.supported(), Ok(vec![]));
    assert_eq!(h.require(), Ok(vec!["timer", "100rel"]));
}

#[test]
fn via_received_and_rport() {
    let r = req(options("Content-Length: 0\r\n")
        .replace(
            "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx",
            "Via: SIP/2.0/UDP [2001:db8::9:1]:5062;received=[2001:db8::9:255];rport=5062;branch=z9hG4bKx, \
             SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK;received=2001:db8::9:255;rport",
        )
        .as_bytes());
    let v = r.headers().vias().unwrap();
    assert_eq!(v[0].host(), Host::Ipv6("2001:db8::9:1".parse().unwrap()));
    assert_eq!(v[0].port(), Some(5062));
    assert_eq!(v[0].received(), Some("2001:db8::9:255".parse().unwrap()));
    assert_eq!(v[0].rport(), Some(Rport::Port(5062)));
    assert_eq!(v[0].rfc3261_branch(), Some("z9hG4bKx"));
    assert_eq!(v[1].transport(), Transport::Wss);
    assert_eq!(v[1].received(), Some("2001:db8::9:255".parse().unwrap()));
    assert_eq!(v[1].rport(), Some(Rport::Requested));
    assert_eq!(v[1].branch(), Some("z9hG4bK"));
    assert_eq!(v[1].rfc3261_branch(), None);
}

#[test]
fn response_from_request() {
    let text = options("Timestamp: 54\r\nContent-Length: 0\r\n").replace(
        "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n",
        "Via: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\n",
    );
    let r = req(text.as_bytes());
    let ok = Response::from_request(&r, 200, "OK").with_to_tag("srv1").unwrap();
    let out = String::from_utf8(ok.to_bytes()).unwrap();
    assert_eq!(
        out,
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\n\
         From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>;tag=srv1\r\nCall-ID: id1\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    // An existing tag is kept.
    let again = ok.clone().with_to_tag("other").unwrap();
    assert_eq!(again.headers().to().unwrap().tag(), Some("srv1"));
    assert!(ok.clone().with_to_tag("bad tag").is_err());
    let trying = Response::from_request(&r, 100, "Trying");
    assert!(trying.headers().contains(&HeaderName::Timestamp));
    assert!(!ok.headers().contains(&HeaderName::Timestamp));
    assert_eq!(Response::from_request(&r, 42, "x\r\ny").status(), 500);
    assert_eq!(Response::from_request(&r, 400, "x\r\ny").reason(), b"x  y");
}

#[test]
fn builders() {
    let uri = Uri::parse("sip:%2B4930123@trunk.example.com;user=phone").unwrap();
    let r = Request::builder(Method::Invite, uri)
        .header(HeaderName::Via, "SIP/2.0/TCP gw.example.com;branch=z9hG4bKb1")
        .header(HeaderName::From, "<sip:gw@example.com>;tag=f")
        .header(HeaderName::To, "<sip:%2B4930123@trunk.example.com;user=phone>")
        .header(HeaderName::CallId, "b1")
        .header(HeaderName::CSeq, "1 INVITE")
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::ContentLength, "999")
        .body("application/sdp", &b"v=0\r\n"[..])
        .build()
        .unwrap();
    let bytes = r.to_bytes();
    let back = req(&bytes);
    assert_eq!(back.headers().content_length(), Ok(Some(5)));
    assert_eq!(back.headers().count(&HeaderName::ContentLength), 1);
    assert_eq!(&back.body()[..], b"v=0\r\n");
    assert!(back.validate().is_ok());
    assert!(check_request(&back, &CheckConfig::default()).is_ok());
    let inj = Request::builder(Method::Bye, Uri::parse("sip:a@b").unwrap())
        .header(HeaderName::CallId, "x\r\nVia: evil")
        .build();
    assert!(matches!(inj, Err(BuildError::InvalidHeaderValue { .. })));
    assert!(Response::builder(700, "x").build().is_err());
    assert!(Response::builder(200, "O\nK").build().is_err());
    let resp = Response::builder(200, "OK").header(HeaderName::new("X-Portal").unwrap(), "42").build().unwrap();
    assert_eq!(
        String::from_utf8(resp.to_bytes()).unwrap(),
        "SIP/2.0 200 OK\r\nX-Portal: 42\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn check_order_and_config() {
    let cfg = CheckConfig::default();
    let status = |text: &str, cfg: &CheckConfig| check_request(&req(text.as_bytes()), cfg).err().map(|r| r.status);
    let ok = options("Content-Length: 0\r\n");
    assert_eq!(status(&ok, &cfg), None);
    // Known method not allowed -> 405 with Allow.
    let sub = ok.replace("OPTIONS", "SUBSCRIBE");
    let rej = check_request(&req(sub.as_bytes()), &cfg).unwrap_err();
    assert_eq!(rej.status, 405);
    assert!(rej.headers.iter().any(|(n, _)| *n == HeaderName::Allow));
    // 420 lists only the unsupported tags; ACK/CANCEL ignore Require.
    let mut with_timer = cfg.clone();
    with_timer.supported = vec!["timer".into()];
    let rq = options("Require: timer, foo\r\nProxy-Require: bar\r\nContent-Length: 0\r\n");
    let rej = check_request(&req(rq.as_bytes()), &with_timer).unwrap_err();
    assert_eq!(rej.status, 420);
    assert_eq!(rej.headers, vec![(HeaderName::Unsupported, "foo".to_owned())]);
    with_timer.check_proxy_require = true;
    let rej = check_request(&req(rq.as_bytes()), &with_timer).unwrap_err();
    assert_eq!(rej.headers, vec![(HeaderName::Unsupported, "foo, bar".to_owned())]);
    assert_eq!(status(&rq.replace("OPTIONS", "CANCEL"), &cfg), None);
    // Max-Forwards 0: 483, or answered for OPTIONS when configured.
    let mf0 = ok.replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(status(&mf0, &cfg), Some(483));
    let mut opt = cfg.clone();
    opt.answer_options_at_zero_max_forwards = true;
    assert_eq!(status(&mf0, &opt), None);
    assert_eq!(status(&mf0.replace("OPTIONS", "INFO"), &opt), Some(483));
    // Warning 399 on every rejection when configured.
    let mut warn = cfg.clone();
    warn.warn_agent = Some("tg1.example.com".into());
    let rej = check_request(&req(mf0.as_bytes()), &warn).unwrap_err();
    assert!(rej.headers.contains(&(HeaderName::Warning, "399 tg1.example.com \"Too Many Hops\"".to_owned())));
    // tel: Request-URI is supported, sips too; mailto is 416.
    assert_eq!(status(&ok.replace("OPTIONS sip:a@example.com", "OPTIONS tel:+4930123"), &cfg), None);
    assert_eq!(status(&ok.replace("OPTIONS sip:a@example.com", "OPTIONS mailto:a@example.com"), &cfg), Some(416));
}

fn invite(extra: &str, body: &str) -> String {
    format!(
        "INVITE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKi\r\n\
         From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: inv1\r\n\
         CSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn invite_body_and_accept() {
    let cfg = CheckConfig::default();
    let status = |text: String| check_request(&req(text.as_bytes()), &cfg).err().map(|r| r.status);
    assert_eq!(status(invite("Content-Type: application/SDP\r\n", "v=0\r\n")), None);
    assert_eq!(status(invite("", "")), None);
    assert_eq!(status(invite("", "v=0\r\n")), Some(400));
    assert_eq!(status(invite("Content-Type: text/plain\r\n", "hi")), Some(415));
    let mp = "--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--b1\r\nContent-Type: application/isup; version=itu-t92+\r\n\r\n\x01\x02\r\n--b1--\r\n";
    assert_eq!(status(invite("Content-Type: multipart/mixed;boundary=b1\r\n", mp)), None);
    assert_eq!(status(invite("Content-Type: multipart/mixed;boundary=zz\r\n", mp)), Some(415));
    assert_eq!(status(invite("Accept: application/sdp;q=0\r\n", "")), Some(406));
    assert_eq!(status(invite("Accept: */*\r\n", "")), None);
    assert_eq!(status(invite("Accept: application/*, text/html\r\n", "")), None);
    assert_eq!(status(invite("Accept:\r\n", "")), Some(406));
    let rej = check_request(&req(invite("Content-Type: text/plain\r\n", "hi").as_bytes()), &cfg).unwrap_err();
    assert!(rej.headers.contains(&(HeaderName::Accept, "application/sdp".to_owned())));
}

#[test]
fn check_response_rules() {
    let one = resp(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(check_response(&one), Ok(()));
    let two = resp(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1,SIP/2.0/UDP b;branch=z9hG4bK2\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(check_response(&two), Err(ResponseDiscard::MultipleVias { count: 2 }));
    let v3 = resp(b"SIP/3.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(matches!(check_response(&v3), Err(ResponseDiscard::Version { .. })));
    // From and To are checked as far as matching needs: one each, their
    // parts and parameters well-formed; the tags found are remembered. The
    // URI itself is not parsed (nothing reads a response's).
    let with = |from: &str, to: &str| {
        resp(format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").as_bytes())
    };
    let odd_uri = with("<sip:a@[b>;tag=1", "\"C\" <sip:c@d>;tag=2");
    assert!(odd_uri.headers().from().is_err(), "a URI the full parse refuses");
    assert_eq!(check_response(&odd_uri), Ok(()));
    assert_eq!((odd_uri.headers().from_tag(), odd_uri.headers().to_tag()), (Ok(Some("1")), Ok(Some("2"))));
    let malformed = |r: &Response| matches!(check_response(r), Err(ResponseDiscard::Malformed(_)));
    assert!(malformed(&with("<sip:a@b;tag=1", "<sip:c@d>;tag=2")), "unclosed <");
    assert!(malformed(&with("<sip:a@b>;tag=1", "<sip:c@d>;tag=2;;")), "empty parameter");
    assert!(malformed(&with("\"A <sip:a@b>;tag=1", "<sip:c@d>")), "unclosed quote");
    assert!(malformed(&with("<sip:a@b>;tag=1, <sip:e@f>", "<sip:c@d>")), "two From values");
    let missing_to = resp(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    assert!(malformed(&missing_to));
}

fn drain(f: &mut StreamFramer) -> Result<Vec<StreamEvent>, FramingError> {
    let mut out = Vec::new();
    while let Some(e) = f.poll_event()? {
        out.push(e);
    }
    Ok(out)
}

#[test]
fn framer_keepalives_and_split_messages() {
    let msg = options("Content-Length: 5\r\nContent-Type: text/plain\r\n") + "hello";
    let mut stream = Vec::new();
    stream.extend_from_slice(b"\r\n\r\n");
    stream.extend_from_slice(msg.as_bytes());
    stream.extend_from_slice(b"\r\n");
    stream.extend_from_slice(msg.as_bytes());
    stream.extend_from_slice(b"\r\n\r\n");
    for chunk in [1, 2, 3, 7, 64, stream.len()] {
        let mut f = StreamFramer::default();
        let mut events = Vec::new();
        for part in stream.chunks(chunk) {
            f.handle_bytes(part).unwrap();
            events.extend(drain(&mut f).unwrap());
        }
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                StreamEvent::Message(m) => format!("msg:{}", m.body().len()),
                StreamEvent::KeepAlive(k) => format!("{k:?}"),
                StreamEvent::BadRequest(_) => "bad".into(),
            })
            .collect();
        assert_eq!(kinds, ["Ping", "msg:5", "msg:5", "Ping"], "chunk {chunk}");
        assert_eq!(f.buffered(), 0);
    }
    let mut f = StreamFramer::new(StreamFramerConfig { report_pongs: true, ..StreamFramerConfig::default() });
    f.handle_bytes(b"\r\nOPT").unwrap();
    assert_eq!(drain(&mut f).unwrap(), vec![StreamEvent::KeepAlive(KeepAlive::Pong)]);
}

#[test]
fn framer_errors_are_final() {
    let no_cl = options("");
    let mut f = StreamFramer::default();
    f.handle_bytes(no_cl.as_bytes()).unwrap();
    let e = drain(&mut f).unwrap_err();
    assert_eq!(e, FramingError::ContentLength(ContentLengthError::Missing));
    assert_eq!(f.poll_event(), Err(e.clone()));
    assert_eq!(f.handle_bytes(b"x"), Err(e));

    let cfg = StreamFramerConfig { max_message_size: 300, max_buffered: 400, report_pongs: false };
    let big = invite("Content-Type: text/plain\r\n", &"x".repeat(200));
    let mut f = StreamFramer::new(cfg.clone());
    f.handle_bytes(&big.as_bytes()[..250]).unwrap();
    assert_eq!(drain(&mut f), Err(FramingError::TooLarge { limit: 300 }));
    // Headers that never end.
    let mut f = StreamFramer::new(cfg.clone());
    f.handle_bytes(b"OPTIONS sip:a SIP/2.0\r\n").unwrap();
    let mut err = None;
    for _ in 0..40 {
        if let Err(e) = f.handle_bytes(b"X-Filler: abcdefgh\r\n").and_then(|()| drain(&mut f).map(|_| ())) {
            err = Some(e);
            break;
        }
    }
    assert_eq!(err, Some(FramingError::TooLarge { limit: 300 }));
    let mut f = StreamFramer::new(cfg);
    assert_eq!(f.handle_bytes(&[b'a'; 401]), Err(FramingError::BufferFull { limit: 400 }));
    // Conflicting Content-Length.
    let mut f = StreamFramer::default();
    f.handle_bytes(options("Content-Length: 1\r\nl: 2\r\n").as_bytes()).unwrap();
    assert_eq!(drain(&mut f), Err(FramingError::ContentLength(ContentLengthError::Conflicting)));
}

#[test]
fn framer_bad_request_line_keeps_connection() {
    let bad = options("Content-Length: 0\r\n").replace("OPTIONS sip:a@example.com", "OPTIONS  sip:a@example.com");
    let good = options("Content-Length: 0\r\n");
    let mut f = StreamFramer::default();
    f.handle_bytes(bad.as_bytes()).unwrap();
    f.handle_bytes(good.as_bytes()).unwrap();
    let events = drain(&mut f).unwrap();
    assert!(matches!(events[0], StreamEvent::BadRequest(ref e) if e.reply_status() == Some(400)));
    assert!(matches!(events[1], StreamEvent::Message(_)));
}

#[test]
fn lf_only_message_on_stream() {
    let text = "OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/TCP h;branch=z9hG4bKl\nContent-Length: 2\n\nok";
    let mut f = StreamFramer::default();
    f.handle_bytes(text.as_bytes()).unwrap();
    let events = drain(&mut f).unwrap();
    assert!(matches!(&events[..], [StreamEvent::Message(m)] if &m.body()[..] == b"ok"));
}

#[test]
fn params_text_starts_at_first_semicolon() {
    let r = req(WSINV);
    let vias = r.headers().vias().unwrap();
    assert_eq!(vias[1].params().as_str(), ";\r\n  branch  =   z9hG4bK9ikj8");
    assert_eq!(r.headers().to().unwrap().params().as_str(), ";   tag    = 1918181833n");
    assert_eq!(vias[0].params().as_str(), ";branch=390skdjuw");
}

#[test]
fn framer_trickle_scans_each_byte_once() {
    // One byte per segment: the incremental scan keeps the work linear,
    // and the result is the same as with one segment.
    let pad = "p".repeat(20_000);
    let msg = options(&format!("X-Pad: {pad}\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n")) + "abc";
    let mut f = StreamFramer::default();
    let mut got = Vec::new();
    for b in msg.as_bytes() {
        f.handle_bytes(std::slice::from_ref(b)).unwrap();
        got.extend(drain(&mut f).unwrap());
    }
    assert!(matches!(&got[..], [StreamEvent::Message(m)] if &m.body()[..] == b"abc"));
}

/// Refusal codes are configurable, so any 4xx-6xx may be answered: each
/// gets a phrase, a listed one or its class's name, never "Unknown".
#[test]
fn every_final_failure_code_has_a_reason_phrase() {
    use crate::sip::message::status::reason_phrase;
    assert_eq!(reason_phrase(410), "Gone");
    assert_eq!(reason_phrase(486), "Busy Here");
    assert_eq!(reason_phrase(603), "Decline");
    assert_eq!(reason_phrase(499), "Request Failure");
    assert_eq!(reason_phrase(599), "Server Failure");
    assert_eq!(reason_phrase(699), "Global Failure");
    assert!((400..=699).all(|code| reason_phrase(code) != "Unknown"));
}

#[test]
fn keep_only_keeps_the_named_lines_in_order_and_drops_the_body() {
    let text = "INVITE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n\
                Route: <sip:p1.example.com;lr>\r\nFrom: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n\
                Call-ID: id1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nUser-Agent: x\r\nRoute: <sip:p2.example.com;lr>\r\n\
                Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n";
    let mut r = req(text.as_bytes());
    // A copy shares the datagram and keeps it alive (its addresses cannot be
    // reused) while the kept lines are checked against it.
    let original = r.clone();
    let datagram = original.headers().iter().map(|h| h.value().as_ptr() as usize);
    let (lo, hi) = (datagram.clone().min().unwrap(), datagram.max().unwrap());
    r.keep_only(&[HeaderName::Via, HeaderName::From, HeaderName::CallId, HeaderName::CSeq, HeaderName::Route]);
    let names: Vec<&str> = r.headers().iter().map(|h| h.name().as_str()).collect();
    assert_eq!(names, ["Via", "Route", "From", "Call-ID", "CSeq", "Route"]);
    assert!(r.body().is_empty());
    assert_eq!(r.headers().call_id().ok(), Some("id1"));
    assert_eq!(r.uri().as_str(), "sip:a@example.com");
    // The kept lines no longer pin the received datagram: their values sit
    // back to back in one buffer of their own, outside the original.
    let values: Vec<&[u8]> = r.headers().iter().map(|h| h.value()).collect();
    for v in &values {
        assert!(!(lo..=hi).contains(&(v.as_ptr() as usize)), "a kept line still points into the datagram");
    }
    for pair in values.windows(2) {
        assert_eq!(pair[0].as_ptr_range().end, pair[1].as_ptr(), "kept lines are contiguous");
    }
    let expected: Vec<&[u8]> = vec![
        b"SIP/2.0/UDP h.example.com;branch=z9hG4bKx",
        b"<sip:p1.example.com;lr>",
        b"<sip:b@example.com>;tag=1",
        b"id1",
        b"1 INVITE",
        b"<sip:p2.example.com;lr>",
    ];
    assert_eq!(values, expected);
}

#[test]
fn a_built_messages_lines_share_one_buffer_and_a_copy_shares_it_too() {
    let uri = Uri::parse("sip:a@example.com").unwrap();
    let r = Request::builder(Method::Invite, uri)
        .header(HeaderName::From, "<sip:b@example.com>;tag=1")
        .header(HeaderName::To, "<sip:a@example.com>")
        .header(HeaderName::CallId, "id1")
        .build()
        .unwrap();
    let values: Vec<&Bytes> = r.headers().iter().take(3).map(|h| h.value_bytes()).collect();
    // Each line's value starts where the one before ended: one buffer.
    for w in values.windows(2) {
        assert_eq!(w[0].as_ptr().wrapping_add(w[0].len()), w[1].as_ptr());
    }
    let copy = r.clone();
    for (a, b) in r.headers().iter().zip(copy.headers().iter()) {
        assert_eq!(a.value_bytes().as_ptr(), b.value_bytes().as_ptr());
    }
    let text = String::from_utf8(r.to_bytes()).unwrap();
    assert!(text.starts_with("INVITE sip:a@example.com SIP/2.0\r\nFrom: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: id1\r\n"), "{text}");
    // A line with CR or LF is refused as before.
    let bad = Request::builder(Method::Invite, Uri::parse("sip:a@example.com").unwrap())
        .header(HeaderName::Subject, "a\r\nb")
        .build();
    assert!(matches!(bad, Err(BuildError::InvalidHeaderValue { .. })), "{bad:?}");
}

#[test]
fn folded_values_go_out_with_crlf_folds_and_others_byte_for_byte() {
    // An LF-only message: its folds leave as CRLF folds; a CRLF fold stays
    // as it came; a value without a fold is copied as it is.
    let lf = b"OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\n\
               From: <sip:b@example.com>;tag=1\nTo: <sip:a@example.com>\nCall-ID: id1\n\
               CSeq: 1 OPTIONS\nMax-Forwards: 70\nSubject: one\n two\n\tthree\nContent-Length: 0\n\n";
    let r = req(lf);
    let out = String::from_utf8(r.to_bytes()).unwrap();
    assert!(out.contains("\r\nSubject: one\r\n two\r\n\tthree\r\n"), "{out:?}");
    assert!(!out.replace("\r\n", "").contains('\n'), "{out:?}");
    let crlf = options("Subject: one\r\n two\r\nContent-Length: 0\r\n");
    let out = String::from_utf8(req(crlf.as_bytes()).to_bytes()).unwrap();
    assert!(out.contains("\r\nSubject: one\r\n two\r\nContent-Length: 0\r\n"), "{out:?}");
    assert!(out.contains("\r\nFrom: <sip:b@example.com>;tag=1\r\n"), "{out:?}");
}

#[test]
fn start_lines_and_content_length_are_written_as_their_numbers() {
    // SIP/2.0 and other versions, three-digit statuses, a Content-Length
    // added for a message built without one.
    let r = resp(
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n\
                   From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>;tag=2\r\nCall-ID: id1\r\n\
                   CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(r.to_bytes().starts_with(b"SIP/2.0 180 Ringing\r\n"));
    let r = resp(
        b"SIP/12.3 604 Does Not Exist Anywhere\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bKx\r\n\
                   From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>;tag=2\r\nCall-ID: id1\r\n\
                   CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(r.to_bytes().starts_with(b"SIP/12.3 604 Does Not Exist Anywhere\r\n"));
    let built = Request::builder(Method::Message, Uri::parse("sip:a@example.com").unwrap())
        .header(HeaderName::CallId, "c")
        .body("text/plain", Bytes::from_static(b"0123456789ab"))
        .build()
        .unwrap();
    let out = String::from_utf8(built.to_bytes()).unwrap();
    assert!(out.starts_with("MESSAGE sip:a@example.com SIP/2.0\r\n"), "{out:?}");
    assert!(out.ends_with("Content-Length: 12\r\n\r\n0123456789ab"), "{out:?}");
}
