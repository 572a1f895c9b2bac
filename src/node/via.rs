//! RFC 3261 §18.2.1 and RFC 3581 on receipt of a request: record where it
//! really came from in the top Via (`received`, `rport`), and work out
//! where the response goes (§18.2.2).

use std::net::{IpAddr, SocketAddr};

use crate::sip::message::{Host, Request, Rport};

/// The result of stamping a request's top Via.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The Via header's new value (all values, comma-joined), when the top
    /// one changed.
    pub new_via_value: Option<String>,
    /// Where a UDP response goes.
    pub reply_addr: SocketAddr,
    /// The top Via's branch.
    pub branch: Option<String>,
    /// The top Via's sent-by, `host[:port]`.
    pub sent_by: String,
    /// The sent-by port, if written.
    pub sent_by_port: Option<u16>,
}

/// Stamps `req`'s top Via for a request received from `remote`. `None` when
/// the request has no parsable Via (no response can be routed).
pub fn stamp(req: &Request, remote: SocketAddr) -> Option<Stamp> {
    // The top value only: the rest are needed (as text) only when the
    // top one is rewritten; the request's validation, which comes after
    // this, parses them all and answers 400 for a malformed one.
    let top = req.headers().top_via().ok()?;
    let port = top.port();
    let mut sent_by = String::with_capacity(top.host_str().len() + 6);
    sent_by.push_str(top.host_str());
    if let Some(p) = port {
        sent_by.push(':');
        crate::sip::text::push_dec(&mut sent_by, p);
    }
    let host_ip: Option<IpAddr> = match top.host() {
        Host::Ipv4(a) => Some(IpAddr::V4(a)),
        Host::Ipv6(a) => Some(IpAddr::V6(a)),
        Host::Domain(_) => None,
    };
    let rport = top.rport();
    let wants_rport = matches!(rport, Some(Rport::Requested));
    let needs_received = host_ip != Some(remote.ip()) || wants_rport;
    let add_received = needs_received && top.received_str().is_none();
    let reply_addr = if rport.is_some() { remote } else { SocketAddr::new(remote.ip(), port.unwrap_or(5060)) };
    // The Via rewritten only when its top value changes (most trunks'
    // requests come from the address their Via names, without rport).
    // A malformed value below the top one: left to the request's
    // validation (a 400 routed by the top Via) when the top Via is kept as
    // is; dropped when it would be rewritten, as the rest could not be
    // carried over value by value.
    let new_via_value = if wants_rport || add_received {
        let mut value = if wants_rport { fill_rport(top.as_str(), remote.port()) } else { top.as_str().to_owned() };
        if add_received {
            // RFC 5118 §4.5: no brackets around an IPv6 received value.
            value.push_str(&format!(";received={}", remote.ip()));
        }
        let vias = req.headers().vias().ok()?;
        let mut all = vec![value];
        all.extend(vias.iter().skip(1).map(|v| v.as_str().to_owned()));
        Some(all.join(", "))
    } else {
        None
    };
    Some(Stamp { new_via_value, reply_addr, branch: top.branch().map(str::to_owned), sent_by, sent_by_port: port })
}

/// Replaces a value-less `;rport` parameter by `;rport=<port>`.
fn fill_rport(via: &str, port: u16) -> String {
    let lower = via.to_ascii_lowercase();
    let mut search = 0;
    while let Some(i) = lower.get(search..).and_then(|s| s.find(";rport")).map(|i| i + search) {
        let end = i + ";rport".len();
        let next = lower.as_bytes().get(end).copied();
        if matches!(next, None | Some(b';') | Some(b' ') | Some(b'\t')) {
            let mut out = String::with_capacity(via.len() + 6);
            out.push_str(via.get(..end).unwrap_or(via));
            out.push_str(&format!("={port}"));
            out.push_str(via.get(end..).unwrap_or(""));
            return out;
        }
        search = end;
    }
    via.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Message, parse};

    fn req(via: &str) -> Request {
        let text = format!(
            "OPTIONS sip:x@example.com SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        match parse(text.as_bytes()).expect("parse") {
            Message::Request(r) => r,
            Message::Response(_) => panic!("request expected"),
        }
    }

    fn remote() -> SocketAddr {
        "203.0.113.9:40000".parse().expect("addr")
    }

    #[test]
    fn rport_is_filled_and_received_added() {
        let s = stamp(&req("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport"), remote()).expect("stamp");
        assert_eq!(
            s.new_via_value.as_deref(),
            Some("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport=40000;received=203.0.113.9")
        );
        assert_eq!(s.reply_addr, remote(), "RFC 3581: back to the source port");
        assert_eq!(s.branch.as_deref(), Some("z9hG4bKa"));
        assert_eq!(s.sent_by, "10.0.0.5:5060");
    }

    #[test]
    fn matching_source_without_rport_changes_nothing_and_replies_to_sent_by_port() {
        let s = stamp(&req("SIP/2.0/UDP 203.0.113.9:5070;branch=z9hG4bKb"), remote()).expect("stamp");
        assert_eq!(s.new_via_value, None);
        assert_eq!(s.reply_addr, "203.0.113.9:5070".parse().expect("addr"));
        let s = stamp(&req("SIP/2.0/UDP 203.0.113.9;branch=z9hG4bKb"), remote()).expect("stamp");
        assert_eq!(s.reply_addr, "203.0.113.9:5060".parse().expect("addr"), "default port");
    }

    #[test]
    fn domain_sent_by_gets_received_and_other_values_are_kept() {
        let s =
            stamp(&req("SIP/2.0/UDP pbx.example.com;branch=z9hG4bKc, SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKd"), remote())
                .expect("stamp");
        assert_eq!(
            s.new_via_value.as_deref(),
            Some(
                "SIP/2.0/UDP pbx.example.com;branch=z9hG4bKc;received=203.0.113.9, SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKd"
            )
        );
    }

    #[test]
    fn a_malformed_lower_via_is_left_to_validation_unless_the_top_one_is_rewritten() {
        // From the address its top Via names: stamped (the request is then
        // answered 400 by its validation, routed by this top Via).
        let s = stamp(&req("SIP/2.0/UDP 203.0.113.9:5070;branch=z9hG4bKf, SIP/2.0/UDP ;;;"), remote()).expect("stamp");
        assert_eq!(s.new_via_value, None);
        assert_eq!(s.reply_addr, "203.0.113.9:5070".parse().expect("addr"));
        // Needing `received`: the lower values cannot be carried over.
        assert_eq!(stamp(&req("SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKg, SIP/2.0/UDP ;;;"), remote()), None);
    }

    #[test]
    fn ipv6_received_has_no_brackets() {
        let r: SocketAddr = "[2001:db8::9]:5062".parse().expect("addr");
        let s = stamp(&req("SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKe;rport"), r).expect("stamp");
        assert_eq!(
            s.new_via_value.as_deref(),
            Some("SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKe;rport=5062;received=2001:db8::9")
        );
        assert_eq!(s.reply_addr, r);
    }

    #[test]
    fn rport_lookalikes_are_not_touched() {
        assert_eq!(fill_rport("SIP/2.0/UDP h;rportx;rport", 9), "SIP/2.0/UDP h;rportx;rport=9");
        assert_eq!(fill_rport("SIP/2.0/UDP h;rport=5", 9), "SIP/2.0/UDP h;rport=5");
    }
}
