//! baresip as a real portal-user SIP phone: it registers to trunkgate with
//! digest authentication and answers incoming calls by itself.
//!
//! Written against baresip 1.0.0 (Debian bookworm `baresip`, libre 1.1.0).
//! Each phone gets a fresh config folder (`baresip -f DIR`) holding:
//!
//! - `config`: SIP on `127.0.0.1:<free port>` (UDP and TCP), IPv4 only
//!   (`-4`, `net_interface 127.0.0.1`), DNS pointed at a dead loopback port
//!   (nothing may need a name: the outbound proxy is an IP address), no
//!   STUN/TURN/ICE, no audio device: G.711 only, the `aufile` source plays
//!   `silence.wav` (a sparse file of zeros), no player module at all (the
//!   received audio goes nowhere) and `sndfile` records both directions to
//!   `dump-*-{enc,dec}.wav` in the folder; `menu` for auto-answer and,
//!   on request, `ctrl_tcp` for [`Baresip::command`]. No UI module: stdin is
//!   never read.
//! - `accounts`: one line,
//!   `<sip:USER@DOMAIN>;auth_pass=PW;outbound="sip:IP:PORT;transport=udp";regint=N;answermode=auto;...`.
//!
//! It runs with `-v -s` (debug and SIP trace) and `-t` (it quits by itself
//! after [`BaresipBuilder::lifetime_secs`], should the test process die).
//! stdout is read line by line in a thread: the SIP trace is kept message
//! by message ([`Baresip::wait_sip`]), the rest as log lines
//! ([`Baresip::wait_for`]).
//!
//! Lines baresip 1.0.0 prints (the needles to wait for):
//!
//! | event | line |
//! |---|---|
//! | registered | `alice@acme.example.com: {0/UDP/v4} 200 OK (trunkgate/0.1.0) [1 binding]` |
//! | registration refused | `reg: sip:alice@acme.example.com: 403 Forbidden (trunkgate/0.1.0)` |
//! | incoming call answered | `call: answering call on line 1 from sip:sipp@127.0.0.1:5062 with 200` |
//! | call up (incoming: after the ACK) | `alice@acme.example.com: Call established: sip:sipp@127.0.0.1:5062` |
//! | call ended | `sip:alice@127.0.0.1:PORT: Call with sip:sipp@127.0.0.1:5062 terminated (duration: 2 secs)` |
//! | ended by the peer | `sip:sipp@127.0.0.1:5062: session closed: Connection reset by peer` |
//! | outgoing call refused | `sip:bob@127.0.0.1:5099: session closed: 480 Temporarily Unavailable` |
//!
//! baresip registers the contact `<sip:USER-0xHEX@127.0.0.1:PORT>` and
//! answers an INVITE for that contact user or for the AOR user.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Log needle: the call is up. For a call baresip answered: only once the
/// ACK of its 200 OK arrived (a lost ACK shows as `CALL_ANSWERING` alone).
pub const CALL_ESTABLISHED: &str = "Call established";
/// Log needle: baresip answers an incoming call (auto-answer).
pub const CALL_ANSWERING: &str = "call: answering call";
/// Log needle: a call ended (either side hung up).
pub const CALL_TERMINATED: &str = "terminated (duration";
/// Log needle: a call's SIP session closed, followed by the reason.
pub const SESSION_CLOSED: &str = "session closed:";

/// How long the waits without an explicit timeout wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// One line baresip printed, or one SIP message of its trace (the whole
/// message, starting with `UDP 127.0.0.1:A -> 127.0.0.1:B`).
#[derive(Clone, Debug)]
pub struct Entry {
    pub sip: bool,
    pub text: String,
}

#[derive(Default)]
struct Log {
    entries: Vec<Entry>,
    /// Output streams closed so far (2: the process is gone).
    closed: usize,
}

type Shared = Arc<(Mutex<Log>, Condvar)>;

/// What to start; see [`Baresip::builder`].
pub struct BaresipBuilder {
    user: String,
    domain: String,
    password: String,
    registrar: SocketAddr,
    tcp: bool,
    regint: u32,
    answermode: String,
    account_params: Vec<String>,
    config_lines: Vec<String>,
    lifetime_secs: u32,
    silence_secs: u32,
    control: bool,
    wait_registered: bool,
}

/// A running baresip. SIGTERM (it unregisters), then SIGKILL, on drop.
pub struct Baresip {
    /// The config folder (also holds the recordings).
    pub dir: tempfile::TempDir,
    /// Where it listens for SIP (UDP and TCP).
    pub sip: SocketAddr,
    /// Its address of record, `sip:USER@DOMAIN`.
    pub aor: String,
    /// Where [`Baresip::command`] connects (`ctrl_tcp`), if enabled.
    pub control: Option<SocketAddr>,
    child: Option<Child>,
    log: Shared,
}

impl BaresipBuilder {
    /// Register over TCP instead of UDP.
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Registration interval asked for (`regint`, seconds; default 300).
    pub fn regint(mut self, secs: u32) -> Self {
        self.regint = secs;
        self
    }

    /// `auto` (default), `manual` or `early`.
    pub fn answermode(mut self, mode: &str) -> Self {
        self.answermode = mode.to_owned();
        self
    }

    /// An extra account parameter, e.g. `ptime=40`.
    pub fn account_param(mut self, param: &str) -> Self {
        self.account_params.push(param.to_owned());
        self
    }

    /// An extra `config` line, e.g. `call_local_timeout 30`.
    pub fn config_line(mut self, line: &str) -> Self {
        self.config_lines.push(line.to_owned());
        self
    }

    /// baresip quits by itself after this long (default 300 s).
    pub fn lifetime_secs(mut self, secs: u32) -> Self {
        self.lifetime_secs = secs;
        self
    }

    /// Length of the silence it sends in a call (default 600 s). At its end
    /// the `aufile` source reports end of file and baresip hangs up.
    pub fn silence_secs(mut self, secs: u32) -> Self {
        self.silence_secs = secs;
        self
    }

    /// Load `ctrl_tcp` so that [`Baresip::command`] works.
    pub fn control(mut self) -> Self {
        self.control = true;
        self
    }

    /// Do not wait for a successful registration in [`BaresipBuilder::start`]
    /// (to test refusals: see [`Baresip::wait_registration_failed`]).
    pub fn no_wait(mut self) -> Self {
        self.wait_registered = false;
        self
    }

    /// Starts baresip; by default waits (at most 10 s) until it is registered.
    pub fn start(self) -> Baresip {
        assert!(self.registrar.is_ipv4(), "the baresip harness is IPv4 only: {}", self.registrar);
        for s in [&self.user, &self.domain, &self.password] {
            assert!(
                !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || ";\"<>@,".contains(c)),
                "{s:?} cannot go in a baresip account line"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        write_silence(&dir.path().join("silence.wav"), self.silence_secs);
        std::fs::write(dir.path().join("accounts"), self.account_line()).expect("write accounts");
        let mut attempt = 0;
        let (child, log, port, control) = loop {
            attempt += 1;
            let port = super::daemon::free_port();
            let control = self.control.then(|| SocketAddr::from(([127, 0, 0, 1], super::daemon::free_port())));
            std::fs::write(dir.path().join("config"), self.config_text(dir.path(), port, control))
                .expect("write config");
            let (child, log) = spawn(dir.path(), self.lifetime_secs);
            // A port taken between free_port() and baresip's bind: retry.
            let ready = wait_entry(&log, 0, "baresip is ready", WAIT, |e| {
                if e.text.starts_with("baresip is ready") {
                    Some(true)
                } else if e.text.contains("Address already in use") {
                    Some(false)
                } else {
                    None
                }
            });
            match ready {
                Ok(_) => break (child, log, port, control),
                Err(why) => {
                    stop_child(child);
                    assert!(attempt < 5 && why.contains("Address already in use"), "{why}");
                }
            }
        };
        let b = Baresip {
            dir,
            sip: SocketAddr::from(([127, 0, 0, 1], port)),
            aor: format!("sip:{}@{}", self.user, self.domain),
            control,
            child: Some(child),
            log,
        };
        if self.wait_registered {
            b.wait_registered();
        }
        b
    }

    fn account_line(&self) -> String {
        let mut line = format!(
            "<sip:{}@{}>;auth_pass={};outbound=\"sip:{};transport={}\";regint={};answermode={};\
             audio_codecs=pcmu,pcma;mwi=no;pubint=0",
            self.user,
            self.domain,
            self.password,
            self.registrar,
            if self.tcp { "tcp" } else { "udp" },
            self.regint,
            self.answermode
        );
        for p in &self.account_params {
            line.push(';');
            line.push_str(p);
        }
        line.push('\n');
        line
    }

    fn config_text(&self, dir: &Path, port: u16, control: Option<SocketAddr>) -> String {
        let mut text = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{port}\n\
             net_interface 127.0.0.1\n\
             dns_server 127.0.0.1:9\n\
             call_local_timeout 120\n\
             call_max_calls 4\n\
             audio_source aufile,{silence}\n\
             audio_player nil,nil\n\
             audio_alert nil,nil\n\
             ausrc_srate 8000\n\
             ausrc_channels 1\n\
             audio_level no\n\
             rtp_ports 10000-30000\n\
             rtcp_mux no\n\
             jitter_buffer_delay 5-10\n\
             rtp_stats no\n\
             statmode_default off\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aufile.so\n\
             module sndfile.so\n\
             snd_path {dir}\n\
             module_tmp account.so\n\
             module_app menu.so\n",
            silence = dir.join("silence.wav").display(),
            dir = dir.display()
        );
        if let Some(addr) = control {
            text.push_str(&format!("module_app ctrl_tcp.so\nctrl_tcp_listen {addr}\n"));
        }
        for l in &self.config_lines {
            text.push_str(l);
            text.push('\n');
        }
        text
    }
}

impl Baresip {
    /// A phone for `user@domain` registering to `registrar` (UDP), started
    /// and registered (at most 10 s, else the test fails with its log).
    pub fn start(user: &str, domain: &str, password: &str, registrar: SocketAddr) -> Self {
        Self::builder(user, domain, password, registrar).start()
    }

    /// The same with options; finish with [`BaresipBuilder::start`].
    pub fn builder(user: &str, domain: &str, password: &str, registrar: SocketAddr) -> BaresipBuilder {
        BaresipBuilder {
            user: user.to_owned(),
            domain: domain.to_owned(),
            password: password.to_owned(),
            registrar,
            tcp: false,
            regint: 300,
            answermode: "auto".to_owned(),
            account_params: Vec::new(),
            config_lines: Vec::new(),
            lifetime_secs: 300,
            silence_secs: 600,
            control: false,
            wait_registered: true,
        }
    }

    /// Waits until baresip reports its registration succeeded; returns the
    /// line. Fails at once when it reports a refusal.
    pub fn wait_registered(&self) -> String {
        let ok = format!("{}: {{", self.aor.trim_start_matches("sip:"));
        let refused = format!("reg: {}: ", self.aor);
        self.wait_entry(0, "successful registration", WAIT, |e| {
            if e.sip {
                None
            } else if e.text.starts_with(&ok) && e.text.contains(" 200 OK") {
                Some(true)
            } else if e.text.starts_with(&refused) {
                Some(false)
            } else {
                None
            }
        })
        .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Waits until baresip reports its registration failed (the final
    /// answer, e.g. `403 Forbidden`); returns the line.
    pub fn wait_registration_failed(&self) -> String {
        let refused = format!("reg: {}: ", self.aor);
        self.wait_for_line(0, &[&refused], WAIT)
    }

    /// Waits (at most 10 s, woken by each new line) until one of baresip's
    /// log lines (not its SIP trace) contains every needle; returns it.
    pub fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_for_line(0, needles, WAIT)
    }

    /// The same with a timeout.
    pub fn wait_for_within(&self, needles: &[&str], timeout: Duration) -> String {
        self.wait_for_line(0, needles, timeout)
    }

    /// The same, among the entries after `mark` (from [`Baresip::mark`]):
    /// e.g. the second `Call established`.
    pub fn wait_for_since(&self, mark: usize, needles: &[&str]) -> String {
        self.wait_for_line(mark, needles, WAIT)
    }

    /// Waits until a SIP message baresip sent or received contains every
    /// needle; returns the whole message (first line: `UDP src -> dst`).
    pub fn wait_sip(&self, needles: &[&str]) -> String {
        self.wait_sip_since(0, needles)
    }

    /// The same, among the entries after `mark`.
    pub fn wait_sip_since(&self, mark: usize, needles: &[&str]) -> String {
        self.wait_entry(mark, &format!("a SIP message with {needles:?}"), WAIT, |e| {
            (e.sip && needles.iter().all(|n| e.text.contains(n))).then_some(true)
        })
        .unwrap_or_else(|why| panic!("{why}"))
    }

    /// How many entries (log lines and SIP messages) were read so far.
    pub fn mark(&self) -> usize {
        self.log.0.lock().map(|l| l.entries.len()).unwrap_or(0)
    }

    /// Every SIP message of the trace so far.
    pub fn sip_messages(&self) -> Vec<String> {
        let log = self.log.0.lock().expect("log lock");
        log.entries.iter().filter(|e| e.sip).map(|e| e.text.clone()).collect()
    }

    /// Everything baresip printed so far (SIP messages included).
    pub fn log_text(&self) -> String {
        self.log.0.lock().map(|l| render(&l.entries)).unwrap_or_default()
    }

    /// The WAV files `sndfile` wrote (`dump-*-enc.wav`: what baresip sent,
    /// `dump-*-dec.wav`: what it received), oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dump-")));
        files.sort();
        files
    }

    /// Runs a baresip command (needs [`BaresipBuilder::control`]): `dial
    /// sip:...`, `hangup`, `accept`, `listcalls`, `reginfo`, ...; returns
    /// its output. Panics when baresip says it failed. A `dial` goes out
    /// through the outbound proxy, i.e. the registrar (trunkgate).
    pub fn command(&self, command: &str) -> String {
        let addr = self.control.expect("start baresip with .control() to send it commands");
        let (cmd, params) = command.split_once(' ').unwrap_or((command, ""));
        let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to baresip ctrl_tcp");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let req = serde_json::json!({ "command": cmd, "params": params, "token": "tg" }).to_string();
        s.write_all(format!("{}:{req},", req.len()).as_bytes()).expect("send command");
        let mut pending = VecDeque::new();
        let mut buf = [0u8; 4096];
        loop {
            while let Some(msg) = netstring(&mut pending) {
                let v: serde_json::Value = serde_json::from_slice(&msg).expect("ctrl_tcp JSON");
                if v["response"] == true && v["token"] == "tg" {
                    assert!(v["ok"] == true, "baresip {command:?} failed: {v}\n{}", self.log_text());
                    return v["data"].as_str().unwrap_or_default().to_owned();
                }
            }
            let n = s.read(&mut buf).unwrap_or_else(|e| panic!("no answer to {command:?}: {e}"));
            assert!(n > 0, "baresip closed the control connection on {command:?}");
            pending.extend(&buf[..n]);
        }
    }

    /// Stops with SIGTERM (baresip unregisters first) and returns its exit
    /// code; SIGKILL after 5 s (None). Its whole output is read on return.
    pub fn stop(&mut self) -> Option<i32> {
        let code = stop_child(self.child.take()?);
        // Its last lines may still be in the pipes: read them all.
        let (lock, cv) = &*self.log;
        let deadline = super::wall_now() + Duration::from_secs(5);
        let mut log = lock.lock().expect("log lock");
        while log.closed < 2 {
            let left = deadline.saturating_duration_since(super::wall_now());
            if left.is_zero() {
                break;
            }
            log = cv.wait_timeout(log, left).expect("log lock").0;
        }
        code
    }

    fn wait_for_line(&self, from: usize, needles: &[&str], timeout: Duration) -> String {
        self.wait_entry(from, &format!("a line with {needles:?}"), timeout, |e| {
            (!e.sip && needles.iter().all(|n| e.text.contains(n))).then_some(true)
        })
        .unwrap_or_else(|why| panic!("{why}"))
    }

    fn wait_entry(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        judge: impl Fn(&Entry) -> Option<bool>,
    ) -> Result<String, String> {
        wait_entry(&self.log, from, what, timeout, judge)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `judge` says `Some(true)` of an entry from `from` on (returns
/// its text), or `Some(false)`, the timeout, or baresip's exit (an error with
/// its whole output).
fn wait_entry(
    log: &Shared,
    from: usize,
    what: &str,
    timeout: Duration,
    judge: impl Fn(&Entry) -> Option<bool>,
) -> Result<String, String> {
    let (lock, cv) = &**log;
    let mut log = lock.lock().expect("log lock");
    let deadline = super::wall_now() + timeout;
    let mut seen = from;
    loop {
        for e in log.entries.iter().skip(seen) {
            match judge(e) {
                Some(true) => return Ok(e.text.clone()),
                Some(false) => {
                    return Err(format!("baresip: {}\nwhile waiting for {what}:\n{}", e.text, render(&log.entries)));
                }
                None => {}
            }
        }
        seen = seen.max(log.entries.len());
        if log.closed >= 2 {
            return Err(format!("baresip exited before {what}:\n{}", render(&log.entries)));
        }
        let left = deadline.saturating_duration_since(super::wall_now());
        if left.is_zero() {
            return Err(format!("no {what} from baresip within {timeout:?}:\n{}", render(&log.entries)));
        }
        log = cv.wait_timeout(log, left).expect("log lock").0;
    }
}

/// SIGTERM (baresip unregisters and quits), SIGKILL after 5 s; the exit code.
fn stop_child(mut child: Child) -> Option<i32> {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait().ok().and_then(|s| s.code()));
    });
    let code = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        None
    });
    let _ = waiter.join();
    code
}

fn spawn(dir: &Path, lifetime_secs: u32) -> (Child, Shared) {
    let mut child = Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args(["-4", "-v", "-s", "-t", &lifetime_secs.to_string()])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "baresip must be installed (Debian package `baresip`; run scripts/test.sh, which installs the \
                 test peers): {e}"
            )
        });
    let log: Shared = Arc::new((Mutex::new(Log::default()), Condvar::new()));
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
        let log = log.clone();
        std::thread::spawn(move || read_stream(stream, &log));
    }
    (child, log)
}

/// Splits baresip's output into log lines and SIP trace messages. A trace
/// message is printed as `ESC[36;1m#`, `UDP a -> b`, the message, `ESC[;m`.
fn read_stream(stream: Box<dyn Read + Send>, log: &Shared) {
    const TRACE_START: &str = "\x1b[36;1m#";
    const TRACE_END: &str = "\x1b[;m";
    let push = |entry: Entry| {
        if let Ok(mut l) = log.0.lock() {
            l.entries.push(entry);
        }
        log.1.notify_all();
    };
    let mut msg: Option<String> = None;
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\n', '\r']);
        match msg.as_mut() {
            Some(m) => {
                if let Some((head, rest)) = line.split_once(TRACE_END) {
                    m.push_str(head.trim_end_matches('\r'));
                    push(Entry { sip: true, text: std::mem::take(m) });
                    msg = None;
                    let rest = strip_ansi(rest);
                    if !rest.trim().is_empty() {
                        push(Entry { sip: false, text: rest });
                    }
                } else {
                    m.push_str(line);
                    m.push('\n');
                }
            }
            // After a warning the colour reset comes first: `ESC[;mESC[36;1m#`.
            None if line.trim_end().ends_with(TRACE_START) => msg = Some(String::new()),
            None => {
                let text = strip_ansi(line);
                if !text.trim().is_empty() {
                    push(Entry { sip: false, text });
                }
            }
        }
    }
    if let Some(m) = msg.filter(|m| !m.is_empty()) {
        push(Entry { sip: true, text: m });
    }
    if let Ok(mut l) = log.0.lock() {
        l.closed += 1;
    }
    log.1.notify_all();
}

/// Drops terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        if e.sip {
            out.push_str("  | ");
            out.push_str(&e.text.trim_end().replace('\n', "\n  | "));
        } else {
            out.push_str(&e.text);
        }
        out.push('\n');
    }
    out
}

/// One netstring (`LEN:DATA,`) off the front of `buf`, if complete.
fn netstring(buf: &mut VecDeque<u8>) -> Option<Vec<u8>> {
    let colon = buf.iter().position(|&b| b == b':')?;
    let len: usize = String::from_utf8(buf.iter().take(colon).copied().collect()).ok()?.trim().parse().ok()?;
    if buf.len() < colon + 1 + len + 1 {
        return None;
    }
    let frame: Vec<u8> = buf.drain(..colon + 1 + len + 1).collect();
    Some(frame[colon + 1..colon + 1 + len].to_vec())
}

/// A WAV file of `secs` seconds of silence, 8 kHz mono S16LE (what the
/// `aufile` source of baresip 1.0.0 needs for G.711). The samples are a
/// hole in a sparse file: nothing is written but the header.
fn write_silence(path: &Path, secs: u32) {
    let data_len = secs * 8000 * 2;
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&(36 + data_len).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // PCM
    h.extend_from_slice(&1u16.to_le_bytes()); // mono
    h.extend_from_slice(&8000u32.to_le_bytes());
    h.extend_from_slice(&16000u32.to_le_bytes()); // byte rate
    h.extend_from_slice(&2u16.to_le_bytes()); // block align
    h.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    let mut f = std::fs::File::create(path).expect("create silence.wav");
    f.write_all(&h).expect("write silence.wav");
    f.set_len(44 + u64::from(data_len)).expect("size silence.wav");
}
