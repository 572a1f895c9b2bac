//! TCP: an accept loop per listener; per connection a reader (framing with
//! RFC 5626 keep-alives) and a writer fed by a bounded queue.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, info, warn};

use super::{ConnEntry, ConnId, Inbound, SendError, Shared, Target, Transport};
use crate::sip::message::{KeepAlive, StreamEvent, StreamFramer, StreamFramerConfig};

pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

pub(super) async fn accept_loop(shared: Arc<Shared>, local: SocketAddr, listener: TcpListener) {
    let mut backoff = std::time::Duration::from_millis(5);
    loop {
        let (stream, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => { backoff = std::time::Duration::from_millis(5); x }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning or dying.
                    warn!(error = %e, "tcp accept failed; backing off");
                    #[allow(clippy::disallowed_methods)] // I/O driver: a real pause
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            },
        };
        let Ok(permit) = shared.tcp_permits.clone().try_acquire_owned() else {
            warn!(%remote, "tcp connection limit reached: connection refused");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        start_connection(&shared, stream, local, remote, permit);
    }
}

fn start_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> (ConnId, mpsc::Sender<Bytes>) {
    let id = shared.next_conn_id();
    let (tx, rx) = mpsc::channel::<Bytes>(shared.config.tcp_send_queue);
    if let Ok(mut t) = shared.conns.lock() {
        t.by_id.insert(id, ConnEntry { tx: tx.clone() });
        t.by_remote.insert(remote, id);
    }
    debug!(conn = id.0, %remote, "tcp connection open");
    let (read, write) = stream.into_split();
    tokio::spawn(run_connection(shared.clone(), id, local, remote, read, write, rx, tx.clone(), permit));
    (id, tx)
}

#[allow(clippy::too_many_arguments)]
async fn run_connection(
    shared: Arc<Shared>,
    id: ConnId,
    local: SocketAddr,
    remote: SocketAddr,
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    tx: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
) {
    let max = shared.config.max_message_bytes;
    let mut framer =
        StreamFramer::new(StreamFramerConfig { max_message_size: max, max_buffered: max * 2, report_pongs: false });
    // Reads are at most one message size so the framer never exceeds its
    // buffer bound between polls.
    let mut buf = vec![0u8; max.min(16 * 1024)];
    let idle = shared.config.tcp_idle_timeout;
    let reason: &str = loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break "shutdown",
            out = rx.recv() => {
                let Some(data) = out else { break "closed" };
                if let Err(e) = write.write_all(&data).await {
                    debug!(conn = id.0, error = %e, "tcp write failed");
                    break "write error";
                }
            }
            r = tokio::time::timeout(idle, read.read(&mut buf)) => {
                let n = match r {
                    Err(_) => break "idle",
                    Ok(Err(_)) | Ok(Ok(0)) => break "peer closed",
                    Ok(Ok(n)) => n,
                };
                let Some(chunk) = buf.get(..n) else { break "read error" };
                if let Err(e) = framer.handle_bytes(chunk) {
                    warn!(conn = id.0, %remote, error = %e, "tcp framing error: closing");
                    break "framing error";
                }
                let mut failed = false;
                loop {
                    match framer.poll_event() {
                        Ok(None) => break,
                        Ok(Some(StreamEvent::KeepAlive(KeepAlive::Ping))) => {
                            // RFC 5626 §4.4.1: answer a CRLFCRLF ping with a CRLF pong.
                            let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                        }
                        Ok(Some(StreamEvent::KeepAlive(KeepAlive::Pong))) => {}
                        Ok(Some(StreamEvent::Message(m))) => shared.deliver(Inbound {
                            transport: Transport::Tcp, local, remote, conn: Some(id), message: Ok(m), received: crate::clock::instant(),
                        }),
                        Ok(Some(StreamEvent::BadRequest(e))) => shared.deliver(Inbound {
                            transport: Transport::Tcp, local, remote, conn: Some(id), message: Err(e), received: crate::clock::instant(),
                        }),
                        Err(e) => {
                            warn!(conn = id.0, %remote, error = %e, "tcp framing error: closing");
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    break "framing error";
                }
            }
        }
    };
    let _ = write.shutdown().await;
    if let Ok(mut t) = shared.conns.lock() {
        t.by_id.remove(&id);
        if t.by_remote.get(&remote) == Some(&id) {
            t.by_remote.remove(&remote);
        }
    }
    debug!(conn = id.0, %remote, reason, "tcp connection closed");
}

pub(super) fn send(shared: &Arc<Shared>, target: &Target, data: Bytes) -> Result<(), SendError> {
    let existing = shared.conns.lock().ok().and_then(|t| {
        target
            .conn
            .and_then(|id| t.by_id.get(&id).map(|e| (id, e.tx.clone())))
            .or_else(|| t.by_remote.get(&target.addr).and_then(|id| t.by_id.get(id).map(|e| (*id, e.tx.clone()))))
    });
    if let Some((id, tx)) = existing {
        return match tx.try_send(data) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The peer stopped reading: drop the connection rather than
                // queue without bound.
                if let Ok(mut t) = shared.conns.lock() {
                    t.by_id.remove(&id);
                }
                Err(SendError::Stuck { addr: target.addr })
            }
            Err(mpsc::error::TrySendError::Closed(data)) => connect_and_send(shared, target.addr, data),
        };
    }
    connect_and_send(shared, target.addr, data)
}

/// Opens a connection to `addr` in the background and sends `data` first.
fn connect_and_send(shared: &Arc<Shared>, addr: SocketAddr, data: Bytes) -> Result<(), SendError> {
    let permit = shared.tcp_permits.clone().try_acquire_owned().map_err(|_| SendError::ConnectionLimit)?;
    let shared = shared.clone();
    tokio::spawn(async move {
        let connect = tokio::time::timeout(shared.config.tcp_connect_timeout, TcpStream::connect(addr)).await;
        let stream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(%addr, error = %e, "tcp connect failed");
                return;
            }
            Err(_) => {
                info!(%addr, "tcp connect timed out");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok().or(shared.tcp_local).unwrap_or(addr);
        let (_, tx) = start_connection(&shared, stream, local, addr, permit);
        let _ = tx.try_send(data);
    });
    Ok(())
}
