//! Overload control against the real daemon, with sipp as the PBX and as
//! the portal user's phone. The daemon is frozen (SIGSTOP) while the PBX
//! sends: every message then waits in the socket's buffer, and the kernel's
//! receive stamp shows the core how long. The backlog stood above
//! `overload_queue_ms` for far longer than overload control's interval, so
//! its new INVITEs are shed with `503` + Retry-After (`overloaded`) and
//! recorded; the BYEs of calls already up, which waited as long, are never
//! shed; calls placed once the queue has drained are admitted.

mod common;

use std::path::Path;
use std::time::Duration;

use common::calls::{PBX_IP, exactly_n_records, leases};
use common::daemon::{Daemon, sipp_start};

/// Overload control's target wait 50 ms; a trunk from 127.0.0.2
/// for portal `acme` whose +15550001 rings alice.
const CONFIG: &str = "overload_queue_ms = 50\n\
[[trunk]]\nname = \"acme-pbx\"\nportal = \"acme\"\nsources = [\"127.0.0.2/32\"]\n\
[[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\nring_timeout_s = 10\n";

fn pause(d: Duration) {
    std::thread::sleep(d);
}

#[test]
fn invites_that_queued_too_long_are_shed_with_503_and_calls_up_are_not() {
    let mut d = Daemon::prepare(CONFIG);
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    // The free plan's 5 calls a second would refuse some of the 10 calls
    // placed at the end as rate-limited.
    d.cli(&["plan", "set", "free", "--max-cps", "unlimited"]);
    d.start();
    // Alice's phone answers the 5 calls up before the freeze and the 10
    // after it: any shed call that reached her would be a 16th.
    let phone = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "15"]);
    let contact = format!("sip:alice@127.0.0.1:{}", phone.port);
    d.cli(&["user", "set-contact", "--portal", "acme", "--username", "alice", "--contact", &contact]);

    // 5 calls up, each hung up by the PBX 2.5 s after its answer.
    let up = sipp_start(
        Path::new("pbx_call.xml"),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "5", "-r", "50", "-key", "number", "+15550001", "-d", "2500"],
    );
    common::retry_until(10, "the 5 calls never came up", || {
        let l = leases(&d);
        if l.len() == 5 { Ok(()) } else { Err(format!("{l:?}")) }
    });

    // Frozen for 3 s: the 5 BYEs and 20 new INVITEs (sent at 100/s) queue.
    d.signal("STOP");
    let shed = sipp_start(
        Path::new("pbx_call_shed.xml"),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "20", "-r", "100", "-key", "number", "+15550001"],
    );
    pause(Duration::from_secs(3));
    d.signal("CONT");

    let (ok, out) = shed.wait();
    assert!(ok, "every queued INVITE gets 503 with Retry-After and Warning overloaded:\n{out}\n{}", d.log_text());
    // All 20 were shed within one second of one overload: Retry-After 1
    // (each 503 at least once; more where a retransmitted INVITE got it
    // again).
    assert!(out.matches("Retry-After: 1\r").count() >= 20, "{out}");
    assert_eq!(out.matches("Retry-After:").count(), out.matches("Retry-After: 1\r").count(), "{out}");
    let (ok, out) = up.wait();
    assert!(ok, "the calls up were hung up normally, their BYEs not shed:\n{out}");

    // The queue drained: new calls are admitted again.
    let (ok, out) = sipp_start(
        Path::new("pbx_call.xml"),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "10", "-r", "20", "-key", "number", "+15550001", "-d", "100"],
    )
    .wait();
    assert!(ok, "calls after the overload are admitted:\n{out}");
    let (ok, out) = phone.wait();
    assert!(ok, "alice answered exactly the 15 admitted calls:\n{out}");

    let records = exactly_n_records(&mut d, 35);
    let count = |outcome: &str, reason: Option<&str>| {
        records.iter().filter(|r| r["outcome"] == outcome && r["reason"].as_str() == reason).count()
    };
    assert_eq!(count("completed", None), 15, "{records:#?}");
    assert_eq!(count("refused", Some("overloaded")), 20, "{records:#?}");
    for r in records.iter().filter(|r| r["outcome"] == "refused") {
        assert_eq!(r["sip_status"], 503, "{r}");
        assert_eq!(r["trunk"], "acme-pbx", "{r}");
        assert_eq!(r["portal_id"], "acme", "{r}");
        assert_eq!(r["callee"], "+15550001", "{r}");
    }
}
