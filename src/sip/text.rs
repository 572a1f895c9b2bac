//! Building header text without `format!`.
//!
//! Each call writes a dozen or so values that are a socket address, a
//! number or a hex token (Via, Contact, CSeq, tags and branches). Through
//! `core::fmt` each took about 1,400 instructions (callgrind, issue 11);
//! these append the same text directly. `itoa` does the decimal digits.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// Appends `addr` as its `Display` writes it: `a.b.c.d:port`, or
/// `[v6]:port` (IPv6 through `core::fmt`: rare here).
pub fn push_socket_addr(out: &mut String, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => push_ipv4(out, ip),
        IpAddr::V6(ip) => {
            out.push('[');
            let _ = write!(out, "{ip}");
            out.push(']');
        }
    }
    out.push(':');
    push_dec(out, addr.port());
}

/// Appends `ip` in dotted decimal, as its `Display` writes it.
pub fn push_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_dec(out, octet);
    }
}

/// Appends `n` in decimal.
pub fn push_dec(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `n` in lower-case hex without leading zeros, as `{:x}` does.
pub fn push_hex(out: &mut String, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = DIGITS.get((v & 0xf) as usize).copied().unwrap_or(b'0');
        }
        v >>= 4;
        if v == 0 || i == 0 {
            break;
        }
    }
    // Only ASCII hex digits were written.
    out.push_str(std::str::from_utf8(buf.get(i..).unwrap_or_default()).unwrap_or("0"));
}

/// `seq method`: a CSeq value.
pub fn cseq(seq: u32, method: &str) -> String {
    let mut s = String::with_capacity(11 + method.len());
    push_dec(&mut s, seq);
    s.push(' ');
    s.push_str(method);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_numbers_and_hex_read_as_their_display_forms() {
        for addr in
            ["127.0.0.1:5060", "0.0.0.0:0", "255.255.255.255:65535", "10.20.3.4:80", "[::1]:5061", "[2001:db8::7]:5060"]
        {
            let a: SocketAddr = addr.parse().unwrap();
            let mut s = String::new();
            push_socket_addr(&mut s, a);
            assert_eq!(s, a.to_string());
        }
        for n in [0u64, 1, 9, 10, 15, 16, 255, 0xdead_beef, u64::MAX] {
            let mut s = String::new();
            push_hex(&mut s, n);
            assert_eq!(s, format!("{n:x}"));
        }
        assert_eq!(cseq(0, "ACK"), "0 ACK");
        assert_eq!(cseq(u32::MAX, "INVITE"), "4294967295 INVITE");
    }
}
