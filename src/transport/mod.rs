//! SIP transports: UDP, TCP and WebSocket (`ws.rs`) sockets driven by tokio.
//!
//! Receive tasks parse what arrives (datagram parsing and stream framing
//! run on whichever worker thread holds the socket, not in the SIP core)
//! and hand [`Inbound`] items to the core over a bounded channel. Sending
//! is synchronous and never blocks the core: UDP uses `try_send_to`, or
//! `sendmmsg` for the datagrams a core queued in its [`Outbox`] during one
//! turn (a full socket buffer is packet loss, which SIP retransmission
//! covers), TCP queues to the connection's writer task.
//!
//! SIP over TLS will sit beside these behind the same [`Target`] /
//! [`Transports::send`] interface.

mod listen;
mod tcp;
mod udp;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use listen::{ListenAddr, Transport};
pub use ws::tls_config;

use crate::sip::message::{Message, ParseError};
use crate::sip::shard::shard_for_call_id;

/// Id of one TCP connection, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a message goes: a transport, a peer address and, for streams, the
/// connection to reuse when it is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Transport protocol.
    pub transport: Transport,
    /// Peer address.
    pub addr: SocketAddr,
    /// Connection the request came in on (streams).
    pub conn: Option<ConnId>,
}

/// What a receive task hands to the SIP core.
#[derive(Debug)]
pub struct Inbound {
    /// Transport it came on.
    pub transport: Transport,
    /// Our socket's address.
    pub local: SocketAddr,
    /// The peer's address as seen on the wire.
    pub remote: SocketAddr,
    /// The connection (streams).
    pub conn: Option<ConnId>,
    /// The message, or why it could not be parsed.
    pub message: Result<Message, ParseError>,
    /// When it was read off the socket: a core sees how long it queued
    /// (overload control).
    pub received: std::time::Instant,
}

impl Inbound {
    /// The target that answers go to by default (§18.2.2: back where the
    /// request came from, over the same connection).
    pub fn reply_target(&self) -> Target {
        Target { transport: self.transport, addr: self.remote, conn: self.conn }
    }
}

/// A connection that closed (WebSocket): whatever was bound to it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Its transport.
    pub transport: Transport,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The connection.
    pub conn: ConnId,
}

/// Settings of the transports.
#[derive(Clone)]
pub struct TransportConfig {
    /// Largest message accepted.
    pub max_message_bytes: usize,
    /// Most TCP connections open at once (inbound and outbound).
    pub max_tcp_connections: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Time allowed to connect to a peer.
    pub tcp_connect_timeout: Duration,
    /// Messages queued per TCP connection before it is considered stuck and closed.
    pub tcp_send_queue: usize,
    /// A WebSocket is pinged at this interval and closed after two
    /// intervals without a frame from the peer.
    pub ws_ping_interval: Duration,
    /// TLS of `wss://` listeners (required when there is one).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_tcp_connections", &self.max_tcp_connections)
            .field("ws_ping_interval", &self.ws_ping_interval)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_tcp_connections: 4096,
            tcp_idle_timeout: Duration::from_secs(600),
            tcp_connect_timeout: Duration::from_secs(5),
            tcp_send_queue: 1024,
            ws_ping_interval: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Why a message could not be handed to the network.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No socket of that transport (and address family) is open.
    #[error("no {transport} transport for {addr}")]
    NoTransport {
        /// Transport asked for.
        transport: &'static str,
        /// Destination.
        addr: SocketAddr,
    },
    /// The operating system refused the datagram.
    #[error("udp send to {addr}: {source}")]
    Udp {
        /// Destination.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection's queue is full: the peer does not read. It is closed.
    #[error("tcp connection to {addr} is stuck")]
    Stuck {
        /// Destination.
        addr: SocketAddr,
    },
    /// Too many connections are open to open another.
    #[error("tcp connection limit reached")]
    ConnectionLimit,
    /// The peer's connection is closed and cannot be opened from here (a
    /// browser's WebSocket).
    #[error("no open connection to {addr}")]
    NoConnection {
        /// Destination.
        addr: SocketAddr,
    },
}

/// UDP datagrams a SIP core queued during one turn of its loop, sent
/// together at the turn's end ([`Transports::flush`]): one `sendmmsg`
/// instead of a `sendto` each. `K` names what sent each (a transaction),
/// for its error.
#[derive(Debug)]
pub struct Outbox<K> {
    datagrams: Vec<(SocketAddr, Bytes)>,
    keys: Vec<Option<K>>,
}

impl<K> Default for Outbox<K> {
    fn default() -> Self {
        Self { datagrams: Vec::new(), keys: Vec::new() }
    }
}

impl<K> Outbox<K> {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// How many datagrams are queued.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Drops what is queued, unsent.
    pub fn discard(&mut self) {
        self.datagrams.clear();
        self.keys.clear();
    }
}

/// A thread that sends a SIP core's datagrams for it
/// ([`Transports::send_thread`]).
///
/// Why: on loopback, and on any box whose peer shares it (a co-located
/// proxy, the load generator of a benchmark), a `sendmmsg` runs the
/// kernel's whole delivery, the receiver's side included, in the sender's
/// time: a fifth of a busy core's CPU. A core that is busy hands its
/// datagrams here, so that work runs beside it; one that is not sends
/// them itself, as a hand-over costs a wake-up of this thread.
pub struct SendThread<K> {
    tx: std::sync::mpsc::Sender<Outbox<K>>,
    /// Outboxes sent and handed back, for reuse.
    spare: std::sync::mpsc::Receiver<Outbox<K>>,
    /// Outboxes handed over and not yet sent.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// Outboxes a [`SendThread`] may hold unsent: past this its thread is not
/// keeping up (starved of CPU), and a core's further datagrams are lost as
/// in a full socket buffer, rather than held without bound.
pub const SEND_BACKLOG_MAX: usize = 256;

/// What became of an outbox handed to a [`SendThread`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// Taken: the outbox is empty.
    Taken,
    /// Refused, the thread holding [`SEND_BACKLOG_MAX`] unsent: the outbox
    /// is as it was.
    Full,
    /// The thread is gone: the outbox is as it was.
    Gone,
}

impl<K> SendThread<K> {
    /// Hands `outbox`'s datagrams to the thread, leaving `outbox` empty,
    /// unless it holds too many already or is gone.
    pub fn hand_over(&self, outbox: &mut Outbox<K>) -> HandOver {
        if self.in_flight.load(Ordering::Acquire) >= SEND_BACKLOG_MAX {
            return HandOver::Full;
        }
        let fresh = self.spare.try_recv().unwrap_or_default();
        let full = std::mem::replace(outbox, fresh);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        match self.tx.send(full) {
            Ok(()) => HandOver::Taken,
            Err(std::sync::mpsc::SendError(full)) => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                *outbox = full;
                HandOver::Gone
            }
        }
    }

    /// Ends the thread once it has sent everything handed to it, and waits
    /// for that: a core stopping sends its last datagrams (the BYEs of
    /// its calls) after these, and the process may end right after.
    pub fn finish(self) {
        let SendThread { tx, thread, .. } = self;
        drop(tx);
        let _ = thread.join();
    }

    /// Whether datagrams handed over are still unsent: until they are, the
    /// core's next ones go the same way, so that none overtakes another.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// A bound socket, as reported to the operator and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Transport.
    pub transport: Transport,
    /// Local address (with the real port when port 0 was asked for).
    pub addr: SocketAddr,
}

struct ConnEntry {
    tx: mpsc::Sender<Bytes>,
}

/// Shared state of the TCP side: open connections by id and by peer.
#[derive(Default)]
struct ConnTable {
    by_id: HashMap<ConnId, ConnEntry>,
    by_remote: HashMap<SocketAddr, ConnId>,
}

pub(crate) struct Shared {
    config: TransportConfig,
    /// One queue per SIP core shard; a message goes to the shard of its
    /// Call-ID (see [`shard_for_call_id`]: B-leg Call-IDs carry their shard).
    inbound: Vec<mpsc::Sender<Inbound>>,
    udp: Vec<(SocketAddr, Arc<tokio::net::UdpSocket>)>,
    conns: Mutex<ConnTable>,
    /// WebSocket connections (kept apart: a browser's address may equal a
    /// TCP peer's).
    ws_conns: Mutex<ConnTable>,
    /// Connections that closed (WebSocket), for the registrar and calls.
    closed: tokio::sync::broadcast::Sender<Closed>,
    next_conn: AtomicU64,
    tcp_permits: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
    /// Local address used as the source of outbound TCP connections'
    /// messages (the first TCP listener), for logs.
    tcp_local: Option<SocketAddr>,
}

/// Handle on every open transport. Cheap to clone.
#[derive(Clone)]
pub struct Transports {
    shared: Arc<Shared>,
    bound: Arc<Vec<Bound>>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports").field("bound", &self.bound).finish()
    }
}

impl Transports {
    /// Binds every listener and starts the receive tasks. Inbound messages
    /// go to the queue of `inbound` their Call-ID belongs to; everything
    /// stops when `shutdown` is cancelled.
    pub async fn bind(
        listen: &[ListenAddr],
        config: TransportConfig,
        inbound: Vec<mpsc::Sender<Inbound>>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        if inbound.is_empty() {
            return Err(std::io::Error::other("no SIP core to deliver to"));
        }
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut ws = Vec::new();
        let mut bound = Vec::new();
        for l in listen {
            match l.transport {
                Transport::Udp => {
                    let sock = udp::bind(l.addr)?;
                    let addr = sock.local_addr()?;
                    bound.push(Bound { transport: Transport::Udp, addr });
                    udp.push((addr, Arc::new(sock)));
                }
                Transport::Tcp => {
                    let listener = tcp::bind(l.addr)?;
                    let addr = listener.local_addr()?;
                    bound.push(Bound { transport: Transport::Tcp, addr });
                    tcp.push((addr, listener));
                }
                Transport::Ws | Transport::Wss => {
                    let tls = match (l.transport, &config.tls) {
                        (Transport::Wss, Some(c)) => Some(tokio_rustls::TlsAcceptor::from(c.clone())),
                        (Transport::Wss, None) => {
                            return Err(std::io::Error::other(format!("{l}: wss needs a TLS certificate ([tls])")));
                        }
                        _ => None,
                    };
                    let listener = tcp::bind(l.addr)?;
                    let addr = listener.local_addr()?;
                    bound.push(Bound { transport: l.transport, addr });
                    ws.push((l.transport, addr, listener, tls));
                }
            }
        }
        let shared = Arc::new(Shared {
            tcp_permits: Arc::new(tokio::sync::Semaphore::new(config.max_tcp_connections)),
            config,
            inbound,
            udp: udp.clone(),
            conns: Mutex::new(ConnTable::default()),
            ws_conns: Mutex::new(ConnTable::default()),
            closed: tokio::sync::broadcast::channel(4096).0,
            next_conn: AtomicU64::new(1),
            shutdown,
            tcp_local: tcp.first().map(|(a, _)| *a),
        });
        for (addr, sock) in udp {
            tokio::spawn(udp::receive_loop(shared.clone(), addr, sock));
        }
        for (addr, listener) in tcp {
            tokio::spawn(tcp::accept_loop(shared.clone(), addr, listener));
        }
        for (transport, addr, listener, tls) in ws {
            tokio::spawn(ws::accept_loop(shared.clone(), transport, addr, listener, tls));
        }
        Ok(Self { shared, bound: Arc::new(bound) })
    }

    /// The sockets actually bound.
    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    /// The local address to advertise (Via sent-by, Contact) for a transport
    /// and address family.
    pub fn local_for(&self, transport: Transport, peer: SocketAddr) -> Option<SocketAddr> {
        self.bound.iter().find(|b| b.transport == transport && b.addr.is_ipv4() == peer.is_ipv4()).map(|b| b.addr)
    }

    /// Sends `data` to `target`. Never blocks. TCP reuses the target's
    /// connection, else any open connection to the address, else opens one.
    pub fn send(&self, target: &Target, data: Bytes) -> Result<(), SendError> {
        match target.transport {
            Transport::Udp => udp::send(&self.shared, target.addr, &data),
            Transport::Tcp => tcp::send(&self.shared, target, data),
            Transport::Ws | Transport::Wss => ws::send(&self.shared, target, data),
        }
    }

    /// Queues `data` for `target` in `outbox` when it goes by UDP (sent by
    /// [`Self::flush`]), else sends it now as [`Self::send`] does. `key`
    /// comes back with the datagram's error, if sending it fails.
    pub fn send_queued<K>(
        &self,
        outbox: &mut Outbox<K>,
        target: &Target,
        data: Bytes,
        key: Option<K>,
    ) -> Result<(), SendError> {
        match target.transport {
            Transport::Udp => {
                outbox.datagrams.push((target.addr, data));
                outbox.keys.push(key);
                Ok(())
            }
            _ => self.send(target, data),
        }
    }

    /// Sends every datagram queued in `outbox`, in order, batched
    /// (`sendmmsg`), and empties it: the keys and errors of those that
    /// failed.
    pub fn flush<K>(&self, outbox: &mut Outbox<K>) -> Vec<(Option<K>, SendError)> {
        let mut failed = Vec::new();
        udp::send_many(&self.shared, &outbox.datagrams, |i, e| failed.push((i, e)));
        outbox.datagrams.clear();
        let mut keys = std::mem::take(&mut outbox.keys);
        let out = failed.into_iter().map(|(i, e)| (keys.get_mut(i).and_then(Option::take), e)).collect();
        keys.clear();
        outbox.keys = keys;
        out
    }

    /// Starts a thread that sends the UDP datagrams of an [`Outbox`] handed
    /// to it ([`SendThread::hand_over`]), in order, batched as
    /// [`Self::flush`] does; `failed` gets the keys and errors of those that
    /// failed, from that thread. The thread ends when the handle is
    /// dropped.
    pub fn send_thread<K: Send + 'static>(
        &self,
        name: String,
        failed: impl Fn(Vec<(Option<K>, SendError)>) + Send + 'static,
    ) -> std::io::Result<SendThread<K>> {
        let (tx, rx) = std::sync::mpsc::channel::<Outbox<K>>();
        let (spare_tx, spare) = std::sync::mpsc::channel::<Outbox<K>>();
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let transports = self.clone();
        let count = in_flight.clone();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            while let Ok(mut outbox) = rx.recv() {
                let errors = transports.flush(&mut outbox);
                count.fetch_sub(1, Ordering::Release);
                if !errors.is_empty() {
                    failed(errors);
                }
                // Back for reuse, its vectors' capacity kept; the core
                // may be gone, and then it is dropped here.
                let _ = spare_tx.send(outbox);
            }
        })?;
        Ok(SendThread { tx, spare, in_flight, thread })
    }

    /// Connections that close from now on (WebSocket): a lagging receiver
    /// misses some and should check [`Self::is_open`] for what it holds.
    pub fn closed(&self) -> tokio::sync::broadcast::Receiver<Closed> {
        self.shared.closed.subscribe()
    }

    /// Whether a WebSocket connection to `remote` is open.
    pub fn is_open(&self, transport: Transport, remote: SocketAddr) -> bool {
        match transport {
            Transport::Ws | Transport::Wss => {
                self.shared.ws_conns.lock().map(|t| t.by_remote.contains_key(&remote)).unwrap_or(false)
            }
            Transport::Udp | Transport::Tcp => true,
        }
    }
}

impl Shared {
    fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Hands an item to the core; when the core is saturated the item is
    /// dropped (counted) rather than buffered without bound: SIP clients
    /// retransmit.
    fn deliver(&self, item: Inbound) {
        let n = self.inbound.len();
        let shard = match &item.message {
            Ok(m) if n > 1 => m.headers().call_id().map_or(0, |c| shard_for_call_id(c, n)),
            _ => 0,
        };
        let Some(queue) = self.inbound.get(shard) else { return };
        if let Err(mpsc::error::TrySendError::Full(item)) = queue.try_send(item) {
            tracing::warn!(remote = %item.remote, transport = item.transport.as_str(), "SIP core saturated: message dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's transports on one loopback UDP socket, and a peer socket.
    async fn udp_pair() -> (Transports, std::net::UdpSocket) {
        let listen = [ListenAddr { transport: Transport::Udp, addr: "127.0.0.1:0".parse().unwrap() }];
        let (tx, _rx) = mpsc::channel(16);
        let t =
            Transports::bind(&listen, TransportConfig::default(), vec![tx], CancellationToken::new()).await.unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (t, peer)
    }

    fn udp(addr: SocketAddr) -> Target {
        Target { transport: Transport::Udp, addr, conn: None }
    }

    #[tokio::test]
    async fn a_turns_datagrams_arrive_in_order_and_failures_come_back_with_their_keys() {
        let (t, peer) = udp_pair().await;
        let to = peer.local_addr().unwrap();
        let mut outbox = Outbox::default();
        // More than one batch, a datagram no socket can send (IPv6: none
        // bound) and one the kernel refuses (broadcast without
        // SO_BROADCAST) in the middle of the batches.
        for i in 0..70u32 {
            let (target, data) = match i {
                10 => (udp("[::1]:5060".parse().unwrap()), Bytes::from_static(b"v6")),
                40 => (udp("255.255.255.255:9".parse().unwrap()), Bytes::from_static(b"broadcast")),
                _ => (udp(to), Bytes::from(format!("datagram {i}"))),
            };
            t.send_queued(&mut outbox, &target, data, Some(i)).unwrap();
        }
        assert!(!outbox.is_empty());
        let failed = t.flush(&mut outbox);
        assert!(outbox.is_empty());
        let keys: Vec<_> = failed.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [Some(10), Some(40)]);
        assert!(matches!(failed[0].1, SendError::NoTransport { transport: "udp", .. }), "{:?}", failed[0].1);
        assert!(matches!(failed[1].1, SendError::Udp { .. }), "{:?}", failed[1].1);
        let mut buf = [0u8; 64];
        for i in (0..70u32).filter(|i| *i != 10 && *i != 40) {
            let n = peer.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("datagram {i}").as_bytes());
        }
        // Nothing else came, and an empty outbox sends nothing.
        peer.set_nonblocking(true).unwrap();
        assert!(peer.recv(&mut buf).is_err());
        assert!(t.flush(&mut outbox).is_empty());
    }

    #[tokio::test]
    async fn the_send_thread_sends_handed_over_datagrams_in_order_and_reports_failures() {
        let (t, peer) = udp_pair().await;
        let to = peer.local_addr().unwrap();
        let (report, failures) = std::sync::mpsc::channel();
        let sender = t
            .send_thread("test-send".into(), move |failed: Vec<(Option<u32>, SendError)>| {
                report.send(failed.into_iter().map(|(k, e)| (k, e.to_string())).collect::<Vec<_>>()).unwrap();
            })
            .unwrap();
        // Three outboxes handed over one after the other, the second with
        // a datagram no socket can send (IPv6: none bound).
        let mut outbox = Outbox::default();
        for turn in 0..3u32 {
            for i in 0..20u32 {
                let n = turn * 20 + i;
                let target = if n == 25 { udp("[::1]:5060".parse().unwrap()) } else { udp(to) };
                t.send_queued(&mut outbox, &target, Bytes::from(format!("datagram {n}")), Some(n)).unwrap();
            }
            assert_eq!(sender.hand_over(&mut outbox), HandOver::Taken);
            assert!(outbox.is_empty(), "handed over, not copied");
        }
        let mut buf = [0u8; 64];
        for n in (0..60u32).filter(|n| *n != 25) {
            let len = peer.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], format!("datagram {n}").as_bytes());
        }
        let failed = failures.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, Some(25));
        assert!(failed[0].1.contains("no udp transport"), "{failed:?}");
        // All sent: the core may send by itself again without overtaking.
        let deadline = crate::clock::instant() + Duration::from_secs(5);
        while sender.busy() {
            assert!(crate::clock::instant() < deadline, "still busy");
            std::thread::sleep(Duration::from_millis(1));
        }
        peer.set_nonblocking(true).unwrap();
        assert!(peer.recv(&mut buf).is_err(), "nothing else came");
        assert!(failures.try_recv().is_err(), "one report only");
    }

    #[tokio::test]
    async fn finishing_the_send_thread_waits_until_all_it_was_handed_is_sent() {
        let (t, peer) = udp_pair().await;
        let to = peer.local_addr().unwrap();
        let sender = t.send_thread("test-send".into(), |_: Vec<(Option<u32>, SendError)>| {}).unwrap();
        let mut outbox = Outbox::default();
        for turn in 0..4u32 {
            for i in 0..50u32 {
                t.send_queued(&mut outbox, &udp(to), Bytes::from(format!("datagram {}", turn * 50 + i)), None).unwrap();
            }
            assert_eq!(sender.hand_over(&mut outbox), HandOver::Taken);
        }
        sender.finish();
        // Already in the peer's socket: read without waiting.
        peer.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        for n in 0..200u32 {
            let len = peer.recv(&mut buf).unwrap_or_else(|e| panic!("datagram {n} not yet sent: {e}"));
            assert_eq!(&buf[..len], format!("datagram {n}").as_bytes());
        }
    }

    #[tokio::test]
    async fn a_send_thread_that_does_not_keep_up_refuses_more_than_its_backlog() {
        let (t, peer) = udp_pair().await;
        let to = peer.local_addr().unwrap();
        // The thread reports the first outbox's failure, and the report
        // blocks it until released: what a thread starved of CPU does.
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let blocked = std::sync::Mutex::new(blocked);
        let sender = t
            .send_thread("test-send".into(), move |_: Vec<(Option<u32>, SendError)>| {
                let _ = entered_tx.send(());
                let _ = blocked.lock().unwrap().recv();
            })
            .unwrap();
        let mut outbox = Outbox::default();
        t.send_queued(&mut outbox, &udp("[::1]:5060".parse().unwrap()), Bytes::from_static(b"v6"), Some(0)).unwrap();
        assert_eq!(sender.hand_over(&mut outbox), HandOver::Taken);
        entered.recv_timeout(Duration::from_secs(5)).unwrap();
        for n in 1..=SEND_BACKLOG_MAX {
            t.send_queued(&mut outbox, &udp(to), Bytes::from(format!("datagram {n}")), None).unwrap();
            assert_eq!(sender.hand_over(&mut outbox), HandOver::Taken, "outbox {n}");
        }
        t.send_queued(&mut outbox, &udp(to), Bytes::from_static(b"one too many"), None).unwrap();
        assert_eq!(sender.hand_over(&mut outbox), HandOver::Full);
        assert_eq!(outbox.len(), 1, "a refused outbox is left as it was");
        outbox.discard();
        assert!(outbox.is_empty());
        // Released, the thread sends everything it took, in order.
        release.send(()).unwrap();
        let mut buf = [0u8; 64];
        for n in 1..=SEND_BACKLOG_MAX {
            let len = peer.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], format!("datagram {n}").as_bytes());
        }
        drop(sender);
    }

    #[tokio::test]
    async fn a_single_datagram_is_sent_and_its_failure_reported() {
        let (t, peer) = udp_pair().await;
        let mut outbox = Outbox::default();
        t.send_queued(&mut outbox, &udp(peer.local_addr().unwrap()), Bytes::from_static(b"one"), Some(1)).unwrap();
        assert!(t.flush(&mut outbox).is_empty());
        let mut buf = [0u8; 8];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"one");
        let target = udp("255.255.255.255:9".parse().unwrap());
        t.send_queued(&mut outbox, &target, Bytes::from_static(b"x"), Some(2)).unwrap();
        let failed = t.flush(&mut outbox);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, Some(2));
    }
}
