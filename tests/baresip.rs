//! A real SIP phone, baresip, as a portal user: it registers to the running
//! daemon with digest authentication (and unregisters when it stops).
//! baresip must be installed (scripts/test.sh does it): a missing baresip
//! fails these tests.

mod common;

use common::baresip::Baresip;
use common::daemon::{Daemon, sipp};

const DOMAIN: &str = "acme.example.com";
const ALICE_PW: &str = "alice-secret-1";

fn daemon() -> Daemon {
    let mut d = Daemon::prepare("");
    d.seed_portal("acme", DOMAIN, &[("alice", ALICE_PW)]);
    d.start();
    d
}

/// The CSeq number of a traced SIP message.
fn cseq(msg: &str) -> &str {
    msg.lines()
        .find_map(|l| l.strip_prefix("CSeq: "))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no CSeq in {msg}"))
}

#[test]
fn baresip_registers_with_digest_and_unregisters_on_stop() {
    let d = daemon();
    let mut phone = Baresip::start("alice", DOMAIN, ALICE_PW, d.udp);
    let line = phone.wait_registered();
    assert!(line.contains("{0/UDP/v4} 200 OK"), "{line}");
    d.wait_log(&["registered", "\"user\":\"alice\"", "\"contacts\":1"]);

    // Challenged, then accepted with an MD5 digest, binding the phone's contact.
    phone.wait_sip(&["SIP/2.0 401 Unauthorized", "WWW-Authenticate: Digest realm=\"acme.example.com\""]);
    let ok = phone.wait_sip(&["SIP/2.0 200 OK", "CSeq:", "REGISTER", "Contact: <sip:alice-"]);
    assert!(ok.contains(&format!("@{}>;expires=300", phone.sip)), "binding for the phone's address: {ok}");

    // On SIGTERM baresip unregisters (expires=0, authenticated) and quits.
    assert_eq!(phone.stop(), Some(0), "{}", phone.log_text());
    let msgs = phone.sip_messages();
    let unregister = msgs
        .iter()
        .rfind(|m| m.contains("\nREGISTER ") && m.contains(";expires=0") && m.contains("Authorization: Digest"))
        .unwrap_or_else(|| panic!("no authenticated unregistration:\n{}", phone.log_text()));
    let n = cseq(unregister);
    assert!(
        msgs.iter().any(|m| m.contains("SIP/2.0 200 OK") && cseq(m) == n),
        "unregistration not accepted:\n{}",
        phone.log_text()
    );

    // The daemon is still fine.
    let (ok, out) = sipp("options.xml", d.udp, false, &[]);
    assert!(ok, "OPTIONS after baresip left:\n{out}");
}

#[test]
fn baresip_with_a_wrong_password_is_refused() {
    let d = daemon();
    let phone = Baresip::builder("alice", DOMAIN, "not-the-password", d.udp).no_wait().start();
    let line = phone.wait_registration_failed();
    assert!(line.contains("sip:alice@acme.example.com"), "{line}");
    d.wait_log(&["REGISTER authentication failed", "\"user\":\"alice\""]);
    assert!(!d.log_text().contains("\"message\":\"registered\""), "{}", d.log_text());
}

/// The harness itself: the phone answers a call on its own (straight from
/// sipp, not through the daemon), sends silence and records both ways, and
/// takes commands.
#[test]
fn baresip_auto_answers_a_direct_call() {
    let d = daemon();
    let phone = Baresip::builder("alice", DOMAIN, ALICE_PW, d.udp).control().start();
    assert!(phone.command("reginfo").contains("OK"), "{}", phone.log_text());
    let target = phone.sip.to_string();
    let port = common::daemon::free_port().to_string();
    let caller = std::thread::spawn(move || {
        std::process::Command::new("sipp")
            .args([&target, "-sn", "uac", "-s", "alice", "-m", "1", "-d", "1500", "-timeout", "15", "-nostdin"])
            .args(["-i", "127.0.0.1", "-p", &port])
            .output()
            .unwrap_or_else(|e| panic!("sipp must be installed (run scripts/test.sh): {e}"))
    });
    let line = phone.wait_for(&[common::baresip::CALL_ESTABLISHED]);
    assert!(line.starts_with("alice@acme.example.com: Call established: sip:sipp@127.0.0.1"), "{line}");
    assert!(phone.command("listcalls").contains("sip:sipp@127.0.0.1"), "{}", phone.log_text());
    let out = caller.join().expect("sipp thread");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), phone.log_text());
    phone.wait_for(&[common::baresip::CALL_TERMINATED]);
    let sent = phone.recordings().into_iter().find(|p| p.to_string_lossy().ends_with("-enc.wav"));
    let size = sent.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
    assert!(size > 44 + 8000, "about a second of silence sent and recorded: {sent:?} {size} bytes");
}

#[test]
fn baresip_registers_over_tcp() {
    let d = daemon();
    let phone = Baresip::builder("alice", DOMAIN, ALICE_PW, d.tcp).tcp().start();
    let line = phone.wait_registered();
    assert!(line.contains("{0/TCP/v4} 200 OK"), "{line}");
    d.wait_log(&["registered", "\"user\":\"alice\"", "\"contacts\":1"]);
}
