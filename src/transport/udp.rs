//! UDP: one socket per listen address, one receive task each.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use super::{Inbound, SendError, Shared, Transport};
use crate::sip::message::{ParseError, parse_bytes};

/// Largest datagram read (the maximum UDP payload).
const MAX_DATAGRAM: usize = 65_535;

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
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

pub(super) async fn receive_loop(shared: Arc<Shared>, local: SocketAddr, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems: not fatal.
                    debug!(error = %e, "udp receive error");
                    continue;
                }
            },
        };
        let Some(data) = buf.get(..n) else { continue };
        if n > shared.config.max_message_bytes {
            warn!(%remote, bytes = n, "datagram over max_message_bytes dropped");
            continue;
        }
        let message = parse_bytes(Bytes::copy_from_slice(data));
        if let Err(ParseError::Empty) = message {
            // CRLF keep-alives from NATed phones: nothing to do.
            continue;
        }
        shared.deliver(Inbound { transport: Transport::Udp, local, remote, conn: None, message });
    }
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
