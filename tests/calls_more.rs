//! More PBX-trunk calls end to end, against the real daemon with sipp as
//! the PBX (from 127.0.0.2, the trunk's address) and as the portal users'
//! phones: ring strategies told apart by timing, exact call-record counts,
//! in-dialog requests both ways (INFO, UPDATE, re-INVITE, glare), TCP and
//! IPv6, delayed offer, the shared trunk, a stop with calls up, and the
//! database lost under a fleet node.

mod common;

use std::path::Path;

use serde_json::Value;

use common::calls::{PBX_IP, cdr, exactly_n_records, leases, pbx, wait_cdr};
use common::daemon::{Daemon, SippChild, pbx_refused_scenario, sipp_start};

/// A trunk from 127.0.0.2 for portal `acme`: +15550001 rings alice;
/// +15550002 rings alice and bob together (ring_all) and +15550004 one
/// after the other (in_order), both for 2 s per ring.
const TRUNK: &str = "[[trunk]]\nname = \"acme-pbx\"\nportal = \"acme\"\nsources = [\"127.0.0.2/32\"]\n\
[[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\nring_timeout_s = 3\n\
[[trunk.route]]\nnumber = \"+15550002\"\nusers = [\"alice\", \"bob\"]\nstrategy = \"ring_all\"\nring_timeout_s = 2\n\
[[trunk.route]]\nnumber = \"+15550004\"\nusers = [\"alice\", \"bob\"]\nstrategy = \"in_order\"\nring_timeout_s = 2\n";

/// The ring timeout of +15550002 and +15550004, in seconds.
const RING_TIMEOUT_S: f64 = 2.0;

fn prepared(trunk: &str) -> Daemon {
    let d = Daemon::prepare(trunk);
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1"), ("bob", "bob-secret-12")]);
    d
}

/// Sets `user`'s static contact in `portal` to `sip:user@ip:port`.
fn set_contact(d: &Daemon, portal: &str, user: &str, ip: &str, port: u16) {
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
    let contact = format!("sip:{user}@{host}:{port}");
    d.cli(&["user", "set-contact", "--portal", portal, "--username", user, "--contact", &contact]);
}

/// A phone for `user` of `acme` answering with `scenario` on 127.0.0.1.
fn phone(d: &Daemon, user: &str, scenario: &str, extra: &[&str]) -> SippChild {
    let s = sipp_start(Path::new(scenario), None, "127.0.0.1", 0, &[&["-m", "1"], extra].concat());
    set_contact(d, "acme", user, "127.0.0.1", s.port);
    s
}

/// One call to +15550001 on a new daemon: alice's phone answers with
/// `phone_scenario`, the PBX calls with `pbx_scenario` (and sipp's `extra`
/// arguments); both sides must pass their scenario's checks. Returns the
/// daemon and what the PBX's and the phone's sipp printed.
fn one_call(phone_scenario: &str, pbx_scenario: &Path, extra: &[&str]) -> (Daemon, String, String) {
    let mut d = prepared(TRUNK);
    d.start();
    let user = phone(&d, "alice", phone_scenario, &[]);
    let (ok, out) = pbx(&d, pbx_scenario, "+15550001", extra).wait();
    let (uok, uout) = user.wait();
    assert!(ok, "PBX side:\n{out}\nphone side:\n{uout}");
    assert!(uok, "phone side:\n{uout}");
    (d, out, uout)
}

/// [`one_call`] holding `hold_ms`, which must leave exactly one `completed`
/// record.
fn completed_call(phone_scenario: &str, pbx_scenario: &str, hold_ms: &str) -> (String, String) {
    let (mut d, out, uout) = one_call(phone_scenario, Path::new(pbx_scenario), &["-d", hold_ms]);
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    (out, uout)
}

/// The messages of sipp's message trace: when each was sent or read (in
/// seconds; sipp stamps each traced message with the wall clock, to the µs:
/// `----…---- 2026-01-02 03:04:05.678901`, then `UDP message sent` or
/// `UDP message received`), whether it was sent, and its first line.
fn traced_messages(trace: &str) -> Vec<(f64, bool, String)> {
    let lines: Vec<&str> = trace.lines().collect();
    let mut messages = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(stamp) = line.strip_prefix("-----").map(|l| l.trim_start_matches('-').trim()) else { continue };
        let Some(what) = lines.get(i + 1) else { continue };
        let sent = what.contains("message sent");
        if !sent && !what.contains("message received") {
            continue;
        }
        let first = lines.iter().skip(i + 2).find(|l| !l.trim().is_empty()).map_or("", |l| l.trim());
        let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f")
            .unwrap_or_else(|e| panic!("sipp trace stamp {stamp:?}: {e}"));
        messages.push((t.and_utc().timestamp_micros() as f64 / 1e6, sent, first.to_owned()));
    }
    messages
}

/// When sipp's message trace shows the first INVITE arriving.
fn invite_arrival(trace: &str) -> f64 {
    traced_messages(trace)
        .into_iter()
        .find(|(_, sent, first)| !sent && first.starts_with("INVITE "))
        .map(|(t, ..)| t)
        .unwrap_or_else(|| panic!("no INVITE received in the trace:\n{trace}"))
}

/// The PBX's view of one call from its trace: when its first INVITE left,
/// and when each response came with its status, in order.
fn responses_after_invite(trace: &str) -> (f64, Vec<(f64, u16)>) {
    let messages = traced_messages(trace);
    let invite = messages
        .iter()
        .find(|(_, sent, first)| *sent && first.starts_with("INVITE "))
        .map(|(t, ..)| *t)
        .unwrap_or_else(|| panic!("no INVITE sent in the trace:\n{trace}"));
    let responses = messages
        .iter()
        .filter(|(_, sent, _)| !sent)
        .filter_map(|(t, _, first)| {
            let status = first.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
            Some((*t, status))
        })
        .collect();
    (invite, responses)
}

/// Calls `number` (alice and bob, 2 s ring timeout) with both phones
/// ringing and never answering, so both ring for the whole story; the PBX
/// gets 480. Returns when each phone's INVITE arrived.
fn ring_both_and_time_the_invites(number: &str) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = prepared(TRUNK);
    d.start();
    let alice = phone(&d, "alice", "user_ring_cancel.xml", &[]);
    let bob = phone(&d, "bob", "user_ring_cancel.xml", &[]);
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 480), number, &[]).wait();
    assert!(ok, "PBX side: nobody answered:\n{out}");
    let (ok, aout) = alice.wait();
    assert!(ok, "alice rang and was cancelled:\n{aout}");
    let (ok, bout) = bob.wait();
    assert!(ok, "bob rang and was cancelled:\n{bout}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!((rec["outcome"].as_str(), rec["sip_status"].as_i64()), (Some("no-answer"), Some(480)), "{rec}");
    (invite_arrival(&aout), invite_arrival(&bout))
}

/// ring_all rings every user at once: both INVITEs arrive together, far
/// within one ring timeout of each other.
#[test]
fn ring_all_invites_every_user_at_once() {
    let (alice, bob) = ring_both_and_time_the_invites("+15550002");
    let gap = (bob - alice).abs();
    assert!(gap < 0.25, "ring_all: INVITEs {gap:.3} s apart (alice at {alice:.6}, bob at {bob:.6})");
}

/// in_order rings alice first; bob's INVITE comes only once alice's ring
/// timeout (2 s) has run out, and not much later.
#[test]
fn in_order_invites_the_next_user_only_after_the_ring_timeout() {
    let (alice, bob) = ring_both_and_time_the_invites("+15550004");
    let gap = bob - alice;
    // The stamps are when each sipp read its INVITE: on a loaded machine one
    // may read late, so 50 ms of slack below (ring_all measures 0.2 ms).
    assert!(
        (RING_TIMEOUT_S - 0.05..RING_TIMEOUT_S + 1.0).contains(&gap),
        "in_order: bob's INVITE {gap:.3} s after alice's, expected the {RING_TIMEOUT_S} s ring timeout \
         (alice at {alice:.6}, bob at {bob:.6})"
    );
}

/// RFC 3261 §17.2.1: the 100 Trying is due only if nothing else has
/// answered the INVITE 200 ms after it came. A phone that answers at once
/// spares the PBX the 100 (any 100 it hears came no sooner than 200 ms
/// after its INVITE); a phone silent for 400 ms gets it a 100 after 200 ms,
/// and before the phone's answer.
#[test]
fn the_100_trying_comes_only_when_nothing_else_answers_within_200_ms() {
    let (out, _) = completed_call("user_answer.xml", "pbx_call.xml", "100");
    let (invite, responses) = responses_after_invite(&out);
    assert_eq!(
        responses.iter().filter(|(_, s)| *s == 200).count(),
        2,
        "the 200s of the INVITE and the BYE: {responses:?}"
    );
    for (t, status) in &responses {
        if *status == 100 {
            assert!(t - invite >= 0.2, "a 100 {:.3} s after the INVITE, though the phone answered at once", t - invite);
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut d, out, _) = one_call("user_reject_slowly.xml", &pbx_refused_scenario(dir.path(), 486), &[]);
    let (invite, responses) = responses_after_invite(&out);
    let statuses: Vec<u16> = responses.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, [100, 486], "{out}");
    let trying = responses[0].0 - invite;
    assert!(trying >= 0.2, "the 100 came {trying:.3} s after the INVITE, before its 200 ms were up");
    assert_eq!(exactly_n_records(&mut d, 1)[0]["outcome"], "busy");
}

/// Every attempt leaves exactly one call record, whatever its fate: a
/// completed call, a refused one (no route) and one the PBX cancels, on one
/// daemon, give three records with those outcomes, not one more.
#[test]
fn each_call_attempt_is_recorded_exactly_once() {
    three_attempts_three_records(TRUNK);
}

/// The same three attempts on a node whose cores hand every datagram to
/// their send threads (`send_thread_busy_pct = 0`; by default only a core
/// busier than 70 % does): the calls go through whole, each recorded once.
#[test]
fn calls_are_whole_when_the_cores_hand_their_sends_to_the_send_threads() {
    three_attempts_three_records(&format!("send_thread_busy_pct = 0\n{TRUNK}"));
}

/// A datagram the kernel refuses reaches its transaction as a transport
/// error through the send thread too: a phone whose contact is the
/// broadcast address (refused without SO_BROADCAST) fails at once: the
/// call ends `unavailable` (480), not `no-answer` after the route's 3 s ring
/// timeout, which is what an error lost on the way would leave.
#[test]
fn a_send_refused_on_the_send_thread_fails_the_leg_at_once() {
    for config in [String::new(), "send_thread_busy_pct = 0\n".to_owned()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = prepared(&format!("{config}{TRUNK}"));
        d.start();
        set_contact(&d, "acme", "alice", "255.255.255.255", 9);
        let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 480), "+15550001", &[]).wait();
        assert!(ok, "{config:?}: PBX side:\n{out}\n{}", d.log_text());
        let rec = &exactly_n_records(&mut d, 1)[0];
        assert_eq!((rec["outcome"].as_str(), rec["sip_status"].as_i64()), (Some("unavailable"), Some(480)), "{rec}");
    }
}

/// A completed call, a refused one (no route) and one the PBX cancels, on
/// one daemon configured with `config`: three records with those outcomes,
/// not one more.
fn three_attempts_three_records(config: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = prepared(config);
    d.start();
    let user = phone(&d, "alice", "user_answer.xml", &[]);
    let port = user.port;
    let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "200"]).wait();
    assert!(ok, "completed call, PBX side:\n{out}");
    assert!(user.wait().0, "completed call, phone side");
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 404), "+19999999", &[]).wait();
    assert!(ok, "refused call:\n{out}");
    // The next phone on the same port: alice's contact stays what the
    // daemon already knows (a changed one reaches it only within a second).
    let user = sipp_start(Path::new("user_ring_cancel.xml"), None, "127.0.0.1", port, &["-m", "1"]);
    let (ok, out) = pbx(&d, Path::new("pbx_cancel.xml"), "+15550001", &[]).wait();
    assert!(ok, "cancelled call, PBX side:\n{out}");
    assert!(user.wait().0, "cancelled call, phone side");
    let records = exactly_n_records(&mut d, 3);
    let mut outcomes: Vec<(String, i64)> = records
        .iter()
        .map(|r| (r["outcome"].as_str().unwrap_or("").to_owned(), r["sip_status"].as_i64().unwrap_or(0)))
        .collect();
    outcomes.sort();
    let expected = [("cancelled", 487), ("completed", 200), ("refused", 404)].map(|(o, s)| (o.to_owned(), s));
    assert_eq!(outcomes, expected, "{records:#?}");
}

/// INFO and UPDATE are relayed both ways: the PBX's INFO (a DTMF digit, to
/// a phone without telephone-event) and UPDATE offer reach the phone with
/// their Content-Type and body, the phone's answer comes back in the 200;
/// the phone's INFO (a video fast-update request) and UPDATE reach the PBX
/// the same way. (A digit INFO from the phone would reach this PBX as RFC
/// 4733: tests/media.rs.) Each sipp side checks what arrives with `ereg`.
#[test]
fn info_and_update_are_relayed_both_ways() {
    completed_call("user_answer_info_update.xml", "pbx_call_info_update.xml", "200");
}

/// A re-INVITE started by the phone (hold) reaches the PBX with the phone's
/// offer; the PBX's answer reaches the phone in the 200; each 2xx is ACKed
/// on its own leg, and the call goes on until the PBX hangs up.
#[test]
fn reinvite_from_the_phone_reaches_the_pbx_and_its_answer_the_phone() {
    completed_call("user_answer_then_reinvite.xml", "pbx_call_answer_reinvite.xml", "200");
}

/// Glare started by the phone: while the phone's re-INVITE waits for the
/// PBX's answer, the PBX sends its own; the PBX's gets 491 Request Pending,
/// the phone's still completes (its answer reaches the phone), and the call
/// goes on.
#[test]
fn phone_reinvite_pending_makes_the_pbx_reinvite_get_491() {
    let (out, uout) = completed_call("user_answer_then_reinvite.xml", "pbx_call_glare_crossing.xml", "200");
    assert!(out.contains("SIP/2.0 491 Request Pending"), "{out}");
    assert!(!uout.contains(" 491 "), "the phone's offer is not the one refused:\n{uout}");
}

/// A PBX on TCP: its INVITE comes over a TCP connection, the phone (UDP)
/// answers, the phone's BYE reaches the PBX over that same connection.
#[test]
fn call_from_a_pbx_over_tcp() {
    let mut d = prepared(TRUNK);
    d.start();
    let user = phone(&d, "alice", "user_answer_then_bye.xml", &["-d", "300"]);
    let call = sipp_start(
        Path::new("pbx_call_remote_bye.xml"),
        Some(d.tcp),
        PBX_IP,
        0,
        &["-m", "1", "-key", "number", "+15550001", "-t", "t1"],
    );
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    assert!(out.contains("TCP message received"), "the PBX spoke TCP:\n{out}");
    assert!(!out.contains("UDP message"), "nothing reached the PBX over UDP:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    assert_eq!(rec["target_user"], "alice", "{rec}");
}

/// IPv6 end to end: the daemon listens on [::1] only, the PBX sends from ::1
/// (its trunk source is `::1/128`), the phone's contact is `[::1]`; the call
/// completes and is recorded.
#[test]
fn call_over_ipv6() {
    let trunk = TRUNK.replace("sources = [\"127.0.0.2/32\"]", "sources = [\"::1/128\"]");
    let mut d = prepared(&trunk);
    let text = std::fs::read_to_string(&d.config).expect("config");
    let text = text.replace(
        "listen = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]",
        "listen = [\"udp://[::1]:0\", \"tcp://[::1]:0\"]",
    );
    std::fs::write(&d.config, text).expect("write");
    d.start();
    assert!(d.udp.is_ipv6(), "listening on {}", d.udp);
    let user = sipp_start(Path::new("user_answer.xml"), None, "::1", 0, &["-m", "1"]);
    set_contact(&d, "acme", "alice", "::1", user.port);
    let call =
        sipp_start(Path::new("pbx_call.xml"), Some(d.udp), "::1", 0, &["-m", "1", "-key", "number", "+15550001"]);
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    assert!(
        uout.contains("o=trunkgate ") && uout.contains("c=IN IP6 ::1"),
        "trunkgate's IPv6 SDP reached the phone:\n{uout}"
    );
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
}

/// Delayed offer (RFC 3261 §13.2.1): the PBX's INVITE has no SDP, so the
/// phone's 200 carries the offer, which must reach the PBX in the 200; the
/// PBX's ACK carries the answer, which must reach the phone in ITS ACK.
/// The daemon may ACK the phone's 200 only once it has the PBX's ACK.
#[test]
fn delayed_offer_answer_in_the_ack_reaches_the_phone() {
    // The PBX's scenario checks the phone's offer in the 200; the phone's
    // checks the PBX's answer in the ACK.
    completed_call("user_answer_delayed_offer.xml", "pbx_call_delayed_offer.xml", "300");
}

/// A shared trunk (`portal = "*"`, an operator's SBC): each call belongs to
/// the portal owning its Request-URI domain. Two portals both have an
/// `alice`; a call to acme's domain rings acme's alice, one to globex's
/// rings globex's, and each call completes and is recorded for its portal.
#[test]
fn shared_trunk_call_goes_to_the_portal_of_the_request_uri_domain() {
    let shared = "[[trunk]]\nname = \"sbc\"\nportal = \"*\"\nsources = [\"127.0.0.2/32\"]\n\
                  [[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\n";
    let mut d = prepared(shared);
    d.seed_portal("globex", "globex.example.com", &[("alice", "alice-globex-1")]);
    d.start();
    let acme_alice = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "1"]);
    set_contact(&d, "acme", "alice", "127.0.0.1", acme_alice.port);
    let globex_alice = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "1"]);
    set_contact(&d, "globex", "alice", "127.0.0.1", globex_alice.port);
    for domain in ["globex.example.com", "acme.example.com"] {
        let (ok, out) =
            pbx(&d, Path::new("pbx_call_domain.xml"), "+15550001", &["-key", "domain", domain, "-d", "200"]).wait();
        assert!(ok, "call to {domain}:\n{out}");
    }
    let (ok, out) = globex_alice.wait();
    assert!(ok, "globex's alice took the globex call:\n{out}");
    assert!(out.contains("To: <sip:alice@globex.example.com>"), "{out}");
    let (ok, out) = acme_alice.wait();
    assert!(ok, "acme's alice took the acme call:\n{out}");
    assert!(out.contains("To: <sip:alice@acme.example.com>"), "{out}");
    let records = exactly_n_records(&mut d, 2);
    let mut got: Vec<(String, String, String, String)> = records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            (s("portal_id"), s("trunk"), s("target_user"), s("outcome"))
        })
        .collect();
    got.sort();
    let want = |p: &str| (p.to_owned(), "sbc".to_owned(), "alice".to_owned(), "completed".to_owned());
    assert_eq!(got, vec![want("acme"), want("globex")], "{records:#?}");
}

/// SIGTERM while two calls are up: the daemon stops, the phone gets a BYE
/// for each call, and the database it leaves holds a record for each call
/// (with its outcome and end) and no lease: every channel is given back.
#[test]
fn sigterm_with_calls_up_flushes_their_records_and_leases() {
    sigterm_with_two_calls_up(TRUNK);
}

/// The same with every datagram going through the cores' send threads:
/// the BYEs sent as the cores stop still reach the phone. (That a stopping
/// core waits for its thread, rather than winning a race with the process's
/// end, is `finishing_the_send_thread_waits_until_all_it_was_handed_is_sent`;
/// here the thread wins that race even without the wait.)
#[test]
fn sigterm_with_calls_up_through_the_send_threads_still_sends_the_byes() {
    sigterm_with_two_calls_up(&format!("send_thread_busy_pct = 0\n{TRUNK}"));
}

fn sigterm_with_two_calls_up(config: &str) {
    let mut d = prepared(config);
    d.start();
    // The phone answers both calls; the PBX holds them for a minute.
    let users = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "2"]);
    set_contact(&d, "acme", "alice", "127.0.0.1", users.port);
    let _calls = sipp_start(
        Path::new("pbx_call.xml"),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "2", "-l", "2", "-key", "number", "+15550001", "-d", "60000"],
    );
    common::retry_until(10, "two calls up", || {
        let l = leases(&d);
        if l.len() == 2 { Ok(()) } else { Err(format!("{l:?}")) }
    });
    assert_eq!(d.stop(), Some(0), "clean stop:\n{}", d.log_text());
    let (ok, out) = users.wait();
    assert!(ok, "the phone got a BYE for each call:\n{out}");
    assert_eq!(leases(&d), Vec::<Value>::new(), "no lease left");
    let records = cdr(&d);
    assert_eq!(records.len(), 2, "one record per call cut by the stop: {records:#?}\n{}", d.log_text());
    for r in &records {
        assert_eq!(r["target_user"], "alice", "{r}");
        assert!(r["answered_at"].is_string() && r["ended_at"].is_string(), "answered and ended: {r}");
        assert!(!["", "admitted"].contains(&r["outcome"].as_str().unwrap_or("")), "an outcome: {r}");
    }
}

/// A TCP proxy in front of the test PostgreSQL server that the test can cut
/// (every connection shut down, the port closed: connections are refused)
/// and restore (the same port listens again).
struct PgProxy {
    addr: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    /// Both ends of every proxied connection, to shut down on a cut; `None`
    /// while cut.
    conns: std::sync::Arc<std::sync::Mutex<Option<Vec<std::net::TcpStream>>>>,
}

impl PgProxy {
    /// Listens on a free local port, forwarding to the server of `base_url`.
    fn start(base_url: &str) -> Self {
        use std::net::ToSocketAddrs;
        let authority = base_url.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or("");
        let host_port = authority.rsplit('@').next().unwrap_or(authority);
        let upstream = host_port
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("PostgreSQL address in {base_url}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let proxy = PgProxy { addr, upstream, conns: Default::default() };
        proxy.serve(listener);
        proxy
    }

    /// `url` with the server address replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("url");
        let (authority, path) = rest.split_once('/').expect("url path");
        let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{user}{}/{path}", self.addr)
    }

    fn serve(&self, listener: std::net::TcpListener) {
        *self.conns.lock().expect("lock") = Some(Vec::new());
        let conns = self.conns.clone();
        let upstream = self.upstream;
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let mut guard = conns.lock().expect("lock");
                // Cut: stop listening (the wake-up connection is dropped too).
                let Some(list) = guard.as_mut() else { return };
                let Ok(server) = std::net::TcpStream::connect(upstream) else { continue };
                for (mut from, mut to) in [(&client, &server), (&server, &client)]
                    .map(|(a, b)| (a.try_clone().expect("clone"), b.try_clone().expect("clone")))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                list.extend([client, server]);
            }
        });
    }

    /// The database becomes unreachable: open connections are cut and new
    /// ones refused.
    fn cut(&self) {
        if let Some(list) = self.conns.lock().expect("lock").take() {
            for c in list {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        // Wake the accept loop so that it sees the cut and closes the port.
        let _ = std::net::TcpStream::connect(self.addr);
        common::retry_until(5, "proxy port still open", || match std::net::TcpStream::connect(self.addr) {
            Err(_) => Ok(()),
            Ok(_) => Err("connected".into()),
        });
    }

    /// The database is back, on the same address.
    fn restore(&self) {
        let listener = std::net::TcpListener::bind(self.addr).expect("rebind proxy");
        self.serve(listener);
    }
}

/// The shared database lost under a fleet node (PostgreSQL behind a proxy
/// the test cuts): a call already up goes on to its end; once the node's
/// check finds the database gone, a new INVITE is refused at once with 503, `Warning: 399 <node> "database-unavailable…"`
/// and Retry-After (fail closed); once the database is back, both attempts
/// are in the call records.
#[test]
fn database_unreachable_new_calls_get_503_database_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = tokio::runtime::Runtime::new().expect("runtime").block_on(common::pg_schema_url());
    let proxy = PgProxy::start(&common::pg_base_url());
    let mut d = Daemon::prepare_db(&proxy.url(&url), "node-a", TRUNK);
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d.start();
    let user = phone(&d, "alice", "user_answer.xml", &[]);
    let up = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "6000"]);
    common::retry_until(10, "the first call never came up", || {
        let l = leases(&d);
        if l.len() == 1 { Ok(()) } else { Err(format!("{l:?}")) }
    });
    proxy.cut();
    let started = common::wall_now();
    // The node holds an allowance of the portal's channels, so it would
    // not need the database for this call: its check of the database
    // (every half second) is what makes it fail closed.
    d.wait_log(&["database unreachable: new calls refused"]);
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 503), "+15550001", &[]).wait();
    let took = common::wall_now() - started;
    assert!(ok, "503 while the database is unreachable:\n{out}\n{}", d.log_text());
    assert!(out.contains("Warning: 399 node-a \"database-unavailable"), "{out}");
    assert!(out.contains("Retry-After:"), "a node that cannot reach its database sends the PBX elsewhere:\n{out}");
    // Fail closed quickly: within the wait for a pooled connection
    // (acquire_timeout_ms, 2 s by default) and a little slack.
    assert!(took < std::time::Duration::from_secs(5), "503 after {took:?}");
    let (ok, out) = up.wait();
    assert!(ok, "the call in progress went on to its end:\n{out}");
    assert!(user.wait().0, "phone side of the call in progress");
    proxy.restore();
    let records = wait_cdr(&d, 2);
    assert_eq!(outcomes(&records), [("completed", None), ("refused", Some("database-unavailable"))], "{records:#?}");
}

/// A fleet node whose database answers but has no connection free in time
/// (saturated: here its one pooled connection waits on a portal row that
/// another session holds locked) sheds the next call as `overloaded`, with
/// Retry-After: not `database-unavailable`, which is for a database that
/// does not answer. The call that waited is admitted once the lock goes.
#[test]
fn database_saturated_new_calls_get_503_overloaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let url = rt.block_on(common::pg_schema_url());
    let mut d = Daemon::prepare_db(&url, "node-a", TRUNK);
    // One pooled connection, given up on after 500 ms.
    let text = std::fs::read_to_string(&d.config).expect("config");
    let text = text.replacen("[database]\n", "[database]\nmax_connections = 1\nacquire_timeout_ms = 500\n", 1);
    std::fs::write(&d.config, text).expect("config");
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d.cli(&["plan", "set", "free", "--max-cps", "unlimited"]);
    d.start();
    let user = phone(&d, "alice", "user_answer.xml", &[]);

    // Another session holds the portal's row: an admission waits on it.
    let lock = rt.block_on(async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.expect("connect");
        sqlx::query("BEGIN").execute(&mut conn).await.expect("begin");
        sqlx::query("SELECT 1 FROM portals WHERE id = 'acme' FOR UPDATE").execute(&mut conn).await.expect("lock");
        conn
    });
    let waiting = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "500"]);
    // Its INVITE reaches the admission (and the lock) within moments.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 503), "+15550001", &[]).wait();
    assert!(ok, "503 while the database is saturated:\n{out}\n{}", d.log_text());
    assert!(out.contains("Warning: 399 node-a \"overloaded: shared database saturated"), "{out}");
    assert!(out.contains("Retry-After:"), "{out}");
    assert!(d.log_text().contains("database saturated during admission"), "{}", d.log_text());

    // The lock goes: the waiting call is admitted and completes.
    rt.block_on(async move {
        let mut conn = lock;
        sqlx::query("COMMIT").execute(&mut conn).await.expect("commit");
    });
    let (ok, out) = waiting.wait();
    assert!(ok, "the call that waited on the lock went through:\n{out}\n{}", d.log_text());
    assert!(user.wait().0, "phone side");
    let records = wait_cdr(&d, 2);
    assert_eq!(outcomes(&records), [("completed", None), ("refused", Some("overloaded"))], "{records:#?}");
}

/// Each record's (outcome, reason), sorted.
fn outcomes(records: &[Value]) -> Vec<(&str, Option<&str>)> {
    let mut got: Vec<(&str, Option<&str>)> =
        records.iter().map(|r| (r["outcome"].as_str().unwrap_or(""), r["reason"].as_str())).collect();
    got.sort();
    got
}
