//! Transport protocols and listener addresses (`udp://127.0.0.1:5060`,
//! `tcp://[::1]:5060`, `wss://0.0.0.0:8443`). The configuration parses `[sip] listen` into
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
    /// SIP over WebSocket (RFC 7118), plain HTTP: for a browser behind a
    /// TLS-terminating proxy, or tests.
    Ws,
    /// SIP over secure WebSocket (RFC 7118): browsers.
    Wss,
}

impl Transport {
    /// Lowercase scheme, as in the listen URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The transport token of a Via header (`SIP/2.0/WSS`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// The `transport=` URI parameter for a Contact (none for UDP).
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Ws => ";transport=ws",
            Transport::Wss => ";transport=wss",
        }
    }

    /// SIP over WebSocket: a browser's connection, which only the browser
    /// can open (no request can reach it once it is gone).
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
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
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            "tls" => {
                return Err(format!(
                    "listen address `{s}`: transport `{scheme}` is not supported yet (udp, tcp, ws, wss)"
                ));
            }
            _ => {
                return Err(format!(
                    "listen address `{s}`: unknown transport `{scheme}` (expected udp, tcp, ws or wss)"
                ));
            }
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
