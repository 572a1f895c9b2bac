//! Calls from PBX trunks to portal users: the B2BUA state of each call and
//! the core's handling of its two sides.
//!
//! The A leg is the PBX's dialog (we are its UAS); each fork is a B leg to
//! one contact of a portal user (we are its UAC). The legs share nothing
//! on the wire: own Call-IDs, tags, CSeqs and Vias, so neither side learns
//! the other's topology. SDP is passed through unchanged (media anchoring
//! comes later).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

use super::{Core, Outgoing};
use crate::admission::Reason;
use crate::config::{RingStrategy, Transport};
use crate::sip::message::{HeaderName, Method, Request, Response, Uri};
use crate::sip::transaction::{Reliability, TsxKey};
use crate::store::CallRecord;
use crate::transport::Target;

/// Internal call number.
pub(crate) type CallNo = u64;

/// Where one fork rings.
#[derive(Debug, Clone)]
pub(crate) struct ForkTarget {
    /// Portal user.
    pub user: String,
    /// Contact URI (Request-URI of the B INVITE).
    pub contact: String,
    /// Where to send it.
    pub target: Target,
}

/// What the admission task decided for an INVITE.
pub(crate) enum AdmissionResult {
    /// Refused: answer the INVITE with this.
    Refuse { key: TsxKey, status: u16, reason: Reason, detail: String, record: CallRecord },
    /// Admitted with a lease: ring these groups (one group per user, in order).
    Admit {
        key: TsxKey,
        groups: Vec<Vec<ForkTarget>>,
        strategy: RingStrategy,
        ring_timeout: Duration,
        max_duration: Duration,
        lease_id: String,
        domain: String,
        record: CallRecord,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForkState {
    Calling,
    Early,
    Answered,
    Failed(u16),
    Cancelled,
}

/// One B leg.
struct Fork {
    target: ForkTarget,
    call_id: String,
    branch: String,
    invite: Request,
    state: ForkState,
    /// From the 2xx: the remote tag, target and route set of the B dialog.
    to_value: Option<String>,
    remote_target: Option<String>,
    routes: Vec<String>,
    cseq: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ALegState {
    Ringing,
    /// 200 sent, waiting for ACK.
    Answered,
    Confirmed,
    Ended,
}

pub(crate) struct Call {
    no: CallNo,
    /// A leg: the INVITE, its server transaction, where to answer.
    a_invite: Request,
    a_key: TsxKey,
    a_target: Target,
    a_tag: String,
    a_call_id: String,
    a_state: ALegState,
    a_cseq: u32,
    /// The 2xx we retransmit until its ACK (RFC 3261 §13.3.1.4): the
    /// answer to the PBX, or to a relayed re-INVITE of either side.
    ack_wait: Option<(Target, Bytes)>,
    ack_interval: Duration,
    ack_deadline: Option<Instant>,
    /// An offer (re-INVITE, UPDATE) is being relayed: another gets 491.
    offer_pending: bool,
    forks: Vec<Fork>,
    /// Groups not rung yet (sequential strategies).
    queue: Vec<Vec<ForkTarget>>,
    ring_timeout: Duration,
    max_duration: Duration,
    lease_id: String,
    domain: String,
    record: CallRecord,
    best_failure: u16,
}

/// An in-dialog request relayed to the other leg.
#[derive(Debug, Clone)]
struct Relay {
    no: CallNo,
    /// The originator's server transaction, answered when the relay is.
    server_key: TsxKey,
    /// The fork it went to, or `None` for the PBX leg.
    to_b: Option<usize>,
    /// Its CSeq number on the other leg (the ACK of a 2xx repeats it).
    cseq: u32,
    invite: bool,
    offer: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CallTimer {
    Retransmit200,
    RingTimeout,
    MaxDuration,
}

/// Every call of the node, with its indexes.
#[derive(Default)]
pub(crate) struct Calls {
    calls: HashMap<CallNo, Call>,
    by_a: HashMap<String, CallNo>,
    by_b: HashMap<String, (CallNo, usize)>,
    /// Client transactions to forks: INVITE, CANCEL, BYE.
    clients: HashMap<TsxKey, (CallNo, usize)>,
    /// Each fork INVITE we sent, by its client transaction, until that
    /// transaction ends: the ACK of a non-2xx final response is built from
    /// it, even after the call itself is gone.
    fork_invites: HashMap<TsxKey, (Request, Target)>,
    /// A-leg server transactions still unanswered (INVITE), by key.
    a_keys: HashMap<TsxKey, CallNo>,
    /// BYEs we sent on the A leg.
    a_byes: HashMap<TsxKey, CallNo>,
    /// Relayed in-dialog requests, by the client transaction carrying them.
    relays: HashMap<TsxKey, Relay>,
    timers: BTreeSet<(Instant, CallNo, CallTimer)>,
    next: CallNo,
}

impl Calls {
    /// The earliest call timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _, _)| *t)
    }
}

fn token(prefix: &str, ctx: &super::Ctx) -> String {
    format!("{prefix}{}", ctx.new_tag().replace('.', ""))
}

/// A fresh RFC 3261 branch (magic cookie + a unique token).
fn new_branch(ctx: &super::Ctx) -> String {
    format!("z9hG4bK{}", token("", ctx))
}

impl Core {
    fn reliability(target: &Target) -> Reliability {
        if target.transport == Transport::Udp { Reliability::Unreliable } else { Reliability::Reliable }
    }

    /// The admission task's verdict arrives.
    pub(super) fn handle_admission(&mut self, result: AdmissionResult, now: Instant) {
        match result {
            AdmissionResult::Refuse { key, status, reason, detail, record } => {
                crate::ops::metrics::call_refused(reason.as_str());
                self.finish_record(record);
                let Some(p) = self.pending.get(&key) else { return };
                let mut resp =
                    Response::from_request(&p.request, status, crate::sip::message::status::reason_phrase(status));
                let text = format!("{}: {detail}", reason.as_str());
                let _ = resp.headers_mut().push(HeaderName::Warning, self.ctx.warning(&text));
                if reason.retry_after() {
                    let _ = resp.headers_mut().push(HeaderName::RetryAfter, "5");
                }
                self.respond(key, resp, now);
            }
            AdmissionResult::Admit {
                key,
                groups,
                strategy,
                ring_timeout,
                max_duration,
                lease_id,
                domain,
                mut record,
            } => {
                crate::ops::metrics::call_admitted(record.trunk.as_deref().unwrap_or(""));
                let Some(p) = self.pending.get(&key) else {
                    // CANCELled (or timed out) while admission ran.
                    self.release_lease(&lease_id, record.portal_id.as_deref());
                    record.outcome = "cancelled".into();
                    record.sip_status = Some(487);
                    self.finish_record(record);
                    return;
                };
                let a_invite = p.request.clone();
                let a_target = p.target;
                let a_call_id = a_invite.headers().call_id().unwrap_or("").to_owned();
                self.calls.next += 1;
                let no = self.calls.next;
                let mut queue: Vec<Vec<ForkTarget>> = groups;
                let first: Vec<ForkTarget> = match strategy {
                    RingStrategy::RingAll => queue.drain(..).flatten().collect(),
                    RingStrategy::InOrder | RingStrategy::Evenly => {
                        if queue.is_empty() {
                            Vec::new()
                        } else {
                            queue.remove(0)
                        }
                    }
                };
                let call = Call {
                    no,
                    a_invite,
                    a_key: key.clone(),
                    a_target,
                    a_tag: self.ctx.new_tag(),
                    a_call_id: a_call_id.clone(),
                    a_state: ALegState::Ringing,
                    a_cseq: 0,
                    ack_wait: None,
                    ack_interval: self.ctx.config.timers.t1,
                    ack_deadline: None,
                    offer_pending: false,
                    forks: Vec::new(),
                    queue,
                    ring_timeout,
                    max_duration,
                    lease_id,
                    domain,
                    record,
                    best_failure: 0,
                };
                self.calls.calls.insert(no, call);
                self.ctx.active_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.calls.by_a.insert(a_call_id, no);
                self.calls.a_keys.insert(key.clone(), no);
                // 100 Trying at once: ringing may take a while.
                if let Some(p) = self.pending.get(&key) {
                    let trying = Response::from_request(&p.request, 100, "Trying");
                    self.send_through(&key, trying, now);
                }
                self.calls.timers.insert((now + ring_timeout, no, CallTimer::RingTimeout));
                for t in first {
                    self.start_fork(no, t, now);
                }
                self.check_all_failed(no, now);
            }
        }
    }

    fn start_fork(&mut self, no: CallNo, t: ForkTarget, now: Instant) {
        let Some(call) = self.calls.calls.get(&no) else { return };
        // The shard prefix routes the B leg's messages back to this core.
        let call_id = format!("s{}.{}@trunkgate", self.shard, token("b", &self.ctx));
        let from_tag = self.ctx.new_tag();
        let branch = new_branch(&self.ctx);
        let caller = call.record.caller.clone().unwrap_or_else(|| "anonymous".into());
        let display = call
            .a_invite
            .headers()
            .from()
            .ok()
            .and_then(|f| f.display_name().map(|d| d.text().replace('"', "")))
            .filter(|d| !d.is_empty());
        let from = match display {
            Some(d) => format!("\"{d}\" <sip:{caller}@{}>;tag={from_tag}", call.domain),
            None => format!("<sip:{caller}@{}>;tag={from_tag}", call.domain),
        };
        let to = format!("<sip:{}@{}>", t.user, call.domain);
        let Ok(uri) = Uri::parse(&t.contact) else {
            warn!(contact = %t.contact, "unusable contact skipped");
            return;
        };
        let content_type = call.a_invite.headers().content_type().ok().flatten().map(|c| c.as_str().to_owned());
        let body = call.a_invite.body().clone();
        let mut b = Request::builder(Method::Invite, uri)
            .header(HeaderName::Via, via_header(&self.transports, &t.target, &branch))
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, from)
            .header(HeaderName::To, to)
            .header(HeaderName::CallId, &call_id)
            .header(HeaderName::CSeq, "1 INVITE")
            .header(HeaderName::Contact, contact_header(&self.transports, &t.target))
            .header(HeaderName::Allow, "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE")
            .header(HeaderName::UserAgent, super::SERVER);
        if let Some(ct) = content_type.filter(|_| !body.is_empty()) {
            b = b.body(&ct, body);
        }
        let invite = match b.build() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "B-leg INVITE not built");
                return;
            }
        };
        let out = Outgoing { target: t.target, data: Bytes::from(invite.to_bytes()) };
        let key = self
            .layer
            .start_client(now, crate::sip::transaction::Method::INVITE, &branch, Self::reliability(&t.target), out)
            .ok();
        let Some(call) = self.calls.calls.get_mut(&no) else { return };
        let idx = call.forks.len();
        debug!(call = no, user = %t.user, contact = %t.contact, "ringing");
        call.forks.push(Fork {
            target: t,
            call_id: call_id.clone(),
            branch,
            invite,
            state: if key.is_some() { ForkState::Calling } else { ForkState::Failed(503) },
            to_value: None,
            remote_target: None,
            routes: Vec::new(),
            cseq: 1,
        });
        self.calls.by_b.insert(call_id, (no, idx));
        if let Some(k) = key {
            if let Some(f) = self.calls.calls.get(&no).and_then(|c| c.forks.get(idx)) {
                self.calls.fork_invites.insert(k.clone(), (f.invite.clone(), f.target.target));
            }
            self.calls.clients.insert(k, (no, idx));
        }
    }

    /// A response on a client transaction of ours.
    pub(super) fn handle_client_response(&mut self, key: &TsxKey, resp: &Response, now: Instant) {
        if self.calls.relays.contains_key(key) {
            self.relay_response(key, resp, now);
            return;
        }
        if let Some(no) = self.calls.a_byes.get(key).copied() {
            if resp.status() >= 200 {
                self.calls.a_byes.remove(key);
                debug!(call = no, status = resp.status(), "A-leg BYE answered");
            }
            return;
        }
        let Some(&(no, idx)) = self.calls.clients.get(key) else { return };
        let is_invite = key.is_invite();
        if !is_invite {
            // CANCEL or BYE answered: nothing more to do.
            return;
        }
        let status = resp.status();
        let Some(call) = self.calls.calls.get_mut(&no) else { return };
        let Some(fork) = call.forks.get_mut(idx) else { return };
        match status {
            100 => {}
            101..=199 => {
                if fork.state == ForkState::Calling {
                    fork.state = ForkState::Early;
                }
                if call.a_state == ALegState::Ringing && status != 100 {
                    // Relay 180/183 (with early media SDP if any).
                    let mut r = Response::from_request(&call.a_invite, status, &resp.reason_lossy());
                    r = r.clone().with_to_tag(&call.a_tag).unwrap_or(r);
                    if !resp.body().is_empty()
                        && let Ok(Some(ct)) = resp.headers().content_type()
                    {
                        let _ = r.headers_mut().push(HeaderName::ContentType, ct.as_str());
                        r.set_body(resp.body().clone());
                    }
                    let contact = contact_header(&self.transports, &call.a_target);
                    let _ = r.headers_mut().push(HeaderName::Contact, contact);
                    let a_key = call.a_key.clone();
                    self.send_through(&a_key, r, now);
                }
            }
            200..=299 => self.fork_answered(no, idx, resp, now),
            _ => {
                fork.state = ForkState::Failed(status);
                if call.best_failure == 0 || rank(status) > rank(call.best_failure) {
                    call.best_failure = status;
                }
                // The mapping stays until the transaction ends: the ACK of
                // this final response is built from it (AckNeeded follows).
                self.advance_or_fail(no, now);
            }
        }
    }

    fn fork_answered(&mut self, no: CallNo, idx: usize, resp: &Response, now: Instant) {
        let Some(call) = self.calls.calls.get_mut(&no) else { return };
        let already = call.forks.iter().position(|f| f.state == ForkState::Answered);
        let Some(fork) = call.forks.get_mut(idx) else { return };
        // Learn the B dialog from the 2xx (every 2xx is ACKed, even late ones).
        if fork.to_value.is_none() {
            fork.to_value = resp.headers().get(&HeaderName::To).and_then(|h| h.value_str()).map(str::to_owned);
            fork.remote_target = resp.headers().contacts().ok().and_then(|c| match c {
                crate::sip::message::Contacts::List(l) => l.first().map(|n| n.uri().as_str().to_owned()),
                crate::sip::message::Contacts::Star => None,
            });
            fork.routes = resp
                .headers()
                .record_routes()
                .map(|rr| rr.iter().rev().map(|r| r.to_string()).collect())
                .unwrap_or_default();
        }
        let ack = build_in_dialog(
            fork,
            Method::Ack,
            1,
            &via_header(&self.transports, &fork.target.target, &new_branch(&self.ctx)),
        );
        if let Some(ack) = ack {
            let _ = self.transports.send(&fork.target.target, Bytes::from(ack.to_bytes()));
        }
        match already {
            Some(first) if first != idx => {
                // Another fork answered first: hang this one up.
                fork.state = ForkState::Answered;
                self.send_b_bye(no, idx, now);
                return;
            }
            Some(_) => return, // a retransmitted 2xx: ACKed again above.
            None => fork.state = ForkState::Answered,
        }
        // First answer: answer the PBX, cancel the other forks.
        let user = fork.target.user.clone();
        let mut r = Response::from_request(&call.a_invite, 200, "OK");
        r = r.clone().with_to_tag(&call.a_tag).unwrap_or(r);
        let contact = contact_header(&self.transports, &call.a_target);
        let _ = r.headers_mut().push(HeaderName::Contact, contact);
        let _ = r.headers_mut().push(HeaderName::Allow, "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE");
        if !resp.body().is_empty()
            && let Ok(Some(ct)) = resp.headers().content_type()
        {
            let _ = r.headers_mut().push(HeaderName::ContentType, ct.as_str());
            r.set_body(resp.body().clone());
        }
        let _ = r.headers_mut().push(HeaderName::Server, super::SERVER);
        call.a_state = ALegState::Answered;
        call.record.answered_at = Some(super::unix_now_i64());
        call.record.target_user = Some(user.clone());
        call.ack_wait = Some((call.a_target, Bytes::from(r.to_bytes())));
        call.ack_interval = self.ctx.config.timers.t1;
        call.ack_deadline = Some(now + self.ctx.config.timers.t1 * 64);
        let a_key = call.a_key.clone();
        let retransmit_at = now + call.ack_interval;
        let max = call.max_duration;
        self.calls.timers.retain(|(_, n, k)| !(*n == no && *k == CallTimer::RingTimeout));
        self.calls.timers.insert((retransmit_at, no, CallTimer::Retransmit200));
        self.calls.timers.insert((now + max, no, CallTimer::MaxDuration));
        self.calls.a_keys.remove(&a_key);
        debug!(call = no, user = %user, "answered");
        self.send_through(&a_key, r, now);
        self.pending.remove(&a_key);
        self.cancel_forks(no, Some(idx), now);
    }

    /// CANCELs every fork still ringing (except `keep`).
    fn cancel_forks(&mut self, no: CallNo, keep: Option<usize>, now: Instant) {
        let Some(mut call) = self.calls.calls.remove(&no) else { return };
        self.cancel_forks_in(&mut call, keep, now);
        self.calls.calls.insert(no, call);
    }

    fn cancel_forks_in(&mut self, call: &mut Call, keep: Option<usize>, now: Instant) {
        let no = call.no;
        let mut cancels = Vec::new();
        for (i, f) in call.forks.iter_mut().enumerate() {
            if Some(i) == keep || !matches!(f.state, ForkState::Calling | ForkState::Early) {
                continue;
            }
            f.state = ForkState::Cancelled;
            // §9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via as the INVITE.
            let h = f.invite.headers();
            let mut b = Request::builder(Method::Cancel, f.invite.uri().clone());
            for name in [HeaderName::Via, HeaderName::From, HeaderName::To, HeaderName::CallId] {
                if let Some(v) = h.get(&name).and_then(|v| v.value_str()) {
                    b = b.header(name, v);
                }
            }
            b = b.header(HeaderName::CSeq, "1 CANCEL").header(HeaderName::MaxForwards, "70");
            if let Ok(req) = b.build() {
                cancels.push((i, f.branch.clone(), f.target.target, req));
            }
        }
        for (i, branch, target, req) in cancels {
            let out = Outgoing { target, data: Bytes::from(req.to_bytes()) };
            match self.layer.start_client(
                now,
                crate::sip::transaction::Method::new("CANCEL"),
                &branch,
                Self::reliability(&target),
                out,
            ) {
                Ok(k) => {
                    self.calls.clients.insert(k, (no, i));
                }
                Err(e) => warn!(call = no, error = %e, "CANCEL not sent"),
            }
        }
    }

    /// A fork failed: ring the next group (sequential strategies) or, when
    /// nothing is left ringing, fail the call.
    fn advance_or_fail(&mut self, no: CallNo, now: Instant) {
        let Some(call) = self.calls.calls.get_mut(&no) else { return };
        if call.a_state != ALegState::Ringing {
            return;
        }
        let ringing = call.forks.iter().any(|f| matches!(f.state, ForkState::Calling | ForkState::Early));
        if ringing {
            return;
        }
        if !call.queue.is_empty() {
            let next = call.queue.remove(0);
            let timeout = call.ring_timeout;
            self.calls.timers.retain(|(_, n, k)| !(*n == no && *k == CallTimer::RingTimeout));
            self.calls.timers.insert((now + timeout, no, CallTimer::RingTimeout));
            for t in next {
                self.start_fork(no, t, now);
            }
            self.check_all_failed(no, now);
            return;
        }
        self.check_all_failed(no, now);
    }

    /// When no fork is left to ring: answer the PBX with the best failure.
    fn check_all_failed(&mut self, no: CallNo, now: Instant) {
        let Some(call) = self.calls.calls.get(&no) else { return };
        if call.a_state != ALegState::Ringing {
            return;
        }
        let live =
            call.forks.iter().any(|f| matches!(f.state, ForkState::Calling | ForkState::Early | ForkState::Answered));
        if live || !call.queue.is_empty() {
            return;
        }
        let status = if call.best_failure == 0 { 480 } else { call.best_failure };
        let (status, outcome) = match status {
            486 | 600 => (486, "busy"),
            603 => (603, "declined"),
            s @ 600..=699 => (s, "failed"),
            _ => (480, "unavailable"),
        };
        self.end_unanswered(no, status, outcome, Some(Reason::Unavailable).filter(|_| status == 480), now);
    }

    /// Ends a call that was never answered: final response to the PBX.
    fn end_unanswered(&mut self, no: CallNo, status: u16, outcome: &str, reason: Option<Reason>, now: Instant) {
        let Some(mut call) = self.remove_call(no) else { return };
        call.record.outcome = outcome.into();
        call.record.sip_status = Some(i64::from(status));
        call.record.reason = reason.map(|r| r.as_str().to_owned());
        if self.pending.contains_key(&call.a_key) {
            let mut r =
                Response::from_request(&call.a_invite, status, crate::sip::message::status::reason_phrase(status));
            r = r.clone().with_to_tag(&call.a_tag).unwrap_or(r);
            if let Some(reason) = reason {
                let _ = r
                    .headers_mut()
                    .push(HeaderName::Warning, self.ctx.warning(&format!("{}: no user answered", reason.as_str())));
            }
            let key = call.a_key.clone();
            self.respond(key, r, now);
        }
        self.cancel_forks_in(&mut call, None, now);
        self.release_lease(&call.lease_id, call.record.portal_id.as_deref());
        self.finish_record(call.record);
    }

    fn remove_call(&mut self, no: CallNo) -> Option<Call> {
        let call = self.calls.calls.remove(&no)?;
        self.ctx.active_calls.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.calls.by_a.remove(&call.a_call_id);
        self.calls.a_keys.remove(&call.a_key);
        // Fork indexes stay until their transactions end (late 2xx are
        // still ACKed and hung up via by_b lookups failing gracefully).
        for f in &call.forks {
            self.calls.by_b.remove(&f.call_id);
        }
        self.calls.timers.retain(|(_, n, _)| *n != no);
        Some(call)
    }

    /// A call timer fired.
    pub(super) fn handle_call_timers(&mut self, now: Instant) {
        while let Some(&(at, no, kind)) = self.calls.timers.first() {
            if at > now {
                break;
            }
            self.calls.timers.pop_first();
            match kind {
                CallTimer::RingTimeout => {
                    let sequential_left = self.calls.calls.get(&no).is_some_and(|c| !c.queue.is_empty());
                    if sequential_left {
                        self.cancel_forks(no, None, now);
                        self.advance_or_fail(no, now);
                    } else {
                        debug!(call = no, "no answer within the ring timeout");
                        self.end_unanswered(no, 480, "no-answer", Some(Reason::Unavailable), now);
                    }
                }
                CallTimer::Retransmit200 => {
                    let Some(call) = self.calls.calls.get_mut(&no) else { continue };
                    let Some((target, data)) = call.ack_wait.clone() else { continue };
                    if call.ack_deadline.is_some_and(|d| now >= d) {
                        warn!(call = no, "no ACK for our 2xx: hanging up");
                        call.ack_wait = None;
                        self.hang_up(no, "failed", now);
                        continue;
                    }
                    let _ = self.transports.send(&target, data);
                    call.ack_interval = (call.ack_interval * 2).min(self.ctx.config.timers.t2);
                    let next = now + call.ack_interval;
                    self.calls.timers.insert((next, no, CallTimer::Retransmit200));
                }
                CallTimer::MaxDuration => {
                    debug!(call = no, "maximum call duration reached");
                    self.hang_up(no, "max-duration", now);
                }
            }
        }
    }

    /// An ACK for one of our 2xx (to the PBX's INVITE, or to a relayed
    /// re-INVITE of either leg): stop retransmitting it.
    pub(super) fn handle_ack(&mut self, call_id: &str) {
        let no = self.calls.by_a.get(call_id).copied().or_else(|| self.calls.by_b.get(call_id).map(|(n, _)| *n));
        let Some(no) = no else { return };
        if let Some(call) = self.calls.calls.get_mut(&no) {
            if call.a_state == ALegState::Answered {
                call.a_state = ALegState::Confirmed;
            }
            call.ack_wait = None;
            self.calls.timers.retain(|(_, n, k)| !(*n == no && *k == CallTimer::Retransmit200));
        }
    }

    /// An in-dialog request (To tag present) that is not an ACK: BYE from
    /// either side; others are answered 200 (INFO) or refused for now.
    /// Returns false when no call knows the dialog.
    pub(super) fn handle_in_dialog(&mut self, key: &TsxKey, req: &Request, now: Instant) -> bool {
        let call_id = req.headers().call_id().unwrap_or("").to_owned();
        let from_a = self.calls.by_a.get(&call_id).copied();
        let from_b = self.calls.by_b.get(&call_id).copied();
        let (no, side) = match (from_a, from_b) {
            (Some(no), _) => (no, None),
            (None, Some((no, idx))) => (no, Some(idx)),
            (None, None) => return false,
        };
        match req.method() {
            Method::Bye => {
                self.respond(key.clone(), Response::from_request(req, 200, "OK"), now);
                match side {
                    None => {
                        debug!(call = no, "PBX hung up");
                        if let Some(c) = self.calls.calls.get_mut(&no) {
                            c.a_state = ALegState::Ended;
                        }
                        self.hang_up(no, "completed", now);
                    }
                    Some(idx) => {
                        debug!(call = no, "portal user hung up");
                        if let Some(f) = self.calls.calls.get_mut(&no).and_then(|c| c.forks.get_mut(idx)) {
                            f.state = ForkState::Cancelled;
                        }
                        self.hang_up(no, "completed", now);
                    }
                }
            }
            Method::Options => {
                self.respond(key.clone(), Response::from_request(req, 200, "OK"), now);
            }
            Method::Invite | Method::Update | Method::Info => self.relay_in_dialog(no, side, key, req, now),
            _ => {
                let r = Response::from_request(req, 501, "Not Implemented");
                self.respond(key.clone(), r, now);
            }
        }
        true
    }

    /// Ends an answered call: BYE to every side still up.
    fn hang_up(&mut self, no: CallNo, outcome: &str, now: Instant) {
        let Some(call) = self.calls.calls.get(&no) else { return };
        let answered: Vec<usize> =
            call.forks.iter().enumerate().filter(|(_, f)| f.state == ForkState::Answered).map(|(i, _)| i).collect();
        let a_up = matches!(call.a_state, ALegState::Answered | ALegState::Confirmed);
        for idx in answered {
            self.send_b_bye(no, idx, now);
        }
        if a_up {
            self.send_a_bye(no, now);
        }
        let Some(mut call) = self.remove_call(no) else { return };
        call.record.outcome = outcome.into();
        call.record.sip_status = Some(200);
        self.release_lease(&call.lease_id, call.record.portal_id.as_deref());
        self.finish_record(call.record);
    }

    fn send_b_bye(&mut self, no: CallNo, idx: usize, now: Instant) {
        let Some(call) = self.calls.calls.get_mut(&no) else { return };
        let Some(fork) = call.forks.get_mut(idx) else { return };
        fork.state = ForkState::Cancelled;
        fork.cseq += 1;
        let branch = new_branch(&self.ctx);
        let via = via_header(&self.transports, &fork.target.target, &branch);
        let cseq = fork.cseq;
        let Some(bye) = build_in_dialog(fork, Method::Bye, cseq, &via) else { return };
        let target = fork.target.target;
        let out = Outgoing { target, data: Bytes::from(bye.to_bytes()) };
        if let Ok(k) = self.layer.start_client(
            now,
            crate::sip::transaction::Method::new("BYE"),
            &branch,
            Self::reliability(&target),
            out,
        ) {
            self.calls.clients.insert(k, (no, idx));
        }
    }

    fn send_a_bye(&mut self, no: CallNo, now: Instant) {
        let Some(call) = self.calls.calls.get_mut(&no) else { return };
        call.a_cseq += 1;
        call.a_state = ALegState::Ended;
        let cseq = call.a_cseq;
        let branch = new_branch(&self.ctx);
        let via = via_header(&self.transports, &call.a_target, &branch);
        let Some(bye) = build_a_request(call, Method::Bye, cseq, &via) else { return };
        let target = call.a_target;
        let out = Outgoing { target, data: Bytes::from(bye.to_bytes()) };
        if let Ok(k) = self.layer.start_client(
            now,
            crate::sip::transaction::Method::new("BYE"),
            &branch,
            Self::reliability(&target),
            out,
        ) {
            self.calls.a_byes.insert(k, no);
        }
    }

    /// Relays an in-dialog request (re-INVITE, UPDATE, INFO) to the other
    /// leg, unchanged but for the dialog fields; its answer comes back
    /// through `relay_response`. A second offer while one is pending in
    /// either direction gets 491 (RFC 3261 §14.1 glare), so the two legs
    /// never hold crossed offers.
    fn relay_in_dialog(&mut self, no: CallNo, from_b: Option<usize>, key: &TsxKey, req: &Request, now: Instant) {
        let Some(call) = self.calls.calls.get_mut(&no) else { return };
        let offer = matches!(req.method(), Method::Invite | Method::Update);
        let Some(answered) = call.forks.iter().position(|f| f.state == ForkState::Answered) else {
            let r = Response::from_request(req, 481, "Call/Transaction Does Not Exist");
            self.respond(key.clone(), r, now);
            return;
        };
        if offer && call.offer_pending {
            let mut r = Response::from_request(req, 491, "Request Pending");
            let _ = r.headers_mut().push(HeaderName::RetryAfter, "1");
            self.respond(key.clone(), r, now);
            return;
        }
        let branch = new_branch(&self.ctx);
        let (out_req, target, cseq, to_b) = match from_b {
            None => {
                let fork = &mut call.forks[answered];
                fork.cseq += 1;
                let cseq = fork.cseq;
                let via = via_header(&self.transports, &fork.target.target, &branch);
                let Some(mut r) = build_in_dialog(fork, req.method().clone(), cseq, &via) else { return };
                let _ =
                    r.headers_mut().push(HeaderName::Contact, contact_header(&self.transports, &fork.target.target));
                (r, fork.target.target, cseq, Some(answered))
            }
            Some(_) => {
                call.a_cseq += 1;
                let cseq = call.a_cseq;
                let via = via_header(&self.transports, &call.a_target, &branch);
                let Some(mut r) = build_a_request(call, req.method().clone(), cseq, &via) else { return };
                let _ = r.headers_mut().push(HeaderName::Contact, contact_header(&self.transports, &call.a_target));
                (r, call.a_target, cseq, None)
            }
        };
        let mut out_req = out_req;
        if !req.body().is_empty()
            && let Ok(Some(ct)) = req.headers().content_type()
        {
            let _ = out_req.headers_mut().push(HeaderName::ContentType, ct.as_str());
            out_req.set_body(req.body().clone());
        }
        let out = Outgoing { target, data: Bytes::from(out_req.to_bytes()) };
        let method = crate::sip::transaction::Method::new(req.method().as_str());
        match self.layer.start_client(now, method, &branch, Self::reliability(&target), out) {
            Ok(k) => {
                if offer {
                    call.offer_pending = true;
                }
                self.calls.relays.insert(
                    k,
                    Relay { no, server_key: key.clone(), to_b, cseq, invite: *req.method() == Method::Invite, offer },
                );
            }
            Err(e) => {
                warn!(call = no, error = %e, "in-dialog request not relayed");
                let r = Response::from_request(req, 500, "Server Internal Error");
                self.respond(key.clone(), r, now);
            }
        }
    }

    /// The other leg answered a relayed request: ACK its 2xx ourselves (we
    /// are that dialog's UAC) and pass the answer back.
    fn relay_response(&mut self, key: &TsxKey, resp: &Response, now: Instant) {
        let Some(relay) = self.calls.relays.get(key).cloned() else { return };
        let status = resp.status();
        if status < 200 && status != 183 && status != 180 {
            return;
        }
        if status >= 200 {
            self.calls.relays.remove(key);
        }
        let Some(call) = self.calls.calls.get_mut(&relay.no) else { return };
        if status >= 200 && relay.offer {
            call.offer_pending = false;
        }
        if (200..300).contains(&status) && relay.invite {
            let branch = new_branch(&self.ctx);
            let ack = match relay.to_b {
                Some(idx) => call.forks.get(idx).and_then(|f| {
                    build_in_dialog(
                        f,
                        Method::Ack,
                        relay.cseq,
                        &via_header(&self.transports, &f.target.target, &branch),
                    )
                    .map(|a| (a, f.target.target))
                }),
                None => build_a_request(
                    call,
                    Method::Ack,
                    relay.cseq,
                    &via_header(&self.transports, &call.a_target, &branch),
                )
                .map(|a| (a, call.a_target)),
            };
            if let Some((ack, target)) = ack {
                let _ = self.transports.send(&target, Bytes::from(ack.to_bytes()));
            }
        }
        let Some(p) = self.pending.get(&relay.server_key) else { return };
        let origin = p.target;
        let mut r = Response::from_request(&p.request, status, &resp.reason_lossy());
        if !resp.body().is_empty()
            && let Ok(Some(ct)) = resp.headers().content_type()
        {
            let _ = r.headers_mut().push(HeaderName::ContentType, ct.as_str());
            r.set_body(resp.body().clone());
        }
        if (200..300).contains(&status) {
            let _ = r.headers_mut().push(HeaderName::Contact, contact_header(&self.transports, &origin));
        }
        let _ = r.headers_mut().push(HeaderName::Server, super::SERVER);
        if (200..300).contains(&status) && relay.invite {
            // Our 2xx to a re-INVITE is ours to retransmit until its ACK.
            if let Some(call) = self.calls.calls.get_mut(&relay.no) {
                call.ack_wait = Some((origin, Bytes::from(r.to_bytes())));
                call.ack_interval = self.ctx.config.timers.t1;
                call.ack_deadline = Some(now + self.ctx.config.timers.t1 * 64);
                self.calls.timers.insert((now + self.ctx.config.timers.t1, relay.no, CallTimer::Retransmit200));
            }
        }
        self.send_through(&relay.server_key, r, now);
        if status >= 200 {
            self.pending.remove(&relay.server_key);
        }
    }

    /// The PBX CANCELled its INVITE (the core already answered 200/487).
    pub(super) fn handle_a_cancel(&mut self, invite_key: &TsxKey, now: Instant) {
        let Some(&no) = self.calls.a_keys.get(invite_key) else { return };
        debug!(call = no, "PBX cancelled");
        let Some(mut call) = self.remove_call(no) else { return };
        call.record.outcome = "cancelled".into();
        call.record.sip_status = Some(487);
        self.cancel_forks_in(&mut call, None, now);
        self.release_lease(&call.lease_id, call.record.portal_id.as_deref());
        self.finish_record(call.record);
    }

    /// A client transaction failed (Timer B/F, transport error).
    pub(super) fn handle_client_failure(&mut self, key: &TsxKey, status: u16, now: Instant) {
        if let Some(relay) = self.calls.relays.remove(key) {
            if let Some(call) = self.calls.calls.get_mut(&relay.no)
                && relay.offer
            {
                call.offer_pending = false;
            }
            if let Some(p) = self.pending.get(&relay.server_key) {
                let r = Response::from_request(&p.request, status, crate::sip::message::status::reason_phrase(status));
                self.respond(relay.server_key.clone(), r, now);
            }
            return;
        }
        if let Some(&(no, idx)) = self.calls.clients.get(key) {
            self.calls.clients.remove(key);
            if !key.is_invite() {
                return;
            }
            if let Some(call) = self.calls.calls.get_mut(&no)
                && let Some(f) = call.forks.get_mut(idx)
                && matches!(f.state, ForkState::Calling | ForkState::Early)
            {
                f.state = ForkState::Failed(status);
                if call.best_failure == 0 {
                    call.best_failure = status;
                }
                self.advance_or_fail(no, now);
            }
        }
        self.calls.a_byes.remove(key);
    }

    /// Builds the ACK for a non-2xx final response of a fork's INVITE
    /// (§17.1.1.3: the transaction sends it).
    pub(super) fn ack_for_failure(&self, key: &TsxKey, resp: &Response) -> Option<Outgoing> {
        let (invite, target) = self.calls.fork_invites.get(key)?;
        Some(Outgoing { target: *target, data: Bytes::from(ack_non_2xx(invite, resp)?.to_bytes()) })
    }

    /// Forgets a finished client transaction.
    pub(super) fn client_terminated(&mut self, key: &TsxKey) {
        self.calls.clients.remove(key);
        self.calls.fork_invites.remove(key);
        self.calls.a_byes.remove(key);
    }

    /// Gives a call's channel back: the node's count (single node) and the
    /// lease row (batched by `write_leases`).
    pub(super) fn release_lease(&self, lease_id: &str, portal: Option<&str>) {
        if let (Some(local), Some(portal)) = (&self.ctx.local_channels, portal)
            && let Ok(mut counts) = local.lock()
            && let Some(n) = counts.get_mut(portal)
        {
            *n = n.saturating_sub(1);
        }
        let _ = self.ctx.lease_ops.send(crate::store::LeaseOp::Release { call_id: lease_id.to_owned() });
    }

    pub(super) fn finish_record(&self, mut record: CallRecord) {
        if record.outcome != "refused" {
            crate::ops::metrics::call_ended(&record.outcome);
        }
        if record.ended_at.is_none() {
            record.ended_at = Some(super::unix_now_i64());
        }
        self.cdr.record(record);
    }
}

fn local_addr(transports: &crate::transport::Transports, target: &Target) -> String {
    transports.local_for(target.transport, target.addr).map_or_else(|| "127.0.0.1:5060".to_owned(), |a| a.to_string())
}

/// Our Contact for a leg reached over `target`.
fn contact_header(transports: &crate::transport::Transports, target: &Target) -> String {
    let t = if target.transport == Transport::Tcp { ";transport=tcp" } else { "" };
    format!("<sip:trunkgate@{}{t}>", local_addr(transports, target))
}

/// Our Via for a request sent over `target`.
fn via_header(transports: &crate::transport::Transports, target: &Target, branch: &str) -> String {
    let proto = if target.transport == Transport::Tcp { "TCP" } else { "UDP" };
    format!("SIP/2.0/{proto} {};branch={branch};rport", local_addr(transports, target))
}

/// RFC 3261 §16.7-style preference between failures: 6xx beats busy beats
/// the rest.
fn rank(status: u16) -> u16 {
    match status {
        600..=699 => 3,
        486 => 2,
        _ => 1,
    }
}

/// An in-dialog request on a fork's B dialog (ACK for its 2xx, or BYE).
fn build_in_dialog(fork: &Fork, method: Method, cseq: u32, via: &str) -> Option<Request> {
    let to = fork.to_value.clone()?;
    let target = fork.remote_target.clone().unwrap_or_else(|| fork.target.contact.clone());
    let uri = Uri::parse(&target).ok()?;
    let from = fork.invite.headers().get(&HeaderName::From)?.value_str()?.to_owned();
    let cseq = format!("{cseq} {}", method.as_str());
    let mut b = Request::builder(method, uri)
        .header(HeaderName::Via, via)
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, from)
        .header(HeaderName::To, to)
        .header(HeaderName::CallId, &fork.call_id)
        .header(HeaderName::CSeq, cseq);
    for r in &fork.routes {
        b = b.header(HeaderName::Route, r);
    }
    b.build().ok()
}

/// A request on the PBX leg's dialog, where we are the UAS: From is the
/// INVITE's To with our tag, To its From, the route set its Record-Route in
/// order, the target its Contact.
fn build_a_request(call: &Call, method: Method, cseq: u32, via: &str) -> Option<Request> {
    let h = call.a_invite.headers();
    let to = h.get(&HeaderName::To)?.value_str()?;
    let from = h.get(&HeaderName::From)?.value_str()?;
    let our_from = if to.contains(";tag=") { to.to_owned() } else { format!("{to};tag={}", call.a_tag) };
    let target_uri = h
        .contacts()
        .ok()
        .and_then(|c| match c {
            crate::sip::message::Contacts::List(l) => l.first().map(|n| n.uri().as_str().to_owned()),
            crate::sip::message::Contacts::Star => None,
        })
        .unwrap_or_else(|| format!("sip:{}", call.a_target.addr));
    let uri = Uri::parse(&target_uri).ok()?;
    let mut b = Request::builder(method.clone(), uri)
        .header(HeaderName::Via, via)
        .header(HeaderName::MaxForwards, "70")
        .header(HeaderName::From, our_from)
        .header(HeaderName::To, from)
        .header(HeaderName::CallId, &call.a_call_id)
        .header(HeaderName::CSeq, format!("{cseq} {}", method.as_str()));
    if let Ok(rr) = h.record_routes() {
        for r in rr {
            b = b.header(HeaderName::Route, r.to_string());
        }
    }
    b.build().ok()
}

/// The ACK of a non-2xx final response (§17.1.1.3).
fn ack_non_2xx(invite: &Request, resp: &Response) -> Option<Request> {
    let h = invite.headers();
    let mut b = Request::builder(Method::Ack, invite.uri().clone());
    b = b.header(HeaderName::Via, h.get(&HeaderName::Via)?.value_str()?);
    b = b.header(HeaderName::MaxForwards, "70");
    b = b.header(HeaderName::From, h.get(&HeaderName::From)?.value_str()?);
    b = b.header(HeaderName::To, resp.headers().get(&HeaderName::To)?.value_str()?);
    b = b.header(HeaderName::CallId, h.get(&HeaderName::CallId)?.value_str()?);
    b = b.header(HeaderName::CSeq, "1 ACK");
    b.build().ok()
}
