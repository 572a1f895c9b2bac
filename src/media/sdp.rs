//! Session descriptions: parsed and printed by `rtc-sdp` (pinned; see
//! `docs/decisions/0003-sdp-crate.md`), anchored here: [`anchor`] points a
//! description's audio streams at trunkgate's address and ports, keeping
//! every other line as the peer wrote it.

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use rtc_sdp::SessionDescription;
use rtc_sdp::description::common::{Address, ConnectionInformation};

use super::ports::PortPair;
use crate::b2bua::{Body, MediaError};

/// Parses an SDP body (CRLF or LF lines).
pub fn parse(body: &Body) -> Result<SessionDescription, MediaError> {
    let text =
        std::str::from_utf8(&body.bytes).map_err(|_| MediaError::Unusable { detail: "SDP is not UTF-8".into() })?;
    SessionDescription::unmarshal(&mut Cursor::new(text)).map_err(|e| MediaError::Unusable { detail: e.to_string() })
}

/// The description as a body (CRLF lines).
pub fn to_body(desc: &SessionDescription) -> Body {
    Body { content_type: "application/sdp".into(), bytes: bytes::Bytes::from(desc.marshal()) }
}

fn connection(addr: IpAddr) -> ConnectionInformation {
    ConnectionInformation {
        network_type: "IN".into(),
        address_type: if addr.is_ipv4() { "IP4" } else { "IP6" }.into(),
        address: Some(Address { address: addr.to_string(), ttl: None, range: None }),
    }
}

/// Points the description at trunkgate: the session's `c=` and `o=`
/// address become `addr`, and the `i`-th active audio stream (`m=audio`
/// with a port other than 0) gets `ports[i]` (RTP on `m=`, RTCP in
/// `a=rtcp`, if the peer wrote one) and a `c=` of `addr` if it had its own.
/// Rejected streams (port 0) and other media keep their lines. Returns how
/// many audio streams were anchored; fewer `ports` than streams leaves the
/// rest rejected (port 0), as RFC 3264 §6 allows.
pub fn anchor(desc: &mut SessionDescription, addr: IpAddr, ports: &[PortPair]) -> usize {
    let c = connection(addr);
    desc.connection_information = Some(c.clone());
    desc.origin.address_type.clone_from(&c.address_type);
    desc.origin.unicast_address = addr.to_string();
    let mut next = ports.iter();
    let mut anchored = 0;
    for m in &mut desc.media_descriptions {
        if m.media_name.media != "audio" || m.media_name.port.value == 0 {
            continue;
        }
        let Some(pair) = next.next() else {
            m.media_name.port.value = 0;
            continue;
        };
        m.media_name.port.value = isize::try_from(pair.rtp).unwrap_or(0);
        m.media_name.port.range = None;
        if m.connection_information.is_some() {
            m.connection_information = Some(c.clone());
        }
        for a in &mut m.attributes {
            if a.key == "rtcp" {
                a.value = Some(format!("{} IN {} {addr}", pair.rtcp(), c.address_type));
            }
        }
        anchored += 1;
    }
    anchored
}

/// Where a browser's media "is" for the relay: the browser leg's packets
/// reach the relay from the shared port's WebRTC session, never from a
/// socket address, so its side is pinned to this stand-in (TEST-NET-1,
/// port 9, never routed) and no stranger can latch it.
pub const BROWSER_STAND_IN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 9);

/// A browser's description (ICE, DTLS, `UDP/TLS/RTP/SAVPF`) as a plain
/// `RTP/AVP` one for a PBX: only what describes the audio itself is kept
/// (codecs, their parameters, ptime, direction); [`anchor`] then gives it
/// our address.
pub fn plain_from_webrtc(desc: &mut SessionDescription) {
    desc.attributes.retain(|a| Direction::from_key(&a.key).is_some());
    for m in &mut desc.media_descriptions {
        m.media_name.protos = vec!["RTP".into(), "AVP".into()];
        m.attributes.retain(|a| {
            matches!(a.key.as_str(), "rtpmap" | "fmtp" | "ptime" | "maxptime") || Direction::from_key(&a.key).is_some()
        });
    }
}

/// What the relay should know of a browser's description: its codecs and
/// direction as written, its address the stand-in (the browser's real
/// address is the WebRTC session's business, and `c=0.0.0.0` from a
/// browser is no hold).
pub fn browser_stream_info(desc: &SessionDescription) -> Option<StreamInfo> {
    let mut desc = desc.clone();
    let c = connection(BROWSER_STAND_IN.ip());
    desc.connection_information = Some(c.clone());
    for m in &mut desc.media_descriptions {
        if m.media_name.media == "audio" && m.media_name.port.value != 0 {
            m.media_name.port.value = 9;
            m.connection_information = Some(c.clone());
            m.attributes.retain(|a| a.key != "rtcp");
        }
    }
    let mut info = stream_info(&desc)?;
    info.rtcp_mux = true;
    info.rtcp = info.rtp;
    Some(info)
}

/// Codecs the relay carries between legs without transcoding.
pub const RELAYABLE: &[&str] = &["PCMU", "PCMA", "G722", "opus", "telephone-event"];

/// The encoding name of a static payload type (RFC 3551) a peer may use
/// without `a=rtpmap`.
fn static_name(pt: u8) -> Option<&'static str> {
    match pt {
        0 => Some("PCMU"),
        3 => Some("GSM"),
        8 => Some("PCMA"),
        9 => Some("G722"),
        18 => Some("G729"),
        _ => None,
    }
}

/// Keeps in each active audio stream only the codecs in `relayable`
/// (matched by encoding name, case-insensitively), removing the others'
/// payload types and their `a=rtpmap`/`a=fmtp`/`a=rtcp-fb` lines. A stream
/// left with no voice codec (telephone-event alone carries no voice) is
/// rejected (port 0). `NoCommonCodec` when no audio stream keeps a voice
/// codec: the call is answered 488.
pub fn keep_relayable(desc: &mut SessionDescription, relayable: &[&str]) -> Result<usize, MediaError> {
    let mut kept_streams = 0;
    for m in &mut desc.media_descriptions {
        if m.media_name.media != "audio" || m.media_name.port.value == 0 {
            continue;
        }
        let codecs = m.codecs();
        let name_of = |pt: u8| -> Option<String> {
            codecs
                .get(&pt)
                .map(|c| c.name.clone())
                .filter(|n| !n.is_empty())
                .or_else(|| static_name(pt).map(str::to_owned))
        };
        let mut dropped: Vec<String> = Vec::new();
        let mut voice = false;
        m.media_name.formats.retain(|f| {
            let name = f.parse::<u8>().ok().and_then(name_of);
            let keep = name.as_deref().is_some_and(|n| relayable.iter().any(|r| r.eq_ignore_ascii_case(n)));
            if keep {
                voice |= !name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case("telephone-event"));
            } else {
                dropped.push(f.clone());
            }
            keep
        });
        m.attributes.retain(|a| {
            if !matches!(a.key.as_str(), "rtpmap" | "fmtp" | "rtcp-fb") {
                return true;
            }
            let pt = a.value.as_deref().and_then(|v| v.split_whitespace().next()).unwrap_or("");
            !dropped.iter().any(|d| d == pt)
        });
        if voice {
            kept_streams += 1;
        } else {
            m.media_name.port.value = 0;
        }
    }
    if kept_streams == 0 {
        return Err(MediaError::NoCommonCodec);
    }
    Ok(kept_streams)
}

/// A stream's direction attribute (RFC 3264 §5.1), as its writer states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Sends and receives.
    #[default]
    SendRecv,
    /// Sends only (puts the other side on hold).
    SendOnly,
    /// Receives only.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The writer wants to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// The writer will send media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    fn from_key(key: &str) -> Option<Direction> {
        match key {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// A payload format of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// Payload type number.
    pub pt: u8,
    /// Encoding name (`PCMU`, `telephone-event`, …), as written.
    pub name: String,
    /// RTP clock rate.
    pub rate: u32,
}

impl Format {
    fn same_codec(&self, other: &Format) -> bool {
        self.name.eq_ignore_ascii_case(&other.name) && self.rate == other.rate
    }

    /// An RFC 4733 event format.
    pub fn is_event(&self) -> bool {
        self.name.eq_ignore_ascii_case("telephone-event")
    }
}

/// What a description says about its first active audio stream: where its
/// writer receives and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// RTP address (`c=` and the `m=` port); `None` for `c=0.0.0.0`/`::`
    /// (an old PBX's hold, RFC 3264 §8.4) or an unusable address.
    pub rtp: Option<SocketAddr>,
    /// RTCP address: `a=rtcp`, else the RTP port + 1 (RFC 3605).
    pub rtcp: Option<SocketAddr>,
    /// `a=rtcp-mux`: RTCP on the RTP port (RFC 5761).
    pub rtcp_mux: bool,
    /// Direction (media level, else session level); `c=0.0.0.0` counts as
    /// `inactive` toward its writer (it cannot receive).
    pub direction: Direction,
    /// Payload formats in `m=` order.
    pub formats: Vec<Format>,
}

impl StreamInfo {
    /// Clock rate of the first voice format (timestamps of the stream).
    pub fn clock_rate(&self) -> u32 {
        self.formats.iter().find(|f| !f.is_event()).map_or(8000, |f| f.rate)
    }

    /// The stream puts the call on hold (not both directions flowing).
    pub fn is_hold(&self) -> bool {
        self.direction != Direction::SendRecv || self.rtp.is_none()
    }

    /// Whether RFC 4733 events are among its formats.
    pub fn has_events(&self) -> bool {
        self.formats.iter().any(Format::is_event)
    }
}

/// The first active audio stream of `desc`, if any.
pub fn stream_info(desc: &SessionDescription) -> Option<StreamInfo> {
    let m = desc.media_descriptions.iter().find(|m| m.media_name.media == "audio" && m.media_name.port.value != 0)?;
    let c = m.connection_information.as_ref().or(desc.connection_information.as_ref());
    let ip: Option<IpAddr> = c.and_then(|c| c.address.as_ref()).and_then(|a| {
        // `c=IN IP4 224.2.1.1/127` carries a TTL: the address is before it.
        a.address.split('/').next().and_then(|x| x.parse().ok())
    });
    let port = u16::try_from(m.media_name.port.value).ok().filter(|p| *p != 0);
    let rtp = match (ip, port) {
        (Some(ip), Some(port)) if !ip.is_unspecified() => Some(SocketAddr::new(ip, port)),
        _ => None,
    };
    let rtcp_mux = m.has_attribute("rtcp-mux");
    let rtcp = match m.attribute("rtcp").flatten() {
        Some(v) => {
            let mut it = v.split_whitespace();
            let p = it.next().and_then(|p| p.parse::<u16>().ok());
            let addr = it.nth(2).and_then(|a| a.parse::<IpAddr>().ok()).or(rtp.map(|r| r.ip()));
            match (p, addr) {
                (Some(p), Some(a)) if !a.is_unspecified() && p != 0 => Some(SocketAddr::new(a, p)),
                _ => None,
            }
        }
        None => rtp.and_then(|r| r.port().checked_add(1).map(|p| SocketAddr::new(r.ip(), p))),
    };
    let direction = m
        .attributes
        .iter()
        .find_map(|a| Direction::from_key(&a.key))
        .or_else(|| desc.attributes.iter().find_map(|a| Direction::from_key(&a.key)))
        .unwrap_or_default();
    let direction =
        if rtp.is_none() && ip.is_some_and(|i| i.is_unspecified()) { Direction::Inactive } else { direction };
    let codecs = m.codecs();
    let formats = m
        .media_name
        .formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .map(|pt| match codecs.get(&pt).filter(|c| !c.name.is_empty()) {
            Some(c) => Format { pt, name: c.name.clone(), rate: if c.clock_rate == 0 { 8000 } else { c.clock_rate } },
            None => Format { pt, name: static_name(pt).unwrap_or("").to_owned(), rate: 8000 },
        })
        .collect();
    Some(StreamInfo { rtp, rtcp, rtcp_mux, direction, formats })
}

/// Where packets of payload type `pt` sent by a side that numbers formats
/// as `from` go in the numbering of `to` (same encoding name and rate);
/// types with no counterpart keep their number. Indexed by the 7-bit PT.
pub fn payload_map(from: &[Format], to: &[Format]) -> [u8; 128] {
    let mut map: [u8; 128] = std::array::from_fn(|i| u8::try_from(i).unwrap_or(0));
    for f in from {
        if let Some(t) = to.iter().find(|t| t.same_codec(f))
            && f.pt < 128
        {
            map[usize::from(f.pt)] = t.pt & 0x7f;
        }
    }
    map
}

/// Renumbers the payload types of the first active audio stream of an
/// answer to those the offerer used for the same codecs (RFC 3264 §6.1:
/// the answer should keep the offer's numbers), rewriting `m=` and the
/// `a=rtpmap`/`a=fmtp`/`a=rtcp-fb` lines. The relay then maps between the
/// two legs' numbers. Types whose new number another format already holds
/// are left alone.
pub fn renumber_like(desc: &mut SessionDescription, offer: &[Format]) {
    let Some(info) = stream_info(desc) else { return };
    let Some(m) =
        desc.media_descriptions.iter_mut().find(|m| m.media_name.media == "audio" && m.media_name.port.value != 0)
    else {
        return;
    };
    let mut map: Vec<(String, String)> = Vec::new();
    for f in &info.formats {
        let Some(o) = offer.iter().find(|o| o.same_codec(f)) else { continue };
        let taken = info.formats.iter().any(|g| g.pt == o.pt && !g.same_codec(f));
        if o.pt != f.pt && !taken {
            map.push((f.pt.to_string(), o.pt.to_string()));
        }
    }
    if map.is_empty() {
        return;
    }
    let new = |pt: &str| map.iter().find(|(a, _)| a == pt).map(|(_, b)| b.clone());
    for f in &mut m.media_name.formats {
        if let Some(n) = new(f) {
            *f = n;
        }
    }
    for a in &mut m.attributes {
        if !matches!(a.key.as_str(), "rtpmap" | "fmtp" | "rtcp-fb") {
            continue;
        }
        let Some(v) = a.value.as_mut() else { continue };
        let (pt, rest) = v.split_once(' ').unwrap_or((v.as_str(), ""));
        if let Some(n) = new(pt) {
            *v = if rest.is_empty() { n } else { format!("{n} {rest}") };
        }
    }
}

/// Adds `telephone-event/<rate>` as payload type `pt` (with `0-16`) to the
/// first active audio stream, unless it has events already.
pub fn add_events(desc: &mut SessionDescription, pt: u8) {
    let Some(info) = stream_info(desc) else { return };
    if info.has_events() || info.formats.iter().any(|f| f.pt == pt) {
        return;
    }
    let rate = info.clock_rate();
    let Some(m) =
        desc.media_descriptions.iter_mut().find(|m| m.media_name.media == "audio" && m.media_name.port.value != 0)
    else {
        return;
    };
    m.media_name.formats.push(pt.to_string());
    // Before the direction and other stream-wide attributes is where
    // stacks look for rtpmaps, but anywhere is valid: append.
    m.attributes.push(rtc_sdp::description::common::Attribute {
        key: "rtpmap".into(),
        value: Some(format!("{pt} telephone-event/{rate}")),
    });
    m.attributes
        .push(rtc_sdp::description::common::Attribute { key: "fmtp".into(), value: Some(format!("{pt} 0-16")) });
}

/// A dynamic payload type no format of the first audio stream uses
/// (101 when free, the usual choice for telephone-event).
pub fn free_dynamic_pt(desc: &SessionDescription) -> u8 {
    let used: Vec<u8> = stream_info(desc).map(|i| i.formats.iter().map(|f| f.pt).collect()).unwrap_or_default();
    std::iter::once(101).chain(96..=127).find(|p| !used.contains(p)).unwrap_or(101)
}

/// Increments the `o=` session version (a changed description, RFC 3264 §8).
pub fn bump_version(desc: &mut SessionDescription) {
    desc.origin.session_version = desc.origin.session_version.wrapping_add(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(s: &str) -> Body {
        Body { content_type: "application/sdp".into(), bytes: bytes::Bytes::from(s.to_owned()) }
    }

    fn text(desc: &SessionDescription) -> String {
        String::from_utf8(to_body(desc).bytes.to_vec()).unwrap().replace("\r\n", "\n")
    }

    const CISCO_LF: &str = "v=0\no=CiscoSystemsCCM-SIP 2000 1 IN IP4 10.1.1.5\ns=SIP Call\nc=IN IP4 10.1.1.20\nt=0 0\n\
m=audio 24580 RTP/AVP 0 8 101\na=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\n\
a=fmtp:101 0-15\na=ptime:20\na=X-vendor-thing:foo bar\na=sendrecv\n";

    #[test]
    fn pbx_offers_round_trip_unchanged() {
        for sdp in [
            CISCO_LF,
            "v=0\no=- 1 2 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\nm=audio 5004 RTP/AVP 9 0 101\n\
a=rtcp:5005 IN IP6 2001:db8::1\na=rtpmap:9 G722/8000\na=rtpmap:101 telephone-event/8000\na=maxptime:40\n",
            "v=0\no=pbx 5 6 IN IP4 192.0.2.1\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n",
            "v=0\no=x 1 1 IN IP4 192.0.2.1\ns=Talk\ni=info\nc=IN IP4 192.0.2.1\nb=AS:84\nt=0 0\na=tool:foo\n\
m=audio 4000 RTP/AVP 0 101\nb=TIAS:64000\na=rtpmap:101 telephone-event/8000\nm=video 0 RTP/AVP 96\n",
        ] {
            let desc = parse(&body(sdp)).expect("parses");
            assert_eq!(text(&desc), sdp);
        }
    }

    #[test]
    fn anchoring_rewrites_addresses_and_ports_and_keeps_the_rest() {
        let mut desc = parse(&body(CISCO_LF)).unwrap();
        let n = anchor(&mut desc, "203.0.113.1".parse().unwrap(), &[PortPair { rtp: 30000 }]);
        assert_eq!(n, 1);
        assert_eq!(
            text(&desc),
            CISCO_LF
                .replace("IN IP4 10.1.1.5", "IN IP4 203.0.113.1")
                .replace("c=IN IP4 10.1.1.20", "c=IN IP4 203.0.113.1")
                .replace("m=audio 24580", "m=audio 30000")
        );
    }

    #[test]
    fn anchoring_an_ipv6_stream_updates_its_rtcp_and_leaves_rejected_streams() {
        let sdp = "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 5004 RTP/AVP 0\n\
a=rtcp:5005 IN IP4 192.0.2.1\nm=audio 0 RTP/AVP 8\nm=video 6000 RTP/AVP 96\n";
        let mut desc = parse(&body(sdp)).unwrap();
        let n = anchor(&mut desc, "2001:db8::7".parse().unwrap(), &[PortPair { rtp: 40000 }, PortPair { rtp: 40002 }]);
        assert_eq!(n, 1, "the rejected audio stream stays rejected");
        let out = text(&desc);
        assert!(out.contains("o=- 1 2 IN IP6 2001:db8::7\n"), "{out}");
        assert!(out.contains("c=IN IP6 2001:db8::7\n"), "{out}");
        assert!(out.contains("m=audio 40000 RTP/AVP 0\na=rtcp:40001 IN IP6 2001:db8::7\n"), "{out}");
        assert!(out.contains("m=audio 0 RTP/AVP 8\n"), "{out}");
        assert!(out.contains("m=video 6000 RTP/AVP 96\n"), "other media untouched: {out}");
    }

    #[test]
    fn too_few_ports_reject_the_extra_streams_and_garbage_is_unusable() {
        let sdp = "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 5004 RTP/AVP 0\nm=audio 5006 RTP/AVP 8\n";
        let mut desc = parse(&body(sdp)).unwrap();
        assert_eq!(anchor(&mut desc, "192.0.2.99".parse().unwrap(), &[PortPair { rtp: 30000 }]), 1);
        assert!(text(&desc).contains("m=audio 0 RTP/AVP 8\n"));
        assert!(matches!(parse(&body("hello")), Err(MediaError::Unusable { .. })));
        let latin1 = Body { content_type: "application/sdp".into(), bytes: bytes::Bytes::from_static(b"v=0\n\xff") };
        assert!(matches!(parse(&latin1), Err(MediaError::Unusable { .. })));
    }

    #[test]
    fn only_relayable_codecs_are_offered_with_their_lines() {
        let sdp = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n\
m=audio 4000 RTP/AVP 18 0 97 8 101\na=rtpmap:18 G729/8000\na=fmtp:18 annexb=no\na=rtpmap:97 iLBC/8000\n\
a=fmtp:97 mode=30\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na=ptime:20\n";
        let mut desc = parse(&body(sdp)).unwrap();
        assert_eq!(keep_relayable(&mut desc, RELAYABLE), Ok(1));
        assert_eq!(
            text(&desc),
            "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 0 8 101\n\
a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\na=ptime:20\n"
        );
    }

    #[test]
    fn no_voice_codec_in_common_is_488() {
        let only_g729 = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 18 101\n\
a=rtpmap:101 telephone-event/8000\n";
        let mut desc = parse(&body(only_g729)).unwrap();
        let err = keep_relayable(&mut desc, RELAYABLE).unwrap_err();
        assert_eq!((err.status(), err.token()), (488, "no-common-codec"));
        // Telephone-event alone keeps no stream alive.
        assert!(text(&desc).contains("m=audio 0 RTP/AVP 101\n"));
    }

    #[test]
    fn stream_info_reads_addresses_mux_direction_and_formats() {
        let d = parse(&body(CISCO_LF)).unwrap();
        let i = stream_info(&d).unwrap();
        assert_eq!(i.rtp, Some("10.1.1.20:24580".parse().unwrap()));
        assert_eq!(i.rtcp, Some("10.1.1.20:24581".parse().unwrap()));
        assert!(!i.rtcp_mux);
        assert_eq!(i.direction, Direction::SendRecv);
        assert_eq!(
            i.formats.iter().map(|f| (f.pt, f.name.as_str(), f.rate)).collect::<Vec<_>>(),
            [(0, "PCMU", 8000), (8, "PCMA", 8000), (101, "telephone-event", 8000)]
        );
        assert!(i.has_events() && !i.is_hold());

        let v6 = "v=0\no=- 1 2 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\na=sendonly\n\
m=audio 5004 RTP/AVP 111 0\na=rtpmap:111 opus/48000/2\na=rtcp:5010 IN IP6 2001:db8::9\na=rtcp-mux\n";
        let i = stream_info(&parse(&body(v6)).unwrap()).unwrap();
        assert_eq!(i.rtp, Some("[2001:db8::1]:5004".parse().unwrap()));
        assert_eq!(i.rtcp, Some("[2001:db8::9]:5010".parse().unwrap()));
        assert!(i.rtcp_mux);
        assert_eq!(i.direction, Direction::SendOnly, "session-level direction applies");
        assert_eq!(i.clock_rate(), 48000);
        assert!(i.is_hold());

        // An old PBX's hold: c=0.0.0.0 (RFC 2543).
        let old = "v=0\no=pbx 5 6 IN IP4 192.0.2.1\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 4000 RTP/AVP 0\n";
        let i = stream_info(&parse(&body(old)).unwrap()).unwrap();
        assert_eq!((i.rtp, i.direction), (None, Direction::Inactive));
        assert!(i.is_hold());
        // Only rejected streams: nothing to relay.
        let none = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 0 RTP/AVP 0\n";
        assert_eq!(stream_info(&parse(&body(none)).unwrap()), None);
    }

    #[test]
    fn payload_types_map_by_name_and_rate() {
        let f = |pt, name: &str, rate| Format { pt, name: name.into(), rate };
        let pbx = [f(0, "PCMU", 8000), f(101, "telephone-event", 8000)];
        let phone = [f(0, "PCMU", 8000), f(96, "telephone-event", 8000), f(97, "telephone-event", 48000)];
        let m = payload_map(&pbx, &phone);
        assert_eq!((m[0], m[101], m[8], m[96]), (0, 96, 8, 96));
        let back = payload_map(&phone, &pbx);
        assert_eq!((back[96], back[97], back[0]), (101, 97, 0), "no 48 kHz events on the PBX side: unchanged");
    }

    #[test]
    fn an_answer_takes_the_offers_payload_numbers() {
        let answer = "v=0\no=- 1 1 IN IP4 192.0.2.5\ns=-\nc=IN IP4 192.0.2.5\nt=0 0\n\
m=audio 5000 RTP/AVP 8 96\na=rtpmap:8 PCMA/8000\na=rtpmap:96 telephone-event/8000\na=fmtp:96 0-16\n";
        let mut desc = parse(&body(answer)).unwrap();
        let f = |pt, name: &str| Format { pt, name: name.into(), rate: 8000 };
        renumber_like(&mut desc, &[f(8, "PCMA"), f(101, "telephone-event")]);
        assert_eq!(text(&desc), answer.replace("8 96", "8 101").replace(":96 ", ":101 "));
    }

    #[test]
    fn events_are_added_with_a_free_type_at_the_streams_rate() {
        let sdp = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 4000 RTP/AVP 8 101\n\
a=rtpmap:101 iLBC/8000\n";
        let mut desc = parse(&body(sdp)).unwrap();
        let pt = free_dynamic_pt(&desc);
        assert_eq!(pt, 96, "101 is taken");
        add_events(&mut desc, pt);
        assert_eq!(
            text(&desc),
            format!("{}a=rtpmap:96 telephone-event/8000\na=fmtp:96 0-16\n", sdp.replace("8 101", "8 101 96"))
        );
        let before = text(&desc);
        add_events(&mut desc, 97);
        assert_eq!(text(&desc), before, "events once only");
    }
}
