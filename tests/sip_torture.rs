//! RFC 4475 and RFC 5118 torture suites against `sip::message`.
//!
//! One test per file in `tests/data/sip-torture/` and
//! `tests/data/sip-torture-ipv6/`, asserting the handling that the file's
//! MANIFEST.tsv row names: through `parse` + `check_request` (requests),
//! `parse` + `check_response` (responses), or the parse error and its
//! `reply_status` (requests that can only be answered with 400). Then:
//! every file is covered by a manifest row and a test, the manifest's
//! `expected` column agrees with what we do, no prefix or byte mutation of
//! any file panics, every accepted message survives a serialization round
//! trip and the stream framer, and an ignored throughput measurement.
//!
//! The RFC 5118 files are bare-LF (as the RFC's archive has them): they
//! are turned into wire bytes by LF→CRLF, adding the missing empty line
//! and correcting Content-Length to the converted body (SOURCE.md there).

use trunkgate::sip::message::*;

use std::collections::BTreeSet;
use std::path::PathBuf;

const T4475: &str = "sip-torture";
const T5118: &str = "sip-torture-ipv6";

fn data_dir(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(dir)
}

/// The wire bytes of a torture file.
fn load(dir: &str, file: &str) -> Vec<u8> {
    let raw = std::fs::read(data_dir(dir).join(file)).expect("torture file");
    if dir == T5118 { wire_from_lf(&raw) } else { raw }
}

/// RFC 5118 archive bytes → wire bytes: CRLF line ends, an empty line
/// after the headers, Content-Length equal to the converted body.
fn wire_from_lf(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).expect("RFC 5118 files are ASCII");
    let mut text = text.replace('\n', "\r\n");
    if !text.contains("\r\n\r\n") {
        text.push_str("\r\n");
    }
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            if line.to_ascii_lowercase().starts_with("content-length:") {
                format!("Content-Length: {}", body.len())
            } else {
                line.to_owned()
            }
        })
        .collect();
    format!("{}\r\n\r\n{}", head.join("\r\n"), body).into_bytes()
}

/// What an element running `parse` + the checks does with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// A request that passes every protocol check.
    Accept,
    /// A request answered with this status.
    Reject(u16),
    /// A response that a UAC processes.
    Process,
    /// A response that a UAC discards.
    Discard,
    /// Bytes dropped without an answer.
    Drop,
}

struct Outcome {
    answer: Answer,
    reason: String,
    message: Option<Message>,
    rejection: Option<Rejection>,
}

impl Outcome {
    fn request(&self) -> &Request {
        match &self.message {
            Some(Message::Request(r)) => r,
            _ => panic!("not a request"),
        }
    }

    fn response(&self) -> &Response {
        match &self.message {
            Some(Message::Response(r)) => r,
            _ => panic!("not a response"),
        }
    }
}

fn handle(data: &[u8], cfg: &CheckConfig) -> Outcome {
    match parse(data) {
        Ok(Message::Request(r)) => {
            let checked = check_request(&r, cfg);
            let (answer, reason, rejection) = match checked {
                Ok(()) => (Answer::Accept, String::new(), None),
                Err(rej) => (Answer::Reject(rej.status), rej.reason.clone(), Some(rej)),
            };
            Outcome { answer, reason, message: Some(Message::Request(r)), rejection }
        }
        Ok(Message::Response(r)) => {
            let (answer, reason) = match check_response(&r) {
                Ok(()) => (Answer::Process, String::new()),
                Err(e) => (Answer::Discard, e.to_string()),
            };
            Outcome { answer, reason, message: Some(Message::Response(r)), rejection: None }
        }
        Err(e) => {
            let answer = e.reply_status().map_or(Answer::Drop, Answer::Reject);
            Outcome {
                answer,
                reason: e.reply_reason().unwrap_or_else(|| e.to_string()),
                message: None,
                rejection: None,
            }
        }
    }
}

fn expect(dir: &str, file: &str, answer: Answer) -> Outcome {
    let out = handle(&load(dir, file), &CheckConfig::default());
    assert_eq!(out.answer, answer, "{dir}/{file}: {}", out.reason);
    out
}

macro_rules! torture {
    ($( $name:ident : $dir:ident $file:literal => $answer:expr $(, |$o:ident| $body:block)? ; )*) => {
        $(
            #[test]
            fn $name() {
                let outcome = expect($dir, $file, $answer);
                $( let $o = &outcome; $body )?
                drop(outcome);
            }
        )*
        /// (folder, file, expected answer) of every test above.
        fn covered() -> Vec<(&'static str, &'static str, Answer)> {
            vec![ $( ($dir, $file, $answer), )* ]
        }
    };
}

/// Position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("address")
}

fn v6(s: &str) -> std::net::Ipv6Addr {
    s.parse().expect("address")
}

fn contacts(r: &Request) -> Vec<NameAddr<'_>> {
    match r.headers().contacts().expect("contacts") {
        Contacts::List(l) => l,
        Contacts::Star => panic!("star"),
    }
}

fn header<'a>(r: &'a Request, name: &str) -> &'a [u8] {
    let name = HeaderName::new(name).expect("name");
    r.headers().get(&name).expect("header").value()
}

torture! {
    // ---- RFC 4475 §3.1.1: valid messages --------------------------------
    wsinv: T4475 "wsinv.dat" => Answer::Accept, |o| {
        let r = o.request();
        let h = r.headers();
        assert_eq!(h.vias().unwrap().len(), 3);
        let v = h.vias().unwrap();
        assert_eq!((v[0].transport(), v[0].branch()), (Transport::Udp, Some("390skdjuw")));
        assert_eq!((v[1].transport(), v[1].branch()), (Transport::Tcp, Some("z9hG4bK9ikj8")));
        assert_eq!((v[2].transport(), v[2].branch()), (Transport::Udp, Some("z9hG4bK30239")));
        assert_eq!(h.to().unwrap().tag(), Some("1918181833n"));
        assert_eq!(h.from().unwrap().tag(), Some("98asjd8"));
        assert_eq!(h.from().unwrap().display_name().unwrap().text(), "J Rosenberg \\\"");
        assert_eq!(h.max_forwards(), Ok(Some(68)));
        assert_eq!(h.cseq().unwrap(), CSeq { seq: 9, method: Method::Invite });
        assert_eq!(header(r, "Subject"), b"");
        assert_eq!(header(r, "NewFangledHeader"), b"newfangled value\r\n continued newfangled value");
        assert_eq!(header(r, "UnknownHeaderWithUnusualValue"), b";;,,;;,;");
        assert_eq!(contacts(r)[0].q(), Some(Ok(330)));
        assert!(h.routes().unwrap()[0].uri().as_sip().unwrap().lr());
        assert_eq!(r.body().len(), 150);
    };
    intmeth: T4475 "intmeth.dat" => Answer::Reject(501), |o| {
        let r = o.request();
        assert_eq!(*r.method(), Method::Extension("!interesting-Method0123456789_*+`.%indeed'~".into()));
        let u = r.uri().as_sip().unwrap();
        assert_eq!(u.user(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
        assert_eq!(u.password(), Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"));
        assert_eq!(u.host(), Host::Domain("example.com"));
        let to = r.headers().to().unwrap();
        assert_eq!(&*to.display_name().unwrap().text(), "BEL:\u{7} NUL:\0 DEL:\u{7f}");
        let from = r.headers().from().unwrap();
        assert_eq!(from.display_name().unwrap().text(), "token1~` token2'+_ token3*%!.-");
        assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
        assert_eq!(from.params().get("fromParam''~+*_!.-%").unwrap().unquoted_value().as_deref(), Some("работающий"));
        assert_eq!(r.headers().call_id(), Ok("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"));
        assert_eq!(r.headers().max_forwards(), Ok(Some(255)));
        assert_eq!(std::str::from_utf8(header(r, "extensionHeader-!.%*+_`'~")), Ok("\u{FEFF}大停電"));
        assert!(r.validate().is_ok());
        assert!(o.rejection.as_ref().unwrap().headers.iter().any(|(n, _)| *n == HeaderName::Allow));
    };
    esc01: T4475 "esc01.dat" => Answer::Accept, |o| {
        let r = o.request();
        let u = r.uri().as_sip().unwrap();
        assert_eq!(u.user(), Some("sips%3Auser%40example.com"));
        assert_eq!(u.user_decoded().as_deref(), Some(&b"sips:user@example.com"[..]));
        let to = r.headers().to().unwrap();
        assert_eq!(to.uri().as_sip().unwrap().user(), Some("%75se%72"));
        assert_eq!(to.uri().as_sip().unwrap().user_decoded().as_deref(), Some(&b"user"[..]));
        let from = r.headers().from().unwrap();
        assert_eq!(from.uri().as_sip().unwrap().user_decoded().as_deref(), Some(&b"I have spaces"[..]));
        let c = contacts(r);
        let cu = c[0].uri().as_sip().unwrap();
        assert_eq!(cu.to_string(), "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31");
        let params: Vec<_> = cu.params().iter().collect();
        assert_eq!(&*params[0].decoded_name(), b"lr");
        assert_eq!(&*params[1].decoded_name(), b"name");
        assert_eq!(params[1].decoded_value().as_deref(), Some(&b"value%41"[..]));
        // Escapes survive serialization untouched.
        let out = r.to_bytes();
        assert!(find(&out, b"n%61me=v%61lue%25%34%31").is_some());
    };
    escnull: T4475 "escnull.dat" => Answer::Accept, |o| {
        let r = o.request();
        let to = r.headers().to().unwrap();
        let user = to.uri().as_sip().unwrap().user_decoded().unwrap().into_owned();
        assert_eq!(user, b"null-\0-null");
        let c = contacts(r);
        assert_eq!(c.len(), 2);
        let users: Vec<Vec<u8>> = c.iter().map(|n| n.uri().as_sip().unwrap().user_decoded().unwrap().into_owned()).collect();
        assert_eq!(users, vec![b"\0".to_vec(), b"\0\0".to_vec()]);
    };
    esc02: T4475 "esc02.dat" => Answer::Reject(501), |o| {
        let r = o.request();
        assert_eq!(*r.method(), Method::Extension("RE%47IST%45R".into()));
        assert_eq!(r.headers().to().unwrap().display_name().unwrap().as_bytes(), b"\"%Z%45\"");
        assert_eq!(contacts(r).len(), 2, "C%6Fntact is not Contact");
        assert_eq!(header(r, "C%6Fntact"), b"<sip:alias2@host2.example.com>");
        assert_eq!(r.headers().top_via().unwrap().branch(), Some("z9hG4bK209%fzsnel234"));
    };
    lwsdisp: T4475 "lwsdisp.dat" => Answer::Accept, |o| {
        let from = o.request().headers().from().unwrap();
        assert_eq!(from.display_name().unwrap().text(), "caller");
        assert!(!from.display_name().unwrap().is_quoted());
        assert_eq!(from.tag(), Some("323"));
    };
    longreq: T4475 "longreq.dat" => Answer::Accept, |o| {
        let r = o.request();
        let vias = r.headers().vias().unwrap();
        assert_eq!(vias.len(), 34);
        assert_eq!(vias[0].host_str(), "sip33.example.com");
        assert_eq!(vias[33].received(), Some(ip("192.0.2.5")));
        assert_eq!(vias[33].branch().map(str::len), Some(215));
        let to = r.headers().to().unwrap();
        assert!(to.display_name().unwrap().text().contains("extremeextreme"));
        assert_eq!(to.uri().as_sip().unwrap().port(), Some(6000));
        assert_eq!(to.uri().as_sip().unwrap().params().iter().count(), 3);
        assert_eq!(r.headers().from().unwrap().tag().map(str::len), Some(155));
        assert!(r.headers().call_id().unwrap().ends_with("longcallid"));
    };
    dblreq: T4475 "dblreq.dat" => Answer::Accept, |o| {
        let r = o.request();
        assert_eq!(*r.method(), Method::Register);
        assert!(r.body().is_empty(), "the trailing INVITE-like octets are ignored");
        assert_eq!(r.headers().call_id(), Ok("dblreq.0ha0isndaksdj99sdfafnl3lk233412"));
        let out = r.to_bytes();
        assert!(find(&out, b"INVITE sip:joe").is_none());
    };
    semiuri: T4475 "semiuri.dat" => Answer::Accept, |o| {
        let r = o.request();
        let u = r.uri().as_sip().unwrap();
        assert_eq!(u.user(), Some("user;par=u%40example.net"));
        assert_eq!(u.user_decoded().as_deref(), Some(&b"user;par=u@example.net"[..]));
        assert_eq!(u.host(), Host::Domain("example.com"));
        assert!(u.params().is_empty());
        assert_eq!(r.headers().accept().unwrap().unwrap().len(), 6);
    };
    transports: T4475 "transports.dat" => Answer::Accept, |o| {
        let vias = o.request().headers().vias().unwrap();
        let t: Vec<_> = vias.iter().map(|v| v.transport()).collect();
        assert_eq!(t, vec![Transport::Udp, Transport::Sctp, Transport::Tls, Transport::Other("UNKNOWN"), Transport::Tcp]);
        assert_eq!(vias[3].host_str(), "t4.example.com");
    };
    // MESSAGE is a known method outside the default Allow: 405 from this
    // endpoint; the point of the file (binary body framed by
    // Content-Length) is asserted below and with MESSAGE allowed.
    mpart01: T4475 "mpart01.dat" => Answer::Reject(405), |o| {
        let r = o.request();
        assert!(r.validate().is_ok());
        assert_eq!(r.body().len(), 553);
        assert!(r.body().contains(&0));
        assert!(r.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
        let ct = r.headers().content_type().unwrap().unwrap();
        assert!(ct.is("multipart", "mixed"));
        assert_eq!(ct.params().value("boundary"), Some("7a9cbec02ceef655"));
        let mut cfg = CheckConfig::default();
        cfg.allow.push(Method::Message);
        assert_eq!(check_request(r, &cfg), Ok(()));
    };
    unreason: T4475 "unreason.dat" => Answer::Process, |o| {
        let r = o.response();
        assert_eq!(r.status(), 200);
        assert!(r.reason().starts_with(b"= 2**3 * 5**2 "));
        assert!(r.reason_lossy().contains("сто"));
        assert_eq!(r.body().len(), 154);
    };
    noreason: T4475 "noreason.dat" => Answer::Process, |o| {
        assert_eq!(o.response().status(), 100);
        assert_eq!(o.response().reason(), b"");
    };
    // ---- RFC 4475 §3.1.2: invalid messages ------------------------------
    badinv01: T4475 "badinv01.dat" => Answer::Reject(400), |o| {
        assert!(o.reason.contains("Via"), "{}", o.reason);
    };
    clerr: T4475 "clerr.dat" => Answer::Reject(400), |o| {
        assert!(o.reason.contains("9999"), "{}", o.reason);
    };
    ncl: T4475 "ncl.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Invalid Content-Length");
    };
    scalar02: T4475 "scalar02.dat" => Answer::Reject(400), |o| {
        assert!(o.reason.contains("CSeq"), "{}", o.reason);
        let r = o.request();
        assert!(r.headers().max_forwards().is_err());
        assert!(r.headers().expires().is_err());
        assert!(matches!(contacts(r)[0].expires(), Some(Err(ValueError::NumberOutOfRange))));
    };
    scalarlg: T4475 "scalarlg.dat" => Answer::Discard, |o| {
        assert!(o.reason.contains("CSeq"), "{}", o.reason);
        let h = o.response().headers();
        assert!(h.retry_after().is_err());
        assert!(matches!(h.warnings(), Err(HeaderError::Invalid { problem: ValueError::InvalidWarnCode, .. })));
    };
    quotbal: T4475 "quotbal.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Malformed To header: unterminated quoted string");
    };
    ltgtruri: T4475 "ltgtruri.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Request-URI enclosed in <>");
    };
    lwsruri: T4475 "lwsruri.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Whitespace in Request-URI");
    };
    lwsstart: T4475 "lwsstart.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Extra spaces in Request-Line");
    };
    trws: T4475 "trws.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Trailing spaces in Request-Line");
    };
    escruri: T4475 "escruri.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Request-URI with headers");
    };
    // Liberal choice: Date does not matter to a B2BUA, so a bad time zone
    // is ignored (RFC 4475 §3.1.2.12 allows it); the value is kept as is.
    baddate: T4475 "baddate.dat" => Answer::Accept, |o| {
        assert_eq!(header(o.request(), "Date"), b"Fri, 01 Jan 2010 16:00:00 EST");
    };
    regbadct: T4475 "regbadct.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Malformed Contact header: URI with headers must be enclosed in <>");
    };
    badaspec: T4475 "badaspec.dat" => Answer::Reject(400), |o| {
        assert!(o.reason.starts_with("Malformed To header"), "{}", o.reason);
    };
    baddn: T4475 "baddn.dat" => Answer::Reject(400), |o| {
        // Reached although the file has no empty line after its headers.
        assert!(o.reason.starts_with("Malformed From header"), "{}", o.reason);
    };
    badvers: T4475 "badvers.dat" => Answer::Reject(505), |o| {
        assert_eq!(o.request().version(), Version { major: 7, minor: 0 });
    };
    mismatch01: T4475 "mismatch01.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "CSeq method INVITE does not match OPTIONS");
    };
    mismatch02: T4475 "mismatch02.dat" => Answer::Reject(501), |o| {
        assert!(matches!(o.rejection.as_ref().unwrap().cause, RejectionCause::MethodNotImplemented { .. }));
    };
    bigcode: T4475 "bigcode.dat" => Answer::Drop, |o| {
        assert!(o.reason.contains("status code"), "{}", o.reason);
    };
    // ---- RFC 4475 §3.2, §3.3, §3.4 ---------------------------------------
    badbranch: T4475 "badbranch.dat" => Answer::Accept, |o| {
        let via = o.request().headers().top_via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK"));
        assert_eq!(via.rfc3261_branch(), None, "fall back to RFC 2543 matching");
    };
    insuf: T4475 "insuf.dat" => Answer::Reject(400), |o| {
        assert!(o.reason.starts_with("Missing"), "{}", o.reason);
    };
    unkscm: T4475 "unkscm.dat" => Answer::Reject(416), |o| {
        let u = o.request().uri();
        assert!(matches!(u, Uri::Other(_)));
        assert_eq!(u.scheme(), "nobodyKnowsThisScheme");
        assert_eq!(u.to_string(), "nobodyKnowsThisScheme:totallyopaquecontent");
    };
    novelsc: T4475 "novelsc.dat" => Answer::Reject(416), |o| {
        assert_eq!(o.request().uri().scheme(), "soap.beep");
    };
    // A registrar (trunkgate registers portal users) rejects a REGISTER
    // whose To is not a SIP/SIPS AOR; the other URIs parse.
    unksm2: T4475 "unksm2.dat" => Answer::Reject(400), |o| {
        let r = o.request();
        assert_eq!(o.reason, "REGISTER To must be a SIP or SIPS URI");
        assert_eq!(r.headers().to().unwrap().uri().scheme(), "isbn");
        assert_eq!(r.headers().from().unwrap().uri().scheme(), "http");
        assert_eq!(contacts(r)[0].uri().to_string(), "name:John_Smith");
    };
    bext01: T4475 "bext01.dat" => Answer::Reject(420), |o| {
        let rej = o.rejection.as_ref().unwrap();
        assert_eq!(rej.headers, vec![(HeaderName::Unsupported, "nothingSupportsThis, nothingSupportsThisEither".to_owned())]);
        let proxy = CheckConfig { check_proxy_require: true, ..CheckConfig::default() };
        let rej = check_request(o.request(), &proxy).unwrap_err();
        assert!(rej.headers[0].1.ends_with("noProxiesSupportThis, norDoAnyProxiesSupportThis"));
    };
    invut: T4475 "invut.dat" => Answer::Reject(415), |o| {
        let rej = o.rejection.as_ref().unwrap();
        assert!(rej.headers.contains(&(HeaderName::Accept, "application/sdp".to_owned())));
    };
    regaut01: T4475 "regaut01.dat" => Answer::Accept, |o| {
        let a = o.request().headers().authorization().unwrap();
        assert_eq!(a[0].scheme(), "NoOneKnowsThisScheme");
        assert_eq!(a[0].param("opaque-data"), Some("here"));
    };
    multi01: T4475 "multi01.dat" => Answer::Reject(400), |o| {
        assert!(o.reason.starts_with("Multiple"), "{}", o.reason);
    };
    mcl01: T4475 "mcl01.dat" => Answer::Reject(400), |o| {
        assert_eq!(o.reason, "Conflicting Content-Length values");
    };
    bcast: T4475 "bcast.dat" => Answer::Discard, |o| {
        let r = o.response();
        assert!(r.validate().is_ok(), "parses and validates; discarded by rule");
        assert_eq!(r.headers().vias().unwrap()[1].host(), Host::Ipv4("255.255.255.255".parse().unwrap()));
    };
    zeromf: T4475 "zeromf.dat" => Answer::Reject(483), |o| {
        let endpoint = CheckConfig {
            answer_options_at_zero_max_forwards: true,
            ..CheckConfig::default()
        };
        assert_eq!(check_request(o.request(), &endpoint), Ok(()));
    };
    cparam01: T4475 "cparam01.dat" => Answer::Accept, |o| {
        let c = &contacts(o.request())[0];
        assert!(c.params().contains("unknownparam"));
        assert!(c.uri().as_sip().unwrap().params().is_empty());
        assert_eq!(c.uri().to_string(), "sip:+19725552222@gw1.example.net");
    };
    cparam02: T4475 "cparam02.dat" => Answer::Accept, |o| {
        let c = &contacts(o.request())[0];
        assert!(c.params().is_empty());
        assert!(c.uri().as_sip().unwrap().params().contains("unknownparam"));
    };
    regescrt: T4475 "regescrt.dat" => Answer::Accept, |o| {
        let c = &contacts(o.request())[0];
        let u = c.uri().as_sip().unwrap();
        assert_eq!(u.headers_str(), Some("Route=%3Csip:sip.example.com%3E"));
        assert_eq!(u.headers().collect::<Vec<_>>(), vec![("Route", "%3Csip:sip.example.com%3E")]);
    };
    sdp01: T4475 "sdp01.dat" => Answer::Reject(406);
    inv2543: T4475 "inv2543.dat" => Answer::Accept, |o| {
        let r = o.request();
        assert_eq!(r.body().len(), 105);
        assert_eq!(r.headers().top_via().unwrap().branch(), None);
        assert_eq!(r.headers().from().unwrap().tag(), None);
        assert_eq!(r.headers().max_forwards(), Ok(None));
        assert_eq!(r.headers().content_length(), Ok(None));
    };
    // ---- RFC 5118 (IPv6) -------------------------------------------------
    ipv6_good: T5118 "ipv6-good" => Answer::Accept, |o| {
        let r = o.request();
        assert_eq!(r.uri().as_sip().unwrap().host(), Host::Ipv6(v6("2001:db8::10")));
        assert_eq!(r.headers().top_via().unwrap().host(), Host::Ipv6(v6("2001:db8::9:1")));
        assert_eq!(contacts(r)[0].uri().as_sip().unwrap().host(), Host::Ipv6(v6("2001:db8::1")));
    };
    ipv6_bad: T5118 "ipv6-bad" => Answer::Reject(400), |o| {
        assert!(o.reason.starts_with("Malformed Request-URI"), "{}", o.reason);
    };
    port_ambiguous: T5118 "port-ambiguous" => Answer::Accept, |o| {
        let u = o.request().uri().as_sip().unwrap();
        assert_eq!(u.host(), Host::Ipv6(v6("2001:db8::10:5070")));
        assert_eq!(u.port(), None);
    };
    port_unambiguous: T5118 "port-unambiguous" => Answer::Accept, |o| {
        let u = o.request().uri().as_sip().unwrap();
        assert_eq!(u.host(), Host::Ipv6(v6("2001:db8::10")));
        assert_eq!(u.port(), Some(5070));
    };
    via_received_with_delim: T5118 "via-received-param-with-delim" => Answer::Accept, |o| {
        let via = o.request().headers().top_via().unwrap();
        assert_eq!(via.received_str(), Some("[2001:db8::9:255]"));
        assert_eq!(via.received(), Some(ip("2001:db8::9:255")));
    };
    via_received_no_delim: T5118 "via-received-param-no-delim" => Answer::Accept, |o| {
        let via = o.request().headers().top_via().unwrap();
        assert_eq!(via.received(), Some(ip("2001:db8::9:255")));
        assert_eq!(via.branch(), Some("z9hG4bKas3"));
    };
    ipv6_in_sdp: T5118 "ipv6-in-sdp" => Answer::Accept, |o| {
        let body = o.request().body();
        assert_eq!(body.len(), 251);
        assert!(find(body, b"c=IN IP6 2001:db8::20\r\n").is_some());
    };
    mult_ip_in_header: T5118 "mult-ip-in-header" => Answer::Accept, |o| {
        let v = o.request().headers().vias().unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].host(), v[0].port()), (Host::Ipv6(v6("2001:db8::9:1")), Some(6050)));
        assert_eq!(v[1].host(), Host::Ipv4("192.0.2.1".parse().unwrap()));
        assert_eq!(v[2].transport(), Transport::Tcp);
        assert_eq!(v[2].host(), Host::Ipv6(v6("2001:db8::9:255")));
        assert_eq!(v[2].received(), Some(ip("192.0.2.200")));
    };
    mult_ip_in_sdp: T5118 "mult-ip-in-sdp" => Answer::Accept, |o| {
        assert_eq!(o.request().body().len(), 189);
    };
    ipv4_mapped_ipv6: T5118 "ipv4-mapped-ipv6" => Answer::Accept, |o| {
        let r = o.request();
        let v = r.headers().vias().unwrap();
        assert_eq!((v[0].host(), v[0].port()), (Host::Ipv6(v6("::ffff:192.0.2.10")), Some(19823)));
        assert_eq!((v[1].host(), v[1].port()), (Host::Ipv6(v6("::ffff:192.0.2.2")), None));
        assert_eq!(contacts(r)[0].uri().as_sip().unwrap().host(), Host::Ipv6(v6("::ffff:192.0.2.2")));
    };
    ipv6_bug_abnf_3_colons: T5118 "ipv6-bug-abnf-3-colons" => Answer::Accept, |o| {
        let u = o.request().uri();
        assert_eq!(u.as_sip().unwrap().host(), Host::Ipv6(v6("2001:db8::192.0.2.1")));
        assert_eq!(u.to_string(), "sip:user@[2001:db8:::192.0.2.1]", "text kept as received");
    };
    ipv6_correct_abnf_2_colons: T5118 "ipv6-correct-abnf-2-colons" => Answer::Accept, |o| {
        let u = o.request().uri().as_sip().unwrap();
        assert_eq!(u.host(), Host::Ipv6(v6("2001:db8::192.0.2.1")));
    };
}

// ---- coverage and cross-checks ---------------------------------------------

/// (file, expected) rows of a MANIFEST.tsv.
fn manifest(dir: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(data_dir(dir).join("MANIFEST.tsv")).expect("manifest");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            let file = cols.next().unwrap_or_default().to_owned();
            let expected = cols.nth(1).unwrap_or_default().to_owned();
            (file, expected)
        })
        .collect()
}

const NOT_MESSAGES: [&str; 3] = ["MANIFEST.tsv", "SOURCE.md", "SHA256SUMS"];

/// Message files directly in a suite folder.
fn message_files(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(data_dir(dir))
        .expect("folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .filter(|n| !NOT_MESSAGES.contains(&n.as_str()))
        .collect()
}

#[test]
fn every_file_has_a_manifest_row_and_a_test() {
    let covered = covered();
    for dir in [T4475, T5118] {
        let rows: BTreeSet<String> = manifest(dir).into_iter().map(|(f, _)| f).collect();
        let files = message_files(dir);
        let tested: BTreeSet<String> =
            covered.iter().filter(|(d, _, _)| *d == dir).map(|(_, f, _)| (*f).to_owned()).collect();
        assert_eq!(files, rows, "{dir}: files vs MANIFEST.tsv rows");
        assert_eq!(files, tested, "{dir}: files vs tests");
    }
    assert_eq!(message_files(T4475).len(), 49);
    assert_eq!(message_files(T5118).len(), 12);
    // The archive's 50th file is kept aside and has no row (SOURCE.md).
    assert!(data_dir(T4475).join("unreferenced/test.dat").is_file());
}

/// Files whose `expected` is `invalid` but which we accept on purpose.
const LIBERAL: [&str; 1] = ["baddate.dat"];

#[test]
fn manifest_expected_column_agrees() {
    let answers = covered();
    for dir in [T4475, T5118] {
        for (file, expected) in manifest(dir) {
            let answer =
                answers.iter().find(|(d, f, _)| *d == dir && *f == file).map(|(_, _, a)| a.clone()).expect("covered");
            let data = load(dir, &file);
            match expected.as_str() {
                "valid" => {
                    // Parses and is well formed; what the endpoint then
                    // does (e.g. 405 for MESSAGE) is policy.
                    let msg = parse(&data).unwrap_or_else(|e| panic!("{file}: {e}"));
                    match &msg {
                        Message::Request(r) => assert_eq!(r.validate(), Ok(()), "{file}"),
                        Message::Response(r) => assert_eq!(r.validate(), Ok(()), "{file}"),
                    }
                }
                "valid-but-unusual" => {
                    assert!(parse(&data).is_ok(), "{file}: the parser must accept it");
                }
                "invalid" if LIBERAL.contains(&file.as_str()) => {
                    assert_eq!(answer, Answer::Accept, "{file}");
                }
                "invalid" => {
                    assert!(matches!(answer, Answer::Reject(_) | Answer::Drop | Answer::Discard), "{file}: {answer:?}");
                }
                other => panic!("{file}: unknown expected value {other}"),
            }
        }
    }
}

/// Every torture file as wire bytes, plus the unreferenced one.
fn all_inputs() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in [T4475, T5118] {
        for f in message_files(dir) {
            out.push((f.clone(), load(dir, &f)));
            if dir == T5118 {
                // The raw LF-only archive bytes too.
                let raw = std::fs::read(data_dir(dir).join(&f)).expect("file");
                out.push((format!("{f} (LF)"), raw));
            }
        }
    }
    let unref = std::fs::read(data_dir(T4475).join("unreferenced/test.dat")).expect("file");
    out.push(("unreferenced/test.dat".into(), unref));
    out
}

/// Runs every accessor on whatever parsed, so mutations reach the typed
/// parsers too. Must not panic.
fn exercise(data: &[u8]) {
    let cfg = CheckConfig::default();
    let msg = match parse(data) {
        Ok(m) => m,
        Err(e) => {
            let _ = (e.reply_status(), e.reply_reason(), e.to_string());
            if let ParseError::BadRequest { headers, .. } = &e {
                let _ = Response::from_headers(headers, 400, "x").to_bytes();
            }
            return;
        }
    };
    let h = msg.headers();
    if let Ok(vias) = h.vias() {
        for v in vias {
            let _ = (v.branch(), v.received(), v.rport(), v.ttl(), v.host(), v.to_string());
            let _ = v.params().iter().count();
        }
    }
    for na in [h.from(), h.to()].into_iter().flatten() {
        let _ = (na.tag(), na.display_name().map(|d| d.text().into_owned()), na.uri().to_string());
    }
    if let Ok(Contacts::List(l)) = h.contacts() {
        for c in l {
            let _ = (c.expires(), c.q(), c.params().iter().count());
            if let Some(u) = c.uri().as_sip() {
                let _ = (u.user_decoded(), u.host(), u.headers().count(), u.params().iter().count());
            }
        }
    }
    let _ = (h.routes(), h.record_routes(), h.diversions(), h.call_id(), h.cseq());
    let _ = (h.max_forwards(), h.content_length(), h.content_type(), h.expires());
    let _ = (h.require(), h.proxy_require(), h.supported(), h.unsupported(), h.allow());
    let _ = (h.authorization(), h.proxy_authorization(), h.www_authenticate(), h.proxy_authenticate());
    let _ = (h.accept(), h.warnings(), h.retry_after());
    match &msg {
        Message::Request(r) => {
            let _ = r.validate();
            if let Err(rej) = check_request(r, &cfg) {
                let _ = rej.to_response(r, Some("t"));
            }
            let _ = Response::from_request(r, 200, "OK").with_to_tag("x");
            if let Some(u) = r.uri().as_sip() {
                let _ = (u.user_decoded(), u.transport(), u.lr(), u.maddr());
            }
        }
        Message::Response(r) => {
            let _ = (r.validate(), check_response(r), r.reason_lossy());
        }
    }
    // Serialization of anything parsed parses again.
    let again = parse(&msg.to_bytes());
    assert!(again.is_ok(), "re-parse failed: {again:?}");
}

fn frame_all(data: &[u8]) {
    let mut f = StreamFramer::default();
    if f.handle_bytes(data).is_ok() {
        for _ in 0..data.len() + 2 {
            match f.poll_event() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[test]
fn no_prefix_panics() {
    for (name, data) in all_inputs() {
        for len in 0..=data.len() {
            let prefix = data.get(..len).unwrap_or_default();
            let r = std::panic::catch_unwind(|| {
                exercise(prefix);
                frame_all(prefix);
            });
            assert!(r.is_ok(), "{name}: prefix of {len} bytes panicked");
        }
    }
}

#[test]
fn no_mutation_panics() {
    const BYTES: [u8; 8] = [0x00, b' ', b'\r', b'\n', b';', b',', b'"', 0xff];
    for (name, data) in all_inputs() {
        // Only the header section is interesting (the body is opaque).
        let head_len = find(&data, b"\r\n\r\n").map_or(data.len(), |p| p + 4);
        for pos in 0..head_len {
            for (k, &b) in BYTES.iter().enumerate() {
                // Every position gets two replacement bytes, rotating.
                if (pos + k) % 4 != 0 {
                    continue;
                }
                let mut m = data.clone();
                m[pos] = b;
                let r = std::panic::catch_unwind(|| {
                    exercise(&m);
                    frame_all(&m);
                });
                assert!(r.is_ok(), "{name}: byte {pos} := {b:#04x} panicked");
            }
            let mut removed = data.clone();
            removed.remove(pos);
            let mut doubled = data.clone();
            doubled.insert(pos, data[pos]);
            for m in [removed, doubled] {
                let r = std::panic::catch_unwind(|| exercise(&m));
                assert!(r.is_ok(), "{name}: deletion/duplication at {pos} panicked");
            }
        }
    }
}

#[test]
fn accepted_messages_round_trip_and_stream() {
    let mut originals = Vec::new();
    let mut stream = Vec::new();
    for (name, data) in all_inputs() {
        let Ok(msg) = parse(&data) else { continue };
        let bytes = msg.to_bytes();
        let again = parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let values = |m: &Message| -> Vec<(String, Vec<u8>)> {
            m.headers().iter().map(|h| (h.name().to_string(), h.value().to_vec())).collect()
        };
        let mut expected = values(&msg);
        if !msg.headers().contains(&HeaderName::ContentLength) {
            // Serialization adds the missing Content-Length (RFC 2543 peers).
            expected.push(("Content-Length".into(), msg.body().len().to_string().into_bytes()));
        }
        assert_eq!(expected, values(&again), "{name}: header values");
        assert_eq!(msg.body(), again.body(), "{name}: body");
        assert_eq!(bytes, again.to_bytes(), "{name}: fixed point");
        // Messages whose Content-Length frames them can go on a stream.
        if msg.headers().content_length().ok().flatten().is_some() {
            stream.extend_from_slice(b"\r\n\r\n");
            stream.extend_from_slice(&bytes);
            originals.push(again);
        }
    }
    for chunk in [1usize, 13, 512, 4096] {
        let mut f = StreamFramer::default();
        let mut got = Vec::new();
        let mut pings = 0;
        for part in stream.chunks(chunk) {
            f.handle_bytes(part).expect("within limits");
            while let Some(ev) = f.poll_event().expect("valid stream") {
                match ev {
                    StreamEvent::Message(m) => got.push(m),
                    StreamEvent::KeepAlive(KeepAlive::Ping) => pings += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(pings, originals.len(), "chunk {chunk}");
        assert_eq!(got, originals, "chunk {chunk}");
    }
}
