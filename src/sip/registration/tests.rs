//! The registration machine in virtual time, against a scripted registrar.

use super::*;
use crate::sip::digest::{Algorithm, Authenticator, DigestConfig, DigestCredentials};
use crate::sip::message::{Message, parse};

fn config(seed: u64) -> RegistrationConfig {
    RegistrationConfig {
        registrar: Uri::parse("sip:sip.provider.example").expect("uri"),
        aor: "sip:acct42@sip.provider.example".into(),
        contact: "sip:tg-acme@203.0.113.1:5060".into(),
        expires: Duration::from_secs(3600),
        credentials: Some(Credentials { username: "acct42".into(), password: "pw-42!".into() }),
        call_id: "reg1@trunkgate".into(),
        from_tag: "rt1".into(),
        seed,
        backoff: BACKOFF_BASE,
    }
}

/// The request as the registrar receives it (a Via added, as the driver does).
fn sent(m: &mut Registration) -> Request {
    let r = m.poll_request().expect("a REGISTER");
    assert!(m.poll_request().is_none(), "one at a time");
    let mut bytes = r.to_bytes();
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    let at = text.find("\r\n").expect("request line") + 2;
    let via = "Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKreg\r\n";
    bytes.splice(at..at, via.bytes());
    match parse(&bytes).expect("parses") {
        Message::Request(r) => r,
        Message::Response(_) => panic!("a request"),
    }
}

fn reply(req: &Request, status: u16, headers: &[(HeaderName, &str)]) -> Response {
    let mut r = Response::from_request(req, status, "X").with_to_tag("reg").expect("tag");
    for (n, v) in headers {
        r.headers_mut().push(n.clone(), *v).expect("header");
    }
    r
}

fn header(r: &Request, n: HeaderName) -> String {
    r.headers().get(&n).and_then(|h| h.value_str()).unwrap_or("").to_owned()
}

#[test]
fn registers_and_refreshes_at_half_the_granted_expiry_in_one_dialog() {
    let t0 = crate::clock::instant();
    let mut m = Registration::new(config(1));
    m.start(t0);
    let r1 = sent(&mut m);
    assert_eq!(r1.uri().as_str(), "sip:sip.provider.example");
    assert_eq!(header(&r1, HeaderName::To), "<sip:acct42@sip.provider.example>");
    assert_eq!(header(&r1, HeaderName::Contact), "<sip:tg-acme@203.0.113.1:5060>");
    assert_eq!(header(&r1, HeaderName::Expires), "3600");
    assert_eq!(m.state(), &RegState::Registering);
    // The registrar grants 600 s on our contact (and says 3600 elsewhere).
    m.handle_response(
        t0,
        &reply(
            &r1,
            200,
            &[(HeaderName::Contact, "<sip:tg-acme@203.0.113.1:5060>;expires=600"), (HeaderName::Expires, "3600")],
        ),
    );
    let refresh = t0 + Duration::from_secs(300);
    assert_eq!(
        m.state(),
        &RegState::Registered {
            expires: Duration::from_secs(600),
            expires_at: t0 + Duration::from_secs(600),
            refresh_at: refresh
        }
    );
    assert_eq!(m.poll_timeout(), Some(refresh));
    m.handle_timeout(refresh - Duration::from_millis(1));
    assert!(m.poll_request().is_none(), "not before its time");
    m.handle_timeout(refresh);
    let r2 = sent(&mut m);
    assert_eq!(header(&r2, HeaderName::CallId), "reg1@trunkgate", "§10.2.4: the same Call-ID");
    assert_eq!(header(&r2, HeaderName::From), "<sip:acct42@sip.provider.example>;tag=rt1");
    assert_eq!(header(&r2, HeaderName::CSeq), "2 REGISTER");
    // Only Expires this time: that is the grant.
    m.handle_response(refresh, &reply(&r2, 200, &[(HeaderName::Expires, "120")]));
    assert_eq!(m.poll_timeout(), Some(refresh + Duration::from_secs(60)));
}

#[test]
fn a_challenge_is_answered_with_the_trunks_credentials_and_a_refusal_backs_off() {
    let t0 = crate::clock::instant();
    let mut m = Registration::new(config(7));
    let mut registrar =
        Authenticator::new(DigestConfig { algorithms: vec![Algorithm::Md5], ..DigestConfig::default() }, [5; 32]);
    let now_unix = 1_780_000_000;
    m.start(t0);
    let r1 = sent(&mut m);
    let challenge = registrar.challenges("sip.provider.example", now_unix, [1; 8], false).remove(0);
    m.handle_response(t0, &reply(&r1, 401, &[(HeaderName::WwwAuthenticate, &challenge)]));
    let r2 = sent(&mut m);
    assert_eq!(header(&r2, HeaderName::CSeq), "2 REGISTER");
    assert_eq!(header(&r2, HeaderName::Expires), "3600");
    let auth = r2.headers().authorization().expect("parses");
    let c = DigestCredentials::from_params(
        auth[0].params().iter().map(|p| (p.name, p.unquoted_value().map(|v| v.into_owned()).unwrap_or_default())),
    )
    .expect("credentials");
    let ha1 = crate::credentials::Ha1::compute("acct42", "sip.provider.example", "pw-42!").md5;
    assert_eq!(
        registrar.verify(&c, "REGISTER", "sip.provider.example", |_| Some(ha1.clone()), now_unix),
        Ok(Algorithm::Md5)
    );
    // Refused again: not a stale nonce, so the credentials are wrong.
    let again = registrar.challenges("sip.provider.example", now_unix, [2; 8], false).remove(0);
    m.handle_response(t0, &reply(&r2, 401, &[(HeaderName::WwwAuthenticate, &again)]));
    assert!(m.poll_request().is_none(), "no third try at once");
    let RegState::Failed { status, retry_at, failures, .. } = m.state().clone() else { panic!("{:?}", m.state()) };
    assert_eq!((status, failures), (401, 1));
    let wait = retry_at - t0;
    assert!(wait >= BACKOFF_BASE / 2 && wait < BACKOFF_BASE, "jittered first back-off: {wait:?}");
    // A stale nonce is answered again, without counting as a refusal.
    m.handle_timeout(retry_at);
    let r3 = sent(&mut m);
    let c1 = registrar.challenges("sip.provider.example", now_unix, [3; 8], false).remove(0);
    m.handle_response(retry_at, &reply(&r3, 401, &[(HeaderName::WwwAuthenticate, &c1)]));
    let r4 = sent(&mut m);
    let stale = registrar.challenges("sip.provider.example", now_unix, [4; 8], true).remove(0);
    m.handle_response(retry_at, &reply(&r4, 401, &[(HeaderName::WwwAuthenticate, &stale)]));
    let r5 = sent(&mut m);
    assert_eq!(header(&r5, HeaderName::CSeq), "5 REGISTER");
    m.handle_response(retry_at, &reply(&r5, 200, &[]));
    assert_eq!(m.state().name(), "registered");
    assert_eq!(m.poll_timeout(), Some(retry_at + Duration::from_secs(1800)), "asked expiry when none is given");
}

#[test]
fn interval_too_brief_raises_the_expiry_to_min_expires_at_once() {
    let t0 = crate::clock::instant();
    let mut m = Registration::new(RegistrationConfig { expires: Duration::from_secs(60), ..config(3) });
    m.start(t0);
    let r1 = sent(&mut m);
    m.handle_response(t0, &reply(&r1, 423, &[(HeaderName::MinExpires, "1800")]));
    let r2 = sent(&mut m);
    assert_eq!(header(&r2, HeaderName::Expires), "1800");
    assert_eq!(m.asked_expiry(), Duration::from_secs(1800));
    // A 423 that asks for no more than we did is a failure, not a loop.
    m.handle_response(t0, &reply(&r2, 423, &[(HeaderName::MinExpires, "1800")]));
    assert!(m.poll_request().is_none());
    assert_eq!(m.state().name(), "failed");
}

#[test]
fn failures_back_off_exponentially_with_jitter_and_honour_retry_after() {
    let t0 = crate::clock::instant();
    let mut m = Registration::new(config(11));
    m.start(t0);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..8 {
        let r = sent(&mut m);
        m.handle_response(now, &reply(&r, 503, &[]));
        let RegState::Failed { retry_at, .. } = m.state().clone() else { panic!("{:?}", m.state()) };
        waits.push((retry_at - now).as_secs_f64());
        now = retry_at;
        m.handle_timeout(now);
    }
    // 30 s doubling, capped at 1800 s, each times a jitter in [0.5, 1).
    let full = [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1800.0, 1800.0];
    for (w, f) in waits.iter().zip(full) {
        assert!(*w >= f / 2.0 && *w < f, "{waits:?}");
    }
    // Retry-After wins over the back-off.
    let r = sent(&mut m);
    m.handle_response(now, &reply(&r, 503, &[(HeaderName::RetryAfter, "120")]));
    assert_eq!(m.poll_timeout(), Some(now + Duration::from_secs(120)));
    // No answer at all is a failure too.
    m.handle_timeout(now + Duration::from_secs(120));
    let _ = sent(&mut m);
    m.handle_failure(now + Duration::from_secs(120), 408);
    let RegState::Failed { status, reason, failures, .. } = m.state().clone() else { panic!() };
    assert_eq!((status, reason.as_str(), failures), (408, "no answer", 10));
    // Success resets the count.
    m.handle_timeout(now + Duration::from_secs(4000));
    let r = sent(&mut m);
    m.handle_response(now + Duration::from_secs(4000), &reply(&r, 200, &[]));
    let r = {
        m.handle_timeout(now + Duration::from_secs(4000 + 1800));
        sent(&mut m)
    };
    let at = now + Duration::from_secs(5800);
    m.handle_response(at, &reply(&r, 500, &[]));
    let RegState::Failed { failures, retry_at, .. } = m.state().clone() else { panic!() };
    assert_eq!(failures, 1);
    assert!(retry_at - at < BACKOFF_BASE);
}

#[test]
fn different_seeds_do_not_retry_in_step() {
    let t0 = crate::clock::instant();
    let first_wait = |seed| {
        let mut m = Registration::new(config(seed));
        m.start(t0);
        let r = sent(&mut m);
        m.handle_response(t0, &reply(&r, 503, &[]));
        m.poll_timeout().expect("retry") - t0
    };
    let waits: std::collections::BTreeSet<Duration> = (1..=20).map(first_wait).collect();
    assert!(waits.len() >= 18, "20 trunks, nearly as many different waits: {waits:?}");
}

#[test]
fn stop_removes_the_binding_with_expires_zero() {
    let t0 = crate::clock::instant();
    let mut m = Registration::new(config(2));
    m.start(t0);
    let r = sent(&mut m);
    m.handle_response(t0, &reply(&r, 200, &[]));
    m.stop(t0 + Duration::from_secs(5));
    let bye = sent(&mut m);
    assert_eq!(header(&bye, HeaderName::Expires), "0");
    assert_eq!(header(&bye, HeaderName::CSeq), "2 REGISTER");
    assert_eq!(m.state(), &RegState::Unregistering);
    assert_eq!(m.poll_timeout(), None);
    m.handle_response(t0 + Duration::from_secs(5), &reply(&bye, 200, &[]));
    assert_eq!(m.state(), &RegState::Idle);
    // A stale answer to an older CSeq changes nothing.
    let mut m = Registration::new(config(2));
    m.start(t0);
    let r1 = sent(&mut m);
    m.handle_response(t0, &reply(&r1, 423, &[(HeaderName::MinExpires, "7200")]));
    let _r2 = sent(&mut m);
    m.handle_response(t0, &reply(&r1, 200, &[]));
    assert_eq!(m.state(), &RegState::Registering);
}
