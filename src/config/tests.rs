use std::path::{Path, PathBuf};

use super::*;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p
}

fn load_text(text: &str) -> Result<Loaded, ConfigErrors> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "trunkgate.toml", text);
    load(&p, &Overrides::default())
}

/// Copies the shipped examples into a fresh folder, optionally replacing one file.
fn examples_with(replace: Option<(&str, String)>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    for rel in shipped_files() {
        let text = std::fs::read_to_string(example_dir().join(&rel)).expect("read example");
        let text = match &replace {
            Some((name, t)) if *name == rel => t.clone(),
            _ => text,
        };
        write(dir.path(), &rel, &text);
    }
    let main = dir.path().join("trunkgate.toml");
    (dir, main)
}

fn shipped_files() -> Vec<String> {
    let mut files = vec!["trunkgate.toml".to_owned()];
    let mut trunks: Vec<String> = std::fs::read_dir(example_dir().join("trunks.d"))
        .expect("config/trunks.d exists")
        .filter_map(Result::ok)
        .map(|e| format!("trunks.d/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".toml"))
        .collect();
    trunks.sort();
    assert!(!trunks.is_empty(), "config/trunks.d ships at least one example");
    files.extend(trunks);
    files
}

#[test]
fn shipped_examples_load() {
    let (_dir, main) = examples_with(None);
    let loaded = load(&main, &Overrides::default()).unwrap_or_else(|e| panic!("examples must load:\n{e}"));
    assert_eq!(loaded.node_id, "node-1");
    let names: Vec<&str> = loaded.trunks.iter().map(|t| t.trunk.name.get_ref().as_str()).collect();
    assert_eq!(names, ["acme-pbx", "globex-cloud", "globex-pbx"]);
    let listen: Vec<String> = loaded.listen.iter().map(ToString::to_string).collect();
    assert_eq!(listen, ["udp://127.0.0.1:5060", "tcp://127.0.0.1:5060", "ws://127.0.0.1:8080"]);
    assert!(loaded.media.browsers, "a WebSocket listener: the browsers' port is bound");
    assert_eq!(loaded.media.webrtc_port, 20_000);
    assert_eq!(loaded.database_url, "sqlite://var/trunkgate.db");
    let globex = &loaded.trunks[2].trunk;
    assert_eq!(globex.route[0].strategy, RingStrategy::Evenly);
    assert_eq!(globex.sources.len(), 2);
    let acme = loaded.trunks[0].outbound.as_ref().expect("acme-pbx takes outbound calls");
    assert_eq!((acme.addr.to_string(), acme.credentials.is_some()), ("127.0.0.1:5070".to_owned(), false));
    let cloud = loaded.trunks[1].outbound.as_ref().expect("the cloud trunk's outbound side");
    let reg = cloud.registration.as_ref().expect("it registers");
    assert_eq!((reg.aor.as_str(), reg.contact_user.as_str()), ("sip:acct-1001@sip.provider.example", "tg-globex"));
    assert_eq!(reg.addr.to_string(), "192.0.2.20:5060", "the registrar defaults to the target");
    assert!(loaded.trunks[1].sources.is_empty(), "a registering trunk needs no sources");
}

#[test]
fn outbound_errors_name_file_line_and_reason() {
    let t = |outbound: &str| {
        format!("[[trunk]]\nname = \"a\"\nportal = \"p\"\nsources = []\n[trunk.outbound]\n{outbound}\n")
    };
    let cases = [
        ("target = \"sips://pbx:5061\"", "expected udp://HOST[:PORT] or tcp://HOST[:PORT]"),
        ("target = \"udp://pbx.invalid\"", "does not resolve"),
        ("target = \"udp://192.0.2.1:0\"", "bad host or port"),
        ("target = \"udp://192.0.2.1\"\nusername = \"u\"", "outbound username without password or password_file"),
        ("target = \"udp://192.0.2.1\"\npassword_file = \"missing.secret\"\nusername = \"u\"", "password_file"),
        ("target = \"udp://192.0.2.1\"\nnumber_format = \"e164\"", "number_format needs country_code"),
        ("target = \"udp://192.0.2.1\"\ncaller_number = \"+1 555\"", "must be digits"),
        ("target = \"udp://192.0.2.1\"\nregister = true", "register = true needs account or username"),
        ("target = \"udp://192.0.2.1\"", "has no sources (only a trunk with register = true may have none)"),
        ("target = \"udp://192.0.2.1\"\ncaller_id = [\"pai\", \"x\"]", "unknown variant"),
    ];
    for (outbound, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "trunkgate.toml", &t(outbound));
        let err = load(&p, &Overrides::default()).expect_err(outbound).to_string();
        assert!(err.contains(expected), "{outbound}: {err}");
        assert!(err.contains("trunkgate.toml:"), "file and line: {err}");
    }
}

/// Inserts `bogus_key = 1` after the header of every table (and at the top for
/// the root table), one at a time, and expects each to be rejected at that line.
#[test]
fn unknown_key_in_every_table_of_every_example_is_rejected_with_its_line() {
    let mut checked = 0;
    for rel in shipped_files() {
        let text = std::fs::read_to_string(example_dir().join(&rel)).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        // Insertion points: before line 0 (root) and after each table header.
        let mut points = vec![0usize];
        for (i, l) in lines.iter().enumerate() {
            if l.trim_start().starts_with('[') {
                points.push(i + 1);
            }
        }
        assert!(points.len() >= 2, "{rel} has tables");
        for at in points {
            let mut out: Vec<&str> = lines.clone();
            out.insert(at, "bogus_key = 1");
            let injected = out.join("\n") + "\n";
            let (_dir, main) = examples_with(Some((&rel, injected)));
            let err =
                load(&main, &Overrides::default()).expect_err(&format!("{rel}: bogus key at line {} accepted", at + 1));
            let e = err.0.iter().find(|e| e.message.contains("bogus_key")).unwrap_or_else(|| panic!("{rel}: {err}"));
            assert!(e.message.contains("unknown field"), "{e}");
            assert_eq!(e.location.line, at + 1, "{rel}: {e}");
            assert!(e.location.file.ends_with(&rel), "{e}");
            checked += 1;
        }
    }
    // trunkgate.toml: root, log, database, sip, registrar, auth, admission,
    // admission.answers, trunk, 2 routes; globex: root, trunk, route.
    assert!(checked >= 14, "checked {checked} tables");
}

/// The shipped example writes out every `[admission.answers]` key with its
/// default, so the unknown-key test above also covers that table and the
/// example documents the whole table.
#[test]
fn shipped_example_lists_every_answer_with_its_default() {
    let text = std::fs::read_to_string(example_dir().join("trunkgate.toml")).expect("read");
    assert!(text.lines().any(|l| l.trim() == "[admission.answers]"), "no [admission.answers] table");
    assert!(text.lines().any(|l| l.trim() == "[admission]"), "no [admission] table");
    let (_dir, main) = examples_with(None);
    let loaded = load(&main, &Overrides::default()).expect("examples load");
    let section = &loaded.config.admission.answers;
    for (reason, status) in section.entries() {
        let status = status.as_ref().unwrap_or_else(|| panic!("example omits {reason}"));
        assert_eq!(*status.get_ref(), crate::admission::RefusalAnswers::default_status(reason), "{reason}");
    }
    assert!(loaded.answers.is_default());
}

#[test]
fn admission_answers_override_the_defaults() {
    use crate::admission::{Reason, RefusalAnswers};
    let l = load_text("[admission.answers]\nchannels_busy = 600\nno_route = 480\n").expect("valid");
    assert_eq!(l.answers.answer(Reason::ChannelsBusy), (600, false));
    assert_eq!(l.answers.answer(Reason::NoRoute), (480, false));
    assert_eq!(l.answers.answer(Reason::RateLimited), RefusalAnswers::DEFAULT.answer(Reason::RateLimited));
    assert!(load_text("").expect("defaults").answers.is_default());
    // Every reason has its key: the key is the token with `_` for `-`.
    for reason in Reason::ALL {
        let key = reason.as_str().replace('-', "_");
        let l = load_text(&format!("[admission.answers]\n{key} = 599\n")).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(l.answers.answer(reason).0, 599, "{key}");
    }
}

#[test]
fn admission_answer_codes_must_be_failures_and_errors_point_at_the_value() {
    let err = load_text(
        "[admission.answers]\nrate_limited = 503\nchannels_busy = 200\nno_route = 700\nunknown_trunk = 401\n",
    )
    .expect_err("bad codes");
    let all = err.to_string();
    assert_eq!(err.0.len(), 3, "{all}");
    assert!(all.contains(":3:17: [admission.answers] channels_busy: 200 is not a refusal"), "{all}");
    assert!(all.contains(":4:12: [admission.answers] no_route: 700 is not a refusal"), "{all}");
    assert!(all.contains(":5:17: [admission.answers] unknown_trunk: 401 is a challenge"), "{all}");
    let err = load_text("[admission.answers]\nchannels-busy = 486\n").expect_err("dash key");
    assert!(err.0[0].message.contains("unknown field `channels-busy`"), "{err}");
    assert_eq!(err.0[0].location.line, 2);
    let err = load_text("[admission.answers]\nno_route = 70000\n").expect_err("not a u16");
    assert_eq!(err.0[0].location.line, 2, "{err}");
}

#[test]
fn syntax_error_has_line_and_column() {
    let err = load_text("node_id = \"a\"\n[sip]\nlisten = [\"udp://127.0.0.1:5060\"\n").expect_err("bad toml");
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].location.line >= 3, "{err}");
    assert!(err.0[0].location.column >= 1);
}

#[test]
fn bad_listen_address_points_at_the_value() {
    let err = load_text("[sip]\nlisten = [\"udp://127.0.0.1:5060\", \"sctp://1.2.3.4:5060\"]\n").expect_err("sctp");
    let e = &err.0[0];
    assert!(e.message.contains("unknown transport `sctp`"), "{e}");
    assert_eq!(e.location.line, 2);
    assert_eq!(e.location.column, 35, "{e}");
    let err = load_text("[sip]\nlisten = [\"udp://::1:5060\"]\n").expect_err("ipv6 without brackets");
    assert!(err.0[0].message.contains("[::1]:5060"), "{err}");
}

#[test]
fn listen_parses_ipv6_and_tcp() {
    let l = load_text("[sip]\nlisten = [\"udp://[::1]:5070\", \"TCP://0.0.0.0:5060\"]\n").expect("valid");
    let listen = &l.listen;
    assert_eq!(listen[0].transport, Transport::Udp);
    assert_eq!(listen[0].addr, "[::1]:5070".parse().expect("addr"));
    assert_eq!(listen[1].transport, Transport::Tcp);
}

const TRUNK: &str = "[[trunk]]\nname = \"a\"\nportal = \"p\"\nsources = [\"192.0.2.1\"]\n";

#[test]
fn all_semantic_errors_are_reported_together() {
    let text = format!(
        "{TRUNK}[[trunk.route]]\nnumber = \"abc\"\nusers = []\nring_timeout_s = 0\n\
         [[trunk]]\nname = \"a\"\nportal = \"p 2\"\nsources = [\"192.0.2.0/24\"]\n"
    );
    let err = load_text(&text).expect_err("invalid");
    let msgs: Vec<String> = err.0.iter().map(|e| e.to_string()).collect();
    let all = msgs.join("\n");
    assert!(all.contains(":6:10: route number `abc`"), "{all}");
    assert!(all.contains("route `abc` names no users"), "{all}");
    assert!(all.contains("ring_timeout_s must be 1..=3600"), "{all}");
    assert!(all.contains(":10:8: duplicate trunk name `a` (first defined at"), "{all}");
    assert!(all.contains(":11:10: portal id must be"), "{all}");
    assert!(all.contains("overlaps source 192.0.2.1/32 of trunk `a`"), "{all}");
    assert_eq!(err.0.len(), 6, "{all}");
}

#[test]
fn bad_source_is_rejected_with_position() {
    let err =
        load_text("[[trunk]]\nname = \"a\"\nportal = \"p\"\nsources = [\"192.0.2.300/32\"]\n").expect_err("bad ip");
    assert!(err.0[0].message.contains("invalid source `192.0.2.300/32`"), "{err}");
    assert_eq!(err.0[0].location.line, 4);
    assert_eq!(err.0[0].location.column, 12);
}

#[test]
fn cidr_host_bits_are_truncated_and_bare_addresses_are_hosts() {
    let l = load_text("[[trunk]]\nname = \"a\"\nportal = \"p\"\nsources = [\"10.1.2.3/8\", \"2001:db8::1\"]\n")
        .expect("valid");
    let s: Vec<String> = l.trunks[0].sources.iter().map(|s| s.0.to_string()).collect();
    assert_eq!(s, ["10.0.0.0/8", "2001:db8::1/128"]);
}

#[test]
fn timer_errors_name_their_line() {
    let err = load_text("[sip]\nt1_ms = 600\nt2_ms = 500\n").expect_err("t2 < t1");
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].message.contains("t2_ms must be at least t1_ms"), "{err}");
    assert_eq!(err.0[0].location.line, 3);
}

#[test]
fn overload_queue_is_bounded_and_zero_turns_it_off() {
    let err = load_text("[sip]\ncores = 1\noverload_queue_ms = 20000\n").expect_err("too long");
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].message.contains("overload_queue_ms must be at most 10000"), "{err}");
    assert_eq!(err.0[0].location.line, 3);
    assert_eq!(load_text("[sip]\noverload_queue_ms = 0\n").expect("off").config.sip.overload_queue_ms, 0);
    assert_eq!(load_text("").expect("default").config.sip.overload_queue_ms, 50);
}

#[test]
fn send_thread_busy_pct_is_a_percentage() {
    let err = load_text("[sip]\nsend_thread_busy_pct = 101\n").expect_err("over 100");
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].message.contains("send_thread_busy_pct must be at most 100"), "{err}");
    assert_eq!(err.0[0].location.line, 2);
    assert_eq!(load_text("[sip]\nsend_thread_busy_pct = 0\n").expect("always").config.sip.send_thread_busy_pct, 0);
    assert_eq!(load_text("").expect("default").config.sip.send_thread_busy_pct, 70);
}

#[test]
fn database_url_defaults_to_state_dir_and_env_overrides() {
    let l = load_text("state_dir = \"/srv/tg\"\n").expect("valid");
    assert_eq!(l.database_url, "sqlite:///srv/tg/trunkgate.db");
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "t.toml", "state_dir = \"/srv/tg\"\n");
    let l = load(&p, &Overrides { state_dir: Some("/var/lib/trunkgate".into()), database_url: None }).expect("valid");
    assert_eq!(l.database_url, "sqlite:///var/lib/trunkgate/trunkgate.db");
    let err = load_text("[database]\nurl = \"mysql://x\"\n").expect_err("mysql");
    assert_eq!(err.0[0].location.line, 2);
}

#[test]
fn missing_explicit_trunks_dir_is_an_error_but_default_is_optional() {
    assert!(load_text("node_id = \"n\"\n").is_ok());
    let err = load_text("trunks_dir = \"nowhere\"\n").expect_err("missing dir");
    assert!(err.0[0].message.contains("cannot read"), "{err}");
}

#[test]
fn errors_in_trunk_files_name_that_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = write(dir.path(), "trunkgate.toml", TRUNK);
    write(dir.path(), "trunks.d/b.toml", "[[trunk]]\nname = \"b\"\nportal = \"p\"\nsources = [\"192.0.2.1/32\"]\n");
    write(
        dir.path(),
        "trunks.d/c.toml",
        "[[trunk]]\nname = \"c\"\nportal = \"p\"\nsources = [\"192.0.2.9\"]\nport = 1\n",
    );
    let err = load(&main, &Overrides::default()).expect_err("invalid");
    let all = err.to_string();
    assert!(all.contains("trunks.d/c.toml:5:1: unknown field `port`"), "{all}");
    assert!(all.contains("trunks.d/b.toml:4:12: source 192.0.2.1/32 of trunk `b` overlaps"), "{all}");
}

#[test]
fn auth_and_registrar_settings_are_checked() {
    let err = load_text("[auth]\nalgorithms = [\"MD5\", \"SHA-512\"]\n").expect_err("unknown algorithm");
    assert!(err.0[0].message.contains("unknown digest algorithm `SHA-512`"), "{err}");
    assert_eq!((err.0[0].location.line, err.0[0].location.column), (2, 22), "{err}");
    let err = load_text("[registrar]\nmin_expires_s = 7200\n").expect_err("min above max");
    assert!(err.0.iter().any(|e| e.message.contains("min_expires_s") && e.location.line == 2), "{err}");
    let l = load_text("[auth]\nalgorithms = [\"SHA-256\", \"MD5\"]\n").expect("valid");
    assert_eq!(l.config.auth.algorithms.len(), 2);
    let l = load_text("").expect("defaults");
    assert_eq!(l.config.auth.algorithms.iter().map(|a| a.get_ref().as_str()).collect::<Vec<_>>(), ["MD5"]);
    assert_eq!(l.config.registrar.min_expires_s, 60);
}

#[test]
fn media_section_resolves_addresses_and_points_at_bad_values() {
    let l = load_text("[media]\npublic_address = [\"203.0.113.7\", \"2001:db8::7\"]\nport_min = 20000\nport_max = 20099\ntimeout_s = 0\n")
        .expect("valid");
    assert_eq!(l.media.public_v4, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(l.media.public_v6, Some("2001:db8::7".parse().unwrap()));
    assert_eq!((l.media.port_min, l.media.port_max, l.media.timeout), (20000, 20099, None));
    assert_eq!(l.media.bind_v4, std::net::Ipv4Addr::UNSPECIFIED);
    assert!(l.media.anchor && l.media.threads >= 1);

    let err = load_text("[media]\npublic_address = [\"203.0.113.7\", \"198.51.100.1\"]\n").expect_err("two v4");
    assert!(err.0[0].message.contains("at most one address per family"), "{err}");
    assert_eq!((err.0[0].location.line, err.0[0].location.column), (2, 34), "{err}");
    let err = load_text("[media]\nbind_address = [\"nowhere\"]\n").expect_err("no IP");
    assert!(err.0[0].message.contains("`nowhere` is no IP address"), "{err}");
    let err = load_text("[media]\nport_min = 30000\nport_max = 20000\n").expect_err("range");
    assert!(err.0[0].message.contains("below port_max"), "{err}");
    assert_eq!(err.0[0].location.line, 3, "{err}");
    let err = load_text("[media]\npublic_address = [\"0.0.0.0\"]\n").expect_err("unspecified");
    assert!(err.0[0].message.contains("reachable"), "{err}");
    let err = load_text("[media]\ntimeout_s = 60\nhold_timeout_s = 30\n").expect_err("hold shorter");
    assert!(err.0[0].message.contains("hold_timeout_s"), "{err}");
}

#[test]
fn wss_needs_tls_and_tls_files_are_checked_with_their_line() {
    let err = load_text("[sip]\nlisten = [\"udp://127.0.0.1:5060\", \"wss://0.0.0.0:8443\"]\n").expect_err("no [tls]");
    let text = err.to_string();
    assert!(
        text.contains("trunkgate.toml:2:") && text.contains("wss://0.0.0.0:8443") && text.contains("[tls]"),
        "{text}"
    );

    let err = load_text(
        "[sip]\nlisten = [\"wss://0.0.0.0:8443\"]\n[tls]\ncertificate = \"missing.pem\"\nprivate_key = \"key.pem\"\n",
    )
    .expect_err("missing certificate");
    let text = err.to_string();
    assert!(text.contains("trunkgate.toml:4:") && text.contains("missing.pem"), "{text}");

    // A file that holds no certificate is named, at the certificate's line.
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "cert.pem", "not a certificate\n");
    write(dir.path(), "key.pem", "not a key\n");
    let p = write(
        dir.path(),
        "trunkgate.toml",
        "[sip]\nlisten = [\"wss://0.0.0.0:8443\"]\n[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n",
    );
    let text = load(&p, &Overrides::default()).expect_err("bad pem").to_string();
    assert!(
        text.contains("trunkgate.toml:4:") && text.contains("cert.pem") && text.contains("no certificate"),
        "{text}"
    );

    let err = load_text("[sip]\nlisten = [\"ws://127.0.0.1:8080\"]\nws_ping_interval_s = 0\n").expect_err("ping 0");
    assert!(err.to_string().contains("ws_ping_interval_s"), "{err}");
    let ok = load_text("[sip]\nlisten = [\"ws://127.0.0.1:8080\"]\n").expect("ws needs no certificate");
    assert_eq!(ok.listen[0].transport, crate::transport::Transport::Ws);
}

#[test]
fn the_browsers_ports_one_per_relay_thread_stay_out_of_the_rtp_range() {
    let cfg = |media: &str| {
        format!("[sip]\nlisten = [\"udp://127.0.0.1:5060\", \"ws://127.0.0.1:8080\"]\n[media]\n{media}\n{TRUNK}")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // 19999 and 20000 for two threads: the second is the range's first port.
    let p = write(dir.path(), "a.toml", &cfg("port_min = 20000\nport_max = 20999\nthreads = 2\nwebrtc_port = 19999"));
    let err = load(&p, &Overrides::default()).expect_err("overlap").to_string();
    assert!(err.contains("a.toml:") && err.contains("one browsers' port per relay thread"), "{err}");
    let p = write(dir.path(), "b.toml", &cfg("port_min = 20000\nport_max = 20999\nthreads = 2\nwebrtc_port = 19998"));
    assert!(load(&p, &Overrides::default()).is_ok(), "19998 and 19999: outside");
    let p = write(dir.path(), "c.toml", &cfg("port_min = 10000\nport_max = 10999\nthreads = 4\nwebrtc_port = 65534"));
    let err = load(&p, &Overrides::default()).expect_err("past 65535").to_string();
    assert!(err.contains("at most 65535"), "{err}");
}

#[test]
fn sip_cores_default_to_one_per_two_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let loaded = load_text("[sip]\n").expect("loads");
    assert_eq!(loaded.config.sip.cores, 0);
    assert_eq!(loaded.config.sip.resolved_cores(), (cpus / 2).clamp(1, 16));
    let loaded = load_text("[sip]\ncores = 3\n").expect("loads");
    assert_eq!(loaded.config.sip.resolved_cores(), 3);
}
