//! Licence-gated calls from a PBX trunk to portal users, end to end: the
//! real daemon, sipp as the PBX (sending from 127.0.0.2, the trunk's
//! address) and sipp as the users' phones.

mod common;

use std::path::Path;

use common::calls::{PBX_IP, cdr, exactly_n_records, pbx, wait_calls, wait_cdr, wait_no_calls};
use common::daemon::{Daemon, SippChild, pbx_refused_scenario, sipp_start};

/// A trunk from 127.0.0.2 for portal `acme`: +15550001 rings alice, +15550002
/// rings alice and bob together, +15550003 rings carol (never reachable),
/// +15550004 rings alice then bob (in_order, 1 s each), +15550005 rings one
/// of them per call (evenly); anything else has no route.
const TRUNK: &str = "[[trunk]]\nname = \"acme-pbx\"\nportal = \"acme\"\nsources = [\"127.0.0.2/32\"]\n\
[[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\nring_timeout_s = 3\n\
[[trunk.route]]\nnumber = \"+15550002\"\nusers = [\"alice\", \"bob\"]\nstrategy = \"ring_all\"\nring_timeout_s = 10\n\
[[trunk.route]]\nnumber = \"+15550003\"\nusers = [\"carol\"]\n\
[[trunk.route]]\nnumber = \"+15550004\"\nusers = [\"alice\", \"bob\"]\nstrategy = \"in_order\"\nring_timeout_s = 1\n\
[[trunk.route]]\nnumber = \"+15550005\"\nusers = [\"alice\", \"bob\"]\nstrategy = \"evenly\"\n";

fn prepared(extra: &str) -> Daemon {
    let d = Daemon::prepare(&format!("{extra}{TRUNK}"));
    d.seed_portal(
        "acme",
        "acme.example.com",
        &[("alice", "alice-secret-1"), ("bob", "bob-secret-12"), ("carol", "carol-secret-1")],
    );
    d
}

/// A phone for `user` answering with `scenario`, set as the user's static contact.
fn phone(d: &Daemon, user: &str, scenario: &str, extra: &[&str]) -> SippChild {
    let s = sipp_start(Path::new(scenario), None, "127.0.0.1", 0, &[&["-m", "1"], extra].concat());
    d.cli(&[
        "user",
        "set-contact",
        "--portal",
        "acme",
        "--username",
        user,
        "--contact",
        &format!("sip:{user}@127.0.0.1:{}", s.port),
    ]);
    s
}

#[test]
fn licensed_call_rings_the_user_and_completes_pbx_hangs_up() {
    let mut d = prepared("");
    d.start();
    let user = phone(&d, "alice", "user_answer.xml", &[]);
    let call = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "300"]);
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    // The legs are separate dialogs: no PBX Call-ID or tag reaches the phone.
    assert!(!uout.contains("PBX"), "PBX tags leaked to the user leg:\n{uout}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    assert_eq!(rec["target_user"], "alice");
    assert_eq!(rec["trunk"], "acme-pbx");
    assert_eq!(rec["callee"], "+15550001");
    // Times are RFC 3339, as in every `--json` output.
    let time = |k: &str| {
        let v = rec[k].as_str().unwrap_or_else(|| panic!("{k} is no RFC 3339 string: {rec}"));
        chrono::DateTime::parse_from_rfc3339(v).unwrap_or_else(|e| panic!("{k}: {e}: {rec}"))
    };
    assert!(time("started_at") <= time("answered_at") && time("answered_at") <= time("ended_at"), "{rec}");
    wait_no_calls(&d);
}

#[test]
fn user_hangs_up_and_the_pbx_gets_the_bye() {
    let mut d = prepared("");
    d.start();
    let user = phone(&d, "alice", "user_answer_then_bye.xml", &["-d", "300"]);
    let call = pbx(&d, Path::new("pbx_call_remote_bye.xml"), "+15550001", &[]);
    let (ok, out) = call.wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    wait_no_calls(&d);
}

/// Every refusal of DESIGN.md's table: its code, its `Warning: 399` reason
/// token and a call record.
#[test]
fn each_refusal_gets_its_code_reason_and_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One daemon per state; each case: (setup, number, pbx ip, status, token).
    struct Case {
        name: &'static str,
        extra: &'static str,
        setup: fn(&Daemon),
        ip: &'static str,
        number: &'static str,
        status: u16,
        token: &'static str,
    }
    let cases = [
        Case {
            name: "unknown trunk",
            extra: "",
            setup: |_| {},
            ip: "127.0.0.3",
            number: "+15550001",
            status: 403,
            token: "unknown-trunk",
        },
        Case {
            name: "overloaded",
            extra: "[sip]\nlisten = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]\nmax_calls = 0\n",
            setup: |_| {},
            ip: PBX_IP,
            number: "+15550001",
            status: 503,
            token: "overloaded",
        },
        Case {
            name: "portal deleting",
            extra: "",
            setup: |d| {
                d.cli(&["portal", "delete", "acme"]);
            },
            ip: PBX_IP,
            number: "+15550001",
            status: 403,
            token: "portal-deleted",
        },
        Case {
            name: "portal blocked",
            extra: "",
            setup: |d| {
                d.cli(&["portal", "block", "acme", "--reason", "manual"]);
            },
            ip: PBX_IP,
            number: "+15550001",
            status: 403,
            token: "portal-blocked",
        },
        Case {
            name: "licence expired",
            extra: "",
            setup: |d| {
                d.cli(&["plan", "set", "pro"]);
                d.cli(&[
                    "licence",
                    "set",
                    "--portal",
                    "acme",
                    "--plan",
                    "pro",
                    "--valid-from",
                    "2020-01-01T00:00:00Z",
                    "--valid-until",
                    "2021-01-01T00:00:00Z",
                ]);
            },
            ip: PBX_IP,
            number: "+15550001",
            status: 403,
            token: "licence-expired",
        },
        Case {
            name: "rate limited",
            extra: "",
            setup: |d| {
                d.cli(&["portal", "set", "acme", "--max-cps", "0"]);
            },
            ip: PBX_IP,
            number: "+15550001",
            status: 503,
            token: "rate-limited",
        },
        Case {
            name: "no route",
            extra: "",
            setup: |_| {},
            ip: PBX_IP,
            number: "+19999999",
            status: 404,
            token: "no-route",
        },
        Case {
            name: "unavailable",
            extra: "",
            setup: |_| {},
            ip: PBX_IP,
            number: "+15550003",
            status: 480,
            token: "unavailable",
        },
    ];
    for case in cases {
        // `[sip]` may only appear once: a case with its own [sip] replaces the default listen.
        let mut d = if case.extra.is_empty() { prepared("") } else { prepared_raw(case.extra) };
        (case.setup)(&d);
        d.start();
        let scenario = pbx_refused_scenario(dir.path(), case.status);
        let call = sipp_start(&scenario, Some(d.udp), case.ip, 0, &["-m", "1", "-key", "number", case.number]);
        let (ok, out) = call.wait();
        assert!(ok, "{}: expected {}:\n{out}", case.name, case.status);
        let warning = format!("Warning: 399 test-node \"{}", case.token);
        assert!(out.contains(&warning), "{}: no `{warning}` in:\n{out}", case.name);
        if case.token == "overloaded" {
            assert!(out.contains("Retry-After:"), "{}: overload answers carry Retry-After:\n{out}", case.name);
        }
        if case.token == "rate-limited" {
            assert!(!out.contains("Retry-After:"), "{}: rate limiting has no Retry-After:\n{out}", case.name);
        }
        let rec = &exactly_n_records(&mut d, 1)[0];
        assert_eq!(rec["reason"], case.token, "{}: {rec}", case.name);
        assert_eq!(rec["outcome"], "refused", "{}: {rec}", case.name);
        assert_eq!(rec["sip_status"], case.status, "{}: {rec}", case.name);
    }
}

/// Portal not found (trunk names a portal that is not in the database) and
/// not licensed (no extension): separate daemons, the seeding differs.
#[test]
fn portal_not_found_and_not_licensed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::prepare(TRUNK);
    d.start();
    let call = sipp_start(
        &pbx_refused_scenario(dir.path(), 403),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "1", "-key", "number", "+15550001"],
    );
    let (ok, out) = call.wait();
    assert!(ok, "{out}");
    assert!(out.contains("\"portal-not-found"), "{out}");
    drop(d);

    let mut d = Daemon::prepare(TRUNK);
    d.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    d.start();
    let call = sipp_start(
        &pbx_refused_scenario(dir.path(), 403),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "1", "-key", "number", "+15550001"],
    );
    let (ok, out) = call.wait();
    assert!(ok, "{out}");
    assert!(out.contains("\"not-licensed"), "{out}");
    assert_eq!(wait_cdr(&d, 1)[0]["reason"], "not-licensed");
}

fn prepared_raw(sip_section: &str) -> Daemon {
    // Daemon::prepare writes its own [sip]; build the file by hand instead.
    let d = Daemon::prepare("");
    let text = std::fs::read_to_string(&d.config).expect("config");
    let start = text.find("[sip]").expect("[sip]");
    let end = text[start..].find("\n[").map_or(text.len(), |i| start + i + 1);
    let text = format!("{}{}{}{TRUNK}", &text[..start], sip_section, &text[end..]);
    std::fs::write(&d.config, text).expect("write");
    d.seed_portal(
        "acme",
        "acme.example.com",
        &[("alice", "alice-secret-1"), ("bob", "bob-secret-12"), ("carol", "carol-secret-1")],
    );
    d
}

/// channels = N and 3N simultaneous calls: exactly N admitted, the rest
/// 486 channels-busy; when they end, the channels are free again.
#[test]
fn exactly_n_of_3n_simultaneous_calls_are_admitted() {
    const N: usize = 2;
    let mut d = Daemon::prepare(TRUNK);
    d.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    d.cli(&[
        "extension",
        "add",
        "--portal",
        "acme",
        "--channels",
        &N.to_string(),
        "--valid-from",
        "2020-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    d.cli_stdin(&["user", "add", "--portal", "acme", "--username", "alice"], Some("alice-secret-1\n"));
    // Six calls in one second: lift the free plan's call rate limit (5/s).
    d.cli(&["plan", "set", "free", "--max-cps", "unlimited"]);
    d.start();
    // The phone answers every call and holds it until the PBX hangs up.
    let users = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", &N.to_string()]);
    d.cli(&[
        "user",
        "set-contact",
        "--portal",
        "acme",
        "--username",
        "alice",
        "--contact",
        &format!("sip:alice@127.0.0.1:{}", users.port),
    ]);
    // 3N calls at once, each held for 3 s.
    let calls = sipp_start(
        Path::new("pbx_call.xml"),
        Some(d.udp),
        PBX_IP,
        0,
        &[
            "-m",
            &(3 * N).to_string(),
            "-l",
            &(3 * N).to_string(),
            "-r",
            "100",
            "-d",
            "3000",
            "-key",
            "number",
            "+15550001",
            "-trace_error_codes",
        ],
    );
    let (_ok, out) = calls.wait();
    let port = users.port;
    let (ok, uout) = users.wait();
    assert!(ok, "phone side:\n{uout}");
    let records = wait_cdr(&d, 3 * N);
    let completed = records.iter().filter(|r| r["outcome"] == "completed").count();
    let busy = records.iter().filter(|r| r["reason"] == "channels-busy").count();
    assert_eq!((completed, busy), (N, 2 * N), "records: {records:?}\nPBX:\n{out}");
    assert!(records.iter().filter(|r| r["reason"] == "channels-busy").all(|r| r["sip_status"] == 486));
    wait_no_calls(&d);
    // The channels are free again: one more call goes through (to a phone
    // on the same port: a changed contact reaches the daemon only within
    // about a second).
    let users = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", port, &["-m", "1"]);
    let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "100"]).wait();
    assert!(ok, "{out}");
    let (ok, uout) = users.wait();
    assert!(ok, "{uout}");
    wait_no_calls(&d);
}

#[test]
fn cancel_before_answer_frees_the_channel() {
    let mut d = prepared("");
    d.start();
    let user = phone(&d, "alice", "user_ring_cancel.xml", &[]);
    let (ok, out) = pbx(&d, Path::new("pbx_cancel.xml"), "+15550001", &[]).wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "the phone saw the CANCEL:\n{uout}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
    assert_eq!(rec["sip_status"], 487);
}

#[test]
fn user_rejects_and_the_pbx_gets_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = prepared("");
    d.start();
    let user = phone(&d, "alice", "user_reject.xml", &[]);
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 486), "+15550001", &[]).wait();
    assert!(ok, "{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "{uout}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "busy", "{rec}");
}

#[test]
fn user_never_answers_ring_timeout_gives_480() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = prepared("");
    d.start();
    // The route's ring timeout is 3 s; the phone rings and gets CANCELled.
    let user = phone(&d, "alice", "user_ring_cancel.xml", &[]);
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 480), "+15550001", &[]).wait();
    assert!(ok, "{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "{uout}");
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!(rec["outcome"], "no-answer", "{rec}");
    wait_no_calls(&d);
}

/// A block while a call is up: the call goes on, new calls are refused
/// within about a second.
#[test]
fn block_during_a_call_refuses_new_calls_and_keeps_the_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = prepared("");
    d.start();
    let user = phone(&d, "alice", "user_answer.xml", &[]);
    let call = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "4000"]);
    // The call is up once it holds a lease.
    wait_calls(&d, "the first call never came up", |l| !l.is_empty());
    d.cli(&["portal", "block", "acme", "--reason", "violation"]);
    let out = common::retry_until(5, "block not in force", || {
        let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 403), "+15550001", &[]).wait();
        if ok { Ok(out) } else { Err(out) }
    });
    assert!(out.contains("portal-blocked"), "{out}");
    let (ok, out) = call.wait();
    assert!(ok, "the call in progress ends normally:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "{uout}");
    // The first call's record is written when it ends.
    let records = common::retry_until(10, "the call in progress was not completed", || {
        let records = cdr(&d);
        if records.iter().any(|r| r["outcome"] == "completed") { Ok(records) } else { Err(format!("{records:?}")) }
    });
    assert!(records.iter().any(|r| r["reason"] == "portal-blocked"), "{records:?}");
}

/// ring_all to two users: one answers, the other is CANCELled.
#[test]
fn ring_all_first_answer_wins_and_the_other_is_cancelled() {
    let mut d = prepared("");
    d.start();
    // Both users register (digest) from the port their phone then listens on.
    let registered_phone = |user: &str, password: &str, scenario: &str| {
        let port = common::daemon::free_port();
        let reg = sipp_start(
            Path::new("register_ok.xml"),
            Some(d.udp),
            "127.0.0.1",
            port,
            &["-m", "1", "-key", "domain", "acme.example.com", "-key", "user", user, "-au", user, "-ap", password],
        );
        let (ok, out) = reg.wait();
        assert!(ok, "{user} registers:\n{out}");
        sipp_start(Path::new(scenario), None, "127.0.0.1", port, &["-m", "1"])
    };
    let alice = registered_phone("alice", "alice-secret-1", "user_ring_cancel.xml");
    let bob = registered_phone("bob", "bob-secret-12", "user_answer.xml");
    let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550002", &["-d", "200"]).wait();
    assert!(ok, "{out}");
    let (ok, bout) = bob.wait();
    assert!(ok, "bob answered:\n{bout}");
    let (ok, aout) = alice.wait();
    assert!(ok, "alice was cancelled:\n{aout}");
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!(rec["target_user"], "bob", "{rec}");
}

/// The maximum call duration ends the call with BYE on both legs.
#[test]
fn max_call_duration_hangs_up_both_legs() {
    let mut d = prepared("");
    d.cli(&["portal", "set", "acme", "--max-call-duration-s", "1"]);
    d.start();
    let user = phone(&d, "alice", "user_answer.xml", &[]);
    let (ok, out) = pbx(&d, Path::new("pbx_call_remote_bye.xml"), "+15550001", &[]).wait();
    assert!(ok, "the PBX got our BYE:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "the phone got our BYE:\n{uout}");
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!(rec["outcome"], "max-duration", "{rec}");
    wait_no_calls(&d);
}

/// `unknown_trunk = "ignore"`: an INVITE from an address that is no trunk
/// gets no answer at all (scanners learn nothing), and it is logged.
#[test]
fn unknown_trunk_can_be_ignored_silently() {
    let mut d =
        prepared_raw("[sip]\nlisten = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]\nunknown_trunk = \"ignore\"\n");
    d.start();
    let sock = std::net::UdpSocket::bind("127.0.0.3:0").expect("bind 127.0.0.3");
    let port = sock.local_addr().expect("addr").port();
    let invite = format!(
        "INVITE sip:+15550001@acme.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:{port};branch=z9hG4bKscan1\r\n\
         From: <sip:scanner@127.0.0.3>;tag=s1\r\nTo: <sip:+15550001@acme.example.com>\r\nCall-ID: scan1@x\r\n\
         CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(invite.as_bytes(), d.udp).expect("send");
    d.wait_log(&["INVITE from an address that is no trunk ignored", "127.0.0.3"]);
    // The log line is written when the INVITE is dropped: nothing was sent.
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    assert!(sock.recv_from(&mut buf).is_err(), "no answer to a scanner");
    // Trunk calls still work.
    let user = phone(&d, "alice", "user_answer.xml", &[]);
    let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "100"]).wait();
    assert!(ok, "{out}");
    assert!(user.wait().0);
}

/// A real phone as the portal user: baresip registers to trunkgate, the
/// PBX calls the portal's number, baresip rings and answers by itself, and
/// the call completes when the PBX hangs up.
#[test]
fn pbx_call_answered_by_a_registered_baresip() {
    use common::baresip::{Baresip, CALL_ESTABLISHED, CALL_TERMINATED};
    let mut d = prepared("");
    d.start();
    let phone = Baresip::start("alice", "acme.example.com", "alice-secret-1", d.udp);
    phone.wait_registered();
    let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "1500"]).wait();
    assert!(ok, "PBX side:\n{out}");
    // The phone saw the call from trunkgate (not from the PBX) and its end.
    let invite = phone.wait_sip(&["INVITE sip:alice", "From: \"Front Desk\" <sip:+15550100@acme.example.com>"]);
    // (The SDP is passed through unchanged until media is anchored, so only
    // the signalling headers are checked.)
    let headers = invite.split("\r\n\r\n").next().unwrap_or(&invite).split("\n\n").next().unwrap_or("");
    assert!(!headers.contains("127.0.0.2"), "the PBX's address never reaches the phone's signalling: {headers}");
    phone.wait_for(&[CALL_ESTABLISHED]);
    phone.wait_for(&[CALL_TERMINATED]);
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    assert_eq!(rec["target_user"], "alice");
    wait_no_calls(&d);
}

/// A re-INVITE (hold) from the PBX reaches the phone with its SDP, the
/// phone's answer reaches the PBX, both 2xx are ACKed, and the call goes on.
#[test]
fn reinvite_is_passed_through_both_ways_of_the_offer() {
    let mut d = prepared("");
    d.start();
    let user = phone(&d, "alice", "user_answer_reinvite.xml", &[]);
    let (ok, out) = pbx(&d, Path::new("pbx_call_reinvite.xml"), "+15550001", &["-d", "300"]).wait();
    assert!(ok, "PBX side:\n{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
    wait_no_calls(&d);
}

/// Glare (RFC 3261 §14.1): a second offer while one is being relayed gets
/// 491 Request Pending; the first completes and the call goes on.
#[test]
fn second_reinvite_while_one_is_pending_gets_491() {
    let mut d = prepared("");
    d.start();
    let user = phone(&d, "alice", "user_answer_reinvite_slowly.xml", &[]);
    let (ok, out) = pbx(&d, Path::new("pbx_glare.xml"), "+15550001", &["-d", "200"]).wait();
    assert!(ok, "PBX side:\n{out}");
    assert!(out.contains("SIP/2.0 491 Request Pending"), "{out}");
    let (ok, uout) = user.wait();
    assert!(ok, "phone side:\n{uout}");
    wait_no_calls(&d);
}

/// in_order: the first user rings for the route's timeout and is cancelled,
/// then the next one rings and answers.
#[test]
fn in_order_moves_to_the_next_user_after_the_ring_timeout() {
    let mut d = prepared("");
    d.start();
    let alice = phone(&d, "alice", "user_ring_cancel.xml", &[]);
    let bob = phone(&d, "bob", "user_answer.xml", &[]);
    let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550004", &["-d", "200"]).wait();
    assert!(ok, "{out}");
    assert!(alice.wait().0, "alice rang and was cancelled");
    assert!(bob.wait().0, "bob answered");
    assert_eq!(wait_cdr(&d, 1)[0]["target_user"], "bob");
}

/// evenly: consecutive calls go to different users.
#[test]
fn evenly_spreads_calls_across_users() {
    let mut d = prepared("");
    d.start();
    let alice = phone(&d, "alice", "user_answer.xml", &[]);
    let bob = phone(&d, "bob", "user_answer.xml", &[]);
    for _ in 0..2 {
        let (ok, out) = pbx(&d, Path::new("pbx_call.xml"), "+15550005", &["-d", "100"]).wait();
        assert!(ok, "{out}");
    }
    assert!(alice.wait().0 && bob.wait().0, "each phone took one call");
    let users: Vec<String> =
        wait_cdr(&d, 2).iter().map(|r| r["target_user"].as_str().unwrap_or("").to_owned()).collect();
    assert!(users.contains(&"alice".to_owned()) && users.contains(&"bob".to_owned()), "{users:?}");
}

/// Two fleet nodes (node-a, node-b) on a fresh PostgreSQL schema, started,
/// sharing portal acme with one channel, whose user alice answers on a
/// sipp phone (two calls).
fn fleet_of_two() -> (String, Daemon, Daemon, SippChild) {
    let url = tokio::runtime::Runtime::new().expect("runtime").block_on(common::pg_schema_url());
    let mut a = Daemon::prepare_db(&url, "node-a", TRUNK);
    a.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    a.cli(&[
        "extension",
        "add",
        "--portal",
        "acme",
        "--channels",
        "1",
        "--valid-from",
        "2020-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    a.cli_stdin(&["user", "add", "--portal", "acme", "--username", "alice"], Some("alice-secret-1\n"));
    let mut b = Daemon::prepare_db(&url, "node-b", TRUNK);
    a.start();
    b.start();
    let phone = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "2"]);
    set_alice_contact(&a, phone.port);
    (url, a, b, phone)
}

fn set_alice_contact(d: &Daemon, port: u16) {
    let contact = format!("sip:alice@127.0.0.1:{port}");
    d.cli(&["user", "set-contact", "--portal", "acme", "--username", "alice", "--contact", &contact]);
}

/// A fleet: two nodes on one PostgreSQL database count the portal's
/// channels together. With one channel, a call up on node A makes node B
/// answer 486 channels-busy; once it ends, node B admits.
#[test]
fn two_nodes_on_postgresql_share_the_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_url, a, b, phone) = fleet_of_two();
    // A call held for 3 s on node A…
    let call_a = pbx(&a, Path::new("pbx_call.xml"), "+15550001", &["-d", "3000"]);
    wait_calls(&b, "node A's call never held a lease", |l| l.iter().any(|c| c["node_id"] == "node-a"));
    // …so node B has no channel left.
    let (ok, out) = pbx(&b, &pbx_refused_scenario(dir.path(), 486), "+15550001", &[]).wait();
    assert!(ok, "node B refuses while node A holds the only channel:\n{out}");
    assert!(out.contains("channels-busy"), "{out}");
    let (ok, out) = call_a.wait();
    assert!(ok, "{out}");
    // The channel is back: node B admits now.
    wait_calls(&b, "lease not released", Vec::is_empty);
    let (ok, out) = pbx(&b, Path::new("pbx_call.xml"), "+15550001", &["-d", "100"]).wait();
    assert!(ok, "node B admits once the channel is free:\n{out}");
    assert!(phone.wait().0, "the phone took both calls");
}

/// A fleet node killed (SIGKILL: no release, no renewal) while it holds
/// the portal's only channel: the other node refuses with 486 while the
/// dead node's allowance lives (checked 5 s before it expires), and admits
/// once it has expired. No over-admission, and the channel is not lost.
#[test]
fn a_killed_fleet_nodes_channel_comes_back_when_its_allowance_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, mut a, b, phone) = fleet_of_two();
    let _held = pbx(&a, Path::new("pbx_call.xml"), "+15550001", &["-d", "300000"]);
    wait_calls(&b, "node A's call never held a lease", |l| l.iter().any(|c| c["node_id"] == "node-a"));
    // The operator's view: node A holds the portal's one channel.
    let held: serde_json::Value = serde_json::from_str(&b.cli(&["channels", "--json"])).expect("json");
    let held: Vec<_> = held
        .as_array()
        .expect("list")
        .iter()
        .map(|r| (r["portal_id"].as_str(), r["node_id"].as_str(), r["granted"].as_i64()))
        .collect();
    assert_eq!(held, [(Some("acme"), Some("node-a"), Some(1))]);
    a.kill();
    let expires = pg_scalar(&url, "SELECT expires_at FROM channel_allowances WHERE node_id = 'node-a'");
    let wait_until = |unix: i64| {
        let now = common::wall_unix();
        if unix > now {
            std::thread::sleep(std::time::Duration::from_secs(u64::try_from(unix - now).unwrap_or(0)));
        }
    };
    let (ok, out) = pbx(&b, &pbx_refused_scenario(dir.path(), 486), "+15550001", &[]).wait();
    assert!(ok, "node A's allowance holds the only channel:\n{out}");
    wait_until(expires - 5);
    let (ok, out) = pbx(&b, &pbx_refused_scenario(dir.path(), 486), "+15550001", &[]).wait();
    assert!(ok, "5 s before node A's allowance expires, still refused:\n{out}");
    // Alice's phone still holds the cut call: a fresh one for the next.
    drop(phone);
    let phone = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "1"]);
    set_alice_contact(&b, phone.port);
    wait_until(expires + 1);
    let (ok, out) = pbx(&b, Path::new("pbx_call.xml"), "+15550001", &["-d", "100"]).wait();
    assert!(ok, "node B admits once node A's allowance has expired:\n{out}");
    assert!(phone.wait().0, "alice answered on node B");
}

/// One integer from the fleet's PostgreSQL schema.
fn pg_scalar(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.expect(sql)
    })
}

/// Runs `sql` on the fleet's PostgreSQL schema.
fn pg_exec(url: &str, sql: &str) {
    use sqlx::Connection;
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect(sql);
    });
}

/// Regression: the call rate (row 7) was checked before the channel count
/// (row 6), so a portal both full and over its rate got 503 rate-limited
/// instead of DESIGN.md's 486 channels-busy. On a fleet (PostgreSQL): the
/// portal's one channel is held by a lease of another node, and its rate
/// limit is 0 calls per second.
#[test]
fn full_portal_over_its_rate_is_busy_on_a_fleet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = tokio::runtime::Runtime::new().expect("runtime").block_on(common::pg_schema_url());
    let mut d = Daemon::prepare_db(&url, "node-a", TRUNK);
    d.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    d.cli(&[
        "extension",
        "add",
        "--portal",
        "acme",
        "--channels",
        "1",
        "--valid-from",
        "2020-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    d.cli_stdin(&["user", "add", "--portal", "acme", "--username", "alice"], Some("alice-secret-1\n"));
    // Reachable (never rung: every call here is refused), so the route
    // would pass and only rows 6 and 7 decide.
    d.cli(&["user", "set-contact", "--portal", "acme", "--username", "alice", "--contact", "sip:alice@127.0.0.1:9"]);
    d.cli(&["portal", "set", "acme", "--max-cps", "0"]);
    // Node B holds the only channel.
    pg_exec(
        &url,
        "INSERT INTO call_leases (call_id, portal_id, node_id, acquired_at, expires_at) \
         VALUES ('node-b/acme-pbx/held@x', 'acme', 'node-b', 0, 4102444800)",
    );
    d.start();
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 486), "+15550001", &[]).wait();
    assert!(ok, "full and over its rate: 486 expected:\n{out}");
    assert!(out.contains("Warning: 399 node-a \"channels-busy"), "{out}");
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!((rec["reason"].as_str(), rec["sip_status"].as_i64()), (Some("channels-busy"), Some(486)), "{rec}");
    // The refused call took no channel: only node B's lease is there.
    wait_calls(&d, "a refused call holds a lease", |l| l.len() == 1 && l[0]["node_id"] == "node-b");
    // The channel comes back: now the rate is what refuses.
    pg_exec(&url, "DELETE FROM call_leases");
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 503), "+15550001", &[]).wait();
    assert!(ok, "a free channel, over the rate: 503 expected:\n{out}");
    assert!(out.contains("\"rate-limited"), "{out}");
    assert!(!out.contains("Retry-After:"), "{out}");
    wait_no_calls(&d);
}

/// The same regression on a single node (SQLite, channels counted in
/// memory): one channel held by a call, at most 1 call per second, and a
/// burst of calls within a few milliseconds. Each finds the portal full,
/// and all but at most the first of each second are also over the rate:
/// every one gets 486.
#[test]
fn full_portal_over_its_rate_is_busy_on_one_node() {
    const BURST: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::prepare(TRUNK);
    d.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    d.cli(&[
        "extension",
        "add",
        "--portal",
        "acme",
        "--channels",
        "1",
        "--valid-from",
        "2020-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    d.cli_stdin(&["user", "add", "--portal", "acme", "--username", "alice"], Some("alice-secret-1\n"));
    d.cli(&["portal", "set", "acme", "--max-cps", "1"]);
    d.start();
    let user = phone(&d, "alice", "user_answer.xml", &[]);
    let held = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "4000"]);
    wait_calls(&d, "the first call never came up", |l| l.len() == 1);
    let burst = sipp_start(
        &pbx_refused_scenario(dir.path(), 486),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", &BURST.to_string(), "-l", &BURST.to_string(), "-r", "1000", "-key", "number", "+15550001"],
    );
    let (_ok, out) = burst.wait();
    let records = wait_cdr(&d, BURST);
    let refusals: Vec<(&str, i64)> =
        records.iter().map(|r| (r["reason"].as_str().unwrap_or("-"), r["sip_status"].as_i64().unwrap_or(0))).collect();
    assert_eq!(refusals, vec![("channels-busy", 486); BURST], "records: {records:?}\nPBX:\n{out}");
    let (ok, out) = held.wait();
    assert!(ok, "the call holding the channel goes on:\n{out}");
    assert!(user.wait().0);
    wait_no_calls(&d);
}

/// `[admission.answers]` changes the code of a refusal (here `no-route` and
/// `unknown-trunk`, the latter answered outside the admission task), in the
/// response and in the call record; the Warning keeps the reason token.
#[test]
fn configured_answer_codes_are_sent_and_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = prepared("[admission.answers]\nno_route = 410\nunknown_trunk = 404\n");
    d.start();
    let (ok, out) = pbx(&d, &pbx_refused_scenario(dir.path(), 410), "+19999999", &[]).wait();
    assert!(ok, "no-route answered 410:\n{out}");
    assert!(out.contains("SIP/2.0 410 Gone"), "{out}");
    assert!(out.contains("Warning: 399 test-node \"no-route"), "{out}");
    let rec = &wait_cdr(&d, 1)[0];
    assert_eq!((rec["reason"].as_str(), rec["sip_status"].as_i64()), (Some("no-route"), Some(410)), "{rec}");
    let stranger = sipp_start(
        &pbx_refused_scenario(dir.path(), 404),
        Some(d.udp),
        "127.0.0.3",
        0,
        &["-m", "1", "-key", "number", "+15550001"],
    );
    let (ok, out) = stranger.wait();
    assert!(ok, "unknown-trunk answered 404:\n{out}");
    assert!(out.contains("Warning: 399 test-node \"unknown-trunk"), "{out}");
    let rec = &wait_cdr(&d, 2)[0];
    assert_eq!((rec["reason"].as_str(), rec["sip_status"].as_i64()), (Some("unknown-trunk"), Some(404)), "{rec}");
}
