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
use nix::sys::socket::{ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use std::io::IoSliceMut;
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
        // Not kept across the await (it holds raw pointers, so a task
        // holding it could not move between threads): one per wake-up.
        let mut headers: MultiHeaders<SockaddrStorage> =
            MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(nix::libc::timespec)));
        for _ in 0..BATCHES_PER_WAKE {
            let n = match sock.try_io(Interest::READABLE, || receive_batch(fd, &mut headers, &mut bufs, &mut meta)) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
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
    }
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

pub(super) fn send(shared: &Shared, addr: SocketAddr, data: &[u8]) -> Result<(), SendError> {
    let sock = shared
        .udp
        .iter()
        .find(|(local, _)| local.is_ipv4() == addr.is_ipv4())
        .map(|(_, s)| s)
        .ok_or(SendError::NoTransport { transport: "udp", addr })?;
    match sock.try_send_to(data, addr) {
        Ok(_) => Ok(()),
        // Buffer full: like loss on the wire; retransmission recovers.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(source) => Err(SendError::Udp { addr, source }),
    }
}
