//! mediaload: the media relay benchmark's load generator (issue 8).
//!
//! It sets calls up through a relay, sends G.711 RTP (172-byte packets,
//! 50/s each way) on every call, and measures loss, jitter and one-way
//! latency of what comes back, with the relay's CPU and memory, at several
//! concurrency levels in one run:
//!
//! - `--mode rtpengine`: calls set up through rtpengine's ng protocol
//!   ([`ng`]);
//! - `--mode sip`: calls set up over SIP through trunkgate, the generator
//!   being the PBX and the phone ([`sip`]);
//! - `--mode browser`: the PBX as in `sip`, the phone side many browsers:
//!   SIP over WebSocket, WebRTC (full ICE, DTLS client, SRTP) with str0m
//!   ([`browser`], [`webrtc`]); per step also the DTLS handshakes' times;
//! - `--mode direct`: no relay, each side sends to the other ([`direct`]):
//!   the generator's own cost and ceiling on this box.
//!
//! Per step: calls are set up at `--cps` to the step's concurrency, media
//! flows for `--settle` seconds, then for the measured `--window`; the
//! relay's CPU (`/proc/<pid>/stat`) over the window is divided by the
//! packets it relayed, its RSS with the calls up minus before them by the
//! calls. Then every call is ended and the next step starts from zero.
//! Each step prints one JSON line; a table follows at the end.
//!
//! Threads: this one (orchestration and signalling, a poll loop) and
//! `--workers` media threads ([`media`]); see there how endpoints map to
//! sockets and what each figure means.

mod bencode;
mod browser;
mod clock;
mod direct;
mod hist;
mod media;
mod net;
mod ng;
mod procstat;
mod rtp;
mod sdp;
mod signal;
mod sip;
mod webrtc;
mod ws;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use clap::Parser;
use serde::Serialize;

use clock::{MS, SEC};
use hist::Histogram;
use media::{Cmd, Report, SocketMode, Start, Worker};
use signal::{Event, Signalling};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// rtpengine, driven over its ng protocol.
    Rtpengine,
    /// trunkgate, calls set up over SIP UDP.
    Sip,
    /// trunkgate, the PBX over SIP UDP, the phones browsers (SIP over
    /// WebSocket, WebRTC).
    Browser,
    /// No relay: the generator's baseline.
    Direct,
}

/// Media relay load generator: concurrent G.711 calls through rtpengine
/// (ng protocol) or trunkgate (SIP), loss/jitter/latency, relay CPU and memory.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// How calls are set up.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Concurrency levels to measure, in order (calls).
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,3000,4000")]
    steps: Vec<u32>,
    /// Call setup rate (calls per second).
    #[arg(long, default_value_t = 200.0)]
    cps: f64,
    /// Measured window per step (seconds).
    #[arg(long, default_value_t = 20.0)]
    window: f64,
    /// Media time between the last call up and the window (seconds).
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Idle time after tearing a step down (seconds).
    #[arg(long, default_value_t = 3.0)]
    cooldown: f64,
    /// Longest wait for calls to come up or fail after the last was started (seconds).
    #[arg(long, default_value_t = 40.0)]
    setup_timeout: f64,
    /// Media threads.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Endpoint sockets: shared by the calls of a worker (cheap), or one per endpoint.
    #[arg(long, value_enum, default_value = "shared")]
    sockets: SocketMode,
    /// Local address of the RTP endpoints.
    #[arg(long, default_value = "127.0.0.1")]
    rtp_ip: IpAddr,
    /// Packets per sendmmsg (at most).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// The relay's process id (for CPU and memory figures).
    #[arg(long)]
    relay_pid: Option<u32>,
    /// A name for the relay in the output (e.g. "rtpengine 10.5").
    #[arg(long, default_value = "")]
    label: String,
    /// Also append each step's JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Packets later than this (ms) are also reported as `late` (a phone's
    /// jitter buffer would drop them); `loss_with_late_pct` counts them lost.
    #[arg(long, default_value_t = 50.0)]
    late_ms: f64,
    /// A step is clean below this loss (percent).
    #[arg(long, default_value_t = 0.1)]
    max_loss: f64,
    /// Skip the remaining steps after the first step that is not clean.
    #[arg(long)]
    stop_after_failure: bool,
    /// rtpengine's ng listener (mode rtpengine).
    #[arg(long, default_value = "127.0.0.1:2223")]
    ng: SocketAddr,
    /// trunkgate's SIP UDP address (mode sip).
    #[arg(long, default_value = "127.0.0.1:5060")]
    sip_target: SocketAddr,
    /// The PBX's SIP address (mode sip; a trunk source of trunkgate).
    #[arg(long, default_value = "127.0.0.1:5070")]
    pbx_sip: SocketAddr,
    /// The phone's SIP address (mode sip; the portal user's static contact).
    #[arg(long, default_value = "127.0.0.1:5080")]
    phone_sip: SocketAddr,
    /// Request-URI host: the portal's domain (mode sip).
    #[arg(long, default_value = "bench.example")]
    domain: String,
    /// Request-URI user: the dialled number (mode sip); in mode browser
    /// the prefix: call k dials `<number><k mod users>`.
    #[arg(long, default_value = "1000")]
    number: String,
    /// trunkgate's `ws://` listener (mode browser).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws: SocketAddr,
    /// Browser users `<user-prefix>0..` (mode browser; 0: the largest step).
    #[arg(long, default_value_t = 0)]
    users: u32,
    /// Browser usernames' prefix.
    #[arg(long, default_value = "b")]
    user_prefix: String,
    /// A browser user's password is this followed by its username.
    #[arg(long, default_value = "bench-pw-")]
    password_prefix: String,
    /// Browser users per WebSocket connection (1: one each, as browser tabs).
    #[arg(long, default_value_t = 1)]
    users_per_conn: u32,
    /// Longest wait from a browser's 200 OK to ICE + DTLS done (seconds).
    #[arg(long, default_value_t = 10.0)]
    dtls_timeout: f64,
    /// Registration time the browsers ask for (seconds; refreshed at half).
    #[arg(long, default_value_t = 3600)]
    register_expires: u32,
    /// REGISTER transactions in flight at most.
    #[arg(long, default_value_t = 64)]
    register_window: usize,
    /// Longest wait for every browser to be registered (seconds).
    #[arg(long, default_value_t = 120.0)]
    register_timeout: f64,
}

struct WorkerHandle {
    tx: Sender<Cmd>,
    shared: [SocketAddr; 2],
    join: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct StepState {
    endpoints: Vec<(SocketAddr, SocketAddr)>,
    own: Vec<Option<[UdpSocket; 2]>>,
    started_at: Vec<u64>,
    up: Vec<bool>,
    over: Vec<bool>,
    n_up: u64,
    n_failed: u64,
    n_direct: u64,
    failures: BTreeMap<String, u64>,
    dropped: BTreeMap<String, u64>,
    window_open: bool,
    dropped_in_window: u64,
    setup_us: Histogram,
}

/// One step's figures (one JSON line).
#[derive(Serialize, Debug, Default)]
struct StepResult {
    label: String,
    mode: String,
    sockets: String,
    step: u32,
    target_calls: u32,
    calls_up: u64,
    calls_failed: u64,
    calls_stuck: u64,
    failures: BTreeMap<String, u64>,
    calls_dropped_in_window: u64,
    dropped: BTreeMap<String, u64>,
    /// `relayed`: every call's media crossed the relay; `direct`: the SDP
    /// each side received named the other side's own endpoint (no anchoring).
    media_path: String,
    direct_calls: u64,
    setup_s: f64,
    setup_ms_p50: f64,
    setup_ms_p99: f64,
    window_s: f64,
    packets_sent: u64,
    packets_received: u64,
    packets_lost: i64,
    loss_pct: f64,
    packets_late: u64,
    loss_with_late_pct: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    /// Per direction: PBX → phone (in browser mode: toward the browsers,
    /// through trunkgate's SRTP) and phone → PBX.
    latency_ms_p99_to_phone: f64,
    latency_ms_p99_to_pbx: f64,
    late_to_phone: u64,
    late_to_pbx: u64,
    jitter_ms_mean: f64,
    jitter_ms_p99: f64,
    jitter_ms_peak: f64,
    path_jitter_ms_mean: f64,
    path_jitter_ms_max: f64,
    relay_cpu_s: Option<f64>,
    relay_cpu_pct: Option<f64>,
    relay_us_per_packet: Option<f64>,
    relay_rss_start_kb: Option<u64>,
    relay_rss_before_kb: Option<u64>,
    relay_rss_calls_kb: Option<u64>,
    relay_kb_per_call: Option<f64>,
    relay_kb_per_call_from_start: Option<f64>,
    gen_cpu_s: f64,
    gen_cpu_pct: f64,
    /// CPU used by everything else on the machine during the window (% of
    /// one core): other people's builds make a step meaningless.
    others_cpu_pct: Option<f64>,
    loadavg_1m: Option<f64>,
    gen_us_per_packet: f64,
    gen_lateness_ms_p99: f64,
    gen_lateness_ms_max: f64,
    gen_skipped: u64,
    gen_send_errors: u64,
    gen_rx_drops: u64,
    generator_limited: bool,
    /// Browser mode: offers answered (200 OK sent), handshakes done and
    /// failed, 200 OK → ICE + DTLS done (ms), and the handshakes done per
    /// second from the first 200 OK to the last handshake.
    dtls_answered: Option<u64>,
    dtls_connected: Option<u64>,
    dtls_failed: Option<u64>,
    dtls_ms_p50: Option<f64>,
    dtls_ms_p99: Option<f64>,
    dtls_ms_max: Option<f64>,
    dtls_per_s: Option<f64>,
    /// Browser peers that died while their call was up.
    peers_gone: u64,
    malformed: u64,
    stale: u64,
    misrouted: u64,
    duplicates: u64,
    reordered: u64,
    wrong_pt: u64,
    dead_streams: u64,
    streams: u64,
    signalling: BTreeMap<String, u64>,
    /// Every call up, media relayed, the load offered, loss under `--max-loss`.
    clean: bool,
    /// The same with packets later than `--late-ms` counted as lost.
    clean_with_late: bool,
}

/// What a step measured besides the workers' reports.
struct Readings {
    setup_s: f64,
    /// The window's wall-clock length, seconds.
    wall: f64,
    calls_up: u64,
    calls_stuck: u64,
    relay: (Option<procstat::Sample>, Option<procstat::Sample>),
    generator: (Option<procstat::Sample>, Option<procstat::Sample>),
    machine_busy: Option<u64>,
    rss_before: Option<u64>,
}

struct Bench {
    args: Args,
    engine: Box<dyn Signalling>,
    fds: Vec<RawFd>,
    workers: Vec<WorkerHandle>,
    step: u32,
    ticks: u64,
    rss_start: Option<u64>,
    st: StepState,
}

fn secs(s: f64) -> u64 {
    (s.max(0.0) * SEC as f64) as u64
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Bench {
    fn worker_of(&self, call: u32) -> Option<&WorkerHandle> {
        self.workers.get((call % self.args.workers) as usize)
    }

    fn send_all(&self, make: impl Fn() -> Cmd) {
        for w in &self.workers {
            let _ = w.tx.send(make());
        }
    }

    /// Runs signalling until `until` (monotonic ns).
    fn pump(&mut self, until: u64) {
        loop {
            let now = clock::mono_ns();
            self.engine.handle_timeout(now);
            while let Some(ev) = self.engine.poll_event() {
                self.on_event(ev, now);
            }
            if now >= until {
                return;
            }
            let next = self.engine.poll_timeout().map_or(until, |t| t.min(until));
            let wait_ms = next.saturating_sub(now).div_ceil(MS).min(100) as i32;
            match net::poll_readable(&self.fds, wait_ms) {
                Ok(ready) if !ready.is_empty() => self.engine.handle_readable(clock::mono_ns()),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("poll: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event, now: u64) {
        let st = &mut self.st;
        match ev {
            Event::Up { call, dest } => {
                let i = call as usize;
                if st.up.get(i).copied().unwrap_or(true) {
                    return;
                }
                st.up[i] = true;
                st.n_up += 1;
                st.setup_us.record(now.saturating_sub(st.started_at[i]) / 1000);
                let (pbx, phone) = st.endpoints[i];
                if dest[0] == phone || dest[1] == pbx {
                    st.n_direct += 1;
                }
                let own = st.own.get_mut(i).and_then(Option::take);
                let peer = self.engine.take_peer(call);
                if let Some(w) = self.worker_of(call) {
                    let _ = w.tx.send(Cmd::Start(Start { call, dest, own, peer }));
                }
            }
            Event::Failed { call, reason } => {
                *st.failures.entry(reason).or_default() += 1;
                st.n_failed += 1;
                if let Some(o) = st.own.get_mut(call as usize) {
                    *o = None;
                }
                if let Some(over) = st.over.get_mut(call as usize) {
                    *over = true;
                }
            }
            Event::Ended { call } => {
                if let Some(over) = st.over.get_mut(call as usize) {
                    *over = true;
                }
            }
            Event::Dropped { call, reason } => {
                *st.dropped.entry(reason).or_default() += 1;
                if st.window_open {
                    st.dropped_in_window += 1;
                }
                if let Some(over) = st.over.get_mut(call as usize) {
                    *over = true;
                }
            }
            Event::Redirect { call, dir, dest } => {
                if let Some(w) = self.worker_of(call) {
                    let _ = w.tx.send(Cmd::Redirect { call, dir, dest });
                }
            }
        }
    }

    fn endpoints(&mut self, call: u32) -> std::io::Result<(SocketAddr, SocketAddr, Option<[UdpSocket; 2]>)> {
        match self.args.sockets {
            SocketMode::Shared => {
                let w = self.worker_of(call).ok_or_else(|| std::io::Error::other("no worker"))?;
                Ok((w.shared[0], w.shared[1], None))
            }
            SocketMode::PerCall => {
                let any = SocketAddr::new(self.args.rtp_ip, 0);
                let a = net::bind_udp(any, None, true)?;
                let b = net::bind_udp(any, None, true)?;
                Ok((a.local_addr()?, b.local_addr()?, Some([a, b])))
            }
        }
    }

    /// Runs signalling until the engine is ready (browsers registered).
    fn wait_ready(&mut self) -> Result<(), String> {
        let t0 = clock::mono_ns();
        loop {
            match self.engine.ready() {
                Ok(true) => break,
                Ok(false) if clock::mono_ns() > t0 + secs(self.args.register_timeout) => {
                    return Err(format!("not ready after {} s (registrations)", self.args.register_timeout));
                }
                Ok(false) => self.pump(clock::mono_ns() + 20 * MS),
                Err(e) => return Err(e),
            }
        }
        if self.args.mode == Mode::Browser {
            eprintln!("browser: every user registered in {:.2} s", (clock::mono_ns() - t0) as f64 / SEC as f64);
        }
        Ok(())
    }

    fn relay(&self) -> Option<procstat::Sample> {
        self.args.relay_pid.and_then(procstat::sample)
    }

    fn run_step(&mut self, target: u32) -> StepResult {
        self.step += 1;
        let step = self.step;
        self.engine.begin_step(step);
        self.send_all(|| Cmd::Step(step));
        let n = target as usize;
        self.st = StepState {
            endpoints: Vec::with_capacity(n),
            own: Vec::with_capacity(n),
            started_at: Vec::with_capacity(n),
            up: Vec::with_capacity(n),
            over: Vec::with_capacity(n),
            ..StepState::default()
        };
        // Let the workers take the step before packets of it arrive.
        self.pump(clock::mono_ns() + 50 * MS);
        let rss_before = self.relay().map(|s| s.rss_kb);

        // Setup, paced.
        let t0 = clock::mono_ns();
        let per_call = (SEC as f64 / self.args.cps.max(0.001)) as u64;
        let mut started = 0u32;
        let mut last_start = t0;
        loop {
            let now = clock::mono_ns();
            while started < target && t0 + u64::from(started) * per_call <= now {
                let call = started;
                started += 1;
                last_start = now;
                match self.endpoints(call) {
                    Ok((pbx, phone, own)) => {
                        self.st.endpoints.push((pbx, phone));
                        self.st.own.push(own);
                        self.st.started_at.push(now);
                        self.st.up.push(false);
                        self.st.over.push(false);
                        self.engine.start_call(now, call, pbx, phone);
                    }
                    Err(e) => {
                        let unspecified = SocketAddr::new(self.args.rtp_ip, 0);
                        self.st.endpoints.push((unspecified, unspecified));
                        self.st.own.push(None);
                        self.st.started_at.push(now);
                        self.st.up.push(true); // never started: not up, not pending
                        self.st.over.push(true);
                        *self.st.failures.entry(format!("endpoint: {e}")).or_default() += 1;
                        self.st.n_failed += 1;
                    }
                }
            }
            let resolved = self.st.n_up + self.st.n_failed;
            if started == target && resolved >= u64::from(target) {
                break;
            }
            if started == target && now > last_start + secs(self.args.setup_timeout) {
                break;
            }
            let next = if started < target { t0 + u64::from(started) * per_call } else { now + 20 * MS };
            self.pump(next.max(now + MS / 2));
        }
        let setup_s = (clock::mono_ns() - t0) as f64 / SEC as f64;
        let calls_stuck = u64::from(target).saturating_sub(self.st.n_up + self.st.n_failed);
        eprintln!(
            "step {step}: {target} calls: setup {setup_s:.1} s, {} up, {} failed, {calls_stuck} stuck",
            self.st.n_up, self.st.n_failed
        );

        // Settle, then the window. The workers learn the window when the
        // settling starts: a worker starved for a while (a busy box) must
        // still know it before it sends the first packet that counts, or
        // packets would be received in the window without being sent in it.
        let lead = secs(self.args.settle).max(100 * MS);
        let window_ns = secs(self.args.window);
        let start_rt = clock::real_ns() + lead;
        let start_mono = clock::mono_ns() + lead;
        self.send_all(|| Cmd::Window { start: start_rt, end: start_rt + window_ns });
        self.pump(start_mono);
        self.st.window_open = true;
        let calls_up = self.st.n_up;
        let relay0 = self.relay();
        let gen0 = procstat::sample(std::process::id());
        let box0 = procstat::machine();
        let w0 = clock::mono_ns();
        self.pump(start_mono + window_ns);
        let relay1 = self.relay();
        let gen1 = procstat::sample(std::process::id());
        let box1 = procstat::machine();
        let wall = (clock::mono_ns() - w0) as f64 / SEC as f64;
        self.st.window_open = false;
        // Packets sent at the end of the window are still on their way.
        self.pump(clock::mono_ns() + 500 * MS);
        let mut rep = Report::default();
        let (tx, rx) = mpsc::channel();
        self.send_all(|| Cmd::Report(tx.clone()));
        for _ in 0..self.workers.len() {
            match rx.recv_timeout(std::time::Duration::from_secs(5)) {
                Ok(r) => rep.merge(&r),
                Err(_) => eprintln!("step {step}: a worker did not report"),
            }
        }
        self.send_all(|| Cmd::StopSending);

        // Teardown, paced at twice the setup rate (at least 500/s).
        let t_end = clock::mono_ns();
        let per_end = (SEC as f64 / (self.args.cps * 2.0).max(500.0)) as u64;
        let to_end: Vec<u32> = (0..started).filter(|&c| !self.st.over[c as usize]).collect();
        let mut ended = 0usize;
        loop {
            let now = clock::mono_ns();
            while ended < to_end.len() && t_end + ended as u64 * per_end <= now {
                self.engine.end_call(now, to_end[ended]);
                ended += 1;
            }
            let all_over = self.st.over.iter().all(|&o| o);
            if ended == to_end.len() && (all_over || now > t_end + secs(self.args.setup_timeout)) {
                break;
            }
            self.pump((now + 5 * MS).min(t_end + ended as u64 * per_end).max(now + MS / 2));
        }
        let not_ended = self.st.over.iter().filter(|&&o| !o).count();
        if not_ended > 0 {
            eprintln!("step {step}: {not_ended} calls did not end cleanly");
        }
        self.send_all(|| Cmd::Clear);
        self.pump(clock::mono_ns() + secs(self.args.cooldown));

        let machine_busy = match (box0, box1) {
            (Some(a), Some(b)) => Some(b.0.saturating_sub(a.0)),
            _ => None,
        };
        let readings = Readings {
            setup_s,
            wall,
            calls_up,
            calls_stuck,
            relay: (relay0, relay1),
            generator: (gen0, gen1),
            machine_busy,
            rss_before,
        };
        self.result(step, target, readings, rep)
    }

    fn result(&self, step: u32, target: u32, readings: Readings, rep: Report) -> StepResult {
        let Readings { setup_s, wall, calls_up, calls_stuck, relay, generator, machine_busy, rss_before } = readings;
        let st = &self.st;
        let lost = rep.sent as i64 - rep.received as i64;
        let loss_pct = if rep.sent == 0 { 100.0 } else { lost as f64 * 100.0 / rep.sent as f64 };
        let loss_with_late_pct =
            if rep.sent == 0 { 100.0 } else { (lost + rep.late as i64) as f64 * 100.0 / rep.sent as f64 };
        let tick_s = 1.0 / self.ticks as f64;
        let relay_cpu_s = match relay {
            (Some(a), Some(b)) => Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * tick_s),
            _ => None,
        };
        let rss_calls = relay.1.map(|s| s.rss_kb);
        let per_call = |base: Option<u64>| match (base, rss_calls) {
            (Some(b), Some(c)) if calls_up > 0 => Some((c as f64 - b as f64) / calls_up as f64),
            _ => None,
        };
        let gen_cpu_s = match generator {
            (Some(a), Some(b)) => b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * tick_s,
            _ => 0.0,
        };
        let others_cpu_pct = machine_busy.map(|busy| {
            let others = busy as f64 * tick_s - gen_cpu_s - relay_cpu_s.unwrap_or(0.0);
            (others * 100.0 / wall.max(1e-9)).max(0.0)
        });
        let media_path = match st.n_direct {
            0 => "relayed",
            d if d == st.n_up => "direct",
            _ => "mixed",
        };
        let generator_limited = rep.skipped > 0 || rep.rx_drops > 0 || rep.send_errors > 0;
        // The load offered must be the load asked for: slots the generator
        // skipped count against a step as lost packets do.
        let offered = rep.skipped as f64 * 100.0 <= rep.sent as f64 * self.args.max_loss;
        let path_ok = media_path == "relayed" || self.args.mode == Mode::Direct;
        let clean = calls_up == u64::from(target)
            && rep.sent > 0
            && offered
            && loss_pct < self.args.max_loss
            && path_ok
            && rep.misrouted == 0
            && rep.peers_gone == 0;
        let mode = match self.args.mode {
            Mode::Rtpengine => "rtpengine",
            Mode::Sip => "sip",
            Mode::Browser => "browser",
            Mode::Direct => "direct",
        };
        let hs = self.engine.handshakes();
        let hs_ms = |q: f64| hs.as_ref().filter(|h| h.connected > 0).map(|h| ms(h.us.quantile(q)));
        let sockets = match self.args.sockets {
            SocketMode::Shared => "shared",
            SocketMode::PerCall => "per-call",
        };
        StepResult {
            label: self.args.label.clone(),
            mode: mode.into(),
            sockets: sockets.into(),
            step,
            target_calls: target,
            calls_up,
            calls_failed: st.n_failed,
            calls_stuck,
            failures: st.failures.clone(),
            calls_dropped_in_window: st.dropped_in_window,
            dropped: st.dropped.clone(),
            media_path: media_path.into(),
            direct_calls: st.n_direct,
            setup_s,
            setup_ms_p50: ms(st.setup_us.quantile(0.5)),
            setup_ms_p99: ms(st.setup_us.quantile(0.99)),
            window_s: wall,
            packets_sent: rep.sent,
            packets_received: rep.received,
            packets_lost: lost,
            loss_pct,
            packets_late: rep.late,
            loss_with_late_pct,
            latency_ms_p50: ms(rep.latency_us.quantile(0.5)),
            latency_ms_p99: ms(rep.latency_us.quantile(0.99)),
            latency_ms_max: ms(rep.latency_us.max()),
            latency_ms_p99_to_phone: ms(rep.latency_by_dir_us[0].quantile(0.99)),
            latency_ms_p99_to_pbx: ms(rep.latency_by_dir_us[1].quantile(0.99)),
            late_to_phone: rep.late_by_dir[0],
            late_to_pbx: rep.late_by_dir[1],
            jitter_ms_mean: rep.jitter_us.mean() / 1000.0,
            jitter_ms_p99: ms(rep.jitter_us.quantile(0.99)),
            jitter_ms_peak: ms(rep.jitter_peak_us.max()),
            path_jitter_ms_mean: rep.path_jitter_us.mean() / 1000.0,
            path_jitter_ms_max: ms(rep.path_jitter_us.max()),
            relay_cpu_s,
            relay_cpu_pct: relay_cpu_s.map(|c| c * 100.0 / wall.max(1e-9)),
            relay_us_per_packet: relay_cpu_s.filter(|_| rep.received > 0).map(|c| c * 1e6 / rep.received as f64),
            relay_rss_start_kb: self.rss_start,
            relay_rss_before_kb: rss_before,
            relay_rss_calls_kb: rss_calls,
            relay_kb_per_call: per_call(rss_before),
            relay_kb_per_call_from_start: per_call(self.rss_start),
            gen_cpu_s,
            gen_cpu_pct: gen_cpu_s * 100.0 / wall.max(1e-9),
            others_cpu_pct,
            loadavg_1m: procstat::loadavg(),
            gen_us_per_packet: if rep.sent + rep.received > 0 {
                gen_cpu_s * 1e6 / (rep.sent + rep.received) as f64
            } else {
                0.0
            },
            gen_lateness_ms_p99: ms(rep.lateness_us.quantile(0.99)),
            gen_lateness_ms_max: ms(rep.lateness_us.max()),
            gen_skipped: rep.skipped,
            gen_send_errors: rep.send_errors,
            gen_rx_drops: rep.rx_drops,
            generator_limited,
            dtls_answered: hs.as_ref().map(|h| h.answered),
            dtls_connected: hs.as_ref().map(|h| h.connected),
            dtls_failed: hs.as_ref().map(|h| h.failed),
            dtls_ms_p50: hs_ms(0.5),
            dtls_ms_p99: hs_ms(0.99),
            dtls_ms_max: hs.as_ref().filter(|h| h.connected > 0).map(|h| ms(h.us.max())),
            dtls_per_s: hs
                .as_ref()
                .filter(|h| h.span_ns > 0)
                .map(|h| h.connected as f64 * SEC as f64 / h.span_ns as f64),
            peers_gone: rep.peers_gone,
            malformed: rep.malformed,
            stale: rep.stale,
            misrouted: rep.misrouted,
            duplicates: rep.duplicates,
            reordered: rep.reordered,
            wrong_pt: rep.wrong_pt,
            dead_streams: rep.dead_streams,
            streams: rep.streams,
            signalling: self.engine.tallies(),
            clean,
            clean_with_late: clean && loss_with_late_pct < self.args.max_loss,
        }
    }

    fn shutdown(&mut self) {
        self.send_all(|| Cmd::Quit);
        for w in &mut self.workers {
            if let Some(j) = w.join.take() {
                let _ = j.join();
            }
        }
    }
}

/// Other processes using more than this (% of one core) during a window
/// make its figures suspect: flagged `busy-box`.
const BUSY_OTHERS_PCT: f64 = 10.0;

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}"))
}

fn print_table(results: &[StepResult], max_loss: f64, late_ms: f64) {
    println!();
    println!(
        "{:>6} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>8} {:>7} {:>7} {:<8} flags",
        "calls",
        "up",
        "loss%",
        "+late%",
        "lat p50",
        "lat p99",
        "lat max",
        "jit ms",
        "relay%",
        "µs/pkt",
        "KB/call",
        "KB/c0",
        "gen%",
        "other%",
        "path"
    );
    for r in results {
        let mut flags = Vec::new();
        if r.clean {
            flags.push("clean");
        }
        if r.generator_limited {
            flags.push("generator-limited");
        }
        if r.calls_dropped_in_window > 0 {
            flags.push("drops");
        }
        if r.others_cpu_pct.is_some_and(|o| o > BUSY_OTHERS_PCT) {
            flags.push("busy-box");
        }
        println!(
            "{:>6} {:>6} {:>8.4} {:>8.4} {:>8.2}m {:>8.2}m {:>8.2}m {:>8.2} {:>8} {:>7} {:>8} {:>8} {:>7.1} {:>7} {:<8} {}",
            r.target_calls,
            r.calls_up,
            r.loss_pct,
            r.loss_with_late_pct,
            r.latency_ms_p50,
            r.latency_ms_p99,
            r.latency_ms_max,
            r.jitter_ms_mean,
            opt(r.relay_cpu_pct, 1),
            opt(r.relay_us_per_packet, 2),
            opt(r.relay_kb_per_call, 1),
            opt(r.relay_kb_per_call_from_start, 1),
            r.gen_cpu_pct,
            opt(r.others_cpu_pct, 1),
            r.media_path,
            flags.join(",")
        );
    }
    if results.iter().any(|r| r.dtls_answered.is_some()) {
        println!();
        println!(
            "{:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "calls", "answered", "dtls ok", "failed", "dtls p50", "dtls p99", "dtls max", "hs/s", "setup s"
        );
        for r in results {
            println!(
                "{:>6} {:>9} {:>9} {:>7} {:>8}m {:>8}m {:>8}m {:>9} {:>9.1}",
                r.target_calls,
                r.dtls_answered.unwrap_or(0),
                r.dtls_connected.unwrap_or(0),
                r.dtls_failed.unwrap_or(0),
                opt(r.dtls_ms_p50, 2),
                opt(r.dtls_ms_p99, 2),
                opt(r.dtls_ms_max, 2),
                opt(r.dtls_per_s, 1),
                r.setup_s
            );
        }
    }
    let best = results.iter().filter(|r| r.clean).map(|r| r.target_calls).max();
    match best {
        Some(b) => println!("most concurrent calls at < {max_loss} % loss: {b}"),
        None => println!("no step was clean (< {max_loss} % loss, every call up, media relayed)"),
    }
    let best = results.iter().filter(|r| r.clean_with_late).map(|r| r.target_calls).max();
    match best {
        Some(b) => println!("the same, packets later than {late_ms} ms counted as lost: {b}"),
        None => println!("no step was clean with packets later than {late_ms} ms counted as lost"),
    }
}

fn main() {
    let args = Args::parse();
    if args.workers == 0 || args.steps.is_empty() {
        eprintln!("need at least one worker and one step");
        std::process::exit(2);
    }
    let nofile = net::raise_nofile();
    let needed = args.steps.iter().copied().max().unwrap_or(0) as u64 * 2 + 64;
    if args.sockets == SocketMode::PerCall && nofile < needed {
        eprintln!("warning: open-file limit {nofile} < {needed} needed for per-call sockets");
    }
    let run = (clock::real_ns() ^ u64::from(std::process::id()) << 20) as u32;
    let engine: Box<dyn Signalling> = match args.mode {
        Mode::Rtpengine => match ng::Ng::new(args.ng, run) {
            Ok(e) => Box::new(e),
            Err(e) => fail(&format!("ng socket: {e}")),
        },
        Mode::Direct => Box::new(direct::Direct::default()),
        Mode::Sip => {
            let cfg = sip::SipConfig {
                target: args.sip_target,
                pbx_bind: args.pbx_sip,
                phone_bind: args.phone_sip,
                domain: args.domain.clone(),
                number: args.number.clone(),
                numbers: 1,
            };
            match sip::Sip::new(cfg, run) {
                Ok(e) => Box::new(e),
                Err(e) => fail(&format!("SIP sockets ({} / {}): {e}", args.pbx_sip, args.phone_sip)),
            }
        }
        Mode::Browser => {
            let users = if args.users == 0 { args.steps.iter().copied().max().unwrap_or(1) } else { args.users };
            let cfg = browser::BrowserConfig {
                sip: sip::SipConfig {
                    target: args.sip_target,
                    pbx_bind: args.pbx_sip,
                    // Unused: the phones are the browsers.
                    phone_bind: SocketAddr::new(args.pbx_sip.ip(), 0),
                    domain: args.domain.clone(),
                    number: args.number.clone(),
                    numbers: users,
                },
                ws: args.ws,
                users,
                user_prefix: args.user_prefix.clone(),
                password_prefix: args.password_prefix.clone(),
                users_per_conn: args.users_per_conn,
                rtp_ip: args.rtp_ip,
                dtls_timeout: secs(args.dtls_timeout),
                expires: args.register_expires,
                register_window: args.register_window,
            };
            let cert = match trunkgate::media::webrtc::NodeCert::generate() {
                Ok(c) => c.dtls_cert(),
                Err(e) => fail(&format!("DTLS certificate: {e}")),
            };
            eprintln!(
                "browser: opening {} WebSocket(s) to {} for {users} users",
                users.div_ceil(args.users_per_conn.max(1)),
                args.ws
            );
            match browser::Browsers::new(cfg, cert, run) {
                Ok(e) => Box::new(e),
                Err(e) => fail(&e),
            }
        }
    };
    let mut workers = Vec::new();
    for id in 0..args.workers {
        let any = SocketAddr::new(args.rtp_ip, 0);
        let shared = match (net::bind_udp(any, Some(32 << 20), true), net::bind_udp(any, Some(32 << 20), true)) {
            (Ok(a), Ok(b)) => [a, b],
            (Err(e), _) | (_, Err(e)) => fail(&format!("RTP sockets on {}: {e}", args.rtp_ip)),
        };
        let addrs = match (shared[0].local_addr(), shared[1].local_addr()) {
            (Ok(a), Ok(b)) => [a, b],
            _ => fail("RTP socket address"),
        };
        let (tx, rx) = mpsc::channel();
        let worker = match Worker::new(id, args.workers, args.batch, (args.late_ms * 1000.0) as u64, shared, rx) {
            Ok(w) => w,
            Err(e) => fail(&format!("worker: {e}")),
        };
        let join = std::thread::Builder::new().name(format!("media-{id}")).spawn(move || worker.run());
        match join {
            Ok(j) => workers.push(WorkerHandle { tx, shared: addrs, join: Some(j) }),
            Err(e) => fail(&format!("thread: {e}")),
        }
    }
    let rss_start = args.relay_pid.and_then(procstat::sample).map(|s| s.rss_kb);
    if let Some(pid) = args.relay_pid
        && rss_start.is_none()
    {
        eprintln!("warning: cannot read /proc/{pid}: no relay CPU or memory figures");
    }
    let fds = engine.fds();
    let mut bench = Bench {
        args,
        engine,
        fds,
        workers,
        step: 0,
        ticks: procstat::ticks_per_second(),
        rss_start,
        st: StepState::default(),
    };
    if let Err(e) = bench.wait_ready() {
        bench.shutdown();
        fail(&e);
    }
    let mut results = Vec::new();
    let steps = bench.args.steps.clone();
    for target in steps {
        let r = bench.run_step(target);
        match serde_json::to_string(&r) {
            Ok(line) => {
                println!("{line}");
                if let Some(path) = &bench.args.json {
                    let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
                    if let Err(e) = file.and_then(|mut f| writeln!(f, "{line}")) {
                        eprintln!("{}: {e}", path.display());
                    }
                }
            }
            Err(e) => eprintln!("json: {e}"),
        }
        let clean = r.clean;
        results.push(r);
        if !clean && bench.args.stop_after_failure {
            eprintln!("step not clean: stopping");
            break;
        }
    }
    bench.shutdown();
    print_table(&results, bench.args.max_loss, bench.args.late_ms);
}

fn fail(msg: &str) -> ! {
    eprintln!("mediaload: {msg}");
    std::process::exit(1)
}
