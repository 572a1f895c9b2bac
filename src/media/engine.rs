//! The relay's driver: a few threads, each owning the sockets of its share
//! of the calls, waiting on them with one epoll and moving packets with
//! batched `recvmmsg`/`sendmmsg` (through `nix`). No task per call, no
//! async runtime: a packet in is a [`RelaySession`] call and a packet out,
//! on the thread that owns both sockets.
//!
//! Calls talk to their thread through [`StreamHandle`] (control messages
//! and an eventfd to wake it); the thread talks back through the stream's
//! event callback (media timeout) and its [`Figures`] (a snapshot it alone
//! writes once per wake-up, read by anyone). Port pairs come from the
//! engine's pools and go back only after their sockets are closed, so a
//! port is never handed out while still bound.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tracing::{debug, warn};

use super::ports::{PortPair, PortPool};
use super::relay::{DirectionStats, Port, RelaySession, Side, Verdict, is_rtcp};
use super::sdp::BROWSER_STAND_IN;
use super::webrtc::{BrowserLeg, BrowserOutput, MediaDirection, NodeCert, Voice, stun_ufrag};
use crate::b2bua::MediaError;
use crate::config::MediaSettings;

/// Packets taken per `recvmmsg`.
const BATCH: usize = 32;
/// Largest datagram relayed (RTP over UDP never comes close to it).
const MTU: usize = 2048;
/// The eventfd's epoll token (socket tokens are slab indexes).
const WAKE: u64 = u64::MAX;
/// The browsers' shared sockets' tokens: this plus the family's index.
const SHARED: u64 = u64::MAX - 4;
/// Longest a browser leg's reply to a control message is waited for.
const BROWSER_REPLY: Duration = Duration::from_secs(2);
/// Longest a relay thread lets packets gather between two waits.
const COALESCE: Duration = Duration::from_micros(500);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(500);

/// Something a stream tells its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// A side sent no RTP and no RTCP for the timeout.
    Timeout,
    /// Browser leg `slot` is gone: ICE lost the browser (consent checks
    /// stopped) or DTLS failed.
    BrowserGone {
        /// The leg.
        slot: u16,
    },
    /// Leg `slot` sent an RFC 4733 digit the other leg cannot take as
    /// RTP: carry it as SIP INFO.
    Dtmf {
        /// The leg it came from.
        slot: u16,
        /// The digit.
        digit: char,
        /// Its length, milliseconds.
        duration_ms: u32,
    },
}

/// The callback a stream reports through (it runs on a relay thread:
/// hand the event over, do not block).
pub type EventSink = Box<dyn FnMut(MediaEvent) + Send>;

/// Address families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// One side's figures: what its leg sent us and what we sent it.
#[derive(Debug, Default, Clone, Copy)]
struct SideFigures {
    rx: DirectionStats,
    sent: Sent,
}

/// A stream's live figures, per side (A: the trunk leg; B: the other).
/// Written by the relay thread once per wake-up, after that wake-up's
/// packets have left, and always as a whole: a reader never sees a packet
/// counted in on one side and not yet out on the other.
#[derive(Debug, Default)]
pub struct Figures {
    sides: Mutex<[SideFigures; 2]>,
    clock_rate: AtomicU64,
}

/// What one leg sent and received, as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LegFigures {
    /// RTP packets received from the leg and relayed or dropped by rule.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Sequence numbers never received from the leg.
    pub rx_lost: u64,
    /// Interarrival jitter of the leg's packets, milliseconds.
    pub rx_jitter_ms: f64,
    /// Packets from strangers on the leg's ports, dropped.
    pub rx_stray: u64,
    /// RTCP packets received from the leg.
    pub rx_rtcp: u64,
    /// RTP packets sent to the leg.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// RTCP packets sent to the leg.
    pub tx_rtcp: u64,
    /// Packets not sent to the leg because it was on hold.
    pub tx_held: u64,
}

impl Figures {
    /// Both legs' figures, from one snapshot: `[A, B]`.
    pub fn legs(&self) -> [LegFigures; 2] {
        let sides = *self.sides.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rate = self.clock_rate.load(Ordering::Relaxed).max(1);
        let leg = |me: &SideFigures, other: &SideFigures| LegFigures {
            rx_packets: me.rx.packets,
            rx_bytes: me.rx.bytes,
            rx_lost: me.rx.lost,
            rx_jitter_ms: (f64::from(me.rx.jitter) * 1000.0 / rate as f64 * 100.0).round() / 100.0,
            rx_stray: me.rx.stray,
            rx_rtcp: me.rx.rtcp_packets,
            tx_packets: me.sent.packets,
            tx_bytes: me.sent.bytes,
            tx_rtcp: me.sent.rtcp,
            tx_held: other.rx.held,
        };
        [leg(&sides[0], &sides[1]), leg(&sides[1], &sides[0])]
    }

    /// Writes what each side received and, where the side still has a
    /// leg, what it was sent (a closed leg keeps its last count).
    fn publish(&self, rx: [DirectionStats; 2], sent: [Option<Sent>; 2]) {
        let mut sides = self.sides.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, side) in sides.iter_mut().enumerate() {
            side.rx = rx[i];
            if let Some(s) = sent[i] {
                side.sent = s;
            }
        }
    }
}

/// A side's settings from one offer/answer.
#[derive(Debug, Clone, Copy)]
pub struct SideUpdate {
    /// Where its peer receives RTP.
    pub rtp: Option<SocketAddr>,
    /// Where it receives RTCP.
    pub rtcp: Option<SocketAddr>,
    /// RTCP on the RTP port.
    pub mux: bool,
    /// It wants media.
    pub receives: bool,
    /// Its payload types in the other side's numbering.
    pub pt_map: [u8; 128],
    /// Payload types that are RFC 4733 events when it sends them.
    pub events_in: [Option<u8>; 2],
    /// The payload type it takes events with (`None`: none, digits go to
    /// it as SIP INFO).
    pub events_out: Option<u8>,
    /// Clock rates of the events it sends and takes.
    pub event_rates: (u32, u32),
}

enum Control {
    Open {
        id: u64,
        events: EventSink,
        figures: Arc<Figures>,
    },
    AddLeg {
        id: u64,
        slot: u16,
        pair: PortPair,
        family: Family,
        rtp: UdpSocket,
        rtcp: UdpSocket,
    },
    /// Which leg is side B (side A is leg 0); a new one starts afresh.
    Connect {
        id: u64,
        slot: u16,
    },
    Update {
        id: u64,
        slot: u16,
        update: SideUpdate,
    },
    /// Stream-wide: clock rate, hold, and whether timeouts are armed.
    Session {
        id: u64,
        clock_rate: u32,
        held: bool,
        armed: bool,
    },
    CloseLeg {
        id: u64,
        slot: u16,
    },
    Close {
        id: u64,
    },
    /// A digit (from SIP INFO) as RFC 4733 packets to leg `slot`.
    Dtmf {
        id: u64,
        slot: u16,
        digit: char,
        duration_ms: u32,
    },
    /// An offer/answer step of browser leg `slot`; the result comes back
    /// on `reply` (the call waits for it: SDP is synchronous).
    Browser {
        id: u64,
        slot: u16,
        op: BrowserOp,
        reply: mpsc::SyncSender<Result<Option<String>, String>>,
    },
}

/// An offer/answer step of a browser leg.
#[derive(Debug)]
pub enum BrowserOp {
    /// Make (or change: direction) our offer; the leg is made on first use
    /// with these codecs, its candidate on `ip` and the shared port.
    Offer {
        /// Voice codecs, in preference order.
        voices: Vec<Voice>,
        /// telephone-event/8000's payload type.
        event_pt: u8,
        /// Our direction toward the browser.
        direction: MediaDirection,
        /// Our address in its candidate.
        ip: IpAddr,
    },
    /// The browser's answer to our offer.
    Answer(String),
    /// The browser's offer: reply with our answer. A browser that calls
    /// out offers first: its leg is made then, with these codecs (the one
    /// the far end chose), its telephone-event type and our candidate's
    /// address.
    AcceptOffer {
        /// The browser's SDP.
        sdp: String,
        /// For a leg not made yet.
        new: Option<(Vec<Voice>, u8, IpAddr)>,
    },
}

struct Pools {
    v4: PortPool,
    v6: PortPool,
}

impl Pools {
    fn of(&mut self, f: Family) -> &mut PortPool {
        match f {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
}

struct Worker {
    tx: mpsc::Sender<Control>,
    wake: Arc<EventFd>,
}

/// The node's RTP relay: port pools and relay threads.
pub struct MediaEngine {
    settings: MediaSettings,
    /// The browsers' shared ports (v4, v6) as bound, per relay thread.
    webrtc_ports: Vec<[Option<u16>; 2]>,
    pools: Arc<Mutex<Pools>>,
    workers: Vec<Worker>,
    next_worker: AtomicUsize,
    next_stream: AtomicU64,
    ports_in_use: Arc<AtomicUsize>,
}

impl std::fmt::Debug for MediaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaEngine").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl MediaEngine {
    /// Starts the relay threads.
    pub fn start(settings: MediaSettings) -> std::io::Result<Arc<MediaEngine>> {
        let pool = || PortPool::new(settings.port_min, settings.port_max).map_err(std::io::Error::other);
        let pools = Arc::new(Mutex::new(Pools { v4: pool()?, v6: pool()? }));
        let ports_in_use = Arc::new(AtomicUsize::new(0));
        // The node's DTLS certificate, and the browsers' ports: one per
        // relay thread and family (`webrtc_port + n`, or any free port), so
        // browser legs spread over the threads like any call's; the IPv6
        // ones only where IPv6 binds.
        let cert = if settings.browsers { Some(NodeCert::generate().map_err(std::io::Error::other)?) } else { None };
        let threads = settings.threads.max(1);
        let mut per_thread: Vec<Vec<SharedPort>> = Vec::new();
        let mut webrtc_ports: Vec<[Option<u16>; 2]> = Vec::new();
        for n in 0..threads {
            let (ports, bound) =
                if settings.browsers { bind_shared(&settings, n)? } else { (Vec::new(), [None, None]) };
            per_thread.push(ports);
            webrtc_ports.push(bound);
        }
        let mut workers = Vec::new();
        for (n, shared) in per_thread.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let wake = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?);
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
            epoll.add(wake.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
            for (i, p) in shared.iter().enumerate() {
                epoll.add(p.sock.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, SHARED + i as u64))?;
            }
            let thread = RelayThread {
                shared,
                cert: cert.clone(),
                by_ufrag: HashMap::new(),
                by_addr: HashMap::new(),
                browser_deadline: None,
                reply_from: HashMap::new(),
                browser_out: Vec::new(),
                epoll,
                wake: wake.clone(),
                rx,
                streams: HashMap::new(),
                sockets: Vec::new(),
                free_tokens: Vec::new(),
                pools: pools.clone(),
                ports_in_use: ports_in_use.clone(),
                timeout: settings.timeout,
                hold_timeout: settings.hold_timeout,
                outs: Vec::with_capacity(BATCH),
                dirty: Vec::new(),
                send_ring: None,
                use_io_uring: settings.io_uring,
            };
            std::thread::Builder::new().name(format!("media-{n}")).spawn(move || thread.run())?;
            workers.push(Worker { tx, wake });
        }
        Ok(Arc::new(MediaEngine {
            settings,
            webrtc_ports,
            pools,
            workers,
            next_worker: AtomicUsize::new(0),
            next_stream: AtomicU64::new(1),
            ports_in_use,
        }))
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &MediaSettings {
        &self.settings
    }

    /// Port pairs bound now (all families).
    pub fn ports_in_use(&self) -> usize {
        self.ports_in_use.load(Ordering::Relaxed)
    }

    /// The browsers' shared ports of `family`, one per relay thread, as
    /// bound.
    pub fn webrtc_ports(&self, family: Family) -> Vec<u16> {
        let i = match family {
            Family::V4 => 0,
            Family::V6 => 1,
        };
        self.webrtc_ports.iter().filter_map(|p| p[i]).collect()
    }

    /// A new stream on the next thread; `events` hears its timeouts. Its
    /// browser legs, if any, take that thread's shared port.
    pub fn open(self: &Arc<Self>, events: EventSink, _browsers: bool) -> StreamHandle {
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len().max(1);
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let figures = Arc::new(Figures::default());
        let h = StreamHandle { engine: self.clone(), worker, id, figures: figures.clone(), closed: false };
        h.send(Control::Open { id, events, figures });
        h
    }

    /// Takes a pair of `family` and binds its two sockets, trying further
    /// pairs when one is taken by another program. `PortsExhausted` when
    /// none is left.
    fn bind_pair(&self, family: Family) -> Result<(PortPair, UdpSocket, UdpSocket), MediaError> {
        let ip: IpAddr = match family {
            Family::V4 => self.settings.bind_v4.into(),
            Family::V6 => self.settings.bind_v6.into(),
        };
        let mut pools = self.pools.lock().map_err(|_| MediaError::PortsExhausted)?;
        let pool = pools.of(family);
        let mut busy = Vec::new();
        let mut result = Err(MediaError::PortsExhausted);
        // A handful of attempts: ports another program holds are skipped
        // (and go to the back of the queue).
        for _ in 0..32 {
            let Ok(pair) = pool.take() else { break };
            match (bind(ip, pair.rtp), bind(ip, pair.rtcp())) {
                (Ok(a), Ok(b)) => {
                    result = Ok((pair, a, b));
                    break;
                }
                _ => busy.push(pair),
            }
        }
        for p in busy {
            pool.give_back(p);
        }
        if result.is_ok() {
            self.ports_in_use.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Relay thread `n`'s browser ports: `webrtc_port + n` (any free port when
/// `webrtc_port` is 0), IPv4 and, where it binds, IPv6.
fn bind_shared(settings: &MediaSettings, n: usize) -> std::io::Result<(Vec<SharedPort>, [Option<u16>; 2])> {
    let mut shared = Vec::new();
    let mut bound = [None, None];
    let port = if settings.webrtc_port == 0 {
        0
    } else {
        u16::try_from(usize::from(settings.webrtc_port) + n)
            .map_err(|_| std::io::Error::other("browsers' ports: webrtc_port + threads passes 65535"))?
    };
    for (i, ip) in [IpAddr::from(settings.bind_v4), IpAddr::from(settings.bind_v6)].into_iter().enumerate() {
        match bind(ip, port) {
            Ok(sock) => {
                bound[i] = Some(sock.local_addr()?.port());
                let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 * 1024 * 1024);
                let pktinfo = ip.is_unspecified()
                    && if i == 0 {
                        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv4PacketInfo, &true).is_ok()
                    } else {
                        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Ipv6RecvPacketInfo, &true)
                            .is_ok()
                    };
                let family = if i == 0 { Family::V4 } else { Family::V6 };
                shared.push(SharedPort { sock, family, pktinfo });
            }
            Err(e) if i == 0 => {
                return Err(std::io::Error::new(e.kind(), format!("browsers' shared port {ip}:{port}: {e}")));
            }
            Err(e) => warn!(error = %e, "no IPv6 port for browsers"),
        }
    }
    Ok((shared, bound))
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if ip.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if ip.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(ip, port).into())?;
    Ok(s.into())
}

/// A call's stream on its relay thread. Dropping it closes the stream (its
/// sockets closed, its ports back in the pool).
pub struct StreamHandle {
    engine: Arc<MediaEngine>,
    worker: usize,
    id: u64,
    figures: Arc<Figures>,
    closed: bool,
}

impl std::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle").field("id", &self.id).finish_non_exhaustive()
    }
}

impl StreamHandle {
    fn send(&self, c: Control) {
        let Some(w) = self.engine.workers.get(self.worker) else { return };
        if w.tx.send(c).is_ok() {
            let _ = w.wake.write(1);
        }
    }

    /// Binds a port pair of `family` for leg `slot` and hands it to the
    /// relay thread.
    pub fn add_leg(&self, slot: u16, family: Family) -> Result<PortPair, MediaError> {
        let (pair, rtp, rtcp) = self.engine.bind_pair(family)?;
        self.send(Control::AddLeg { id: self.id, slot, pair, family, rtp, rtcp });
        Ok(pair)
    }

    /// Leg `slot` is side B from now on.
    pub fn connect(&self, slot: u16) {
        self.send(Control::Connect { id: self.id, slot });
    }

    /// Leg `slot`'s settings from its latest description.
    pub fn update(&self, slot: u16, update: SideUpdate) {
        self.send(Control::Update { id: self.id, slot, update });
    }

    /// Stream-wide settings.
    pub fn session(&self, clock_rate: u32, held: bool, armed: bool) {
        self.send(Control::Session { id: self.id, clock_rate, held, armed });
    }

    /// Sends `digit` to leg `slot` as RFC 4733 packets.
    pub fn send_dtmf(&self, slot: u16, digit: char, duration_ms: u32) {
        self.send(Control::Dtmf { id: self.id, slot, digit, duration_ms });
    }

    /// An offer/answer step of browser leg `slot`, done on its thread.
    pub fn browser(&self, slot: u16, op: BrowserOp) -> Result<Option<String>, MediaError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Control::Browser { id: self.id, slot, op, reply });
        match answer.recv_timeout(BROWSER_REPLY) {
            Ok(Ok(sdp)) => Ok(sdp),
            Ok(Err(detail)) => Err(MediaError::Unusable { detail }),
            Err(_) => Err(MediaError::Unusable { detail: "the media thread did not answer".into() }),
        }
    }

    /// Leg `slot` is gone: its sockets close, its ports go back.
    pub fn close_leg(&self, slot: u16) {
        self.send(Control::CloseLeg { id: self.id, slot });
    }

    /// The live figures.
    pub fn figures(&self) -> &Arc<Figures> {
        &self.figures
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            self.send(Control::Close { id: self.id });
        }
    }
}

// ------------------------------------------------------------ the thread

struct LegSockets {
    pair: PortPair,
    family: Family,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    tokens: [u64; 2],
    sent: Sent,
}

/// What a leg was sent.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    packets: u64,
    bytes: u64,
    rtcp: u64,
}

impl Sent {
    fn add(&mut self, len: usize, rtcp: bool) {
        if rtcp {
            self.rtcp += 1;
        } else {
            self.packets += 1;
            self.bytes += len as u64;
        }
    }
}

/// A browser's leg, on its call's relay thread (which owns the shared port
/// its candidate names).
struct BrowserSide {
    leg: BrowserLeg,
    sent: Sent,
    /// When the leg wants its timeout handled.
    deadline: Option<Instant>,
}

/// One of the browsers' shared sockets.
struct SharedPort {
    sock: UdpSocket,
    family: Family,
    /// Bound to the unspecified address: each datagram's destination is
    /// read (IP_PKTINFO) and replies leave from it, else a host with
    /// several addresses answers from another one than the browser sent
    /// to, and the browser's ICE drops the answers.
    pktinfo: bool,
}

struct Stream {
    relay: RelaySession,
    legs: HashMap<u16, LegSockets>,
    browsers: HashMap<u16, BrowserSide>,
    /// The leg that is side B.
    b: Option<u16>,
    events: EventSink,
    figures: Arc<Figures>,
    held: bool,
    /// Since when timeouts count (None: not armed).
    armed: Option<Instant>,
    timed_out: bool,
    /// Its figures changed in this wake-up and are published at its end.
    dirty: bool,
}

impl Stream {
    /// Publishes both sides' figures as one snapshot.
    fn publish(&self) {
        let sent = |side: Side| {
            let slot = self.slot_of(side)?;
            self.legs.get(&slot).map(|l| l.sent).or_else(|| self.browsers.get(&slot).map(|b| b.sent))
        };
        self.figures.publish([self.relay.stats(Side::A), self.relay.stats(Side::B)], [sent(Side::A), sent(Side::B)]);
    }

    fn side_of(&self, slot: u16) -> Option<Side> {
        if slot == 0 {
            Some(Side::A)
        } else if self.b == Some(slot) {
            Some(Side::B)
        } else {
            None
        }
    }

    fn slot_of(&self, side: Side) -> Option<u16> {
        match side {
            Side::A => Some(0),
            Side::B => self.b,
        }
    }
}

#[derive(Clone, Copy)]
struct SockRef {
    stream: u64,
    slot: u16,
    port: Port,
}

struct RelayThread {
    /// This thread's browser sockets (its own port per family).
    shared: Vec<SharedPort>,
    /// The node's DTLS certificate (only when browsers can reach the node).
    cert: Option<NodeCert>,
    /// Browser legs by ICE username fragment, and by address once known.
    by_ufrag: HashMap<String, (u64, u16)>,
    by_addr: HashMap<SocketAddr, (u64, u16)>,
    /// The earliest browser leg timeout.
    browser_deadline: Option<Instant>,
    /// The address each browser sent to (shared ports bound to the
    /// unspecified address): replies leave from it.
    reply_from: HashMap<SocketAddr, IpAddr>,
    browser_out: Vec<BrowserOutput>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    rx: mpsc::Receiver<Control>,
    streams: HashMap<u64, Stream>,
    sockets: Vec<Option<SockRef>>,
    free_tokens: Vec<u64>,
    pools: Arc<Mutex<Pools>>,
    ports_in_use: Arc<AtomicUsize>,
    timeout: Option<Duration>,
    hold_timeout: Option<Duration>,
    /// The current batch's packets to send (kept: no allocation per batch).
    outs: Vec<Out>,
    /// Streams whose figures changed in this wake-up.
    dirty: Vec<u64>,
    /// Sends of a whole wake-up in one submission (None: no io_uring).
    send_ring: Option<SendRing>,
    use_io_uring: bool,
}

/// Packets queued during one wake-up of a relay thread, from any of its
/// sockets, sent with one `io_uring_enter`: the sends that `sendmmsg` can
/// only batch per socket (and every leg sends from its own port) are
/// batched across sockets here. Buffers and addresses live in the ring
/// until their completions are reaped.
struct SendRing {
    ring: io_uring::IoUring,
    bufs: Vec<[u8; MTU]>,
    addrs: Vec<SockaddrStorage>,
    /// Per queued packet: its socket, length, stream, side and kind.
    queued: Vec<(i32, usize, u64, Side, bool)>,
}

/// Packets a send ring holds before it must be flushed.
const SEND_RING: usize = 256;

impl SendRing {
    fn new() -> std::io::Result<SendRing> {
        let ring = io_uring::IoUring::new(u32::try_from(SEND_RING).unwrap_or(256))?;
        Ok(SendRing {
            ring,
            bufs: vec![[0u8; MTU]; SEND_RING],
            addrs: Vec::with_capacity(SEND_RING),
            queued: Vec::with_capacity(SEND_RING),
        })
    }

    fn room(&self) -> usize {
        SEND_RING - self.queued.len()
    }

    fn push(&mut self, o: &Out, data: &[u8], stream: u64) {
        let i = self.queued.len();
        if i >= SEND_RING {
            return;
        }
        self.bufs[i][..data.len()].copy_from_slice(data);
        self.addrs.push(o.to);
        self.queued.push((o.fd, data.len(), stream, o.side, o.rtcp));
    }

    /// Submits every queued send, waits for their completions, and calls
    /// `sent` for each that left.
    fn flush(&mut self, mut sent: impl FnMut(u64, Side, usize, bool)) {
        use nix::sys::socket::SockaddrLike;
        let n = self.queued.len();
        if n == 0 {
            return;
        }
        {
            let mut sq = self.ring.submission();
            for (i, &(fd, len, ..)) in self.queued.iter().enumerate() {
                let addr = &self.addrs[i];
                let e = io_uring::opcode::Send::new(io_uring::types::Fd(fd), self.bufs[i].as_ptr(), len as u32)
                    .dest_addr(addr.as_ptr())
                    .dest_addr_len(addr.len())
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer and the address stay in `self` until
                // this flush has reaped every completion below.
                if unsafe { sq.push(&e) }.is_err() {
                    break;
                }
            }
        }
        let mut done = 0;
        let mut failures = 0;
        while done < n {
            if let Err(e) = self.ring.submit_and_wait(n - done) {
                // Interrupted: wait again. Anything else (the ring is
                // broken): give up this batch; the packets are lost as on
                // a full socket buffer.
                failures += 1;
                if e.kind() != std::io::ErrorKind::Interrupted || failures > 3 {
                    warn!(error = %e, "media sends not submitted");
                    break;
                }
                continue;
            }
            for cqe in self.ring.completion() {
                done += 1;
                if cqe.result() >= 0
                    && let Some(&(_, len, stream, side, rtcp)) =
                        usize::try_from(cqe.user_data()).ok().and_then(|i| self.queued.get(i))
                {
                    sent(stream, side, len, rtcp);
                }
            }
        }
        self.queued.clear();
        self.addrs.clear();
    }
}

/// One packet to send: from which socket, to where, which buffer.
struct Out {
    fd: i32,
    to: SockaddrStorage,
    buf: usize,
    len: usize,
    side: Side,
    rtcp: bool,
}

impl RelayThread {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut bufs = vec![[0u8; MTU]; BATCH];
        // Made here and kept: they hold raw pointers, so they never leave
        // this thread.
        let mut rx_headers: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(BATCH, None);
        let mut tx_headers: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(BATCH, None);
        let mut next_tick = crate::clock::instant() + TICK;
        self.send_ring = match self.use_io_uring.then(SendRing::new) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                warn!(error = %e, "no io_uring: media packets leave by sendmmsg per socket");
                None
            }
            None => None,
        };
        loop {
            let now = crate::clock::instant();
            let wake_at = self.browser_deadline.map_or(next_tick, |d| d.min(next_tick));
            let wait = wake_at.saturating_duration_since(now);
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            let n = match self.epoll.wait(&mut events, EpollTimeout::from(ms)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => {
                    warn!(error = %e, "media thread: epoll failed");
                    std::thread::sleep(Duration::from_millis(10));
                    0
                }
            };
            let woke = crate::clock::instant();
            for ev in &events[..n] {
                let token = ev.data();
                if token == WAKE {
                    let _ = self.wake.read();
                    if !self.control() {
                        return;
                    }
                } else if token >= SHARED {
                    self.shared_readable((token - SHARED) as usize, &mut bufs, &mut rx_headers);
                } else {
                    self.readable(token, &mut bufs, &mut rx_headers, &mut tx_headers);
                }
            }
            self.flush_sends();
            let now = crate::clock::instant();
            if self.browser_deadline.is_some_and(|d| now >= d) {
                self.browser_timeouts(now);
            }
            self.publish_dirty();
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
            // Let packets gather before the next wait: one wake-up then
            // serves many sockets (and many packets per socket under load)
            // instead of one wake-up, and one context switch, per packet.
            // Costs at most COALESCE of added latency.
            if n > 0 && n < events.len() {
                let spent = crate::clock::instant().saturating_duration_since(woke);
                if let Some(rest) = COALESCE.checked_sub(spent) {
                    std::thread::sleep(rest);
                }
            }
        }
    }

    /// Runs queued control messages; false once the engine is gone.
    fn control(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.apply(c),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    let ids: Vec<u64> = self.streams.keys().copied().collect();
                    for id in ids {
                        self.close(id);
                    }
                    return false;
                }
            }
        }
    }

    fn apply(&mut self, c: Control) {
        let now = crate::clock::instant();
        match c {
            Control::Open { id, events, figures } => {
                let ssrcs = [random_u32(), random_u32()];
                figures.clock_rate.store(8000, Ordering::Relaxed);
                self.streams.insert(
                    id,
                    Stream {
                        relay: RelaySession::new(now, ssrcs, 8000),
                        legs: HashMap::new(),
                        browsers: HashMap::new(),
                        b: None,
                        events,
                        figures,
                        held: false,
                        armed: None,
                        timed_out: false,
                        dirty: false,
                    },
                );
            }
            Control::AddLeg { id, slot, pair, family, rtp, rtcp } => {
                if !self.streams.contains_key(&id) {
                    // The call's media closed before its sockets arrived.
                    drop((rtp, rtcp));
                    self.give_back(family, pair);
                    self.ports_in_use.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                let t_rtp = self.register(&rtp, SockRef { stream: id, slot, port: Port::Rtp });
                let t_rtcp = self.register(&rtcp, SockRef { stream: id, slot, port: Port::Rtcp });
                let leg = LegSockets { pair, family, rtp, rtcp, tokens: [t_rtp, t_rtcp], sent: Sent::default() };
                let old = self.streams.get_mut(&id).and_then(|s| s.legs.insert(slot, leg));
                if let Some(old) = old {
                    self.drop_leg(old);
                }
            }
            Control::Connect { id, slot } => {
                let Some(s) = self.streams.get_mut(&id) else { return };
                if s.b != Some(slot) {
                    s.b = Some(slot);
                    s.relay.reset_side(Side::B);
                }
            }
            Control::Update { id, slot, update } => {
                let Some(s) = self.streams.get_mut(&id) else { return };
                let Some(side) = s.side_of(slot) else { return };
                s.relay.expect(side, update.rtp);
                s.relay.expect_rtcp(side, update.rtcp, update.mux);
                s.relay.set_receives(side, update.receives);
                s.relay.set_payload_map(side, update.pt_map);
                s.relay.set_events(side, update.events_in, update.events_out);
                s.relay.set_event_rates(side, update.event_rates.0, update.event_rates.1);
            }
            Control::Session { id, clock_rate, held, armed } => {
                let Some(s) = self.streams.get_mut(&id) else { return };
                s.relay.set_clock_rate(clock_rate);
                s.figures.clock_rate.store(u64::from(clock_rate.max(1)), Ordering::Relaxed);
                s.held = held;
                // Re-arming restarts the count: a new offer/answer gives
                // the peers a fresh chance to start sending.
                s.armed = armed.then_some(now);
                s.timed_out = false;
            }
            Control::Browser { id, slot, op, reply } => {
                let r = self.browser_op(now, id, slot, op);
                let _ = reply.try_send(r);
            }
            Control::CloseLeg { id, slot } => {
                let browser = self.streams.get_mut(&id).and_then(|s| s.browsers.remove(&slot));
                if let Some(b) = browser {
                    self.forget_browser(&b);
                }
                let leg = self.streams.get_mut(&id).and_then(|s| {
                    if s.b == Some(slot) {
                        s.b = None;
                    }
                    s.legs.remove(&slot)
                });
                if let Some(leg) = leg {
                    self.drop_leg(leg);
                }
            }
            Control::Close { id } => self.close(id),
            Control::Dtmf { id, slot, digit, duration_ms } => {
                let Some(s) = self.streams.get_mut(&id) else { return };
                let Some(side) = s.side_of(slot) else { return };
                let Some(to) = s.relay.destination(side) else { return };
                let packets = s.relay.dtmf_packets(now, side, digit, duration_ms);
                if s.browsers.contains_key(&slot) {
                    for p in packets {
                        self.send_to_browser(now, id, slot, &p);
                    }
                    return;
                }
                let Some(s) = self.streams.get_mut(&id) else { return };
                let Some(leg) = s.legs.get_mut(&slot) else { return };
                for p in packets {
                    if leg.rtp.send_to(&p, to).is_ok() {
                        leg.sent.add(p.len(), false);
                    }
                }
                self.mark(id);
            }
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(s) = self.streams.remove(&id) {
            for b in s.browsers.values() {
                self.forget_browser(b);
            }
            for (_, leg) in s.legs {
                self.drop_leg(leg);
            }
        }
    }

    /// The routes to a browser leg that goes.
    fn forget_browser(&mut self, b: &BrowserSide) {
        if let Some(key) = self.by_ufrag.remove(b.leg.ufrag()) {
            // Every address its checks came from (IPv4 and IPv6 candidates).
            let reply_from = &mut self.reply_from;
            self.by_addr.retain(|addr, v| {
                if *v == key {
                    reply_from.remove(addr);
                }
                *v != key
            });
        }
    }

    /// An offer/answer step of a browser leg (made on its first offer).
    fn browser_op(&mut self, now: Instant, id: u64, slot: u16, op: BrowserOp) -> Result<Option<String>, String> {
        let Some(s) = self.streams.get_mut(&id) else { return Err("the call's media is closed".into()) };
        let new = match &op {
            BrowserOp::Offer { voices, event_pt, ip, .. } => Some((voices.clone(), *event_pt, *ip)),
            BrowserOp::AcceptOffer { new, .. } => new.clone(),
            BrowserOp::Answer(_) => None,
        };
        if let Some((voices, event_pt, ip)) = new
            && !s.browsers.contains_key(&slot)
        {
            let (voices, event_pt, ip) = (&voices, &event_pt, &ip);
            let family = Family::of(*ip);
            let Some(port) = self.shared.iter().find(|p| p.family == family).and_then(|p| p.sock.local_addr().ok())
            else {
                return Err(format!("no shared port for {family:?} browsers"));
            };
            let Some(cert) = self.cert.as_ref() else { return Err("no certificate for browsers".into()) };
            let leg = BrowserLeg::new(now, cert, SocketAddr::new(*ip, port.port()), voices, *event_pt);
            self.by_ufrag.insert(leg.ufrag().to_owned(), (id, slot));
            s.browsers.insert(slot, BrowserSide { leg, sent: Sent::default(), deadline: Some(now) });
        }
        let b = s.browsers.get_mut(&slot).ok_or("no such browser leg")?;
        let r = match op {
            BrowserOp::Offer { direction, .. } => Ok(b.leg.create_offer(direction)),
            BrowserOp::Answer(sdp) => b.leg.accept_answer(now, &sdp).map(|()| None),
            BrowserOp::AcceptOffer { sdp, .. } => b.leg.accept_offer(&sdp).map(Some),
        };
        self.drive_browser(now, id, slot);
        r
    }

    /// Datagrams on a shared port: each to the browser leg its address
    /// (or, first, its STUN username) names; the rest are strays.
    fn shared_readable(
        &mut self,
        index: usize,
        bufs: &mut [[u8; MTU]],
        rx_headers: &mut MultiHeaders<SockaddrStorage>,
    ) {
        // Drained (up to 64 batches a wake-up), not one batch like a call's
        // own socket: this one carries every browser's SRTP, STUN and DTLS,
        // and one batch per wake-up let its queue fill and drop while the
        // PBX sockets were served (bench/run-browser-load.sh, 300 calls).
        for _ in 0..64 {
            if self.shared_batch(index, bufs, rx_headers) < BATCH {
                return;
            }
        }
    }

    /// One batch from shared port `index`; how many datagrams it held.
    fn shared_batch(
        &mut self,
        index: usize,
        bufs: &mut [[u8; MTU]],
        rx_headers: &mut MultiHeaders<SockaddrStorage>,
    ) -> usize {
        let Some((fd, pktinfo)) = self.shared.get(index).map(|p| (p.sock.as_raw_fd(), p.pktinfo)) else { return 0 };
        let mut meta: [(usize, Option<SocketAddr>); BATCH] = [(0, None); BATCH];
        let received = if pktinfo {
            receive_with_destination(fd, bufs, &mut meta, &mut self.reply_from)
        } else {
            receive_batch(fd, rx_headers, bufs, &mut meta)
        };
        let now = crate::clock::instant();
        for (i, (len, from)) in meta[..received].iter().enumerate() {
            let Some(from) = *from else { continue };
            let data = &bufs[i][..*len];
            let route = self.by_addr.get(&from).copied().or_else(|| {
                // A check naming a leg's ufrag and signed with its password:
                // the browser's address is learned (its DTLS follows from
                // there). Someone who only learned the ufrag teaches nothing.
                let key = stun_ufrag(data).and_then(|u| self.by_ufrag.get(u).copied())?;
                let leg = self.streams.get(&key.0).and_then(|s| s.browsers.get(&key.1))?;
                if !leg.leg.is_own_check(data) {
                    return None;
                }
                self.by_addr.insert(from, key);
                Some(key)
            });
            let Some((id, slot)) = route else {
                debug!(%from, "datagram for no browser leg dropped");
                continue;
            };
            let Some(b) = self.streams.get_mut(&id).and_then(|s| s.browsers.get_mut(&slot)) else { continue };
            b.leg.handle_datagram(now, from, data);
            self.drive_browser(now, id, slot);
        }
        received
    }

    /// Browser legs whose time has come.
    fn browser_timeouts(&mut self, now: Instant) {
        let due: Vec<(u64, u16)> = self
            .streams
            .iter()
            .flat_map(|(id, s)| {
                s.browsers
                    .iter()
                    .filter(|(_, b)| b.deadline.is_some_and(|d| d <= now))
                    .map(move |(slot, _)| (*id, *slot))
            })
            .collect();
        for (id, slot) in due {
            if let Some(b) = self.streams.get_mut(&id).and_then(|s| s.browsers.get_mut(&slot)) {
                b.leg.handle_timeout(now);
            }
            self.drive_browser(now, id, slot);
        }
        self.browser_deadline =
            self.streams.values().flat_map(|s| s.browsers.values().filter_map(|b| b.deadline)).min();
    }

    /// A relayed packet (already in the browser's numbering) to browser
    /// leg `slot`, encrypted and sent.
    fn send_to_browser(&mut self, now: Instant, id: u64, slot: u16, pkt: &[u8]) {
        let Some(s) = self.streams.get_mut(&id) else { return };
        let Some(b) = s.browsers.get_mut(&slot) else { return };
        if b.leg.write_rtp(now, pkt) {
            b.sent.add(pkt.len(), false);
        }
        self.mark(id);
        self.drive_browser(now, id, slot);
    }

    /// Carries out what browser leg `slot` has to say: datagrams out of
    /// the shared port, its RTP through the relay to the other leg.
    fn drive_browser(&mut self, now: Instant, id: u64, slot: u16) {
        let mut out = std::mem::take(&mut self.browser_out);
        out.clear();
        let Some(s) = self.streams.get_mut(&id) else { return };
        let Some(b) = s.browsers.get_mut(&slot) else { return };
        b.deadline = b.leg.poll(&mut out);
        if let Some(d) = b.deadline {
            self.browser_deadline = Some(self.browser_deadline.map_or(d, |x| x.min(d)));
        }
        for o in out.drain(..) {
            match o {
                BrowserOutput::Transmit { to, data } => {
                    let family = Family::of(to.ip());
                    if let Some(p) = self.shared.iter().find(|p| p.family == family) {
                        match self.reply_from.get(&to).filter(|_| p.pktinfo) {
                            Some(src) => send_from(p.sock.as_raw_fd(), &data, to, *src),
                            None => {
                                let _ = p.sock.send_to(&data, to);
                            }
                        }
                    }
                }
                BrowserOutput::Connected(remote) => {
                    debug!(%remote, "browser leg connected (ICE, DTLS)");
                    self.by_addr.insert(remote, (id, slot));
                }
                BrowserOutput::Rtp(mut pkt) => {
                    let Some(side) = s.side_of(slot) else { continue };
                    match s.relay.handle_rtp(now, side, BROWSER_STAND_IN, &mut pkt) {
                        Verdict::Dtmf { digit, duration_ms } => {
                            (s.events)(MediaEvent::Dtmf { slot, digit, duration_ms });
                        }
                        Verdict::Forward { to, via } => {
                            let other = side.other();
                            let Some(dest) = s.slot_of(other).and_then(|d| s.legs.get_mut(&d)) else { continue };
                            let sock = match via {
                                Port::Rtp => &dest.rtp,
                                Port::Rtcp => &dest.rtcp,
                            };
                            if sock.send_to(&pkt, to).is_ok() {
                                dest.sent.add(pkt.len(), false);
                            }
                        }
                        _ => {}
                    }
                    mark(&mut self.dirty, s, id);
                }
                BrowserOutput::Gone => {
                    debug!(slot, "browser leg gone (ICE or DTLS)");
                    (s.events)(MediaEvent::BrowserGone { slot });
                }
            }
        }
        self.browser_out = out;
    }

    fn register(&mut self, sock: &UdpSocket, r: SockRef) -> u64 {
        let token = match self.free_tokens.pop() {
            Some(t) => t,
            None => {
                self.sockets.push(None);
                (self.sockets.len() - 1) as u64
            }
        };
        if let Some(slot) = usize::try_from(token).ok().and_then(|i| self.sockets.get_mut(i)) {
            *slot = Some(r);
        }
        if let Err(e) = self.epoll.add(sock.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token)) {
            warn!(error = %e, "media socket not watched");
        }
        token
    }

    /// Closes a leg's sockets, then gives its pair back.
    fn drop_leg(&mut self, leg: LegSockets) {
        for t in leg.tokens {
            if let Some(slot) = usize::try_from(t).ok().and_then(|i| self.sockets.get_mut(i)) {
                *slot = None;
                self.free_tokens.push(t);
            }
        }
        let _ = self.epoll.delete(leg.rtp.as_fd());
        let _ = self.epoll.delete(leg.rtcp.as_fd());
        let (family, pair) = (leg.family, leg.pair);
        drop(leg);
        self.give_back(family, pair);
        self.ports_in_use.fetch_sub(1, Ordering::Relaxed);
    }

    fn give_back(&self, family: Family, pair: PortPair) {
        if let Ok(mut p) = self.pools.lock() {
            p.of(family).give_back(pair);
        }
    }

    /// A socket has packets: take a batch, relay each, send the batch.
    fn readable(
        &mut self,
        token: u64,
        bufs: &mut [[u8; MTU]],
        rx_headers: &mut MultiHeaders<SockaddrStorage>,
        tx_headers: &mut MultiHeaders<SockaddrStorage>,
    ) {
        let Some(Some(r)) = usize::try_from(token).ok().and_then(|i| self.sockets.get(i)).copied() else { return };
        if self.send_ring.as_ref().is_some_and(|ring| ring.room() < BATCH) {
            self.flush_sends();
        }
        let Some(s) = self.streams.get_mut(&r.stream) else { return };
        let Some(leg) = s.legs.get(&r.slot) else { return };
        let fd = match r.port {
            Port::Rtp => leg.rtp.as_raw_fd(),
            Port::Rtcp => leg.rtcp.as_raw_fd(),
        };
        let mut meta: [(usize, Option<SocketAddr>); BATCH] = [(0, None); BATCH];
        let received = receive_batch(fd, rx_headers, bufs, &mut meta);
        if received == 0 {
            return;
        }
        let now = crate::clock::instant();
        let side = s.side_of(r.slot);
        let outs = &mut self.outs;
        outs.clear();
        let mut browser_pkts: Vec<(u16, Vec<u8>)> = Vec::new();
        for (i, (len, from)) in meta[..received].iter().enumerate() {
            let (Some(side), Some(from)) = (side, from) else { continue };
            let pkt = &mut bufs[i][..*len];
            let rtcp = r.port == Port::Rtcp || is_rtcp(pkt);
            let verdict = if rtcp {
                s.relay.handle_rtcp(now, side, *from, pkt)
            } else {
                s.relay.handle_rtp(now, side, *from, pkt)
            };
            if let Verdict::Dtmf { digit, duration_ms } = verdict {
                (s.events)(MediaEvent::Dtmf { slot: r.slot, digit, duration_ms });
                continue;
            }
            let Verdict::Forward { to, via } = verdict else { continue };
            let other = side.other();
            // Toward a browser: through its WebRTC session (which makes its
            // own RTCP), after this batch.
            if let Some(slot) = s.slot_of(other).filter(|slot| s.browsers.contains_key(slot)) {
                if !rtcp {
                    browser_pkts.push((slot, pkt.to_vec()));
                }
                continue;
            }
            let Some(dest) = s.slot_of(other).and_then(|slot| s.legs.get(&slot)) else { continue };
            let fd = match via {
                Port::Rtp => dest.rtp.as_raw_fd(),
                Port::Rtcp => dest.rtcp.as_raw_fd(),
            };
            outs.push(Out { fd, to: SockaddrStorage::from(to), buf: i, len: *len, side: other, rtcp });
        }
        mark(&mut self.dirty, s, r.stream);
        // With io_uring: queued, and sent with every other socket's packets
        // of this wake-up in one submission (see `SendRing`).
        if let Some(ring) = self.send_ring.as_mut() {
            for o in outs.iter() {
                ring.push(o, &bufs[o.buf][..o.len], r.stream);
            }
        } else {
            self.send_outs(r.stream, bufs, tx_headers);
        }
        for (slot, pkt) in browser_pkts {
            self.send_to_browser(now, r.stream, slot, &pkt);
        }
    }

    /// Sends the batch's packets, consecutive ones of one socket in one
    /// `sendmmsg`.
    fn send_outs(&mut self, stream: u64, bufs: &[[u8; MTU]], tx_headers: &mut MultiHeaders<SockaddrStorage>) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let outs = &self.outs;
        // Else consecutive packets leaving one socket go in one sendmmsg.
        let mut start = 0;
        while start < outs.len() {
            let fd = outs[start].fd;
            let end = outs[start..].iter().position(|o| o.fd != fd).map_or(outs.len(), |p| start + p);
            let group = &outs[start..end];
            let sent = send_batch(fd, tx_headers, bufs, group);
            for o in &group[..sent] {
                if let Some(leg) = s.slot_of(o.side).and_then(|slot| s.legs.get_mut(&slot)) {
                    leg.sent.add(o.len, o.rtcp);
                }
            }
            start = end;
        }
    }

    /// Sends what the wake-up queued (io_uring), then counts what left.
    fn flush_sends(&mut self) {
        let Some(ring) = self.send_ring.as_mut() else { return };
        let streams = &mut self.streams;
        ring.flush(|stream, side, len, rtcp| {
            let Some(s) = streams.get_mut(&stream) else { return };
            if let Some(leg) = s.slot_of(side).and_then(|slot| s.legs.get_mut(&slot)) {
                leg.sent.add(len, rtcp);
            }
        });
    }

    /// Marks stream `id`'s figures for publishing at the wake-up's end.
    fn mark(&mut self, id: u64) {
        if let Some(s) = self.streams.get_mut(&id) {
            mark(&mut self.dirty, s, id);
        }
    }

    /// Publishes the figures of every stream whose packets moved in this
    /// wake-up, once they have all left: a packet is counted in and out
    /// in the same snapshot.
    fn publish_dirty(&mut self) {
        for id in self.dirty.drain(..) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.dirty = false;
                s.publish();
            }
        }
    }

    /// Media timeouts.
    fn tick(&mut self, now: Instant) {
        for s in self.streams.values_mut() {
            let Some(armed) = s.armed else { continue };
            if s.timed_out || s.b.is_none() {
                continue;
            }
            let Some(limit) = (if s.held { self.hold_timeout } else { self.timeout }) else { continue };
            let silent = [Side::A, Side::B].into_iter().any(|side| {
                let last = s.relay.last_packet(side).map_or(armed, |l| l.max(armed));
                now.saturating_duration_since(last) >= limit
            });
            if silent {
                debug!("media timeout");
                s.timed_out = true;
                (s.events)(MediaEvent::Timeout);
            }
        }
    }
}

/// Marks stream `s` (`id`) for publishing at the wake-up's end, once.
fn mark(dirty: &mut Vec<u64>, s: &mut Stream, id: u64) {
    if !s.dirty {
        s.dirty = true;
        dirty.push(id);
    }
}

/// `recvmmsg` into `bufs`; fills `meta` with (length, source); returns the
/// count (0 on EAGAIN or error).
fn receive_batch(
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [[u8; MTU]],
    meta: &mut [(usize, Option<SocketAddr>); BATCH],
) -> usize {
    let mut n = 0;
    // An ICMP error from an earlier send surfaces here once: read again.
    for _ in 0..2 {
        let mut it = bufs.iter_mut();
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b[..]))]);
        match recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
            Ok(results) => {
                for (i, m) in results.enumerate() {
                    if i < BATCH {
                        meta[i] = (m.bytes, m.address.and_then(|a| to_std(&a)));
                        n = i + 1;
                    }
                }
                break;
            }
            Err(nix::errno::Errno::ECONNREFUSED) => continue,
            Err(_) => break,
        }
    }
    n
}

/// Datagrams of a socket bound to the unspecified address, one `recvmsg`
/// each (browsers' traffic: a few packets per wake-up), noting the address
/// each was sent to in `reply_from`; fills `meta` like [`receive_batch`].
fn receive_with_destination(
    fd: i32,
    bufs: &mut [[u8; MTU]],
    meta: &mut [(usize, Option<SocketAddr>); BATCH],
    reply_from: &mut HashMap<SocketAddr, IpAddr>,
) -> usize {
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    let mut n = 0;
    for (i, buf) in bufs.iter_mut().enumerate().take(BATCH) {
        let mut cmsg = nix::cmsg_space!(nix::libc::in_pktinfo, nix::libc::in6_pktinfo);
        let mut iov = [IoSliceMut::new(&mut buf[..])];
        let Ok(msg) = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT) else {
            break;
        };
        let from = msg.address.and_then(|a| to_std(&a));
        let mut to: Option<IpAddr> = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(p) => {
                        to = Some(IpAddr::from(u32::from_be(p.ipi_addr.s_addr).to_be_bytes()));
                    }
                    ControlMessageOwned::Ipv6PacketInfo(p) => to = Some(IpAddr::from(p.ipi6_addr.s6_addr)),
                    _ => {}
                }
            }
        }
        if let (Some(from), Some(to)) = (from, to)
            && reply_from.get(&from) != Some(&to)
        {
            reply_from.insert(from, to);
        }
        meta[i] = (msg.bytes, from);
        n = i + 1;
    }
    n
}

/// One datagram from `fd` to `to` with `src` as its source address
/// (IP_PKTINFO / IPV6_PKTINFO); lost like any UDP datagram on error.
fn send_from(fd: i32, data: &[u8], to: SocketAddr, src: IpAddr) {
    use nix::sys::socket::{ControlMessage, sendmsg};
    let iov = [IoSlice::new(data)];
    let dest = SockaddrStorage::from(to);
    let _ = match src {
        IpAddr::V4(ip) => {
            let info = nix::libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: nix::libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
                ipi_addr: nix::libc::in_addr { s_addr: 0 },
            };
            sendmsg(fd, &iov, &[ControlMessage::Ipv4PacketInfo(&info)], MsgFlags::MSG_DONTWAIT, Some(&dest))
        }
        IpAddr::V6(ip) => {
            let info =
                nix::libc::in6_pktinfo { ipi6_addr: nix::libc::in6_addr { s6_addr: ip.octets() }, ipi6_ifindex: 0 };
            sendmsg(fd, &iov, &[ControlMessage::Ipv6PacketInfo(&info)], MsgFlags::MSG_DONTWAIT, Some(&dest))
        }
    };
}

/// `sendmmsg` of `group` (all from one socket); returns how many left.
/// Sends that fail (a vanished peer) are counted as sent: UDP is lossy
/// anyway, and retrying would only delay the rest.
fn send_batch(fd: i32, headers: &mut MultiHeaders<SockaddrStorage>, bufs: &[[u8; MTU]], group: &[Out]) -> usize {
    // One packet (the common case at 50 packets/s per stream): a plain
    // sendto, without building a batch.
    if let [o] = group {
        let sent = nix::sys::socket::sendto(fd, &bufs[o.buf][..o.len], &o.to, MsgFlags::MSG_DONTWAIT);
        return usize::from(sent.is_ok());
    }
    let n = group.len().min(BATCH);
    // On the stack: no allocation per batch.
    let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|k| {
        [IoSlice::new(group.get(k).filter(|_| k < n).map_or(&[][..], |o| &bufs[o.buf][..o.len]))]
    });
    let mut addrs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    for (a, o) in addrs.iter_mut().zip(group) {
        *a = Some(o.to);
    }
    match sendmmsg(fd, headers, iovs[..n].iter(), &addrs[..n], [], MsgFlags::MSG_DONTWAIT) {
        Ok(r) => r.count(),
        Err(_) => 0,
    }
}

pub(crate) fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    let v6 = a.as_sockaddr_in6()?;
    let ip = v6.ip();
    // A v4-mapped source on a v6 socket is the v4 peer.
    Some(match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::from((v4, v6.port())),
        None => SocketAddr::from((ip, v6.port())),
    })
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}
