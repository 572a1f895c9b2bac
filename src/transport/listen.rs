//! Transport protocols and listener addresses (`udp://127.0.0.1:5060`,
//! `tcp://[::1]:5060`). The configuration parses `[sip] listen` into
//! [`ListenAddr`]s (and re-exports both types); the transports bind them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;

/// A SIP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// SIP over UDP.
    Udp,
    /// SIP over TCP.
    Tcp,
}

impl Transport {
    /// Lowercase scheme, as in the listen URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// One socket to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    /// Transport protocol.
    pub transport: Transport,
    /// Local address and port (port 0 picks a free one).
    pub addr: SocketAddr,
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.as_str(), self.addr)
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) =
            s.split_once("://").ok_or_else(|| format!("listen address `{s}` must look like udp://127.0.0.1:5060"))?;
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" | "ws" | "wss" => {
                return Err(format!("listen address `{s}`: transport `{scheme}` is not supported yet (udp, tcp)"));
            }
            _ => return Err(format!("listen address `{s}`: unknown transport `{scheme}` (expected udp or tcp)")),
        };
        let addr = rest
            .parse::<SocketAddr>()
            .map_err(|_| format!("listen address `{s}`: `{rest}` is not IP:PORT (IPv6 as [::1]:5060)"))?;
        Ok(Self { transport, addr })
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
