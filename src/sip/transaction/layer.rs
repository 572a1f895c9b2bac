//! The transaction table: matching (§17.1.3, §17.2.3, RFC 2543, CANCEL,
//! merged requests), aggregated timers, removal of terminated machines.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::key::{MergeId, MergeMap, TsxMap};
use super::{
    AckDisposition, ClientInvite, ClientInviteState, ClientNonInvite, ClientNonInviteState, Event, MAGIC_COOKIE,
    Method, Reliability, RequestInfo, ResponseInfo, ServerInvite, ServerInviteState, ServerNonInvite,
    ServerNonInviteState, StatusCode, TimerConfig, TsxError, TsxKey,
};

/// A message for the transport: the payload the caller gave for it, and
/// the transaction sending it (to find the destination, or for logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<M> {
    /// The sending transaction.
    pub key: TsxKey,
    /// The request, response or ACK, as the caller handed it over.
    pub payload: M,
}

/// The state of any transaction, for inspection and error reports.
///
/// A view over the four machines' own state enums; the machines stay
/// separate types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TsxState {
    /// A client INVITE's state.
    ClientInvite(ClientInviteState),
    /// A client non-INVITE's state.
    ClientNonInvite(ClientNonInviteState),
    /// A server INVITE's state.
    ServerInvite(ServerInviteState),
    /// A server non-INVITE's state.
    ServerNonInvite(ServerNonInviteState),
}

/// What [`TransactionLayer::handle_request`] did with a request, and so
/// what the caller does next.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum RequestMatch {
    /// A new server transaction was created: pass the request to the TU,
    /// which answers through [`TransactionLayer::send_response`] with
    /// this key.
    New(TsxKey),
    /// A new CANCEL server transaction (§9.2) was created; `target` is the
    /// INVITE server transaction it cancels, if one is alive. Answer the
    /// CANCEL with 200 if there is a target (and 487 the INVITE if it is
    /// still Proceeding), else with 481.
    Cancel {
        /// The CANCEL's own transaction.
        key: TsxKey,
        /// The INVITE server transaction with the same identity.
        target: Option<TsxKey>,
    },
    /// An out-of-dialog request whose From tag, Call-ID and CSeq equal
    /// those of a live server transaction it does not match: the same
    /// request reached us twice by different paths (§8.2.2.2). A
    /// transaction was created for it: answer 482 (Loop Detected) through
    /// `key`, so that its retransmissions get the 482 too.
    Merged {
        /// The new transaction, to answer 482 through.
        key: TsxKey,
        /// The transaction of the copy that arrived first.
        original: TsxKey,
    },
    /// A retransmission, or the ACK of a non-2xx final response: consumed
    /// by its transaction (which resent its last response if the RFC says
    /// so). The TU does nothing.
    Absorbed(TsxKey),
    /// An ACK for the TU (the dialog): the ACK of a 2xx, which is not part
    /// of the INVITE transaction (§17.1.1.3, §13.3.1.4). `transaction` is
    /// the INVITE server transaction in Accepted it matched (RFC 6026 §7.1
    /// passes such ACKs up), or `None` when it matched none, the usual case
    /// since a 2xx ACK has a branch of its own.
    AckToTu {
        /// The matched INVITE server transaction, if any.
        transaction: Option<TsxKey>,
    },
}

/// One of the four machines, so they can share one table. Dispatch only:
/// each variant keeps its own state machine.
#[derive(Debug)]
#[expect(clippy::enum_variant_names, reason = "variants are named after the machine types they hold")]
enum Machine<M> {
    ClientInvite(ClientInvite<M>),
    ClientNonInvite(ClientNonInvite<M>),
    ServerInvite(ServerInvite<M>),
    ServerNonInvite(ServerNonInvite<M>),
}

impl<M: Clone> Machine<M> {
    fn state(&self) -> TsxState {
        match self {
            Machine::ClientInvite(m) => TsxState::ClientInvite(m.state()),
            Machine::ClientNonInvite(m) => TsxState::ClientNonInvite(m.state()),
            Machine::ServerInvite(m) => TsxState::ServerInvite(m.state()),
            Machine::ServerNonInvite(m) => TsxState::ServerNonInvite(m.state()),
        }
    }

    fn is_terminated(&self) -> bool {
        matches!(
            self.state(),
            TsxState::ClientInvite(ClientInviteState::Terminated)
                | TsxState::ClientNonInvite(ClientNonInviteState::Terminated)
                | TsxState::ServerInvite(ServerInviteState::Terminated)
                | TsxState::ServerNonInvite(ServerNonInviteState::Terminated)
        )
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Machine::ClientInvite(m) => m.handle_timeout(now),
            Machine::ClientNonInvite(m) => m.handle_timeout(now),
            Machine::ServerInvite(m) => m.handle_timeout(now),
            Machine::ServerNonInvite(m) => m.handle_timeout(now),
        }
    }

    fn handle_transport_error(&mut self, now: Instant) {
        match self {
            Machine::ClientInvite(m) => m.handle_transport_error(now),
            Machine::ClientNonInvite(m) => m.handle_transport_error(now),
            Machine::ServerInvite(m) => m.handle_transport_error(now),
            Machine::ServerNonInvite(m) => m.handle_transport_error(now),
        }
    }

    fn poll_transmit(&mut self) -> Option<M> {
        match self {
            Machine::ClientInvite(m) => m.poll_transmit(),
            Machine::ClientNonInvite(m) => m.poll_transmit(),
            Machine::ServerInvite(m) => m.poll_transmit(),
            Machine::ServerNonInvite(m) => m.poll_transmit(),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        match self {
            Machine::ClientInvite(m) => m.poll_event(),
            Machine::ClientNonInvite(m) => m.poll_event(),
            Machine::ServerInvite(m) => m.poll_event(),
            Machine::ServerNonInvite(m) => m.poll_event(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Machine::ClientInvite(m) => m.poll_timeout(),
            Machine::ClientNonInvite(m) => m.poll_timeout(),
            Machine::ServerInvite(m) => m.poll_timeout(),
            Machine::ServerNonInvite(m) => m.poll_timeout(),
        }
    }
}

/// A live transaction and the index entries that point at it, so removal
/// can clean them up.
#[derive(Debug)]
struct Entry<M> {
    machine: Machine<M>,
    /// The deadline this entry has in `TransactionLayer::timeouts`.
    scheduled: Option<Instant>,
    /// Its number in order of creation: with the deadline, its place in
    /// `TransactionLayer::timeouts`.
    seq: u64,
    /// Its key in `TransactionLayer::merges`, if it registered one.
    merge_id: Option<MergeId>,
    /// Its alias in `TransactionLayer::legacy_acks`, if any.
    legacy_ack: Option<TsxKey>,
}

/// All transactions of one SIP endpoint, keyed by [`TsxKey`].
///
/// Inputs: [`start_client`](Self::start_client),
/// [`handle_request`](Self::handle_request),
/// [`handle_response`](Self::handle_response),
/// [`send_response`](Self::send_response), [`send_ack`](Self::send_ack),
/// [`handle_transport_error`](Self::handle_transport_error),
/// [`handle_timeout`](Self::handle_timeout). After each, drain
/// [`poll_event`](Self::poll_event) (answering `AckNeeded` and `TryingDue`
/// right there), then [`poll_transmit`](Self::poll_transmit), then arm a
/// timer for [`poll_timeout`](Self::poll_timeout). See the module docs for
/// the loop.
///
/// `M` is the payload handed back in [`Transmit`]s (see the module docs).
#[derive(Debug)]
pub struct TransactionLayer<M = Arc<[u8]>> {
    config: TimerConfig,
    /// Boxed: an entry is some 600 bytes and a transaction lives 32 s after
    /// its answer (Timers J, L, M), so a busy node holds tens of thousands.
    /// Inline, the table's slots (twice the live entries at worst) and each
    /// rehash, which moves every slot into fresh memory, cost several times
    /// what the entries themselves do (a heap profile at 500 cps: 24 MB
    /// per core in this table alone).
    entries: TsxMap<Box<Entry<M>>>,
    /// Every armed deadline, earliest first: `poll_timeout` is O(log n)
    /// however many transactions are alive.
    ///
    /// Ordered by deadline, then by creation (`Entry::seq`): the many
    /// transactions a turn arms for one instant (Timers J, L and M of
    /// every call answered in it) are told apart by a number, not by
    /// comparing their keys' strings, which sit in cold memory.
    timeouts: BTreeMap<(Instant, u64), TsxKey>,
    /// The next `Entry::seq`.
    next_seq: u64,
    /// §8.2.2.2: out-of-dialog requests by From tag, Call-ID and CSeq.
    merges: MergeMap<TsxKey>,
    /// RFC 2543 ACK matching: the INVITE's identity with the To tag of the
    /// final response sent, which the ACK carries (§17.2.3).
    legacy_acks: TsxMap<TsxKey>,
    transmits: VecDeque<Transmit<M>>,
    events: VecDeque<(TsxKey, Event)>,
}

impl<M: Clone> Default for TransactionLayer<M> {
    fn default() -> TransactionLayer<M> {
        TransactionLayer::new(TimerConfig::default())
    }
}

impl<M: Clone> TransactionLayer<M> {
    /// An empty table whose transactions use `config`.
    pub fn new(config: TimerConfig) -> TransactionLayer<M> {
        TransactionLayer {
            config,
            entries: TsxMap::default(),
            timeouts: BTreeMap::new(),
            next_seq: 0,
            merges: MergeMap::default(),
            legacy_acks: TsxMap::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The timer values every new transaction uses.
    pub fn config(&self) -> &TimerConfig {
        &self.config
    }

    /// Changes the timer values for transactions created from now on
    /// (running ones keep theirs: their schedule is already on the wire).
    pub fn set_config(&mut self, config: TimerConfig) {
        self.config = config;
    }

    /// How many transactions are alive.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no transaction is alive.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The state of the transaction `key`, if it is alive.
    pub fn state(&self, key: &TsxKey) -> Option<TsxState> {
        self.entries.get(key).map(|entry| entry.machine.state())
    }

    /// Sends a request through a new client transaction (§17.1): an INVITE
    /// starts a client INVITE machine, any other method but ACK a
    /// non-INVITE one. `branch` is the top Via branch the caller put in
    /// `request`; it must carry the magic cookie. `request` is queued for
    /// transmission at once.
    pub fn start_client(
        &mut self,
        now: Instant,
        method: Method,
        branch: &str,
        reliability: Reliability,
        request: M,
    ) -> Result<TsxKey, TsxError> {
        if method.is_ack() {
            return Err(TsxError::AckIsNotATransaction);
        }
        if !branch.starts_with(MAGIC_COOKIE) {
            return Err(TsxError::MissingMagicCookie { branch: branch.to_owned() });
        }
        let key = TsxKey::client(method, branch);
        if self.entries.contains_key(&key) {
            return Err(TsxError::DuplicateTransaction { key });
        }
        let machine = if key.is_invite() {
            Machine::ClientInvite(ClientInvite::new(now, self.config, reliability, request))
        } else {
            Machine::ClientNonInvite(ClientNonInvite::new(now, self.config, reliability, request))
        };
        self.insert(key.clone(), machine, None);
        Ok(key)
    }

    /// A response arrived. Returns the client transaction it matched
    /// (§17.1.3: top Via branch and CSeq method), whose events say what the
    /// TU must see, or `None` for a stray response: for a 2xx to INVITE,
    /// the dialog layer may still want it (a 2xx retransmission arriving
    /// after Timer M); anything else is dropped (§18.1.2).
    pub fn handle_response(&mut self, now: Instant, info: &ResponseInfo<'_>) -> Option<TsxKey> {
        let key = TsxKey::for_response(info)?;
        let entry = self.entries.get_mut(&key)?;
        match &mut entry.machine {
            Machine::ClientInvite(m) => m.handle_response(now, info.status),
            Machine::ClientNonInvite(m) => m.handle_response(now, info.status),
            // Client keys only ever name client machines.
            Machine::ServerInvite(_) | Machine::ServerNonInvite(_) => return None,
        }
        self.sync(&key);
        Some(key)
    }

    /// Hands over the ACK that [`Event::AckNeeded`] asked for: sent now,
    /// and again on every retransmission of the final response until
    /// Timer D.
    pub fn send_ack(&mut self, now: Instant, key: &TsxKey, ack: M) -> Result<(), TsxError> {
        let entry = self.entry_mut(key)?;
        let Machine::ClientInvite(machine) = &mut entry.machine else {
            return Err(TsxError::WrongTransactionKind { operation: "send_ack", key: key.clone() });
        };
        machine.send_ack(now, ack)?;
        self.sync(key);
        Ok(())
    }

    /// A request arrived over a transport of `reliability`. Matches it to
    /// a server transaction (§17.2.3), creating one when it matches none,
    /// and says what the caller must do with it ([`RequestMatch`]).
    pub fn handle_request(&mut self, now: Instant, info: &RequestInfo<'_>, reliability: Reliability) -> RequestMatch {
        let key = TsxKey::server(info);
        if info.method.is_ack() {
            return self.handle_ack(now, key);
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            match &mut entry.machine {
                Machine::ServerInvite(m) => m.handle_request(now),
                Machine::ServerNonInvite(m) => m.handle_request(now),
                // Server keys only ever name server machines.
                Machine::ClientInvite(_) | Machine::ClientNonInvite(_) => {}
            }
            self.sync(&key);
            return RequestMatch::Absorbed(key);
        }

        let merge_id = MergeId::of(info);
        let original = merge_id.as_ref().and_then(|id| self.merges.get(id)).cloned();
        let machine = if info.method.is_invite() {
            Machine::ServerInvite(ServerInvite::new(now, self.config, reliability))
        } else {
            Machine::ServerNonInvite(ServerNonInvite::new(now, self.config, reliability))
        };
        // The first copy owns the merge identity; later copies only point
        // at it.
        let register = if original.is_none() { merge_id } else { None };
        self.insert(key.clone(), machine, register);

        if let Some(original) = original {
            return RequestMatch::Merged { key, original };
        }
        if info.method.is_cancel() {
            // §9.2: the CANCEL matches the INVITE as if it were one.
            let target = TsxKey::server_as(info, Method::INVITE);
            let target = self.entries.contains_key(&target).then_some(target);
            return RequestMatch::Cancel { key, target };
        }
        RequestMatch::New(key)
    }

    /// The TU sends a response through the server transaction `key`.
    ///
    /// `to_tag` is the response's To tag: pass it always; only RFC 2543
    /// ACK matching uses it (the ACK carries the tag of the final
    /// response, §17.2.3).
    pub fn send_response(
        &mut self,
        now: Instant,
        key: &TsxKey,
        status: StatusCode,
        to_tag: Option<&str>,
        response: M,
    ) -> Result<(), TsxError> {
        let entry = self.entries.get_mut(key).ok_or_else(|| TsxError::UnknownTransaction { key: key.clone() })?;
        match &mut entry.machine {
            Machine::ServerInvite(m) => m.send_response(now, status, response)?,
            Machine::ServerNonInvite(m) => m.send_response(now, status, response)?,
            Machine::ClientInvite(_) | Machine::ClientNonInvite(_) => {
                return Err(TsxError::WrongTransactionKind { operation: "send_response", key: key.clone() });
            }
        }
        if status.is_final()
            && key.is_invite()
            && let Some(id) = key.legacy_id()
        {
            let alias = key.with_legacy_id(id.with_to_tag(to_tag));
            if let Some(old) = entry.legacy_ack.replace(alias.clone()) {
                self.legacy_acks.remove(&old);
            }
            self.legacy_acks.insert(alias, key.clone());
        }
        self.sync(key);
        Ok(())
    }

    /// The transport could not send a message of transaction `key`
    /// (§17.1.4, §17.2.4).
    pub fn handle_transport_error(&mut self, now: Instant, key: &TsxKey) -> Result<(), TsxError> {
        self.entry_mut(key)?.machine.handle_transport_error(now);
        self.sync(key);
        Ok(())
    }

    /// Fires every timer due at `now`, in deadline order across
    /// transactions; terminated transactions are removed.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Collected first so that a transaction re-armed for `now` fires on
        // the next call rather than looping here.
        let mut due = Vec::new();
        while let Some(entry) = self.timeouts.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        for key in due {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.scheduled = None;
                entry.machine.handle_timeout(now);
                self.sync(&key);
            }
        }
    }

    /// The next message to hand to the transport, oldest first.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<M>> {
        self.transmits.pop_front()
    }

    /// The next event for the TU, with its transaction, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<(TsxKey, Event)> {
        self.events.pop_front()
    }

    /// The earliest deadline of any transaction: when to call
    /// [`handle_timeout`](Self::handle_timeout) next. `None` when no timer
    /// is armed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timeouts.first_key_value().map(|((deadline, _), _)| *deadline)
    }

    fn handle_ack(&mut self, now: Instant, key: TsxKey) -> RequestMatch {
        // RFC 2543 ACKs carry the final response's To tag, so look for the
        // alias first; RFC 3261 ACKs match the INVITE's key directly.
        let found = match self.legacy_acks.get(&key) {
            Some(target) => Some(target.clone()),
            None => self.entries.contains_key(&key).then_some(key),
        };
        let Some(key) = found else {
            return RequestMatch::AckToTu { transaction: None };
        };
        let disposition = match self.entries.get_mut(&key).map(|e| &mut e.machine) {
            Some(Machine::ServerInvite(m)) => m.handle_ack(now),
            // ACK keys are server INVITE keys.
            _ => AckDisposition::Absorbed,
        };
        self.sync(&key);
        match disposition {
            AckDisposition::Absorbed => RequestMatch::Absorbed(key),
            AckDisposition::PassToTu => RequestMatch::AckToTu { transaction: Some(key) },
        }
    }

    fn entry_mut(&mut self, key: &TsxKey) -> Result<&mut Entry<M>, TsxError> {
        self.entries.get_mut(key).map(|e| &mut **e).ok_or_else(|| TsxError::UnknownTransaction { key: key.clone() })
    }

    fn insert(&mut self, key: TsxKey, machine: Machine<M>, merge_id: Option<MergeId>) {
        if let Some(id) = &merge_id {
            self.merges.insert(id.clone(), key.clone());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry { machine, scheduled: None, seq, merge_id, legacy_ack: None };
        self.entries.insert(key.clone(), Box::new(entry));
        self.sync(&key);
    }

    /// Moves the machine's outputs to the table's queues, re-files its
    /// deadline and removes it if it terminated.
    fn sync(&mut self, key: &TsxKey) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        while let Some(payload) = entry.machine.poll_transmit() {
            self.transmits.push_back(Transmit { key: key.clone(), payload });
        }
        while let Some(event) = entry.machine.poll_event() {
            self.events.push_back((key.clone(), event));
        }
        let next = entry.machine.poll_timeout();
        if next != entry.scheduled {
            if let Some(old) = entry.scheduled {
                self.timeouts.remove(&(old, entry.seq));
            }
            if let Some(next) = next {
                self.timeouts.insert((next, entry.seq), key.clone());
            }
            entry.scheduled = next;
        }
        if entry.machine.is_terminated()
            && let Some(entry) = self.entries.remove(key)
        {
            if let Some(deadline) = entry.scheduled {
                self.timeouts.remove(&(deadline, entry.seq));
            }
            if let Some(id) = entry.merge_id
                && self.merges.get(&id) == Some(key)
            {
                self.merges.remove(&id);
            }
            if let Some(alias) = entry.legacy_ack {
                self.legacy_acks.remove(&alias);
            }
        }
    }
}
