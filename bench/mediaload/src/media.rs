//! The media threads. Each [`Worker`] owns a share of the calls (call `i`
//! belongs to worker `i % workers`), both their endpoints and one epoll; it
//! sends every stream's packet once per 20 ms cycle and measures what comes
//! back. No thread per call, no lock: the orchestrator talks to a worker
//! through a channel of [`Cmd`]s.
//!
//! A worker wakes once per 1 ms slot only (`clock_nanosleep`), never per
//! packet: it reads whatever arrived since the last slot (epoll polled
//! without waiting, `recvmmsg` per ready socket), then sends the slot's
//! packets. Arrival times come from the kernel (`SO_TIMESTAMPNS`), so
//! reading up to a millisecond later does not change the latency measured,
//! and the generator's CPU per packet stays small on a shared box.
//!
//! # Endpoints
//!
//! By default ([`SocketMode::Shared`]) a worker has one PBX-side and one
//! phone-side socket, and every call's endpoint on that side is that
//! socket: the relay still gets one port pair per call side and sends each
//! call to the address its SDP named, only that address is the same for
//! many calls. The packets say which call they belong to. This lets
//! `sendmmsg` batch across calls, which keeps the generator's share of the
//! two cores small. [`SocketMode::PerCall`] gives every endpoint its own
//! socket (one `sendmmsg` per packet, epoll over thousands of sockets) for
//! when that realism matters more than the generator's cost.
//!
//! # Schedule
//!
//! A 20 ms cycle of 20 one-millisecond slots; each stream (call ×
//! direction) has a slot and sends once per cycle. The two directions of a
//! call are 10 ms apart. A slot sent more than [`MAX_BEHIND_NS`] late is
//! skipped and counted (`skipped`): the generator could not keep up.
//!
//! # What is measured (for packets *sent* inside the window)
//!
//! - loss: packets sent minus packets received (duplicates not counted);
//! - latency: kernel receive timestamp minus the send time in the payload
//!   (taken once per `sendmmsg` batch: the last packets of a batch carry up
//!   to a batch's worth of the generator's own sending time, tens of µs);
//! - late: received, but later than `--late-ms` (counted apart, not lost);
//! - jitter: RFC 3550 A.8 per stream, on the RTP timestamp (what a phone
//!   sees, generator scheduling included), and the same estimator on the
//!   payload's actual send time (`path`: what the path alone adds);
//! - the generator's own health: send lateness, skipped slots, send errors,
//!   its receive-buffer drops (`SO_RXQ_OVFL`).
//!
//! # Browsers
//!
//! In browser mode a call's phone side is a WebRTC [`Peer`] on a socket of
//! its own, handed over connected ([`Start::peer`]). Its direction is
//! written through the peer (SRTP, one datagram per packet, not batched)
//! and what it decrypts goes to the same accounting as plain RTP, so the
//! figures of both modes mean the same; the send time in the payload is
//! taken before encryption, so the browser side's latency includes it. The
//! worker drives the peers' timers (ICE keep-alives, RTCP) every
//! [`PEER_TIMER_NS`].

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use crate::clock::{self, MS};
use crate::hist::Histogram;
use crate::net::{Epoll, RawAddr, RecvBatch, SendBatch};
use crate::rtp::{self, Dir, HEADER_LEN, PACKET_LEN, Stamp, TS_STEP};
use crate::webrtc::{Peer, PeerEvent};

/// Slots per cycle.
const SLOTS: u64 = 20;
/// Slot length.
const SLOT_NS: u64 = MS;
/// A slot this late is skipped rather than sent in a burst.
pub const MAX_BEHIND_NS: u64 = 100 * MS;
/// RTP clock of G.711.
const CLOCK_RATE: u64 = 8000;
/// How often the browsers' peers are checked for due timers.
pub const PEER_TIMER_NS: u64 = 2 * MS;

const TOKEN_SHARED_PBX: u64 = 0;
const TOKEN_SHARED_PHONE: u64 = 1;
const TOKEN_OWN_BASE: u64 = 2;

/// How endpoints map to sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SocketMode {
    /// One socket per side per worker, shared by its calls.
    Shared,
    /// One socket per endpoint.
    PerCall,
}

/// The side an endpoint is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The PBX's endpoint: sends [`Dir::PbxToPhone`], receives the other.
    Pbx,
    /// The phone's endpoint.
    Phone,
}

impl Side {
    /// The direction this side receives.
    fn receives(self) -> Dir {
        match self {
            Side::Pbx => Dir::PhoneToPbx,
            Side::Phone => Dir::PbxToPhone,
        }
    }
}

/// A call whose media starts now.
#[derive(Debug)]
pub struct Start {
    /// The call's index in the step.
    pub call: u32,
    /// Where each direction is sent (index: [`Dir::index`]): PBX→phone goes
    /// to the address in the SDP the PBX received, and the other way round.
    pub dest: [SocketAddr; 2],
    /// Per-call sockets, `[pbx, phone]` ([`SocketMode::PerCall`] only).
    pub own: Option<[UdpSocket; 2]>,
    /// The phone side is this browser's peer (connected), not a socket.
    pub peer: Option<Box<Peer>>,
}

/// What the orchestrator asks of a worker.
#[derive(Debug)]
pub enum Cmd {
    /// A new step: calls of earlier steps are forgotten, their late
    /// packets counted as stale.
    Step(u32),
    /// Start a call's two streams.
    Start(Start),
    /// The signalling moved one direction's destination.
    Redirect {
        /// Call index.
        call: u32,
        /// Which direction.
        dir: Dir,
        /// New destination.
        dest: SocketAddr,
    },
    /// Packets sent in `[start, end)` (realtime ns) are measured.
    Window {
        /// Start, `CLOCK_REALTIME` ns.
        start: u64,
        /// End, `CLOCK_REALTIME` ns.
        end: u64,
    },
    /// Stop every stream from sending (receiving goes on).
    StopSending,
    /// Send back the figures of the current window.
    Report(Sender<Report>),
    /// Forget every call and close per-call sockets.
    Clear,
    /// Exit the thread.
    Quit,
}

/// One worker's figures for a window (merged by the orchestrator).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Calls whose streams were started.
    pub calls: u64,
    /// Packets sent with a send time in the window.
    pub sent: u64,
    /// Of those, received (first copy only).
    pub received: u64,
    /// Packets the kernel refused to send (not counted as sent).
    pub send_errors: u64,
    /// Packets not sent because the generator was too late (slot skipped).
    pub skipped: u64,
    /// Datagrams that were not our RTP.
    pub malformed: u64,
    /// Ours but of an earlier step.
    pub stale: u64,
    /// Ours but for a call or direction this endpoint does not receive.
    pub misrouted: u64,
    /// Of the received, later than the late threshold (a phone's jitter
    /// buffer would have dropped them).
    pub late: u64,
    /// Second copies.
    pub duplicates: u64,
    /// Arrived after a later packet of the same stream.
    pub reordered: u64,
    /// Payload type other than 0 (PCMU) on arrival.
    pub wrong_pt: u64,
    /// Receiving streams that got nothing sent in the window.
    pub dead_streams: u64,
    /// Receiving streams.
    pub streams: u64,
    /// Datagrams dropped on the generator's own sockets (buffer full).
    pub rx_drops: u64,
    /// Browser peers that died during the call (ICE disconnected, SRTP error).
    pub peers_gone: u64,
    /// One-way latency, µs.
    pub latency_us: Histogram,
    /// The same per direction (index: [`Dir::index`]).
    pub latency_by_dir_us: [Histogram; 2],
    /// Of the late packets, per direction.
    pub late_by_dir: [u64; 2],
    /// How late packets left against their slot, µs.
    pub lateness_us: Histogram,
    /// Per stream: RFC 3550 jitter at the end of the window, µs.
    pub jitter_us: Histogram,
    /// Per stream: the largest RFC 3550 jitter seen in the window, µs.
    pub jitter_peak_us: Histogram,
    /// Per stream: path jitter (actual send times) at the end, µs.
    pub path_jitter_us: Histogram,
}

impl Report {
    /// Adds another worker's figures.
    pub fn merge(&mut self, o: &Report) {
        self.calls += o.calls;
        self.sent += o.sent;
        self.received += o.received;
        self.late += o.late;
        self.send_errors += o.send_errors;
        self.skipped += o.skipped;
        self.malformed += o.malformed;
        self.stale += o.stale;
        self.misrouted += o.misrouted;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.wrong_pt += o.wrong_pt;
        self.dead_streams += o.dead_streams;
        self.streams += o.streams;
        self.rx_drops += o.rx_drops;
        self.peers_gone += o.peers_gone;
        self.latency_us.merge(&o.latency_us);
        for d in 0..2 {
            self.latency_by_dir_us[d].merge(&o.latency_by_dir_us[d]);
            self.late_by_dir[d] += o.late_by_dir[d];
        }
        self.lateness_us.merge(&o.lateness_us);
        self.jitter_us.merge(&o.jitter_us);
        self.jitter_peak_us.merge(&o.jitter_peak_us);
        self.path_jitter_us.merge(&o.path_jitter_us);
    }
}

#[derive(Clone, Copy, Debug)]
struct Tx {
    ssrc: u32,
    seq: u32,
    ts0: u32,
    dest: RawAddr,
}

#[derive(Clone, Copy, Debug, Default)]
struct Rx {
    started: bool,
    highest: u32,
    /// Previous transit in RTP units (arrival − timestamp, wrapping), for RFC 3550.
    transit: u32,
    jitter: f64,
    peak: f64,
    /// Previous transit in ns (arrival − send time in the payload).
    path_transit: i64,
    path_jitter: f64,
    in_window: u64,
}

#[derive(Debug)]
struct CallSlot {
    active: bool,
    sending: bool,
    tx: [Tx; 2],
    rx: [Rx; 2],
    /// Socket tokens of the PBX and phone endpoints.
    tokens: [u64; 2],
}

/// What an own endpoint is.
enum Endpoint {
    /// A plain RTP socket.
    Plain(UdpSocket),
    /// A browser's WebRTC peer (its socket inside).
    Browser(Box<Peer>),
}

struct OwnSock {
    ep: Endpoint,
    local: u32,
    side: Side,
}

impl OwnSock {
    fn fd(&self) -> RawFd {
        match &self.ep {
            Endpoint::Plain(s) => s.as_raw_fd(),
            Endpoint::Browser(p) => p.socket().as_raw_fd(),
        }
    }
}

/// A media thread's state. Run it with [`Worker::run`].
pub struct Worker {
    id: u32,
    workers: u32,
    late_us: u64,
    epoll: Epoll,
    shared: [UdpSocket; 2],
    own: Vec<Option<OwnSock>>,
    /// Last `SO_RXQ_OVFL` value per socket token (shared: 0, 1; own: 2..).
    drops: Vec<u32>,
    drops_at_window: u64,
    calls: Vec<CallSlot>,
    slots: Vec<Vec<(u32, Dir)>>,
    cycle0: u64,
    next_slot: u64,
    step: u32,
    window: (u64, u64),
    report: Report,
    sends: [SendBatch; 2],
    recv: RecvBatch,
    rx: Receiver<Cmd>,
    /// Tokens of the own endpoints that are browsers.
    peer_tokens: Vec<u64>,
    next_peer_timers: u64,
    /// (token, arrival, event), reused across timer runs.
    peer_events: Vec<(u64, u64, PeerEvent)>,
}

impl Worker {
    /// A worker with its two shared sockets (their addresses are what the
    /// SDP of its calls names in [`SocketMode::Shared`]).
    pub fn new(
        id: u32,
        workers: u32,
        batch_size: usize,
        late_us: u64,
        shared: [UdpSocket; 2],
        rx: Receiver<Cmd>,
    ) -> std::io::Result<Worker> {
        let epoll = Epoll::new(1024)?;
        epoll.add(shared[0].as_raw_fd(), TOKEN_SHARED_PBX)?;
        epoll.add(shared[1].as_raw_fd(), TOKEN_SHARED_PHONE)?;
        let now = clock::mono_ns();
        Ok(Worker {
            id,
            workers: workers.max(1),
            late_us,
            epoll,
            shared,
            own: Vec::new(),
            drops: vec![0, 0],
            drops_at_window: 0,
            calls: Vec::new(),
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cycle0: now,
            next_slot: 0,
            step: 0,
            window: (u64::MAX, u64::MAX),
            report: Report::default(),
            sends: [SendBatch::new(batch_size), SendBatch::new(batch_size)],
            recv: RecvBatch::new(64),
            rx,
            peer_tokens: Vec::new(),
            next_peer_timers: now,
            peer_events: Vec::new(),
        })
    }

    /// The thread's loop, until [`Cmd::Quit`] or the channel closes.
    pub fn run(mut self) {
        let mut ready = Vec::with_capacity(1024);
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(Cmd::Quit) | Err(TryRecvError::Disconnected) => return,
                    Ok(cmd) => self.handle_cmd(cmd),
                    Err(TryRecvError::Empty) => break,
                }
            }
            // Everything that arrived since the last slot, then the slot.
            loop {
                if let Err(e) = self.epoll.ready(&mut ready) {
                    eprintln!("worker {}: epoll: {e}", self.id);
                    return;
                }
                for &token in &ready {
                    self.drain(token);
                }
                if ready.len() < 1024 {
                    break;
                }
            }
            self.run_slots(clock::mono_ns());
            self.run_peer_timers(clock::mono_ns());
            let next = if self.calls.is_empty() { clock::mono_ns() + 5 * MS } else { self.slot_time(self.next_slot) };
            clock::sleep_until(next);
        }
    }

    fn slot_time(&self, k: u64) -> u64 {
        self.cycle0 + k * SLOT_NS
    }

    fn handle_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Step(step) => {
                self.clear();
                self.step = step;
            }
            Cmd::Start(s) => self.start(s),
            Cmd::Redirect { call, dir, dest } => {
                if let Some(c) = self.local(call).and_then(|l| self.calls.get_mut(l as usize)) {
                    c.tx[dir.index()].dest = RawAddr::new(dest);
                }
            }
            Cmd::Window { start, end } => {
                self.window = (start, end);
                let calls = self.report.calls;
                self.report = Report { calls, ..Report::default() };
                self.drops_at_window = self.drops.iter().map(|&d| u64::from(d)).sum();
                for c in &mut self.calls {
                    for r in &mut c.rx {
                        r.in_window = 0;
                        r.peak = r.jitter;
                    }
                }
            }
            Cmd::StopSending => {
                for c in &mut self.calls {
                    c.sending = false;
                }
                for s in &mut self.slots {
                    s.clear();
                }
            }
            Cmd::Report(reply) => {
                // What already arrived counts, however late this thread runs.
                let mut ready = Vec::new();
                if self.epoll.ready(&mut ready).is_ok() {
                    for token in ready {
                        self.drain(token);
                    }
                }
                let _ = reply.send(self.snapshot());
            }
            Cmd::Clear => self.clear(),
            Cmd::Quit => {}
        }
    }

    fn clear(&mut self) {
        for s in &mut self.slots {
            s.clear();
        }
        self.calls.clear();
        for o in self.own.drain(..).flatten() {
            self.epoll.remove(o.fd());
        }
        self.peer_tokens.clear();
        self.drops.truncate(2);
        self.report = Report::default();
        self.window = (u64::MAX, u64::MAX);
    }

    fn local(&self, call: u32) -> Option<u32> {
        (call % self.workers == self.id).then_some(call / self.workers)
    }

    fn start(&mut self, s: Start) {
        let Some(local) = self.local(s.call) else { return };
        let mut tokens = [TOKEN_SHARED_PBX, TOKEN_SHARED_PHONE];
        if let Some(own) = s.own {
            for (i, (sock, side)) in own.into_iter().zip([Side::Pbx, Side::Phone]).enumerate() {
                if i == 1 && s.peer.is_some() {
                    continue; // the browser's own socket is the phone side
                }
                let token = TOKEN_OWN_BASE + self.own.len() as u64;
                if self.epoll.add(sock.as_raw_fd(), token).is_err() {
                    continue;
                }
                self.own.push(Some(OwnSock { ep: Endpoint::Plain(sock), local, side }));
                self.drops.push(0);
                tokens[i] = token;
            }
        }
        if let Some(peer) = s.peer {
            let token = TOKEN_OWN_BASE + self.own.len() as u64;
            if self.epoll.add(peer.socket().as_raw_fd(), token).is_ok() {
                self.own.push(Some(OwnSock { ep: Endpoint::Browser(peer), local, side: Side::Phone }));
                self.drops.push(0);
                self.peer_tokens.push(token);
                tokens[1] = token;
            }
        }
        let l = local as usize;
        while self.calls.len() <= l {
            self.calls.push(CallSlot {
                active: false,
                sending: false,
                tx: [Tx { ssrc: 0, seq: 0, ts0: 0, dest: RawAddr::new(s.dest[0]) }; 2],
                rx: [Rx::default(); 2],
                tokens: [TOKEN_SHARED_PBX, TOKEN_SHARED_PHONE],
            });
        }
        let seed = splitmix(u64::from(self.step) << 32 | u64::from(s.call));
        let c = &mut self.calls[l];
        if c.active {
            return;
        }
        c.active = true;
        c.sending = true;
        c.tokens = tokens;
        for d in Dir::BOTH {
            let r = splitmix(seed ^ d as u64);
            c.tx[d.index()] =
                Tx { ssrc: r as u32, seq: 0, ts0: (r >> 32) as u32, dest: RawAddr::new(s.dest[d.index()]) };
            c.rx[d.index()] = Rx::default();
            let slot = (u64::from(local) * 7 + d as u64 * SLOTS / 2) % SLOTS;
            self.slots[slot as usize].push((local, d));
        }
        self.report.calls += 1;
    }

    fn fd_of(&self, token: u64) -> Option<RawFd> {
        match token {
            TOKEN_SHARED_PBX => Some(self.shared[0].as_raw_fd()),
            TOKEN_SHARED_PHONE => Some(self.shared[1].as_raw_fd()),
            t => self.own.get((t - TOKEN_OWN_BASE) as usize)?.as_ref().map(OwnSock::fd),
        }
    }

    /// Sends every slot that is due.
    fn run_slots(&mut self, now: u64) {
        while self.slot_time(self.next_slot) <= now {
            let k = self.next_slot;
            self.next_slot += 1;
            let due = self.slot_time(k);
            let list = std::mem::take(&mut self.slots[(k % SLOTS) as usize]);
            if now - due > MAX_BEHIND_NS {
                let n = list.iter().filter(|&&(l, _)| self.calls.get(l as usize).is_some_and(|c| c.sending)).count();
                self.report.skipped += n as u64;
            } else {
                self.send_slot(&list, due);
            }
            self.slots[(k % SLOTS) as usize] = list;
        }
    }

    fn send_slot(&mut self, list: &[(u32, Dir)], due: u64) {
        // Batches by socket: shared mode fills one batch per side; per-call
        // mode flushes whenever the socket changes.
        let mut current: [Option<u64>; 2] = [None, None];
        for &(local, dir) in list {
            let side = match dir {
                Dir::PbxToPhone => 0,
                Dir::PhoneToPbx => 1,
            };
            let token = match self.calls.get(local as usize) {
                Some(c) if c.sending => c.tokens[side],
                _ => continue,
            };
            if self.peer_tokens.contains(&token) {
                self.send_browser(local, dir, token, due);
                continue;
            }
            if current[side].is_some_and(|t| t != token) || self.sends[side].is_full() {
                self.flush(side, current[side], due);
            }
            current[side] = Some(token);
            let Some(c) = self.calls.get_mut(local as usize) else { continue };
            let tx = &mut c.tx[dir.index()];
            let seq = tx.seq;
            tx.seq = tx.seq.wrapping_add(1);
            let ts = tx.ts0.wrapping_add(seq.wrapping_mul(TS_STEP));
            let stamp = Stamp { step: self.step, call: local * self.workers + self.id, dir, seq, sent_ns: 0 };
            let (ssrc, dest) = (tx.ssrc, tx.dest);
            if let Some(buf) = self.sends[side].push(&dest) {
                rtp::write_packet(buf, ssrc, ts, seq == 0, &stamp);
            }
        }
        for (side, token) in current.into_iter().enumerate() {
            self.flush(side, token, due);
        }
    }

    fn flush(&mut self, side: usize, token: Option<u64>, due: u64) {
        let batch = &mut self.sends[side];
        let n = batch.len();
        if n == 0 {
            return;
        }
        let Some(fd) = token.and_then(|t| self.fd_of(t)) else {
            self.report.send_errors += n as u64;
            self.sends[side].clear();
            return;
        };
        let batch = &mut self.sends[side];
        let sent_at = clock::real_ns();
        for p in batch.packets_mut() {
            rtp::restamp(p, sent_at);
        }
        let late_us = clock::mono_ns().saturating_sub(due) / 1000;
        let ok = batch.send(fd) as u64;
        self.report.send_errors += n as u64 - ok;
        if (self.window.0..self.window.1).contains(&sent_at) {
            self.report.sent += ok;
            for _ in 0..ok {
                self.report.lateness_us.record(late_us);
            }
        }
    }

    /// One packet of a browser's direction, through its peer.
    fn send_browser(&mut self, local: u32, dir: Dir, token: u64, due: u64) {
        let Some(c) = self.calls.get_mut(local as usize) else { return };
        let tx = &mut c.tx[dir.index()];
        let seq = tx.seq;
        tx.seq = tx.seq.wrapping_add(1);
        let ts = tx.ts0.wrapping_add(seq.wrapping_mul(TS_STEP));
        let sent_at = clock::real_ns();
        let stamp = Stamp { step: self.step, call: local * self.workers + self.id, dir, seq, sent_ns: sent_at };
        let mut buf = [0u8; PACKET_LEN];
        rtp::write_packet(&mut buf, 0, ts, seq == 0, &stamp);
        let mono = clock::mono_ns();
        let Some(Some(OwnSock { ep: Endpoint::Browser(peer), .. })) =
            self.own.get_mut((token - TOKEN_OWN_BASE) as usize)
        else {
            self.report.send_errors += 1;
            return;
        };
        let errors = peer.send_errors;
        let mut events = Vec::new();
        let written = peer.write_rtp(
            clock::instant_at(mono),
            rtp::PT_PCMU,
            u64::from(seq),
            ts,
            seq == 0,
            &buf[HEADER_LEN..],
            &mut events,
        );
        let ok = written && peer.send_errors == errors;
        if !ok {
            self.report.send_errors += 1;
        } else if (self.window.0..self.window.1).contains(&sent_at) {
            self.report.sent += 1;
            self.report.lateness_us.record(mono.saturating_sub(due) / 1000);
        }
        for ev in events {
            self.peer_event(token, clock::real_ns(), ev);
        }
    }

    /// What a browser's peer said (`arrival`: of the datagram that carried it).
    fn peer_event(&mut self, token: u64, arrival: u64, ev: PeerEvent) {
        let owner = self.own.get((token - TOKEN_OWN_BASE) as usize).and_then(Option::as_ref).map(|o| o.local);
        match ev {
            PeerEvent::Rtp(pkt) => match rtp::read_packet(&pkt) {
                Err(_) => self.report.malformed += 1,
                Ok(p) => self.account(Side::Phone, owner, arrival, p),
            },
            PeerEvent::Gone(why) => {
                self.report.peers_gone += 1;
                eprintln!("worker {}: browser peer of call {owner:?} gone: {why}", self.id);
            }
            PeerEvent::Connected => {}
        }
    }

    /// Runs the timers of the browsers' peers that are due.
    fn run_peer_timers(&mut self, now: u64) {
        if now < self.next_peer_timers || self.peer_tokens.is_empty() {
            return;
        }
        self.next_peer_timers = now + PEER_TIMER_NS;
        let at = clock::instant_at(now);
        let mut events = std::mem::take(&mut self.peer_events);
        for i in 0..self.peer_tokens.len() {
            let token = self.peer_tokens[i];
            let Some(Some(OwnSock { ep: Endpoint::Browser(peer), .. })) =
                self.own.get_mut((token - TOKEN_OWN_BASE) as usize)
            else {
                continue;
            };
            if peer.timeout().is_some_and(|t| t <= at) {
                let mut evs = Vec::new();
                peer.handle_timeout(at, &mut evs);
                let now_rt = clock::real_ns();
                events.extend(evs.into_iter().map(|ev| (token, now_rt, ev)));
            }
        }
        for (token, arrival, ev) in events.drain(..) {
            self.peer_event(token, arrival, ev);
        }
        self.peer_events = events;
    }

    /// Reads everything waiting on a browser's socket, through its peer.
    fn drain_browser(&mut self, token: u64, index: usize) {
        let mono = clock::mono_ns();
        let at = clock::instant_at(mono);
        let mut events: Vec<(u64, PeerEvent)> = Vec::new();
        loop {
            let Some(Some(OwnSock { ep: Endpoint::Browser(peer), .. })) = self.own.get_mut(index) else { return };
            let fd = peer.socket().as_raw_fd();
            let n = match self.recv.recv(fd) {
                Ok(n) => n,
                Err(_) => break,
            };
            let fallback_now = clock::real_ns();
            let mut evs = Vec::new();
            for i in 0..n {
                let (Some((bytes, meta)), Some(from)) = (self.recv.get(i), self.recv.source(i)) else { continue };
                if let (Some(d), Some(slot)) = (meta.drops, self.drops.get_mut(token as usize)) {
                    *slot = d;
                }
                let arrival = meta.kernel_ns.unwrap_or(fallback_now);
                peer.handle_datagram(at, from, bytes, &mut evs);
                events.extend(evs.drain(..).map(|e| (arrival, e)));
            }
            if n < self.recv.capacity() {
                break;
            }
        }
        for (arrival, ev) in events {
            self.peer_event(token, arrival, ev);
        }
    }

    /// Reads everything waiting on one socket.
    fn drain(&mut self, token: u64) {
        if token >= TOKEN_OWN_BASE
            && let Some(Some(OwnSock { ep: Endpoint::Browser(_), .. })) =
                self.own.get((token - TOKEN_OWN_BASE) as usize)
        {
            self.drain_browser(token, (token - TOKEN_OWN_BASE) as usize);
            return;
        }
        let Some(fd) = self.fd_of(token) else { return };
        let (side, owner) = match token {
            TOKEN_SHARED_PBX => (Side::Pbx, None),
            TOKEN_SHARED_PHONE => (Side::Phone, None),
            t => match self.own.get((t - TOKEN_OWN_BASE) as usize) {
                Some(Some(o)) => (o.side, Some(o.local)),
                _ => return,
            },
        };
        loop {
            let n = match self.recv.recv(fd) {
                Ok(n) => n,
                Err(_) => return,
            };
            let fallback_now = clock::real_ns();
            for i in 0..n {
                let Some((bytes, meta)) = self.recv.get(i) else { continue };
                if let (Some(d), Some(slot)) = (meta.drops, self.drops.get_mut(token as usize)) {
                    *slot = d;
                }
                let arrival = meta.kernel_ns.unwrap_or(fallback_now);
                match rtp::read_packet(bytes) {
                    Err(_) => self.report.malformed += 1,
                    Ok(p) => self.account(side, owner, arrival, p),
                }
            }
            if n < self.recv.capacity() {
                return;
            }
        }
    }

    fn account(&mut self, side: Side, owner: Option<u32>, arrival: u64, p: rtp::Received) {
        let st = p.stamp;
        if st.step != self.step {
            self.report.stale += 1;
            return;
        }
        let local = match self.local(st.call) {
            Some(l) if st.dir == side.receives() && owner.is_none_or(|o| o == l) => l,
            _ => {
                self.report.misrouted += 1;
                return;
            }
        };
        let Some(c) = self.calls.get_mut(local as usize).filter(|c| c.active) else {
            self.report.misrouted += 1;
            return;
        };
        if p.pt != rtp::PT_PCMU {
            self.report.wrong_pt += 1;
        }
        let r = &mut c.rx[st.dir.index()];
        if r.started && st.seq == r.highest {
            self.report.duplicates += 1;
            return;
        }
        if r.started && st.seq < r.highest {
            self.report.reordered += 1;
        } else {
            r.highest = st.seq;
        }
        // RFC 3550 A.8, on the RTP timestamp (wrapping arithmetic).
        let arrival_units = (u128::from(arrival) * u128::from(CLOCK_RATE) / 1_000_000_000) as u32;
        let transit = arrival_units.wrapping_sub(p.ts);
        let path_transit = arrival as i64 - st.sent_ns as i64;
        if r.started {
            let d = f64::from((transit.wrapping_sub(r.transit) as i32).unsigned_abs());
            r.jitter += (d - r.jitter) / 16.0;
            let pd = (path_transit - r.path_transit).abs() as f64;
            r.path_jitter += (pd - r.path_jitter) / 16.0;
        }
        r.started = true;
        r.transit = transit;
        r.path_transit = path_transit;
        if (self.window.0..self.window.1).contains(&st.sent_ns) {
            r.in_window += 1;
            r.peak = r.peak.max(r.jitter);
            self.report.received += 1;
            let latency_us = arrival.saturating_sub(st.sent_ns) / 1000;
            if latency_us > self.late_us {
                self.report.late += 1;
                self.report.late_by_dir[st.dir.index()] += 1;
            }
            self.report.latency_us.record(latency_us);
            self.report.latency_by_dir_us[st.dir.index()].record(latency_us);
        }
    }

    fn snapshot(&self) -> Report {
        let mut rep = self.report.clone();
        let units_to_us = 1_000_000.0 / CLOCK_RATE as f64;
        for c in self.calls.iter().filter(|c| c.active) {
            for r in &c.rx {
                rep.streams += 1;
                if r.in_window == 0 {
                    rep.dead_streams += 1;
                }
                rep.jitter_us.record((r.jitter * units_to_us) as u64);
                rep.jitter_peak_us.record((r.peak * units_to_us) as u64);
                rep.path_jitter_us.record((r.path_jitter / 1000.0) as u64);
            }
        }
        let drops: u64 = self.drops.iter().map(|&d| u64::from(d)).sum();
        rep.rx_drops = drops.saturating_sub(self.drops_at_window);
        rep
    }
}

/// A well-mixed 64-bit value from a counter (SSRCs, timestamp bases).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Two calls whose sides send to each other directly (no relay): every
    /// packet sent in the window comes back once, none is stale or
    /// misrouted, and the figures have the right shape.
    #[test]
    fn direct_calls_lose_nothing() {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let bind = || crate::net::bind_udp(lo, Some(1 << 20), true).expect("bind");
        let shared = [bind(), bind()];
        let addrs = [shared[0].local_addr().expect("addr"), shared[1].local_addr().expect("addr")];
        let (tx, rx) = mpsc::channel();
        let worker = Worker::new(0, 1, 8, 50_000, shared, rx).expect("worker");
        let join = std::thread::spawn(move || worker.run());
        tx.send(Cmd::Step(1)).expect("send");
        for call in 0..2 {
            // PBX→phone goes to the phone endpoint, and back.
            tx.send(Cmd::Start(Start { call, dest: [addrs[1], addrs[0]], own: None, peer: None })).expect("send");
        }
        let start = clock::real_ns() + 20 * MS;
        tx.send(Cmd::Window { start, end: start + 200 * MS }).expect("send");
        std::thread::sleep(std::time::Duration::from_millis(400));
        let (rtx, rrx) = mpsc::channel();
        tx.send(Cmd::Report(rtx)).expect("send");
        let rep = rrx.recv_timeout(std::time::Duration::from_secs(5)).expect("report");
        tx.send(Cmd::Quit).expect("send");
        join.join().expect("join");
        assert_eq!(rep.calls, 2);
        assert_eq!(rep.streams, 4);
        assert!(rep.sent >= 4 * 5, "{} sent", rep.sent + rep.skipped);
        assert_eq!(rep.received, rep.sent);
        assert_eq!(rep.dead_streams, 0);
        assert_eq!((rep.malformed, rep.stale, rep.misrouted, rep.duplicates), (0, 0, 0, 0));
        assert!(rep.latency_us.quantile(0.5) < 50_000);
    }
}
