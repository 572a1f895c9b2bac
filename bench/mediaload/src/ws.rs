//! A browser's SIP connection: one WebSocket (RFC 7118, `sip`
//! subprotocol, plain `ws://`) carrying one SIP message per frame.
//!
//! The opening handshake is blocking (made before the run, a few hundred
//! µs each on loopback); after it the socket is non-blocking and driven
//! from the signalling thread's poll loop: [`Ws::read_all`] when it is
//! readable, [`Ws::flush`] while a write is pending. Pings are answered
//! by tungstenite on the next read or flush (trunkgate closes a connection
//! that sends nothing for two ping intervals).

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// Why a connection failed or ended.
#[derive(Debug)]
pub enum WsError {
    /// TCP connect or socket setup.
    Io(std::io::Error),
    /// The WebSocket handshake (or a later protocol error).
    Ws(String),
    /// The server did not select the `sip` subprotocol.
    NoSipProtocol,
    /// The server closed the connection.
    Closed,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Io(e) => write!(f, "{e}"),
            WsError::Ws(e) => write!(f, "websocket: {e}"),
            WsError::NoSipProtocol => f.write_str("the server did not select the sip subprotocol"),
            WsError::Closed => f.write_str("closed by the server"),
        }
    }
}

/// One SIP-over-WebSocket connection.
pub struct Ws {
    ws: WebSocket<TcpStream>,
    /// A write is waiting for room in the socket.
    pending: bool,
    closed: bool,
}

impl Ws {
    /// Connects to `ws://<addr>/sip` asking for the `sip` subprotocol.
    pub fn connect(addr: SocketAddr) -> Result<Ws, WsError> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(WsError::Io)?;
        tcp.set_nodelay(true).map_err(WsError::Io)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).map_err(WsError::Io)?;
        let mut req = format!("ws://{addr}/sip").into_client_request().map_err(|e| WsError::Ws(e.to_string()))?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", tungstenite::http::HeaderValue::from_static("sip"));
        let (ws, resp) = tungstenite::client(req, tcp).map_err(|e| WsError::Ws(e.to_string()))?;
        if resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()) != Some("sip") {
            return Err(WsError::NoSipProtocol);
        }
        ws.get_ref().set_nonblocking(true).map_err(WsError::Io)?;
        Ok(Ws { ws, pending: false, closed: false })
    }

    /// The socket, to watch for input.
    pub fn fd(&self) -> RawFd {
        self.ws.get_ref().as_raw_fd()
    }

    /// Whether a write waits for room ([`Self::flush`] again).
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one SIP message as a text frame (queued if the socket is full).
    pub fn send(&mut self, msg: Vec<u8>) -> Result<(), WsError> {
        if self.closed {
            return Err(WsError::Closed);
        }
        let frame = match String::from_utf8(msg) {
            Ok(text) => Message::text(text),
            Err(e) => Message::binary(e.into_bytes()),
        };
        match self.ws.write(frame) {
            Ok(()) => self.flush(),
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                self.pending = true;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Pushes queued bytes out.
    pub fn flush(&mut self) -> Result<(), WsError> {
        match self.ws.flush() {
            Ok(()) => {
                self.pending = false;
                Ok(())
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                self.pending = true;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Every SIP message that has arrived (text or binary frames), in order.
    pub fn read_all(&mut self, out: &mut Vec<Vec<u8>>) -> Result<(), WsError> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => out.push(t.as_bytes().to_vec()),
                Ok(Message::Binary(b)) => out.push(b.to_vec()),
                Ok(Message::Close(_)) => {
                    self.closed = true;
                    return Err(WsError::Closed);
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.fail(e)),
            }
        }
        // A pong queued by the read goes out now.
        self.flush()
    }

    fn fail(&mut self, e: tungstenite::Error) -> WsError {
        self.closed = true;
        match e {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => WsError::Closed,
            e => WsError::Ws(e.to_string()),
        }
    }
}
