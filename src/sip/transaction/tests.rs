//! Virtual-time harnesses (quinn's `Pair::step` idea: jump `now` to the
//! next deadline, never sleep) and the tests of the transaction table.
//!
//! Machine tests live beside each machine and use [`Run`]; the table's
//! matching rules are tested here with [`LayerRun`], and [`Pair`] joins a
//! client and a server layer over a lossy zero-latency link.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use super::*;

/// The one clock read of the test suite: the base instant everything else
/// is offset from.
#[allow(clippy::disallowed_methods)]
pub(super) fn base_instant() -> Instant {
    Instant::now()
}

/// `n` milliseconds.
pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A valid status code.
pub(super) fn status(code: u16) -> StatusCode {
    StatusCode::new(code).expect("tests use valid codes")
}

/// The sans-IO surface shared by the four machines.
pub(super) trait Driven {
    type Payload: Clone + Debug + PartialEq;
    fn poll_transmit(&mut self) -> Option<Self::Payload>;
    fn poll_event(&mut self) -> Option<Event>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
}

macro_rules! driven {
    ($machine:ident) => {
        impl<M: Clone + Debug + PartialEq> Driven for $machine<M> {
            type Payload = M;
            fn poll_transmit(&mut self) -> Option<M> {
                $machine::poll_transmit(self)
            }
            fn poll_event(&mut self) -> Option<Event> {
                $machine::poll_event(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                $machine::poll_timeout(self)
            }
            fn handle_timeout(&mut self, now: Instant) {
                $machine::handle_timeout(self, now)
            }
        }
    };
}

driven!(ClientInvite);
driven!(ClientNonInvite);
driven!(ServerInvite);
driven!(ServerNonInvite);

/// One output of a machine, as logged by [`Run`].
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Out<P> {
    Sent(P),
    Event(Event),
}

/// Drives one machine in virtual time and logs its outputs with their
/// offset from the base instant, in milliseconds.
pub(super) struct Run<T: Driven> {
    pub(super) machine: T,
    pub(super) base: Instant,
    pub(super) now: Instant,
    log: Vec<(u64, Out<T::Payload>)>,
}

impl<T: Driven> Run<T> {
    /// Creates the machine at the base instant.
    pub(super) fn new(create: impl FnOnce(Instant) -> T) -> Run<T> {
        let base = base_instant();
        let mut run = Run { machine: create(base), base, now: base, log: Vec::new() };
        run.drain();
        run
    }

    fn offset(&self) -> u64 {
        u64::try_from((self.now - self.base).as_millis()).expect("tests last minutes")
    }

    fn drain(&mut self) {
        let at = self.offset();
        while let Some(payload) = self.machine.poll_transmit() {
            self.log.push((at, Out::Sent(payload)));
        }
        while let Some(event) = self.machine.poll_event() {
            self.log.push((at, Out::Event(event)));
        }
    }

    /// Feeds an input at the current instant.
    pub(super) fn input(&mut self, feed: impl FnOnce(&mut T, Instant)) {
        feed(&mut self.machine, self.now);
        self.drain();
    }

    /// Jumps to the next deadline and fires it; false when none is armed.
    pub(super) fn step(&mut self) -> bool {
        let Some(deadline) = self.machine.poll_timeout() else {
            return false;
        };
        self.now = self.now.max(deadline);
        self.machine.handle_timeout(self.now);
        self.drain();
        true
    }

    /// Fires every deadline up to `offset` after the base, then stops the
    /// clock there.
    pub(super) fn run_until(&mut self, offset: Duration) {
        let end = self.base + offset;
        while self.machine.poll_timeout().is_some_and(|d| d <= end) {
            self.step();
        }
        self.now = end;
    }

    /// Steps until no timer is armed.
    pub(super) fn run_to_end(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("machine still has timers after 10000 steps");
    }

    /// The transmissions so far, with their offsets.
    pub(super) fn sent_at(&self) -> Vec<(u64, T::Payload)> {
        let sent = self.log.iter().filter_map(|(at, out)| match out {
            Out::Sent(payload) => Some((*at, payload.clone())),
            Out::Event(_) => None,
        });
        sent.collect()
    }

    /// The events so far, with their offsets.
    pub(super) fn events_at(&self) -> Vec<(u64, Event)> {
        let events = self.log.iter().filter_map(|(at, out)| match out {
            Out::Event(event) => Some((*at, event.clone())),
            Out::Sent(_) => None,
        });
        events.collect()
    }

    /// The log so far, emptied.
    pub(super) fn take_log(&mut self) -> Vec<(u64, Out<T::Payload>)> {
        std::mem::take(&mut self.log)
    }
}

/// Drives a [`TransactionLayer`] in virtual time, logging its outputs.
struct LayerRun {
    layer: TransactionLayer<&'static str>,
    base: Instant,
    now: Instant,
    sent: Vec<(u64, TsxKey, &'static str)>,
    events: Vec<(u64, TsxKey, Event)>,
}

impl LayerRun {
    fn new() -> LayerRun {
        LayerRun::with_config(TimerConfig::default())
    }

    fn with_config(config: TimerConfig) -> LayerRun {
        let base = base_instant();
        LayerRun { layer: TransactionLayer::new(config), base, now: base, sent: Vec::new(), events: Vec::new() }
    }

    fn offset(&self) -> u64 {
        u64::try_from((self.now - self.base).as_millis()).expect("tests last minutes")
    }

    fn drain(&mut self) {
        let at = self.offset();
        while let Some((key, event)) = self.layer.poll_event() {
            self.events.push((at, key, event));
        }
        while let Some(transmit) = self.layer.poll_transmit() {
            self.sent.push((at, transmit.key, transmit.payload));
        }
    }

    fn input<R>(&mut self, feed: impl FnOnce(&mut TransactionLayer<&'static str>, Instant) -> R) -> R {
        let result = feed(&mut self.layer, self.now);
        self.drain();
        result
    }

    fn request(&mut self, info: &RequestInfo<'_>) -> RequestMatch {
        self.input(|layer, now| layer.handle_request(now, info, Reliability::Unreliable))
    }

    fn respond(&mut self, key: &TsxKey, code: u16, to_tag: Option<&str>, payload: &'static str) {
        self.input(|layer, now| layer.send_response(now, key, status(code), to_tag, payload))
            .expect("the transaction accepts this response");
    }

    fn step(&mut self) -> bool {
        let Some(deadline) = self.layer.poll_timeout() else {
            return false;
        };
        self.now = self.now.max(deadline);
        self.layer.handle_timeout(self.now);
        self.drain();
        true
    }

    fn run_until(&mut self, offset: Duration) {
        let end = self.base + offset;
        while self.layer.poll_timeout().is_some_and(|d| d <= end) {
            self.step();
        }
        self.now = end;
    }

    fn run_to_end(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("layer still has timers after 10000 steps");
    }

    fn events_of(&self, key: &TsxKey) -> Vec<(u64, Event)> {
        let events = self.events.iter().filter(|(_, k, _)| k == key);
        events.map(|(at, _, event)| (*at, event.clone())).collect()
    }

    fn sent_by(&self, key: &TsxKey) -> Vec<(u64, &'static str)> {
        let sent = self.sent.iter().filter(|(_, k, _)| k == key);
        sent.map(|(at, _, payload)| (*at, *payload)).collect()
    }
}

/// An RFC 3261 out-of-dialog INVITE from `client.example`.
fn invite(branch: &'static str) -> RequestInfo<'static> {
    RequestInfo {
        method: Method::INVITE,
        branch: Some(branch),
        sent_by: "client.example:5060",
        request_uri: "sip:+15551234@trunkgate.example",
        call_id: "call-1@client.example",
        cseq: 1,
        from_tag: Some("from-1"),
        to_tag: None,
    }
}

/// `request` with another method (ACK, CANCEL: same CSeq number).
fn with_method(request: &RequestInfo<'static>, method: Method) -> RequestInfo<'static> {
    RequestInfo { method, ..request.clone() }
}

fn response(code: u16, branch: &'static str, method: Method) -> ResponseInfo<'static> {
    ResponseInfo { status: status(code), branch: Some(branch), method }
}

const BRANCH: &str = "z9hG4bK-a1";

#[test]
fn server_invite_retransmission_is_absorbed_and_gets_the_last_response() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&invite(BRANCH)) else {
        panic!("first INVITE creates a transaction");
    };
    run.respond(&key, 180, Some("to-1"), "180");
    run.run_until(ms(500));
    assert_eq!(run.request(&invite(BRANCH)), RequestMatch::Absorbed(key.clone()));
    assert_eq!(run.sent_by(&key), [(0, "180"), (500, "180")]);
    assert_eq!(run.layer.len(), 1);
}

#[test]
fn server_matching_uses_branch_sent_by_and_method() {
    let mut run = LayerRun::new();
    let RequestMatch::New(first) = run.request(&invite(BRANCH)) else {
        panic!("new");
    };
    // The host of sent-by compares case-insensitively (§20.42).
    let shouting = RequestInfo { sent_by: "CLIENT.EXAMPLE:5060", ..invite(BRANCH) };
    assert_eq!(run.request(&shouting), RequestMatch::Absorbed(first.clone()));
    // Same branch from another sender: another transaction. It is also a
    // merged request (same From tag, Call-ID and CSeq, no To tag).
    let other_host = RequestInfo { sent_by: "other.example:5060", ..invite(BRANCH) };
    let created = run.request(&other_host);
    assert!(matches!(created, RequestMatch::Merged { ref original, .. } if *original == first));
    // Same branch, other method: another transaction.
    let options = RequestInfo { cseq: 2, ..with_method(&invite(BRANCH), Method::new("OPTIONS")) };
    assert!(matches!(run.request(&options), RequestMatch::New(_)));
    assert_eq!(run.layer.len(), 3);
}

#[test]
fn ack_for_non_2xx_matches_the_invite_transaction() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&invite(BRANCH)) else {
        panic!("new");
    };
    run.respond(&key, 486, Some("to-1"), "486");
    let ack = RequestInfo { to_tag: Some("to-1"), ..with_method(&invite(BRANCH), Method::ACK) };
    assert_eq!(run.request(&ack), RequestMatch::Absorbed(key.clone()));
    assert_eq!(run.layer.state(&key), Some(TsxState::ServerInvite(ServerInviteState::Confirmed)));
    // Retransmitted ACK: still absorbed.
    assert_eq!(run.request(&ack), RequestMatch::Absorbed(key.clone()));
    run.run_to_end();
    assert!(run.layer.is_empty());
    assert_eq!(run.events_of(&key), [(5_000, Event::Terminated)]);
}

#[test]
fn ack_for_2xx_goes_to_the_tu() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&invite(BRANCH)) else {
        panic!("new");
    };
    run.respond(&key, 200, Some("to-1"), "200");
    // A 2xx ACK is a transaction of its own: new branch, matches nothing.
    let ack = RequestInfo { to_tag: Some("to-1"), ..with_method(&invite("z9hG4bK-ack"), Method::ACK) };
    assert_eq!(run.request(&ack), RequestMatch::AckToTu { transaction: None });
    // One reusing the INVITE's branch reaches Accepted, which passes it up
    // too (RFC 6026 §7.1).
    let same_branch = RequestInfo { to_tag: Some("to-1"), ..with_method(&invite(BRANCH), Method::ACK) };
    assert_eq!(run.request(&same_branch), RequestMatch::AckToTu { transaction: Some(key.clone()) });
    // INVITE retransmissions in Accepted are absorbed without a resend.
    assert_eq!(run.request(&invite(BRANCH)), RequestMatch::Absorbed(key.clone()));
    assert_eq!(run.sent_by(&key), [(0, "200")]);
    run.run_to_end();
    assert_eq!(run.events_of(&key), [(32_000, Event::Terminated)]);
}

#[test]
fn cancel_is_its_own_transaction_and_names_its_invite() {
    let mut run = LayerRun::new();
    let RequestMatch::New(invite_key) = run.request(&invite(BRANCH)) else {
        panic!("new");
    };
    let cancel = with_method(&invite(BRANCH), Method::CANCEL);
    let RequestMatch::Cancel { key, target } = run.request(&cancel) else {
        panic!("CANCEL creates its own transaction");
    };
    assert_eq!(target, Some(invite_key.clone()));
    assert_ne!(key, invite_key);
    assert!(key.method().is_cancel());
    run.respond(&key, 200, Some("to-1"), "200 CANCEL");
    run.respond(&invite_key, 487, Some("to-1"), "487");
    // A retransmitted CANCEL is absorbed by the CANCEL's transaction.
    assert_eq!(run.request(&cancel), RequestMatch::Absorbed(key.clone()));
    assert_eq!(run.sent_by(&key), [(0, "200 CANCEL"), (0, "200 CANCEL")]);

    // A CANCEL for an INVITE we never saw: no target, answer 481.
    let stray =
        RequestInfo { call_id: "call-2@client.example", ..with_method(&invite("z9hG4bK-unknown"), Method::CANCEL) };
    let RequestMatch::Cancel { target, .. } = run.request(&stray) else {
        panic!("CANCEL creates its own transaction");
    };
    assert_eq!(target, None);
}

/// An RFC 2543 INVITE: no magic cookie in the branch.
fn legacy_invite() -> RequestInfo<'static> {
    RequestInfo { branch: None, sent_by: "old-pbx.example:5060", ..invite("unused") }
}

#[test]
fn rfc2543_requests_match_on_their_dialog_fields() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&legacy_invite()) else {
        panic!("new");
    };
    assert!(key.is_rfc2543());
    assert_eq!(run.request(&legacy_invite()), RequestMatch::Absorbed(key.clone()));
    // A branch without the cookie is only part of the top Via.
    let with_old_branch = RequestInfo { branch: Some("1"), ..legacy_invite() };
    // Another top Via is another transaction; with the same From tag,
    // Call-ID and CSeq it is also a merged request.
    let RequestMatch::Merged { key: other, original } = run.request(&with_old_branch) else {
        panic!("another top Via, another transaction");
    };
    assert_eq!(original, key);
    assert!(other.is_rfc2543());
    assert_eq!(run.request(&with_old_branch), RequestMatch::Absorbed(other));
    // Each compared field makes a difference.
    for differing in [
        RequestInfo { request_uri: "sip:other@trunkgate.example", ..legacy_invite() },
        RequestInfo { call_id: "call-2@client.example", ..legacy_invite() },
        RequestInfo { cseq: 2, ..legacy_invite() },
        RequestInfo { from_tag: Some("from-2"), ..legacy_invite() },
        RequestInfo { to_tag: Some("to-9"), ..legacy_invite() },
    ] {
        assert!(!matches!(run.request(&differing), RequestMatch::Absorbed(_)));
    }
}

#[test]
fn rfc2543_ack_matches_by_the_to_tag_of_the_final_response() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&legacy_invite()) else {
        panic!("new");
    };
    run.respond(&key, 404, Some("to-1"), "404");
    let wrong_tag = RequestInfo { to_tag: Some("to-2"), ..with_method(&legacy_invite(), Method::ACK) };
    assert_eq!(run.request(&wrong_tag), RequestMatch::AckToTu { transaction: None });
    let ack = RequestInfo { to_tag: Some("to-1"), ..with_method(&legacy_invite(), Method::ACK) };
    assert_eq!(run.request(&ack), RequestMatch::Absorbed(key.clone()));
    assert_eq!(run.layer.state(&key), Some(TsxState::ServerInvite(ServerInviteState::Confirmed)));
    run.run_to_end();
    assert!(run.layer.is_empty());
    // The alias went with the transaction.
    assert_eq!(run.request(&ack), RequestMatch::AckToTu { transaction: None });
}

#[test]
fn rfc2543_ack_in_accepted_goes_to_the_tu_with_its_transaction() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&legacy_invite()) else {
        panic!("new");
    };
    run.respond(&key, 200, Some("to-1"), "200");
    let ack = RequestInfo { to_tag: Some("to-1"), ..with_method(&legacy_invite(), Method::ACK) };
    assert_eq!(run.request(&ack), RequestMatch::AckToTu { transaction: Some(key) });
}

#[test]
fn rfc2543_cancel_names_its_invite() {
    let mut run = LayerRun::new();
    let RequestMatch::New(invite_key) = run.request(&legacy_invite()) else {
        panic!("new");
    };
    let cancel = with_method(&legacy_invite(), Method::CANCEL);
    let RequestMatch::Cancel { target, .. } = run.request(&cancel) else {
        panic!("CANCEL creates its own transaction");
    };
    assert_eq!(target, Some(invite_key));
}

#[test]
fn merged_request_is_detected_and_answered_through_its_own_transaction() {
    let mut run = LayerRun::new();
    let RequestMatch::New(original) = run.request(&invite(BRANCH)) else {
        panic!("new");
    };
    // The same INVITE forked upstream, arriving through another proxy.
    let copy = RequestInfo { sent_by: "proxy-b.example:5060", ..invite("z9hG4bK-b2") };
    let RequestMatch::Merged { key, original: first } = run.request(&copy) else {
        panic!("merged");
    };
    assert_eq!(first, original);
    run.respond(&key, 482, None, "482");
    // Its retransmission matches its own transaction and gets the 482.
    run.run_until(ms(500));
    assert_eq!(run.request(&copy), RequestMatch::Absorbed(key.clone()));
    assert_eq!(run.sent_by(&key)[..2], [(0, "482"), (500, "482")]);
    // The upstream proxy's CANCEL of that copy finds that copy, not a
    // merge: it is answered 200 like any CANCEL.
    let cancel = with_method(&copy, Method::CANCEL);
    let RequestMatch::Cancel { target, .. } = run.request(&cancel) else {
        panic!("CANCEL creates its own transaction");
    };
    assert_eq!(target, Some(key));
}

#[test]
fn merge_detection_skips_in_dialog_requests_and_ends_with_the_original() {
    let mut run = LayerRun::new();
    let RequestMatch::New(original) = run.request(&invite(BRANCH)) else {
        panic!("new");
    };
    // With a To tag the request is in a dialog: no merge check.
    let in_dialog = RequestInfo { to_tag: Some("to-1"), ..invite("z9hG4bK-b2") };
    assert!(matches!(run.request(&in_dialog), RequestMatch::New(_)));
    // Another CSeq: another request.
    let next = RequestInfo { cseq: 2, ..invite("z9hG4bK-b3") };
    assert!(matches!(run.request(&next), RequestMatch::New(_)));

    run.respond(&original, 486, Some("to-1"), "486");
    run.run_to_end();
    assert_eq!(run.layer.state(&original), None);
    let late = invite("z9hG4bK-b4");
    assert!(matches!(run.request(&late), RequestMatch::New(_)));
}

#[test]
fn client_responses_match_on_branch_and_cseq_method() {
    let mut run = LayerRun::new();
    let invite_key =
        run.input(|l, now| l.start_client(now, Method::INVITE, BRANCH, Reliability::Unreliable, "INVITE")).unwrap();
    run.input(|l, now| l.handle_response(now, &response(180, BRANCH, Method::INVITE)));
    // CANCEL reuses the INVITE's branch (§9.1); the CSeq method separates
    // the two transactions.
    let cancel_key =
        run.input(|l, now| l.start_client(now, Method::CANCEL, BRANCH, Reliability::Unreliable, "CANCEL")).unwrap();
    assert_ne!(invite_key, cancel_key);
    let matched = run.input(|l, now| l.handle_response(now, &response(200, BRANCH, Method::CANCEL)));
    assert_eq!(matched, Some(cancel_key.clone()));
    let matched = run.input(|l, now| l.handle_response(now, &response(487, BRANCH, Method::INVITE)));
    assert_eq!(matched, Some(invite_key.clone()));
    // Unknown branch: stray.
    let stray = run.input(|l, now| l.handle_response(now, &response(200, "z9hG4bK-x", Method::INVITE)));
    assert_eq!(stray, None);
    assert_eq!(
        run.events_of(&invite_key),
        [
            (0, Event::Response { status: status(180) }),
            (0, Event::AckNeeded { status: status(487) }),
            (0, Event::Response { status: status(487) }),
        ]
    );
    assert_eq!(run.events_of(&cancel_key), [(0, Event::Response { status: status(200) })]);
}

#[test]
fn client_invite_ack_flows_through_the_layer_and_reliable_d_is_zero() {
    let mut run = LayerRun::new();
    let key = run.input(|l, now| l.start_client(now, Method::INVITE, BRANCH, Reliability::Reliable, "INVITE")).unwrap();
    run.run_until(ms(80));
    run.input(|l, now| l.handle_response(now, &response(403, BRANCH, Method::INVITE)));
    assert!(run.events.iter().any(|(_, _, e)| matches!(e, Event::AckNeeded { .. })));
    run.input(|l, now| l.send_ack(now, &key, "ACK")).unwrap();
    assert_eq!(run.layer.poll_timeout(), Some(run.now));
    run.run_to_end();
    assert_eq!(run.sent_by(&key), [(0, "INVITE"), (80, "ACK")]);
    assert!(run.layer.is_empty());
    assert_eq!(run.layer.send_ack(run.now, &key, "ACK"), Err(TsxError::UnknownTransaction { key }));
}

#[test]
fn poll_timeout_is_the_earliest_over_all_transactions() {
    let mut run = LayerRun::new();
    let register = run
        .input(|l, now| l.start_client(now, Method::new("REGISTER"), "z9hG4bK-r", Reliability::Reliable, "REGISTER"))
        .unwrap();
    assert_eq!(run.layer.poll_timeout(), Some(run.base + ms(32_000)));
    run.run_until(ms(1_000));
    let invite_key =
        run.input(|l, now| l.start_client(now, Method::INVITE, BRANCH, Reliability::Unreliable, "INVITE")).unwrap();
    assert_eq!(run.layer.poll_timeout(), Some(run.base + ms(1_500)));
    run.input(|l, now| l.handle_response(now, &response(100, BRANCH, Method::INVITE)));
    // The INVITE is Proceeding (no A, no B): the REGISTER's F is next.
    assert_eq!(run.layer.poll_timeout(), Some(run.base + ms(32_000)));
    run.run_to_end();
    assert_eq!(run.events_of(&register), [(32_000, Event::Timeout { timer: Timer::F }), (32_000, Event::Terminated)]);
    // The Proceeding INVITE waits for the TU; nothing removes it.
    assert_eq!(run.layer.len(), 1);
    assert!(run.layer.state(&invite_key).is_some());
    assert_eq!(run.layer.poll_timeout(), None);
}

#[test]
fn terminated_transactions_are_removed_after_their_event() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&with_method(&invite(BRANCH), Method::new("BYE"))) else {
        panic!("new");
    };
    run.respond(&key, 200, Some("to-1"), "200");
    run.run_until(ms(31_999));
    assert_eq!(run.layer.len(), 1);
    run.run_to_end();
    assert_eq!(run.events_of(&key), [(32_000, Event::Terminated)]);
    assert!(run.layer.is_empty());
    // A late retransmission now starts afresh: the TU sees it again, as
    // §17.2.2 accepts after Timer J.
    assert!(matches!(run.request(&with_method(&invite(BRANCH), Method::new("BYE"))), RequestMatch::New(_)));
}

#[test]
fn lingering_timers_on_a_grid_share_expiries_and_retransmissions_stay_exact() {
    let grid = Grid { origin: base_instant(), step: ms(100) };
    let mut run = LayerRun::with_config(TimerConfig { linger_grid: Some(grid), ..TimerConfig::default() });
    // Five BYEs answered 10 ms apart (Timer J), and one client INVITE
    // started with them (Timer A, a retransmission: not lingering).
    let mut keys = Vec::new();
    for i in 0..5u64 {
        run.run_until(ms(i * 10));
        let branch: &'static str = ["z9hG4bK-b0", "z9hG4bK-b1", "z9hG4bK-b2", "z9hG4bK-b3", "z9hG4bK-b4"][i as usize];
        // Apart in CSeq too, or they would be one merged request (§8.2.2.2).
        let bye =
            RequestInfo { cseq: 10 + u32::try_from(i).unwrap(), ..with_method(&invite(branch), Method::new("BYE")) };
        let RequestMatch::New(key) = run.request(&bye) else {
            panic!("new");
        };
        run.respond(&key, 200, Some("to-1"), "200");
        keys.push((i * 10, key));
    }
    let client = run
        .input(|layer, now| layer.start_client(now, Method::INVITE, "z9hG4bK-c", Reliability::Unreliable, "INVITE"))
        .expect("client INVITE");
    run.run_until(ms(40_000));
    // Timer A exact: the first retransmission at 40 + 500 ms.
    assert_eq!(run.sent_by(&client).get(1).map(|s| s.0), Some(540));
    let mut ends = Vec::new();
    for (answered, key) in &keys {
        let [(at, Event::Terminated)] = run.events_of(key)[..] else { panic!("one termination each") };
        // Not before Timer J's 32 s, and less than a grid cell after it.
        assert!(at >= answered + 32_000 && at < answered + 32_000 + 100, "{answered} ended at {at}");
        ends.push(at);
    }
    ends.dedup();
    // Answered within 40 ms, they end on at most two grid ticks (five
    // exact deadlines otherwise).
    assert!(ends.len() <= 2, "{ends:?}");
}

#[test]
fn trying_due_through_the_layer() {
    let mut run = LayerRun::new();
    let RequestMatch::New(key) = run.request(&invite(BRANCH)) else {
        panic!("new");
    };
    run.step();
    assert_eq!(run.events_of(&key), [(200, Event::TryingDue)]);
    run.respond(&key, 100, None, "100");
    assert_eq!(run.sent_by(&key), [(200, "100")]);
    assert_eq!(run.layer.poll_timeout(), None);
}

#[test]
fn caller_mistakes_are_refused_without_effect() {
    let mut run = LayerRun::new();
    let refused = run.layer.start_client(run.now, Method::ACK, BRANCH, Reliability::Unreliable, "ACK");
    assert_eq!(refused, Err(TsxError::AckIsNotATransaction));
    let refused = run.layer.start_client(run.now, Method::INVITE, "1", Reliability::Unreliable, "I");
    assert!(matches!(refused, Err(TsxError::MissingMagicCookie { .. })));
    let bye = run.layer.start_client(run.now, Method::new("BYE"), BRANCH, Reliability::Unreliable, "BYE").unwrap();
    let again = run.layer.start_client(run.now, Method::new("BYE"), BRANCH, Reliability::Unreliable, "BYE");
    assert_eq!(again, Err(TsxError::DuplicateTransaction { key: bye.clone() }));
    let wrong = run.layer.send_response(run.now, &bye, status(200), None, "200");
    assert!(matches!(wrong, Err(TsxError::WrongTransactionKind { .. })));
    let wrong = run.layer.send_ack(run.now, &bye, "ACK");
    assert!(matches!(wrong, Err(TsxError::WrongTransactionKind { .. })));
    assert_eq!(StatusCode::new(99), Err(TsxError::InvalidStatus { code: 99 }));
    assert_eq!(StatusCode::new(700), Err(TsxError::InvalidStatus { code: 700 }));
    assert_eq!(run.layer.len(), 1);
}

#[test]
fn transport_error_reaches_the_tu_and_removes_the_transaction() {
    let mut run = LayerRun::new();
    let key = run
        .input(|l, now| l.start_client(now, Method::new("OPTIONS"), BRANCH, Reliability::Reliable, "OPTIONS"))
        .unwrap();
    run.input(|l, now| l.handle_transport_error(now, &key)).unwrap();
    assert_eq!(run.events_of(&key), [(0, Event::TransportError), (0, Event::Terminated)]);
    assert!(run.layer.is_empty());
    assert_eq!(run.layer.poll_timeout(), None);
}

#[test]
fn methods_and_status_codes() {
    assert_eq!(Method::new("INVITE"), Method::INVITE);
    assert_eq!(Method::from("CANCEL"), Method::CANCEL);
    assert_ne!(Method::new("invite"), Method::INVITE);
    assert_eq!(Method::new("REFER").as_str(), "REFER");
    assert_eq!(status(183).class(), StatusClass::Provisional);
    assert!(status(200).is_success() && status(200).is_final());
    assert_eq!(status(302).class(), StatusClass::Redirection);
    assert_eq!(status(699).class(), StatusClass::GlobalFailure);
}

/// A message on the [`Pair`]'s link: just enough to rebuild the info
/// structs on the receiving side.
#[derive(Clone, Debug, PartialEq)]
enum Wire {
    Request { method: Method, branch: &'static str, to_tag: Option<&'static str> },
    Response { status: StatusCode, branch: &'static str, method: Method },
}

/// A UAC layer and a UAS layer joined by a zero-latency link that drops
/// the messages `drop` selects, each with a minimal TU. Time jumps to the
/// earlier of the two layers' deadlines.
struct Pair {
    client: TransactionLayer<Wire>,
    server: TransactionLayer<Wire>,
    base: Instant,
    now: Instant,
    /// Messages sent so far in each direction.
    to_server: usize,
    to_client: usize,
    drop: fn(to_server: bool, index: usize) -> bool,
    /// What the UAS answers a new INVITE with.
    answer: StatusCode,
    /// What the client TU saw, and when.
    client_events: Vec<(u64, Event)>,
    /// Requests the server passed to its TU.
    server_new: Vec<(u64, RequestMatch)>,
}

impl Pair {
    fn new(answer: u16, drop: fn(bool, usize) -> bool) -> Pair {
        let base = base_instant();
        Pair {
            client: TransactionLayer::default(),
            server: TransactionLayer::default(),
            base,
            now: base,
            to_server: 0,
            to_client: 0,
            drop,
            answer: status(answer),
            client_events: Vec::new(),
            server_new: Vec::new(),
        }
    }

    fn offset(&self) -> u64 {
        u64::try_from((self.now - self.base).as_millis()).expect("tests last minutes")
    }

    /// Delivers messages and answers events until both sides are quiet.
    fn settle(&mut self) {
        loop {
            let mut busy = false;
            while let Some((key, event)) = self.client.poll_event() {
                busy = true;
                if matches!(event, Event::AckNeeded { .. }) {
                    let ack = Wire::Request { method: Method::ACK, branch: BRANCH, to_tag: Some("uas") };
                    self.client.send_ack(self.now, &key, ack).expect("Completed");
                }
                self.client_events.push((self.offset(), event));
            }
            while let Some((_, event)) = self.server.poll_event() {
                busy = true;
                assert_ne!(event, Event::TryingDue, "the UAS answers at once");
            }
            while let Some(transmit) = self.client.poll_transmit() {
                busy = true;
                self.to_server += 1;
                if !(self.drop)(true, self.to_server) {
                    self.deliver_to_server(transmit.payload);
                }
            }
            while let Some(transmit) = self.server.poll_transmit() {
                busy = true;
                self.to_client += 1;
                if !(self.drop)(false, self.to_client) {
                    self.deliver_to_client(transmit.payload);
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn deliver_to_server(&mut self, wire: Wire) {
        let Wire::Request { method, branch, to_tag } = wire else {
            return;
        };
        let info = RequestInfo { method, branch: Some(branch), to_tag, ..invite(BRANCH) };
        let matched = self.server.handle_request(self.now, &info, Reliability::Unreliable);
        if let RequestMatch::New(key) = &matched {
            let response = Wire::Response { status: self.answer, branch, method: info.method.clone() };
            self.server.send_response(self.now, key, self.answer, Some("uas"), response).expect("Proceeding");
        }
        if !matches!(matched, RequestMatch::Absorbed(_)) {
            self.server_new.push((self.offset(), matched));
        }
    }

    fn deliver_to_client(&mut self, wire: Wire) {
        let Wire::Response { status, branch, method } = wire else {
            return;
        };
        let info = ResponseInfo { status, branch: Some(branch), method };
        let _ = self.client.handle_response(self.now, &info);
    }

    fn step(&mut self) -> bool {
        let next = [self.client.poll_timeout(), self.server.poll_timeout()].into_iter().flatten().min();
        let Some(deadline) = next else {
            return false;
        };
        self.now = self.now.max(deadline);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.settle();
        true
    }

    fn run_to_end(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("pair still has timers after 10000 steps");
    }
}

#[test]
fn pair_rejected_call_survives_losing_the_first_responses_and_acks() {
    // Lose the first two 486s and the first ACK: Timer A and Timer G
    // recover, the UAS TU sees the INVITE once, the UAC TU sees one 486.
    let mut pair = Pair::new(486, |to_server, index| if to_server { index == 3 } else { index <= 2 });
    let invite = Wire::Request { method: Method::INVITE, branch: BRANCH, to_tag: None };
    pair.client.start_client(pair.now, Method::INVITE, BRANCH, Reliability::Unreliable, invite).unwrap();
    pair.settle();
    pair.run_to_end();
    assert_eq!(pair.server_new.len(), 1, "{:?}", pair.server_new);
    assert_eq!(
        pair.client_events,
        [
            (500, Event::AckNeeded { status: status(486) }),
            (500, Event::Response { status: status(486) }),
            (32_500, Event::Terminated),
        ]
    );
    assert!(pair.client.is_empty() && pair.server.is_empty());
    // Sent to the server: INVITE (0 s), its retransmission at 0.5 s, the
    // lost ACK, then the ACK answering the 486 of Timer G at 1.5 s.
    assert_eq!(pair.to_server, 4);
}

#[test]
fn pair_accepted_call_leaves_2xx_reliability_to_the_tus() {
    let mut pair = Pair::new(200, |_, _| false);
    let invite = Wire::Request { method: Method::INVITE, branch: BRANCH, to_tag: None };
    pair.client.start_client(pair.now, Method::INVITE, BRANCH, Reliability::Unreliable, invite).unwrap();
    pair.settle();
    pair.run_to_end();
    assert_eq!(pair.client_events, [(0, Event::Response { status: status(200) }), (32_000, Event::Terminated),]);
    // INVITE and 200 once each: neither transaction repeats the 2xx
    // exchange, that is the dialogs' job.
    assert_eq!((pair.to_server, pair.to_client), (1, 1));
}

/// Keys are hashed once, when made: equal keys made apart hash and compare
/// equal (a map finds one by the other), keys that differ anywhere do not,
/// and the order is that of the fields, not of the hash.
#[test]
fn keys_made_apart_find_each_other_and_differ_where_their_fields_do() {
    use std::collections::HashMap;
    let a = TsxKey::server(&invite(BRANCH));
    let same = TsxKey::server(&RequestInfo { sent_by: "CLIENT.EXAMPLE:5060", ..invite(BRANCH) });
    let ack = TsxKey::server(&with_method(&invite(BRANCH), Method::ACK));
    let cancel = TsxKey::server(&with_method(&invite(BRANCH), Method::new("CANCEL")));
    let other_sender = TsxKey::server(&RequestInfo { sent_by: "other.example:5060", ..invite(BRANCH) });
    let client = TsxKey::client(Method::INVITE, BRANCH);
    let legacy = TsxKey::server(&invite("1234"));
    let legacy_again = TsxKey::server(&invite("1234"));
    assert_eq!(a, same);
    assert_eq!(a, ack, "an ACK finds its INVITE");
    assert_eq!(legacy, legacy_again);
    for k in [&cancel, &other_sender, &client, &legacy] {
        assert_ne!(&a, k);
    }
    let mut map = HashMap::new();
    map.insert(a.clone(), 1);
    map.insert(cancel.clone(), 2);
    map.insert(client.clone(), 3);
    map.insert(legacy.clone(), 4);
    assert_eq!(map.get(&same), Some(&1));
    assert_eq!(map.get(&ack), Some(&1));
    assert_eq!(map.get(&legacy_again), Some(&4));
    assert_eq!(map.get(&other_sender), None);
    assert_eq!(map.len(), 4);
}
