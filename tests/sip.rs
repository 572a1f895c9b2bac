//! The SIP core against real peers: sipp drives OPTIONS and REGISTER (with
//! digest) over UDP and TCP against the running daemon; a raw socket checks
//! the protocol answers (400, 420, 423, 483, 501, keep-alives) and the
//! digest edge cases sipp cannot produce (SHA-256, replay).

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::daemon::{Daemon, sipp};

const DOMAIN: &str = "acme.example.com";
const ALICE_PW: &str = "alice-secret-1";

fn daemon(extra: &str, users: &[(&str, &str)]) -> Daemon {
    let mut d = Daemon::prepare(extra);
    d.seed_portal("acme", DOMAIN, users);
    d.start();
    d
}

fn register(d: &Daemon, scenario: &str, user: &str, password: &str, tcp: bool) -> (bool, String) {
    let target = if tcp { d.tcp } else { d.udp };
    sipp(scenario, target, tcp, &["-key", "domain", DOMAIN, "-key", "user", user, "-au", user, "-ap", password])
}

#[test]
fn options_over_udp_and_tcp() {
    let d = daemon("", &[]);
    for tcp in [false, true] {
        let (ok, out) = sipp("options.xml", if tcp { d.tcp } else { d.udp }, tcp, &[]);
        assert!(ok, "OPTIONS over {}:\n{out}", if tcp { "TCP" } else { "UDP" });
        assert!(out.contains("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER"), "{out}");
        assert!(out.contains(";received=127.0.0.1") || tcp, "rport/received stamped: {out}");
    }
}

#[test]
fn register_with_digest_over_udp_and_tcp() {
    let d = daemon("", &[("alice", ALICE_PW)]);
    for tcp in [false, true] {
        let (ok, out) = register(&d, "register_ok.xml", "alice", ALICE_PW, tcp);
        assert!(ok, "{out}");
        assert!(out.contains("WWW-Authenticate: Digest realm=\"acme.example.com\""), "{out}");
        assert!(out.contains(";expires=300"), "binding granted for 300 s: {out}");
    }
    d.wait_log(&["registered", "\"user\":\"alice\""]);
}

#[test]
fn wrong_password_is_challenged_again_and_logged_with_source() {
    let d = daemon("", &[("alice", ALICE_PW)]);
    let (ok, out) = register(&d, "register_401.xml", "alice", "not-the-password", false);
    assert!(ok, "{out}");
    let line = d.wait_log(&["REGISTER authentication failed", "\"user\":\"alice\""]);
    assert!(line.contains("\"source\":\"127.0.0.1\""), "{line}");
    assert!(line.contains("wrong password"), "{line}");
    assert!(line.contains("\"target\":\"security\""), "{line}");
    assert!(!line.contains("not-the-password"), "the password never reaches the log");
}

#[test]
fn unknown_user_is_challenged_like_a_wrong_password() {
    let d = daemon("", &[("alice", ALICE_PW)]);
    let (ok, out) = register(&d, "register_401.xml", "mallory", "whatever-pass", false);
    assert!(ok, "{out}");
    let line = d.wait_log(&["REGISTER authentication failed", "\"user\":\"mallory\""]);
    assert!(line.contains("\"known_user\":false"), "{line}");
}

#[test]
fn blocked_portal_refuses_registration_and_a_block_applies_while_running() {
    let d = daemon("", &[("alice", ALICE_PW)]);
    let (ok, out) = register(&d, "register_ok.xml", "alice", ALICE_PW, false);
    assert!(ok, "{out}");
    d.cli(&["portal", "block", "acme", "--reason", "violation"]);
    // The licence cache follows the database within about a second.
    let line = common::retry_until(5, "block never applied", || {
        let (ok, out) = register(&d, "register_403.xml", "alice", ALICE_PW, false);
        if ok { Ok(out) } else { Err(out) }
    });
    assert!(line.contains("Warning: 399 test-node \"portal-blocked"), "{line}");
    d.wait_log(&["REGISTER refused by the licence rules", "portal-blocked"]);
}

#[test]
fn plan_user_limit_is_enforced_and_changes_without_restart() {
    let mut d = Daemon::prepare("");
    d.seed_portal("acme", DOMAIN, &[("alice", ALICE_PW), ("bob", "bob-secret-12")]);
    d.cli(&["plan", "set", "free", "--max-users", "1"]);
    d.start();
    let (ok, out) = register(&d, "register_ok.xml", "alice", ALICE_PW, false);
    assert!(ok, "{out}");
    let (ok, out) = register(&d, "register_403.xml", "bob", "bob-secret-12", false);
    assert!(ok, "bob refused while alice holds the only seat: {out}");
    assert!(out.contains("user-limit"), "{out}");
    // A refresh of alice is still fine (she is not counted against herself).
    let (ok, out) = register(&d, "register_ok.xml", "alice", ALICE_PW, false);
    assert!(ok, "{out}");
    d.cli(&["plan", "set", "free", "--max-users", "2"]);
    common::retry_until(5, "new limit never applied", || {
        let (ok, out) = register(&d, "register_ok.xml", "bob", "bob-secret-12", false);
        if ok { Ok(()) } else { Err(out) }
    });
}

// ---- raw protocol checks ------------------------------------------------------

fn udp_exchange(d: &Daemon, msg: &str) -> String {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let msg = msg.replace("{port}", &sock.local_addr().expect("addr").port().to_string());
    sock.send_to(msg.as_bytes(), d.udp).expect("send");
    let mut buf = [0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).expect("a response");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn request(method: &str, extra: &str) -> String {
    format!(
        "{method} sip:acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{{port}};branch=z9hG4bK{}\r\n\
         From: <sip:probe@127.0.0.1>;tag=p1\r\nTo: <sip:acme.example.com>\r\nCall-ID: {}@probe\r\n\
         CSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n",
        unique(),
        unique()
    )
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

#[test]
fn protocol_errors_get_their_answers() {
    let d = daemon("", &[]);
    let r = udp_exchange(&d, &request("FOOBAR", "Max-Forwards: 70\r\n"));
    assert_eq!(status_line(&r), "SIP/2.0 501 Not Implemented", "{r}");
    assert!(r.contains("Allow: INVITE"), "{r}");
    let r = udp_exchange(&d, &request("OPTIONS", "Max-Forwards: 0\r\n"));
    assert!(status_line(&r).starts_with("SIP/2.0 483"), "{r}");
    let r = udp_exchange(&d, &request("OPTIONS", "Max-Forwards: 70\r\nRequire: 100rel, foo\r\n"));
    assert!(status_line(&r).starts_with("SIP/2.0 420"), "{r}");
    assert!(r.contains("Unsupported: 100rel, foo") || r.contains("Unsupported: 100rel,foo"), "{r}");
    // A malformed request that can still be answered gets 400 saying why.
    let bad = request("OPTIONS", "Max-Forwards: 70\r\n").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
    let r = udp_exchange(&d, &bad);
    assert!(status_line(&r).starts_with("SIP/2.0 400 "), "{r}");
    assert!(status_line(&r).len() > "SIP/2.0 400 ".len(), "reason says what was wrong: {r}");
    // A malformed Via below a usable top one: 400 naming the Via, routed
    // back by the top one.
    let bad = request("OPTIONS", "Max-Forwards: 70\r\nVia: SIP/2.0/UDP ;;;\r\n");
    let r = udp_exchange(&d, &bad);
    assert!(status_line(&r).starts_with("SIP/2.0 400 "), "{r}");
    assert!(status_line(&r).contains("Via"), "{r}");
    // Wrong version.
    let r = udp_exchange(&d, &request("OPTIONS", "Max-Forwards: 70\r\n").replace("SIP/2.0\r\nVia", "SIP/7.0\r\nVia"));
    assert!(status_line(&r).starts_with("SIP/2.0 505"), "{r}");
    // Unsupported URI scheme.
    let r = udp_exchange(
        &d,
        &request("OPTIONS", "Max-Forwards: 70\r\n").replace("OPTIONS sip:acme.example.com", "OPTIONS urn:x:y"),
    );
    assert!(status_line(&r).starts_with("SIP/2.0 416"), "{r}");
    // The daemon is still up after all that.
    let r = udp_exchange(&d, &request("OPTIONS", "Max-Forwards: 70\r\n"));
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
}

#[test]
fn retransmitted_request_gets_the_same_response() {
    let d = daemon("", &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let msg =
        request("OPTIONS", "Max-Forwards: 70\r\n").replace("{port}", &sock.local_addr().expect("a").port().to_string());
    let mut buf = [0u8; 65535];
    sock.send_to(msg.as_bytes(), d.udp).expect("send");
    let (n, _) = sock.recv_from(&mut buf).expect("first");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    sock.send_to(msg.as_bytes(), d.udp).expect("send again");
    let (n, _) = sock.recv_from(&mut buf).expect("second");
    let second = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(first, second, "the server transaction resends its response (same To tag)");
}

#[test]
fn tcp_keepalive_ping_gets_pong_and_oversize_input_closes() {
    let d = daemon("", &[]);
    let mut s = TcpStream::connect(d.tcp).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(b"\r\n\r\n").expect("ping");
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).expect("pong");
    assert_eq!(&pong, b"\r\n");
    // Then a normal request on the same connection.
    let msg =
        request("OPTIONS", "Max-Forwards: 70\r\n").replace("SIP/2.0/UDP", "SIP/2.0/TCP").replace("{port}", "5060");
    s.write_all(msg.as_bytes()).expect("send");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"));
    // More than max_message_bytes without a complete message: closed.
    let mut s = TcpStream::connect(d.tcp).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let junk = format!("OPTIONS sip:x SIP/2.0\r\nX-Pad: {}\r\n", "a".repeat(70 * 1024));
    let _ = s.write_all(junk.as_bytes());
    let mut one = [0u8; 1];
    let n = s.read(&mut one).unwrap_or(0);
    assert_eq!(n, 0, "connection closed");
    d.wait_log(&["tcp framing error"]);
}

fn digest_register(d: &Daemon, sock: &UdpSocket, auth: Option<&str>, cseq: u32, call_id: &str, expires: u32) -> String {
    let port = sock.local_addr().expect("addr").port();
    let msg = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{}\r\n\
         From: <sip:alice@{DOMAIN}>;tag=r1\r\nTo: <sip:alice@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:alice@127.0.0.1:{port}>\r\nMax-Forwards: 70\r\nExpires: {expires}\r\n{}Content-Length: 0\r\n\r\n",
        unique(),
        auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default()
    );
    sock.send_to(msg.as_bytes(), d.udp).expect("send");
    let mut buf = [0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).expect("response");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn param<'a>(challenge: &'a str, name: &str) -> &'a str {
    let start = challenge.find(&format!("{name}=\"")).map(|i| i + name.len() + 2).expect(name);
    let rest = &challenge[start..];
    &rest[..rest.find('"').expect("quote")]
}

fn authorization(alg: trunkgate::sip::digest::Algorithm, nonce: &str, nc: &str, password: &str) -> String {
    let ha1 = trunkgate::credentials::Ha1::compute("alice", DOMAIN, password);
    let ha1 = match alg {
        trunkgate::sip::digest::Algorithm::Md5 => ha1.md5,
        trunkgate::sip::digest::Algorithm::Sha256 => ha1.sha256,
    };
    let uri = format!("sip:{DOMAIN}");
    let response = trunkgate::sip::digest::client_response(alg, &ha1, "REGISTER", &uri, nonce, nc, "abcdef");
    format!(
        "Digest username=\"alice\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", \
         algorithm={}, qop=auth, nc={nc}, cnonce=\"abcdef\"",
        alg.as_str()
    )
}

#[test]
fn sha256_digest_replay_and_interval_too_brief() {
    use trunkgate::sip::digest::Algorithm;
    let d = daemon("[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n", &[("alice", ALICE_PW)]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let call_id = format!("{}@sha", unique());
    let r = digest_register(&d, &sock, None, 1, &call_id, 300);
    assert!(status_line(&r).starts_with("SIP/2.0 401"), "{r}");
    let challenges: Vec<&str> = r.lines().filter(|l| l.starts_with("WWW-Authenticate:")).collect();
    assert_eq!(challenges.len(), 2, "{r}");
    assert!(challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5"), "{r}");
    let nonce = param(challenges[0], "nonce").to_owned();
    let auth = authorization(Algorithm::Sha256, &nonce, "00000001", ALICE_PW);
    let r = digest_register(&d, &sock, Some(&auth), 2, &call_id, 300);
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    // The same credentials again (a replay, even with a new CSeq): refused.
    let r = digest_register(&d, &sock, Some(&auth), 3, &call_id, 300);
    assert!(status_line(&r).starts_with("SIP/2.0 401"), "replay: {r}");
    // The next nonce-count works, MD5 too.
    let auth = authorization(Algorithm::Md5, &nonce, "00000002", ALICE_PW);
    let r = digest_register(&d, &sock, Some(&auth), 4, &call_id, 300);
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    // Expires under the minimum: 423 with Min-Expires.
    let auth = authorization(Algorithm::Md5, &nonce, "00000003", ALICE_PW);
    let r = digest_register(&d, &sock, Some(&auth), 5, &call_id, 30);
    assert!(status_line(&r).starts_with("SIP/2.0 423"), "{r}");
    assert!(r.contains("Min-Expires: 60"), "{r}");
    // Unregister with Expires: 0.
    let auth = authorization(Algorithm::Md5, &nonce, "00000004", ALICE_PW);
    let r = digest_register(&d, &sock, Some(&auth), 6, &call_id, 0);
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    assert!(!r.contains("Contact:"), "no binding left: {r}");
}

#[test]
fn repeated_failures_lock_the_source_out() {
    let d = daemon("[auth]\nmax_failures = 3\nlockout_s = 60\n", &[("alice", ALICE_PW), ("bob", "bob-secret-12")]);
    for _ in 0..3 {
        let (ok, out) = register(&d, "register_401.xml", "alice", "wrong-password-x", false);
        assert!(ok, "{out}");
    }
    // Locked: even the right password is refused now.
    let (ok, out) = register(&d, "register_403.xml", "alice", ALICE_PW, false);
    assert!(!ok, "the first request of the scenario gets 403 at once, not the expected 401: {out}");
    assert!(out.contains("403 Forbidden"), "{out}");
    d.wait_log(&["REGISTER from a locked-out source refused", "\"source\":\"127.0.0.1\""]);
    // Only alice is locked out from this address: bob, behind the same NAT,
    // still registers.
    let (ok, out) = register(&d, "register_ok.xml", "bob", "bob-secret-12", false);
    assert!(ok, "{out}");
}

#[test]
fn daemon_survives_torture_messages_over_udp() {
    let d = daemon("", &[]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sip-torture");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut sent = 0;
    for entry in std::fs::read_dir(&dir).expect("torture dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "dat") {
            let bytes = std::fs::read(&path).expect("read");
            sock.send_to(&bytes, d.udp).expect("send");
            sent += 1;
        }
    }
    assert!(sent >= 40, "{sent} torture files sent");
    // Still serving.
    let r = udp_exchange(&d, &request("OPTIONS", "Max-Forwards: 70\r\n"));
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
}

/// IPv6: the daemon listens on [::1], answers OPTIONS over UDP and TCP, and
/// registers a phone, with the IPv6 source in `received` (no brackets, RFC 5118).
#[test]
fn ipv6_transports_answer_and_register() {
    let mut d = Daemon::prepare("");
    let text = std::fs::read_to_string(&d.config).expect("config");
    let text = text.replace(
        "listen = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]",
        "listen = [\"udp://[::1]:0\", \"tcp://[::1]:0\"]",
    );
    std::fs::write(&d.config, text).expect("write");
    d.seed_portal("acme", DOMAIN, &[("alice", ALICE_PW)]);
    d.start();
    assert!(d.udp.is_ipv6() && d.tcp.is_ipv6(), "{} {}", d.udp, d.tcp);
    let sock = UdpSocket::bind("[::1]:0").expect("bind ::1");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let port = sock.local_addr().expect("addr").port();
    let msg = request("OPTIONS", "Max-Forwards: 70\r\n")
        .replace("127.0.0.1:{port};branch", &format!("[::1]:{port};rport;branch"));
    sock.send_to(msg.as_bytes(), d.udp).expect("send");
    let mut buf = [0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).expect("response");
    let r = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status_line(&r).starts_with("SIP/2.0 200"), "{r}");
    assert!(r.contains(&format!(";rport={port}")) && r.contains(";received=::1\r\n"), "received without brackets: {r}");
    let mut s = TcpStream::connect(d.tcp).expect("connect ::1");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let msg =
        request("OPTIONS", "Max-Forwards: 70\r\n").replace("SIP/2.0/UDP 127.0.0.1:{port}", "SIP/2.0/TCP [::1]:5060");
    s.write_all(msg.as_bytes()).expect("send");
    let n = s.read(&mut buf).expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 200"));
    let (ok, out) = sipp(
        "register_ok.xml",
        d.udp,
        false,
        &["-key", "domain", DOMAIN, "-key", "user", "alice", "-au", "alice", "-ap", ALICE_PW, "-i", "::1"],
    );
    assert!(ok, "{out}");
}

/// Extranet users (guests) register only where the portal allows them; a
/// disabled user is refused until enabled again.
#[test]
fn extranet_and_disabled_users() {
    let mut d = Daemon::prepare("");
    d.seed_portal("acme", DOMAIN, &[("alice", ALICE_PW)]);
    d.cli_stdin(&["user", "add", "--portal", "acme", "--username", "guest", "--extranet"], Some("guest-secret-12\n"));
    d.cli(&["user", "disable", "--portal", "acme", "--username", "alice"]);
    d.start();
    let (ok, out) = register(&d, "register_403.xml", "guest", "guest-secret-12", false);
    assert!(ok, "{out}");
    assert!(out.contains("extranet-not-allowed"), "{out}");
    let (ok, out) = register(&d, "register_403.xml", "alice", ALICE_PW, false);
    assert!(ok, "{out}");
    assert!(out.contains("user-disabled"), "{out}");
    d.cli(&["portal", "set", "acme", "--allow-extranet-calls", "true"]);
    d.cli(&["user", "enable", "--portal", "acme", "--username", "alice"]);
    // Both changes reach the node within about a second.
    for (user, pw) in [("guest", "guest-secret-12"), ("alice", ALICE_PW)] {
        common::retry_until(5, &format!("{user} still refused"), || {
            let (ok, out) = register(&d, "register_ok.xml", user, pw, false);
            if ok { Ok(()) } else { Err(out) }
        });
    }
}
