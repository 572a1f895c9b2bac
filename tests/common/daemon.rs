//! The real `trunkgate` daemon, started on free ports with its own SQLite
//! database, and real peers (sipp) pointed at it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

/// A running daemon. Killed (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    /// The `ws://` and `wss://` listeners, when the config has them.
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Daemon {
    /// A config (and empty database) in a fresh folder; `extra` is appended
    /// to the TOML. Seed it with [`Daemon::cli`] before [`Daemon::start`].
    pub fn prepare(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = format!("sqlite://{}", dir.path().join("state/trunkgate.db").display());
        Self::prepare_in(dir, &db, "test-node", extra)
    }

    /// Like [`Daemon::prepare`] on a given database (PostgreSQL for a
    /// fleet) with a given node id.
    pub fn prepare_db(db: &str, node_id: &str, extra: &str) -> Self {
        Self::prepare_in(tempfile::tempdir().expect("tempdir"), db, node_id, extra)
    }

    fn prepare_in(dir: tempfile::TempDir, db: &str, node_id: &str, extra: &str) -> Self {
        let config = dir.path().join("trunkgate.toml");
        // Two SIP cores whatever the machine (the default is one per two
        // CPUs): the calls' B legs then really cross cores by their
        // Call-IDs, the path a larger machine takes.
        let text = format!(
            "node_id = \"{node_id}\"\nstate_dir = \"{}\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n\
             [database]\nurl = \"{db}\"\n[sip]\nlisten = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]\ncores = 2\n{extra}",
            dir.path().join("state").display()
        );
        std::fs::write(&config, text).expect("write config");
        Daemon {
            dir,
            config,
            child: None,
            udp: "0.0.0.0:0".parse().expect("addr"),
            tcp: "0.0.0.0:0".parse().expect("addr"),
            ws: None,
            wss: None,
            log: Arc::new((Mutex::new(Vec::new()), Condvar::new())),
        }
    }

    /// Runs an admin command against the daemon's database; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_stdin(args, None)
    }

    /// Same, with standard input.
    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new(super::bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trunkgate");
        if let (Some(mut sin), Some(s)) = (child.stdin.take(), stdin) {
            sin.write_all(s.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A portal with a free licence, an extension for 2026–2099 and users.
    pub fn seed_portal(&self, id: &str, domain: &str, users: &[(&str, &str)]) {
        self.cli(&["portal", "add", "--id", id, "--domain", domain]);
        self.cli(&[
            "extension",
            "add",
            "--portal",
            id,
            "--channels",
            "10",
            "--valid-from",
            "2020-01-01T00:00:00Z",
            "--valid-until",
            "2099-01-01T00:00:00Z",
        ]);
        for (user, password) in users {
            self.cli_stdin(&["user", "add", "--portal", id, "--username", user], Some(&format!("{password}\n")));
        }
    }

    /// Starts `trunkgate run` and waits for its `ready` line; reads the
    /// bound ports from the `listening` lines.
    pub fn start(&mut self) {
        let mut child = Command::new(super::bin())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn daemon");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
                if let Ok(mut l) = log.0.lock() {
                    l.push(line);
                }
                log.1.notify_all();
            }
        });
        self.child = Some(child);
        loop {
            let v = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("daemon not ready: {}", self.log_text()));
            match v["message"].as_str() {
                Some("listening") => {
                    let addr: SocketAddr = v["addr"].as_str().and_then(|a| a.parse().ok()).expect("listening addr");
                    match v["transport"].as_str() {
                        Some("udp") => self.udp = addr,
                        Some("tcp") => self.tcp = addr,
                        Some("ws") => self.ws = Some(addr),
                        Some("wss") => self.wss = Some(addr),
                        _ => {}
                    }
                }
                Some("ready") => break,
                _ => {}
            }
        }
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        self.log.0.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits (at most 10 s, woken by each new line) until a log line
    /// contains every needle; returns it.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let (lock, cv) = &*self.log;
        let mut lines = lock.lock().expect("log lock");
        let deadline = super::wall_now() + Duration::from_secs(10);
        loop {
            if let Some(line) = lines.iter().find(|line| needles.iter().all(|n| line.contains(n))) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(super::wall_now());
            assert!(!left.is_zero(), "no log line with {needles:?}:\n{}", lines.join("\n"));
            lines = cv.wait_timeout(lines, left).expect("log lock").0;
        }
    }

    /// Kills it outright (SIGKILL): a node that dies, leaving its leases
    /// and claims behind.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running daemon.
    #[allow(dead_code)]
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("daemon running").id();
        let ok = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    }

    /// Stops with SIGTERM and returns the exit code (None if it had to be
    /// killed after 10 s).
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = child.id();
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait().ok().and_then(|s| s.code());
            let _ = tx.send(status);
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(code) => {
                let _ = waiter.join();
                code
            }
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                let _ = waiter.join();
                None
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sipp scenario folder.
pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// A free port on 127.0.0.1 for a peer (see [`free_port_on`]).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free for both UDP and TCP on `ip`, for a peer that binds it a
/// moment later. Drawn at random below the kernel's ephemeral range
/// (32768–60999), so neither the daemon's own sockets nor another test
/// process probing at the same time are likely to take it in between; and
/// probed on the peer's own address (a peer on 127.0.0.2 can hold a port
/// that is free on 127.0.0.1).
pub fn free_port_on(ip: &str) -> u16 {
    let ip: std::net::IpAddr = ip.parse().expect("peer address");
    loop {
        let mut r = [0u8; 2];
        getrandom::fill(&mut r).expect("random");
        let port = 20_000 + u16::from_le_bytes(r) % 12_000;
        let addr = SocketAddr::new(ip, port);
        if std::net::UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok() {
            return port;
        }
    }
}

/// Runs one sipp call of `scenario` against `target` (`-t u1` or `-t t1`),
/// with extra arguments; returns sipp's output. sipp must be installed:
/// the test script installs it, and a missing sipp fails the test.
pub fn sipp(scenario: &str, target: SocketAddr, tcp: bool, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = dir.path().join("err.log");
    let msgs = dir.path().join("msgs.log");
    let port = free_port().to_string();
    let out: Output = Command::new("sipp")
        .arg(target.to_string())
        .arg("-sf")
        .arg(scenarios().join(scenario))
        .args(["-m", "1", "-timeout", "15", "-nostdin", "-i", "127.0.0.1", "-p", &port])
        .args(["-t", if tcp { "t1" } else { "u1" }])
        .args(["-trace_err", "-error_file"])
        .arg(&err)
        .args(["-trace_msg", "-message_file"])
        .arg(&msgs)
        .args(extra)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("sipp must be installed (scripts/test.sh installs sip-tester): {e}"));
    let text = format!(
        "exit {:?}\n{}\n{}\n--- errors\n{}\n--- messages\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&err).unwrap_or_default(),
        std::fs::read_to_string(&msgs).unwrap_or_default()
    );
    (out.status.success(), text)
}

/// A sipp process running in the background (a phone waiting for calls, or
/// a PBX placing them); collect its verdict with [`SippChild::wait`].
pub struct SippChild {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The local port it listens on.
    pub port: u16,
}

/// Starts sipp with `scenario` (a file under tests/sipp, or an absolute
/// path) bound to `local_ip:port` (port 0 picks a free one); `remote` is the
/// peer for a client scenario, `None` for a server (UAS) scenario.
pub fn sipp_start(scenario: &Path, remote: Option<SocketAddr>, local_ip: &str, port: u16, extra: &[&str]) -> SippChild {
    // A port picked free can be taken by another test before sipp binds
    // it: sipp then exits at once ("Unable to bind main socket"); try
    // another (only when the port was ours to pick).
    let mut attempt = 0;
    loop {
        attempt += 1;
        let picked = if port == 0 { free_port_on(local_ip) } else { port };
        let mut s = sipp_spawn(scenario, remote, local_ip, picked, extra);
        let lost_port = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()).is_some()
            && std::fs::read_to_string(s.dir.path().join("err.log"))
                .is_ok_and(|e| e.contains("Unable to bind main socket"));
        if !(lost_port && port == 0 && attempt < 5) {
            return s;
        }
    }
}

/// Whether some socket holds UDP `addr` (IPv4), read from /proc/net/udp.
/// Not by binding it: a probe that binds the port for a moment can take
/// it from the sipp starting beside it ("Unable to bind main socket").
fn udp_bound(addr: SocketAddr) -> bool {
    let std::net::IpAddr::V4(ip) = addr.ip() else { return std::net::UdpSocket::bind(addr).is_err() };
    // The kernel prints the address as the in-memory u32, in hex.
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), addr.port());
    let wildcard = format!("00000000:{:04X}", addr.port());
    std::fs::read_to_string("/proc/net/udp").is_ok_and(|table| {
        table
            .lines()
            .skip(1)
            .any(|line| line.split_whitespace().nth(1).is_some_and(|l| l.eq_ignore_ascii_case(&local) || l == wildcard))
    })
}

fn sipp_spawn(scenario: &Path, remote: Option<SocketAddr>, local_ip: &str, port: u16, extra: &[&str]) -> SippChild {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = if scenario.is_absolute() { scenario.to_owned() } else { scenarios().join(scenario) };
    let mut cmd = Command::new("sipp");
    if let Some(r) = remote {
        cmd.arg(r.to_string());
    }
    cmd.arg("-sf")
        .arg(&scenario)
        .args(["-nostdin", "-i", local_ip, "-p", &port.to_string(), "-timeout", "60", "-timeout_error"])
        .args(["-trace_err", "-error_file"])
        .arg(dir.path().join("err.log"))
        .args(["-trace_msg", "-message_file"])
        .arg(dir.path().join("msgs.log"))
        .args(["-trace_screen", "-screen_file"])
        .arg(dir.path().join("screen.log"))
        .args(extra)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child =
        cmd.spawn().unwrap_or_else(|e| panic!("sipp must be installed (scripts/test.sh installs sip-tester): {e}"));
    // Ready once it holds its port: a request sent before would meet a
    // closed port (ICMP unreachable) and fail the call for nothing.
    let addr = SocketAddr::new(local_ip.parse().expect("sipp address"), port);
    let mut child = child;
    for i in 0..200 {
        if udp_bound(addr) {
            if i == 0 {
                // Taken before sipp could have bound it: by sipp, or by
                // someone else (then sipp exits within moments).
                for _ in 0..20 {
                    if child.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    SippChild { child: Some(child), dir, port }
}

impl SippChild {
    /// The address it listens on.
    pub fn addr(&self, ip: &str) -> SocketAddr {
        format!("{ip}:{}", self.port).parse().expect("addr")
    }

    /// Waits (at most 90 s) for sipp to finish; returns (success, its logs).
    pub fn wait(mut self) -> (bool, String) {
        let Some(child) = self.child.take() else { return (false, "already waited".into()) };
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let out = child.wait_with_output();
            let _ = tx.send(out);
        });
        let out = match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(o) => o.ok(),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                None
            }
        };
        let _ = waiter.join();
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        let ok = out.as_ref().is_some_and(|o| o.status.success());
        let text = format!(
            "exit {:?}\n{}\n--- errors\n{}\n--- screen\n{}\n--- messages\n{}",
            out.as_ref().map(|o| o.status.code()),
            out.as_ref().map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default(),
            read("err.log"),
            read("screen.log"),
            read("msgs.log")
        );
        (ok, text)
    }
}

impl Drop for SippChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A PBX scenario whose INVITE is refused with `status` (then ACKed), in a
/// temporary file.
pub fn pbx_refused_scenario(dir: &Path, status: u16) -> PathBuf {
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="pbx_refused_{status}">
  <send retrans="500"><![CDATA[
INVITE sip:[number]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: "Front Desk" <sip:+15550100@[local_ip]>;tag=[pid]PBX[call_number]
To: <sip:[number]@[remote_ip]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:pbx@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="{status}"/>
  <send><![CDATA[
ACK sip:[number]@[remote_ip]:[remote_port] SIP/2.0
[last_Via:]
From: "Front Desk" <sip:+15550100@[local_ip]>;tag=[pid]PBX[call_number]
[last_To:]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
</scenario>
"#
    );
    let p = dir.join(format!("pbx_refused_{status}.xml"));
    std::fs::write(&p, xml).expect("write scenario");
    p
}
