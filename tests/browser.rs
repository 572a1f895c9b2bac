//! The softphone page in a real browser: Debian's Chromium, headless with a
//! fake microphone, driven by playwright-core through the page's own
//! controls against the real daemon over `wss://`. Screenshots of each run
//! are kept under `target/browser-screenshots/<test>/`.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::browser::Browser;
use common::calls::{PBX_IP, exactly_n_records};
use common::daemon::{SippChild, scenarios, sipp_start};
use common::ws::wss_daemon;

fn daemon() -> common::daemon::Daemon {
    wss_daemon("", "").0
}

/// Prints the daemon's log when the test fails (with the browser's steps,
/// which [`Browser::wait`] prints).
struct LogOnPanic<'a>(&'a common::daemon::Daemon);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("daemon log:\n{}", self.0.log_text());
            eprintln!("call records:\n{}", self.0.cli(&["cdr", "--json"]));
        }
    }
}

fn url(d: &common::daemon::Daemon) -> String {
    format!("https://{}", d.wss.expect("wss listener"))
}

#[test]
fn a_wrong_password_is_shown_on_the_page() {
    let d = daemon();
    let b = Browser::start(
        "wrong-password",
        &url(&d),
        ("acme.example.com", "alice", "not-her-password"),
        "",
        "a_wrong_password_is_shown_on_the_page",
    );
    let shown = b.wait("error-shown", 30);
    assert_eq!(shown["text"], "Wrong username or password.", "{shown}");
    assert_eq!(shown["state"], "logged-out", "{shown}");
    assert!(b.finish(), "the browser script ended cleanly");
    // The daemon saw a REGISTER over the browser's WebSocket and refused it.
    d.wait_log(&["REGISTER authentication failed", "alice"]);
    d.wait_log(&["websocket connection open"]);
}

/// A port range of 8 pairs nobody uses now (see tests/media.rs).
fn port_range() -> (u16, u16) {
    loop {
        let mut r = [0u8; 2];
        getrandom::fill(&mut r).expect("random");
        let p = (12_000 + u16::from_le_bytes(r) % 7_980) & !1;
        if (p..p + 16).all(|q| UdpSocket::bind(("0.0.0.0", q)).is_ok()) {
            return (p, p + 15);
        }
    }
}

/// A daemon that anchors media, browsers on a shared port of their own.
/// Its sockets bind the unspecified address (the default): on a host with
/// several addresses (this one: loopback and 192.0.2.2, from which
/// Chromium sends to 127.0.0.1), replies must leave from the address each
/// datagram was sent to.
fn media_daemon() -> (common::daemon::Daemon, u16) {
    let (min, max) = port_range();
    let media =
        format!("[media]\npublic_address = [\"127.0.0.1\"]\nport_min = {min}\nport_max = {max}\nwebrtc_port = 0\n");
    (wss_daemon("", &media).0, min)
}

/// The PBX: sipp signalling `scenario` (a call to +15550001 whose SDP
/// points at `[rtp]`), and that socket of the test, its media.
fn pbx_call(d: &common::daemon::Daemon, scenario: &str) -> (SippChild, UdpSocket) {
    let rtp = UdpSocket::bind("127.0.0.2:0").expect("pbx rtp");
    let rtp_port = rtp.local_addr().expect("addr").port().to_string();
    let call = sipp_start(
        &scenarios().join(scenario),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "1", "-key", "number", "+15550001", "-key", "rtp", &rtp_port],
    );
    (call, rtp)
}

/// The PBX's media: plays Debian's G.711 capture (its payloads, in a loop,
/// numbered on, as payload type `pt`: the capture is PCMA, 8) to
/// trunkgate's port `to` every 20 ms, and keeps what comes back.
struct PbxMedia {
    stop: Arc<AtomicBool>,
    got: std::thread::JoinHandle<Vec<(SocketAddr, Vec<u8>)>>,
}

impl PbxMedia {
    fn start(sock: UdpSocket, to: SocketAddr, pt: u8) -> PbxMedia {
        let stop = Arc::new(AtomicBool::new(false));
        let audio = common::capture("g711a.pcap");
        let reader = sock.try_clone().expect("clone");
        let stop_reader = stop.clone();
        let got = std::thread::spawn(move || {
            reader.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while !stop_reader.load(Ordering::Relaxed) {
                if let Ok((n, from)) = reader.recv_from(&mut buf) {
                    got.push((from, buf[..n].to_vec()));
                }
            }
            got
        });
        let stop_sender = stop.clone();
        std::thread::spawn(move || {
            let mut i: u32 = 0;
            while !stop_sender.load(Ordering::Relaxed) {
                let mut p = audio[i as usize % audio.len()].clone();
                p[1] = (p[1] & 0x80) | pt;
                p[2..4].copy_from_slice(&(i as u16).to_be_bytes());
                p[4..8].copy_from_slice(&(160 * i).to_be_bytes());
                let _ = sock.send_to(&p, to);
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        PbxMedia { stop, got }
    }

    /// Stops playing; what came back, in order.
    fn stop(self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.got.join().expect("pbx media")
    }
}

/// The RFC 4733 digits in `packets` (type 101), one per event (its first
/// packet), in order.
fn digits(packets: &[(SocketAddr, Vec<u8>)]) -> String {
    let mut out = String::new();
    let mut last_ts = None;
    for (_, p) in packets {
        if p.len() < 16 || p[1] & 0x7f != 101 {
            continue;
        }
        let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        if last_ts == Some(ts) {
            continue;
        }
        last_ts = Some(ts);
        out.push(match p[12] {
            0..=9 => char::from(b'0' + p[12]),
            10 => '*',
            11 => '#',
            _ => '?',
        });
    }
    out
}

#[test]
fn a_browser_answers_a_pbx_call_with_audio_both_ways_digits_hold_and_hang_up() {
    let test = "a_browser_answers_a_pbx_call_with_audio_both_ways_digits_hold_and_hang_up";
    let (mut d, min) = media_daemon();
    let log = LogOnPanic(&d);
    let b = Browser::start("answer", &url(&d), ("acme.example.com", "alice", "alice-secret-1"), "159#", test);
    b.wait("registered", 30);

    // The PBX: sipp signals, a socket of the test is its media.
    let (call, rtp) = pbx_call(&d, "pbx_call_browser.xml");
    let incoming = b.wait("incoming", 20);
    assert_eq!(incoming["caller"], "+15550100", "{incoming}");
    b.wait("answered", 20);
    // trunkgate's side toward the PBX is the first pair of the range.
    let media = PbxMedia::start(rtp, SocketAddr::from(([127, 0, 0, 1], min)), 8);

    let audio = b.wait("audio", 30);
    let stats = &audio["stats"];
    assert!(stats["inbound"]["packetsReceived"].as_u64().unwrap_or(0) > 20, "PBX audio reaches the browser: {audio}");
    assert!(stats["inbound"]["totalAudioEnergy"].as_f64().unwrap_or(0.0) > 0.0, "and is heard: {audio}");
    assert!(stats["outbound"]["packetsSent"].as_u64().unwrap_or(0) > 20, "the microphone is sent: {audio}");
    assert_eq!(stats["dtls"]["state"], "connected", "{audio}");

    let held = b.wait("held", 30);
    let resumed = b.wait("resumed", 30);
    let after = b.wait("after-resume", 30);
    b.wait("hung-up", 30);
    let (ok, out) = call.wait();
    let got = media.stop();
    assert!(ok, "PBX side (hold and resume re-INVITEs, the browser's BYE):\n{out}\n{}", b.events().len());
    assert!(b.finish(), "the browser script ended cleanly");

    // What the browser's fake microphone sent reached the PBX, from
    // trunkgate's port, in G.711; its keypad digits as RFC 4733 events.
    let relay = SocketAddr::from(([127, 0, 0, 1], min));
    assert!(got.iter().all(|(from, _)| *from == relay), "all from trunkgate's port toward the PBX");
    let voice = got.iter().filter(|(_, p)| matches!(p[1] & 0x7f, 0 | 8)).count();
    assert!(voice > 50, "the browser's audio at the PBX: {voice} packets");
    assert_eq!(digits(&got), "159#", "the keypad's digits, in order, once each");

    // Hold stopped the PBX's audio toward the browser; resume brought it back.
    let rx = |v: &serde_json::Value| v["stats"]["inbound"]["packetsReceived"].as_u64().unwrap_or(0);
    assert!(rx(&resumed) <= rx(&held) + 5, "held: {held} then {resumed}");
    assert!(rx(&after) > rx(&resumed) + 20, "resumed: {resumed} then {after}");

    drop(log);
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    assert_eq!(rec["target_user"], "alice", "{rec}");
    assert!(rec["media"]["user"]["rx_packets"].as_u64().unwrap_or(0) > 50, "{rec}");
    assert!(rec["media"]["user"]["tx_held"].as_u64().unwrap_or(0) > 0, "held packets counted: {rec}");
    assert!(rec["media"]["pbx"]["rx_packets"].as_u64().unwrap_or(0) > 50, "{rec}");
    let shots = std::fs::read_dir(common::browser::screenshot_dir(test)).map(|d| d.count()).unwrap_or(0);
    assert!(shots >= 4, "screenshots kept with the test output");
}

#[test]
fn a_browser_that_closes_mid_call_ends_the_call_at_the_pbx() {
    let test = "a_browser_that_closes_mid_call_ends_the_call_at_the_pbx";
    let (mut d, min) = media_daemon();
    let log = LogOnPanic(&d);
    let b = Browser::start("close-mid-call", &url(&d), ("acme.example.com", "alice", "alice-secret-1"), "", test);
    b.wait("registered", 30);
    let (call, rtp) = pbx_call(&d, "pbx_call_rtp_wait_bye.xml");
    b.wait("answered", 30);
    // pbx_call_rtp offers PCMU only.
    let media = PbxMedia::start(rtp, SocketAddr::from(([127, 0, 0, 1], min)), 0);
    let audio = b.wait("audio", 30);
    assert!(audio["stats"]["inbound"]["packetsReceived"].as_u64().unwrap_or(0) > 20, "{audio}");
    b.wait("closing", 10);
    // The tab is gone: no BYE from it; its WebSocket closes.
    let (ok, out) = call.wait();
    media.stop();
    assert!(ok, "the PBX gets a BYE:\n{out}");
    drop(log);
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    assert_eq!(rec["reason"], "browser-gone", "{rec}");
}

#[test]
fn the_pbx_holds_and_resumes_a_browser() {
    let test = "the_pbx_holds_and_resumes_a_browser";
    let (mut d, min) = media_daemon();
    let log = LogOnPanic(&d);
    let b = Browser::start("answer-until-end", &url(&d), ("acme.example.com", "alice", "alice-secret-1"), "", test);
    b.wait("registered", 30);
    let (call, rtp) = pbx_call(&d, "pbx_call_browser_hold.xml");
    b.wait("answered", 30);
    // The PBX goes on sending while it holds (sendonly).
    let media = PbxMedia::start(rtp, SocketAddr::from(([127, 0, 0, 1], min)), 0);
    b.wait("ended", 40);
    let (ok, out) = call.wait();
    media.stop();
    assert!(ok, "PBX side: the hold re-INVITE answered recvonly, the resume sendrecv:\n{out}");
    let samples: Vec<serde_json::Value> = b.events().into_iter().filter(|e| e["event"] == "sample").collect();
    assert!(b.finish(), "the browser script ended cleanly");
    drop(log);

    let sent = |s: &serde_json::Value| s["stats"]["outbound"]["packetsSent"].as_u64().unwrap_or(0);
    let got = |s: &serde_json::Value| s["stats"]["inbound"]["packetsReceived"].as_u64().unwrap_or(0);
    let held: Vec<&serde_json::Value> =
        samples.iter().filter(|s| s["said"].as_str().is_some_and(|t| t.contains("Held by the other side"))).collect();
    assert!(held.len() >= 4, "the page says it is held (about 2.5 s of samples): {samples:?}");
    let (first, last) = (held[0], held[held.len() - 1]);
    // Held by the PBX: the browser stops sending, and still hears the PBX.
    assert!(sent(last) <= sent(first) + 3, "the browser stopped sending: {first} … {last}");
    assert!(got(last) > got(first) + 20, "the PBX's audio still reaches it: {first} … {last}");
    // Resumed: it sends again.
    let after = samples.iter().rev().find(|s| s["said"] == "Connected").expect("resumed samples");
    assert!(sent(after) > sent(last) + 20, "resumed: {last} … {after}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
}

/// A browser calls out: the softphone's dial pad and Call button place an
/// INVITE over WSS; trunkgate challenges it (JsSIP answers with the
/// user's password), admits it, sends plain RTP to the PBX's trunk (sipp
/// checks the offer is trunkgate's own, not WebRTC) and bridges the two:
/// the PBX's audio is heard in the browser, the microphone reaches the PBX.
#[test]
fn a_browser_calls_out_through_the_pbx_with_audio_both_ways() {
    let test = "a_browser_calls_out_through_the_pbx_with_audio_both_ways";
    let pbx_port = common::daemon::free_port_on(PBX_IP);
    let (min, max) = port_range();
    let media =
        format!("[media]\npublic_address = [\"127.0.0.1\"]\nport_min = {min}\nport_max = {max}\nwebrtc_port = 0\n");
    let outbound = format!("[trunk.outbound]\ntarget = \"udp://{PBX_IP}:{pbx_port}\"\noptions_interval_s = 0\n");
    let (mut d, _) = common::ws::wss_daemon_with_trunk("", &media, &outbound);
    let log = LogOnPanic(&d);
    let rtp = UdpSocket::bind("127.0.0.2:0").expect("pbx rtp");
    let rtp_port = rtp.local_addr().expect("addr").port().to_string();
    let pbx = sipp_start(
        &scenarios().join("trunk_answer_rtp.xml"),
        None,
        PBX_IP,
        pbx_port,
        &["-m", "1", "-key", "rtp", &rtp_port],
    );
    let b =
        Browser::start("call-out", &url(&d), ("acme.example.com", "alice", "alice-secret-1"), "+442079460000", test);
    b.wait("registered", 30);
    b.wait("answered", 30);
    // trunkgate's side toward the PBX is the first pair of the range (the
    // browser's leg takes none: it is on the shared WebRTC port).
    let relay = SocketAddr::from(([127, 0, 0, 1], min));
    let media = PbxMedia::start(rtp, relay, 8);
    let audio = b.wait("audio", 30);
    let stats = &audio["stats"];
    assert!(stats["inbound"]["packetsReceived"].as_u64().unwrap_or(0) > 20, "PBX audio reaches the browser: {audio}");
    assert!(stats["inbound"]["totalAudioEnergy"].as_f64().unwrap_or(0.0) > 0.0, "and is heard: {audio}");
    assert!(stats["outbound"]["packetsSent"].as_u64().unwrap_or(0) > 20, "the microphone is sent: {audio}");
    assert_eq!(stats["dtls"]["state"], "connected", "{audio}");
    b.wait("hung-up", 30);
    let got = media.stop();
    let (ok, out) = pbx.wait();
    assert!(ok, "PBX side (trunkgate's plain offer, the browser's BYE):\n{out}");
    assert!(b.finish(), "the browser script ended cleanly");
    let voice = got.iter().filter(|(from, p)| *from == relay && matches!(p[1] & 0x7f, 0 | 8)).count();
    assert!(voice > 50, "the browser's audio at the PBX, all from trunkgate's port: {voice} packets");
    drop(log);
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(
        (&rec["direction"], &rec["outcome"], &rec["target_user"], &rec["callee"], &rec["trunk"]),
        (&"outbound".into(), &"completed".into(), &"alice".into(), &"+442079460000".into(), &"acme-pbx".into()),
        "{rec}"
    );
    assert!(rec["media"]["pbx"]["rx_packets"].as_u64().unwrap_or(0) > 50, "{rec}");
    assert!(rec["media"]["user"]["rx_packets"].as_u64().unwrap_or(0) > 50, "{rec}");
}
