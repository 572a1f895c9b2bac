//! The real `trunkgate` binary driven as an operator would: config checks,
//! admin commands on a real database, `admission explain`, and the daemon's
//! lifecycle (READY to systemd, clean exit on SIGTERM).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use trunkgate::config::DatabaseConfig;
use trunkgate::store::{CallRecord, LeaseRequest, Store};

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    db_path: Option<PathBuf>,
    /// The database URL the configuration names.
    url: String,
}

impl Env {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("state/trunkgate.db");
        let url = format!("sqlite://{}", db.display());
        let config = common::write_config(dir.path(), &url, "");
        Env { _dir: dir, config, db_path: Some(db), url }
    }

    async fn postgres() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = common::pg_schema_url().await;
        let config = common::write_config(dir.path(), &url, "");
        Env { _dir: dir, config, db_path: None, url }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(args, None)
    }

    fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(common::bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("STATE_DIRECTORY")
            .env_remove("TRUNKGATE_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trunkgate");
        {
            let mut sin = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                sin.write_all(s.as_bytes()).expect("write stdin");
            }
        }
        child.wait_with_output().expect("wait")
    }

    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// The decision `admission explain` gives at `at`: (verdict, reason token).
    fn explain(&self, portal: &str, at: &str) -> (String, Option<String>) {
        let out = self.ok(&["admission", "explain", "--portal", portal, "--at", at, "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("json: {e}\n{out}"));
        let d = &v["decision"];
        let verdict = d["verdict"].as_str().expect("verdict").to_owned();
        let reason = d["refusal"]["reason"].as_str().map(str::to_owned);
        (verdict, reason)
    }

    fn admitted(&self, portal: &str, at: &str) {
        let (v, r) = self.explain(portal, at);
        assert_eq!((v.as_str(), r), ("admit", None), "{portal} at {at}");
    }

    fn refused(&self, portal: &str, at: &str, reason: &str) {
        let (v, r) = self.explain(portal, at);
        assert_eq!((v.as_str(), r.as_deref()), ("refuse", Some(reason)), "{portal} at {at}");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `--json` time (an RFC 3339 string) as Unix seconds.
fn json_time(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is no RFC 3339 string"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}")).timestamp()
}

/// The "done when" list of the foundation issue, through the CLI.
fn explain_scenarios(env: &Env) {
    env.ok(&["plan", "set", "pro", "--max-users", "50", "--max-cps", "20"]);
    let ext = |p: &str, from: &str, until: &str| {
        env.ok(&["extension", "add", "--portal", p, "--channels", "4", "--valid-from", from, "--valid-until", until]);
    };
    let paid = |id: &str, on_expiry: &str| {
        env.ok(&[
            "portal",
            "add",
            "--id",
            id,
            "--domain",
            &format!("{id}.example.com"),
            "--plan",
            "pro",
            "--valid-from",
            "2026-01-01T00:00:00Z",
            "--valid-until",
            "2026-07-01T00:00:00Z",
            "--on-expiry",
            on_expiry,
        ]);
    };

    // Active paid licence with an extension.
    paid("paid", "block");
    ext("paid", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
    env.admitted("paid", "2026-03-01T12:00:00Z");
    // Paid licence expired 14 days ago: grace, admitted; 16 days ago: refused (block).
    env.admitted("paid", "2026-07-15T00:00:00Z");
    env.refused("paid", "2026-07-17T00:00:00Z", "licence-expired");
    // ...or downgraded: free plan rules with the extension still in force.
    paid("down", "downgrade_free");
    ext("down", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
    let out = env.ok(&["admission", "explain", "--portal", "down", "--at", "2026-07-17T00:00:00Z", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["decision"]["verdict"], "admit", "{out}");
    assert_eq!(v["decision"]["effective_plan"], "free", "{out}");

    // Demo in force without extension: admitted; ended: refused (no grace).
    env.ok(&[
        "portal",
        "add",
        "--id",
        "demo",
        "--domain",
        "demo.example.com",
        "--plan",
        "demo",
        "--valid-until",
        "2026-03-15T00:00:00Z",
    ]);
    env.admitted("demo", "2026-03-14T23:59:59Z");
    env.refused("demo", "2026-03-15T00:00:00Z", "licence-expired");

    // Extension not started yet / ended.
    paid("ext", "block");
    ext("ext", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z");
    env.refused("ext", "2026-01-31T23:59:59Z", "not-licensed");
    env.admitted("ext", "2026-02-01T00:00:00Z");
    env.refused("ext", "2026-03-01T00:00:00Z", "not-licensed");

    // Portal blocked.
    env.ok(&["portal", "block", "ext", "--reason", "violation"]);
    env.refused("ext", "2026-02-15T00:00:00Z", "portal-blocked");
    let human = env.ok(&["admission", "explain", "--portal", "ext", "--at", "2026-02-15T00:00:00Z"]);
    assert!(human.contains("violation"), "explain says why:\n{human}");

    // Portal deleting; then purged and its domain reused: the old id is still refused.
    env.ok(&["portal", "delete", "paid"]);
    env.refused("paid", "2026-03-01T12:00:00Z", "portal-deleted");
    let out = env.run(&["portal", "add", "--id", "paid2", "--domain", "paid.example.com"]);
    assert_eq!(out.status.code(), Some(1), "domain still taken while deleting");
    assert!(text(&out.stderr).contains("belongs to portal `paid`"), "{}", text(&out.stderr));
    env.ok(&["portal", "purge", "paid"]);
    env.ok(&["portal", "add", "--id", "paid2", "--domain", "paid.example.com"]);
    env.ok(&[
        "extension",
        "add",
        "--portal",
        "paid2",
        "--channels",
        "1",
        "--valid-from",
        "2026-01-01T00:00:00Z",
        "--valid-until",
        "2030-01-01T00:00:00Z",
    ]);
    env.refused("paid", "2026-03-01T12:00:00Z", "portal-deleted");
    // paid2 was created just now (free plan): ask about an hour after its creation.
    let show: Value = serde_json::from_str(&env.ok(&["portal", "show", "paid2", "--json"])).expect("json");
    let soon = json_time(&show["portal"]["created_at"]) + 3600;
    let soon = chrono::DateTime::from_timestamp(soon, 0).expect("ts").to_rfc3339();
    env.admitted("paid2", &soon);

    // Free plan inactive for 50 days.
    env.ok(&["portal", "add", "--id", "idle", "--domain", "idle.example.com"]);
    env.ok(&[
        "extension",
        "add",
        "--portal",
        "idle",
        "--channels",
        "1",
        "--valid-from",
        "2020-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    let created: Value = serde_json::from_str(&env.ok(&["portal", "show", "idle", "--json"])).expect("json");
    let created_at = json_time(&created["portal"]["created_at"]);
    let at = |secs: i64| {
        chrono::DateTime::from_timestamp(secs, 0).expect("ts").to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    env.admitted("idle", &at(created_at + 50 * 86400 - 1));
    env.refused("idle", &at(created_at + 50 * 86400), "portal-blocked");

    env.refused("nope", "2026-03-01T00:00:00Z", "portal-not-found");
}

#[test]
fn explain_gives_the_right_decisions_on_sqlite() {
    explain_scenarios(&Env::sqlite());
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_gives_the_right_decisions_on_postgres() {
    let env = Env::postgres().await;
    tokio::task::spawn_blocking(move || explain_scenarios(&env)).await.expect("scenarios");
}

#[test]
fn lists_have_json_and_tables() {
    let env = Env::sqlite();
    env.ok(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    env.ok(&[
        "extension",
        "add",
        "--portal",
        "acme",
        "--channels",
        "3",
        "--valid-from",
        "2026-01-01T00:00:00Z",
        "--valid-until",
        "2027-01-01T00:00:00Z",
    ]);
    let portals: Value = serde_json::from_str(&env.ok(&["portal", "list", "--json"])).expect("json");
    assert_eq!(portals[0]["id"], "acme");
    assert_eq!(portals[0]["status"], "active");
    let table = env.ok(&["portal", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("acme.example.com"), "{table}");
    let exts: Value =
        serde_json::from_str(&env.ok(&["extension", "list", "--portal", "acme", "--json"])).expect("json");
    assert_eq!(exts[0]["channels"], 3);
    let plans: Value = serde_json::from_str(&env.ok(&["plan", "list", "--json"])).expect("json");
    assert_eq!(plans.as_array().map(Vec::len), Some(2));
    env.ok(&["plan", "set", "free", "--max-users", "unlimited"]);
    let plans = env.ok(&["plan", "list"]);
    assert!(plans.contains("unlimited"), "{plans}");
    env.ok(&["portal", "set", "acme", "--allow-extranet-calls", "true", "--max-cps", "3"]);
    let show: Value = serde_json::from_str(&env.ok(&["portal", "show", "acme", "--json"])).expect("json");
    assert_eq!(show["portal"]["max_cps_override"], 3);
    assert_eq!(show["portal"]["allow_extranet_calls"], true);
    let cdr = env.ok(&["cdr", "--portal", "acme", "--json"]);
    assert_eq!(cdr.trim(), "[]");
}

#[test]
fn user_password_comes_from_stdin_and_is_never_stored() {
    let env = Env::sqlite();
    env.ok(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    let password = "Tr0ub4dor-and-3";
    let out =
        env.run_stdin(&["user", "add", "--portal", "acme", "--username", "alice"], Some(&format!("{password}\n")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let users: Value = serde_json::from_str(&env.ok(&["user", "list", "--portal", "acme", "--json"])).expect("json");
    assert_eq!(users[0]["username"], "alice");
    assert!(users[0].get("ha1_md5").is_none(), "no hash in listings");
    // Neither the password nor its HA1 is in the listing; the password is in no database file.
    let db = env.db_path.as_ref().expect("sqlite");
    for f in [db.clone(), db.with_extension("db-wal")] {
        if let Ok(bytes) = std::fs::read(&f) {
            assert!(
                !bytes.windows(password.len()).any(|w| w == password.as_bytes()),
                "{} holds the password",
                f.display()
            );
        }
    }
    // Empty stdin, weak password, bad username: usage errors, nothing written.
    let out = env.run_stdin(&["user", "add", "--portal", "acme", "--username", "bob"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = env.run_stdin(&["user", "add", "--portal", "acme", "--username", "bob"], Some("short\n"));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("password must be 10 to 128 characters"), "{}", text(&out.stderr));
    let out = env.run_stdin(&["user", "add", "--portal", "acme", "--username", "b ob"], Some("long-enough-pw\n"));
    assert_eq!(out.status.code(), Some(2));
    let users: Value = serde_json::from_str(&env.ok(&["user", "list", "--portal", "acme", "--json"])).expect("json");
    assert_eq!(users.as_array().map(Vec::len), Some(1));
    env.ok(&["user", "disable", "--portal", "acme", "--username", "alice"]);
    let users: Value = serde_json::from_str(&env.ok(&["user", "list", "--portal", "acme", "--json"])).expect("json");
    assert_eq!(users[0]["disabled"], true);
}

#[test]
fn bad_arguments_get_clear_errors_and_write_nothing() {
    let env = Env::sqlite();
    let cases: &[(&[&str], &str)] = &[
        (&["portal", "add", "--id", "a", "--domain", "a.example.com", "--plan", "demo"], "needs a valid_until"),
        (
            &[
                "portal",
                "add",
                "--id",
                "a",
                "--domain",
                "a.example.com",
                "--plan",
                "pro",
                "--valid-until",
                "2027-01-01T00:00:00Z",
                "--grace-days",
                "16",
            ],
            "grace",
        ),
        (
            &["portal", "add", "--id", "a", "--domain", "a.example.com", "--plan", "demo", "--valid-until", "tomorrow"],
            "not an RFC 3339 time",
        ),
        (&["portal", "add", "--id", "a", "--domain", "not a domain"], "not a valid domain"),
        (&["portal", "add", "--id", "a/b", "--domain", "a.example.com"], "portal id"),
        (
            &[
                "extension",
                "add",
                "--portal",
                "a",
                "--channels",
                "0",
                "--valid-from",
                "2026-01-01T00:00:00Z",
                "--valid-until",
                "2027-01-01T00:00:00Z",
            ],
            "at least 1",
        ),
        (&["plan", "set", "free", "--max-users", "lots"], "not a number"),
    ];
    for (args, needle) in cases {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{args:?}: expected `{needle}` in: {err}");
    }
    // A paid plan that does not exist: refused by the database, nothing half-written.
    let out = env.run(&[
        "portal",
        "add",
        "--id",
        "a",
        "--domain",
        "a.example.com",
        "--plan",
        "gold",
        "--valid-until",
        "2027-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("plan `gold` not found"), "{}", text(&out.stderr));
    let portals: Value = serde_json::from_str(&env.ok(&["portal", "list", "--json"])).expect("json");
    assert_eq!(portals, Value::Array(vec![]));
    // Unknown portal.
    let out = env.run(&["portal", "block", "ghost", "--reason", "manual"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("portal `ghost` not found"));
}

#[test]
fn check_config_reports_every_error_with_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("trunkgate.toml");
    std::fs::write(&cfg, "node_id = \"n\"\n[sip]\nlisten = [\"udp://127.0.0.1:5060\"]\nt1_ms = 0\n").expect("write");
    std::fs::create_dir(dir.path().join("trunks.d")).expect("mkdir");
    std::fs::write(
        dir.path().join("trunks.d/x.toml"),
        "[[trunk]]\nname = \"x\"\nportal = \"p\"\nsources = [\"nonsense\"]\n",
    )
    .expect("write");
    let out = Command::new(common::bin()).arg("--config").arg(&cfg).arg("check-config").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:4:1: [sip] t1_ms", cfg.display())), "{err}");
    assert!(err.contains("trunks.d/x.toml:4:12: invalid source `nonsense`"), "{err}");
    assert!(err.contains("2 error(s)"), "{err}");
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/trunkgate.toml");
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let out = Command::new(common::bin())
        .args(["--config"])
        .arg(&example)
        .args(["--database-url", &db, "check-config"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("is valid"), "{s}");
    assert!(s.contains("trunk acme-pbx -> portal acme (NOT IN DATABASE)"), "{s}");
    assert!(s.contains("trunk globex-pbx"), "{s}");
    assert!(s.contains("  listen: ws://127.0.0.1:8080\n"), "{s}");
    // `threads = 0`: one relay thread, and one browsers' port, per CPU.
    let ports = match std::thread::available_parallelism().map_or(1, std::num::NonZero::get) {
        1 => "20000".to_owned(),
        n => format!("20000-{}", 20_000 + n - 1),
    };
    let line = format!("  browsers: WebRTC on UDP {ports} (one port per relay thread, shared by its browser legs)\n");
    assert!(s.contains(&line), "{s}");
    assert!(s.contains("    outbound: udp://127.0.0.1:5070 = 127.0.0.1:5070 (priority 10)\n"), "{s}");
    assert!(s.contains("trunk globex-cloud"), "{s}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = Command::new(common::bin())
        .args(["--config", "/nonexistent/trunkgate.toml", "check-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/trunkgate.toml: cannot read"), "{}", text(&out.stderr));
}

/// The daemon opens the database, tells systemd READY=1 through
/// NOTIFY_SOCKET, and exits 0 on SIGTERM after STOPPING=1.
#[test]
fn run_notifies_systemd_and_stops_on_sigterm() {
    let env = Env::sqlite();
    let sock_path = env._dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut child = Command::new(common::bin())
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY datagram");
    let msg = text(&buf[..n]);
    assert!(msg.contains("READY=1"), "{msg}");
    // The database exists once READY is sent.
    assert!(env.db_path.as_ref().expect("sqlite").exists());
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let n = sock.recv(&mut buf).expect("STOPPING datagram");
    assert!(text(&buf[..n]).contains("STOPPING=1"));
    let out = child.wait().expect("wait");
    assert_eq!(out.code(), Some(0));
    let stderr = child.stderr.take().expect("stderr");
    let lines: Vec<String> = BufReader::new(stderr).lines().map_while(Result::ok).collect();
    let log = lines.join("\n");
    assert!(log.contains("database open"), "{log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn json_logs_on_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let cfg = common::write_config(dir.path(), &db, "[log]\nformat = \"json\"\nlevel = \"info\"\n");
    let mut child = Command::new(common::bin())
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    let mut found = None;
    for _ in 0..50 {
        line.clear();
        if reader.read_line(&mut line).expect("read") == 0 {
            break;
        }
        if line.contains("\"ready\"") {
            found = Some(line.clone());
            break;
        }
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("wait");
    let line = found.expect("a JSON `ready` line");
    let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not JSON: {e}: {line}"));
    assert_eq!(v["message"], "ready");
    assert_eq!(v["level"], "INFO");
    assert_eq!(status.code(), Some(0));
}

/// A SQLite database serves one daemon (it counts channels in memory): a
/// second daemon on the same file refuses to start, saying why.
#[test]
fn second_daemon_on_one_sqlite_file_refuses_to_start() {
    let env = Env::sqlite();
    let sock_path = env._dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut first = Command::new(common::bin())
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("first daemon READY");
    assert!(text(&buf[..n]).contains("READY=1"));
    let second = Command::new(common::bin())
        .arg("--config")
        .arg(&env.config)
        .arg("run")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run second");
    let _ = Command::new("kill").args(["-TERM", &first.id().to_string()]).status();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second.stderr));
    assert!(text(&second.stderr).contains("another trunkgate daemon uses"), "{}", text(&second.stderr));
}

/// `cdr --json` gives times as RFC 3339, like every other `--json` output
/// (it gave Unix seconds), under the same field names.
#[test]
fn cdr_json_gives_rfc3339_times() {
    use sqlx::Connection;
    let env = Env::sqlite();
    env.ok(&["portal", "add", "--id", "acme", "--domain", "acme.example.com"]);
    let db = env.db_path.clone().expect("sqlite");
    tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.expect("open");
        // 2026-01-01T00:00:00Z, answered 5 s later, still going; and a refusal.
        sqlx::query(
            "INSERT INTO call_records (call_id, node_id, portal_id, direction, started_at, answered_at, ended_at, outcome) \
             VALUES ('c1@x', 'n', 'acme', 'inbound', 1767225600, 1767225605, NULL, 'admitted'), \
                    ('c2@x', 'n', 'acme', 'inbound', 1767225610, NULL, 1767225610, 'refused')",
        )
        .execute(&mut conn)
        .await
        .expect("insert");
    });
    let v: Value = serde_json::from_str(&env.ok(&["cdr", "--json"])).expect("json");
    let times: Vec<[Value; 3]> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|r| [r["started_at"].clone(), r["answered_at"].clone(), r["ended_at"].clone()])
        .collect();
    let mut times = times;
    times.sort_by_key(|t| t[0].to_string());
    assert_eq!(
        times,
        [
            [Value::from("2026-01-01T00:00:00Z"), Value::from("2026-01-01T00:00:05Z"), Value::Null],
            [Value::from("2026-01-01T00:00:10Z"), Value::Null, Value::from("2026-01-01T00:00:10Z")],
        ],
        "{v}"
    );
    // The table speaks the same.
    assert!(env.ok(&["cdr"]).contains("2026-01-01T00:00:10Z"));
}

/// Whether a JSON key names a time: `at`, or a key ending in `_at`, `_from`,
/// `_until` or `_since` (so a field added later is checked too).
fn is_time_key(k: &str) -> bool {
    k == "at" || ["_at", "_from", "_until", "_since"].iter().any(|s| k.ends_with(s))
}

/// Walks `v` and checks every time-valued field is `null` or an RFC 3339
/// string in UTC; pushes each offence to `bad` and returns how many
/// non-null times it saw.
fn check_json_times(path: &str, v: &Value, bad: &mut Vec<String>) -> usize {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, val)| {
                let here = format!("{path}.{k}");
                let mut seen = 0;
                if is_time_key(k) && !val.is_null() {
                    match val.as_str().map(chrono::DateTime::parse_from_rfc3339) {
                        Some(Ok(t)) if t.offset().local_minus_utc() == 0 => seen += 1,
                        _ => bad.push(format!("{here} = {val}")),
                    }
                }
                seen + check_json_times(&here, val, bad)
            })
            .sum(),
        Value::Array(items) => {
            items.iter().enumerate().map(|(i, x)| check_json_times(&format!("{path}[{i}]"), x, bad)).sum()
        }
        _ => 0,
    }
}

/// Seeds every kind of row the listings show: a paid portal with a licence
/// window, an extension, a user, a call in progress (lease) and a call
/// record; a portal being deleted and one deleted.
fn seed_everything(env: &Env) {
    env.ok(&["plan", "set", "pro", "--max-users", "10"]);
    env.ok(&[
        "portal",
        "add",
        "--id",
        "acme",
        "--domain",
        "acme.example.com",
        "--plan",
        "pro",
        "--valid-from",
        "2026-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    env.ok(&[
        "extension",
        "add",
        "--portal",
        "acme",
        "--channels",
        "2",
        "--valid-from",
        "2026-01-01T00:00:00Z",
        "--valid-until",
        "2099-01-01T00:00:00Z",
    ]);
    let out = env.run_stdin(&["user", "add", "--portal", "acme", "--username", "alice"], Some("long-enough-pw-1\n"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for id in ["leaving", "gone"] {
        env.ok(&["portal", "add", "--id", id, "--domain", &format!("{id}.example.com")]);
        env.ok(&["portal", "delete", id]);
    }
    env.ok(&["portal", "purge", "gone"]);
    let url = env.url.clone();
    tokio::runtime::Runtime::new().expect("runtime").block_on(async move {
        let store = Store::connect(&url, &DatabaseConfig::default()).await.expect("open");
        let now = trunkgate::clock::now_utc();
        let lease = LeaseRequest {
            portal: "acme",
            call_id: "c1@x",
            node_id: "n1",
            channels: 2,
            now,
            ttl: Duration::from_secs(3600),
        };
        assert!(store.admit_call(&lease).await.expect("lease").is_admitted());
        store
            .call_records_insert(&[CallRecord {
                id: 0,
                call_id: "c1@x".into(),
                node_id: "n1".into(),
                portal_id: Some("acme".into()),
                trunk: Some("acme-pbx".into()),
                direction: "inbound".into(),
                caller: None,
                callee: Some("+15550001".into()),
                target_user: Some("alice".into()),
                started_at: now.timestamp(),
                answered_at: Some(now.timestamp() + 1),
                ended_at: None,
                outcome: "answered".into(),
                sip_status: Some(200),
                reason: None,
                media: None,
            }])
            .await
            .expect("record");
        store.close().await;
    });
}

/// Every `--json` output gives times one way: RFC 3339 in UTC, `null` when
/// absent (portal, plan, extension, user and lease listings gave Unix
/// seconds). The tables show the same, never Unix seconds.
fn json_times_are_rfc3339(env: &Env) {
    seed_everything(env);
    let json_commands: &[&[&str]] = &[
        &["portal", "list", "--json"],
        &["portal", "show", "acme", "--json"],
        &["portal", "show", "leaving", "--json"],
        &["portal", "show", "gone", "--json"],
        &["plan", "list", "--json"],
        &["extension", "list", "--portal", "acme", "--json"],
        &["user", "list", "--portal", "acme", "--json"],
        &["calls", "--json"],
        &["cdr", "--json"],
        &["admission", "explain", "--portal", "acme", "--json"],
    ];
    for args in json_commands {
        let out = env.ok(args);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}"));
        let mut bad = Vec::new();
        let seen = check_json_times("$", &v, &mut bad);
        assert!(bad.is_empty(), "{args:?}: times that are not RFC 3339: {bad:?}\n{out}");
        assert!(seen > 0, "{args:?} printed no time: the seed must give it one\n{out}");
    }
    // The fields each listing is known to have, by name.
    let portals: Value = serde_json::from_str(&env.ok(&["portal", "list", "--json"])).expect("json");
    let gone = portals.as_array().expect("array").iter().find(|p| p["id"] == "gone").expect("gone listed");
    for k in ["created_at", "last_activity_at", "deleting_since", "deleted_at"] {
        json_time(&gone[k]);
    }
    let show: Value = serde_json::from_str(&env.ok(&["portal", "show", "acme", "--json"])).expect("json");
    assert_eq!(show["licence"]["valid_from"], "2026-01-01T00:00:00Z", "{show}");
    assert_eq!(show["licence"]["valid_until"], "2099-01-01T00:00:00Z", "{show}");
    assert_eq!(show["extensions"][0]["valid_from"], "2026-01-01T00:00:00Z", "{show}");
    let calls: Value = serde_json::from_str(&env.ok(&["calls", "--json"])).expect("json");
    assert_eq!(json_time(&calls[0]["expires_at"]) - json_time(&calls[0]["acquired_at"]), 3600, "{calls}");
    let plans: Value = serde_json::from_str(&env.ok(&["plan", "list", "--json"])).expect("json");
    assert!(plans.as_array().expect("array").iter().all(|p| p["updated_at"].is_string()), "{plans}");
    let users: Value = serde_json::from_str(&env.ok(&["user", "list", "--portal", "acme", "--json"])).expect("json");
    json_time(&users[0]["created_at"]);

    // Human output: RFC 3339 where it shows a time, never a bare Unix second.
    let human_commands: &[&[&str]] = &[
        &["portal", "list"],
        &["portal", "show", "acme"],
        &["extension", "list", "--portal", "acme"],
        &["user", "list", "--portal", "acme"],
        &["calls"],
        &["cdr"],
        &["admission", "explain", "--portal", "acme"],
    ];
    for args in human_commands {
        let out = env.ok(args);
        let unix = out.split_whitespace().find(|w| w.len() >= 9 && w.chars().all(|c| c.is_ascii_digit()));
        assert_eq!(unix, None, "{args:?} shows Unix seconds:\n{out}");
        let rfc = out
            .split_whitespace()
            .any(|w| chrono::DateTime::parse_from_rfc3339(w.trim_end_matches([',', ':', ')'])).is_ok());
        assert!(rfc, "{args:?} shows no RFC 3339 time:\n{out}");
    }
}

#[test]
fn json_times_are_rfc3339_on_sqlite() {
    json_times_are_rfc3339(&Env::sqlite());
}

#[test]
fn json_times_are_rfc3339_on_postgres() {
    let env = tokio::runtime::Runtime::new().expect("runtime").block_on(Env::postgres());
    json_times_are_rfc3339(&env);
}

/// Human log lines carry no ANSI colour escapes when stderr is no terminal
/// (journald, a log file): they did, and journald stored them as text.
#[test]
fn human_logs_off_a_terminal_have_no_colour_escapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("t.db").display());
    let cfg = common::write_config(dir.path(), &db, "[log]\nformat = \"human\"\nlevel = \"info\"\n");
    let log_path = dir.path().join("stderr.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(common::bin())
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        // Colour must be off because stderr is a file, not because of NO_COLOR.
        .env_remove("NO_COLOR")
        .stderr(Stdio::from(log_file))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let log = common::retry_until(30, "no `ready` line", || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("ready") { Ok(log) } else { Err(log) }
    });
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(log.contains(" INFO "), "human format: {log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in a log file:\n{log:?}");
}
