//! The SIP service: the tokio driver around the sans-IO pieces.
//!
//! One core task owns the [`TransactionLayer`] (and so every RFC 3261
//! timer): it takes parsed messages from the transports, matches them to
//! transactions, answers what it can at once (OPTIONS, protocol errors)
//! and hands the rest to handler tasks (REGISTER needs the database), whose
//! answers come back over a channel and leave through the transaction so
//! retransmissions are absorbed and answered the same way.

mod lockout;
mod register;
mod via;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use lockout::{Lockout, LockoutConfig};

use crate::config::Transport;
use crate::licences::LicenceCache;
use crate::registrar::{Location, RegistrarConfig};
use crate::sip::digest::{Authenticator, DigestConfig};
use crate::sip::message::{
    CheckConfig, HeaderName, Message, Method, ParseError, Request, Response, check_request, check_response,
};
use crate::sip::transaction::{
    Event, Reliability, RequestInfo, RequestMatch, ResponseInfo, StatusCode, TimerConfig, TransactionLayer, TsxKey,
};
use crate::store::Store;
use crate::transport::{Inbound, Target, Transports};

/// Product token for `Server` and `User-Agent`.
pub const SERVER: &str = concat!("trunkgate/", env!("CARGO_PKG_VERSION"));

/// Settings of the SIP service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// This node's id.
    pub node_id: String,
    /// Host in `Warning: 399 <host>`.
    pub warning_host: String,
    /// RFC 3261 timers.
    pub timers: TimerConfig,
    /// Registrar limits.
    pub registrar: RegistrarConfig,
    /// Digest settings.
    pub digest: DigestConfig,
    /// Authentication lockout.
    pub lockout: LockoutConfig,
}

/// Shared by the core and the handler tasks.
pub(crate) struct Ctx {
    pub config: ServiceConfig,
    pub store: Store,
    pub cache: LicenceCache,
    pub location: Mutex<Location>,
    pub auth: Mutex<Authenticator>,
    pub lockout: Mutex<Lockout>,
    check: CheckConfig,
    tag_prefix: u64,
    tag_seq: AtomicU64,
}

impl Ctx {
    /// A fresh To tag: unique per node run (random prefix) and per response.
    pub fn new_tag(&self) -> String {
        format!("{:x}.{:x}", self.tag_prefix, self.tag_seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Random bytes for nonces; never fails in practice (getrandom on Linux).
    pub fn random8(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        if getrandom::fill(&mut b).is_err() {
            b = self.tag_seq.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        }
        b
    }

    /// `Warning: 399 <host> "<text>"`.
    pub fn warning(&self, text: &str) -> String {
        let text: String = text
            .chars()
            .map(|c| {
                if c == '"' {
                    '\''
                } else if c.is_control() {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        format!("399 {} \"{text}\"", self.config.warning_host)
    }
}

/// An answer from a handler task, to send through its transaction.
pub(crate) struct Reply {
    key: TsxKey,
    response: Response,
}

/// What a transaction (re)sends: the bytes and where to.
#[derive(Debug, Clone)]
struct Outgoing {
    target: Target,
    data: Bytes,
}

/// A server transaction waiting for the TU's final response.
struct Pending {
    request: Request,
    target: Target,
}

/// Handle to the running service.
#[derive(Clone)]
pub struct Service {
    ctx: Arc<Ctx>,
}

impl Service {
    /// Starts the core task. `inbound` is the transports' output.
    pub fn start(
        config: ServiceConfig,
        store: Store,
        cache: LicenceCache,
        transports: Transports,
        inbound: mpsc::Receiver<Inbound>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let auth = Authenticator::with_random_secret(config.digest.clone()).map_err(std::io::Error::other)?;
        let mut prefix = [0u8; 8];
        getrandom::fill(&mut prefix).map_err(std::io::Error::other)?;
        let check = CheckConfig { warn_agent: Some(config.warning_host.clone()), ..CheckConfig::default() };
        let ctx = Arc::new(Ctx {
            location: Mutex::new(Location::new(config.registrar.clone())),
            lockout: Mutex::new(Lockout::new(config.lockout)),
            auth: Mutex::new(auth),
            config,
            store,
            cache,
            check,
            tag_prefix: u64::from_le_bytes(prefix),
            tag_seq: AtomicU64::new(1),
        });
        let (reply_tx, reply_rx) = mpsc::channel(4096);
        let core = Core {
            ctx: ctx.clone(),
            layer: TransactionLayer::new(ctx.config.timers),
            pending: HashMap::new(),
            transports,
            replies: reply_tx,
        };
        tokio::spawn(core.run(inbound, reply_rx, shutdown));
        Ok(Self { ctx })
    }

    /// Live registrations on this node.
    pub fn registrations(&self) -> usize {
        self.ctx.location.lock().map(|l| l.len()).unwrap_or(0)
    }
}

struct Core {
    ctx: Arc<Ctx>,
    layer: TransactionLayer<Outgoing>,
    pending: HashMap<TsxKey, Pending>,
    transports: Transports,
    replies: mpsc::Sender<Reply>,
}

impl Core {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut replies: mpsc::Receiver<Reply>,
        shutdown: CancellationToken,
    ) {
        let mut expire_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let deadline = self.layer.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                m = inbound.recv() => match m {
                    Some(m) => self.handle_inbound(m, crate::clock::instant()),
                    None => return,
                },
                Some(r) = replies.recv() => self.respond(r.key, r.response, crate::clock::instant()),
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    self.layer.handle_timeout(crate::clock::instant());
                }
                _ = expire_tick.tick() => {
                    let now = unix_now();
                    if let Ok(mut l) = self.ctx.location.lock() {
                        l.expire(now);
                    }
                }
            }
            self.drain(crate::clock::instant());
        }
    }

    /// Runs the transaction layer's outputs: events first (they may queue
    /// transmits), then transmits.
    fn drain(&mut self, now: Instant) {
        while let Some((key, event)) = self.layer.poll_event() {
            match event {
                Event::TryingDue => {
                    if let Some(p) = self.pending.get(&key) {
                        let trying = Response::from_request(&p.request, 100, "Trying");
                        self.send_through(&key, trying, now);
                    }
                }
                Event::Terminated => {
                    self.pending.remove(&key);
                }
                Event::Timeout { timer } => debug!(?timer, "transaction timed out"),
                Event::TransportError => debug!("transaction transport error"),
                Event::Response { .. } | Event::AckNeeded { .. } => {}
            }
        }
        while let Some(t) = self.layer.poll_transmit() {
            if let Err(e) = self.transports.send(&t.payload.target, t.payload.data) {
                debug!(error = %e, "send failed");
                let _ = self.layer.handle_transport_error(now, &t.key);
            }
        }
    }

    fn handle_inbound(&mut self, inb: Inbound, now: Instant) {
        match inb.message {
            Ok(Message::Request(req)) => self.handle_request(req, inb.transport, inb.remote, inb.conn, now),
            Ok(Message::Response(resp)) => {
                if let Err(reason) = check_response(&resp) {
                    debug!(remote = %inb.remote, ?reason, "response discarded");
                    return;
                }
                let Ok(via) = resp.headers().top_via() else { return };
                let Ok(cseq) = resp.headers().cseq() else { return };
                let Ok(status) = StatusCode::new(resp.status()) else { return };
                let method = tsx_method(&cseq.method);
                let info = ResponseInfo { status, branch: via.branch(), method };
                if self.layer.handle_response(now, &info).is_none() {
                    debug!(remote = %inb.remote, status = resp.status(), "stray response dropped");
                }
            }
            Err(e @ ParseError::BadRequest { .. }) => {
                // Framed but malformed: answer 400 statelessly when we can.
                let (Some(status), Some(reason), ParseError::BadRequest { headers, .. }) =
                    (e.reply_status(), e.reply_reason(), &e)
                else {
                    return;
                };
                let resp = Response::from_headers(headers, status, &reason);
                let target = Target { transport: inb.transport, addr: inb.remote, conn: inb.conn };
                debug!(remote = %inb.remote, %reason, "malformed request answered 400");
                let _ = self.transports.send(&target, Bytes::from(resp.to_bytes()));
            }
            Err(e) => debug!(remote = %inb.remote, error = %e, "unparsable message dropped"),
        }
    }

    fn handle_request(
        &mut self,
        mut req: Request,
        transport: Transport,
        remote: SocketAddr,
        conn: Option<crate::transport::ConnId>,
        now: Instant,
    ) {
        // Without a usable Via no response can be routed: drop.
        let Some(stamp) = via::stamp(&req, remote) else {
            debug!(%remote, "request without a usable Via dropped");
            return;
        };
        if let Some(v) = stamp.new_via_value.as_deref() {
            let _ = req.headers_mut().set(HeaderName::Via, v);
        }
        let target = match transport {
            Transport::Udp => Target { transport, addr: stamp.reply_addr, conn: None },
            Transport::Tcp => Target { transport, addr: remote, conn },
        };
        let reliability = if transport == Transport::Udp { Reliability::Unreliable } else { Reliability::Reliable };
        let matched = {
            let h = req.headers();
            let from_tag = h.from().ok().and_then(|f| f.tag().map(str::to_owned));
            let to_tag = h.to().ok().and_then(|t| t.tag().map(str::to_owned));
            let call_id = h.call_id().unwrap_or("").to_owned();
            let cseq = h.cseq().map(|c| c.seq).unwrap_or(0);
            let uri = req.uri().as_str().to_owned();
            let info = RequestInfo {
                method: tsx_method(req.method()),
                branch: stamp.branch.as_deref(),
                sent_by: &stamp.sent_by,
                request_uri: &uri,
                call_id: &call_id,
                cseq,
                from_tag: from_tag.as_deref(),
                to_tag: to_tag.as_deref(),
            };
            self.layer.handle_request(now, &info, reliability)
        };
        match matched {
            RequestMatch::New(key) => {
                self.pending.insert(key.clone(), Pending { request: req, target });
                self.dispatch(key, transport, remote, now);
            }
            RequestMatch::Cancel { key, target: invite } => {
                self.pending.insert(key.clone(), Pending { request: req.clone(), target });
                match invite.filter(|k| self.pending.contains_key(k)) {
                    Some(invite) => {
                        if let Some(p) = self.pending.get(&invite) {
                            let r = Response::from_request(&p.request, 487, "Request Terminated");
                            self.respond(invite, r, now);
                        }
                        self.respond(key, Response::from_request(&req, 200, "OK"), now);
                    }
                    None => {
                        self.respond(key, Response::from_request(&req, 481, "Call/Transaction Does Not Exist"), now)
                    }
                }
            }
            RequestMatch::Merged { key, .. } => {
                self.pending.insert(key.clone(), Pending { request: req.clone(), target });
                self.respond(key, Response::from_request(&req, 482, "Loop Detected"), now);
            }
            RequestMatch::Absorbed(_) | RequestMatch::AckToTu { .. } => {}
        }
    }

    /// A new server transaction: protocol checks, then the method's handler.
    fn dispatch(&mut self, key: TsxKey, transport: Transport, remote: SocketAddr, now: Instant) {
        let Some(p) = self.pending.get(&key) else { return };
        let req = &p.request;
        if let Err(rej) = check_request(req, &self.ctx.check) {
            debug!(%remote, status = rej.status, reason = %rej.reason, "request rejected");
            if let Some(resp) = rej.to_response(req, None) {
                self.respond(key, resp, now);
            }
            return;
        }
        match req.method() {
            Method::Options => {
                let mut resp = Response::from_request(req, 200, "OK");
                let h = resp.headers_mut();
                let _ = h.push(HeaderName::Allow, allow_value(&self.ctx.check));
                let _ = h.push(HeaderName::Accept, "application/sdp");
                let _ = h.push(HeaderName::Supported, "");
                self.respond(key, resp, now);
            }
            Method::Register => {
                let ctx = self.ctx.clone();
                let req = req.clone();
                let replies = self.replies.clone();
                let source = crate::registrar::Source { transport, addr: remote };
                tokio::spawn(async move {
                    let response = register::handle(&ctx, &req, source).await;
                    let _ = replies.send(Reply { key, response }).await;
                });
            }
            Method::Invite => {
                // Calls are admitted and bridged by the B2BUA (next step).
                let mut resp = Response::from_request(req, 480, "Temporarily Unavailable");
                let _ = resp
                    .headers_mut()
                    .push(HeaderName::Warning, self.ctx.warning("unavailable: calls are not bridged yet"));
                self.respond(key, resp, now);
            }
            _ => {
                // In-dialog requests for dialogs we do not have.
                let resp = Response::from_request(req, 481, "Call/Transaction Does Not Exist");
                self.respond(key, resp, now);
            }
        }
    }

    /// Sends a response through its server transaction, adding a To tag to
    /// final and 101-199 responses, and `Server`.
    fn respond(&mut self, key: TsxKey, mut resp: Response, now: Instant) {
        let status = resp.status();
        if status > 100 {
            let tag = self.ctx.new_tag();
            resp = resp.clone().with_to_tag(&tag).unwrap_or(resp);
        }
        let _ = resp.headers_mut().push(HeaderName::Server, SERVER);
        self.send_through(&key, resp, now);
        if status >= 200 {
            self.pending.remove(&key);
        }
    }

    fn send_through(&mut self, key: &TsxKey, resp: Response, now: Instant) {
        let Some(target) = self.pending.get(key).map(|p| p.target) else {
            debug!("response for a finished transaction dropped");
            return;
        };
        let Ok(status) = StatusCode::new(resp.status()) else { return };
        let to_tag = resp.headers().to().ok().and_then(|t| t.tag().map(str::to_owned));
        let out = Outgoing { target, data: Bytes::from(resp.to_bytes()) };
        if let Err(e) = self.layer.send_response(now, key, status, to_tag.as_deref(), out) {
            warn!(error = %e, "response not sent");
        }
    }
}

fn tsx_method(m: &Method) -> crate::sip::transaction::Method {
    crate::sip::transaction::Method::new(m.as_str())
}

fn allow_value(check: &CheckConfig) -> String {
    check.allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

/// Unix seconds now (handler tasks and expiry; the driver reads the clock).
pub(crate) fn unix_now() -> u64 {
    u64::try_from(crate::clock::now_utc().timestamp()).unwrap_or(0)
}
