//! One call as a sans-IO machine: legs, forking, offer/answer, timers.
//!
//! A [`Call`] is a set of [`Leg`]s. Leg 0 is the leg the call came in on
//! (for a PBX call, the trunk: we are its UAS); the others are forks we
//! place (portal users' phones: we are their UAC). Each leg has its own
//! dialog ([`Dialog`]), its own offer/answer state ([`OfferAnswer`]) and
//! shares nothing on the wire with the others: own Call-ID, tags, CSeq.
//!
//! The machine has no socket, clock, database or metric. Use:
//!
//! 1. feed what happened with `handle_*(now, ..)`: a response to one of the
//!    call's requests, a failed request, a request or ACK from a leg, a
//!    CANCEL, or a timeout;
//! 2. then drain [`Call::poll_command`] and carry each [`Command`] out (send
//!    this response through that server transaction, start this request as
//!    a client transaction, write this call record, release the channel);
//! 3. arm a timer for [`Call::poll_timeout`] and call
//!    [`Call::handle_timeout`] when it fires;
//! 4. drop the call once [`Call::is_finished`].
//!
//! Server transactions are named by the driver's key type `S`; client
//! requests by the [`ReqId`] the machine gives them. Requests the machine
//! emits have no Via: the driver adds its own (address and branch belong to
//! the transport and transaction layers).
//!
//! Every SDP body crosses the call through the call's [`MediaSession`].
//!
//! Each leg runs its own RFC 4028 session timer ([`SessionTimer`]): we
//! refresh the legs we are the refresher of, end the call when a peer that
//! should refresh stops, and answer a peer's refresh ourselves when the
//! session it describes is unchanged, without troubling the other leg.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::debug;

use super::media::{Body, MediaSession};
use super::session_timer::{self, Negotiated, Refresher, SdpOrigin, SessionTimer};
use crate::cdr::Outcome;
use crate::config::RingStrategy;
use crate::sip::dialog::{Dialog, Uas2xx, Uas2xxEvent};
use crate::sip::message::{HeaderName, Method, Request, Response, Uri};
use crate::store::CallRecord;
use crate::transport::Target;

/// Record reason of calls cut by the node's stop.
pub const NODE_STOPPED: &str = "node-stopped";

/// Record reason of calls ended because a leg's media stopped.
pub const MEDIA_TIMEOUT: &str = "media-timeout";
/// Record reason of outbound calls no trunk took: each failed with no
/// answer, a transport error or a server failure.
pub const TRUNKS_FAILED: &str = "trunks-failed";

/// Reason of a call whose browser's WebSocket closed while it was up.
pub const BROWSER_GONE: &str = "browser-gone";

/// Record reason of calls refused because the PBX asked for a session
/// interval below our Min-SE (422).
pub const SESSION_INTERVAL_TOO_SMALL: &str = "session-interval-too-small";

/// Record reason of calls ended because a leg whose peer refreshes the
/// session was not refreshed in time (RFC 4028 §10).
pub const SESSION_EXPIRED: &str = "session-expired";

/// Record reason of calls ended because our refresh of a leg failed (408,
/// 481, or no success before the session expired).
pub const SESSION_TIMER_FAILED: &str = "session-timer-failed";

/// Methods every leg may send us.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";

/// A leg of a call: 0 is the leg the call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u16);

impl LegId {
    /// The leg the call came in on.
    pub const ORIGIN: LegId = LegId(0);
}

/// A client request of the call, named by the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u32);

/// Which side of the leg's dialog we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The peer called us.
    Uas,
    /// We called the peer.
    Uac,
}

/// What is at the far end of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegKind {
    /// A PBX over a trunk.
    Trunk,
    /// A portal user's SIP phone.
    Phone,
}

/// Where a leg's messages go, and our address toward it (Contact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's transport address (the flow its requests came on).
    pub target: Target,
    /// Our address on that transport.
    pub local: SocketAddr,
}

impl Peer {
    /// Our Contact toward this peer.
    pub fn contact(&self) -> String {
        let param = self.target.transport.uri_param();
        let mut c = String::with_capacity(64 + param.len());
        c.push_str("<sip:trunkgate@");
        crate::sip::text::push_socket_addr(&mut c, self.local);
        c.push_str(param);
        c.push('>');
        c
    }
}

/// One place a call rings.
#[derive(Debug, Clone)]
pub struct ForkTarget {
    /// Portal user.
    pub user: String,
    /// Contact URI (Request-URI of the fork's INVITE).
    pub contact: String,
    /// Where to send it.
    pub peer: Peer,
}

/// Fresh identifiers for a call's legs (random in the daemon, counters in
/// tests).
pub trait Ids: Send + Sync {
    /// A new tag (From of a fork, To of our answers).
    fn tag(&self) -> String;
    /// A new Call-ID for a fork.
    fn call_id(&self) -> String;
    /// A fresh client nonce for our digest answers to a PBX's challenge.
    fn cnonce(&self) -> String;
}

/// Timers and names of a call.
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Host in `Warning: 399 <host>`.
    pub warning_host: std::sync::Arc<str>,
    /// RFC 3261 T1 (2xx retransmission start).
    pub t1: Duration,
    /// RFC 3261 T2 (2xx retransmission cap).
    pub t2: Duration,
    /// RFC 4028: the session interval we ask for on the legs we place and
    /// offer the PBX when it asks for none (default
    /// [`session_timer::DEFAULT_SESSION_EXPIRES`], 1800 s).
    pub session_expires: Duration,
    /// RFC 4028: the smallest session interval we accept; a request asking
    /// for less gets 422 with this as Min-SE (default
    /// [`session_timer::DEFAULT_MIN_SE`], 90 s, the RFC's floor).
    pub min_se: Duration,
}

/// An admitted inbound call: what the machine starts from.
pub struct InboundCall<S> {
    /// The PBX's INVITE.
    pub invite: Request,
    /// Its server transaction.
    pub tsx: S,
    /// The PBX.
    pub peer: Peer,
    /// Who rings: one group per user, in order.
    pub groups: Vec<Vec<ForkTarget>>,
    /// How they ring.
    pub strategy: RingStrategy,
    /// Ringing time (per group for sequential strategies).
    pub ring_timeout: Duration,
    /// The longest the call may last once answered.
    pub max_duration: Duration,
    /// The channel's lease id.
    pub lease_id: String,
    /// The portal's domain (From/To of the forks).
    pub domain: String,
    /// The call record, filled as far as admission could.
    pub record: CallRecord,
}

/// An admitted outbound call: a portal user's INVITE and the trunks it
/// may go out through, in order.
pub struct OutboundCall<S> {
    /// The user's INVITE.
    pub invite: Request,
    /// Its server transaction.
    pub tsx: S,
    /// The user's phone or browser.
    pub peer: Peer,
    /// The trunks, in priority order.
    pub attempts: Vec<TrunkAttempt>,
    /// The longest the call may last once answered.
    pub max_duration: Duration,
    /// The channel's lease id.
    pub lease_id: String,
    /// The portal's domain.
    pub domain: String,
    /// The call record, filled as far as admission could.
    pub record: CallRecord,
}

/// One trunk an outbound call may go out through.
#[derive(Debug, Clone)]
pub struct TrunkAttempt {
    /// The trunk's name (the record's `trunk` when it answers).
    pub trunk: String,
    /// Request-URI (the number as the trunk wants it).
    pub uri: String,
    /// To value.
    pub to: String,
    /// From value without its tag (the caller ID the trunk presents).
    pub from: String,
    /// P-Asserted-Identity, Remote-Party-ID, Privacy as the trunk asks.
    pub extra: Vec<(String, String)>,
    /// Where to send it.
    pub peer: Peer,
    /// For the PBX's 401/407.
    pub credentials: Option<crate::b2bua::outbound::Credentials>,
    /// No answer at all within this: the next trunk.
    pub invite_timeout: Duration,
    /// Ringing at most this long once the trunk answered.
    pub answer_timeout: Duration,
}

/// A UAC leg to place.
struct NewLeg {
    uri: Uri,
    /// From, with our tag.
    from: String,
    from_tag: String,
    to: String,
    kind: LegKind,
    /// Portal user (phone legs) or trunk name (trunk legs).
    user: String,
    peer: Peer,
    /// More headers (caller ID).
    extra: Vec<(String, String)>,
    auth: Option<LegAuth>,
}

/// What both directions start from: the leg the call came in on.
struct Origin<S> {
    invite: Request,
    tsx: S,
    peer: Peer,
    kind: LegKind,
    max_duration: Duration,
    lease_id: String,
    domain: String,
    record: CallRecord,
}

/// An outbound call's progress through its trunks.
struct Outbound {
    attempts: VecDeque<TrunkAttempt>,
    /// The trunk leg being tried.
    current: Option<LegId>,
    /// The current trunk answered something (its INVITE timeout is off).
    responded: bool,
    /// The current trunk's ringing limit.
    answer_timeout: Duration,
    /// The current trunk's INVITE timeout.
    invite_timeout: Duration,
    /// The last trunk's final answer.
    last_failure: u16,
}

/// Our digest answers on a trunk leg.
#[derive(Debug, Clone)]
struct LegAuth {
    credentials: crate::b2bua::outbound::Credentials,
    /// Challenges answered on this leg (each new one but a stale nonce
    /// counts): a second refusal of our credentials ends the attempt.
    tries: u8,
}

/// What the driver carries out.
#[derive(Debug, Clone)]
pub enum Command<S> {
    /// Send `response` through server transaction `tsx`.
    Respond {
        /// The server transaction.
        tsx: S,
        /// The response (To tag set where the dialog needs one).
        response: Response,
    },
    /// Start a client transaction for `request` (no Via yet) toward `peer`;
    /// its responses come back as [`Call::handle_response`] with `id`.
    Request {
        /// The machine's name for it.
        id: ReqId,
        /// The leg it goes on.
        leg: LegId,
        /// Where to.
        peer: Peer,
        /// The request, without Via.
        request: Request,
    },
    /// Send an ACK for a 2xx (no transaction; the driver adds a Via).
    Ack {
        /// Where to.
        peer: Peer,
        /// The ACK, without Via.
        request: Request,
    },
    /// Send a 2xx again, outside its transaction (§13.3.1.4).
    Retransmit {
        /// Where to.
        peer: Peer,
        /// The response, as first sent.
        response: Response,
    },
    /// A new leg's Call-ID: route its messages to this call.
    Route {
        /// The Call-ID.
        call_id: String,
    },
    /// The call has ended: give its channel back.
    ReleaseChannel {
        /// The lease.
        lease_id: String,
        /// The portal holding it.
        portal: Option<String>,
    },
    /// The call's final record.
    Record(Box<CallRecord>),
}

/// Offer/answer state of one leg (RFC 3264, RFC 6337), seen from us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferAnswer {
    /// No offer outstanding.
    Stable,
    /// We sent an offer on this leg; its answer is due.
    OfferSent(Placement),
    /// The leg sent us an offer; we owe the answer.
    OfferReceived(Placement),
}

/// Where an offer was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In an INVITE (answer in its 2xx).
    Invite,
    /// In a 2xx to an offerless INVITE (answer in the ACK).
    Response,
    /// In an UPDATE (answer in its 2xx).
    Update,
}

/// Where a leg is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// INVITE sent (UAC) or received (UAS), nothing back yet.
    Calling,
    /// A provisional response was exchanged.
    Early,
    /// Answered (2xx), waiting for or past its ACK.
    Up,
    /// Failed with this final status.
    Failed(u16),
    /// Cancelled, hung up, or lost to another fork.
    Ended,
}

/// One leg.
#[derive(Debug)]
pub struct Leg<S> {
    id: LegId,
    role: Role,
    kind: LegKind,
    peer: Peer,
    user: Option<String>,
    state: LegState,
    /// The INVITE that made the leg (received for UAS, sent for UAC).
    invite: Request,
    /// UAS: the INVITE's server transaction while it is unanswered.
    tsx: Option<S>,
    /// Our tag on this leg (UAS: To of our answers).
    local_tag: String,
    /// Early dialogs (UAC: one per remote tag of the 1xx).
    early: Vec<Dialog>,
    /// The confirmed dialog.
    dialog: Option<Dialog>,
    oa: OfferAnswer,
    /// Our 2xx on this leg, retransmitted until its ACK.
    uas_2xx: Option<(Uas2xx, Response)>,
    /// UAC: the 2xx of INVITE CSeq n carried an offer; the ACK waits for
    /// the answer from the other leg.
    held_ack: Option<u32>,
    /// UAC: the CSeq and body of the last ACK sent for a 2xx (made again
    /// for a retransmitted 2xx).
    last_ack: Option<(u32, Option<Body>)>,
    /// The media session was given a body for this leg.
    has_media: bool,
    /// RFC 4028: the leg's session timer, when it has one.
    session: Option<SessionTimer>,
    /// The smallest interval the peer accepts: ours, or what its 422 said.
    min_se: Duration,
    /// The peer's Allow lists UPDATE: our refreshes need no SDP.
    allows_update: bool,
    /// UAC: the INVITE was sent again after a 422 (once only).
    retried_422: bool,
    /// The `o=` of the last session description the leg sent us and we
    /// took: an offer repeating it is a refresh.
    remote_origin: Option<SdpOrigin>,
    /// The last session description we sent the leg and it took (what a
    /// refresh re-offers when the media session keeps none).
    sent_sdp: Option<Body>,
    /// Our 2xx to the leg's offerless refresh offered a description of our
    /// own: the answer in its ACK stays on this leg.
    local_offer: bool,
    /// A trunk leg's credentials, for the PBX's challenges.
    auth: Option<LegAuth>,
}

impl<S> Leg<S> {
    /// The leg's id.
    pub fn id(&self) -> LegId {
        self.id
    }
    /// Whether we are its UAS or UAC.
    pub fn role(&self) -> Role {
        self.role
    }
    /// What is at the far end.
    pub fn kind(&self) -> LegKind {
        self.kind
    }
    /// Where it is in its life.
    pub fn state(&self) -> LegState {
        self.state
    }
    /// Its offer/answer state.
    pub fn offer_answer(&self) -> OfferAnswer {
        self.oa
    }
    /// Early dialogs (UAC: one per remote tag its 1xx carried).
    pub fn early_dialogs(&self) -> &[Dialog] {
        &self.early
    }
    /// The confirmed dialog, once there is one.
    pub fn dialog(&self) -> Option<&Dialog> {
        self.dialog.as_ref()
    }
    /// Where its messages go.
    pub fn peer(&self) -> Peer {
        self.peer
    }
    /// The Call-ID of the leg.
    pub fn call_id(&self) -> &str {
        self.invite.headers().call_id().unwrap_or("")
    }
}

/// A request of ours in flight.
#[derive(Debug)]
enum Outstanding<S> {
    /// A fork's INVITE.
    Invite(LegId),
    /// CANCEL or BYE: nothing waits on its answer but the call's end.
    Ending,
    /// An in-dialog request relayed from another leg.
    Relay(Box<Relay<S>>),
    /// Our session refresh (RFC 4028) on a leg.
    Refresh(Refresh),
}

/// The call's requests in flight: a handful at most, so a list (no hashing,
/// no table per call).
#[derive(Debug)]
struct InFlight<S>(Vec<(ReqId, Outstanding<S>)>);

impl<S> InFlight<S> {
    fn get(&self, id: &ReqId) -> Option<&Outstanding<S>> {
        self.0.iter().find(|(k, _)| k == id).map(|(_, o)| o)
    }

    fn get_mut(&mut self, id: &ReqId) -> Option<&mut Outstanding<S>> {
        self.0.iter_mut().find(|(k, _)| k == id).map(|(_, o)| o)
    }

    fn remove(&mut self, id: &ReqId) -> Option<Outstanding<S>> {
        let i = self.0.iter().position(|(k, _)| k == id)?;
        Some(self.0.swap_remove(i).1)
    }

    fn insert(&mut self, id: ReqId, o: Outstanding<S>) {
        self.0.push((id, o));
    }

    fn values(&self) -> impl Iterator<Item = &Outstanding<S>> {
        self.0.iter().map(|(_, o)| o)
    }
}

#[derive(Debug)]
struct Relay<S> {
    from: LegId,
    to: LegId,
    /// The originator's server transaction and request.
    tsx: S,
    request: Request,
    /// Our CSeq number on `to` (the ACK of a 2xx repeats it).
    seq: u32,
    /// It carried an offer.
    offer: bool,
    /// The originator's session timer, for our 2xx (INVITE and UPDATE).
    session: Option<Negotiated>,
    /// The session description we sent `to` (taken once answered).
    sent: Option<Body>,
}

/// A session refresh of ours in flight.
#[derive(Debug, Clone, Copy)]
struct Refresh {
    leg: LegId,
    /// Its CSeq number (the ACK of a re-INVITE's 2xx repeats it).
    seq: u32,
    /// A re-INVITE (else an UPDATE).
    invite: bool,
    /// It offered a session description.
    offered: bool,
    /// A re-INVITE answered 2xx, kept until its transaction ends so that a
    /// retransmitted 2xx (our ACK was lost) is ACKed again.
    answered: bool,
}

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Forks ringing.
    Ringing,
    /// A fork answered.
    Answered,
    /// Ended: waiting for our last requests' answers.
    Ending,
}

/// The call's own timers; the 2xx retransmissions and the session timers
/// are per leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Ring,
    MaxDuration,
    Linger,
}
const TIMERS: usize = 3;

/// One call.
pub struct Call<S> {
    config: CallConfig,
    ids: std::sync::Arc<dyn Ids>,
    media: Box<dyn MediaSession>,
    legs: Vec<Leg<S>>,
    phase: Phase,
    answered_by: Option<LegId>,
    /// Groups not rung yet (sequential strategies).
    queue: VecDeque<Vec<ForkTarget>>,
    ring_timeout: Duration,
    max_duration: Duration,
    lease_id: String,
    domain: String,
    record: Option<CallRecord>,
    /// When the call was made, and the record's clock then.
    created: Instant,
    best_failure: u16,
    /// The PBX leg's session timer, as our 2xx will set it.
    origin_session: Option<Negotiated>,
    /// The media session's reason when it refused a fork (its token names
    /// the caller's answer: `media-ports-exhausted`, `no-common-codec`).
    media_failure: Option<(u16, &'static str)>,
    timers: [Option<Instant>; TIMERS],
    requests: InFlight<S>,
    next_req: u32,
    commands: VecDeque<Command<S>>,
    /// Outbound calls: the trunks left and the one being tried.
    outbound: Option<Outbound>,
}

impl<S: Clone + std::fmt::Debug> Call<S> {
    /// Starts an admitted inbound call: the first forks rung, the ring
    /// timer armed.
    pub fn inbound(
        now: Instant,
        config: CallConfig,
        ids: std::sync::Arc<dyn Ids>,
        media: Box<dyn MediaSession>,
        call: InboundCall<S>,
    ) -> Call<S> {
        let InboundCall { invite, tsx, peer, groups, strategy, ring_timeout, max_duration, lease_id, domain, record } =
            call;
        let mut queue: VecDeque<Vec<ForkTarget>> = groups.into();
        let first: Vec<ForkTarget> = match strategy {
            RingStrategy::RingAll => queue.drain(..).flatten().collect(),
            RingStrategy::InOrder | RingStrategy::Evenly => queue.pop_front().unwrap_or_default(),
        };
        let origin = Origin { invite, tsx, peer, kind: LegKind::Trunk, max_duration, lease_id, domain, record };
        let mut c = Call::with_origin(now, config, ids, media, origin);
        c.queue = queue;
        c.ring_timeout = ring_timeout;
        if c.phase != Phase::Ringing {
            return c;
        }
        c.set_timer(Timer::Ring, Some(now + ring_timeout));
        for t in first {
            c.start_fork(t);
        }
        c.fail_if_nothing_rings(now);
        c
    }

    /// Starts an admitted outbound call: the first trunk tried, its INVITE
    /// timeout armed. The next trunk is tried when
    /// one fails with no answer, a transport error or a server failure
    /// ([`crate::b2bua::outbound::fails_over`]).
    pub fn outbound(
        now: Instant,
        config: CallConfig,
        ids: std::sync::Arc<dyn Ids>,
        media: Box<dyn MediaSession>,
        call: OutboundCall<S>,
    ) -> Call<S> {
        let OutboundCall { invite, tsx, peer, attempts, max_duration, lease_id, domain, record } = call;
        let origin = Origin { invite, tsx, peer, kind: LegKind::Phone, max_duration, lease_id, domain, record };
        let mut c = Call::with_origin(now, config, ids, media, origin);
        c.outbound = Some(Outbound {
            attempts: attempts.into(),
            current: None,
            responded: false,
            answer_timeout: Duration::ZERO,
            invite_timeout: Duration::ZERO,
            last_failure: 0,
        });
        if c.phase != Phase::Ringing {
            return c;
        }
        c.next_trunk(now);
        c
    }

    /// The call with its origin leg (refused at once with 422 when the
    /// caller's session interval is too small).
    fn with_origin(
        now: Instant,
        config: CallConfig,
        ids: std::sync::Arc<dyn Ids>,
        media: Box<dyn MediaSession>,
        origin: Origin<S>,
    ) -> Call<S> {
        let Origin { invite, tsx, peer, kind, max_duration, lease_id, domain, record } = origin;
        let mut media = media;
        // A caller over WebSocket is a browser.
        media.add_leg(LegId::ORIGIN, peer.target.addr, peer.local, peer.target.transport.is_websocket());
        let local_tag = ids.tag();
        let session = session_timer::negotiate_uas(invite.headers(), None, config.session_expires, config.min_se);
        let remote_origin = body_of_request(&invite).as_ref().and_then(SdpOrigin::of);
        let allows_update = session_timer::allows_update(invite.headers()).unwrap_or(false);
        let min_se = config.min_se;
        let origin = Leg {
            id: LegId::ORIGIN,
            role: Role::Uas,
            kind,
            peer,
            user: None,
            state: LegState::Calling,
            oa: if body_of_request(&invite).is_some_and(|b| b.is_sdp()) {
                OfferAnswer::OfferReceived(Placement::Invite)
            } else {
                OfferAnswer::Stable
            },
            invite,
            tsx: Some(tsx),
            local_tag,
            early: Vec::new(),
            dialog: None,
            uas_2xx: None,
            held_ack: None,
            last_ack: None,
            has_media: false,
            session: None,
            min_se,
            allows_update,
            retried_422: false,
            remote_origin,
            sent_sdp: None,
            local_offer: false,
            auth: None,
        };
        let mut c = Call {
            config,
            ids,
            media,
            legs: vec![origin],
            phase: Phase::Ringing,
            answered_by: None,
            queue: VecDeque::new(),
            ring_timeout: Duration::ZERO,
            max_duration,
            lease_id,
            domain,
            record: Some(record),
            created: now,
            best_failure: 0,
            origin_session: session.ok().flatten(),
            media_failure: None,
            timers: [None; TIMERS],
            requests: InFlight(Vec::new()),
            next_req: 0,
            commands: VecDeque::new(),
            outbound: None,
        };
        if let Err(too_small) = session {
            // RFC 4028 §9: refused before anything rings.
            debug!(min_se = too_small.min_se.as_secs(), "session interval too small");
            let mut r = c.unanswered_response(422, Some(SESSION_INTERVAL_TOO_SMALL));
            let _ = r.headers_mut().push(HeaderName::MinSe, too_small.min_se.as_secs().to_string());
            c.end_unanswered_with(now, r, Outcome::Failed, Some(SESSION_INTERVAL_TOO_SMALL));
            return c;
        }
        // No 100 Trying here: the server transaction asks for one
        // (`Event::TryingDue`) only if nothing else has answered the INVITE
        // 200 ms after it came (RFC 3261 §17.2.1). Most calls are answered
        // or ringing by then, and one datagram fewer per call is less work
        // for this node and for the PBX.
        c
    }

    // ------------------------------------------------------------ outputs

    /// The next thing to carry out.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command<S>> {
        self.commands.pop_front()
    }

    /// When [`Self::handle_timeout`] is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let legs = self.legs.iter().filter_map(|l| l.uas_2xx.as_ref().map(|(r, _)| r.poll_timeout()));
        let sessions = self.legs.iter().filter_map(|l| l.session.as_ref().and_then(SessionTimer::poll_timeout));
        self.timers.iter().flatten().copied().chain(legs).chain(sessions).min()
    }

    /// Ended, and nothing of ours is in flight any more: drop it.
    pub fn is_finished(&self) -> bool {
        // An answered fork's INVITE needs nothing more (its retransmitted
        // 2xx after the call is gone is the driver's to ACK and BYE); one
        // still waiting for its final answer (CANCEL racing a 200) does.
        let waiting = self.requests.values().any(|o| match o {
            Outstanding::Invite(leg) => self.leg(*leg).is_some_and(|l| l.dialog.is_none()),
            Outstanding::Refresh(r) => !r.answered,
            Outstanding::Ending | Outstanding::Relay(_) => true,
        });
        self.phase == Phase::Ending && (!waiting || self.timers[Timer::Linger as usize].is_none())
    }

    /// Where the call is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Its legs, leg 0 first.
    pub fn legs(&self) -> &[Leg<S>] {
        &self.legs
    }

    /// Every Call-ID the call's legs use (to unroute them when it is dropped).
    pub fn call_ids(&self) -> impl Iterator<Item = &str> {
        self.legs.iter().map(Leg::call_id)
    }

    // ------------------------------------------------------------- inputs

    /// A response to request `id` of this call.
    pub fn handle_response(&mut self, now: Instant, id: ReqId, resp: &Response) {
        let status = resp.status();
        let Some(out) = self.requests.get(&id) else { return };
        match out {
            Outstanding::Invite(leg) => {
                let leg = *leg;
                if status >= 300 {
                    self.requests.remove(&id);
                }
                self.fork_response(now, leg, resp);
            }
            Outstanding::Ending => {
                if status >= 200 {
                    self.requests.remove(&id);
                }
            }
            Outstanding::Relay(_) => self.relay_response(now, id, resp),
            Outstanding::Refresh(_) => self.refresh_response(now, id, resp),
        }
    }

    /// Request `id` failed without a final response (Timer B/F, transport
    /// error): it ends as if answered `status` (408 or 503).
    pub fn handle_request_failed(&mut self, now: Instant, id: ReqId, status: u16) {
        let Some(out) = self.requests.remove(&id) else { return };
        match out {
            Outstanding::Invite(leg) => {
                if self.leg(leg).is_some_and(|l| matches!(l.state, LegState::Calling | LegState::Early)) {
                    self.fork_failed(now, leg, status);
                }
            }
            Outstanding::Ending => {}
            Outstanding::Relay(r) => {
                if r.offer {
                    self.rollback_offer(r.from, r.to);
                }
                let resp =
                    Response::from_request(&r.request, status, crate::sip::message::status::reason_phrase(status));
                self.commands.push_back(Command::Respond { tsx: r.tsx, response: resp });
            }
            Outstanding::Refresh(r) if !r.answered => self.refresh_failed(now, r, status, None),
            Outstanding::Refresh(_) => {}
        }
    }

    /// The request our INVITE transaction `id` was for reached its end
    /// (the client transaction terminated): late answers can no longer come.
    pub fn handle_request_done(&mut self, id: ReqId) {
        self.requests.remove(&id);
    }

    /// The PBX cancelled its INVITE (the driver answered the CANCEL): 487
    /// to the INVITE, CANCEL to every fork.
    pub fn handle_cancel(&mut self, now: Instant) {
        if self.phase != Phase::Ringing {
            return;
        }
        debug!("caller cancelled");
        self.end_unanswered(now, 487, Outcome::Cancelled, None);
    }

    /// The node is stopping: an answered call ends with BYE on both legs,
    /// a ringing one with 503 to the caller and CANCEL to the forks; either
    /// way with its record (reason `node-stopped`) and its channel back.
    pub fn handle_shutdown(&mut self, now: Instant) {
        match self.phase {
            Phase::Ringing => self.end_unanswered(now, 503, Outcome::Failed, Some(NODE_STOPPED)),
            Phase::Answered => self.hang_up(now, Outcome::Failed, Some(NODE_STOPPED)),
            Phase::Ending => {}
        }
    }

    /// A leg's media stopped (no RTP or RTCP for the media timeout): the
    /// call ends on both legs with reason `media-timeout`, so a dead peer
    /// never holds a licensed channel.
    pub fn handle_media_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Answered => {
                debug!("media timeout: hanging up");
                self.hang_up(now, Outcome::Failed, Some(MEDIA_TIMEOUT));
            }
            Phase::Ringing => self.end_unanswered(now, 408, Outcome::Failed, Some(MEDIA_TIMEOUT)),
            Phase::Ending => {}
        }
    }

    /// Leg `leg`'s connection closed for good (a browser's WebSocket):
    /// nothing can reach it any more. Ringing, it is a fork that failed
    /// (`480`; no CANCEL can be sent); answered, the call ends with BYE on
    /// the other legs and reason `browser-gone`, so the PBX's channel is
    /// released at once rather than at the media timeout.
    pub fn handle_leg_gone(&mut self, now: Instant, leg: LegId) {
        let Some(l) = self.leg(leg) else { return };
        if l.role != Role::Uac {
            return;
        }
        match (self.phase, l.state) {
            (Phase::Ringing, LegState::Calling | LegState::Early) => {
                debug!(leg = leg.0, "fork's connection closed");
                self.fork_failed(now, leg, 480);
            }
            (Phase::Answered, LegState::Up) => {
                debug!(leg = leg.0, "answered leg's connection closed: hanging up");
                if let Some(l) = self.leg_mut(leg) {
                    l.state = LegState::Ended;
                    l.uas_2xx = None;
                }
                self.hang_up(now, Outcome::Completed, Some(BROWSER_GONE));
            }
            _ => {}
        }
    }

    /// Leg `from` sent an RFC 4733 digit the other leg takes no events
    /// for: it goes there as SIP INFO (`application/dtmf-relay`).
    pub fn handle_dtmf(&mut self, _now: Instant, from: LegId, digit: char, duration_ms: u32) {
        if self.phase != Phase::Answered {
            return;
        }
        let Some(to) = self.other_leg(from) else { return };
        let idx = leg_index(to);
        let peer = self.legs[idx].peer;
        let Some(d) = self.legs[idx].dialog.as_mut() else { return };
        let body = format!("Signal={digit}\r\nDuration={duration_ms}\r\n");
        let Ok(info) = d.request(Method::Info).body("application/dtmf-relay", bytes::Bytes::from(body)).build() else {
            return;
        };
        debug!(leg = to.0, %digit, "digit as INFO");
        let id = self.new_req(Outstanding::Ending);
        self.commands.push_back(Command::Request { id, leg: to, peer, request: info });
    }

    /// An INFO carrying a digit (`application/dtmf-relay`) from `from`: sent
    /// on as RFC 4733 events if the other leg takes them.
    fn dtmf_as_rtp(&mut self, from: LegId, req: &Request) -> bool {
        let Some(body) = body_of_request(req) else { return false };
        let ct = body.content_type.split(';').next().unwrap_or("").trim();
        if !ct.eq_ignore_ascii_case("application/dtmf-relay") {
            return false;
        }
        let Some((digit, duration)) = parse_dtmf_relay(&body.bytes) else { return false };
        let Some(to) = self.other_leg(from) else { return false };
        self.media.send_dtmf(to, digit, duration)
    }

    /// A request (not ACK, not CANCEL) inside one of the call's dialogs,
    /// on server transaction `tsx`.
    pub fn handle_request(&mut self, now: Instant, tsx: S, req: &Request) {
        let Some(leg) = self.leg_of_request(req) else {
            let r = Response::from_request(req, 481, "Call/Transaction Does Not Exist");
            self.commands.push_back(Command::Respond { tsx, response: r });
            return;
        };
        let checked = self.legs[leg_index(leg)].dialog.as_mut().map(|d| d.accept_request(req));
        match checked {
            Some(Err(crate::sip::dialog::DialogError::CSeqOrder { .. })) => {
                let r = Response::from_request(req, 500, "Server Internal Error");
                self.commands.push_back(Command::Respond { tsx, response: r });
                return;
            }
            Some(Err(_)) | None => {
                let r = Response::from_request(req, 481, "Call/Transaction Does Not Exist");
                self.commands.push_back(Command::Respond { tsx, response: r });
                return;
            }
            Some(Ok(())) => {}
        }
        match req.method() {
            Method::Bye => {
                self.commands.push_back(Command::Respond { tsx, response: Response::from_request(req, 200, "OK") });
                if let Some(l) = self.leg_mut(leg) {
                    l.state = LegState::Ended;
                    l.uas_2xx = None;
                }
                if self.phase == Phase::Answered {
                    debug!(leg = leg.0, "hung up");
                    self.hang_up(now, Outcome::Completed, None);
                }
            }
            Method::Options => {
                let mut r = Response::from_request(req, 200, "OK");
                let _ = r.headers_mut().push(HeaderName::Allow, ALLOW);
                self.commands.push_back(Command::Respond { tsx, response: r });
            }
            Method::Info if self.phase == Phase::Answered && self.dtmf_as_rtp(leg, req) => {
                self.commands.push_back(Command::Respond { tsx, response: Response::from_request(req, 200, "OK") });
            }
            Method::Invite | Method::Update if self.phase == Phase::Answered => {
                self.handle_session_request(now, leg, tsx, req);
            }
            Method::Info if self.phase == Phase::Answered => self.relay_request(leg, tsx, req, None),
            Method::Invite | Method::Update | Method::Info => {
                let r = Response::from_request(req, 481, "Call/Transaction Does Not Exist");
                self.commands.push_back(Command::Respond { tsx, response: r });
            }
            _ => {
                let mut r = Response::from_request(req, 501, "Not Implemented");
                let _ = r.headers_mut().push(HeaderName::Allow, ALLOW);
                self.commands.push_back(Command::Respond { tsx, response: r });
            }
        }
    }

    /// An ACK for a 2xx of ours.
    pub fn handle_ack(&mut self, now: Instant, req: &Request) {
        let Some(leg) = self.leg_of_request(req) else { return };
        let seq = req.headers().cseq().map(|c| c.seq).unwrap_or(0);
        let idx = leg_index(leg);
        let acked = self.legs[idx].uas_2xx.as_ref().is_some_and(|(r, _)| r.is_acked_by(seq));
        if !acked {
            return; // a retransmitted ACK, or one for an older 2xx
        }
        self.legs[idx].uas_2xx = None;
        if let Some(d) = self.legs[idx].dialog.as_mut() {
            let _ = d.accept_request(req);
        }
        if std::mem::take(&mut self.legs[idx].local_offer) {
            // The answer to the description we offered ourselves in our 2xx
            // to the leg's offerless refresh: the media session learns it
            // for that leg alone. Should
            // the leg have changed its session in this answer, the other leg
            // is not re-negotiated (a known limit: a refresh is not meant to
            // change anything, and an answer cannot be refused).
            self.legs[idx].oa = OfferAnswer::Stable;
            match body_of_request(req).filter(Body::is_sdp) {
                Some(answer) => {
                    if let Err(e) = self.media.refreshed(leg, &answer) {
                        debug!(leg = leg.0, error = %e, "answer to our refresh offer not usable");
                    }
                    self.heard(leg, &answer);
                }
                None => debug!(leg = leg.0, "ACK without the answer to our offer"),
            }
            return;
        }
        // We offered in our 2xx: the ACK carries the answer, which the
        // other leg's held ACK is waiting for.
        if let OfferAnswer::OfferSent(Placement::Response) = self.legs[idx].oa {
            self.legs[idx].oa = OfferAnswer::Stable;
            let Some(other) = self.other_leg(leg) else { return };
            let answer = body_of_request(req).filter(Body::is_sdp);
            let body = match answer {
                Some(a) => match self.media.answer(leg, other, &a) {
                    Ok(b) => {
                        self.heard(leg, &a);
                        Some(b)
                    }
                    Err(e) => {
                        debug!(error = %e, "answer in ACK not usable: hanging up");
                        self.send_held_ack(other, None);
                        self.hang_up(now, Outcome::Failed, Some(e.token()));
                        return;
                    }
                },
                None => None,
            };
            if body.is_none() {
                debug!(leg = leg.0, "ACK without the answer to our offer");
            }
            self.send_held_ack(other, body);
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.legs.len() {
            let Some((r, resp)) = self.legs[i].uas_2xx.as_mut() else { continue };
            if r.poll_timeout() > now {
                continue;
            }
            match r.handle_timeout(now) {
                Some(Uas2xxEvent::Retransmit) => {
                    let response = resp.clone();
                    self.commands.push_back(Command::Retransmit { peer: self.legs[i].peer, response });
                }
                Some(Uas2xxEvent::NoAck) => {
                    debug!(leg = i, "no ACK for our 2xx: hanging up");
                    self.legs[i].uas_2xx = None;
                    // §13.3.1.4: the dialog is confirmed, then ended by BYE.
                    self.hang_up(now, Outcome::Failed, Some("no-ack"));
                }
                None => {}
            }
        }
        if self.due(Timer::Ring, now) {
            self.set_timer(Timer::Ring, None);
            let outbound = self.outbound.as_ref().map(|o| o.responded);
            if self.phase == Phase::Ringing && outbound == Some(false) {
                // The trunk gave no answer at all: the next one. No CANCEL
                // (§9.1: not before a provisional response); should it
                // answer late, its 2xx is hung up.
                debug!("no answer from the trunk within its INVITE timeout");
                if let Some(o) = self.outbound.as_mut() {
                    if let Some(cur) = o.current.take()
                        && let Some(l) = self.legs.get_mut(leg_index(cur))
                    {
                        l.state = LegState::Ended;
                        self.media.close_leg(cur);
                    }
                    o.last_failure = 503;
                }
                self.next_trunk(now);
            } else if self.phase == Phase::Ringing {
                if self.queue.is_empty() {
                    debug!("no answer within the ring timeout");
                    self.end_unanswered(now, 480, Outcome::NoAnswer, Some("unavailable"));
                } else {
                    self.cancel_forks(None);
                    self.advance_or_fail(now);
                }
            }
        }
        if self.due(Timer::MaxDuration, now) {
            self.set_timer(Timer::MaxDuration, None);
            debug!("maximum call duration reached");
            self.hang_up(now, Outcome::MaxDuration, None);
        }
        if self.phase == Phase::Answered {
            self.session_timeouts(now);
        }
        if self.due(Timer::Linger, now) {
            self.set_timer(Timer::Linger, None);
        }
    }

    // ------------------------------------------------------------ forking

    fn start_fork(&mut self, t: ForkTarget) {
        let Ok(uri) = Uri::parse(&t.contact) else {
            debug!(contact = %t.contact, "unusable contact skipped");
            return;
        };
        let origin = &self.legs[0];
        let record = self.record.as_ref();
        let caller = record.and_then(|r| r.caller.clone()).unwrap_or_else(|| "anonymous".into());
        let display = origin
            .invite
            .headers()
            .from()
            .ok()
            .and_then(|f| f.display_name().map(|d| d.text().replace('"', "")))
            .filter(|d| !d.is_empty());
        let from_tag = self.ids.tag();
        let mut from = String::with_capacity(
            display.as_ref().map_or(0, |d| d.len() + 3) + caller.len() + self.domain.len() + from_tag.len() + 13,
        );
        if let Some(d) = &display {
            from.push('"');
            from.push_str(d);
            from.push_str("\" ");
        }
        for part in ["<sip:", caller.as_str(), "@", self.domain.as_str(), ">;tag=", from_tag.as_str()] {
            from.push_str(part);
        }
        let to = ["<sip:", t.user.as_str(), "@", self.domain.as_str(), ">"].concat();
        self.place_leg(NewLeg {
            uri,
            from,
            from_tag,
            to,
            kind: LegKind::Phone,
            user: t.user,
            peer: t.peer,
            extra: Vec::new(),
            auth: None,
        });
    }

    /// Places a UAC leg: its INVITE carries the origin's offer through the
    /// media session. `None` when the offer could not be carried (the
    /// failure is kept for the final answer) or the INVITE not built.
    fn place_leg(&mut self, n: NewLeg) -> Option<LegId> {
        let idx = u16::try_from(self.legs.len()).ok()?;
        let id = LegId(idx);
        let call_id = self.ids.call_id();
        // A target registered over WebSocket is a browser.
        self.media.add_leg(id, n.peer.target.addr, n.peer.local, n.peer.target.transport.is_websocket());
        let offer = body_of_request(&self.legs[0].invite);
        let body = match offer {
            Some(o) if o.is_sdp() => match self.media.offer(LegId::ORIGIN, id, &o) {
                Ok(b) => Some(b),
                Err(e) => {
                    debug!(error = %e, "offer not carried to the new leg");
                    self.best_failure = pick_failure(self.best_failure, e.status());
                    self.media_failure = Some((e.status(), e.token()));
                    return None;
                }
            },
            other => other,
        };
        let mut b = Request::builder(Method::Invite, n.uri)
            .header(HeaderName::MaxForwards, "70")
            .header(HeaderName::From, n.from)
            .header(HeaderName::To, n.to)
            .header(HeaderName::CallId, &call_id)
            .header(HeaderName::CSeq, "1 INVITE")
            .header(HeaderName::Contact, n.peer.contact())
            .header(HeaderName::Allow, ALLOW)
            .header(HeaderName::Supported, "timer")
            // RFC 4028 §7.1: this leg's own session timer, whatever the
            // caller asked for on its leg.
            .header(HeaderName::SessionExpires, self.config.session_expires.as_secs().to_string())
            .header(HeaderName::MinSe, self.config.min_se.as_secs().to_string())
            .header(HeaderName::UserAgent, crate::sip::PRODUCT);
        for (name, value) in &n.extra {
            if let Some(name) = HeaderName::from_bytes(name.as_bytes()) {
                b = b.header(name, value);
            }
        }
        let has_offer = body.as_ref().is_some_and(Body::is_sdp);
        let sent_sdp = body.clone().filter(Body::is_sdp);
        if let Some(body) = body {
            b = b.body(&body.content_type, body.bytes);
        }
        let Ok(invite) = b.build() else {
            debug!("INVITE not built");
            self.media.close_leg(id);
            return None;
        };
        let req = self.new_req(Outstanding::Invite(id));
        debug!(leg = id.0, user = %n.user, "ringing");
        self.legs.push(Leg {
            id,
            role: Role::Uac,
            kind: n.kind,
            peer: n.peer,
            user: Some(n.user),
            state: LegState::Calling,
            invite: invite.clone(),
            tsx: None,
            local_tag: n.from_tag,
            early: Vec::new(),
            dialog: None,
            oa: if has_offer { OfferAnswer::OfferSent(Placement::Invite) } else { OfferAnswer::Stable },
            uas_2xx: None,
            held_ack: None,
            last_ack: None,
            has_media: has_offer,
            session: None,
            min_se: self.config.min_se,
            allows_update: false,
            retried_422: false,
            remote_origin: None,
            sent_sdp,
            local_offer: false,
            auth: n.auth,
        });
        self.commands.push_back(Command::Route { call_id });
        self.commands.push_back(Command::Request { id: req, leg: id, peer: n.peer, request: invite });
        Some(id)
    }

    /// Outbound: the next trunk, or the call's failure when none is left.
    fn next_trunk(&mut self, now: Instant) {
        loop {
            let Some(a) = self.outbound.as_mut().and_then(|o| o.attempts.pop_front()) else {
                self.fail_if_nothing_rings(now);
                return;
            };
            let Ok(uri) = Uri::parse(&a.uri) else {
                debug!(trunk = %a.trunk, uri = %a.uri, "unusable trunk URI skipped");
                continue;
            };
            let from_tag = self.ids.tag();
            let placed = self.place_leg(NewLeg {
                uri,
                from: format!("{};tag={from_tag}", a.from),
                from_tag,
                to: a.to.clone(),
                kind: LegKind::Trunk,
                user: a.trunk.clone(),
                peer: a.peer,
                extra: a.extra.clone(),
                auth: a.credentials.clone().map(|credentials| LegAuth { credentials, tries: 0 }),
            });
            let Some(id) = placed else {
                // The offer cannot be carried: no other trunk changes that.
                if let Some(o) = self.outbound.as_mut() {
                    o.attempts.clear();
                }
                self.fail_if_nothing_rings(now);
                return;
            };
            debug!(trunk = %a.trunk, leg = id.0, "outbound call tried on trunk");
            if let Some(o) = self.outbound.as_mut() {
                o.current = Some(id);
                o.responded = false;
                o.answer_timeout = a.answer_timeout;
                o.invite_timeout = a.invite_timeout;
            }
            if let Some(rec) = self.record.as_mut() {
                rec.trunk = Some(a.trunk);
            }
            self.set_timer(Timer::Ring, Some(now + a.invite_timeout));
            return;
        }
    }

    /// A trunk's 401/407: the INVITE again with our credentials (new CSeq,
    /// same Call-ID and From tag). Once per leg, unless the PBX says our
    /// answer only had a stale nonce.
    fn answer_challenge(&mut self, leg: LegId, resp: &Response) -> bool {
        if self.phase != Phase::Ringing {
            return false;
        }
        let Some(l) = self.legs.get_mut(leg_index(leg)) else { return false };
        if !matches!(l.state, LegState::Calling | LegState::Early) {
            return false;
        }
        let Some(auth) = l.auth.as_mut() else { return false };
        let (list, header) = if resp.status() == 401 {
            (resp.headers().www_authenticate(), HeaderName::Authorization)
        } else {
            (resp.headers().proxy_authenticate(), HeaderName::ProxyAuthorization)
        };
        let Some(challenge) = list.ok().and_then(|l| crate::sip::digest::Challenge::pick(l.iter())) else {
            debug!(leg = leg.0, "challenge we cannot answer");
            return false;
        };
        if auth.tries >= 1 && !challenge.stale {
            tracing::warn!(leg = leg.0, user = %auth.credentials.username, realm = %challenge.realm, "the PBX refused our credentials");
            return false;
        }
        if auth.tries >= 3 {
            return false;
        }
        auth.tries += 1;
        let uri = l.invite.uri().as_str().to_owned();
        let value = challenge.answer(
            "INVITE",
            &uri,
            &auth.credentials.username,
            &auth.credentials.password,
            &self.ids.cnonce(),
        );
        let Ok(seq) = l.invite.headers().cseq().map(|c| c.seq.wrapping_add(1)) else { return false };
        let mut invite = l.invite.clone();
        let h = invite.headers_mut();
        h.remove_all(&HeaderName::Authorization);
        h.remove_all(&HeaderName::ProxyAuthorization);
        if h.set(HeaderName::CSeq, crate::sip::text::cseq(seq, "INVITE")).and_then(|()| h.push(header, value)).is_err()
        {
            return false;
        }
        debug!(leg = leg.0, status = resp.status(), "challenge answered: INVITE sent again");
        l.invite = invite.clone();
        l.state = LegState::Calling;
        l.early.clear();
        let peer = l.peer;
        let id = self.new_req(Outstanding::Invite(leg));
        self.commands.push_back(Command::Request { id, leg, peer, request: invite });
        true
    }

    fn fork_response(&mut self, now: Instant, leg: LegId, resp: &Response) {
        let status = resp.status();
        // Outbound: the trunk answered something, so it is alive: from now
        // on it rings until its answer timeout, no longer its INVITE
        // timeout.
        if let Some(o) = self.outbound.as_mut()
            && o.current == Some(leg)
            && !o.responded
            && self.phase == Phase::Ringing
        {
            o.responded = true;
            let at = now + o.answer_timeout;
            self.set_timer(Timer::Ring, Some(at));
        }
        match status {
            100 => {}
            101..=199 => self.fork_provisional(leg, resp),
            200..=299 => self.fork_answered(now, leg, resp),
            422 if self.retry_after_422(leg, resp) => {}
            401 | 407 if self.answer_challenge(leg, resp) => {
                // A new INVITE: its trunk has its INVITE timeout again.
                if let Some(o) = self.outbound.as_mut()
                    && o.current == Some(leg)
                {
                    o.responded = false;
                    let at = now + o.invite_timeout;
                    self.set_timer(Timer::Ring, Some(at));
                }
            }
            _ => {
                if self.leg(leg).is_some_and(|l| matches!(l.state, LegState::Calling | LegState::Early)) {
                    self.fork_failed(now, leg, status);
                }
            }
        }
    }

    /// RFC 4028 §7.1: a phone that finds our session interval too short
    /// says its Min-SE in a 422; the INVITE goes again, once, on that leg
    /// asking for that much (new CSeq, same Call-ID and From tag), while
    /// the other forks ring on. A second 422, or one without a Min-SE above
    /// what we asked, fails the fork like any other final answer.
    fn retry_after_422(&mut self, leg: LegId, resp: &Response) -> bool {
        if self.phase != Phase::Ringing {
            return false;
        }
        let Some(min) = session_timer::min_se(resp.headers()) else { return false };
        let interval = self.config.session_expires.max(min);
        let Some(l) = self.legs.get_mut(leg_index(leg)) else { return false };
        let asked = session_timer::session_expires(l.invite.headers()).map(|se| se.delta);
        if l.retried_422 || !matches!(l.state, LegState::Calling | LegState::Early) || asked >= Some(min) {
            return false;
        }
        let Ok(seq) = l.invite.headers().cseq().map(|c| c.seq.wrapping_add(1)) else { return false };
        let mut invite = l.invite.clone();
        let h = invite.headers_mut();
        let set = h
            .set(HeaderName::CSeq, crate::sip::text::cseq(seq, "INVITE"))
            .and_then(|()| h.set(HeaderName::SessionExpires, interval.as_secs().to_string()))
            .and_then(|()| h.set(HeaderName::MinSe, min.as_secs().to_string()));
        if set.is_err() {
            return false;
        }
        debug!(leg = leg.0, min_se = min.as_secs(), "422: INVITE sent again");
        l.invite = invite.clone();
        l.retried_422 = true;
        l.min_se = min;
        l.state = LegState::Calling;
        l.early.clear();
        let peer = l.peer;
        let id = self.new_req(Outstanding::Invite(leg));
        self.commands.push_back(Command::Request { id, leg, peer, request: invite });
        true
    }

    fn fork_provisional(&mut self, leg: LegId, resp: &Response) {
        let idx = leg_index(leg);
        let Some(l) = self.legs.get_mut(idx) else { return };
        if matches!(l.state, LegState::Ended | LegState::Failed(_)) {
            // A trunk given up on (its INVITE timeout) that wakes up: its
            // ringing is not the call's; a late 2xx is hung up.
            return;
        }
        if l.state == LegState::Calling {
            l.state = LegState::Early;
        }
        if let Ok(d) = Dialog::uac(&l.invite, resp)
            && !l.early.iter().any(|e| e.id() == d.id())
        {
            l.early.push(d);
        }
        if self.phase != Phase::Ringing {
            return;
        }
        let status = resp.status();
        // Early media: an SDP in a 1xx previews the answer to our offer.
        let body = body_of_response(resp).and_then(|b| {
            if !b.is_sdp() {
                return Some(b);
            }
            if matches!(self.legs[0].oa, OfferAnswer::OfferReceived(Placement::Invite)) {
                self.media.answer(leg, LegId::ORIGIN, &b).ok()
            } else {
                None
            }
        });
        let mut r = self.origin_response(status, &resp.reason_lossy());
        let _ = r.headers_mut().push(HeaderName::Contact, self.legs[0].peer.contact());
        if let Some(b) = body {
            set_response_body(&mut r, b);
        }
        if let Some(tsx) = self.legs[0].tsx.clone() {
            self.legs[0].state = LegState::Early;
            self.commands.push_back(Command::Respond { tsx, response: r });
        }
    }

    fn fork_answered(&mut self, now: Instant, leg: LegId, resp: &Response) {
        let idx = leg_index(leg);
        let Some(l) = self.legs.get_mut(idx) else { return };
        let remote_tag = resp.headers().to_tag().ok().flatten();
        let same_dialog = l.dialog.as_ref().is_some_and(|d| Some(d.id().remote_tag.as_str()) == remote_tag);
        if same_dialog {
            // A retransmitted 2xx: ACK it again (unless the ACK still waits
            // for its answer).
            if let Some((seq, body)) = l.last_ack.clone() {
                self.send_ack(leg, seq, body);
            }
            return;
        }
        let Ok(mut dialog) = Dialog::uac(&l.invite, resp) else {
            debug!(leg = leg.0, "2xx without a usable dialog ignored");
            return;
        };
        if let Some(pos) = l.early.iter().position(|e| e.id() == dialog.id()) {
            let mut early = l.early.remove(pos);
            early.confirm(Some(resp));
            dialog = early;
        }
        let invite_seq = l.invite.headers().cseq().map(|c| c.seq).unwrap_or(1);
        if self.phase != Phase::Ringing
            || l.dialog.is_some()
            || matches!(l.state, LegState::Ended | LegState::Failed(_))
        {
            // Another fork (or another dialog of this fork) answered first,
            // or the call ended meanwhile: ACK and BYE this dialog.
            debug!(leg = leg.0, "late answer hung up");
            let peer = l.peer;
            if let Ok(ack) = dialog.ack(invite_seq).build() {
                self.commands.push_back(Command::Ack { peer, request: ack });
            }
            if let Ok(bye) = dialog.request(Method::Bye).build() {
                let id = self.new_req(Outstanding::Ending);
                self.commands.push_back(Command::Request { id, leg, peer, request: bye });
            }
            if self.legs[idx].dialog.is_none() {
                self.legs[idx].state = LegState::Ended;
            }
            return;
        }
        l.dialog = Some(dialog);
        l.early.clear();
        l.state = LegState::Up;
        l.retried_422 = false;
        if let Some(update) = session_timer::allows_update(resp.headers()) {
            l.allows_update = update;
        }
        // RFC 4028 §7.2: the phone's 2xx sets this leg's timer; without
        // Session-Expires the leg has none.
        l.session = session_timer::from_uac_response(resp.headers(), l.min_se)
            .map(|(interval, refresher)| SessionTimer::start(now, interval, refresher));
        if let Some(o) = body_of_response(resp).as_ref().and_then(SdpOrigin::of) {
            l.remote_origin = Some(o);
        }
        let user = l.user.clone();
        // Offer/answer: our INVITE offered, so this 2xx answers; or it was
        // offerless, so this 2xx offers and the answer comes in the PBX's ACK.
        let body = body_of_response(resp);
        let our_offer = matches!(l.oa, OfferAnswer::OfferSent(Placement::Invite));
        let translated = match body {
            Some(b) if b.is_sdp() && our_offer => {
                l.oa = OfferAnswer::Stable;
                self.media.answer(leg, LegId::ORIGIN, &b).map(Some)
            }
            Some(b) if b.is_sdp() => {
                l.oa = OfferAnswer::OfferReceived(Placement::Response);
                l.has_media = true;
                self.media.offer(leg, LegId::ORIGIN, &b).map(Some)
            }
            other => Ok(other),
        };
        let l = &mut self.legs[idx];
        let offer_to_origin = l.oa == OfferAnswer::OfferReceived(Placement::Response);
        let body = match translated {
            Ok(b) => b,
            Err(e) => {
                debug!(leg = leg.0, error = %e, "answer not carried: fork dropped");
                let peer = l.peer;
                if let Some(d) = l.dialog.as_mut() {
                    if let Ok(ack) = d.ack(invite_seq).build() {
                        self.commands.push_back(Command::Ack { peer, request: ack });
                    }
                    if let Ok(bye) = d.request(Method::Bye).build() {
                        let id = self.new_req(Outstanding::Ending);
                        self.commands.push_back(Command::Request { id, leg, peer, request: bye });
                    }
                }
                self.legs[idx].state = LegState::Ended;
                self.best_failure = pick_failure(self.best_failure, e.status());
                self.media_failure = Some((e.status(), e.token()));
                self.advance_or_fail(now);
                return;
            }
        };
        if offer_to_origin {
            l.held_ack = Some(invite_seq);
        } else {
            self.send_ack(leg, invite_seq, None);
        }
        // Answer the PBX.
        self.phase = Phase::Answered;
        self.answered_by = Some(leg);
        let mut r = self.origin_response(200, "OK");
        let h = r.headers_mut();
        let _ = h.push(HeaderName::Contact, self.legs[0].peer.contact());
        let _ = h.push(HeaderName::Allow, ALLOW);
        // Here, not in the driver: the retransmissions repeat it byte for byte.
        let _ = h.push(HeaderName::Server, crate::sip::PRODUCT);
        push_session_headers(h, self.origin_session.as_ref());
        let sent_sdp = body.clone().filter(Body::is_sdp);
        if let Some(b) = body {
            set_response_body(&mut r, b);
        }
        let session = self.origin_session.map(|n| SessionTimer::start(now, n.interval, n.refresher));
        let origin = &mut self.legs[0];
        origin.state = LegState::Up;
        origin.session = session;
        origin.sent_sdp = sent_sdp;
        origin.oa = if offer_to_origin { OfferAnswer::OfferSent(Placement::Response) } else { OfferAnswer::Stable };
        let peer = origin.peer;
        let mut d = Dialog::uas(&origin.invite, &origin.local_tag, || origin_fallback(&peer));
        if let Ok(d) = d.as_mut() {
            d.confirm(None);
        }
        origin.dialog = d.ok();
        let seq = origin.invite.headers().cseq().map(|c| c.seq).unwrap_or(1);
        origin.uas_2xx = Some((Uas2xx::new(now, seq, self.config.t1, self.config.t2), r.clone()));
        if let Some(tsx) = origin.tsx.take() {
            self.commands.push_back(Command::Respond { tsx, response: r });
        }
        let unix = self.unix(now);
        let outbound = self.outbound.is_some();
        if let Some(rec) = self.record.as_mut() {
            rec.answered_at = Some(unix);
            // Outbound, the portal user is the caller (set at admission)
            // and the leg's name is the trunk's.
            if !outbound {
                rec.target_user = user;
            }
        }
        self.set_timer(Timer::Ring, None);
        self.set_timer(Timer::MaxDuration, Some(now + self.max_duration));
        self.cancel_forks(Some(leg));
    }

    fn fork_failed(&mut self, now: Instant, leg: LegId, status: u16) {
        if let Some(l) = self.leg_mut(leg) {
            l.state = LegState::Failed(status);
            l.early.clear();
        }
        self.close_media(leg);
        self.best_failure = pick_failure(self.best_failure, status);
        if let Some(o) = self.outbound.as_mut()
            && o.current == Some(leg)
        {
            // A challenge we could not answer is the trunk's failure (its
            // credentials), not the callee's answer.
            let trunk_failure = crate::b2bua::outbound::fails_over(status) || matches!(status, 401 | 407);
            // The user hears a 6xx as it is; the trunks' own failures as
            // 503 trunks-failed.
            o.last_failure = if trunk_failure && status < 600 { 503 } else { status };
            if trunk_failure {
                debug!(leg = leg.0, status, "trunk failed: next trunk");
            } else {
                // The callee's (or the number's) answer: another trunk
                // would give the same.
                o.attempts.clear();
            }
            o.current = None;
        }
        self.advance_or_fail(now);
    }

    /// CANCELs every fork still ringing (except `keep`).
    fn cancel_forks(&mut self, keep: Option<LegId>) {
        for i in 1..self.legs.len() {
            let l = &self.legs[i];
            if Some(l.id) == keep || !matches!(l.state, LegState::Calling | LegState::Early) {
                continue;
            }
            // §9.1: Request-URI, Call-ID, From, To and CSeq number of the
            // INVITE; the driver gives it the INVITE's Via (same branch).
            let h = l.invite.headers();
            let mut b = Request::builder(Method::Cancel, l.invite.uri().clone());
            for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
                if let Some(v) = h.get(&name).and_then(|v| v.value_str()) {
                    b = b.header(name, v);
                }
            }
            let seq = h.cseq().map(|c| c.seq).unwrap_or(1);
            b = b.header(HeaderName::CSeq, crate::sip::text::cseq(seq, "CANCEL")).header(HeaderName::MaxForwards, "70");
            let (peer, lid) = (l.peer, l.id);
            self.legs[i].state = LegState::Ended;
            self.close_media(lid);
            if let Ok(req) = b.build() {
                let id = self.new_req(Outstanding::Ending);
                self.commands.push_back(Command::Request { id, leg: lid, peer, request: req });
            }
        }
    }

    /// Nothing rings any more: ring the next group, or fail the call.
    fn advance_or_fail(&mut self, now: Instant) {
        if self.phase != Phase::Ringing {
            return;
        }
        if self.legs[1..].iter().any(|l| matches!(l.state, LegState::Calling | LegState::Early)) {
            return;
        }
        if self.outbound.is_some() {
            self.next_trunk(now);
            return;
        }
        if let Some(next) = self.queue.pop_front() {
            self.set_timer(Timer::Ring, Some(now + self.ring_timeout));
            for t in next {
                self.start_fork(t);
            }
        }
        self.fail_if_nothing_rings(now);
    }

    /// When no fork is left to ring: answer the PBX with the best failure.
    fn fail_if_nothing_rings(&mut self, now: Instant) {
        if self.phase != Phase::Ringing {
            return;
        }
        let live = self.legs[1..].iter().any(|l| matches!(l.state, LegState::Calling | LegState::Early | LegState::Up));
        if live {
            return;
        }
        if !self.queue.is_empty() {
            // Every fork of this group failed at once: try the next.
            self.advance_or_fail(now);
            return;
        }
        if let Some(o) = &self.outbound {
            let (status, outcome, reason) = match (o.last_failure, self.media_failure) {
                (0, Some((s, token))) => (s, Outcome::Failed, Some(token)),
                (0 | 503, _) => (503, Outcome::Failed, Some(TRUNKS_FAILED)),
                (486 | 600, _) => (486, Outcome::Busy, None),
                (603, _) => (603, Outcome::Declined, None),
                (480, _) => (480, Outcome::Unavailable, None),
                (s, _) => (s, Outcome::Failed, None),
            };
            self.end_unanswered(now, status, outcome, reason);
            return;
        }
        let media = self.media_failure.filter(|(s, _)| *s == self.best_failure).map(|(_, t)| t);
        let (status, outcome, reason) = match self.best_failure {
            s @ (488 | 503) if media.is_some() => (s, Outcome::Failed, media),
            486 | 600 => (486, Outcome::Busy, None),
            603 => (603, Outcome::Declined, None),
            488 => (488, Outcome::Failed, Some("no-common-codec")),
            s @ 600..=699 => (s, Outcome::Failed, None),
            _ => (480, Outcome::Unavailable, Some("unavailable")),
        };
        self.end_unanswered(now, status, outcome, reason);
    }

    /// Ends a call never answered: final response to the PBX, CANCEL forks.
    fn end_unanswered(&mut self, now: Instant, status: u16, outcome: Outcome, reason: Option<&'static str>) {
        let r = self.unanswered_response(status, reason);
        self.end_unanswered_with(now, r, outcome, reason);
    }

    /// The final answer to the PBX's INVITE of a call never answered, with
    /// its `Warning: 399` when a reason is known.
    fn unanswered_response(&self, status: u16, reason: Option<&'static str>) -> Response {
        let mut r = self.origin_response(status, crate::sip::message::status::reason_phrase(status));
        if let Some(reason) = reason {
            let detail = match reason {
                NODE_STOPPED => "node stopping",
                "media-ports-exhausted" => "no media ports free",
                "no-common-codec" => "no codec in common",
                MEDIA_TIMEOUT => "no media",
                TRUNKS_FAILED => "no trunk to the PBX answered",
                SESSION_INTERVAL_TOO_SMALL => "session interval too small",
                _ => "no user answered",
            };
            let _ = r
                .headers_mut()
                .push(HeaderName::Warning, format!("399 {} \"{reason}: {detail}\"", self.config.warning_host));
        }
        r
    }

    /// [`Self::end_unanswered`] with the final response `r` made already.
    fn end_unanswered_with(&mut self, now: Instant, r: Response, outcome: Outcome, reason: Option<&'static str>) {
        let status = r.status();
        if let Some(tsx) = self.legs[0].tsx.take() {
            self.commands.push_back(Command::Respond { tsx, response: r });
        }
        self.legs[0].state = LegState::Failed(status);
        self.cancel_forks(None);
        self.finish(now, outcome, status, reason);
    }

    /// Ends an answered call: BYE on every leg still up.
    fn hang_up(&mut self, now: Instant, outcome: Outcome, reason: Option<&'static str>) {
        if self.phase == Phase::Ending {
            return;
        }
        for i in 0..self.legs.len() {
            if self.legs[i].state != LegState::Up {
                continue;
            }
            let peer = self.legs[i].peer;
            let leg = self.legs[i].id;
            // A 2xx whose ACK waits for the answer is ACKed first, so the
            // peer's dialog is confirmed before its BYE (§13.2.2.4).
            if self.legs[i].held_ack.is_some() {
                self.send_held_ack(leg, None);
            }
            self.legs[i].state = LegState::Ended;
            self.legs[i].uas_2xx = None;
            let bye = self.legs[i].dialog.as_mut().and_then(|d| d.request(Method::Bye).build().ok());
            if let Some(bye) = bye {
                let id = self.new_req(Outstanding::Ending);
                self.commands.push_back(Command::Request { id, leg, peer, request: bye });
            }
        }
        self.cancel_forks(None);
        self.finish(now, outcome, 200, reason);
    }

    /// The outcome is known: record, channel back, then linger until our
    /// last requests are answered.
    fn finish(&mut self, now: Instant, outcome: Outcome, status: u16, reason: Option<&'static str>) {
        self.phase = Phase::Ending;
        self.timers = [None; TIMERS];
        for l in &mut self.legs {
            l.session = None;
        }
        self.set_timer(Timer::Linger, Some(now + self.config.t1 * 64));
        // Every leg, given a body or not: the session may hold ports for
        // legs still waiting for theirs (closing is idempotent).
        for i in 0..self.legs.len() {
            let id = self.legs[i].id;
            self.legs[i].has_media = false;
            self.media.close_leg(id);
        }
        // Requests still being relayed get their final answer now, so no
        // server transaction is left waiting for one.
        for o in self.requests.values() {
            if let Outstanding::Relay(r) = o {
                let (status, phrase) = if *r.request.method() == Method::Invite {
                    (487, "Request Terminated")
                } else {
                    (481, "Call/Transaction Does Not Exist")
                };
                let response = Response::from_request(&r.request, status, phrase);
                self.commands.push_back(Command::Respond { tsx: r.tsx.clone(), response });
            }
        }
        let unix = self.unix(now);
        if let Some(mut rec) = self.record.take() {
            self.commands
                .push_back(Command::ReleaseChannel { lease_id: self.lease_id.clone(), portal: rec.portal_id.clone() });
            rec.outcome = outcome.as_str().into();
            rec.sip_status = Some(i64::from(status));
            rec.reason = reason.map(str::to_owned);
            rec.ended_at = Some(unix);
            self.commands.push_back(Command::Record(Box::new(rec)));
        }
    }

    // ----------------------------------------------- in-dialog relaying

    /// A re-INVITE or UPDATE from `leg`: 422 when it asks for a session
    /// interval below our Min-SE, 491 when another offer is in progress,
    /// answered here when it only refreshes the session, else relayed to
    /// the other leg.
    fn handle_session_request(&mut self, now: Instant, leg: LegId, tsx: S, req: &Request) {
        let idx = leg_index(leg);
        if let Some(update) = session_timer::allows_update(req.headers()) {
            self.legs[idx].allows_update = update;
        }
        let current = self.legs[idx].session;
        let session = match session_timer::negotiate_uas(
            req.headers(),
            current.as_ref(),
            self.config.session_expires,
            self.config.min_se,
        ) {
            Ok(s) => s,
            Err(too_small) => {
                let mut r = Response::from_request(req, 422, crate::sip::message::status::reason_phrase(422));
                let _ = r.headers_mut().push(HeaderName::MinSe, too_small.min_se.as_secs().to_string());
                self.commands.push_back(Command::Respond { tsx, response: r });
                return;
            }
        };
        let body = body_of_request(req);
        let negotiating = *req.method() == Method::Invite || body.as_ref().is_some_and(Body::is_sdp);
        if negotiating && self.negotiation_in_progress() {
            let mut r = Response::from_request(req, 491, "Request Pending");
            let _ = r.headers_mut().push(HeaderName::RetryAfter, "1");
            self.commands.push_back(Command::Respond { tsx, response: r });
            return;
        }
        match self.local_answer(leg, req.method(), body.as_ref()) {
            Some(answer) => self.answer_refresh(now, leg, tsx, req, session, answer),
            None => self.relay_request(leg, tsx, req, session),
        }
    }

    /// Whether a re-INVITE or UPDATE from `leg` with `body` only refreshes
    /// the session, and what it is answered with here:
    ///
    /// - an UPDATE without body: a 2xx without body;
    /// - a re-INVITE without body: a 2xx offering the description the media
    ///   session last gave the leg (its answer comes in the ACK);
    /// - an offer whose `o=` session id and version are those of the last
    ///   description the leg sent us (RFC 3264 §8: nothing changed): a 2xx
    ///   answering with the description the media session last gave it.
    ///
    /// `None` (relay it) for a changed session, a body that is no SDP, or
    /// when the media session keeps no description of its own
    /// ([`Passthrough`](super::media::Passthrough)): then only the other
    /// leg can answer.
    fn local_answer(&self, leg: LegId, method: &Method, body: Option<&Body>) -> Option<LocalAnswer> {
        match body {
            None if *method == Method::Update => Some(LocalAnswer::Empty),
            None => self.media.local_description(leg).map(LocalAnswer::Offer),
            Some(b) if b.is_sdp() => {
                let origin = SdpOrigin::of(b)?;
                if self.leg(leg)?.remote_origin.as_ref() != Some(&origin) {
                    return None;
                }
                self.media.local_description(leg).map(LocalAnswer::Answer)
            }
            Some(_) => None,
        }
    }

    /// Answers a refresh from `leg` ourselves (RFC 4028 §9): 2xx with the
    /// leg's session timer, nothing relayed to the other leg.
    fn answer_refresh(
        &mut self,
        now: Instant,
        leg: LegId,
        tsx: S,
        req: &Request,
        session: Option<Negotiated>,
        answer: LocalAnswer,
    ) {
        debug!(leg = leg.0, method = req.method().as_str(), "session refresh answered");
        let idx = leg_index(leg);
        let invite = *req.method() == Method::Invite;
        let mut r = Response::from_request(req, 200, "OK");
        let h = r.headers_mut();
        let _ = h.push(HeaderName::Contact, self.legs[idx].peer.contact());
        if invite {
            let _ = h.push(HeaderName::Allow, ALLOW);
        }
        let _ = h.push(HeaderName::Server, crate::sip::PRODUCT);
        push_session_headers(h, session.as_ref());
        let l = &mut self.legs[idx];
        match answer {
            LocalAnswer::Empty => {}
            LocalAnswer::Answer(b) => {
                l.sent_sdp = Some(b.clone());
                set_response_body(&mut r, b);
            }
            LocalAnswer::Offer(b) => {
                l.oa = OfferAnswer::OfferSent(Placement::Response);
                l.local_offer = true;
                l.sent_sdp = Some(b.clone());
                set_response_body(&mut r, b);
            }
        }
        l.session = session.map(|n| SessionTimer::start(now, n.interval, n.refresher));
        if invite {
            let seq = req.headers().cseq().map(|c| c.seq).unwrap_or(0);
            l.uas_2xx = Some((Uas2xx::new(now, seq, self.config.t1, self.config.t2), r.clone()));
        }
        self.commands.push_back(Command::Respond { tsx, response: r });
    }

    /// An offer or an INVITE is in progress somewhere in the call: another
    /// one gets 491 (glare, §14.1; RFC 3311 §5.2), and a re-INVITE refresh
    /// of ours waits. A 2xx still waiting for its ACK does not count when
    /// its offer/answer is complete (the phone may re-INVITE a moment
    /// before the PBX's ACK arrives).
    fn negotiation_in_progress(&self) -> bool {
        self.requests.values().any(|o| match o {
            Outstanding::Relay(r) => r.offer || *r.request.method() == Method::Invite,
            Outstanding::Refresh(r) => r.invite && !r.answered,
            Outstanding::Invite(_) | Outstanding::Ending => false,
        }) || self.legs.iter().any(|l| l.held_ack.is_some() || l.oa != OfferAnswer::Stable)
    }

    /// Relays an in-dialog request from `from` to the other leg; `session`
    /// is the originator's session timer as our 2xx will set it.
    fn relay_request(&mut self, from: LegId, tsx: S, req: &Request, session: Option<Negotiated>) {
        let Some(to) = self.other_leg(from) else {
            let r = Response::from_request(req, 481, "Call/Transaction Does Not Exist");
            self.commands.push_back(Command::Respond { tsx, response: r });
            return;
        };
        let body = body_of_request(req);
        let offer = body.as_ref().is_some_and(Body::is_sdp) && matches!(req.method(), Method::Invite | Method::Update);
        let body = match body {
            Some(b) if offer => match self.media.offer(from, to, &b) {
                Ok(t) => Some(t),
                Err(e) => {
                    let mut r =
                        Response::from_request(req, e.status(), crate::sip::message::status::reason_phrase(e.status()));
                    let _ = r
                        .headers_mut()
                        .push(HeaderName::Warning, format!("399 {} \"{}\"", self.config.warning_host, e.token()));
                    self.commands.push_back(Command::Respond { tsx, response: r });
                    return;
                }
            },
            other => other,
        };
        let to_idx = leg_index(to);
        let l = &mut self.legs[to_idx];
        let (peer, to_session, to_min_se) = (l.peer, l.session, l.min_se);
        let Some(d) = l.dialog.as_mut() else { return };
        let mut b = d.request(req.method().clone());
        let seq = d.local_seq();
        if matches!(req.method(), Method::Invite | Method::Update) {
            b = b.header(HeaderName::Contact, peer.contact()).header(HeaderName::Supported, "timer");
            // A re-INVITE or UPDATE refreshes the far leg's session too:
            // it carries that leg's own timer (RFC 4028 §7.4).
            if let Some(st) = to_session {
                b = b
                    .header(HeaderName::SessionExpires, st.request_value())
                    .header(HeaderName::MinSe, to_min_se.as_secs().to_string());
            }
        }
        // Headers that describe the body or the INFO package (RFC 6086)
        // travel with it; everything else is per leg.
        for name in ["Content-Disposition", "Info-Package", "Recv-Info"] {
            if let Ok(name) = HeaderName::new(name) {
                for h in req.headers().get_all(&name) {
                    b = b.header(name.clone(), h.value());
                }
            }
        }
        let sent = body.clone().filter(|b| offer && b.is_sdp());
        if let Some(body) = body {
            b = b.body(&body.content_type, body.bytes);
        }
        let Ok(out) = b.build() else { return };
        if offer {
            self.legs[leg_index(from)].oa = OfferAnswer::OfferReceived(placement_of(req.method()));
            self.legs[to_idx].oa = OfferAnswer::OfferSent(placement_of(req.method()));
        }
        let relay = Relay { from, to, tsx, request: req.clone(), seq, offer, session, sent };
        let id = self.new_req(Outstanding::Relay(Box::new(relay)));
        self.commands.push_back(Command::Request { id, leg: to, peer, request: out });
    }

    fn relay_response(&mut self, now: Instant, id: ReqId, resp: &Response) {
        let status = resp.status();
        if status < 200 && !(180..=183).contains(&status) {
            return;
        }
        let Some(Outstanding::Relay(relay)) = (if status >= 200 { self.requests.remove(&id) } else { None }) else {
            // A provisional answer: pass it on (no body: a re-INVITE's
            // early answers carry no session change we relay).
            if let Some(Outstanding::Relay(r)) = self.requests.get(&id)
                && self.phase != Phase::Ending
            {
                let resp = Response::from_request(&r.request, status, &resp.reason_lossy());
                self.commands.push_back(Command::Respond { tsx: r.tsx.clone(), response: resp });
            }
            return;
        };
        let Relay { from, to, tsx, request, seq, offer, session, sent } = *relay;
        let invite = *request.method() == Method::Invite;
        let session_request = matches!(request.method(), Method::Invite | Method::Update);
        if self.phase == Phase::Ending {
            // The call ended meanwhile (its originator got 487 or 481): a
            // 2xx is still ACKed, so the far side stops retransmitting it.
            if invite && (200..300).contains(&status) {
                self.send_ack(to, seq, None);
            }
            return;
        }
        let to_idx = leg_index(to);
        let from_idx = leg_index(from);
        let mut body = body_of_response(resp);
        let mut offer_back = false;
        let (mut status, mut reason) = (status, resp.reason_lossy().into_owned());
        let mut retry_soon = false;
        if (200..300).contains(&status) {
            let l = &mut self.legs[to_idx];
            if let Some(d) = l.dialog.as_mut() {
                d.handle_refresh_response(resp);
            }
            if session_request {
                if let Some(update) = session_timer::allows_update(resp.headers()) {
                    l.allows_update = update;
                }
                // The far leg's timer as its 2xx sets it (RFC 4028 §7.2).
                l.session = session_timer::from_uac_response(resp.headers(), l.min_se)
                    .map(|(interval, refresher)| SessionTimer::start(now, interval, refresher));
            }
            if offer {
                if let Some(o) = body_of_request(&request).as_ref().and_then(SdpOrigin::of) {
                    self.legs[from_idx].remote_origin = Some(o);
                }
                if let Some(s) = sent {
                    self.legs[to_idx].sent_sdp = Some(s);
                }
            }
            match body.take() {
                Some(b) if b.is_sdp() && offer => {
                    self.legs[to_idx].oa = OfferAnswer::Stable;
                    self.legs[from_idx].oa = OfferAnswer::Stable;
                    self.heard(to, &b);
                    match self.media.answer(to, from, &b) {
                        Ok(t) => body = Some(t),
                        Err(e) => debug!(error = %e, "answer not carried"),
                    }
                }
                Some(b) if b.is_sdp() && invite => {
                    // An offerless re-INVITE: the 2xx offers, the ACK answers.
                    match self.media.offer(to, from, &b) {
                        Ok(t) => {
                            self.heard(to, &b);
                            self.legs[to_idx].oa = OfferAnswer::OfferReceived(Placement::Response);
                            body = Some(t);
                            offer_back = true;
                        }
                        Err(e) => debug!(error = %e, "offer in 2xx not carried"),
                    }
                }
                other => body = other,
            }
            if invite {
                if offer_back {
                    self.legs[to_idx].held_ack = Some(seq);
                } else {
                    self.send_ack(to, seq, None);
                }
            }
        } else {
            if offer {
                // A failed offer leaves the previous session in force.
                self.rollback_offer(from, to);
            }
            if status == 422 && session_request {
                // The far leg finds its own interval too short: raised for
                // the next attempt. The originator, whose interval suited
                // us, is told to try again shortly: a 422 (and its Min-SE)
                // would speak of a timer it knows nothing of.
                let l = &mut self.legs[to_idx];
                if let Some(min) = session_timer::min_se(resp.headers()) {
                    l.min_se = l.min_se.max(min);
                    if let Some(st) = l.session.as_mut() {
                        st.interval = st.interval.max(min);
                    }
                }
                status = 500;
                reason = crate::sip::message::status::reason_phrase(500).to_owned();
                retry_soon = true;
            }
        }
        let mut r = Response::from_request(&request, status, &reason);
        let from_peer = self.legs[from_idx].peer;
        let ok = (200..300).contains(&status);
        if ok {
            let h = r.headers_mut();
            let _ = h.push(HeaderName::Contact, from_peer.contact());
            let _ = h.push(HeaderName::Server, crate::sip::PRODUCT);
            if session_request {
                push_session_headers(h, session.as_ref());
                self.legs[from_idx].session = session.map(|n| SessionTimer::start(now, n.interval, n.refresher));
            }
        } else if retry_soon {
            let _ = r.headers_mut().push(HeaderName::RetryAfter, "1");
        }
        if let Some(b) = body {
            if ok && b.is_sdp() {
                self.legs[from_idx].sent_sdp = Some(b.clone());
            }
            set_response_body(&mut r, b);
        }
        if ok && invite {
            let reseq = request.headers().cseq().map(|c| c.seq).unwrap_or(0);
            if offer_back {
                self.legs[from_idx].oa = OfferAnswer::OfferSent(Placement::Response);
            }
            self.legs[from_idx].uas_2xx = Some((Uas2xx::new(now, reseq, self.config.t1, self.config.t2), r.clone()));
        }
        self.commands.push_back(Command::Respond { tsx, response: r });
    }

    fn rollback_offer(&mut self, from: LegId, to: LegId) {
        for leg in [from, to] {
            if let Some(l) = self.leg_mut(leg) {
                l.oa = OfferAnswer::Stable;
            }
        }
    }

    // ------------------------------------------------ session timers

    /// The legs' session deadlines (RFC 4028 §10): a session whose peer
    /// should refresh it and did not, or that our refreshes could not keep,
    /// ends the call; a refresh of ours that is due goes out.
    fn session_timeouts(&mut self, now: Instant) {
        for i in 0..self.legs.len() {
            let Some(st) = self.legs[i].session else { continue };
            if st.expiry().is_some_and(|at| at <= now) {
                let reason = if st.refresher == Refresher::Peer { SESSION_EXPIRED } else { SESSION_TIMER_FAILED };
                debug!(leg = i, reason, "session not refreshed: hanging up");
                self.hang_up(now, Outcome::Failed, Some(reason));
                return;
            }
            if st.refresh_at().is_some_and(|at| at <= now) {
                let leg = self.legs[i].id;
                self.send_refresh(now, leg);
            }
        }
    }

    /// Sends our session refresh on `leg` (RFC 4028 §7.4). An UPDATE
    /// without body when the peer allows UPDATE: it needs no SDP and cannot
    /// collide with an offer. Otherwise a re-INVITE offering the
    /// description the leg already has, unchanged (same `o=` version: the
    /// peer sees no change and answers with its own, so nothing needs the
    /// other leg): the media session's when it keeps one, else the last one
    /// we sent the leg. An offerless re-INVITE would make the peer offer in
    /// its 2xx, and only the other leg could answer that; it is sent only
    /// to a leg that never got a description from us. Never relayed.
    fn send_refresh(&mut self, now: Instant, leg: LegId) {
        let idx = leg_index(leg);
        let update = self.legs[idx].allows_update;
        if !update && self.negotiation_in_progress() {
            // An INVITE or offer is in progress: it refreshes the legs it
            // crosses when it succeeds; ours waits a little.
            let at = now + self.retry_delay(leg);
            if let Some(st) = self.legs[idx].session.as_mut() {
                st.retry_at(at);
            }
            return;
        }
        let body =
            if update { None } else { self.media.local_description(leg).or_else(|| self.legs[idx].sent_sdp.clone()) };
        let l = &mut self.legs[idx];
        let Some(st) = l.session.as_mut() else { return };
        st.refresh_sent();
        let se = st.request_value();
        let (peer, min_se) = (l.peer, l.min_se);
        let Some(d) = l.dialog.as_mut() else { return };
        let method = if update { Method::Update } else { Method::Invite };
        let mut b = d
            .request(method)
            .header(HeaderName::Contact, peer.contact())
            .header(HeaderName::Supported, "timer")
            .header(HeaderName::SessionExpires, se)
            .header(HeaderName::MinSe, min_se.as_secs().to_string());
        let seq = d.local_seq();
        if !update {
            b = b.header(HeaderName::Allow, ALLOW);
        }
        let offered = body.is_some();
        if let Some(body) = body {
            b = b.body(&body.content_type, body.bytes);
        }
        let Ok(request) = b.build() else { return };
        if offered {
            l.oa = OfferAnswer::OfferSent(Placement::Invite);
        }
        debug!(leg = leg.0, method = request.method().as_str(), "session refresh");
        let refresh = Refresh { leg, seq, invite: !update, offered, answered: false };
        let id = self.new_req(Outstanding::Refresh(refresh));
        self.commands.push_back(Command::Request { id, leg, peer, request });
    }

    /// The final answer to our refresh: a 2xx restarts the leg's timer as
    /// it says; nothing reaches the other leg.
    fn refresh_response(&mut self, now: Instant, id: ReqId, resp: &Response) {
        let status = resp.status();
        let ok = (200..300).contains(&status);
        if status < 200 {
            return;
        }
        let Some(Outstanding::Refresh(kept)) = self.requests.get_mut(&id) else { return };
        let r = *kept;
        if r.answered {
            // A retransmitted 2xx: our ACK was lost.
            if ok {
                self.send_ack(r.leg, r.seq, None);
            }
            return;
        }
        if r.invite && ok {
            kept.answered = true;
        } else {
            self.requests.remove(&id);
        }
        if !ok {
            self.refresh_failed(now, r, status, Some(resp));
            return;
        }
        if r.invite {
            self.send_ack(r.leg, r.seq, None);
        }
        if self.phase != Phase::Answered {
            return;
        }
        let idx = leg_index(r.leg);
        let l = &mut self.legs[idx];
        if r.offered {
            l.oa = OfferAnswer::Stable;
        }
        if let Some(d) = l.dialog.as_mut() {
            d.handle_refresh_response(resp);
        }
        if let Some(update) = session_timer::allows_update(resp.headers()) {
            l.allows_update = update;
        }
        l.retried_422 = false;
        l.session = session_timer::from_uac_response(resp.headers(), l.min_se)
            .map(|(interval, refresher)| SessionTimer::start(now, interval, refresher));
        match body_of_response(resp).filter(Body::is_sdp) {
            Some(answer) if r.offered => {
                // Normally the leg's session as it was. The media session
                // learns it for that leg alone (a refresh never re-negotiates
                // the other leg, so a leg that changes its session here
                // changes it alone).
                if let Err(e) = self.media.refreshed(r.leg, &answer) {
                    debug!(leg = r.leg.0, error = %e, "answer to our refresh not usable");
                }
                self.heard(r.leg, &answer);
            }
            Some(_) => debug!(leg = r.leg.0, "offer in the 2xx of our offerless refresh left unanswered"),
            None => {}
        }
    }

    /// Our refresh on a leg failed with `status` (or without an answer:
    /// 408 for a timeout, 503 for a transport error). 408 and 481 mean the
    /// dialog is gone (RFC 4028 §10): the call ends. A 422 is answered by
    /// asking for the peer's Min-SE, once; a 405 or 501 to an UPDATE turns
    /// the next refresh into a re-INVITE. Anything else leaves the session
    /// as it was, and the refresh is tried again before it expires.
    fn refresh_failed(&mut self, now: Instant, r: Refresh, status: u16, resp: Option<&Response>) {
        let idx = leg_index(r.leg);
        if r.offered {
            self.legs[idx].oa = OfferAnswer::Stable;
        }
        if self.phase != Phase::Answered {
            return;
        }
        debug!(leg = r.leg.0, status, "session refresh failed");
        if matches!(status, 408 | 481) {
            self.hang_up(now, Outcome::Failed, Some(SESSION_TIMER_FAILED));
            return;
        }
        let min = resp.and_then(|resp| session_timer::min_se(resp.headers()));
        let retry_delay = self.retry_delay(r.leg);
        let l = &mut self.legs[idx];
        let Some(st) = l.session.as_mut() else { return };
        match status {
            422 if !l.retried_422 && min.is_some_and(|m| m > st.interval) => {
                let min = min.unwrap_or(st.interval);
                l.retried_422 = true;
                l.min_se = min;
                st.interval = min;
                self.send_refresh(now, r.leg);
            }
            405 | 501 if !r.invite => {
                l.allows_update = false;
                self.send_refresh(now, r.leg);
            }
            491 => st.retry_at(now + retry_delay),
            _ => {
                // Half the time left, so a few attempts fit before expiry.
                let left = st.expiry().map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
                st.retry_at(now + retry_delay.max(left / 2));
            }
        }
    }

    /// How long a refresh waits after glare (§14.1): the owner of the
    /// Call-ID (us, on the legs we placed) waits 2.1 to 4 s, the other 0 to
    /// 2 s; a fixed point of each range keeps the machine deterministic.
    fn retry_delay(&self, leg: LegId) -> Duration {
        match self.leg(leg).map(|l| l.role) {
            Some(Role::Uac) => Duration::from_secs(3),
            _ => Duration::from_secs(1),
        }
    }

    /// Leg `leg` sent us `body`, and it was taken: an offer repeating its
    /// `o=` is a refresh.
    fn heard(&mut self, leg: LegId, body: &Body) {
        if let (Some(o), Some(l)) = (SdpOrigin::of(body), self.legs.get_mut(leg_index(leg))) {
            l.remote_origin = Some(o);
        }
    }

    // ------------------------------------------------------------ helpers

    /// ACK a 2xx on UAC leg `leg` (CSeq `seq`), with `body` if any.
    fn send_ack(&mut self, leg: LegId, seq: u32, body: Option<Body>) {
        let idx = leg_index(leg);
        let Some(l) = self.legs.get_mut(idx) else { return };
        let Some(d) = l.dialog.as_ref() else { return };
        let mut b = d.ack(seq);
        if let Some(body) = &body {
            b = b.body(&body.content_type, body.bytes.clone());
        }
        let Ok(ack) = b.build() else { return };
        if let Some(sdp) = body.as_ref().filter(|b| b.is_sdp()) {
            l.sent_sdp = Some(sdp.clone());
        }
        l.last_ack = Some((seq, body));
        let peer = l.peer;
        self.commands.push_back(Command::Ack { peer, request: ack });
    }

    fn send_held_ack(&mut self, leg: LegId, body: Option<Body>) {
        let idx = leg_index(leg);
        let Some(seq) = self.legs.get_mut(idx).and_then(|l| l.held_ack.take()) else { return };
        if body.is_some() {
            self.legs[idx].oa = OfferAnswer::Stable;
        }
        self.send_ack(leg, seq, body);
    }

    /// A response of the origin leg's INVITE with our tag.
    fn origin_response(&self, status: u16, reason: &str) -> Response {
        let o = &self.legs[0];
        // Our tags are tokens, so the error branch never runs.
        Response::from_request(&o.invite, status, reason)
            .with_to_tag(&o.local_tag)
            .unwrap_or_else(|_| Response::from_request(&o.invite, status, reason))
    }

    fn leg_of_request(&self, req: &Request) -> Option<LegId> {
        let ids = crate::sip::dialog::RequestIds::of(req)?;
        self.legs.iter().find(|l| l.dialog.as_ref().is_some_and(|d| d.is_named_by(&ids))).map(|l| l.id)
    }

    /// The leg on the other side of `leg` in an answered call.
    fn other_leg(&self, leg: LegId) -> Option<LegId> {
        let answered = self.answered_by?;
        if leg == LegId::ORIGIN {
            Some(answered)
        } else if leg == answered {
            Some(LegId::ORIGIN)
        } else {
            None
        }
    }

    fn leg(&self, id: LegId) -> Option<&Leg<S>> {
        self.legs.get(leg_index(id))
    }

    fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg<S>> {
        self.legs.get_mut(leg_index(id))
    }

    fn close_media(&mut self, leg: LegId) {
        if let Some(l) = self.leg_mut(leg)
            && std::mem::take(&mut l.has_media)
        {
            self.media.close_leg(leg);
        }
    }

    fn new_req(&mut self, what: Outstanding<S>) -> ReqId {
        self.next_req += 1;
        let id = ReqId(self.next_req);
        self.requests.insert(id, what);
        id
    }

    fn set_timer(&mut self, t: Timer, at: Option<Instant>) {
        self.timers[t as usize] = at;
    }

    fn due(&self, t: Timer, now: Instant) -> bool {
        self.timers[t as usize].is_some_and(|at| at <= now)
    }

    /// The record's clock (Unix seconds) at `now`.
    fn unix(&self, now: Instant) -> i64 {
        let started = self.record.as_ref().map_or(0, |r| r.started_at);
        started + i64::try_from(now.saturating_duration_since(self.created).as_secs()).unwrap_or(0)
    }
}

/// `Signal=5` / `Duration=160` of an `application/dtmf-relay` body (the
/// de facto format of SIP INFO digits): the digit and milliseconds (250
/// when absent). Signals 10 and 11 are `*` and `#`.
pub fn parse_dtmf_relay(body: &[u8]) -> Option<(char, u32)> {
    let text = std::str::from_utf8(body).ok()?;
    let mut digit = None;
    let mut duration = 250;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "signal" => {
                digit = match v {
                    "10" => Some('*'),
                    "11" => Some('#'),
                    _ if v.len() == 1 => v.chars().next().filter(|c| c.is_ascii_digit() || "*#ABCDabcd".contains(*c)),
                    _ => None,
                }
                .map(|c| c.to_ascii_uppercase());
            }
            "duration" => duration = v.parse().ok().filter(|d: &u32| (1..=10_000).contains(d)).unwrap_or(250),
            _ => {}
        }
    }
    digit.map(|d| (d, duration))
}

fn leg_index(id: LegId) -> usize {
    usize::from(id.0)
}

fn placement_of(m: &Method) -> Placement {
    if *m == Method::Update { Placement::Update } else { Placement::Invite }
}

/// Where the PBX is reached when its INVITE has no Contact.
fn origin_fallback(peer: &Peer) -> Uri {
    Uri::parse(&format!("sip:{}", peer.target.addr)).unwrap_or_else(|_| Uri::parse("sip:invalid").expect("static URI"))
}

/// RFC 3261 §16.7-style preference between failures: 6xx beats busy beats
/// the rest.
fn pick_failure(best: u16, status: u16) -> u16 {
    fn rank(s: u16) -> u16 {
        match s {
            600..=699 => 4,
            486 => 3,
            488 => 2,
            _ => 1,
        }
    }
    if best == 0 || rank(status) > rank(best) { status } else { best }
}

fn body_of(h: &crate::sip::message::Headers, body: &bytes::Bytes) -> Option<Body> {
    if body.is_empty() {
        return None;
    }
    let ct = h.content_type().ok().flatten().map_or_else(|| "application/sdp".to_owned(), |c| c.as_str().to_owned());
    Some(Body { content_type: ct, bytes: body.clone() })
}

fn body_of_request(r: &Request) -> Option<Body> {
    body_of(r.headers(), r.body())
}

fn body_of_response(r: &Response) -> Option<Body> {
    body_of(r.headers(), r.body())
}

/// What a refresh answered here carries.
#[derive(Debug)]
enum LocalAnswer {
    /// No body (an UPDATE without offer).
    Empty,
    /// The answer to the leg's unchanged offer.
    Answer(Body),
    /// Our offer, answered in the ACK (an offerless re-INVITE).
    Offer(Body),
}

/// The RFC 4028 headers of a 2xx of ours to a re-INVITE or UPDATE (or the
/// PBX's INVITE): we support timers; the leg's timer when it has one, and
/// `Require: timer` when the request said it supports them (§9).
fn push_session_headers(h: &mut crate::sip::message::Headers, session: Option<&Negotiated>) {
    let _ = h.push(HeaderName::Supported, "timer");
    if let Some(n) = session {
        let _ = h.push(HeaderName::SessionExpires, n.response_value());
        if n.require {
            let _ = h.push(HeaderName::Require, "timer");
        }
    }
}

fn set_response_body(r: &mut Response, b: Body) {
    let _ = r.headers_mut().set(HeaderName::ContentType, &b.content_type);
    r.set_body(b.bytes);
}
