//! The node: the tokio driver around the sans-IO pieces.
//!
//! [`Node::start`] runs one `Shard` task per CPU. Each owns the Call-IDs
//! that hash to it (`sip::shard`), a [`TransactionLayer`] (and so every RFC
//! 3261 timer) and the [`Call`](crate::b2bua::Call) machines of those
//! Call-IDs: it takes parsed messages from the transports, matches them to
//! transactions, answers what it can at once (OPTIONS, protocol errors),
//! feeds the calls (`calls.rs`) and hands the rest to handler tasks
//! (REGISTER and admission need the database), whose answers come back over
//! a channel and leave through the transaction so retransmissions are
//! absorbed and answered the same way. `Shared` is what the shards and the
//! handler tasks share: config, store, licence cache, location, lockouts,
//! channel counts.

mod admit;
mod calls;
pub mod channels;
mod lockout;
mod offload;
mod outbound;
mod overload;
mod register;
mod trunk_tasks;
mod via;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use admit::LEASE_TTL;
pub use lockout::{Lockout, LockoutConfig};

use crate::config::Transport;
use crate::licences::LicenceCache;
use crate::registrar::{Location, RegistrarConfig};
use crate::sip::digest::{Authenticator, DigestConfig};
use crate::sip::message::{
    CheckConfig, HeaderName, Message, Method, ParseError, Request, Response, check_request, check_response,
};
use crate::sip::transaction::key::TsxMap;
use crate::sip::transaction::{
    Event, Reliability, RequestInfo, RequestMatch, ResponseInfo, Role, StatusCode, TimerConfig, TransactionLayer,
    TsxKey,
};
use crate::store::Store;
use crate::transport::{Inbound, Target, Transports};

/// Product token for `Server` and `User-Agent`.
pub const SERVER: &str = crate::sip::PRODUCT;

/// Settings of the node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
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
    /// Calls in progress on this node above which new calls are shed
    /// (`503 overloaded` with Retry-After, so the PBX fails over).
    pub max_calls: usize,
    /// The target wait in a core's queue: past it for `overload::INTERVAL`,
    /// new INVITEs are shed (`overload.rs`); zero never sheds.
    pub overload_queue: std::time::Duration,
    /// Busy share (percent of a core's thread) above which a core hands
    /// its UDP sends to a thread of its own (`offload.rs`); 100 never.
    pub send_thread_busy_pct: u32,
    /// Give no answer to INVITEs from addresses that are no trunk.
    pub ignore_unknown_trunks: bool,
    /// The SIP answer to each refusal reason (`[admission.answers]`).
    pub answers: crate::admission::RefusalAnswers,
    /// RFC 4028 session interval asked of each leg.
    pub session_expires: std::time::Duration,
    /// Shortest session interval accepted.
    pub min_se: std::time::Duration,
    /// The RTP relay (`None`: `[media] anchor = false`, SDP passes
    /// unchanged).
    pub media: Option<Arc<crate::media::engine::MediaEngine>>,
}

/// What the shards and the handler tasks share.
pub(crate) struct Shared {
    pub config: NodeConfig,
    pub store: Store,
    pub cache: LicenceCache,
    pub location: Mutex<Location>,
    pub auth: Mutex<Authenticator>,
    /// Failures per (source, user): locks one user out from one address.
    pub lockout: Mutex<Lockout<(std::net::IpAddr, String)>>,
    /// Failures per source, whatever the user, at ten times the threshold:
    /// stops a password spray over many usernames.
    pub lockout_source: Mutex<Lockout<std::net::IpAddr>>,
    pub trunks: crate::b2bua::TrunkTable,
    /// Admission attempts per portal in the current second, all shards.
    rates: Mutex<HashMap<crate::admission::PortalId, (u64, u32)>>,
    /// Calls in progress on this node, all shards.
    active_calls: std::sync::atomic::AtomicUsize,
    /// Each portal's calls in progress on this node, counted here (against
    /// the channels on a single node, against the node's allowance on a
    /// fleet) and recorded as leases behind (in order, batched).
    pub channels: Arc<channels::Channels>,
    /// Lease changes for the batching writer.
    pub lease_ops: mpsc::UnboundedSender<crate::store::LeaseOp>,
    /// Outbound trunks the OPTIONS pings found down (outbound calls skip
    /// them while another is up).
    pub trunks_down: Mutex<std::collections::HashSet<String>>,
    check: CheckConfig,
    tag_prefix: u64,
    tag_seq: AtomicU64,
}

impl Shared {
    /// A fresh To tag: unique per node run (random prefix) and per response.
    pub fn new_tag(&self) -> String {
        self.new_token("", ".")
    }

    /// `lead`, then this run's random prefix, `sep` and a sequence number
    /// (hex): a fresh token for tags, branches and Call-IDs, built in one
    /// allocation (one per call leg, transaction and dialog adds up).
    pub fn new_token(&self, lead: &str, sep: &str) -> String {
        let mut s = String::with_capacity(lead.len() + sep.len() + 32);
        s.push_str(lead);
        crate::sip::text::push_hex(&mut s, self.tag_prefix);
        s.push_str(sep);
        crate::sip::text::push_hex(&mut s, self.tag_seq.fetch_add(1, Ordering::Relaxed));
        s
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

/// What handler tasks send back to the core.
pub(crate) enum ShardMsg {
    /// An answer to send through its server transaction.
    Reply { key: TsxKey, response: Response },
    /// The admission of an INVITE.
    Admission(Box<calls::AdmissionResult>),
    /// A call's media stopped (from its relay thread).
    MediaTimeout(calls::CallNo),
    /// A browser leg's media is gone (ICE or DTLS, from its relay thread).
    LegGone(calls::CallNo, crate::b2bua::LegId),
    /// A leg's RFC 4733 digit, to go as SIP INFO (from its relay thread).
    MediaDtmf(calls::CallNo, crate::b2bua::LegId, char, u32),
    /// A request of the node's own (OPTIONS ping, REGISTER to a cloud
    /// PBX), without Via: sent as a client transaction; its final
    /// response (or 408/503) goes back on `reply`.
    Send { request: Request, target: Target, reply: tokio::sync::oneshot::Sender<Result<Response, u16>> },
    /// A connection closed (TCP, TLS, WebSocket).
    Closed(crate::transport::Closed),
    /// Connection-closed notices were lost (the broadcast overflowed).
    ClosedLagged(u64),
    /// Datagrams the send thread could not send (their transactions hear
    /// of it).
    SendFailed(Vec<(Option<TsxKey>, crate::transport::SendError)>),
}

/// Seconds between the live media figures written to each call's lease.
const MEDIA_FIGURES_EVERY: u64 = 5;

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

/// Handle to the running node.
#[derive(Clone)]
pub struct Node {
    ctx: Arc<Shared>,
    /// The core tasks: each ends its calls when the node stops.
    cores: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Node {
    /// Starts the core task. `inbound` is the transports' output.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: NodeConfig,
        store: Store,
        channels: Arc<channels::Channels>,
        cache: LicenceCache,
        trunks: crate::b2bua::TrunkTable,
        cdr: crate::cdr::CdrWriter,
        transports: Transports,
        inbound: Vec<mpsc::Receiver<Inbound>>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let auth = Authenticator::with_random_secret(config.digest.clone()).map_err(std::io::Error::other)?;
        let mut prefix = [0u8; 8];
        getrandom::fill(&mut prefix).map_err(std::io::Error::other)?;
        // `timer`: calls run RFC 4028 session timers, so a PBX may require them.
        let check = CheckConfig {
            warn_agent: Some(config.warning_host.clone()),
            supported: vec!["timer".to_owned()],
            ..CheckConfig::default()
        };
        let (lease_tx, lease_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_leases(store.clone(), lease_rx));
        let ctx = Arc::new(Shared {
            location: Mutex::new(Location::new(config.registrar.clone())),
            lockout: Mutex::new(Lockout::new(config.lockout)),
            lockout_source: Mutex::new(Lockout::new(LockoutConfig {
                max_failures: config.lockout.max_failures.saturating_mul(10),
                ..config.lockout
            })),
            auth: Mutex::new(auth),
            trunks,
            rates: Mutex::new(HashMap::new()),
            active_calls: std::sync::atomic::AtomicUsize::new(0),
            channels,
            lease_ops: lease_tx,
            trunks_down: Mutex::new(std::collections::HashSet::new()),
            config,
            store,
            cache,
            check,
            tag_prefix: u64::from_le_bytes(prefix),
            tag_seq: AtomicU64::new(1),
        });
        // One core per queue: each owns the transactions and calls of the
        // Call-IDs that hash to it, so the shards share nothing per call.
        // The cores stop after the trunk tasks: a registration's Expires: 0
        // goes through core 0 as a transaction before the calls are ended.
        let core_stop = CancellationToken::new();
        let mut cores = Vec::with_capacity(inbound.len());
        let mut shard0 = None;
        for (shard, inbound) in inbound.into_iter().enumerate() {
            let (reply_tx, reply_rx) = mpsc::channel(4096);
            if shard == 0 {
                shard0 = Some(reply_tx.clone());
            }
            let mut core = Shard {
                ctx: ctx.clone(),
                shard,
                layer: TransactionLayer::new(ctx.config.timers),
                pending: TsxMap::default(),
                transports: transports.clone(),
                replies: reply_tx,
                calls: calls::Calls::default(),
                cdr: cdr.clone(),
                responses: TsxMap::default(),
                own: TsxMap::default(),
                overload: overload::Overload::new(ctx.config.overload_queue),
                outbox: crate::transport::Outbox::default(),
                sender: None,
                offload: offload::Switch::new(ctx.config.send_thread_busy_pct),
                dropped_sends: 0,
                dropped_warned: None,
            };
            if ctx.config.send_thread_busy_pct < 100 {
                let failures = core.replies.clone();
                // A failure report that finds the queue full is lost, as
                // the datagram would be on the wire: the transaction
                // retransmits or times out.
                let report = move |failed| {
                    let _ = failures.try_send(ShardMsg::SendFailed(failed));
                };
                core.sender = Some(transports.send_thread(format!("tg-send-{shard}"), report)?);
            }
            // Connection-closed notices reach the core as messages: a
            // broadcast receiver polled in its loop would join and leave the
            // broadcast's waiter list (a lock each way) on every wake-up.
            let mut closed = transports.closed();
            let (notices, stop) = (core.replies.clone(), core_stop.clone());
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        c = closed.recv() => match c {
                            Ok(c) => ShardMsg::Closed(c),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => ShardMsg::ClosedLagged(missed),
                            // The transports outlive the cores: not reached.
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                    };
                    if notices.send(msg).await.is_err() {
                        return;
                    }
                }
            });
            cores.push(tokio::spawn(core.run(inbound, reply_rx, core_stop.clone())));
        }
        // Pings and registrations go through core 0 (their Call-IDs say so).
        let trunk_tasks = match shard0 {
            Some(tx) => trunk_tasks::spawn(&ctx, tx, &transports, &shutdown),
            None => Vec::new(),
        };
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Bounded: a registrar that never answers holds the stop 3 s.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
                for t in trunk_tasks {
                    let _ = t.await;
                }
            })
            .await;
            core_stop.cancel();
        });
        Ok(Self { ctx, cores: Arc::new(Mutex::new(cores)) })
    }

    /// Waits until every core has ended its calls after the stop (their
    /// BYEs sent, their records handed to the writer).
    pub async fn stopped(&self) {
        let cores = self.cores.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
        for core in cores {
            let _ = core.await;
        }
    }

    /// Live registrations on this node.
    pub fn registrations(&self) -> usize {
        self.ctx.location.lock().map(|l| l.len()).unwrap_or(0)
    }
}

/// One SIP core: its Call-IDs' transactions and calls.
struct Shard {
    ctx: Arc<Shared>,
    layer: TransactionLayer<Outgoing>,
    pending: TsxMap<Pending>,
    transports: Transports,
    replies: mpsc::Sender<ShardMsg>,
    calls: calls::Calls,
    cdr: crate::cdr::CdrWriter,
    /// The response being handled, for its transaction's events (taken
    /// out once they are drained).
    responses: TsxMap<Response>,
    /// This core's index (B-leg Call-IDs carry it, see `crate::sip::shard`).
    shard: usize,
    /// The node's own requests (pings, registrations) awaiting their answer.
    own: TsxMap<tokio::sync::oneshot::Sender<Result<Response, u16>>>,
    /// Sheds new INVITEs that queued too long.
    overload: overload::Overload,
    /// This turn's UDP datagrams, sent together when the turn ends
    /// ([`Shard::flush`]); a transaction's carry its key for its error.
    outbox: crate::transport::Outbox<TsxKey>,
    /// The thread that sends them while this core is busy (`offload.rs`);
    /// none with `send_thread_busy_pct = 100`.
    sender: Option<crate::transport::SendThread<TsxKey>>,
    /// Whether this core is busy enough to hand its sends over.
    offload: offload::Switch,
    /// Datagrams dropped since the last warning (a send thread that did
    /// not keep up), and when that warning was.
    dropped_sends: usize,
    dropped_warned: Option<Instant>,
}

impl Shard {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut replies: mpsc::Receiver<ShardMsg>,
        shutdown: CancellationToken,
    ) {
        let mut expire_tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut ticks: u64 = 0;
        // Made once, not per wake-up: a fresh `cancelled()` or `sleep_until`
        // per loop registers with (and leaves) the token's waiter list or
        // the timer wheel each time a message comes, locks included.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<tokio::time::Instant> = None;
        loop {
            let deadline = [self.layer.poll_timeout(), self.calls.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(tokio::time::Instant::from_std);
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            tokio::select! {
                _ = &mut cancelled => {
                    let now = crate::clock::instant();
                    self.end_all_calls(now);
                    // What the send thread holds goes out first, the calls'
                    // BYEs after it from here: the process may end as soon
                    // as the cores have returned.
                    if let Some(sender) = self.sender.take() {
                        sender.finish();
                    }
                    self.flush(now);
                    return;
                }
                m = inbound.recv() => match m {
                    Some(m) => {
                        let now = crate::clock::instant();
                        self.handle_inbound(m, now);
                        // Take what else is queued before going back to
                        // sleep: one wake-up per burst, not per message.
                        for _ in 0..64 {
                            match inbound.try_recv() {
                                Ok(m) => self.handle_inbound(m, now),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return,
                },
                Some(m) = replies.recv() => match m {
                    ShardMsg::Reply { key, response } => self.respond(key, response, crate::clock::instant()),
                    ShardMsg::Admission(result) => self.handle_admission(*result, crate::clock::instant()),
                    ShardMsg::MediaTimeout(no) => self.handle_media_timeout(no, crate::clock::instant()),
                    ShardMsg::LegGone(no, leg) => self.handle_leg_gone(no, leg, crate::clock::instant()),
                    ShardMsg::MediaDtmf(no, leg, digit, ms) => self.handle_media_dtmf(no, leg, digit, ms, crate::clock::instant()),
                    ShardMsg::Send { request, target, reply } => self.send_own(request, target, reply, crate::clock::instant()),
                    ShardMsg::Closed(c) => self.handle_connection_closed(c, crate::clock::instant()),
                    ShardMsg::ClosedLagged(missed) => {
                        warn!(missed, "connection-closed notices overflowed: sweeping");
                        self.sweep_closed_connections(crate::clock::instant());
                    }
                    ShardMsg::SendFailed(failed) => self.report_send_failures(failed, crate::clock::instant()),
                },
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    let now = crate::clock::instant();
                    self.layer.handle_timeout(now);
                    self.handle_call_timers(now);
                }
                _ = expire_tick.tick() => {
                    // The location table is shared: one core sweeps it.
                    if self.shard == 0 {
                        let now = unix_now();
                        if let Ok(mut l) = self.ctx.location.lock() {
                            l.expire(now);
                        }
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(MEDIA_FIGURES_EVERY) {
                        self.publish_media_figures();
                    }
                }
            }
            let now = crate::clock::instant();
            self.drain(now);
            self.flush(now);
            // The reading is taken in the condition; it may turn the switch.
            if self.offload.due(now)
                && let Some(cpu) = offload::thread_cpu_time()
                && let Some(busy) = self.offload.reading(now, std::thread::current().id(), cpu)
            {
                let core = self.shard;
                if self.offload.on() {
                    info!(core, busy_pct = busy, "SIP core busy: its UDP sends go to its send thread");
                } else {
                    info!(core, busy_pct = busy, "SIP core less busy: it sends its UDP datagrams itself again");
                }
            }
        }
    }

    /// Queues `data` for `target`: UDP goes out with the rest of the turn
    /// ([`Self::flush`]), streams at once. `key` is the transaction that
    /// sends it, told of a failure; other senders ignore theirs (as a
    /// datagram lost on the wire).
    fn send(&mut self, target: &Target, data: Bytes, key: Option<TsxKey>, now: Instant) {
        let failed = self.transports.send_queued(&mut self.outbox, target, data, key.clone());
        if let Err(e) = failed {
            debug!(error = %e, "send failed");
            if let Some(key) = key {
                let _ = self.layer.handle_transport_error(now, &key);
            }
        }
    }

    /// Sends the turn's datagrams (one `sendmmsg` per batch) before the core
    /// waits again. A transaction whose datagram failed hears of it and may
    /// send more (its TU's answer to the error): bounded rounds.
    ///
    /// A busy core hands them to its send thread instead (`offload.rs`),
    /// and so does one whose earlier datagrams that thread still holds:
    /// none overtakes another. Failures then come back as
    /// [`ShardMsg::SendFailed`].
    fn flush(&mut self, now: Instant) {
        for _ in 0..4 {
            if self.outbox.is_empty() {
                return;
            }
            if let Some(sender) = &self.sender
                && (self.offload.on() || sender.busy())
            {
                match sender.hand_over(&mut self.outbox) {
                    crate::transport::HandOver::Taken => return,
                    crate::transport::HandOver::Full => {
                        self.send_dropped(now);
                        return;
                    }
                    // Sent here, as if the thread had never been.
                    crate::transport::HandOver::Gone => {}
                }
            }
            let failed = self.transports.flush(&mut self.outbox);
            if failed.is_empty() {
                return;
            }
            self.report_send_failures(failed, now);
            self.drain(now);
        }
    }

    /// The send thread holds too many unsent (it is starved of CPU): this
    /// turn's datagrams are lost, as in a full socket buffer, and their
    /// transactions retransmit. Counted, and told once a second at most.
    fn send_dropped(&mut self, now: Instant) {
        let n = self.outbox.len();
        self.outbox.discard();
        crate::ops::metrics::udp_send_dropped(n);
        self.dropped_sends += n;
        if self.dropped_warned.is_none_or(|at| now.saturating_duration_since(at) >= std::time::Duration::from_secs(1)) {
            warn!(datagrams = self.dropped_sends, "send thread not keeping up: datagrams dropped");
            self.dropped_sends = 0;
            self.dropped_warned = Some(now);
        }
    }

    /// Tells each failed datagram's transaction of its error (from this
    /// turn's flush, or from the send thread).
    fn report_send_failures(&mut self, failed: Vec<(Option<TsxKey>, crate::transport::SendError)>, now: Instant) {
        for (key, e) in failed {
            debug!(error = %e, "send failed");
            if let Some(key) = key {
                let _ = self.layer.handle_transport_error(now, &key);
            }
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
                // Each map holds one role's keys: a terminated server
                // transaction is not looked for in the client maps (large
                // and cold, they hold the 32 s of answered INVITEs).
                Event::Terminated => match key.role() {
                    Role::Server => {
                        self.pending.remove(&key);
                    }
                    Role::Client => {
                        self.responses.remove(&key);
                        self.client_terminated(&key, now);
                    }
                },
                Event::Timeout { timer } => {
                    debug!(?timer, "transaction timed out");
                    self.handle_client_failure(&key, 408, now);
                }
                Event::TransportError => {
                    debug!("transaction transport error");
                    self.handle_client_failure(&key, 503, now);
                }
                Event::Response { .. } => {
                    // Taken out while handled (no copy), kept for the
                    // ACK of a non-2xx final response (AckNeeded).
                    if let Some(resp) = self.responses.remove(&key) {
                        self.handle_client_response(&key, &resp, now);
                        self.responses.insert(key, resp);
                    }
                }
                Event::AckNeeded { .. } => {
                    let ack = self.responses.get(&key).and_then(|resp| self.ack_for_failure(&key, resp));
                    if let Some(ack) = ack {
                        let _ = self.layer.send_ack(now, &key, ack);
                    }
                }
            }
        }
        while let Some(t) = self.layer.poll_transmit() {
            self.send(&t.payload.target, t.payload.data, Some(t.key), now);
        }
    }

    fn handle_inbound(&mut self, inb: Inbound, now: Instant) {
        self.overload.observe(now, inb.received);
        match inb.message {
            Ok(Message::Request(req)) => {
                self.handle_request(req, inb.transport, inb.remote, inb.conn, inb.received, now)
            }
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
                match self.layer.handle_response(now, &info) {
                    Some(key) => {
                        self.responses.insert(key.clone(), resp);
                        // Its event reads the response from the map: handle
                        // it now, before the next response of the same
                        // transaction (a 180 and a 200 in one burst) replaces
                        // it — else the 180's event saw the 200, the 180 was
                        // never relayed and the 200 was handled twice.
                        self.drain(now);
                        // Its events (the response, the ACK a failure needs)
                        // came out of that drain: not kept for the 32 s an
                        // answered INVITE's transaction lives on (Timer M).
                        self.responses.remove(&key);
                    }
                    None => debug!(remote = %inb.remote, status = resp.status(), "stray response dropped"),
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
                self.send(&target, Bytes::from(resp.to_bytes()), None, now);
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
        received: Instant,
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
            // Over the same connection; if it is gone, §18.2.2 says connect
            // to the source address at the sent-by port.
            Transport::Tcp => {
                Target { transport, addr: SocketAddr::new(remote.ip(), stamp.sent_by_port.unwrap_or(5060)), conn }
            }
            // RFC 7118 §5: back over the connection the request came on;
            // its Via sent-by is a made-up `.invalid` host.
            Transport::Ws | Transport::Wss => Target { transport, addr: remote, conn },
        };
        let reliability = if transport == Transport::Udp { Reliability::Unreliable } else { Reliability::Reliable };
        // `unknown_trunk = "ignore"`: an out-of-dialog INVITE from an address
        // that is no trunk gets no answer at all (and no transaction).
        if self.ctx.config.ignore_unknown_trunks
            && *req.method() == Method::Invite
            && req.headers().to_tag().ok().flatten().is_none()
            && self.trunk_of(transport, remote, &req).is_none()
            && outbound::portal_of(&self.ctx, &req).is_none()
        {
            warn!(target: "security", source = %remote, "INVITE from an address that is no trunk ignored");
            crate::ops::metrics::call_refused(crate::admission::Reason::UnknownTrunk.as_str());
            return;
        }
        let (matched, in_dialog) = {
            let h = req.headers();
            let from_tag = h.from_tag().ok().flatten();
            let to_tag = h.to_tag().ok().flatten();
            let info = RequestInfo {
                method: tsx_method(req.method()),
                branch: stamp.branch.as_deref(),
                sent_by: &stamp.sent_by,
                request_uri: req.uri().as_str(),
                call_id: h.call_id().unwrap_or(""),
                cseq: h.cseq().map(|c| c.seq).unwrap_or(0),
                from_tag,
                to_tag,
            };
            (self.layer.handle_request(now, &info, reliability), to_tag.is_some())
        };
        match matched {
            RequestMatch::New(key) => {
                self.pending.insert(key.clone(), Pending { request: req, target });
                self.dispatch(key, transport, remote, in_dialog, received, now);
            }
            RequestMatch::Cancel { key, target: invite } => {
                self.pending.insert(key.clone(), Pending { request: req.clone(), target });
                match invite.filter(|k| self.pending.contains_key(k)) {
                    Some(invite) => {
                        // §9.2: 200 to the CANCEL, then 487 to the INVITE
                        // (by its call, or here while admission runs).
                        self.respond(key, Response::from_request(&req, 200, "OK"), now);
                        if !self.handle_a_cancel(&invite, now)
                            && let Some(p) = self.pending.get(&invite)
                        {
                            let r = Response::from_request(&p.request, 487, "Request Terminated");
                            self.respond(invite.clone(), r, now);
                        }
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
            RequestMatch::AckToTu { .. } => self.handle_ack(&req, now),
            RequestMatch::Absorbed(_) => {}
        }
    }

    /// A new server transaction: protocol checks, then the method's handler
    /// (`in_dialog`: the request has a To tag).
    fn dispatch(
        &mut self,
        key: TsxKey,
        transport: Transport,
        remote: SocketAddr,
        in_dialog: bool,
        received: Instant,
        now: Instant,
    ) {
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
                    let _ = replies.send(ShardMsg::Reply { key, response }).await;
                });
            }
            _ if in_dialog => {
                let req = req.clone();
                if !self.handle_in_dialog(&key, &req, now) {
                    let resp = Response::from_request(&req, 481, "Call/Transaction Does Not Exist");
                    self.respond(key, resp, now);
                }
            }
            Method::Invite => self.new_call(key, transport, remote, received, now),
            _ => {
                // Out-of-dialog requests we do not serve.
                let resp = Response::from_request(req, 481, "Call/Transaction Does Not Exist");
                self.respond(key, resp, now);
            }
        }
    }

    /// The trunk a request comes from: by source address, never over
    /// WebSocket (browsers only); or a cloud-PBX trunk whose registered
    /// Contact the Request-URI names, from wherever it comes.
    fn trunk_of(&self, transport: Transport, remote: SocketAddr, req: &Request) -> Option<Arc<crate::b2bua::Trunk>> {
        if transport.is_websocket() {
            return None;
        }
        self.ctx.trunks.identify(remote.ip()).or_else(|| self.ctx.trunks.by_contact_user(ruri_user(req)?)).cloned()
    }

    /// Admission attempts of `key` in the current second (all shards).
    fn count_rate(&self, key: crate::admission::PortalId) -> u32 {
        let second = unix_now();
        match self.ctx.rates.lock() {
            Ok(mut rates) => {
                let slot = rates.entry(key).or_insert((second, 0));
                if slot.0 != second {
                    *slot = (second, 0);
                }
                let n = slot.1;
                slot.1 += 1;
                if rates.len() > 100_000 {
                    rates.retain(|_, (s, _)| *s == second);
                }
                n
            }
            Err(_) => 0,
        }
    }

    /// Runs an admission: polled here first, so on a single node with the
    /// users in the licence cache it completes at once, without a task and
    /// two thread hand-offs per call; only when it waits (the database: a
    /// fleet's lease, a user not cached, a digest check) does it become a
    /// task, which polls it again with a real waker.
    fn run_admission(
        &mut self,
        admission: impl Future<Output = calls::AdmissionResult> + Send + 'static,
        now: Instant,
    ) {
        let mut admission = Box::pin(admission);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match admission.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => self.handle_admission(result, now),
            std::task::Poll::Pending => {
                let tx = self.replies.clone();
                tokio::spawn(async move {
                    let result = admission.await;
                    let _ = tx.send(ShardMsg::Admission(Box::new(result))).await;
                });
            }
        }
    }

    /// A new INVITE: from a trunk, an inbound call; from a portal's user
    /// (a non-trunk source naming a portal we serve), an outbound call;
    /// else refused as from an unknown trunk. Each is admitted by the
    /// licence rules, the route or the trunks, and the channel lease.
    fn new_call(&mut self, key: TsxKey, transport: Transport, remote: SocketAddr, received: Instant, now: Instant) {
        let Some(p) = self.pending.get(&key) else { return };
        let request = p.request.clone();
        let trunk = self.trunk_of(transport, remote, &request);
        let portal = if trunk.is_none() { outbound::portal_of(&self.ctx, &request) } else { None };
        // Row 2 by time in queue, as soon as the source is known to be a
        // trunk or a portal's user: a shed call costs one answer, not a
        // call's work. A portal user is shed before authentication, so
        // like a challenge it leaves no record (it is no one yet).
        if (trunk.is_some() || portal.is_some())
            && let overload::Verdict::Shed { .. } = self.overload.check(now, received)
        {
            match &trunk {
                Some(trunk) => {
                    let result = admit::shed(&self.ctx, key, &request, trunk);
                    self.handle_admission(result, now);
                }
                None => {
                    crate::ops::metrics::call_refused(crate::admission::Reason::Overloaded.as_str());
                    let refusal = crate::admission::Refusal {
                        reason: crate::admission::Reason::Overloaded,
                        detail: admit::SHED_DETAIL.into(),
                    };
                    let answer = self.ctx.config.answers.answer_refusal(&refusal);
                    let resp = self.refusal_response(&request, &answer, crate::admission::Reason::Overloaded, now);
                    self.respond(key, resp, now);
                }
            }
            return;
        }
        if let Some(portal) = portal {
            let calls_this_second = self.count_rate(portal.id.clone());
            let input = outbound::OutboundInput {
                key,
                request,
                portal,
                node_overloaded: self.ctx.active_calls.load(std::sync::atomic::Ordering::Relaxed)
                    >= self.ctx.config.max_calls,
                calls_this_second,
                source: remote,
            };
            self.run_admission(outbound::admit(self.ctx.clone(), input), now);
            return;
        }
        let Some(trunk) = trunk else {
            warn!(target: "security", source = %remote, "INVITE from an address that is no trunk refused");
            crate::ops::metrics::call_refused(crate::admission::Reason::UnknownTrunk.as_str());
            let refusal = crate::admission::Refusal {
                reason: crate::admission::Reason::UnknownTrunk,
                detail: format!("{} is not a configured trunk", remote.ip()),
            };
            let answer = self.ctx.config.answers.answer_refusal(&refusal);
            let status = answer.status;
            let resp = self.refusal_response(&request, &answer, refusal.reason, now);
            self.respond(key, resp, now);
            let unix = unix_now_i64();
            self.cdr.record(crate::store::CallRecord {
                id: 0,
                call_id: request.headers().call_id().unwrap_or("").to_owned(),
                node_id: self.ctx.config.node_id.clone(),
                portal_id: None,
                trunk: None,
                direction: "inbound".into(),
                caller: admit::caller_of(&request),
                callee: crate::b2bua::dialled_number(&request, &[crate::config::NumberSource::RequestUri])
                    .map(|d| d.number),
                target_user: None,
                started_at: unix,
                answered_at: None,
                ended_at: Some(unix),
                outcome: crate::cdr::Outcome::Refused.as_str().into(),
                sip_status: Some(i64::from(status)),
                reason: Some(crate::admission::Reason::UnknownTrunk.as_str().to_owned()),
                media: None,
            });
            return;
        };
        // A shared trunk's portal is only known from the domain; rate-count
        // by the domain then (one portal per domain).
        let rate_key = if trunk.portal.as_str() == "*" {
            match request.uri() {
                crate::sip::message::Uri::Sip(u) => crate::admission::PortalId::new(format!("@{}", u.host_str())),
                _ => trunk.portal.clone(),
            }
        } else {
            trunk.portal.clone()
        };
        let calls_this_second = self.count_rate(rate_key);
        let input = admit::AdmitInput {
            key,
            request,
            trunk,
            node_overloaded: self.ctx.active_calls.load(std::sync::atomic::Ordering::Relaxed)
                >= self.ctx.config.max_calls,
            calls_this_second,
            source: remote,
        };
        self.run_admission(admit::admit(self.ctx.clone(), input), now);
    }

    /// Sends a response through its server transaction, adding a To tag to
    /// final and 101-199 responses, and `Server`.
    fn respond(&mut self, key: TsxKey, mut resp: Response, now: Instant) {
        let status = resp.status();
        if status > 100 && resp.headers().to_tag().is_ok_and(|t| t.is_none()) {
            let tag = self.ctx.new_tag();
            let _ = resp.set_to_tag(&tag);
        }
        if !resp.headers().contains(&HeaderName::Server) {
            let _ = resp.headers_mut().push(HeaderName::Server, SERVER);
        }
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
        let to_tag = resp.headers().to_tag().ok().flatten();
        let out = Outgoing { target, data: Bytes::from(resp.to_bytes()) };
        if let Err(e) = self.layer.send_response(now, key, status, to_tag, out) {
            warn!(error = %e, "response not sent");
        }
    }
}

/// The Request-URI's user part.
fn ruri_user(req: &Request) -> Option<&str> {
    req.uri().as_sip().and_then(|s| s.user())
}

fn tsx_method(m: &Method) -> crate::sip::transaction::Method {
    crate::sip::transaction::Method::new(m.as_str())
}

fn allow_value(check: &CheckConfig) -> String {
    check.allow.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

/// How long the lease writer lets changes gather before a batch: the
/// call records' rhythm ([`crate::cdr::CdrSettings::flush_interval`]).
///
/// The rows are a record, not the count: a single node counts its channels
/// in memory and a fleet node against its allowance
/// ([`crate::store::Store::apply_lease_ops`], [`channels`]), so a lease
/// written a fifth of a second late admits nothing it should not. Was
/// 10 ms: a hundred commits a second at 3000 calls a second, each
/// rewriting the same few leaf pages of the table and its two indexes to
/// the WAL, and a call shorter than the wait (a refused fork, a missed
/// call) now never reaches the table at all.
const LEASE_BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The most changes one batch takes: 20,000 per wait is 50,000 calls
/// beginning and ending a second, far past a node's capacity, so the
/// writer never falls behind its channel for want of room in a batch.
const LEASE_BATCH_MAX: usize = 20_000;

/// Writes lease changes in batches, in order: each batch is one
/// transaction, so a node starting and ending thousands of calls a second
/// commits five times a second. A batch that fails is retried within a second
/// (this node renews its leases, so one left behind would never expire).
async fn write_leases(store: Store, mut rx: mpsc::UnboundedReceiver<crate::store::LeaseOp>) {
    use crate::store::LeaseOp;
    let mut batch: Vec<LeaseOp> = Vec::new();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(op) => batch.push(op),
                None => return,
            }
            // Let the moment's changes gather: one transaction for them
            // all, not one per call (a few dozen a second when busy).
            tokio::time::sleep_until(tokio::time::Instant::now() + LEASE_BATCH_WAIT).await;
        }
        while batch.len() < LEASE_BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // A batch of releases only: one DELETE.
        let result = if batch.iter().all(|op| matches!(op, LeaseOp::Release { .. })) {
            let ids: Vec<String> = batch
                .iter()
                .filter_map(|op| match op {
                    LeaseOp::Release { call_id } => Some(call_id.clone()),
                    LeaseOp::Take { .. } | LeaseOp::Media { .. } => None,
                })
                .collect();
            store.release_calls(&ids).await.map(|_| ())
        } else {
            store.apply_lease_ops(&batch).await
        };
        match result {
            Ok(()) => batch.clear(),
            Err(e) => {
                warn!(error = %e, leases = batch.len(), "lease write failed; retrying");
                if batch.len() > 100_000 {
                    // The database is gone for long: the leases will expire.
                    batch.clear();
                }
                match tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await {
                    Ok(Some(op)) => batch.push(op),
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
        }
    }
}

/// Unix seconds now (handler tasks and expiry; the driver reads the clock).
pub(crate) fn unix_now() -> u64 {
    u64::try_from(crate::clock::now_utc().timestamp()).unwrap_or(0)
}

/// Unix seconds now, as stored in call records.
pub(crate) fn unix_now_i64() -> i64 {
    crate::clock::now_utc().timestamp()
}
