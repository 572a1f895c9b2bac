//! Calls set up over SIP UDP through trunkgate. The generator is both
//! ends of every call:
//!
//! - the **PBX** (UAC, on `pbx_bind`): `INVITE sip:<number>@<domain>` with
//!   an SDP offer naming the call's PBX-side RTP endpoint, sent to
//!   trunkgate on a trunk whose source is this address; ACKs the 2xx, sends
//!   BYE at the end;
//! - the **phone** (UAS, on `phone_bind`, where the portal user's static
//!   contact points): answers the INVITE trunkgate forwards with 200 and an
//!   SDP naming the call's phone-side endpoint, retransmits the 200 until
//!   the ACK, answers BYE.
//!
//! Each side sends RTP where the SDP it *received* says: with media
//! anchored on trunkgate that is trunkgate's ports; without, the other
//! side's endpoint (the orchestrator reports such calls as `direct`).
//!
//! Which call a forwarded INVITE belongs to is read from the From display
//! name (`ml-<step>-<call>`), which trunkgate carries to the fork, or the
//! caller user part (`ml<step>x<call>`).
//!
//! Parsing uses the daemon's own message parser (`trunkgate::sip::message`,
//! a library dependency), so no SIP stack is needed here; outgoing requests
//! are plain text and responses are built with the same crate's
//! `Response::from_request`. Transactions are reduced to what a UDP test
//! peer needs: INVITE and BYE retransmissions (RFC 3261 Timers A/B, E/F),
//! the UAS 2xx retransmitted until the ACK, ACK for every 2xx and non-2xx.
//! Malformed datagrams are counted, never fatal.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;
use trunkgate::sip::message::{self, Contacts, HeaderName, Message, Method, Request, Response};

use crate::clock::{MS, SEC};
use crate::rtp::Dir;
use crate::sdp::{self, Audio};
use crate::signal::{Event, Signalling};

const T1: u64 = 500 * MS;
const T2: u64 = 4 * SEC;
const TIMER_B: u64 = 64 * T1;
/// Longest wait for a final answer once the INVITE had a provisional one.
const FINAL_WAIT: u64 = 45 * SEC;
/// How long, after the BYE's answer, the phone's BYE may still come.
const PHONE_BYE_GRACE: u64 = 5 * SEC;

/// Where the generator and trunkgate talk SIP.
#[derive(Clone, Debug)]
pub struct SipConfig {
    /// trunkgate's SIP UDP address.
    pub target: SocketAddr,
    /// The PBX's SIP address (a trunk source of trunkgate).
    pub pbx_bind: SocketAddr,
    /// The phone's SIP address (the portal user's contact).
    pub phone_bind: SocketAddr,
    /// Request-URI host (the portal's domain).
    pub domain: String,
    /// Request-URI user (the dialled number).
    pub number: String,
    /// With more than 1, call `k` dials `<number><k mod numbers>`, so that
    /// the calls spread over as many routes (one browser user each).
    pub numbers: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AState {
    Inviting { provisional: bool },
    Up,
    Byeing { answered: bool },
    Done,
}

#[derive(Debug)]
struct PhoneLeg {
    ok: Vec<u8>,
    ok_to: SocketAddr,
    acked: bool,
    dest: Option<SocketAddr>,
    bye: bool,
    interval: u64,
    deadline: u64,
    timer_gen: u32,
    sdp_version: u32,
}

#[derive(Debug)]
struct Call {
    a: AState,
    pbx_rtp: SocketAddr,
    phone_rtp: SocketAddr,
    /// `sip:<number>@<domain>`.
    ruri: String,
    call_id: String,
    branch: String,
    invite: Vec<u8>,
    from: String,
    /// The To of the 2xx (with trunkgate's tag).
    to: Option<String>,
    target: Option<String>,
    routes: Vec<String>,
    ack: Option<Vec<u8>>,
    bye: Option<Vec<u8>>,
    dest: Option<SocketAddr>,
    interval: u64,
    deadline: u64,
    timer_gen: u32,
    sdp_version: u32,
    b: Option<PhoneLeg>,
    up_sent: bool,
    over: bool,
}

/// The SIP engine.
pub struct Sip {
    cfg: SipConfig,
    pbx: UdpSocket,
    phone: UdpSocket,
    pbx_local: SocketAddr,
    phone_local: SocketAddr,
    run: u32,
    step: u32,
    next_branch: u64,
    calls: Vec<Option<Call>>,
    phone_legs: HashMap<String, u32>,
    /// (when, call, 0: PBX side / 1: phone side, generation)
    timers: BinaryHeap<Reverse<(u64, u32, u8, u32)>>,
    events: VecDeque<Event>,
    tallies: BTreeMap<String, u64>,
    buf: Vec<u8>,
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

impl Sip {
    /// Binds the PBX and phone SIP sockets.
    pub fn new(cfg: SipConfig, run: u32) -> std::io::Result<Sip> {
        let pbx = crate::net::bind_udp(cfg.pbx_bind, Some(4 << 20), false)?;
        let phone = crate::net::bind_udp(cfg.phone_bind, Some(4 << 20), false)?;
        Ok(Sip {
            pbx_local: pbx.local_addr()?,
            phone_local: phone.local_addr()?,
            pbx,
            phone,
            cfg,
            run,
            step: 0,
            next_branch: 0,
            calls: Vec::new(),
            phone_legs: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            tallies: BTreeMap::new(),
            buf: vec![0; 65536],
        })
    }

    fn tally(&mut self, key: &str) {
        *self.tallies.entry(key.to_owned()).or_default() += 1;
    }

    fn branch(&mut self, call: u32) -> String {
        self.next_branch += 1;
        format!("z9hG4bK-ml{:x}-{}-{call}-{}", self.run, self.step, self.next_branch)
    }

    fn call_prefix(&self) -> String {
        format!("ml-{:08x}-{}-", self.run, self.step)
    }

    /// The call a PBX-side Call-ID names (ours, of this step).
    fn call_of(&self, call_id: &str) -> Option<u32> {
        let rest = call_id.strip_prefix(&self.call_prefix())?;
        rest.strip_suffix("@mediaload")?.parse().ok()
    }

    /// The number call `call` dials.
    fn number(&self, call: u32) -> String {
        if self.cfg.numbers > 1 {
            format!("{}{}", self.cfg.number, call % self.cfg.numbers)
        } else {
            self.cfg.number.clone()
        }
    }

    /// Whether call `call` waits for its phone leg (a fork would be ours).
    pub fn accepts_fork(&self, call: u32) -> bool {
        self.calls
            .get(call as usize)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.b.is_none() && matches!(c.a, AState::Inviting { .. } | AState::Up))
    }

    /// The phone leg of `call` is answered elsewhere (a browser, see
    /// [`crate::browser`]) and ready for media toward `dest`: the call is
    /// up once the PBX has its 2xx too.
    pub fn phone_ready(&mut self, call: u32, dest: SocketAddr) {
        let Some(c) = self.call_mut(call) else { return };
        if c.b.is_some() {
            return;
        }
        c.b = Some(PhoneLeg {
            ok: Vec::new(),
            ok_to: dest,
            acked: true,
            dest: Some(dest),
            bye: false,
            interval: T1,
            deadline: 0,
            timer_gen: 0,
            sdp_version: 1,
        });
        self.maybe_up(call);
    }

    /// trunkgate ended the phone leg of `call` (its BYE, answered elsewhere).
    pub fn phone_bye(&mut self, call: u32) {
        if let Some(b) = self.call_mut(call).and_then(|c| c.b.as_mut()) {
            b.bye = true;
            b.timer_gen += 1;
        }
        match self.call_mut(call).map(|c| c.a) {
            Some(AState::Byeing { answered: true }) => self.ended(call),
            Some(AState::Up | AState::Inviting { .. }) => {
                self.tally("bye_from_trunkgate_to_phone");
                self.dropped(call, "BYE to the phone");
            }
            _ => {}
        }
    }

    /// Gives up on `call` (its phone leg failed): BYE to trunkgate if the
    /// PBX side is up, and the call counts as failed for `reason`.
    pub fn abort(&mut self, now: u64, call: u32, reason: String) {
        if self.call_mut(call).is_some_and(|c| c.a == AState::Up) {
            self.end_call(now, call);
        }
        self.fail(call, reason);
    }

    /// The call a forwarded INVITE belongs to (From display name or user).
    pub fn call_of_fork(&self, req: &Request) -> Option<u32> {
        let from = req.headers().from().ok()?;
        let by_name = from.display_name().and_then(|d| {
            let text = d.text();
            let rest = text.strip_prefix("ml-")?;
            let (step, call) = rest.split_once('-')?;
            (step.parse::<u32>().ok()? == self.step).then_some(call.parse::<u32>().ok()?)
        });
        by_name.or_else(|| {
            let user = from.uri().as_sip()?.user()?.to_owned();
            let rest = user.strip_prefix("ml")?;
            let (step, call) = rest.split_once('x')?;
            (step.parse::<u32>().ok()? == self.step).then_some(call.parse::<u32>().ok()?)
        })
    }

    fn call_mut(&mut self, call: u32) -> Option<&mut Call> {
        self.calls.get_mut(call as usize).and_then(Option::as_mut)
    }

    fn send_pbx(&mut self, bytes: &[u8]) {
        if self.pbx.send_to(bytes, self.cfg.target).is_err() {
            self.tally("sip_send_errors");
        }
    }

    fn arm(&mut self, at: u64, call: u32, side: u8, gen_: u32) {
        self.timers.push(Reverse((at, call, side, gen_)));
    }

    /// A request of the PBX's dialog (ACK or BYE) after the 2xx.
    fn in_dialog(&self, c: &Call, method: &str, branch: &str, cseq: u32) -> Vec<u8> {
        let target = c.target.clone().unwrap_or_else(|| c.ruri.clone());
        let mut s = format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch};rport\r\nMax-Forwards: 70\r\n",
            self.pbx_local
        );
        for r in &c.routes {
            s.push_str(&format!("Route: {r}\r\n"));
        }
        s.push_str(&format!(
            "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nUser-Agent: mediaload\r\nContent-Length: 0\r\n\r\n",
            c.from,
            c.to.as_deref().unwrap_or(""),
            c.call_id
        ));
        s.into_bytes()
    }

    fn maybe_up(&mut self, call: u32) {
        let Some(c) = self.call_mut(call) else { return };
        if c.up_sent || c.a != AState::Up {
            return;
        }
        if let (Some(pbx_dest), Some(phone_dest)) = (c.dest, c.b.as_ref().and_then(|b| b.dest)) {
            c.up_sent = true;
            self.events.push_back(Event::Up { call, dest: [pbx_dest, phone_dest] });
        }
    }

    fn fail(&mut self, call: u32, reason: String) {
        if let Some(c) = self.call_mut(call) {
            c.a = AState::Done;
            c.timer_gen += 1;
            if !c.over {
                c.over = true;
                self.events.push_back(Event::Failed { call, reason });
            }
        }
    }

    fn ended(&mut self, call: u32) {
        if let Some(c) = self.call_mut(call) {
            c.a = AState::Done;
            c.timer_gen += 1;
            if !c.over {
                c.over = true;
                self.events.push_back(Event::Ended { call });
            }
        }
    }

    fn dropped(&mut self, call: u32, reason: &str) {
        if let Some(c) = self.call_mut(call) {
            let was_up = c.a == AState::Up;
            c.a = AState::Done;
            c.timer_gen += 1;
            if !c.over {
                c.over = true;
                let ev = if was_up && c.up_sent {
                    Event::Dropped { call, reason: reason.to_owned() }
                } else {
                    Event::Failed { call, reason: reason.to_owned() }
                };
                self.events.push_back(ev);
            }
        }
    }

    /// Builds a response; `sdp` adds a body, `tag` a To tag, `contact` a Contact.
    fn response(
        req: &Request,
        status: u16,
        reason: &str,
        tag: Option<&str>,
        contact: Option<SocketAddr>,
        sdp: Option<String>,
    ) -> Vec<u8> {
        let mut r = Response::from_request(req, status, reason);
        if let Some(tag) = tag {
            r = r.with_to_tag(tag).unwrap_or_else(|_| Response::from_request(req, status, reason));
        }
        if (200..300).contains(&status) && *req.method() == Method::Invite {
            r.headers_mut().copy_from(req.headers(), &HeaderName::RecordRoute);
        }
        if let Some(c) = contact {
            let _ = r.headers_mut().push(HeaderName::Contact, format!("<sip:mediaload@{c}>"));
        }
        let _ = r.headers_mut().push(HeaderName::UserAgent, "mediaload");
        if let Some(sdp) = sdp {
            let _ = r.headers_mut().set(HeaderName::ContentType, "application/sdp");
            r.set_body(Bytes::from(sdp));
        }
        r.to_bytes()
    }

    fn handle_pbx(&mut self, now: u64, msg: Message, from: SocketAddr) {
        match msg {
            Message::Response(resp) => self.pbx_response(now, &resp),
            Message::Request(req) => self.pbx_request(&req, from),
        }
    }

    fn pbx_response(&mut self, now: u64, resp: &Response) {
        let h = resp.headers();
        let (Ok(call_id), Ok(cseq)) = (h.call_id(), h.cseq()) else {
            self.tally("sip_malformed");
            return;
        };
        let Some(call) = self.call_of(call_id) else {
            self.tally("sip_unmatched_response");
            return;
        };
        let status = resp.status();
        let to = h.get(&HeaderName::To).and_then(|t| t.value_str()).map(str::to_owned);
        match cseq.method {
            Method::Invite => self.invite_response(now, call, resp, status, to),
            Method::Bye => {
                let Some(c) = self.call_mut(call) else { return };
                if status < 200 || c.a != (AState::Byeing { answered: false }) {
                    return;
                }
                c.a = AState::Byeing { answered: true };
                c.timer_gen += 1;
                let (gen_, phone_done) = (c.timer_gen, c.b.as_ref().is_none_or(|b| b.bye));
                if status >= 300 {
                    self.tally(&format!("bye_answered_{status}"));
                }
                if phone_done {
                    self.ended(call);
                } else {
                    self.arm(now + PHONE_BYE_GRACE, call, 0, gen_);
                }
            }
            _ => self.tally("sip_unexpected_response"),
        }
    }

    fn invite_response(&mut self, now: u64, call: u32, resp: &Response, status: u16, to: Option<String>) {
        let local = self.pbx_local;
        let Some(c) = self.call_mut(call) else { return };
        let ruri = c.ruri.clone();
        match status {
            100..=199 => {
                if c.a == (AState::Inviting { provisional: false }) {
                    c.a = AState::Inviting { provisional: true };
                    c.timer_gen += 1;
                    let gen_ = c.timer_gen;
                    self.arm(now + FINAL_WAIT, call, 0, gen_);
                }
            }
            200..=299 => {
                if !matches!(c.a, AState::Inviting { .. }) {
                    // A retransmitted 2xx: its ACK again.
                    if let Some(ack) = c.ack.clone() {
                        self.tally("sip_2xx_retransmissions");
                        self.send_pbx(&ack);
                    }
                    return;
                }
                let h = resp.headers();
                c.to = to;
                c.target = match h.contacts() {
                    Ok(Contacts::List(l)) => l.first().map(|n| n.uri().as_str().to_owned()),
                    _ => None,
                };
                c.routes = h
                    .record_routes()
                    .map(|rr| rr.iter().rev().map(|n| String::from_utf8_lossy(n.as_bytes()).into_owned()).collect())
                    .unwrap_or_default();
                let dest = match sdp::audio_destination(resp.body()) {
                    Ok(Audio::At(a)) => Some(a),
                    _ => None,
                };
                c.dest = dest;
                c.a = AState::Up;
                c.timer_gen += 1;
                let branch = self.branch(call);
                let Some(c) = self.calls.get(call as usize).and_then(Option::as_ref) else { return };
                let ack = self.in_dialog(c, "ACK", &branch, 1);
                self.send_pbx(&ack);
                if let Some(c) = self.call_mut(call) {
                    c.ack = Some(ack);
                }
                if dest.is_none() {
                    self.tally("sip_2xx_without_audio");
                    self.end_call(now, call);
                    self.fail(call, "2xx without SDP audio".into());
                    return;
                }
                self.maybe_up(call);
            }
            _ => {
                // Non-2xx final: ACK within the INVITE transaction (same branch).
                let ack = format!(
                    "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={};rport\r\nMax-Forwards: 70\r\n\
                     From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
                    c.branch,
                    c.from,
                    to.unwrap_or_default(),
                    c.call_id
                );
                let inviting = matches!(c.a, AState::Inviting { .. });
                self.send_pbx(ack.as_bytes());
                if inviting {
                    let reason = String::from_utf8_lossy(resp.reason()).into_owned();
                    self.fail(call, format!("{status} {reason}"));
                }
            }
        }
    }

    fn pbx_request(&mut self, req: &Request, from: SocketAddr) {
        let call = req.headers().call_id().ok().and_then(|id| self.call_of(id));
        let bytes = match req.method() {
            Method::Ack => return,
            Method::Bye => {
                if let Some(call) = call {
                    self.tally("bye_from_trunkgate_to_pbx");
                    self.dropped(call, "BYE to the PBX");
                }
                Self::response(req, 200, "OK", None, None, None)
            }
            Method::Invite | Method::Update => match call.and_then(|c| self.reoffer(req, c, false)) {
                Some(bytes) => bytes,
                None => {
                    self.tally("unexpected_invite_to_pbx");
                    Self::response(req, 488, "Not Acceptable Here", Some("x"), None, None)
                }
            },
            _ => Self::response(req, 200, "OK", None, None, None),
        };
        if self.pbx.send_to(&bytes, from).is_err() {
            self.tally("sip_send_errors");
        }
    }

    fn handle_phone(&mut self, now: u64, msg: Message, from: SocketAddr) {
        let Message::Request(req) = msg else {
            self.tally("phone_unexpected_response");
            return;
        };
        let Ok(call_id) = req.headers().call_id().map(str::to_owned) else {
            self.tally("sip_malformed");
            return;
        };
        let known = self.phone_legs.get(&call_id).copied();
        let bytes = match (req.method(), known) {
            (Method::Invite, None) => match self.new_fork(now, &req, &call_id, from) {
                Some(bytes) => bytes,
                None => return,
            },
            (Method::Invite | Method::Update, Some(call)) => {
                let reoffer = req.headers().to().ok().is_some_and(|t| t.tag().is_some());
                if !reoffer && *req.method() == Method::Invite {
                    // The INVITE again: our 200 again.
                    let Some(b) = self.call_mut(call).and_then(|c| c.b.as_ref()) else { return };
                    let (ok, to) = (b.ok.clone(), b.ok_to);
                    self.tally("phone_invite_retransmissions");
                    if self.phone.send_to(&ok, to).is_err() {
                        self.tally("sip_send_errors");
                    }
                    return;
                }
                match self.reoffer(&req, call, true) {
                    Some(bytes) => bytes,
                    None => return,
                }
            }
            (Method::Ack, Some(call)) => {
                let Some(c) = self.call_mut(call) else { return };
                let Some(b) = c.b.as_mut() else { return };
                b.acked = true;
                b.timer_gen += 1;
                if b.dest.is_none()
                    && let Ok(Audio::At(a)) = sdp::audio_destination(req.body())
                {
                    b.dest = Some(a);
                    self.maybe_up(call);
                }
                return;
            }
            (Method::Ack, None) => return,
            (Method::Bye, Some(call)) => {
                if let Some(b) = self.call_mut(call).and_then(|c| c.b.as_mut()) {
                    b.bye = true;
                    b.timer_gen += 1;
                }
                match self.call_mut(call).map(|c| c.a) {
                    Some(AState::Byeing { answered: true }) => self.ended(call),
                    Some(AState::Up) => {
                        self.tally("bye_from_trunkgate_to_phone");
                        self.dropped(call, "BYE to the phone");
                    }
                    _ => {}
                }
                Self::response(&req, 200, "OK", None, None, None)
            }
            (Method::Bye, None) => Self::response(&req, 481, "Call/Transaction Does Not Exist", None, None, None),
            _ => Self::response(&req, 200, "OK", None, None, None),
        };
        if self.phone.send_to(&bytes, from).is_err() {
            self.tally("sip_send_errors");
        }
    }

    /// The first INVITE of a fork: which call, then our 200.
    fn new_fork(&mut self, now: u64, req: &Request, call_id: &str, from: SocketAddr) -> Option<Vec<u8>> {
        let call = self.call_of_fork(req);
        let fits = call
            .and_then(|c| self.calls.get(c as usize))
            .and_then(Option::as_ref)
            .is_some_and(|c| c.b.is_none() && matches!(c.a, AState::Inviting { .. } | AState::Up));
        let (Some(call), true) = (call, fits) else {
            self.tally("phone_unknown_invite");
            return Some(Self::response(req, 486, "Busy Here", Some("x"), None, None));
        };
        let dest = match sdp::audio_destination(req.body()) {
            Ok(Audio::At(a)) => Some(a),
            _ => {
                self.tally("phone_invite_without_audio");
                None
            }
        };
        let tag = format!("ph{call}");
        let local = self.phone_local;
        let c = self.call_mut(call)?;
        let answer = sdp::describe(u64::from(call), 1, c.phone_rtp);
        let ok = Self::response(req, 200, "OK", Some(&tag), Some(local), Some(answer));
        c.b = Some(PhoneLeg {
            ok: ok.clone(),
            ok_to: from,
            acked: false,
            dest,
            bye: false,
            interval: T1,
            deadline: now + TIMER_B,
            timer_gen: 0,
            sdp_version: 1,
        });
        self.phone_legs.insert(call_id.to_owned(), call);
        self.arm(now + T1, call, 1, 0);
        self.maybe_up(call);
        Some(ok)
    }

    /// A re-INVITE or UPDATE on a leg of `call` (`phone`: the phone's leg):
    /// our 200 (with an SDP for an INVITE or an offer), and the direction
    /// redirected if the offer moved the peer.
    fn reoffer(&mut self, req: &Request, call: u32, phone: bool) -> Option<Vec<u8>> {
        let local = if phone { self.phone_local } else { self.pbx_local };
        let c = self.call_mut(call)?;
        let (rtp, version, dest) = if phone {
            let b = c.b.as_mut()?;
            b.sdp_version += 1;
            (c.phone_rtp, b.sdp_version, &mut b.dest)
        } else {
            c.sdp_version += 1;
            (c.pbx_rtp, c.sdp_version, &mut c.dest)
        };
        let with_sdp = *req.method() == Method::Invite || !req.body().is_empty();
        let answer = with_sdp.then(|| sdp::describe(u64::from(call), version, rtp));
        let moved = match sdp::audio_destination(req.body()) {
            Ok(Audio::At(a)) if Some(a) != *dest => {
                *dest = Some(a);
                Some(a)
            }
            _ => None,
        };
        if let Some(dest) = moved {
            let dir = if phone { Dir::PhoneToPbx } else { Dir::PbxToPhone };
            self.events.push_back(Event::Redirect { call, dir, dest });
        }
        self.tally(if phone { "reoffers_to_phone" } else { "reoffers_to_pbx" });
        Some(Self::response(req, 200, "OK", None, Some(local), answer))
    }

    fn timer_pbx(&mut self, now: u64, call: u32) {
        let Some(c) = self.call_mut(call) else { return };
        match c.a {
            AState::Inviting { provisional: false } if now < c.deadline => {
                c.interval *= 2;
                let (gen_, at, bytes) = (c.timer_gen, (now + c.interval).min(c.deadline), c.invite.clone());
                self.tally("invite_retransmissions");
                self.send_pbx(&bytes);
                self.arm(at, call, 0, gen_);
            }
            AState::Inviting { .. } => {
                self.tally("invite_timeouts");
                self.fail(call, "timeout".into());
            }
            AState::Byeing { answered: false } if now < c.deadline => {
                c.interval = (c.interval * 2).min(T2);
                let (gen_, at, bytes) = (c.timer_gen, (now + c.interval).min(c.deadline), c.bye.clone());
                self.tally("bye_retransmissions");
                if let Some(b) = bytes {
                    self.send_pbx(&b);
                }
                self.arm(at, call, 0, gen_);
            }
            AState::Byeing { answered: false } => {
                self.tally("bye_timeouts");
                self.ended(call);
            }
            AState::Byeing { answered: true } => {
                self.tally("phone_bye_missing");
                self.ended(call);
            }
            AState::Up | AState::Done => {}
        }
    }

    fn timer_phone(&mut self, now: u64, call: u32) {
        let Some(b) = self.call_mut(call).and_then(|c| c.b.as_mut()) else { return };
        if b.acked || b.bye {
            return;
        }
        if now >= b.deadline {
            self.tally("phone_ack_timeouts");
            return;
        }
        b.interval = (b.interval * 2).min(T2);
        let (gen_, at, ok, to) = (b.timer_gen, (now + b.interval).min(b.deadline), b.ok.clone(), b.ok_to);
        self.tally("phone_200_retransmissions");
        if self.phone.send_to(&ok, to).is_err() {
            self.tally("sip_send_errors");
        }
        self.arm(at, call, 1, gen_);
    }
}

impl Signalling for Sip {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.pbx.as_raw_fd(), self.phone.as_raw_fd()]
    }

    fn begin_step(&mut self, step: u32) {
        self.step = step;
        self.calls.clear();
        self.phone_legs.clear();
        self.timers.clear();
        self.events.clear();
    }

    fn start_call(&mut self, now: u64, call: u32, pbx_rtp: SocketAddr, phone_rtp: SocketAddr) {
        let i = call as usize;
        if self.calls.len() <= i {
            self.calls.resize_with(i + 1, || None);
        }
        let call_id = format!("{}{call}@mediaload", self.call_prefix());
        let branch = self.branch(call);
        let from = format!(
            "\"ml-{step}-{call}\" <sip:ml{step}x{call}@{}>;tag=pbx{call}",
            host(self.pbx_local.ip()),
            step = self.step
        );
        let body = sdp::describe(u64::from(call), 1, pbx_rtp);
        let invite = format!(
            "INVITE sip:{num}@{dom} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: {from}\r\nTo: <sip:{num}@{dom}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:pbx@{local}>\r\nUser-Agent: mediaload\r\nContent-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{body}",
            num = self.number(call),
            dom = self.cfg.domain,
            local = self.pbx_local,
            len = body.len(),
        )
        .into_bytes();
        self.send_pbx(&invite);
        let ruri = format!("sip:{}@{}", self.number(call), self.cfg.domain);
        self.calls[i] = Some(Call {
            a: AState::Inviting { provisional: false },
            pbx_rtp,
            phone_rtp,
            ruri,
            call_id,
            branch,
            invite,
            from,
            to: None,
            target: None,
            routes: Vec::new(),
            ack: None,
            bye: None,
            dest: None,
            interval: T1,
            deadline: now + TIMER_B,
            timer_gen: 0,
            sdp_version: 1,
            b: None,
            up_sent: false,
            over: false,
        });
        self.arm(now + T1, call, 0, 0);
    }

    fn end_call(&mut self, now: u64, call: u32) {
        let Some(c) = self.call_mut(call) else { return };
        match c.a {
            AState::Up => {}
            AState::Inviting { .. } => {
                // Not answered: abandoned (trunkgate times it out).
                self.tally("abandoned_while_inviting");
                self.ended(call);
                return;
            }
            AState::Byeing { .. } | AState::Done => return,
        }
        let branch = self.branch(call);
        let Some(c) = self.calls.get(call as usize).and_then(Option::as_ref) else { return };
        let bye = self.in_dialog(c, "BYE", &branch, 2);
        self.send_pbx(&bye);
        if let Some(c) = self.call_mut(call) {
            c.a = AState::Byeing { answered: false };
            c.bye = Some(bye);
            c.interval = T1;
            c.deadline = now + TIMER_B;
            c.timer_gen += 1;
            let gen_ = c.timer_gen;
            self.arm(now + T1, call, 0, gen_);
        }
    }

    fn handle_readable(&mut self, now: u64) {
        for phone_side in [false, true] {
            loop {
                let mut buf = std::mem::take(&mut self.buf);
                let sock = if phone_side { &self.phone } else { &self.pbx };
                let got = sock.recv_from(&mut buf);
                let Ok((n, from)) = got else {
                    self.buf = buf;
                    break;
                };
                match message::parse(&buf[..n]) {
                    Ok(msg) if phone_side => self.handle_phone(now, msg, from),
                    Ok(msg) => self.handle_pbx(now, msg, from),
                    Err(message::ParseError::Empty) => {}
                    Err(_) => self.tally("sip_malformed"),
                }
                self.buf = buf;
            }
        }
    }

    fn handle_timeout(&mut self, now: u64) {
        while let Some(&Reverse((at, call, side, gen_))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let current = self.calls.get(call as usize).and_then(Option::as_ref).and_then(|c| match side {
                0 => Some(c.timer_gen),
                _ => c.b.as_ref().map(|b| b.timer_gen),
            });
            if current != Some(gen_) {
                continue;
            }
            if side == 0 {
                self.timer_pbx(now, call);
            } else {
                self.timer_phone(now, call);
            }
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, ..))| *at)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn tallies(&self) -> BTreeMap<String, u64> {
        self.tallies.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use trunkgate::sip::message::{CheckConfig, check_request};

    fn recv(sock: &UdpSocket) -> (Message, SocketAddr) {
        let mut buf = vec![0; 65536];
        let (n, from) = sock.recv_from(&mut buf).expect("a datagram");
        (message::parse(&buf[..n]).expect("parses"), from)
    }

    /// One call through a fake B2BUA: the PBX's INVITE is valid for
    /// trunkgate's checks, the fork is answered with the phone endpoint,
    /// the 2xx is ACKed, Up names where each side sends, BYE ends it.
    #[test]
    fn a_call_through_a_b2bua() {
        let b2bua = UdpSocket::bind("127.0.0.1:0").expect("bind");
        b2bua.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let b2bua_addr = b2bua.local_addr().expect("addr");
        let cfg = SipConfig {
            target: b2bua_addr,
            pbx_bind: "127.0.0.1:0".parse().expect("addr"),
            phone_bind: "127.0.0.1:0".parse().expect("addr"),
            domain: "bench.example".into(),
            number: "1000".into(),
            numbers: 1,
        };
        let mut sip = Sip::new(cfg, 7).expect("engine");
        sip.begin_step(3);
        let (pbx_rtp, phone_rtp): (SocketAddr, SocketAddr) =
            ("127.0.0.1:40000".parse().expect("addr"), "127.0.0.1:40002".parse().expect("addr"));
        sip.start_call(0, 5, pbx_rtp, phone_rtp);

        let (Message::Request(invite), pbx_addr) = recv(&b2bua) else { panic!("not a request") };
        check_request(&invite, &CheckConfig::default()).expect("trunkgate would accept it");
        assert_eq!(invite.uri().as_str(), "sip:1000@bench.example");
        assert_eq!(sdp::audio_destination(invite.body()), Ok(Audio::At(pbx_rtp)));

        // The fork toward the phone, as trunkgate builds it (anchored: its own ports).
        let relay_a: SocketAddr = "127.0.0.1:20000".parse().expect("addr");
        let relay_b: SocketAddr = "127.0.0.1:20002".parse().expect("addr");
        let fork = format!(
            "INVITE sip:far-end@{phone} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfork1\r\nMax-Forwards: 70\r\n\
             From: \"ml-3-5\" <sip:ml3x5@bench.example>;tag=tg1\r\nTo: <sip:far-end@bench.example>\r\n\
             Call-ID: fork-1\r\nCSeq: 1 INVITE\r\nContact: <sip:tg@{me}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{body}",
            phone = sip.phone_local,
            me = b2bua_addr,
            len = sdp::describe(1, 1, relay_b).len(),
            body = sdp::describe(1, 1, relay_b),
        );
        b2bua.send_to(fork.as_bytes(), sip.phone_local).expect("send");
        sip.handle_readable(1);
        let (Message::Response(ok), _) = recv(&b2bua) else { panic!("not a response") };
        assert_eq!(ok.status(), 200);
        assert_eq!(sdp::audio_destination(ok.body()), Ok(Audio::At(phone_rtp)));
        assert_eq!(ok.headers().to().expect("To").tag(), Some("ph5"));

        // trunkgate answers the PBX with its other port.
        let answer = sdp::describe(2, 1, relay_a);
        let mut resp = Response::from_request(&invite, 200, "OK").with_to_tag("tgA").expect("tag");
        let _ = resp.headers_mut().push(HeaderName::Contact, format!("<sip:tg@{b2bua_addr}>"));
        let _ = resp.headers_mut().set(HeaderName::ContentType, "application/sdp");
        resp.set_body(Bytes::from(answer));
        b2bua.send_to(&resp.to_bytes(), pbx_addr).expect("send");
        sip.handle_readable(2);
        let (Message::Request(ack), _) = recv(&b2bua) else { panic!("not a request") };
        assert_eq!(*ack.method(), Method::Ack);
        assert_eq!(ack.headers().to().expect("To").tag(), Some("tgA"));
        assert_eq!(sip.poll_event(), Some(Event::Up { call: 5, dest: [relay_a, relay_b] }));

        // A retransmitted 2xx is ACKed again.
        b2bua.send_to(&resp.to_bytes(), pbx_addr).expect("send");
        sip.handle_readable(3);
        let (Message::Request(again), _) = recv(&b2bua) else { panic!("not a request") };
        assert_eq!(*again.method(), Method::Ack);

        // BYE from the PBX; trunkgate answers it and sends BYE to the phone.
        sip.end_call(4, 5);
        let (Message::Request(bye), _) = recv(&b2bua) else { panic!("not a request") };
        assert_eq!(*bye.method(), Method::Bye);
        assert_eq!(bye.uri().as_str(), format!("sip:tg@{b2bua_addr}"));
        b2bua.send_to(&Response::from_request(&bye, 200, "OK").to_bytes(), pbx_addr).expect("send");
        let phone_bye = format!(
            "BYE sip:mediaload@{phone} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKfork2\r\nMax-Forwards: 70\r\n\
             From: \"ml-3-5\" <sip:ml3x5@bench.example>;tag=tg1\r\nTo: <sip:far-end@bench.example>;tag=ph5\r\n\
             Call-ID: fork-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            phone = sip.phone_local,
            me = b2bua_addr,
        );
        b2bua.send_to(phone_bye.as_bytes(), sip.phone_local).expect("send");
        sip.handle_readable(5);
        let (Message::Response(bye_ok), _) = recv(&b2bua) else { panic!("not a response") };
        assert_eq!(bye_ok.status(), 200);
        assert_eq!(sip.poll_event(), Some(Event::Ended { call: 5 }));
        assert_eq!(sip.poll_event(), None);

        // Garbage is counted, not fatal.
        b2bua.send_to(b"\x00\x01garbage\r\n\r\n", sip.pbx_local).expect("send");
        sip.handle_readable(6);
        assert_eq!(sip.tallies().get("sip_malformed"), Some(&1));
    }
}
