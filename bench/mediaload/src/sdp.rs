//! The little SDP the generator needs: a G.711 offer/answer naming one of
//! its endpoints, and where the peer's SDP says to send audio.

use std::net::{IpAddr, SocketAddr};

/// An SDP naming `addr` as the audio endpoint: PCMU with telephone-event,
/// 20 ms packets, sendrecv.
pub fn describe(session: u64, version: u32, addr: SocketAddr) -> String {
    let (family, ip) = match addr.ip() {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    format!(
        "v=0\r\no=mediaload {session} {version} IN {family} {ip}\r\ns=mediaload\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        port = addr.port()
    )
}

/// What an SDP says about its first audio stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audio {
    /// Send to this address.
    At(SocketAddr),
    /// On hold or disabled (`c=` unspecified, or port 0).
    Inactive,
}

/// Why an SDP gives no audio destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdpError {
    /// Not UTF-8.
    NotText,
    /// No `m=audio` line.
    NoAudio,
    /// The audio `m=` line's port is not a number.
    BadPort,
    /// No usable `c=` line for the audio stream.
    NoConnection,
}

/// The destination of the first `m=audio` stream (media-level `c=` wins
/// over the session's).
pub fn audio_destination(sdp: &[u8]) -> Result<Audio, SdpError> {
    let text = std::str::from_utf8(sdp).map_err(|_| SdpError::NotText)?;
    let mut session_c: Option<Option<IpAddr>> = None;
    let mut media_c: Option<Option<IpAddr>> = None;
    let mut port: Option<u16> = None;
    let mut in_audio = false;
    let mut seen_media = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            if in_audio {
                break; // only the first audio stream
            }
            seen_media = true;
            let mut f = m.split_ascii_whitespace();
            if f.next() == Some("audio") {
                let p = f.next().and_then(|p| p.split('/').next()).ok_or(SdpError::BadPort)?;
                port = Some(p.parse().map_err(|_| SdpError::BadPort)?);
                in_audio = true;
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = c.split_ascii_whitespace().nth(2).and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok());
            if in_audio {
                media_c = Some(ip);
            } else if !seen_media {
                session_c = Some(ip);
            }
        }
    }
    let port = port.ok_or(SdpError::NoAudio)?;
    let ip = media_c.or(session_c).flatten().ok_or(SdpError::NoConnection)?;
    if port == 0 || ip.is_unspecified() {
        return Ok(Audio::Inactive);
    }
    Ok(Audio::At(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_description_round_trips() {
        for a in ["127.0.0.1:40000", "[::1]:7078"] {
            let a: SocketAddr = a.parse().expect("addr");
            assert_eq!(audio_destination(describe(1, 1, a).as_bytes()), Ok(Audio::At(a)));
        }
    }

    #[test]
    fn media_level_connection_and_hold() {
        let s = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=video 5000 RTP/AVP 96\r\nc=IN IP4 10.0.0.9\r\n\
                 m=audio 6000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\n";
        assert_eq!(audio_destination(s.as_bytes()), Ok(Audio::At("10.0.0.2:6000".parse().expect("addr"))));
        let s = "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 6000 RTP/AVP 0\r\n";
        assert_eq!(audio_destination(s.as_bytes()), Ok(Audio::At("10.0.0.1:6000".parse().expect("addr"))));
        let hold = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 6000 RTP/AVP 0\r\n";
        assert_eq!(audio_destination(hold.as_bytes()), Ok(Audio::Inactive));
    }

    #[test]
    fn broken_descriptions_are_errors() {
        assert_eq!(audio_destination(b"v=0\r\n"), Err(SdpError::NoAudio));
        assert_eq!(audio_destination(b"m=audio x RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\n"), Err(SdpError::BadPort));
        assert_eq!(audio_destination(b"m=audio 5 RTP/AVP 0\r\n"), Err(SdpError::NoConnection));
        assert_eq!(audio_destination(b"m=audio 5 RTP/AVP 0\r\nc=IN IP4 nope\r\n"), Err(SdpError::NoConnection));
        assert_eq!(audio_destination(&[0xff, 0xfe]), Err(SdpError::NotText));
    }
}
