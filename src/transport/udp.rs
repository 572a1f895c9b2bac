//! UDP: one socket per listen address, one receive task each.
//!
//! Datagrams are read in batches (`recvmmsg`, one system call for up to
//! [`BATCH`]) with the kernel's receive timestamp (`SO_TIMESTAMPNS`), so a
//! message's time in queue counts its wait in the socket's buffer too:
//! overload control (`node/overload.rs`) sees the whole wait, also when
//! the daemon was too busy to read at all.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use std::io::{IoSlice, IoSliceMut};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::{Inbound, SendError, Shared, Transport};
use crate::sip::message::{ParseError, parse_bytes};

/// Largest datagram read (the maximum UDP payload).
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams taken per `recvmmsg`.
const BATCH: usize = 32;

/// Batches read per wake-up before other tasks get their turn.
const BATCHES_PER_WAKE: usize = 16;

pub(super) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Bursts of calls arrive faster than one task drains them: a large
    // receive buffer turns a burst into latency instead of loss.
    let _ = sock.set_recv_buffer_size(4 * 1024 * 1024);
    let _ = sock.set_send_buffer_size(4 * 1024 * 1024);
    // Without it messages are stamped when read (the wait in the socket's
    // buffer goes unseen); not fatal.
    if let Err(e) = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimestampns, &true) {
        warn!(error = %e, "SO_TIMESTAMPNS refused: time in queue counted from the read");
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// One received datagram: its length, source and kernel timestamp.
#[derive(Clone, Copy, Default)]
struct Meta {
    len: usize,
    from: Option<SocketAddr>,
    stamp: Option<std::time::SystemTime>,
}

pub(super) async fn receive_loop(shared: Arc<Shared>, local: SocketAddr, sock: Arc<UdpSocket>) {
    // One byte over the limit, so an oversized datagram shows as such.
    let size = shared.config.max_message_bytes.saturating_add(1).min(MAX_DATAGRAM);
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; size]).collect();
    let mut meta = [Meta::default(); BATCH];
    let fd = sock.as_raw_fd();
    // Once, not per wake-up (see the SIP core's loop).
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            _ = &mut cancelled => return,
            r = sock.readable() => if let Err(e) = r {
                debug!(error = %e, "udp socket not readable");
                continue;
            },
        }
        // The headers hold raw pointers, so a task holding them across an
        // await could not move between threads; made per wake-up they cost
        // a 4 KiB allocation whose size made glibc consolidate its free
        // lists each time (2.5 % of the node's CPU at 1500 calls/s). Kept
        // per thread instead, and borrowed only between awaits.
        RECV_HEADERS.with_borrow_mut(|slot| {
            let headers = slot
                .get_or_insert_with(|| MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(nix::libc::timespec))));
            for _ in 0..BATCHES_PER_WAKE {
                // A batch short of BATCH emptied the socket's queue: the
                // closure then reports WouldBlock so that tokio clears the
                // readiness now, instead of a second `recvmmsg` finding
                // nothing (a syscall per wake-up). A datagram arriving
                // after it raises a new edge, which tokio's readiness
                // ticks keep from being lost.
                let mut got = 0;
                let r = sock.try_io(Interest::READABLE, || {
                    got = receive_batch(fd, headers, &mut bufs, &mut meta)?;
                    if got < BATCH { Err(std::io::ErrorKind::WouldBlock.into()) } else { Ok(got) }
                });
                let n = match r {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => got,
                    Err(e) => {
                        debug!(error = %e, "udp receive error");
                        break;
                    }
                };
                let clocks = crate::clock::WallToInstant::read();
                let read_at = crate::clock::instant();
                for (m, buf) in meta.iter().zip(&bufs).take(n) {
                    let Some(remote) = m.from else { continue };
                    if m.len > shared.config.max_message_bytes {
                        warn!(%remote, bytes = m.len, "datagram over max_message_bytes dropped");
                        continue;
                    }
                    let Some(data) = buf.get(..m.len) else { continue };
                    let message = parse_bytes(Bytes::copy_from_slice(data));
                    if let Err(ParseError::Empty) = message {
                        // CRLF keep-alives from NATed phones: nothing to do.
                        continue;
                    }
                    let received = m.stamp.map_or(read_at, |s| clocks.instant_of(s));
                    shared.deliver(Inbound { transport: Transport::Udp, local, remote, conn: None, message, received });
                }
                if n < BATCH {
                    break;
                }
            }
        });
    }
}

thread_local! {
    /// `recvmmsg`'s headers of this thread's receive loops (see there).
    static RECV_HEADERS: std::cell::RefCell<Option<MultiHeaders<SockaddrStorage>>> =
        const { std::cell::RefCell::new(None) };
}

/// One `recvmmsg` into `bufs`, filling `meta`; how many datagrams came.
/// `WouldBlock` when none was waiting (tokio then clears readiness).
fn receive_batch(
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [Vec<u8>],
    meta: &mut [Meta; BATCH],
) -> std::io::Result<usize> {
    // An ICMP error from an earlier send surfaces here once: read again.
    for _ in 0..4 {
        let mut it = bufs.iter_mut();
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(it.next().map_or(&mut [][..], |b| &mut b[..]))]);
        match recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None) {
            Ok(results) => {
                let mut n = 0;
                for (slot, m) in meta.iter_mut().zip(results) {
                    let mut stamp = None;
                    if let Ok(cmsgs) = m.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                                let since_epoch = std::time::Duration::new(
                                    u64::try_from(ts.tv_sec()).unwrap_or(0),
                                    u32::try_from(ts.tv_nsec()).unwrap_or(0),
                                );
                                stamp = std::time::UNIX_EPOCH.checked_add(since_epoch);
                            }
                        }
                    }
                    *slot =
                        Meta { len: m.bytes, from: m.address.as_ref().and_then(crate::media::engine::to_std), stamp };
                    n += 1;
                }
                return Ok(n);
            }
            Err(nix::errno::Errno::ECONNREFUSED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(0)
}

/// The socket that sends to `addr` (the first of its address family).
fn socket_for(shared: &Shared, addr: SocketAddr) -> Result<&UdpSocket, SendError> {
    shared
        .udp
        .iter()
        .find(|(local, _)| local.is_ipv4() == addr.is_ipv4())
        .map(|(_, s)| &**s)
        .ok_or(SendError::NoTransport { transport: "udp", addr })
}

pub(super) fn send(shared: &Shared, addr: SocketAddr, data: &[u8]) -> Result<(), SendError> {
    let sock = socket_for(shared, addr)?;
    match sock.try_send_to(data, addr) {
        Ok(_) => Ok(()),
        // Buffer full: like loss on the wire; retransmission recovers.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(source) => Err(SendError::Udp { addr, source }),
    }
}

/// Sends `items` in order, as few `sendmmsg` calls as the address families
/// allow (one for a turn's datagrams, usually), and reports each datagram
/// that failed by its index. A full socket buffer is loss on the wire, as
/// in [`send`]: not reported.
///
/// One system call per batch instead of one per datagram; a receiver on
/// the same machine (loopback, a co-located proxy) then also tends to be
/// woken once per batch rather than once per datagram.
pub(super) fn send_many(shared: &Shared, items: &[(SocketAddr, Bytes)], mut failed: impl FnMut(usize, SendError)) {
    let mut start = 0;
    while let Some(&(first, _)) = items.get(start) {
        // A run of one address family, at most a batch long (at least 1).
        let run = items.iter().skip(start).take(BATCH).take_while(|(a, _)| a.is_ipv4() == first.is_ipv4()).count();
        let batch = items.get(start..start + run).unwrap_or_default();
        let sock = match socket_for(shared, first) {
            Ok(s) => s,
            Err(_) => {
                for (i, (addr, _)) in batch.iter().enumerate() {
                    failed(start + i, SendError::NoTransport { transport: "udp", addr: *addr });
                }
                start += run;
                continue;
            }
        };
        // Straight to the socket, not through tokio's readiness (which
        // would refuse until its driver has seen the socket writable).
        let outcome = match batch {
            [(addr, data)] => {
                nix::sys::socket::sendto(sock.as_raw_fd(), data, &SockaddrStorage::from(*addr), MsgFlags::MSG_DONTWAIT)
                    .map(|_| 1)
                    .map_err(std::io::Error::from)
            }
            _ => send_batch(sock.as_raw_fd(), batch),
        };
        start += match outcome {
            Ok(n) => n.max(1),
            // The first datagram failed: report it (unless the buffer was
            // full) and go on with the next.
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    failed(start, SendError::Udp { addr: first, source: e });
                }
                1
            }
        };
    }
}

/// One `sendmmsg` of `batch`: how many datagrams the kernel took (from the
/// first), or the error of the first when it took none.
fn send_batch(fd: i32, batch: &[(SocketAddr, Bytes)]) -> std::io::Result<usize> {
    let mut headers: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(batch.len(), None);
    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = batch.iter().map(|(a, _)| Some(SockaddrStorage::from(*a))).collect();
    let no_cmsgs: [ControlMessage<'_>; 0] = [];
    let results = sendmmsg(fd, &mut headers, &iovs, &addrs, no_cmsgs, MsgFlags::MSG_DONTWAIT)?;
    Ok(results.count())
}
