//! Outbound calls with real peers (issue 10): portal users — baresip, and
//! sipp as a phone — call out through trunkgate to a PBX played by sipp,
//! which challenges, answers or refuses. The user's INVITE is challenged by
//! trunkgate (407) and admitted by the licence rules; the call goes out on
//! the portal's trunks in order with the trunk's credentials and caller ID.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};

use serde_json::Value;

use common::baresip::{Baresip, CALL_ESTABLISHED, CALL_TERMINATED};
use common::calls::{PBX_IP, exactly_n_records, pbx, wait_calls};
use common::daemon::{Daemon, SippChild, free_port_on, sipp_start};

const CAPTURES: &str = "/usr/share/sip-tester";
/// A second PBX address, for a second trunk.
const PBX2_IP: &str = "127.0.0.3";

/// A port range of 8 pairs nobody uses now (as tests/media.rs picks them).
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

/// The media section, and trunk `acme-pbx` from 127.0.0.2 (inbound:
/// +15550001 rings alice) with `[trunk.outbound]` lines `outbound`.
fn config(outbound: &str, more_trunks: &str) -> String {
    let (min, max) = port_range();
    format!(
        "[media]\npublic_address = [\"127.0.0.1\"]\nport_min = {min}\nport_max = {max}\n\
         [[trunk]]\nname = \"acme-pbx\"\nportal = \"acme\"\nsources = [\"{PBX_IP}/32\"]\n\
         [[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\nring_timeout_s = 5\n\
         [trunk.outbound]\n{outbound}\n{more_trunks}"
    )
}

/// A portal user's phone (sipp) calling `number` out, holding `hold_ms`.
fn user_call(d: &Daemon, user: &str, password: &str, number: &str, hold_ms: &str) -> SippChild {
    let mp = free_port_on("127.0.0.1").to_string();
    sipp_start(
        Path::new("user_call_out.xml"),
        Some(d.udp),
        "127.0.0.1",
        0,
        &[
            "-m", "1", "-mp", &mp, "-au", user, "-ap", password, "-key", "number", number, "-key", "user", user, "-d",
            hold_ms,
        ],
    )
}

/// A user scenario that authenticates and expects `status` (then ACKs), in
/// a temporary file.
fn user_refused_scenario(dir: &Path, status: u16) -> PathBuf {
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="user_refused_{status}">
  <send retrans="500"><![CDATA[
INVITE sip:[number]@acme.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[user]@acme.example.com>;tag=[pid]U[call_number]
To: <sip:[number]@acme.example.com>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:[user]@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="407" auth="true"/>
  <send><![CDATA[
ACK sip:[number]@acme.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-1];rport
From: <sip:[user]@acme.example.com>;tag=[pid]U[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <send retrans="500"><![CDATA[
INVITE sip:[number]@acme.example.com SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: <sip:[user]@acme.example.com>;tag=[pid]U[call_number]
To: <sip:[number]@acme.example.com>
Call-ID: [call_id]
CSeq: 2 INVITE
Contact: <sip:[user]@[local_ip]:[local_port]>
[authentication]
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="{status}"/>
  <send><![CDATA[
ACK sip:[number]@acme.example.com SIP/2.0
[last_Via:]
From: <sip:[user]@acme.example.com>;tag=[pid]U[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 2 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
</scenario>
"#
    );
    let p = dir.join(format!("user_refused_{status}.xml"));
    std::fs::write(&p, xml).expect("write scenario");
    p
}

fn refused_call(d: &Daemon, dir: &Path, status: u16, user: &str, password: &str, number: &str) -> (bool, String) {
    sipp_start(
        &user_refused_scenario(dir, status),
        Some(d.udp),
        "127.0.0.1",
        0,
        &["-m", "1", "-au", user, "-ap", password, "-key", "number", number, "-key", "user", user],
    )
    .wait()
}

fn figure(rec: &Value, leg: &str, name: &str) -> u64 {
    rec["media"][leg][name].as_u64().unwrap_or_else(|| panic!("media.{leg}.{name} in {rec}"))
}

/// baresip, registered as alice, dials a number; trunkgate challenges it
/// (baresip answers with its account's password), admits the call and
/// sends it to the PBX, which challenges trunkgate in turn and checks the
/// answer (sipp's verifyauth), the caller ID (From and P-Asserted-Identity
/// with the trunk's number) and that the offer is trunkgate's own; then it
/// plays the G.711 capture. baresip decodes that audio (not silence) and
/// its own audio reaches the PBX, packet for packet.
#[test]
fn baresip_calls_out_through_a_pbx_that_challenges_and_they_hear_each_other() {
    let pbx_port = free_port_on(PBX_IP);
    let mut d = Daemon::prepare(&config(
        &format!(
            "target = \"udp://{PBX_IP}:{pbx_port}\"\nusername = \"tg-trunk\"\npassword_file = \"pbx.secret\"\n\
             caller_number = \"+15550100\"\ncaller_id = [\"from\", \"pai\"]\n"
        ),
        "",
    ));
    std::fs::write(d.dir.path().join("pbx.secret"), "trunk-secret-9\n").expect("secret");
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d.start();
    let pbx = pbx_answering_with_auth(pbx_port);
    let phone =
        Baresip::builder("alice", "acme.example.com", "alice-secret-1", d.udp).control().silence_secs(9).start();
    phone.command("dial sip:+15550001@acme.example.com");
    phone.wait_for(&[CALL_ESTABLISHED]);
    phone.wait_for(&[CALL_TERMINATED]);
    let (ok, out) = pbx.wait();
    assert!(ok, "PBX side (credentials, caller ID, anchored offer):\n{out}\ndaemon:\n{}", d.log_text());
    assert!(!d.log_text().contains("trunk-secret-9"), "the trunk's secret is never logged");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(
        (&rec["direction"], &rec["trunk"], &rec["target_user"], &rec["callee"], &rec["outcome"]),
        (&"outbound".into(), &"acme-pbx".into(), &"alice".into(), &"+15550001".into(), &"completed".into()),
        "{rec}"
    );
    assert_eq!(figure(rec, "pbx", "rx_packets"), 236, "the whole capture from the PBX: {rec}");
    assert_eq!(figure(rec, "user", "tx_packets"), 236, "all of it relayed to baresip: {rec}");
    let from_phone = figure(rec, "user", "rx_packets");
    assert!(from_phone > 100, "baresip's audio (50 packets/s for several seconds): {rec}");
    assert_eq!(figure(rec, "pbx", "tx_packets"), from_phone, "every packet of the phone reached the PBX: {rec}");
    let dec = phone
        .recordings()
        .into_iter()
        .find(|p| p.to_string_lossy().contains("-dec"))
        .unwrap_or_else(|| panic!("a decoded recording: {:?}", phone.recordings()));
    let pcm = std::fs::read(&dec).expect("recording");
    let loud =
        pcm[44.min(pcm.len())..].chunks_exact(2).filter(|s| i16::from_le_bytes([s[0], s[1]]).abs() > 500).count();
    assert!(loud > 8000, "baresip heard the PBX's speech: {loud} loud samples in {}", dec.display());
}

/// Two trunks: the first (priority 1) answers 503, the call goes to the
/// second at once, which answers; the record names the trunk that carried
/// the call.
#[test]
fn a_503_from_the_first_trunk_fails_over_to_the_second() {
    let (p1, p2) = (free_port_on(PBX2_IP), free_port_on(PBX_IP));
    let second = format!(
        "[[trunk]]\nname = \"acme-backup\"\nportal = \"acme\"\nsources = [\"{PBX2_IP}/32\"]\n\
         [trunk.outbound]\ntarget = \"udp://{PBX2_IP}:{p1}\"\npriority = 1\n"
    );
    let mut d = Daemon::prepare(&config(&format!("target = \"udp://{PBX_IP}:{p2}\"\npriority = 2\n"), &second));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d.start();
    let refusing = sipp_start(Path::new("trunk_reject_503.xml"), None, PBX2_IP, p1, &["-m", "1"]);
    let mp = free_port_on(PBX_IP).to_string();
    let answering = sipp_start(Path::new("trunk_answer.xml"), None, PBX_IP, p2, &["-m", "1", "-mp", &mp]);
    let (ok, out) = user_call(&d, "alice", "alice-secret-1", "+442079460000", "500").wait();
    assert!(ok, "the user's call is answered:\n{out}\ndaemon:\n{}", d.log_text());
    let (ok, out) = refusing.wait();
    assert!(ok, "the first trunk got the INVITE, refused it and got its ACK:\n{out}");
    let (ok, out) = answering.wait();
    assert!(ok, "the second trunk answered and got the BYE:\n{out}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!((&rec["outcome"], &rec["trunk"]), (&"completed".into(), &"acme-pbx".into()), "{rec}");
}

/// What a user may dial is theirs: `none` refuses everything and a prefix
/// list what it does not cover, with 403 `not-permitted`, recorded.
#[test]
fn a_user_without_permission_is_refused_with_not_permitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::prepare(&config(&format!("target = \"udp://{PBX_IP}:5060\"\n"), ""));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1"), ("bob", "bob-secret-22")]);
    d.cli(&["user", "set", "--portal", "acme", "--username", "alice", "--outbound", "none"]);
    d.cli(&["user", "set", "--portal", "acme", "--username", "bob", "--outbound", "+44*,112"]);
    d.start();
    let (ok, out) = refused_call(&d, dir.path(), 403, "alice", "alice-secret-1", "+442079460000");
    assert!(ok, "{out}");
    assert!(out.contains("not-permitted: user alice may not call +442079460000"), "{out}");
    let (ok, out) = refused_call(&d, dir.path(), 403, "bob", "bob-secret-22", "+15550001");
    assert!(ok, "{out}");
    assert!(out.contains("not-permitted"), "{out}");
    let recs = exactly_n_records(&mut d, 2);
    for r in &recs {
        assert_eq!(
            (&r["outcome"], &r["reason"], &r["sip_status"]),
            (&"refused".into(), &"not-permitted".into(), &403.into()),
            "{r}"
        );
        assert_eq!(r["direction"], "outbound", "{r}");
    }
}

/// A portal without a SIP connector extension: its user's outbound call is
/// refused as an inbound call would be, with the same answer and reason.
#[test]
fn an_unlicensed_portals_outbound_call_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::prepare(&config(&format!("target = \"udp://{PBX_IP}:5060\"\n"), ""));
    d.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    d.cli_stdin(&["user", "add", "--portal", "acme", "--username", "alice"], Some("alice-secret-1\n"));
    d.start();
    let (ok, out) = refused_call(&d, dir.path(), 403, "alice", "alice-secret-1", "+442079460000");
    assert!(ok, "{out}");
    assert!(out.contains("\"not-licensed"), "{out}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!((&rec["reason"], &rec["direction"]), (&"not-licensed".into(), &"outbound".into()), "{rec}");
}

/// A portal with 2 channels: one inbound and one outbound call up take
/// both, so the next call in either direction gets 486 channels-busy.
#[test]
fn inbound_and_outbound_calls_share_the_portals_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx_port = free_port_on(PBX_IP);
    let mut d = Daemon::prepare(&config(&format!("target = \"udp://{PBX_IP}:{pbx_port}\"\n"), ""));
    d.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    d.cli(&[
        "extension",
        "add",
        "--portal",
        "acme",
        "--channels",
        "2",
        "--valid-from",
        "2020-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    for (u, p) in [("alice", "alice-secret-1"), ("bob", "bob-secret-22")] {
        d.cli_stdin(&["user", "add", "--portal", "acme", "--username", u], Some(&format!("{p}\n")));
    }
    d.start();
    // Inbound: the PBX calls alice (a sipp phone at a static contact).
    let phone = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "1"]);
    let contact = format!("sip:alice@127.0.0.1:{}", phone.port);
    d.cli(&["user", "set-contact", "--portal", "acme", "--username", "alice", "--contact", &contact]);
    let inbound = pbx(&d, Path::new("pbx_call.xml"), "+15550001", &["-d", "6000"]);
    wait_calls(&d, "the inbound call up", |l| l.len() == 1);
    // Outbound: bob calls out.
    let mp = free_port_on(PBX_IP).to_string();
    let trunk = sipp_start(Path::new("trunk_answer.xml"), None, PBX_IP, pbx_port, &["-m", "1", "-mp", &mp]);
    let outbound = user_call(&d, "bob", "bob-secret-22", "+442079460000", "6000");
    wait_calls(&d, "both calls up", |l| l.len() == 2);
    // A third call, either way: busy.
    let (ok, out) = refused_call(&d, dir.path(), 486, "bob", "bob-secret-22", "+442079460001");
    assert!(ok, "outbound third call:\n{out}");
    assert!(out.contains("channels-busy: 2 of 2 channels busy"), "{out}");
    let third_in = sipp_start(
        &common::daemon::pbx_refused_scenario(dir.path(), 486),
        Some(d.udp),
        PBX_IP,
        0,
        &["-m", "1", "-key", "number", "+15550001"],
    );
    let (ok, out) = third_in.wait();
    assert!(ok, "inbound third call:\n{out}");
    assert!(out.contains("channels-busy"), "{out}");
    for (what, c) in [("inbound", inbound), ("outbound", outbound), ("phone", phone), ("trunk", trunk)] {
        let (ok, out) = c.wait();
        assert!(ok, "{what}:\n{out}");
    }
    let recs = exactly_n_records(&mut d, 4);
    let count =
        |dir: &str, outcome: &str| recs.iter().filter(|r| r["direction"] == dir && r["outcome"] == outcome).count();
    assert_eq!(
        (
            count("inbound", "completed"),
            count("outbound", "completed"),
            count("inbound", "refused"),
            count("outbound", "refused")
        ),
        (1, 1, 1, 1),
        "{recs:#?}"
    );
}

/// Arrival times (seconds of the day) of the requests `method` in a sipp
/// run's message log, in order.
fn arrivals(log: &str, method: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut stamp: Option<f64> = None;
    let mut received = false;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("-----------------------------------------------") {
            stamp = rest.split_whitespace().last().and_then(|t| {
                let mut p = t.split(':');
                let (h, m, s) =
                    (p.next()?.parse::<f64>().ok()?, p.next()?.parse::<f64>().ok()?, p.next()?.parse::<f64>().ok()?);
                Some(h * 3600.0 + m * 60.0 + s)
            });
            received = false;
        } else if line.contains("message received") {
            received = true;
        } else if received && line.starts_with(&format!("{method} ")) {
            if let Some(t) = stamp {
                out.push(t);
            }
            received = false;
        }
    }
    out
}

/// A cloud-PBX trunk (no sources, `register = true`): trunkgate registers
/// to the provider's registrar (sipp), answering its challenge; refreshes
/// at half the granted 4 s; after 503s backs off 1–2 s, then 2–4 s (base
/// 2 s, jittered), then exactly the Retry-After; registers again; a call
/// from the provider — from an address that is no trunk source — to the
/// registered contact rings the portal user the To number routes to; on
/// stop the binding is removed (Expires: 0). `trunkgate trunks` shows the
/// registration.
#[test]
fn a_cloud_pbx_trunk_registers_refreshes_backs_off_and_takes_calls_on_its_contact() {
    let reg_port = free_port_on(PBX2_IP);
    let (min, max) = port_range();
    let mut d = Daemon::prepare(&format!(
        "[media]\npublic_address = [\"127.0.0.1\"]\nport_min = {min}\nport_max = {max}\n\
         [[trunk]]\nname = \"acme-cloud\"\nportal = \"acme\"\nsources = []\n\
         [[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\nring_timeout_s = 5\n\
         [trunk.outbound]\ntarget = \"udp://{PBX2_IP}:{reg_port}\"\nusername = \"acct42\"\npassword = \"prov-secret-7\"\n\
         register = true\ndomain = \"provider.test\"\ncontact_user = \"tg-cloud\"\nregister_retry_s = 2\noptions_interval_s = 0\n"
    ));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    let registrar = sipp_start(Path::new("registrar.xml"), None, PBX2_IP, reg_port, &["-m", "1"]);
    d.start();
    // Registered again after the back-off: 2 + ~1.5 + ~3 + 1 s.
    common::retry_until(20, "registered after the back-off", || {
        let out = d.cli(&["trunks"]);
        if out.contains("registered on test-node: expires 60 s") { Ok(()) } else { Err(out) }
    });
    let json: Value = serde_json::from_str(&d.cli(&["trunks", "--json"])).expect("json");
    assert_eq!(json[0]["registration"]["state"], "registered", "{json}");
    assert_eq!(json[0]["outbound"]["register"], "sip:acct42@provider.test as tg-cloud", "{json}");
    // The provider calls the account: it reaches alice.
    let phone = sipp_start(Path::new("user_answer.xml"), None, "127.0.0.1", 0, &["-m", "1"]);
    let contact = format!("sip:alice@127.0.0.1:{}", phone.port);
    d.cli(&["user", "set-contact", "--portal", "acme", "--username", "alice", "--contact", &contact]);
    let call = sipp_start(
        Path::new("cloud_pbx_call.xml"),
        Some(d.udp),
        PBX2_IP,
        0,
        &["-m", "1", "-key", "contact", "tg-cloud", "-key", "number", "+15550001", "-d", "300"],
    );
    let (ok, out) = call.wait();
    assert!(ok, "the provider's call:\n{out}\ndaemon:\n{}", d.log_text());
    let (ok, out) = phone.wait();
    assert!(ok, "alice:\n{out}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(
        (&rec["trunk"], &rec["callee"], &rec["target_user"], &rec["outcome"]),
        (&"acme-cloud".into(), &"+15550001".into(), &"alice".into(), &"completed".into()),
        "{rec}"
    );
    // exactly_n_records stopped the daemon: it unregistered.
    let (ok, out) = registrar.wait();
    assert!(ok, "the registrar's script (credentials, contact, Expires: 0 at stop):\n{out}");
    let at = arrivals(&out, "REGISTER");
    assert_eq!(at.len(), 7, "challenge, answer, refresh, 2 back-offs, Retry-After, stop: {at:?}");
    let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let within = |g: f64, lo: f64, hi: f64| g >= lo - 0.05 && g < hi + 0.25;
    assert!(gaps[0] < 0.5, "the challenge is answered at once: {gaps:?}");
    assert!(within(gaps[1], 2.0, 2.0), "refresh at half the granted 4 s: {gaps:?}");
    assert!(within(gaps[2], 1.0, 2.0), "first back-off in [1, 2) s: {gaps:?}");
    assert!(within(gaps[3], 2.0, 4.0), "second back-off in [2, 4) s: {gaps:?}");
    assert!(within(gaps[4], 1.0, 1.0), "Retry-After: 1 honoured: {gaps:?}");
}

/// OPTIONS pings: a PBX answering 503 twice is marked down (`trunkgate
/// trunks` says so), an outbound call meanwhile goes straight to the next
/// trunk (the down one gets no INVITE), and the first good answer marks it
/// up again.
#[test]
fn a_trunk_down_by_its_pings_is_skipped_until_it_answers_again() {
    let (pa, pb) = (free_port_on(PBX2_IP), free_port_on(PBX_IP));
    let backup = format!(
        "[[trunk]]\nname = \"acme-backup\"\nportal = \"acme\"\nsources = [\"127.0.0.4/32\"]\n\
         [trunk.outbound]\ntarget = \"udp://{PBX_IP}:{pb}\"\npriority = 2\noptions_interval_s = 0\n"
    );
    let mut d = Daemon::prepare(&config(
        &format!("target = \"udp://{PBX2_IP}:{pa}\"\npriority = 1\noptions_interval_s = 1\n"),
        &backup,
    ));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    let sick = sipp_start(Path::new("pbx_options_down_up.xml"), None, PBX2_IP, pa, &["-m", "1"]);
    d.start();
    common::retry_until(10, "the first trunk marked down", || {
        let out = d.cli(&["trunks"]);
        if out.contains("test-node DOWN") { Ok(()) } else { Err(out) }
    });
    d.wait_log(&["trunk down: outbound calls skip it"]);
    let mp = free_port_on(PBX_IP).to_string();
    let answering = sipp_start(Path::new("trunk_answer.xml"), None, PBX_IP, pb, &["-m", "1", "-mp", &mp]);
    let (ok, out) = user_call(&d, "alice", "alice-secret-1", "+442079460000", "200").wait();
    assert!(ok, "{out}");
    let (ok, out) = answering.wait();
    assert!(ok, "{out}");
    let (ok, out) = sick.wait();
    assert!(ok, "the sick PBX's pings:\n{out}");
    assert!(!out.contains("INVITE sip:"), "no INVITE to a trunk marked down:\n{out}");
    common::retry_until(10, "the first trunk up again", || {
        let json: Value = serde_json::from_str(&d.cli(&["trunks", "--json"])).map_err(|e| e.to_string())?;
        if json[0]["health"][0]["up"] == 1 { Ok(()) } else { Err(json.to_string()) }
    });
    d.wait_log(&["trunk up"]);
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!((&rec["trunk"], &rec["outcome"]), (&"acme-backup".into(), &"completed".into()), "{rec}");
}

/// A user's INVITE without credentials, expecting `status` at once: the
/// refused scenario's second half (its INVITE with no authentication).
fn user_unauthenticated_scenario(dir: &Path, status: u16) -> PathBuf {
    let refused = std::fs::read_to_string(user_refused_scenario(dir, status)).expect("scenario");
    let start = refused.find("  <send retrans=\"500\">").expect("first INVITE");
    let second = refused[start + 1..].find("  <send retrans=\"500\">").expect("second INVITE") + start + 1;
    let xml = format!("{}{}", &refused[..start], &refused[second..])
        .replace("[authentication]\n", "")
        .replace(&format!("user_refused_{status}"), &format!("user_unauthenticated_{status}"));
    assert!(!xml.contains("auth=\"true\"") && xml.contains("CSeq: 2 INVITE"), "{xml}");
    let p = dir.join(format!("user_unauthenticated_{status}.xml"));
    std::fs::write(&p, xml).expect("write scenario");
    p
}

/// Guessing a user's password by INVITE is locked out as by REGISTER:
/// after `max_failures` wrong answers to the 407, the next INVITE from that
/// address for that user is refused 403 without a challenge, with a
/// security log line; no call record is written for a challenge.
#[test]
fn wrong_passwords_on_invite_are_locked_out_like_register() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::prepare(&format!(
        "[auth]\nmax_failures = 2\n{}",
        config(&format!("target = \"udp://{PBX_IP}:5060\"\noptions_interval_s = 0\n"), "")
    ));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d.start();
    for _ in 0..2 {
        // The wrong answer is challenged again.
        let (ok, out) = refused_call(&d, dir.path(), 407, "alice", "not-her-password", "+442079460000");
        assert!(ok, "{out}");
    }
    d.wait_log(&["INVITE authentication failed", "\"user\":\"alice\"", "\"locked_out\":true"]);
    let (ok, out) = sipp_start(
        &user_unauthenticated_scenario(dir.path(), 403),
        Some(d.udp),
        "127.0.0.1",
        0,
        &["-m", "1", "-key", "number", "+442079460000", "-key", "user", "alice"],
    )
    .wait();
    assert!(ok, "locked out: 403 without a challenge:\n{out}");
    assert!(out.contains("too many authentication failures"), "{out}");
    d.wait_log(&["INVITE from a locked-out source refused", "\"user\":\"alice\""]);
    assert_eq!(d.stop(), Some(0));
    assert_eq!(common::calls::cdr(&d).len(), 0, "challenges and lockouts make no call records");
}

/// An outbound proxy in front of the PBX: the INVITE goes to the proxy
/// with a Route naming it, the Request-URI still the PBX's.
#[test]
fn an_outbound_proxy_gets_the_invite_with_a_route_to_itself() {
    let proxy_port = free_port_on(PBX_IP);
    let mut d = Daemon::prepare(&config(
        &format!(
            "target = \"udp://192.0.2.99:5060\"\noutbound_proxy = \"udp://{PBX_IP}:{proxy_port}\"\noptions_interval_s = 0\n"
        ),
        "",
    ));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d.start();
    let mp = free_port_on(PBX_IP).to_string();
    let proxy = sipp_start(Path::new("trunk_proxy_answer.xml"), None, PBX_IP, proxy_port, &["-m", "1", "-mp", &mp]);
    let (ok, out) = user_call(&d, "alice", "alice-secret-1", "+442079460000", "200").wait();
    assert!(ok, "{out}");
    let (ok, out) = proxy.wait();
    assert!(ok, "the proxy (Request-URI the PBX's, Route to itself):\n{out}");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
}

/// One registration per cloud-PBX trunk across a fleet: two nodes on one
/// PostgreSQL database, the first to start registers, the other stands
/// by; when the first dies (SIGKILL: no unregistration, no release) the
/// other takes the trunk over once the dead node's claim runs out.
#[test]
fn a_fleet_registers_a_cloud_trunk_once_and_another_node_takes_it_over() {
    let url = tokio::runtime::Runtime::new().expect("runtime").block_on(common::pg_schema_url());
    let reg_port = free_port_on(PBX2_IP);
    let trunk = format!(
        "[[trunk]]\nname = \"acme-cloud\"\nportal = \"acme\"\nsources = []\n\
         [trunk.outbound]\ntarget = \"udp://{PBX2_IP}:{reg_port}\"\nusername = \"acct42\"\npassword = \"pw\"\n\
         register = true\ndomain = \"provider.test\"\ncontact_user = \"tg-cloud\"\nregister_expires_s = 60\noptions_interval_s = 0\n"
    );
    let mut a = Daemon::prepare_db(&url, "node-a", &trunk);
    a.cli(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    let mut b = Daemon::prepare_db(&url, "node-b", &trunk);
    let registrar = sipp_start(Path::new("registrar_ok.xml"), None, PBX2_IP, reg_port, &["-m", "100"]);
    a.start();
    common::retry_until(10, "node-a registers", || {
        let out = a.cli(&["trunks"]);
        if out.contains("registered on node-a") { Ok(()) } else { Err(out) }
    });
    b.start();
    b.wait_log(&["ready"]);
    // B tries its claim at once and every 10 s: it stays with A.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(b.cli(&["trunks"]).contains("registered on node-a"), "one node registers the trunk");
    assert!(!b.log_text().contains("registration claimed by this node"), "node-b stands by");
    let killed = common::wall_now();
    a.kill();
    common::retry_until(60, "node-b takes the trunk over", || {
        let out = b.cli(&["trunks"]);
        if out.contains("registered on node-b") { Ok(()) } else { Err(out) }
    });
    let took = killed.elapsed();
    assert!(took <= std::time::Duration::from_secs(45), "within the claim's 30 s and a renewal: {took:?}");
    b.wait_log(&["registration claimed by this node"]);
    // node-b's registration is the registrar's answer to node-b (the row is
    // written from the 200): both nodes registered, one after the other.
    drop(registrar);
}

/// A trunk whose file names no credentials answers its PBX's challenge
/// with those stored in the database (`trunk set-credentials`, password on
/// standard input); the CLI refuses a trunk the configuration does not have.
#[test]
fn trunk_credentials_can_live_in_the_database() {
    let pbx_port = free_port_on(PBX_IP);
    let mut d = Daemon::prepare(&config(
        &format!(
            "target = \"udp://{PBX_IP}:{pbx_port}\"\ncaller_number = \"+15550100\"\ncaller_id = [\"from\", \"pai\"]\n\
             options_interval_s = 0\n"
        ),
        "",
    ));
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    let out = d.cli_stdin(
        &["trunk", "set-credentials", "--trunk", "acme-pbx", "--username", "tg-trunk"],
        Some("trunk-secret-9\n"),
    );
    assert!(out.contains("credentials stored for tg-trunk"), "{out}");
    assert!(!out.contains("trunk-secret-9"), "never printed");
    let refused = std::process::Command::new(common::bin())
        .arg("--config")
        .arg(&d.config)
        .args(["trunk", "set-credentials", "--trunk", "nope", "--username", "x"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    d.start();
    d.wait_log(&["trunk credentials from the database", "acme-pbx"]);
    let pbx = pbx_answering_with_auth(pbx_port);
    let (ok, out) = user_call(&d, "alice", "alice-secret-1", "+15550001", "1000").wait();
    assert!(ok, "{out}");
    let (ok, out) = pbx.wait();
    assert!(ok, "the PBX accepted the database's credentials:\n{out}");
    assert!(!d.log_text().contains("trunk-secret-9"), "never logged");
    let rec = &exactly_n_records(&mut d, 1)[0];
    assert_eq!(rec["outcome"], "completed", "{rec}");
}

/// The PBX on `pbx_port` that challenges one call with 401, checks the
/// answer and answers with the G.711 A-law capture as audio.
fn pbx_answering_with_auth(pbx_port: u16) -> SippChild {
    let mp = free_port_on(PBX_IP).to_string();
    sipp_start(
        Path::new("trunk_answer_auth.xml"),
        None,
        PBX_IP,
        pbx_port,
        &["-m", "1", "-mp", &mp, "-key", "audio", &format!("{CAPTURES}/g711a.pcap")],
    )
}
