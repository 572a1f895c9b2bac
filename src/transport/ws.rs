//! SIP over WebSocket (RFC 7118) and the softphone page, on one HTTP/1.1
//! listener per `ws://` or `wss://` address.
//!
//! Each listener is an accept loop; each connection a task that finishes
//! TLS (rustls, ring) when the listener is `wss://`, then serves HTTP with
//! hyper: `GET /softphone` returns the page embedded in the binary, and a
//! WebSocket upgrade asking for the `sip` subprotocol (on `/` or `/sip`)
//! becomes a SIP connection. Every WebSocket message is one SIP message
//! (§5 of RFC 7118: no stream framing); answers go out as text frames, or
//! binary when a body is not UTF-8.
//!
//! A browser's connection is the only way to reach it: requests toward it
//! use the connection its REGISTER came on, found by its address, and are
//! never sent after it closed. When it closes, [`Transports::closed`]
//! reports it so the registrar drops the bindings made over it and calls
//! with a leg on it end (reason `browser-gone`). Pings every
//! `ws_ping_interval` keep NAT bindings open and find dead peers: a
//! connection that sent nothing for two intervals is closed.
//!
//! [`Transports::closed`]: super::Transports::closed

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tower_service::Service;
use tracing::{debug, info, warn};

use super::{Closed, ConnEntry, Inbound, SendError, Shared, Target, Transport};
use crate::sip::message::{ParseError, parse_bytes};

/// The softphone page, built from `web/softphone` (`npm run build`) and
/// embedded so the daemon ships as one file.
const SOFTPHONE_HTML: &str = include_str!("../../web/softphone/dist/index.html");

/// Time allowed for the TLS handshake and the HTTP request head: a client
/// that opens a socket and sends nothing holds it no longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The peer's and our address, put into each HTTP request of a connection.
#[derive(Debug, Clone, Copy)]
struct ConnAddrs {
    local: SocketAddr,
    remote: SocketAddr,
}

/// What every connection of a listener shares.
struct Listener {
    shared: Arc<Shared>,
    transport: Transport,
}

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    transport: Transport,
    local: SocketAddr,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let router = Router::new()
        .route("/", get(root))
        .route("/sip", get(sip_upgrade))
        .route("/softphone", get(softphone))
        .route("/softphone/", get(softphone))
        .with_state(Arc::new(Listener { shared: shared.clone(), transport }));
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => { backoff = Duration::from_millis(5); x }
                Err(e) => {
                    warn!(error = %e, transport = transport.as_str(), "accept failed; backing off");
                    #[allow(clippy::disallowed_methods)] // I/O driver: a real pause
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        // WebSocket connections count against the same limit as SIP/TCP.
        let Ok(permit) = shared.tcp_permits.clone().try_acquire_owned() else {
            warn!(%remote, "connection limit reached: connection refused");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = serve(stream, ConnAddrs { local, remote }, tls, router, permit) => {}
            }
        });
    }
}

/// One TCP connection: TLS if asked, then HTTP/1.1 with upgrades.
async fn serve(
    stream: TcpStream,
    addrs: ConnAddrs,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    _permit: OwnedSemaphorePermit,
) {
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(addrs);
        let mut router = router.clone();
        async move { router.call(req).await }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
    let result = match tls {
        None => http.serve_connection(TokioIo::new(stream), svc).with_upgrades().await,
        Some(acceptor) => {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(remote = %addrs.remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(remote = %addrs.remote, "TLS handshake timed out");
                    return;
                }
            };
            http.serve_connection(TokioIo::new(stream), svc).with_upgrades().await
        }
    };
    if let Err(e) = result {
        debug!(remote = %addrs.remote, error = %e, "HTTP connection ended with an error");
    }
}

/// `/`: a SIP WebSocket, or (a plain GET) the way to the softphone.
async fn root(
    state: State<Arc<Listener>>,
    addrs: Extension<ConnAddrs>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match upgrade {
        Ok(ws) => sip_upgrade(state, addrs, headers, ws).await,
        Err(_) => (StatusCode::FOUND, [(header::LOCATION, HeaderValue::from_static("/softphone"))]).into_response(),
    }
}

/// The WebSocket handshake of RFC 7118 §4: the client must ask for the
/// `sip` subprotocol, and gets it back.
async fn sip_upgrade(
    State(listener): State<Arc<Listener>>,
    Extension(addrs): Extension<ConnAddrs>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let asks_sip = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"));
    if !asks_sip {
        debug!(remote = %addrs.remote, "WebSocket without the sip subprotocol refused");
        return (StatusCode::BAD_REQUEST, "SIP over WebSocket needs the `sip` subprotocol (RFC 7118)\n")
            .into_response();
    }
    let max = listener.shared.config.max_message_bytes;
    ws.protocols(["sip"])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run(listener, addrs, socket))
        .into_response()
}

/// `/softphone`: the page, never cached (a new binary brings a new page).
async fn softphone() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            // The page's own <meta> policy covers scripts and styles (by
            // hash); framing can only be refused from a header.
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'")),
            (header::HeaderName::from_static("permissions-policy"), HeaderValue::from_static("microphone=(self)")),
        ],
        SOFTPHONE_HTML,
    )
        .into_response()
}

/// One SIP-over-WebSocket connection until it closes.
async fn run(listener: Arc<Listener>, addrs: ConnAddrs, mut socket: WebSocket) {
    let shared = &listener.shared;
    let transport = listener.transport;
    let ConnAddrs { local, remote } = addrs;
    let id = shared.next_conn_id();
    let (tx, mut rx) = mpsc::channel::<Bytes>(shared.config.tcp_send_queue);
    if let Ok(mut t) = shared.ws_conns.lock() {
        t.by_id.insert(id, ConnEntry { tx });
        t.by_remote.insert(remote, id);
    }
    info!(conn = id.0, %remote, transport = transport.as_str(), "websocket connection open");
    let ping_every = shared.config.ws_ping_interval;
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // Pings sent since the peer last sent anything.
    let mut unanswered = 0u32;
    let reason: &str = loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break "shutdown",
            out = rx.recv() => {
                let Some(data) = out else { break "closed" };
                let frame = match std::str::from_utf8(&data) {
                    Ok(text) => WsMessage::Text(text.into()),
                    Err(_) => WsMessage::Binary(data),
                };
                if socket.send(frame).await.is_err() {
                    break "write error";
                }
            }
            _ = ping.tick() => {
                if unanswered >= 2 {
                    break "keep-alive timeout";
                }
                unanswered += 1;
                if socket.send(WsMessage::Ping(Bytes::from_static(b"trunkgate"))).await.is_err() {
                    break "write error";
                }
            }
            frame = socket.recv() => {
                let data = match frame {
                    None | Some(Err(_)) => break "peer closed",
                    Some(Ok(WsMessage::Close(_))) => break "peer closed",
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => { unanswered = 0; continue }
                    Some(Ok(WsMessage::Text(t))) => Bytes::from(t),
                    Some(Ok(WsMessage::Binary(b))) => b,
                };
                unanswered = 0;
                let message = parse_bytes(data);
                if let Err(ParseError::Empty) = message {
                    continue;
                }
                shared.deliver(Inbound { transport, local, remote, conn: Some(id), message, received: crate::clock::instant() });
            }
        }
    };
    let _ = socket.send(WsMessage::Close(None)).await;
    if let Ok(mut t) = shared.ws_conns.lock() {
        t.by_id.remove(&id);
        if t.by_remote.get(&remote) == Some(&id) {
            t.by_remote.remove(&remote);
        }
    }
    info!(conn = id.0, %remote, reason, "websocket connection closed");
    let _ = shared.closed.send(Closed { transport, remote, conn: id });
}

/// Sends over the connection of `target` (by id, else by the peer's
/// address). A browser cannot be connected to: no connection, no send.
pub(super) fn send(shared: &Shared, target: &Target, data: Bytes) -> Result<(), SendError> {
    let found = shared.ws_conns.lock().ok().and_then(|t| {
        target
            .conn
            .and_then(|id| t.by_id.get(&id).map(|e| e.tx.clone()))
            .or_else(|| t.by_remote.get(&target.addr).and_then(|id| t.by_id.get(id).map(|e| e.tx.clone())))
    });
    let Some(tx) = found else { return Err(SendError::NoConnection { addr: target.addr }) };
    match tx.try_send(data) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(SendError::Stuck { addr: target.addr }),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::NoConnection { addr: target.addr }),
    }
}

/// Builds the rustls server configuration of `wss://` listeners from PEM
/// files: the certificate chain (leaf first) and its private key.
pub fn tls_config(
    certificate: &std::path::Path,
    private_key: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| format!("{}: {e}", certificate.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", certificate.display()));
    }
    let key = PrivateKeyDer::from_pem_file(private_key).map_err(|e| format!("{}: {e}", private_key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!("{} and {} do not form a usable pair: {e}", certificate.display(), private_key.display())
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
