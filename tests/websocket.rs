//! SIP over secure WebSocket (RFC 7118) against the real daemon: a phone
//! that speaks as a browser's SIP library does (rustls + tungstenite,
//! `*.invalid` Via host) registers over `wss://`, sipp as the PBX calls it,
//! and the connection's end ends what was bound to it: its registration,
//! a fork still ringing (480 to the PBX) and an answered call (BYE to the
//! PBX, reason `browser-gone`, channel back).

mod common;

use common::calls::{exactly_n_records, pbx, wait_calls, wait_cdr, wait_no_calls};
use common::daemon::{Daemon, pbx_refused_scenario, scenarios};
use common::ws::{WsPhone, header, https_get, ws_connect};

const ALICE: (&str, &str) = ("alice", "alice-secret-1");

/// This file is about signalling; media has its own tests.
fn wss_daemon(ping_s: u64) -> (Daemon, std::path::PathBuf) {
    common::ws::wss_daemon(&format!("ws_ping_interval_s = {ping_s}"), "[media]\nanchor = false")
}

fn registered_phone(d: &Daemon, cert: &std::path::Path) -> WsPhone {
    let mut phone = WsPhone::connect(d.wss.expect("wss listener"), cert);
    let answer = phone.register(ALICE.0, "acme.example.com", ALICE.1, 300);
    assert!(answer.starts_with("SIP/2.0 200"), "REGISTER over wss: {answer}");
    let contact = header(&answer, "Contact").expect("200 lists the binding");
    assert!(contact.contains(&phone.contact), "binding {contact} is the phone's contact {}", phone.contact);
    phone
}

const ANSWER_SDP: &str = "v=0\no=- 7 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n\
                          m=audio 40000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n";

#[test]
fn a_call_reaches_the_browser_over_wss_and_ends_when_its_socket_dies() {
    let (mut d, cert) = wss_daemon(30);
    let mut phone = registered_phone(&d, &cert);

    let call = pbx(&d, &scenarios().join("pbx_call_wait_bye.xml"), "+15550001", &[]);
    let invite = phone.expect("INVITE ", 10);
    // The INVITE goes to the registered contact over the phone's own
    // connection, with our Via and Contact on the WebSocket transport.
    let ruri = invite.lines().next().expect("request line");
    assert_eq!(ruri, format!("INVITE {} SIP/2.0", phone.contact));
    let via = header(&invite, "Via").expect("Via");
    assert!(via.starts_with("SIP/2.0/WSS 127.0.0.1:"), "our Via names the transport: {via}");
    let contact = header(&invite, "Contact").expect("Contact");
    assert!(contact.contains(";transport=wss"), "our Contact names the transport: {contact}");
    phone.answer(&invite, "180 Ringing", None);
    phone.answer(&invite, "200 OK", Some(ANSWER_SDP));
    phone.expect("ACK ", 5);
    wait_calls(&d, "the call is up", |l| l.len() == 1);

    // The browser's tab dies: no BYE from it, its TCP connection just ends.
    drop(phone);
    let (ok, out) = call.wait();
    assert!(ok, "the PBX gets a BYE for the call whose browser went away: {out}");
    d.wait_log(&["websocket closed: its registrations removed"]);
    let records = exactly_n_records(&mut d, 1);
    assert_eq!(records[0]["outcome"], "completed", "{records:?}");
    assert_eq!(records[0]["reason"], "browser-gone", "{records:?}");
    assert!(records[0]["answered_at"].is_string(), "{records:?}");
    assert_eq!(records[0]["target_user"], "alice", "{records:?}");
}

#[test]
fn a_ringing_browser_that_disappears_fails_its_fork_and_the_pbx_gets_480() {
    let (mut d, cert) = wss_daemon(30);
    let mut phone = registered_phone(&d, &cert);
    let dir = tempfile::tempdir().expect("tempdir");
    let call = pbx(&d, &pbx_refused_scenario(dir.path(), 480), "+15550001", &[]);
    let invite = phone.expect("INVITE ", 10);
    phone.answer(&invite, "180 Ringing", None);
    drop(phone);
    let (ok, out) = call.wait();
    assert!(ok, "480 to the PBX at once, not after the ring timeout: {out}");
    wait_cdr(&d, 1);
    wait_no_calls(&d); // the channel back (leases are written behind)

    // Its registration went with the connection: a new call finds nobody.
    let call = pbx(&d, &pbx_refused_scenario(dir.path(), 480), "+15550001", &[]);
    let (ok, out) = call.wait();
    assert!(ok, "no binding left: {out}");
    let records = exactly_n_records(&mut d, 2);
    // Newest first: the second call is refused before ringing anyone (no
    // binding), the first failed as a fork.
    let summary = |r: &serde_json::Value| format!("{} {} {}", r["outcome"], r["reason"], r["sip_status"]);
    assert_eq!(summary(&records[0]), r#""refused" "unavailable" 480"#, "{records:?}");
    assert_eq!(summary(&records[1]), r#""unavailable" "unavailable" 480"#, "{records:?}");
    assert_eq!(records[1]["target_user"], serde_json::Value::Null, "nobody answered");
}

#[test]
fn a_browser_that_stops_answering_pings_is_dropped_with_its_registration() {
    let (d, cert) = wss_daemon(1);
    let mut phone = registered_phone(&d, &cert);
    // Reading answers pings; a phone that stops reading (the test waits
    // on the daemon's log meanwhile) stops answering.
    d.wait_log(&["websocket connection closed", "keep-alive timeout"]);
    d.wait_log(&["websocket closed: its registrations removed"]);
    assert!(phone.recv(2).is_err(), "the server closed the connection");
}

#[test]
fn the_https_listener_serves_the_softphone_and_wants_the_sip_subprotocol() {
    let (d, cert) = wss_daemon(30);
    let addr = d.wss.expect("wss listener");

    let (head, body) = https_get(addr, &cert, "/softphone");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(lower.contains("cache-control: no-store"), "{head}");
    assert_eq!(body.len(), include_str!("../web/softphone/dist/index.html").len(), "the embedded page, whole");
    assert!(body.contains("data-testid=\"login-form\""), "the softphone page");

    let (head, _) = https_get(addr, &cert, "/");
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    assert!(head.to_ascii_lowercase().contains("location: /softphone"), "{head}");

    // RFC 7118 §4: a WebSocket without the sip subprotocol is no SIP peer.
    match ws_connect(addr, &cert, "/sip", None) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        Err(e) => panic!("expected a 400 refusal, got {e}"),
        Ok(_) => panic!("a WebSocket without the sip subprotocol was accepted"),
    }
    // Any list that names sip is fine, and gets exactly sip back.
    let (_, resp) = ws_connect(addr, &cert, "/", Some("chat, sip")).expect("handshake");
    assert_eq!(resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()), Some("sip"));
}

/// Browser legs spread over the relay threads like any call's: with two
/// threads there are two browsers' ports (one each, as the start log says),
/// and two calls in a row offer the browser one each.
#[test]
fn browser_legs_spread_over_the_relay_threads_each_with_its_port() {
    let (mut d, cert) = common::ws::wss_daemon(
        "ws_ping_interval_s = 30",
        "[media]\npublic_address = [\"127.0.0.1\"]\nbind_address = [\"127.0.0.1\"]\nthreads = 2\nwebrtc_port = 0",
    );
    let started = d.wait_log(&["media relay started"]);
    let v: serde_json::Value = serde_json::from_str(&started).expect("json log line");
    let ports: Vec<u16> = v["webrtc_v4"].as_str().unwrap_or("").split(',').filter_map(|p| p.parse().ok()).collect();
    assert_eq!(ports.len(), 2, "one browsers' port per relay thread: {started}");
    assert_ne!(ports[0], ports[1]);
    let mut phone = registered_phone(&d, &cert);
    let dir = tempfile::tempdir().expect("tempdir");
    // The PBX's INVITE with an offer (the refused scenario's, plus SDP).
    let plain = std::fs::read_to_string(pbx_refused_scenario(dir.path(), 486)).expect("scenario");
    let with_sdp = plain.replace(
        "Max-Forwards: 70\nContent-Length: 0\n\n]]></send>\n  <recv response=\"100\"",
        "Max-Forwards: 70\nContent-Type: application/sdp\nContent-Length: [len]\n\nv=0\no=pbx 1 1 IN IP4 127.0.0.2\ns=-\n\
         c=IN IP4 127.0.0.2\nt=0 0\nm=audio 40002 RTP/AVP 0 8\na=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000\n]]></send>\n  <recv response=\"100\"",
    );
    assert_ne!(with_sdp, plain, "the offer went in");
    let scenario = dir.path().join("pbx_offer_refused_486.xml");
    std::fs::write(&scenario, with_sdp).expect("scenario");
    let mut offered = Vec::new();
    for _ in 0..2 {
        let call = pbx(&d, &scenario, "+15550001", &[]);
        let invite = phone.expect("INVITE ", 10);
        let candidate = invite
            .lines()
            .find(|l| l.starts_with("a=candidate:"))
            .unwrap_or_else(|| panic!("a host candidate: {invite}"))
            .to_owned();
        let port: u16 = candidate.split_whitespace().nth(5).and_then(|p| p.parse().ok()).expect("candidate port");
        offered.push(port);
        phone.answer(&invite, "486 Busy Here", None);
        let (ok, out) = call.wait();
        assert!(ok, "{out}");
    }
    offered.sort_unstable();
    let mut expected = ports.clone();
    expected.sort_unstable();
    assert_eq!(offered, expected, "each call's browser leg on its own thread's port");
    exactly_n_records(&mut d, 2);
}
