//! Session descriptions: parsed and printed by `rtc-sdp` (pinned; see
//! `docs/decisions/0003-sdp-crate.md`), anchored here: [`anchor`] points a
//! description's audio streams at trunkgate's address and ports, keeping
//! every other line as the peer wrote it.

use std::io::Cursor;
use std::net::IpAddr;

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
}
