//! The driver of the calls of one SIP core: it feeds each
//! [`Call`](crate::b2bua::Call) machine what its transactions and timers
//! say, and carries out the commands it returns (responses through server
//! transactions, requests as client transactions with our Via, ACKs and 2xx
//! retransmissions to the transport, call records, channel releases).
//!
//! All call logic lives in the machine; what is here is bookkeeping: which
//! Call-ID and which transaction belong to which call, and when each call
//! wants to wake up.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::{Outgoing, Shard};
use crate::admission::Reason;
use crate::b2bua::call::{CallConfig, Ids};
use crate::b2bua::{Call, Command, InboundCall, LegId, Passthrough, Peer, ReqId};
use crate::config::{RingStrategy, Transport};
use crate::media::session::RelayMedia;
use crate::sip::dialog::Dialog;
use crate::sip::message::{HeaderName, Method, Request, Response};
use crate::sip::transaction::key::TsxMap;
use crate::sip::transaction::{Reliability, TsxKey};
use crate::store::CallRecord;
use crate::transport::Target;

/// Internal call number.
pub(crate) type CallNo = u64;

/// Where one fork rings, as admission found it.
#[derive(Debug, Clone)]
pub(crate) struct ForkTarget {
    /// Portal user.
    pub user: String,
    /// Contact URI (Request-URI of the fork's INVITE).
    pub contact: String,
    /// Where to send it.
    pub target: Target,
}

/// One trunk an outbound call may take, as admission found it.
#[derive(Debug, Clone)]
pub(crate) struct OutboundAttempt {
    pub trunk: String,
    pub uri: String,
    pub to: String,
    pub from: String,
    pub extra: Vec<(String, String)>,
    pub target: Target,
    pub credentials: Option<crate::b2bua::outbound::Credentials>,
    pub invite_timeout: Duration,
    pub answer_timeout: Duration,
}

/// What the admission task decided for an INVITE.
pub(crate) enum AdmissionResult {
    /// Refused: answer the INVITE with this.
    Refuse { key: TsxKey, reason: Reason, answer: crate::admission::Answer, record: CallRecord },
    /// Answered before admission proper (a challenge): no call record.
    Reply { key: TsxKey, response: Box<Response> },
    /// A portal user's outbound call, admitted with a lease: these trunks,
    /// in order.
    AdmitOutbound {
        key: TsxKey,
        attempts: Vec<OutboundAttempt>,
        max_duration: Duration,
        lease_id: String,
        domain: String,
        record: CallRecord,
        invite: Request,
    },
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
        /// The INVITE, handed back (no copy of the pending one needed).
        invite: Request,
    },
}

/// Tags and fork Call-IDs of this core: unique per node run (the node's
/// random prefix) and routed back to this core (the shard in the Call-ID).
pub(crate) struct ShardIds {
    ctx: Arc<super::Shared>,
    shard: usize,
}

impl Ids for ShardIds {
    fn tag(&self) -> String {
        self.ctx.new_tag()
    }

    fn call_id(&self) -> String {
        crate::sip::shard::b_leg_call_id(self.shard, &self.ctx.new_token("b", ""))
    }

    fn cnonce(&self) -> String {
        crate::credentials::hex(&self.ctx.random8())
    }
}

/// A map keyed by our own call numbers: hashed with foldhash, not the
/// standard SipHash. A number this core assigns cannot be chosen by a peer,
/// so SipHash's resistance to flooding buys nothing here, and these maps are
/// looked up a dozen times per call (each command a call emits, its timers):
/// about 6,000 instructions per call went to hashing them (callgrind).
type ByCall<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Every call of one core, with its indexes.
#[derive(Default)]
pub(crate) struct Calls {
    calls: ByCall<CallNo, Call<TsxKey>>,
    /// Each leg's Call-ID (the PBX's, and ours for the forks).
    by_call_id: HashMap<String, CallNo>,
    /// The PBX's INVITE server transaction, for its CANCEL.
    by_invite: TsxMap<CallNo>,
    /// Client transactions of the calls' requests.
    clients: TsxMap<(CallNo, ReqId)>,
    /// Each fork INVITE we sent (with its Via), by its client transaction,
    /// until that transaction ends: the ACK of a non-2xx final response is
    /// built from it, and a 2xx arriving after its call is gone is ACKed
    /// and hung up from it. Boxed: held 32 s after each answer, inline they
    /// made the table's slots some 250 bytes, and its growth (every slot
    /// moved into fresh pages) held the SIP core for several milliseconds.
    fork_invites: TsxMap<Box<(Request, Target)>>,
    /// The Via of each fork's INVITE: its CANCEL repeats it (§9.1).
    invite_vias: ByCall<(CallNo, LegId), String>,
    /// Anchored calls' media figures, their lease (live figures go there),
    /// and whether the call is outbound (its first leg is then the user's).
    media: ByCall<CallNo, (Arc<crate::media::engine::Figures>, String, bool)>,
    /// Each call's next wake-up.
    timers: BTreeSet<(Instant, CallNo)>,
    deadlines: ByCall<CallNo, Instant>,
    next: CallNo,
    ids: Option<Arc<ShardIds>>,
    config: Option<CallConfig>,
}

impl Calls {
    /// The earliest call timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }
}

fn reliability(target: &Target) -> Reliability {
    if target.transport == Transport::Udp { Reliability::Unreliable } else { Reliability::Reliable }
}

impl Shard {
    fn call_ids(&mut self) -> Arc<ShardIds> {
        self.calls.ids.get_or_insert_with(|| Arc::new(ShardIds { ctx: self.ctx.clone(), shard: self.shard })).clone()
    }

    /// The calls' settings, made once per shard.
    fn call_config(&mut self) -> CallConfig {
        let ctx = &self.ctx;
        self.calls
            .config
            .get_or_insert_with(|| CallConfig {
                warning_host: Arc::from(ctx.config.warning_host.as_str()),
                t1: ctx.config.timers.t1,
                t2: ctx.config.timers.t2,
                session_expires: ctx.config.session_expires,
                min_se: ctx.config.min_se,
            })
            .clone()
    }

    fn peer(&self, target: Target) -> Peer {
        let local = self
            .transports
            .local_for(target.transport, target.addr)
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5060)));
        Peer { target, local }
    }

    /// A refusal's answer to `request`: its status, Warning and, where the
    /// reason says so, Retry-After (the current overload's for
    /// `overloaded`, else 5 s).
    pub(super) fn refusal_response(
        &self,
        request: &crate::sip::message::Request,
        answer: &crate::admission::Answer,
        reason: crate::admission::Reason,
        now: Instant,
    ) -> Response {
        let status = answer.status;
        let mut resp = Response::from_request(request, status, crate::sip::message::status::reason_phrase(status));
        let _ = resp.headers_mut().push(HeaderName::Warning, self.ctx.warning(&answer.warning));
        if answer.retry_after {
            let secs = match reason {
                crate::admission::Reason::Overloaded => self.overload.retry_after_s(now),
                _ => 5,
            };
            let _ = resp.headers_mut().push(HeaderName::RetryAfter, secs.to_string());
        }
        resp
    }

    /// The admission task's verdict arrives.
    pub(super) fn handle_admission(&mut self, result: AdmissionResult, now: Instant) {
        match result {
            AdmissionResult::Reply { key, response } => self.respond(key, *response, now),
            AdmissionResult::AdmitOutbound { key, attempts, max_duration, lease_id, domain, record, invite } => {
                self.start_outbound(key, attempts, max_duration, lease_id, domain, record, invite, now);
            }
            AdmissionResult::Refuse { key, reason, answer, record } => {
                crate::ops::metrics::call_refused(reason.as_str());
                self.finish_record(record);
                let Some(p) = self.pending.get(&key) else { return };
                let resp = self.refusal_response(&p.request, &answer, reason, now);
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
                record,
                invite,
            } => {
                let Some((peer, record)) = self.admitted_peer(&key, &lease_id, record) else { return };
                let groups: Vec<Vec<crate::b2bua::ForkTarget>> = groups
                    .into_iter()
                    .map(|g| {
                        g.into_iter()
                            .map(|f| crate::b2bua::ForkTarget {
                                user: f.user,
                                contact: f.contact,
                                peer: self.peer(f.target),
                            })
                            .collect()
                    })
                    .collect();
                let config = self.call_config();
                let a_call_id = invite.headers().call_id().unwrap_or("").to_owned();
                self.calls.next += 1;
                let no = self.calls.next;
                let browsers = groups.iter().flatten().any(|t| t.peer.target.transport.is_websocket());
                let media = self.media_session(no, &lease_id, browsers, false);
                let call = Call::inbound(
                    now,
                    config,
                    self.call_ids(),
                    media,
                    InboundCall {
                        invite,
                        tsx: key.clone(),
                        peer,
                        groups,
                        strategy,
                        ring_timeout,
                        max_duration,
                        lease_id,
                        domain,
                        record,
                    },
                );
                self.add_call(no, call, a_call_id, key, now);
            }
        }
    }

    /// The media session of call `no`: the relay when media is anchored
    /// (`browsers`: a leg may be a browser), else SDP passes unchanged.
    fn media_session(
        &mut self,
        no: CallNo,
        lease_id: &str,
        browsers: bool,
        outbound: bool,
    ) -> Box<dyn crate::b2bua::MediaSession> {
        match &self.ctx.config.media {
            Some(engine) => {
                let replies = self.replies.clone();
                let events: crate::media::engine::EventSink = Box::new(move |ev| match ev {
                    crate::media::engine::MediaEvent::Timeout => {
                        // The relay thread must not block: a full queue
                        // retries at the next check.
                        let _ = replies.try_send(super::ShardMsg::MediaTimeout(no));
                    }
                    crate::media::engine::MediaEvent::BrowserGone { slot } => {
                        let _ = replies.try_send(super::ShardMsg::LegGone(no, LegId(slot)));
                    }
                    crate::media::engine::MediaEvent::Dtmf { slot, digit, duration_ms } => {
                        let _ = replies.try_send(super::ShardMsg::MediaDtmf(no, LegId(slot), digit, duration_ms));
                    }
                });
                let relay = RelayMedia::new(engine, events, browsers);
                self.calls.media.insert(no, (relay.figures_handle(), lease_id.to_owned(), outbound));
                Box::new(relay)
            }
            None => Box::new(Passthrough),
        }
    }

    /// An admitted outbound call starts.
    #[allow(clippy::too_many_arguments)]
    fn start_outbound(
        &mut self,
        key: TsxKey,
        attempts: Vec<OutboundAttempt>,
        max_duration: Duration,
        lease_id: String,
        domain: String,
        record: CallRecord,
        invite: Request,
        now: Instant,
    ) {
        let Some((peer, record)) = self.admitted_peer(&key, &lease_id, record) else { return };
        let attempts: Vec<crate::b2bua::TrunkAttempt> = attempts
            .into_iter()
            .map(|a| crate::b2bua::TrunkAttempt {
                trunk: a.trunk,
                uri: a.uri,
                to: a.to,
                from: a.from,
                extra: a.extra,
                peer: self.peer(a.target),
                credentials: a.credentials,
                invite_timeout: a.invite_timeout,
                answer_timeout: a.answer_timeout,
            })
            .collect();
        let config = self.call_config();
        let a_call_id = invite.headers().call_id().unwrap_or("").to_owned();
        self.calls.next += 1;
        let no = self.calls.next;
        let media = self.media_session(no, &lease_id, peer.target.transport.is_websocket(), true);
        let call = Call::outbound(
            now,
            config,
            self.call_ids(),
            media,
            crate::b2bua::OutboundCall {
                invite,
                tsx: key.clone(),
                peer,
                attempts,
                max_duration,
                lease_id,
                domain,
                record,
            },
        );
        self.add_call(no, call, a_call_id, key, now);
    }

    /// An admitted call's INVITE still waiting: the caller's peer. If it
    /// was CANCELled (or timed out) while admission ran, the channel goes
    /// back and the record says so: `None`.
    fn admitted_peer(&mut self, key: &TsxKey, lease_id: &str, mut record: CallRecord) -> Option<(Peer, CallRecord)> {
        crate::ops::metrics::call_admitted(record.trunk.as_deref().unwrap_or(""));
        if let Some(p) = self.pending.get(key) {
            return Some((self.peer(p.target), record));
        }
        self.release_lease(lease_id, record.portal_id.as_deref());
        record.outcome = crate::cdr::Outcome::Cancelled.as_str().into();
        record.sip_status = Some(487);
        self.finish_record(record);
        None
    }

    /// A new call machine joins the core's calls and runs.
    fn add_call(&mut self, no: CallNo, call: Call<TsxKey>, a_call_id: String, key: TsxKey, now: Instant) {
        self.ctx.active_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.calls.calls.insert(no, call);
        self.calls.by_call_id.insert(a_call_id, no);
        self.calls.by_invite.insert(key, no);
        self.run_call(no, now);
    }

    /// Carries out what call `no` asks, then drops it if it is finished or
    /// re-arms its timer.
    fn run_call(&mut self, no: CallNo, now: Instant) {
        loop {
            let Some(cmd) = self.calls.calls.get_mut(&no).and_then(Call::poll_command) else { break };
            match cmd {
                Command::Respond { tsx, response } => {
                    // Once the PBX's INVITE has its final answer no CANCEL
                    // can reach the call.
                    if response.status() >= 200 && tsx.is_invite() {
                        self.calls.by_invite.remove(&tsx);
                    }
                    self.respond(tsx, response, now);
                }
                Command::Request { id, leg, peer, request } => self.start_request(no, id, leg, peer, request, now),
                Command::Ack { peer, request } => self.send_ack(&peer, request, now),
                Command::Retransmit { peer, response } => {
                    self.send(&peer.target, Bytes::from(response.to_bytes()), None, now);
                }
                Command::Route { call_id } => {
                    self.calls.by_call_id.insert(call_id, no);
                }
                Command::ReleaseChannel { lease_id, portal } => {
                    self.ctx.active_calls.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    self.release_lease(&lease_id, portal.as_deref());
                }
                Command::Record(mut record) => {
                    if let Some((figures, _, outbound)) = self.calls.media.get(&no) {
                        record.media = serde_json::to_string(&RelayMedia::figures(figures, *outbound)).ok();
                    }
                    self.finish_record(*record);
                }
            }
        }
        let Some(call) = self.calls.calls.get(&no) else { return };
        if let Some(old) = self.calls.deadlines.remove(&no) {
            self.calls.timers.remove(&(old, no));
        }
        if call.is_finished() {
            let Some(call) = self.calls.calls.remove(&no) else { return };
            for id in call.call_ids() {
                if self.calls.by_call_id.get(id) == Some(&no) {
                    self.calls.by_call_id.remove(id);
                }
            }
            for leg in call.legs() {
                self.calls.invite_vias.remove(&(no, leg.id()));
            }
            self.calls.media.remove(&no);
            debug!(call = no, "call dropped");
        } else if let Some(at) = call.poll_timeout() {
            self.calls.deadlines.insert(no, at);
            self.calls.timers.insert((at, no));
        }
    }

    /// A request of a call leaves as a client transaction with our Via
    /// (a CANCEL with its INVITE's).
    fn start_request(&mut self, no: CallNo, id: ReqId, leg: LegId, peer: Peer, mut request: Request, now: Instant) {
        let method = request.method().clone();
        let (via, branch) = if method == Method::Cancel {
            let Some(via) = self.calls.invite_vias.get(&(no, leg)).cloned() else {
                debug!(call = no, "CANCEL for a fork never sent");
                return;
            };
            let branch = via.split(";branch=").nth(1).and_then(|b| b.split(';').next()).unwrap_or("").to_owned();
            (via, branch)
        } else {
            let branch = new_branch(&self.ctx);
            (via_header(&peer, &branch), branch)
        };
        let _ = request.headers_mut().push_front(HeaderName::Via, &via);
        if method == Method::Invite && request.headers().to_tag().ok().flatten().is_none() {
            self.calls.invite_vias.insert((no, leg), via);
        }
        let out = Outgoing { target: peer.target, data: Bytes::from(request.to_bytes()) };
        let tsx_method = crate::sip::transaction::Method::new(method.as_str());
        match self.layer.start_client(now, tsx_method, &branch, reliability(&peer.target), out) {
            Ok(k) => {
                if method == Method::Invite {
                    // Held while the transaction lives (32 s after its
                    // answer): only what the ACKs and BYE are built from.
                    request.keep_only(&[
                        HeaderName::Via,
                        HeaderName::From,
                        HeaderName::To,
                        HeaderName::CallId,
                        HeaderName::CSeq,
                        HeaderName::Route,
                    ]);
                    self.calls.fork_invites.insert(k.clone(), Box::new((request, peer.target)));
                }
                self.calls.clients.insert(k, (no, id));
            }
            Err(e) => {
                warn!(call = no, error = %e, "request not sent");
                if let Some(call) = self.calls.calls.get_mut(&no) {
                    call.handle_request_failed(now, id, 503);
                }
            }
        }
    }

    /// An ACK of a 2xx: no transaction; a Via of its own.
    fn send_ack(&mut self, peer: &Peer, mut ack: Request, now: Instant) {
        let _ = ack.headers_mut().push_front(HeaderName::Via, via_header(peer, &new_branch(&self.ctx)));
        self.send(&peer.target, Bytes::from(ack.to_bytes()), None, now);
    }

    /// A response on a client transaction of ours.
    pub(super) fn handle_client_response(&mut self, key: &TsxKey, resp: &Response, now: Instant) {
        if resp.status() >= 200
            && let Some(reply) = self.own.remove(key)
        {
            let _ = reply.send(Ok(resp.clone()));
            return;
        }
        let Some(&(no, id)) = self.calls.clients.get(key) else { return };
        match self.calls.calls.get_mut(&no) {
            Some(call) => {
                call.handle_response(now, id, resp);
                self.run_call(no, now);
            }
            None if key.is_invite() && (200..300).contains(&resp.status()) => self.hang_up_orphan(key, resp, now),
            None => {}
        }
    }

    /// A fork answered after its call was dropped: ACK that 2xx and end
    /// its dialog with a BYE, so the phone does not ring into nothing.
    fn hang_up_orphan(&mut self, key: &TsxKey, resp: &Response, now: Instant) {
        let Some((invite, target)) = self.calls.fork_invites.get(key).map(|f| (**f).clone()) else { return };
        let Ok(mut dialog) = Dialog::uac(&invite, resp) else { return };
        let peer = self.peer(target);
        let seq = invite.headers().cseq().map(|c| c.seq).unwrap_or(1);
        if let Ok(ack) = dialog.ack(seq).build() {
            self.send_ack(&peer, ack, now);
        }
        debug!("answer for a finished call: ACK and BYE");
        if let Ok(mut bye) = dialog.request(Method::Bye).build() {
            // Fire and forget: a lost BYE leaves the phone to time out.
            let _ = bye.headers_mut().push_front(HeaderName::Via, via_header(&peer, &new_branch(&self.ctx)));
            self.send(&target, Bytes::from(bye.to_bytes()), None, now);
        }
    }

    /// The PBX CANCELled its INVITE (the core already answered the CANCEL).
    pub(super) fn handle_a_cancel(&mut self, invite_key: &TsxKey, now: Instant) -> bool {
        let Some(&no) = self.calls.by_invite.get(invite_key) else { return false };
        if let Some(call) = self.calls.calls.get_mut(&no) {
            call.handle_cancel(now);
        }
        self.run_call(no, now);
        true
    }

    /// A client transaction failed (Timer B/F, transport error).
    pub(super) fn handle_client_failure(&mut self, key: &TsxKey, status: u16, now: Instant) {
        if let Some(reply) = self.own.remove(key) {
            let _ = reply.send(Err(status));
            return;
        }
        let Some(&(no, id)) = self.calls.clients.get(key) else { return };
        if let Some(call) = self.calls.calls.get_mut(&no) {
            call.handle_request_failed(now, id, status);
            self.run_call(no, now);
        }
    }

    /// Builds the ACK for a non-2xx final response of a fork's INVITE
    /// (§17.1.1.3: the transaction sends it).
    pub(super) fn ack_for_failure(&self, key: &TsxKey, resp: &Response) -> Option<Outgoing> {
        let (invite, target) = &**self.calls.fork_invites.get(key)?;
        Some(Outgoing { target: *target, data: Bytes::from(ack_non_2xx(invite, resp)?.to_bytes()) })
    }

    /// Sends a request of the node's own (no Via yet) as a client
    /// transaction; its final answer goes back on `reply`.
    pub(super) fn send_own(
        &mut self,
        mut request: Request,
        target: Target,
        reply: tokio::sync::oneshot::Sender<Result<Response, u16>>,
        now: Instant,
    ) {
        let peer = self.peer(target);
        let branch = new_branch(&self.ctx);
        let _ = request.headers_mut().push_front(HeaderName::Via, via_header(&peer, &branch));
        let method = crate::sip::transaction::Method::new(request.method().as_str());
        let out = Outgoing { target, data: Bytes::from(request.to_bytes()) };
        match self.layer.start_client(now, method, &branch, reliability(&target), out) {
            Ok(key) => {
                self.own.insert(key, reply);
            }
            Err(e) => {
                debug!(error = %e, "own request not sent");
                let _ = reply.send(Err(503));
            }
        }
    }

    /// Forgets a finished client transaction.
    pub(super) fn client_terminated(&mut self, key: &TsxKey, now: Instant) {
        if let Some(reply) = self.own.remove(key) {
            let _ = reply.send(Err(408));
        }
        self.calls.fork_invites.remove(key);
        let Some((no, id)) = self.calls.clients.remove(key) else { return };
        if let Some(call) = self.calls.calls.get_mut(&no) {
            call.handle_request_done(id);
            self.run_call(no, now);
        }
    }

    /// An ACK for one of our 2xx.
    pub(super) fn handle_ack(&mut self, req: &Request, now: Instant) {
        let Some(&no) = req.headers().call_id().ok().and_then(|c| self.calls.by_call_id.get(c)) else { return };
        if let Some(call) = self.calls.calls.get_mut(&no) {
            call.handle_ack(now, req);
            self.run_call(no, now);
        }
    }

    /// An in-dialog request (To tag present) that is not an ACK. Returns
    /// false when no call knows the Call-ID (the caller answers 481).
    pub(super) fn handle_in_dialog(&mut self, key: &TsxKey, req: &Request, now: Instant) -> bool {
        let Some(&no) = req.headers().call_id().ok().and_then(|c| self.calls.by_call_id.get(c)) else { return false };
        let Some(call) = self.calls.calls.get_mut(&no) else { return false };
        call.handle_request(now, key.clone(), req);
        self.run_call(no, now);
        true
    }

    /// The node stops: every call ends now (BYE, CANCEL or 503 sent once,
    /// without waiting for answers), with its record and its channel.
    pub(super) fn end_all_calls(&mut self, now: Instant) {
        let calls: Vec<CallNo> = self.calls.calls.keys().copied().collect();
        for no in calls {
            if let Some(call) = self.calls.calls.get_mut(&no) {
                call.handle_shutdown(now);
            }
            self.run_call(no, now);
        }
        self.drain(now);
    }

    /// A connection closed (a browser's WebSocket): the bindings made over
    /// it go (shard 0: the location table is shared), and every leg of this
    /// shard's calls that lived on it is gone.
    pub(super) fn handle_connection_closed(&mut self, closed: crate::transport::Closed, now: Instant) {
        if !closed.transport.is_websocket() {
            return;
        }
        if self.shard == 0 {
            let source = crate::registrar::Source { transport: closed.transport, addr: closed.remote };
            let gone = self.ctx.location.lock().map(|mut l| l.remove_source(source)).unwrap_or(0);
            if gone > 0 {
                info!(remote = %closed.remote, bindings = gone, "websocket closed: its registrations removed");
            }
        }
        self.legs_gone(now, |t| t.transport == closed.transport && t.addr == closed.remote);
    }

    /// Some closings were missed (the notice queue overflowed): whatever
    /// lives on a WebSocket that is no longer open is gone.
    pub(super) fn sweep_closed_connections(&mut self, now: Instant) {
        let transports = self.transports.clone();
        let open = |t: &Target| !t.transport.is_websocket() || transports.is_open(t.transport, t.addr);
        if self.shard == 0 {
            let gone = self
                .ctx
                .location
                .lock()
                .map(|mut l| l.retain_sources(|s| open(&Target { transport: s.transport, addr: s.addr, conn: None })))
                .unwrap_or(0);
            if gone > 0 {
                info!(bindings = gone, "registrations of closed websockets removed");
            }
        }
        self.legs_gone(now, |t| !open(t));
    }

    /// Tells each call which of its legs can no longer be reached.
    fn legs_gone(&mut self, now: Instant, gone: impl Fn(&Target) -> bool) {
        let hits: Vec<(CallNo, LegId)> = self
            .calls
            .calls
            .iter()
            .flat_map(|(no, call)| call.legs().iter().filter(|l| gone(&l.peer().target)).map(move |l| (*no, l.id())))
            .collect();
        for (no, leg) in hits {
            if let Some(call) = self.calls.calls.get_mut(&no) {
                call.handle_leg_gone(now, leg);
            }
            self.run_call(no, now);
        }
    }

    /// A call's media stopped.
    pub(super) fn handle_media_timeout(&mut self, no: CallNo, now: Instant) {
        if let Some(call) = self.calls.calls.get_mut(&no) {
            call.handle_media_timeout(now);
            self.run_call(no, now);
        }
    }

    /// A browser leg's media is gone (ICE, DTLS): as if its WebSocket closed.
    pub(super) fn handle_leg_gone(&mut self, no: CallNo, leg: LegId, now: Instant) {
        if let Some(call) = self.calls.calls.get_mut(&no) {
            call.handle_leg_gone(now, leg);
            self.run_call(no, now);
        }
    }

    /// A leg's RFC 4733 digit for a leg that takes none.
    pub(super) fn handle_media_dtmf(&mut self, no: CallNo, from: LegId, digit: char, duration_ms: u32, now: Instant) {
        if let Some(call) = self.calls.calls.get_mut(&no) {
            call.handle_dtmf(now, from, digit, duration_ms);
            self.run_call(no, now);
        }
    }

    /// Writes the live media figures of answered calls to their leases.
    pub(super) fn publish_media_figures(&self) {
        for (no, (figures, lease, outbound)) in &self.calls.media {
            let answered = self.calls.calls.get(no).is_some_and(|c| c.phase() == crate::b2bua::call::Phase::Answered);
            if !answered {
                continue;
            }
            if let Ok(media) = serde_json::to_string(&RelayMedia::figures(figures, *outbound)) {
                let _ = self.ctx.lease_ops.send(crate::store::LeaseOp::Media { call_id: lease.clone(), media });
            }
        }
    }

    /// Call timers that are due.
    pub(super) fn handle_call_timers(&mut self, now: Instant) {
        while let Some(&(at, no)) = self.calls.timers.first() {
            if at > now {
                break;
            }
            self.calls.timers.pop_first();
            self.calls.deadlines.remove(&no);
            if let Some(call) = self.calls.calls.get_mut(&no) {
                call.handle_timeout(now);
                self.run_call(no, now);
            }
        }
    }

    /// Gives a call's channel back: the node's count and the lease row
    /// (batched by `write_leases`).
    pub(super) fn release_lease(&self, lease_id: &str, portal: Option<&str>) {
        if let Some(portal) = portal {
            self.ctx.channels.release(portal);
        }
        let _ = self.ctx.lease_ops.send(crate::store::LeaseOp::Release { call_id: lease_id.to_owned() });
    }

    pub(super) fn finish_record(&self, mut record: CallRecord) {
        if record.outcome != crate::cdr::Outcome::Refused.as_str() {
            crate::ops::metrics::call_ended(&record.outcome);
        }
        if record.ended_at.is_none() {
            record.ended_at = Some(super::unix_now_i64());
        }
        self.cdr.record(record);
    }
}

/// A fresh RFC 3261 branch (magic cookie + a unique token).
fn new_branch(ctx: &super::Shared) -> String {
    ctx.new_token("z9hG4bK", "")
}

/// Our Via for a request sent to `peer`.
fn via_header(peer: &Peer, branch: &str) -> String {
    let mut v = String::with_capacity(64 + branch.len());
    v.push_str("SIP/2.0/");
    v.push_str(peer.target.transport.via_token());
    v.push(' ');
    crate::sip::text::push_socket_addr(&mut v, peer.local);
    v.push_str(";branch=");
    v.push_str(branch);
    v.push_str(";rport");
    v
}

/// The ACK of a non-2xx final response (§17.1.1.3).
fn ack_non_2xx(invite: &Request, resp: &Response) -> Option<Request> {
    let h = invite.headers();
    let seq = h.cseq().ok()?.seq;
    let mut b = Request::builder(Method::Ack, invite.uri().clone());
    b = b.header(HeaderName::Via, h.get(&HeaderName::Via)?.value_str()?);
    b = b.header(HeaderName::MaxForwards, "70");
    b = b.header(HeaderName::From, h.get(&HeaderName::From)?.value_str()?);
    b = b.header(HeaderName::To, resp.headers().get(&HeaderName::To)?.value_str()?);
    b = b.header(HeaderName::CallId, h.get(&HeaderName::CallId)?.value_str()?);
    b = b.header(HeaderName::CSeq, crate::sip::text::cseq(seq, "ACK"));
    b.build().ok()
}
