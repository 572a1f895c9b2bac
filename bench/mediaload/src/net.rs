//! Thin, safe wrappers over the Linux calls the media threads need:
//! non-blocking UDP sockets with large buffers and kernel receive
//! timestamps, `sendmmsg`/`recvmmsg` batches, epoll polled without waiting.
//! Every `unsafe` block is here.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::clock;
use crate::rtp::PACKET_LEN;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    cvt(r).map(drop)
}

/// Binds a non-blocking UDP socket on `addr` (port 0: any). `buffer` sets
/// both socket buffers (forced past `rmem_max` when running as root);
/// `timestamps` asks for kernel receive timestamps and drop counters.
pub fn bind_udp(addr: SocketAddr, buffer: Option<usize>, timestamps: bool) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr)?;
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    if let Some(size) = buffer {
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
            if setsockopt_int(fd, libc::SOL_SOCKET, force, size).is_err() {
                setsockopt_int(fd, libc::SOL_SOCKET, plain, size)?;
            }
        }
    }
    if timestamps {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    }
    Ok(sock)
}

/// Raises the soft limit of open files to the hard limit; returns it.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit to fill and then to pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// A socket address in the C form, for `msg_name`.
#[derive(Clone, Copy)]
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for RawAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawAddr({:?})", socket_addr(&self.storage))
    }
}

impl RawAddr {
    /// Converts a Rust address.
    pub fn new(addr: SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr { storage, len: len as libc::socklen_t }
    }
}

/// Reads a C socket address back (None for other families).
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let s: libc::sockaddr_in6 = unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = Ipv6Addr::from(s.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(s.sin6_port), s.sin6_flowinfo, s.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Up to `capacity` packets to send from one socket, each to its own
/// destination, in one `sendmmsg`.
pub struct SendBatch {
    bufs: Vec<[u8; PACKET_LEN]>,
    addrs: Vec<RawAddr>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    len: usize,
}

// SAFETY: the raw pointers inside `hdrs`/`iovs` only ever point into this
// batch's own vectors and are rewritten before every system call, so the
// batch may move to another thread with its owner.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// An empty batch of at most `capacity` packets.
    pub fn new(capacity: usize) -> SendBatch {
        let capacity = capacity.clamp(1, 1024);
        SendBatch {
            bufs: vec![[0; PACKET_LEN]; capacity],
            addrs: vec![RawAddr::new(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)); capacity],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; capacity],
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            hdrs: vec![unsafe { zeroed() }; capacity],
            len: 0,
        }
    }

    /// True when no more packets fit.
    pub fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    /// How many packets are queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The next free packet buffer, to be sent to `to`; None when full.
    pub fn push(&mut self, to: &RawAddr) -> Option<&mut [u8; PACKET_LEN]> {
        let i = self.len;
        let buf = self.bufs.get_mut(i)?;
        if let Some(a) = self.addrs.get_mut(i) {
            *a = *to;
        }
        self.len += 1;
        Some(buf)
    }

    /// Drops the queued packets.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The queued packets, to stamp them just before sending.
    pub fn packets_mut(&mut self) -> &mut [[u8; PACKET_LEN]] {
        &mut self.bufs[..self.len]
    }

    /// Sends every queued packet on `fd` (retrying the rest after a partial
    /// send); returns how many went out and empties the batch. Packets the
    /// kernel refused (full buffers) are dropped and counted by the caller
    /// as `len - sent`.
    pub fn send(&mut self, fd: RawFd) -> usize {
        let n = self.len;
        for i in 0..n {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: PACKET_LEN };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i].storage as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.addrs[i].len;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let mut sent = 0;
        while sent < n {
            // SAFETY: hdrs[sent..n] point into iovs/bufs/addrs, which are not
            // moved or resized during the call.
            let r = unsafe {
                libc::sendmmsg(fd, self.hdrs[sent..].as_mut_ptr(), (n - sent) as libc::c_uint, libc::MSG_DONTWAIT)
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // EAGAIN/ENOBUFS or a refused destination: skip one packet
                // so one bad destination cannot stall the rest.
                if r < 0 && e.raw_os_error() != Some(libc::EAGAIN) {
                    sent += 1;
                    continue;
                }
                break;
            }
            sent += r as usize;
        }
        let ok = sent.min(n);
        self.len = 0;
        ok
    }
}

/// What one received datagram carried besides its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecvMeta {
    /// Length of the datagram.
    pub len: usize,
    /// Kernel receive time (`CLOCK_REALTIME` ns), if the kernel gave one.
    pub kernel_ns: Option<u64>,
    /// The socket's cumulative count of datagrams dropped for lack of
    /// buffer space (`SO_RXQ_OVFL`), if given.
    pub drops: Option<u32>,
}

const RECV_BUF: usize = 2048;
const CONTROL_LEN: usize = 128;

/// Up to `capacity` datagrams from one socket in one `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<[u8; RECV_BUF]>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<[u64; CONTROL_LEN / 8]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    meta: Vec<RecvMeta>,
    len: usize,
}

// SAFETY: as for `SendBatch`: the pointers are into the batch itself and
// are rewritten before every call.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Room for `capacity` datagrams.
    pub fn new(capacity: usize) -> RecvBatch {
        let capacity = capacity.clamp(1, 1024);
        RecvBatch {
            bufs: vec![[0; RECV_BUF]; capacity],
            // SAFETY: all-zero is a valid sockaddr_storage.
            names: vec![unsafe { zeroed() }; capacity],
            ctrl: vec![[0; CONTROL_LEN / 8]; capacity],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; capacity],
            // SAFETY: all-zero is a valid mmsghdr.
            hdrs: vec![unsafe { zeroed() }; capacity],
            meta: vec![RecvMeta::default(); capacity],
            len: 0,
        }
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Receives what is waiting on `fd` (never blocks); returns the count
    /// (0 when nothing was waiting).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: RECV_BUF };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = CONTROL_LEN;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        self.len = 0;
        // SAFETY: every header points into this batch's buffers, which stay
        // in place during the call; the lengths given are theirs.
        let r = unsafe {
            libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let got = (r as usize).min(n);
        for i in 0..got {
            let mut meta =
                RecvMeta { len: (self.hdrs[i].msg_len as usize).min(RECV_BUF), kernel_ns: None, drops: None };
            let h = &self.hdrs[i].msg_hdr;
            // SAFETY: the kernel filled msg_control/msg_controllen of this
            // header; the CMSG macros stay within them.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
                    let data = libc::CMSG_DATA(c);
                    if level == libc::SOL_SOCKET && kind == libc::SCM_TIMESTAMPNS {
                        let ts: libc::timespec = std::ptr::read_unaligned(data.cast());
                        meta.kernel_ns = Some(clock::timespec_ns(&ts));
                    } else if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL {
                        meta.drops = Some(std::ptr::read_unaligned(data.cast::<u32>()));
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            self.meta[i] = meta;
        }
        self.len = got;
        Ok(got)
    }

    /// Datagram `i` of the last receive and what came with it.
    pub fn get(&self, i: usize) -> Option<(&[u8], RecvMeta)> {
        if i >= self.len {
            return None;
        }
        let meta = *self.meta.get(i)?;
        Some((self.bufs.get(i)?.get(..meta.len)?, meta))
    }

    /// The source address of datagram `i` of the last receive.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.len {
            return None;
        }
        socket_addr(self.names.get(i)?)
    }
}

/// An epoll instance (level-triggered, input only), polled without waiting.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new instance returning at most `max_events` per wait.
    pub fn new(max_events: usize) -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked before it is owned.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)] })
    }

    /// Watches `fd` for input, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `ev` is valid for the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
    }

    /// The epoll descriptor itself: readable when a watched one is, so a
    /// `poll` over a few descriptors can include many.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Stops watching `fd` (closing it does that too).
    pub fn remove(&self, fd: RawFd) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }

    /// The tokens of the descriptors ready now (never blocks).
    pub fn ready(&mut self, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        // SAFETY: `events` has room for its length.
        let r = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as i32, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        out.extend(self.events.iter().take(r as usize).map(|e| e.u64));
        Ok(())
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes; returns
/// the readable ones' indexes.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<usize>> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `p` is a valid array of its length.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(Vec::new()) } else { Err(e) };
    }
    Ok(p.iter().enumerate().filter(|(_, p)| p.revents != 0).map(|(i, _)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cross_loopback_with_kernel_timestamps() {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let a = bind_udp(lo, Some(1 << 20), false).expect("bind a");
        let b = bind_udp(lo, Some(1 << 20), true).expect("bind b");
        let to = RawAddr::new(b.local_addr().expect("addr"));
        let mut s = SendBatch::new(8);
        for i in 0..5u8 {
            let buf = s.push(&to).expect("room");
            buf.fill(i);
        }
        assert_eq!(s.send(a.as_raw_fd()), 5);
        let mut r = RecvBatch::new(16);
        let before = clock::real_ns();
        let mut got = 0;
        for _ in 0..100 {
            got += r.recv(b.as_raw_fd()).expect("recv");
            if got == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, 5);
        let (bytes, meta) = r.get(4).expect("fifth");
        assert_eq!(bytes.len(), PACKET_LEN);
        assert_eq!(bytes[0], 4);
        assert!(meta.kernel_ns.is_some_and(|t| t + 1_000_000_000 > before));
        assert_eq!(r.source(0), Some(a.local_addr().expect("addr")));
        assert!(r.get(5).is_none());
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["127.0.0.1:5060", "[::1]:7078"] {
            let a: SocketAddr = a.parse().expect("addr");
            assert_eq!(socket_addr(&RawAddr::new(a).storage), Some(a));
        }
    }
}
