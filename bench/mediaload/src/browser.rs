//! Calls from a PBX to many browsers through trunkgate (`--mode browser`).
//!
//! - The **PBX** is [`Sip`]'s, unchanged (UDP UAC, plain G.711 RTP), except
//!   that call `k` dials `<number><k mod users>`: one route per browser user,
//!   so each call rings one browser.
//! - The **browsers** are portal users `<prefix>0..`: each REGISTERs (digest
//!   MD5) over a WebSocket to trunkgate's `ws://` listener, with a Contact
//!   on a `.invalid` host and `;transport=ws` as browsers' SIP libraries
//!   send, and re-registers at half the granted time. Several users may
//!   share one connection (`users_per_conn`; default one each, as tabs).
//!   A forked INVITE is answered at once with 200 OK and the SDP of a str0m
//!   peer in the browser's role ([`Peer`]): full ICE, DTLS client, SRTP, on a
//!   UDP socket of its own. This thread drives the handshake; when both the
//!   PBX has its 2xx and the peer is connected the call is [`Event::Up`] and
//!   the media worker takes the peer ([`Signalling::take_peer`]).
//! - BYE, ACK, CANCEL and re-INVITEs from trunkgate are answered; a
//!   re-INVITE gets the answer already given (a refresh changes nothing; a
//!   real change is tallied as `browser_reinvites`).
//!
//! The handshake figure per call is from the 200 OK handed to the socket to
//! str0m's `Connected`; a call whose peer does not connect within
//! `dtls_timeout` fails (`dtls timeout`), and its PBX side is ended.
//!
//! Everything this engine watches (the PBX's sockets, the WebSockets, the
//! peers still in handshake) is in one epoll, whose descriptor is the one
//! the orchestrator polls.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;
use md5::Digest as _;
use str0m::config::DtlsCert;
use trunkgate::sip::message::{self, Contacts, HeaderName, Message, Method, Request, Response};

use crate::clock::{self, MS, SEC};
use crate::net::Epoll;
use crate::signal::{Event, Handshakes, Signalling};
use crate::sip::{Sip, SipConfig};
use crate::webrtc::{Peer, PeerEvent};
use crate::ws::Ws;

const TOKEN_SIP: u64 = 0;
const TOKEN_CONN: u64 = 1;
const TOKEN_PEER: u64 = 1 << 32;

/// Where the browsers connect and who they are.
#[derive(Clone, Debug)]
pub struct BrowserConfig {
    /// The PBX side (its `numbers` is the number of users).
    pub sip: SipConfig,
    /// trunkgate's `ws://` listener.
    pub ws: SocketAddr,
    /// Users `<user_prefix>0..<users>`.
    pub users: u32,
    /// Username prefix.
    pub user_prefix: String,
    /// A user's password is this followed by the username.
    pub password_prefix: String,
    /// Users per WebSocket connection.
    pub users_per_conn: u32,
    /// Address of the browsers' media sockets.
    pub rtp_ip: IpAddr,
    /// Longest wait from the 200 OK to ICE + DTLS done, ns.
    pub dtls_timeout: u64,
    /// Registration time asked for, seconds.
    pub expires: u32,
    /// REGISTER transactions in flight at most.
    pub register_window: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Idle,
    Sent { auth: bool },
    Registered,
    Failed,
}

#[derive(Debug)]
struct User {
    name: String,
    conn: usize,
    host: String,
    cseq: u32,
    reg: Reg,
}

/// A browser's leg of a call (its INVITE answered).
#[derive(Debug)]
struct Leg {
    /// The 200 OK, for an INVITE seen again.
    ok: Vec<u8>,
    answer: String,
    acked: bool,
}

/// The browser-mode engine.
pub struct Browsers {
    sip: Sip,
    cfg: BrowserConfig,
    run: u32,
    cert: DtlsCert,
    epoll: Epoll,
    conns: Vec<Ws>,
    users: Vec<User>,
    /// By the browser leg's Call-ID.
    legs: HashMap<String, (u32, Leg)>,
    /// Peers in handshake, or connected and waiting for the PBX's 2xx.
    peers: HashMap<u32, Box<Peer>>,
    register_queue: VecDeque<u32>,
    registering: usize,
    refresh: BinaryHeap<Reverse<(u64, u32)>>,
    events: VecDeque<Event>,
    tallies: BTreeMap<String, u64>,
    hs: Handshakes,
    first_answer: Option<u64>,
    last_connected: u64,
    /// Per call: when its 200 OK went out (for the handshake figure).
    answered_at: HashMap<u32, u64>,
    broken: Option<String>,
    tokens: Vec<u64>,
    msgs: Vec<Vec<u8>>,
    peer_events: Vec<PeerEvent>,
    buf: Vec<u8>,
}

impl Browsers {
    /// Binds the PBX's sockets and opens the browsers' WebSockets (their
    /// REGISTERs go out from the first [`Signalling::handle_timeout`]).
    pub fn new(cfg: BrowserConfig, cert: DtlsCert, run: u32) -> Result<Browsers, String> {
        let sip = Sip::new(cfg.sip.clone(), run).map_err(|e| format!("PBX SIP socket {}: {e}", cfg.sip.pbx_bind))?;
        let epoll = Epoll::new(1024).map_err(|e| format!("epoll: {e}"))?;
        for fd in sip.fds() {
            epoll.add(fd, TOKEN_SIP).map_err(|e| format!("epoll: {e}"))?;
        }
        let per = cfg.users_per_conn.max(1);
        let n_conns = cfg.users.div_ceil(per) as usize;
        let mut conns = Vec::with_capacity(n_conns);
        for i in 0..n_conns {
            let ws = Ws::connect(cfg.ws).map_err(|e| format!("WebSocket {} to {}: {e}", i + 1, cfg.ws))?;
            epoll.add(ws.fd(), TOKEN_CONN + i as u64).map_err(|e| format!("epoll: {e}"))?;
            conns.push(ws);
        }
        let users = (0..cfg.users)
            .map(|i| {
                let conn = (i / per) as usize;
                User {
                    name: format!("{}{i}", cfg.user_prefix),
                    conn,
                    host: format!("ml{run:x}c{conn}.invalid"),
                    cseq: 0,
                    reg: Reg::Idle,
                }
            })
            .collect();
        Ok(Browsers {
            sip,
            register_queue: (0..cfg.users).collect(),
            cfg,
            run,
            cert,
            epoll,
            conns,
            users,
            legs: HashMap::new(),
            peers: HashMap::new(),
            registering: 0,
            refresh: BinaryHeap::new(),
            events: VecDeque::new(),
            tallies: BTreeMap::new(),
            hs: Handshakes::default(),
            first_answer: None,
            last_connected: 0,
            answered_at: HashMap::new(),
            broken: None,
            tokens: Vec::new(),
            msgs: Vec::new(),
            peer_events: Vec::new(),
            buf: vec![0; 65536],
        })
    }

    fn tally(&mut self, key: &str) {
        *self.tallies.entry(key.to_owned()).or_default() += 1;
    }

    fn send(&mut self, conn: usize, bytes: Vec<u8>) {
        let Some(ws) = self.conns.get_mut(conn) else { return };
        if let Err(e) = ws.send(bytes) {
            self.tally("ws_send_errors");
            self.conn_lost(conn, &e.to_string());
        }
    }

    fn conn_lost(&mut self, conn: usize, why: &str) {
        self.tally("ws_connections_lost");
        if let Some(ws) = self.conns.get(conn) {
            self.epoll.remove(ws.fd());
        }
        if self.broken.is_none() {
            self.broken = Some(format!("WebSocket {conn} lost: {why}"));
        }
        eprintln!("browser: WebSocket {conn} lost: {why}");
    }

    // --- registration --------------------------------------------------------------

    fn password(&self, user: u32) -> String {
        format!("{}{}", self.cfg.password_prefix, self.users[user as usize].name)
    }

    fn reg_call_id(&self, user: u32) -> String {
        format!("reg-{:x}-{user}@mediaload", self.run)
    }

    fn user_of_reg(&self, call_id: &str) -> Option<u32> {
        let rest = call_id.strip_prefix(&format!("reg-{:x}-", self.run))?;
        rest.strip_suffix("@mediaload")?.parse().ok().filter(|&u| u < self.cfg.users)
    }

    fn register(&mut self, user: u32, auth: Option<String>) {
        let call_id = self.reg_call_id(user);
        let (domain, expires) = (self.cfg.sip.domain.clone(), self.cfg.expires);
        let Some(u) = self.users.get_mut(user as usize) else { return };
        u.cseq += 1;
        u.reg = Reg::Sent { auth: auth.is_some() };
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let msg = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/WS {host};branch=z9hG4bK-reg{run:x}-{user}-{cseq}\r\n\
             Max-Forwards: 70\r\nTo: <sip:{name}@{domain}>\r\nFrom: <sip:{name}@{domain}>;tag=reg{user}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{name}@{host};transport=ws>;expires={expires}\r\n{auth}Expires: {expires}\r\n\
             User-Agent: mediaload\r\nContent-Length: 0\r\n\r\n",
            host = u.host,
            run = self.run,
            cseq = u.cseq,
            name = u.name,
        );
        let conn = u.conn;
        self.send(conn, msg.into_bytes());
    }

    fn register_response(&mut self, now: u64, resp: &Response) {
        let h = resp.headers();
        let Some(user) = h.call_id().ok().and_then(|c| self.user_of_reg(c)) else {
            self.tally("ws_unmatched_response");
            return;
        };
        let Reg::Sent { auth } = self.users[user as usize].reg else { return };
        match resp.status() {
            100..=199 => {}
            200..=299 => {
                let granted = match h.contacts() {
                    Ok(Contacts::List(l)) => l.first().and_then(|c| c.expires()).and_then(Result::ok),
                    _ => None,
                }
                .or_else(|| h.expires().ok().flatten())
                .unwrap_or(self.cfg.expires)
                .max(2);
                self.users[user as usize].reg = Reg::Registered;
                self.registering = self.registering.saturating_sub(1);
                self.refresh.push(Reverse((now + u64::from(granted) * SEC / 2, user)));
            }
            401 | 407 if !auth => {
                let name =
                    if resp.status() == 401 { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
                let challenge = h.get(&name).and_then(|v| v.value_str()).map(str::to_owned);
                match challenge.and_then(|c| self.digest(user, &c)) {
                    Some(a) => self.register(user, Some(a)),
                    None => self.register_failed(user, "unusable challenge"),
                }
            }
            s => self.register_failed(user, &format!("REGISTER answered {s}")),
        }
    }

    fn register_failed(&mut self, user: u32, why: &str) {
        self.users[user as usize].reg = Reg::Failed;
        self.registering = self.registering.saturating_sub(1);
        self.tally("register_failures");
        if self.broken.is_none() {
            self.broken = Some(format!("user {}: {why}", self.users[user as usize].name));
        }
    }

    /// The Authorization value answering `challenge` (RFC 7616 MD5, with
    /// `qop=auth` when offered).
    fn digest(&self, user: u32, challenge: &str) -> Option<String> {
        let realm = auth_param(challenge, "realm")?;
        let nonce = auth_param(challenge, "nonce")?;
        let opaque = auth_param(challenge, "opaque");
        let qop_auth = auth_param(challenge, "qop").is_some_and(|q| q.split(',').any(|v| v.trim() == "auth"));
        let name = &self.users[user as usize].name;
        let uri = format!("sip:{}", self.cfg.sip.domain);
        let cnonce = format!("{:08x}{user:x}", self.run);
        let qop = qop_auth.then_some(("00000001", cnonce.as_str()));
        let response = digest_response((name, &realm, &self.password(user)), "REGISTER", &uri, &nonce, qop);
        let mut v = format!(
            "Digest username=\"{name}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", "
        );
        if qop_auth {
            v.push_str(&format!("qop=auth, nc=00000001, cnonce=\"{cnonce}\", "));
        }
        v.push_str("algorithm=MD5");
        if let Some(o) = opaque {
            v.push_str(&format!(", opaque=\"{o}\""));
        }
        Some(v)
    }

    fn run_registrations(&mut self, now: u64) {
        while let Some(&Reverse((at, user))) = self.refresh.peek() {
            if at > now {
                break;
            }
            self.refresh.pop();
            self.tally("register_refreshes");
            self.register_queue.push_back(user);
        }
        while self.registering < self.cfg.register_window.max(1) {
            let Some(user) = self.register_queue.pop_front() else { break };
            self.registering += 1;
            self.register(user, None);
        }
    }

    // --- calls ---------------------------------------------------------------------

    fn conn_message(&mut self, now: u64, conn: usize, bytes: &[u8]) {
        match message::parse(bytes) {
            Ok(Message::Response(resp)) => match resp.headers().cseq().map(|c| c.method.clone()) {
                Ok(Method::Register) => self.register_response(now, &resp),
                _ => self.tally("ws_unexpected_response"),
            },
            Ok(Message::Request(req)) => self.conn_request(now, conn, &req),
            Err(message::ParseError::Empty) => {}
            Err(_) => self.tally("ws_malformed"),
        }
    }

    fn conn_request(&mut self, now: u64, conn: usize, req: &Request) {
        let Ok(call_id) = req.headers().call_id().map(str::to_owned) else {
            self.tally("ws_malformed");
            return;
        };
        let known = self.legs.get(&call_id).map(|(c, _)| *c);
        let reply = match (req.method(), known) {
            (Method::Invite, None) => self.new_fork(now, req, &call_id),
            (Method::Invite, Some(_)) => {
                let reoffer = req.headers().to().ok().is_some_and(|t| t.tag().is_some());
                let Some((ok, answer)) = self.legs.get(&call_id).map(|(_, l)| (l.ok.clone(), l.answer.clone())) else {
                    return;
                };
                if !reoffer {
                    self.tally("browser_invite_again");
                    Some(ok)
                } else {
                    // A refresh (or a change we do not follow): the answer
                    // already given, as a browser answers a refresh.
                    self.tally("browser_reinvites");
                    Some(ok_with(req, None, &format!("<{}>", req.uri().as_str()), Some(answer)))
                }
            }
            (Method::Ack, Some(_)) => {
                if let Some((_, leg)) = self.legs.get_mut(&call_id) {
                    leg.acked = true;
                }
                None
            }
            (Method::Ack, None) => None,
            (Method::Bye, Some(call)) => {
                self.sip.phone_bye(call);
                self.drop_peer(call);
                Some(Response::from_request(req, 200, "OK").to_bytes())
            }
            (Method::Bye, None) => Some(Response::from_request(req, 481, "Call/Transaction Does Not Exist").to_bytes()),
            (Method::Cancel, _) => {
                self.tally("browser_cancels");
                Some(Response::from_request(req, 200, "OK").to_bytes())
            }
            (Method::Update, _) => {
                self.tally("browser_updates");
                Some(Response::from_request(req, 200, "OK").to_bytes())
            }
            _ => Some(Response::from_request(req, 200, "OK").to_bytes()),
        };
        if let Some(bytes) = reply {
            self.send(conn, bytes);
        }
    }

    /// A forked INVITE: which call, a peer answering its offer, our 200.
    fn new_fork(&mut self, now: u64, req: &Request, call_id: &str) -> Option<Vec<u8>> {
        let call = self.sip.call_of_fork(req).filter(|&c| self.sip.accepts_fork(c));
        let Some(call) = call else {
            self.tally("browser_unknown_invite");
            return Some(Self::refuse(req, 486, "Busy Here"));
        };
        let sock = match crate::net::bind_udp(SocketAddr::new(self.cfg.rtp_ip, 0), Some(1 << 20), true) {
            Ok(s) => s,
            Err(e) => {
                self.sip.abort(now, call, format!("browser socket: {e}"));
                self.pump_sip();
                return Some(Self::refuse(req, 500, "Server Internal Error"));
            }
        };
        let peer = match Peer::answer(clock::instant_at(now), &self.cert, sock, req.body()) {
            Ok(p) => Box::new(p),
            Err(e) => {
                self.tally("browser_offer_refused");
                self.sip.abort(now, call, format!("browser: {e}"));
                self.pump_sip();
                return Some(Self::refuse(req, 488, "Not Acceptable Here"));
            }
        };
        let answer = peer.answer_sdp().to_owned();
        let ok = ok_with(req, Some(&format!("br{call}")), &format!("<{}>", req.uri().as_str()), Some(answer.clone()));
        if self.epoll.add(peer.socket().as_raw_fd(), TOKEN_PEER | u64::from(call)).is_err() {
            self.sip.abort(now, call, "epoll".into());
            self.pump_sip();
            return Some(Self::refuse(req, 500, "Server Internal Error"));
        }
        self.peers.insert(call, peer);
        self.hs.answered += 1;
        let sent_at = clock::mono_ns();
        self.first_answer.get_or_insert(sent_at);
        self.answered_at.insert(call, sent_at);
        self.legs.insert(call_id.to_owned(), (call, Leg { ok: ok.clone(), answer, acked: false }));
        Some(ok)
    }

    fn refuse(req: &Request, status: u16, reason: &str) -> Vec<u8> {
        let r = Response::from_request(req, status, reason);
        r.clone().with_to_tag("refused").unwrap_or(r).to_bytes()
    }

    fn drop_peer(&mut self, call: u32) {
        if let Some(p) = self.peers.remove(&call) {
            self.epoll.remove(p.socket().as_raw_fd());
            if !p.is_connected() && !p.is_gone() {
                // Ended before its handshake was done: neither connected nor failed.
                self.tally("dtls_abandoned");
            }
        }
    }

    /// What a peer said, datagram or timer.
    fn peer_events(&mut self, now: u64, call: u32, from: Option<SocketAddr>) {
        let events = std::mem::take(&mut self.peer_events);
        for ev in &events {
            match ev {
                PeerEvent::Connected => {
                    let at = clock::mono_ns();
                    if let Some(sent) = self.answered_at.get(&call) {
                        self.hs.us.record(at.saturating_sub(*sent) / 1000);
                    }
                    self.hs.connected += 1;
                    self.last_connected = self.last_connected.max(at);
                    let dest = from.unwrap_or(self.cfg.ws);
                    self.sip.phone_ready(call, dest);
                }
                PeerEvent::Rtp(_) => self.tally("browser_rtp_before_up"),
                PeerEvent::Gone(why) => {
                    self.hs.failed += 1;
                    self.tally("dtls_failures");
                    self.drop_peer(call);
                    self.sip.abort(now, call, format!("browser media: {why}"));
                }
            }
        }
        self.peer_events = events;
        self.peer_events.clear();
    }

    fn peer_readable(&mut self, now: u64, call: u32) {
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(peer) = self.peers.get_mut(&call) {
            let Ok((n, from)) = peer.socket().recv_from(&mut buf) else { break };
            peer.handle_datagram(clock::instant_at(now), from, &buf[..n], &mut self.peer_events);
            self.peer_events(now, call, Some(from));
        }
        self.buf = buf;
    }

    /// Moves the PBX side's events out, forgetting peers of calls that ended.
    fn pump_sip(&mut self) {
        while let Some(ev) = self.sip.poll_event() {
            match &ev {
                Event::Failed { call, .. } | Event::Ended { call } | Event::Dropped { call, .. } => {
                    let call = *call;
                    self.drop_peer(call);
                }
                _ => {}
            }
            self.events.push_back(ev);
        }
    }
}

impl Signalling for Browsers {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.epoll.fd()]
    }

    fn begin_step(&mut self, step: u32) {
        self.sip.begin_step(step);
        for call in self.peers.keys().copied().collect::<Vec<_>>() {
            self.drop_peer(call);
        }
        self.legs.clear();
        self.answered_at.clear();
        self.events.clear();
        self.hs = Handshakes::default();
        self.first_answer = None;
        self.last_connected = 0;
    }

    fn start_call(&mut self, now: u64, call: u32, pbx_rtp: SocketAddr, phone_rtp: SocketAddr) {
        self.sip.start_call(now, call, pbx_rtp, phone_rtp);
        self.pump_sip();
    }

    fn end_call(&mut self, now: u64, call: u32) {
        self.sip.end_call(now, call);
        self.pump_sip();
    }

    fn handle_readable(&mut self, now: u64) {
        let mut tokens = std::mem::take(&mut self.tokens);
        if let Err(e) = self.epoll.ready(&mut tokens) {
            eprintln!("browser: epoll: {e}");
        }
        for &t in &tokens {
            if t == TOKEN_SIP {
                self.sip.handle_readable(now);
            } else if t & TOKEN_PEER != 0 {
                self.peer_readable(now, (t & 0xffff_ffff) as u32);
            } else {
                let conn = (t - TOKEN_CONN) as usize;
                let mut msgs = std::mem::take(&mut self.msgs);
                let got = match self.conns.get_mut(conn) {
                    Some(ws) if !ws.is_closed() => ws.read_all(&mut msgs),
                    _ => Ok(()),
                };
                for m in msgs.drain(..) {
                    self.conn_message(now, conn, &m);
                }
                self.msgs = msgs;
                if let Err(e) = got {
                    self.conn_lost(conn, &e.to_string());
                }
            }
            self.pump_sip();
        }
        self.tokens = tokens;
    }

    fn handle_timeout(&mut self, now: u64) {
        self.sip.handle_timeout(now);
        self.pump_sip();
        self.run_registrations(now);
        let at = clock::instant_at(now);
        let due: Vec<u32> =
            self.peers.iter().filter(|(_, p)| p.timeout().is_some_and(|t| t <= at)).map(|(c, _)| *c).collect();
        for call in due {
            if let Some(p) = self.peers.get_mut(&call) {
                p.handle_timeout(at, &mut self.peer_events);
            }
            self.peer_events(now, call, None);
        }
        let late: Vec<u32> = self
            .peers
            .iter()
            .filter(|(c, p)| {
                !p.is_connected() && self.answered_at.get(c).is_some_and(|&t| now > t + self.cfg.dtls_timeout)
            })
            .map(|(c, _)| *c)
            .collect();
        for call in late {
            self.hs.failed += 1;
            self.tally("dtls_timeouts");
            self.drop_peer(call);
            self.sip.abort(now, call, "dtls timeout".into());
        }
        for i in 0..self.conns.len() {
            if self.conns[i].is_pending() && !self.conns[i].is_closed() {
                let r = self.conns[i].flush();
                if let Err(e) = r {
                    self.conn_lost(i, &e.to_string());
                }
            }
        }
        self.pump_sip();
    }

    fn poll_timeout(&self) -> Option<u64> {
        let mut next = self.sip.poll_timeout();
        let mut at = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(Reverse((t, _))) = self.refresh.peek() {
            at(*t);
        }
        if !self.register_queue.is_empty() && self.registering < self.cfg.register_window.max(1) {
            at(0);
        }
        for (call, p) in &self.peers {
            if let Some(t) = p.timeout() {
                at(clock::mono_of(t));
            }
            if !p.is_connected()
                && let Some(sent) = self.answered_at.get(call)
            {
                at(sent + self.cfg.dtls_timeout + MS);
            }
        }
        if self.conns.iter().any(|c| c.is_pending() && !c.is_closed()) {
            at(clock::mono_ns() + MS);
        }
        next
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn tallies(&self) -> BTreeMap<String, u64> {
        let mut t = self.sip.tallies();
        for (k, v) in &self.tallies {
            *t.entry(k.clone()).or_default() += v;
        }
        let unacked = self.legs.values().filter(|(_, l)| !l.acked).count() as u64;
        if unacked > 0 {
            t.insert("browser_200_not_acked".into(), unacked);
        }
        t
    }

    fn ready(&self) -> Result<bool, String> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        Ok(self.users.iter().all(|u| u.reg == Reg::Registered))
    }

    fn take_peer(&mut self, call: u32) -> Option<Box<Peer>> {
        let p = self.peers.remove(&call)?;
        self.epoll.remove(p.socket().as_raw_fd());
        Some(p)
    }

    fn handshakes(&self) -> Option<Handshakes> {
        let mut h = self.hs.clone();
        h.span_ns = match self.first_answer {
            Some(f) if self.last_connected > f => self.last_connected - f,
            _ => 0,
        };
        Some(h)
    }
}

/// A 2xx to `req` with `tag` on To (unless already tagged), Record-Route
/// copied, `contact` and an SDP body.
fn ok_with(req: &Request, tag: Option<&str>, contact: &str, sdp: Option<String>) -> Vec<u8> {
    let mut r = Response::from_request(req, 200, "OK");
    if let Some(tag) = tag
        && let Ok(t) = r.clone().with_to_tag(tag)
    {
        r = t;
    }
    if *req.method() == Method::Invite {
        r.headers_mut().copy_from(req.headers(), &HeaderName::RecordRoute);
    }
    let _ = r.headers_mut().push(HeaderName::Contact, contact);
    let _ = r.headers_mut().push(HeaderName::UserAgent, "mediaload");
    if let Some(sdp) = sdp {
        let _ = r.headers_mut().set(HeaderName::ContentType, "application/sdp");
        r.set_body(Bytes::from(sdp));
    }
    r.to_bytes()
}

/// A parameter of a challenge (`name="value"` or `name=value`).
fn auth_param(value: &str, name: &str) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let start = from + i;
        from = start + name.len();
        let before_ok = start == 0 || matches!(lower.as_bytes()[start - 1], b' ' | b',' | b'\t');
        let rest = value[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        return if let Some(q) = rest.strip_prefix('"') {
            q.find('"').map(|e| q[..e].to_owned())
        } else {
            Some(rest.split([',', ' ']).next().unwrap_or("").to_owned())
        };
    }
    None
}

/// RFC 2617 / 7616 MD5 `response`: `(user, realm, password)`, and with
/// `qop=auth` its `(nc, cnonce)`.
fn digest_response(who: (&str, &str, &str), method: &str, uri: &str, nonce: &str, qop: Option<(&str, &str)>) -> String {
    let ha1 = md5_hex(&format!("{}:{}:{}", who.0, who.1, who.2));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

fn md5_hex(s: &str) -> String {
    md5::Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parameters() {
        let c = "Digest realm=\"bench.example\", nonce=\"abc,def\", qop=\"auth,auth-int\", algorithm=MD5, opaque=x1";
        assert_eq!(auth_param(c, "realm").as_deref(), Some("bench.example"));
        assert_eq!(auth_param(c, "nonce").as_deref(), Some("abc,def"));
        assert_eq!(auth_param(c, "qop").as_deref(), Some("auth,auth-int"));
        assert_eq!(auth_param(c, "opaque").as_deref(), Some("x1"));
        assert_eq!(auth_param(c, "stale"), None);
        assert_eq!(auth_param("Digest", "realm"), None);
        assert_eq!(auth_param("Digest realm=", "realm").as_deref(), Some(""));
    }

    /// RFC 2617 §3.5's example.
    #[test]
    fn digest_as_rfc_2617() {
        let r = digest_response(
            ("Mufasa", "testrealm@host.com", "Circle Of Life"),
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }
}
