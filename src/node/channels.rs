//! A node's count of its portals' channels (row 6 of the admission table).
//!
//! - **Single node** (SQLite): the node is the only one counting this
//!   database's channels, so it counts in memory, against the channels.
//! - **Fleet** (PostgreSQL): the node counts in memory too, but against its
//!   *allowance* of each portal's channels, granted by the database in
//!   batches (decision 0006, [`crate::store::grant_size`]). Most calls need
//!   no round trip and no shared row lock; a grant is asked for in the
//!   background before the allowance runs out, and what is not used goes
//!   back. Near a portal's limit the batch is one channel (exact mode), and
//!   a node that finds no room asks the others (NOTIFY) to give back their
//!   spare before it refuses.
//!
//! The fleet's invariant, kept by every path here: the node's allowance row
//! in the database ≥ its local allowance (`cap`) ≥ its calls (`used`). A
//! raise goes to the database first and to `cap` after; a lowering goes to
//! `cap` first and to the database after; both happen under the portal's
//! gate, one at a time. Takes only check `used < cap`. With Σ rows ≤
//! channels kept by the database, the fleet's calls never exceed the
//! channels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use crate::store::{BackendKind, Grant, GrantRequest, LeaseOutcome, Store, StoreError};

/// When a node short of channels, having asked the others for their spare,
/// asks the database again: 150 ms in all before it refuses.
const ASK_BACK_WAITS: [Duration; 4] =
    [Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(40), Duration::from_millis(80)];

/// A node's channel count. See the module documentation.
pub struct Channels {
    inner: Inner,
}

enum Inner {
    Node(Mutex<HashMap<String, u32>>),
    Fleet(Arc<Fleet>),
}

struct Fleet {
    store: Store,
    node_id: String,
    ttl: Duration,
    books: Mutex<HashMap<String, Book>>,
    /// One grant or return at a time per portal (tokio: held across the
    /// database round trip).
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The database answered the last check (see
    /// [`Channels::watch_database`]). While it does not, the node admits
    /// nothing, not even within its allowance: fail closed, as DESIGN.md
    /// asks, since licence changes cannot reach it either.
    reachable: std::sync::atomic::AtomicBool,
}

/// One portal's count on this node.
#[derive(Debug, Default, Clone, Copy)]
struct Book {
    /// Calls in progress.
    used: u32,
    /// Calls the node may admit on (≤ its allowance row).
    cap: u32,
    /// The headroom of the last grant.
    batch: u32,
    /// Unix seconds: the allowance row expires then unless renewed.
    valid_until: i64,
    /// A background grant is on its way.
    refilling: bool,
    /// A background return is on its way.
    returning: bool,
    /// Unix second of an ask for spare that brought nothing back.
    asked_in_vain: Option<i64>,
}

impl Channels {
    /// The count for a node on `store`: a single node on SQLite, a fleet
    /// node on PostgreSQL. `ttl`: the allowances' lifetime (the leases').
    pub fn for_store(store: &Store, node_id: &str, ttl: Duration) -> Self {
        match store.kind() {
            BackendKind::Sqlite => Self::single_node(),
            BackendKind::Postgres => Self::fleet(store.clone(), node_id, ttl),
        }
    }

    /// A single node's count.
    pub fn single_node() -> Self {
        Self { inner: Inner::Node(Mutex::new(HashMap::new())) }
    }

    /// A fleet node's count, by allowances of `store`.
    pub fn fleet(store: Store, node_id: &str, ttl: Duration) -> Self {
        Self {
            inner: Inner::Fleet(Arc::new(Fleet {
                store,
                node_id: node_id.to_owned(),
                ttl,
                books: Mutex::new(HashMap::new()),
                gates: Mutex::new(HashMap::new()),
                reachable: std::sync::atomic::AtomicBool::new(true),
            })),
        }
    }

    /// True for a fleet node.
    pub fn is_fleet(&self) -> bool {
        matches!(self.inner, Inner::Fleet(_))
    }

    /// Takes one of the portal's `channels` for a call, or answers
    /// [`LeaseOutcome::Busy`]. A fleet node may wait for the database (a
    /// grant) and fails closed when it cannot get one.
    pub async fn take(&self, portal: &str, channels: u32, now: DateTime<Utc>) -> Result<LeaseOutcome, StoreError> {
        match &self.inner {
            Inner::Node(counts) => Ok(match counts.lock() {
                Ok(mut counts) => {
                    let n = counts.entry(portal.to_owned()).or_insert(0);
                    if *n < channels {
                        *n += 1;
                        LeaseOutcome::Admitted { active_after: *n }
                    } else {
                        LeaseOutcome::Busy { active: *n }
                    }
                }
                // A poisoned lock counts as full: refuse rather than over-admit.
                Err(_) => LeaseOutcome::Busy { active: channels },
            }),
            // Boxed: held inline, the fleet's grant (a timeout, a lock and
            // database calls) made every single-node admission's future
            // kilobytes larger, copied at each step of its start.
            Inner::Fleet(fleet) => Box::pin(fleet.take(portal, channels, now)).await,
        }
    }

    /// A call of the portal ended: its channel is free on this node (and,
    /// on a fleet, what the node holds beyond need goes back behind).
    pub fn release(&self, portal: &str) {
        match &self.inner {
            Inner::Node(counts) => {
                if let Ok(mut counts) = counts.lock()
                    && let Some(n) = counts.get_mut(portal)
                {
                    *n = n.saturating_sub(1);
                }
            }
            Inner::Fleet(fleet) => fleet.release(portal),
        }
    }

    /// The portal's calls in progress on this node (a poisoned count: all).
    pub fn in_use(&self, portal: &str) -> u32 {
        match &self.inner {
            Inner::Node(counts) => counts.lock().map(|c| c.get(portal).copied().unwrap_or(0)).unwrap_or(u32::MAX),
            Inner::Fleet(fleet) => fleet.books.lock().map(|b| b.get(portal).map_or(0, |b| b.used)).unwrap_or(u32::MAX),
        }
    }

    /// What the node may admit on for the portal without asking (a single
    /// node: `None`, the channels are the limit).
    pub fn allowance(&self, portal: &str) -> Option<u32> {
        match &self.inner {
            Inner::Node(_) => None,
            Inner::Fleet(fleet) => fleet.books.lock().ok().map(|b| b.get(portal).map_or(0, |b| b.cap)),
        }
    }

    /// Renews the node's allowances to `until` (with its leases). An
    /// allowance that expired is not renewed: the node asks again before
    /// its next call on that portal.
    pub async fn renew(&self, now: DateTime<Utc>, until: DateTime<Utc>) -> Result<(), StoreError> {
        let Inner::Fleet(fleet) = &self.inner else { return Ok(()) };
        let renewed = fleet.store.renew_allowances(&fleet.node_id, now, until).await?;
        if let Ok(mut books) = fleet.books.lock() {
            for portal in renewed {
                if let Some(b) = books.get_mut(&portal) {
                    b.valid_until = b.valid_until.max(until.timestamp());
                }
            }
        }
        Ok(())
    }

    /// Another node is short of the portal's channels: give back what this
    /// one holds and does not use.
    pub fn give_back_spare(&self, portal: &str) {
        if let Inner::Fleet(fleet) = &self.inner {
            let spare = fleet.books.lock().ok().and_then(|b| b.get(portal).map(|b| b.cap > b.used)).unwrap_or(false);
            if spare {
                Fleet::spawn_give_back(fleet, portal, Some(0));
            }
        }
    }

    /// Gives back the spare of every portal other nodes ask for, until
    /// `shutdown` (a fleet node; a single node returns at once).
    pub async fn listen_for_asks(self: Arc<Self>, database_url: String, shutdown: tokio_util::sync::CancellationToken) {
        if !self.is_fleet() {
            return;
        }
        let mut listener = match sqlx::postgres::PgListener::connect(&database_url).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "LISTEN connection failed: other nodes cannot ask this one for spare channels");
                return;
            }
        };
        if let Err(e) = listener.listen(crate::store::ALLOWANCES_CHANNEL).await {
            warn!(error = %e, "LISTEN failed: other nodes cannot ask this one for spare channels");
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => self.give_back_spare(n.payload()),
                    // The connection dropped and came back: asks sent
                    // meanwhile are lost (the asker refuses one call).
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "LISTEN connection error");
                        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }

    /// Checks every half second that the database answers (a fleet node):
    /// one that does not, or answers nothing within its acquire timeout
    /// and a second while connections are free, makes the node refuse new
    /// calls with `database-unavailable` until it answers again. A pool
    /// whose connections are all busy is saturated, not unreachable.
    pub async fn watch_database(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Inner::Fleet(fleet) = &self.inner else { return };
        let mut tick = tokio::time::interval(DATABASE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let patience = fleet.store.acquire_timeout() + Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match tokio::time::timeout(patience, fleet.store.ping()).await {
                Ok(Ok(())) => fleet.reached(),
                Ok(Err(e)) if fleet.store.is_saturated(&e) => fleet.reached(),
                Ok(Err(e)) => fleet.unreachable(&e.to_string()),
                Err(_) => fleet.unreachable("no answer to a check"),
            }
        }
    }
}

/// How often a fleet node checks that its database answers.
const DATABASE_CHECK: Duration = Duration::from_millis(500);

impl Fleet {
    fn reached(&self) {
        if !self.reachable.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("database reachable again: admitting new calls");
        }
    }

    fn unreachable(&self, why: &str) {
        if self.reachable.swap(false, std::sync::atomic::Ordering::Relaxed) {
            warn!(error = why, "database unreachable: new calls refused (database-unavailable) until it answers");
        }
    }

    /// Seconds before its expiry at which an allowance is no longer used
    /// without asking again: a renewal is late, and the database may soon
    /// give its channels to another node.
    fn margin(&self) -> i64 {
        i64::try_from((self.ttl / 6).as_secs()).unwrap_or(0)
    }

    fn gate(&self, portal: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.gates.lock() {
            Ok(mut gates) => gates.entry(portal.to_owned()).or_default().clone(),
            // Poisoned: a gate of its own still serialises nothing, but the
            // database's sum still holds; only this node's batching suffers.
            Err(_) => Arc::default(),
        }
    }

    async fn take(
        self: &Arc<Self>,
        portal: &str,
        channels: u32,
        now: DateTime<Utc>,
    ) -> Result<LeaseOutcome, StoreError> {
        if !self.reachable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Unreachable("the node's last check found no answer".into()));
        }
        if let Some(out) = self.take_local(portal, channels, now) {
            return Ok(out);
        }
        let gate = self.gate(portal);
        // The grant ahead may wait long (a saturated database, a locked
        // portal row): no longer than a request waits for a connection.
        let Ok(_held) = tokio::time::timeout(self.store.acquire_timeout(), gate.lock()).await else {
            return Err(StoreError::Saturated(format!("a grant of portal {portal}'s channels is still waiting")));
        };
        // Another call may have been granted room while this one waited.
        if let Some(out) = self.take_local(portal, channels, now) {
            return Ok(out);
        }
        let mut grant = self.refill(portal, channels, now).await?;
        if let Some(out) = self.take_local(portal, channels, now) {
            return Ok(out);
        }
        let second = now.timestamp();
        let asked_in_vain =
            self.books.lock().map_or(true, |b| b.get(portal).is_some_and(|b| b.asked_in_vain == Some(second)));
        if grant.others > 0 && !asked_in_vain {
            // Other nodes hold the rest: ask them for what they do not
            // use, and the database again as it comes back.
            debug!(portal, others = grant.others, "no channel left in the allowance: asking other nodes for spare");
            self.store.allowance_ask_back(portal).await?;
            for wait in ASK_BACK_WAITS {
                tokio::time::sleep_until(tokio::time::Instant::now() + wait).await;
                grant = self.refill(portal, channels, now).await?;
                if let Some(out) = self.take_local(portal, channels, now) {
                    return Ok(out);
                }
            }
            // Nothing came back: the portal is full. Refusals for the rest
            // of this second do not ask again (a burst at a full portal
            // must not queue behind the waits).
            if let Ok(mut books) = self.books.lock()
                && let Some(b) = books.get_mut(portal)
            {
                b.asked_in_vain = Some(second);
            }
        }
        let used = self.books.lock().map(|b| b.get(portal).map_or(0, |b| b.used)).unwrap_or(channels);
        Ok(LeaseOutcome::Busy { active: used.saturating_add(grant.others) })
    }

    /// Takes a channel within the allowance, or `None` when there is no
    /// room (or the allowance is too close to its expiry). Starts a
    /// background grant when the room runs low.
    fn take_local(self: &Arc<Self>, portal: &str, channels: u32, now: DateTime<Utc>) -> Option<LeaseOutcome> {
        let Ok(mut books) = self.books.lock() else {
            return Some(LeaseOutcome::Busy { active: channels });
        };
        let b = books.get_mut(portal)?;
        if b.used >= b.cap || now.timestamp() >= b.valid_until.saturating_sub(self.margin()) {
            return None;
        }
        b.used += 1;
        let active_after = b.used;
        if b.batch > 1 && b.cap - b.used <= b.batch / 2 && !b.refilling {
            b.refilling = true;
            let fleet = self.clone();
            let portal = portal.to_owned();
            tokio::spawn(async move {
                let gate = fleet.gate(&portal);
                let _held = gate.lock().await;
                if let Err(e) = fleet.refill(&portal, channels, now).await {
                    debug!(error = %e, portal, "background channel grant failed");
                }
                if let Ok(mut books) = fleet.books.lock()
                    && let Some(b) = books.get_mut(&portal)
                {
                    b.refilling = false;
                }
            });
        }
        Some(LeaseOutcome::Admitted { active_after })
    }

    /// Asks the database for the allowance [`crate::store::grant_size`]
    /// gives now. Call with the portal's gate held.
    async fn refill(&self, portal: &str, channels: u32, now: DateTime<Utc>) -> Result<Grant, StoreError> {
        let (used, floor) = {
            let Ok(mut books) = self.books.lock() else {
                return Err(StoreError::Invalid { field: "channels", detail: "channel count poisoned".into() });
            };
            let b = books.entry(portal.to_owned()).or_default();
            // While the row is unexpired the node may admit up to `cap`
            // meanwhile, so the row must stay at least there. Once expired,
            // no take runs (see `take_local`) and only the calls count.
            let floor = if now.timestamp() < b.valid_until { b.cap } else { b.used };
            (b.used, floor)
        };
        let req = GrantRequest { portal, node_id: &self.node_id, channels, used, floor, now, ttl: self.ttl };
        let grant = match self.store.allowance_grant(&req).await {
            Ok(grant) => grant,
            Err(e) => {
                if matches!(e, StoreError::Database(_)) && !self.store.is_saturated(&e) {
                    self.unreachable(&e.to_string());
                }
                return Err(e);
            }
        };
        if let Ok(mut books) = self.books.lock() {
            let b = books.entry(portal.to_owned()).or_default();
            b.cap = grant.granted;
            b.batch = grant.batch;
            b.valid_until = grant.expires_at;
        }
        debug!(portal, granted = grant.granted, used, others = grant.others, "channel allowance granted");
        Ok(grant)
    }

    fn release(self: &Arc<Self>, portal: &str) {
        let give_back = match self.books.lock() {
            Ok(mut books) => match books.get_mut(portal) {
                Some(b) => {
                    b.used = b.used.saturating_sub(1);
                    let spare = b.cap.saturating_sub(b.used);
                    // Near the limit (exact mode) the channel goes back at
                    // once; elsewhere, hysteresis: keep a batch, give back
                    // beyond two.
                    let exact = b.batch <= 1;
                    let surplus = if exact { spare > 0 } else { spare > b.batch.saturating_mul(2) };
                    if surplus && !b.returning {
                        b.returning = true;
                        Some(if exact { Some(0) } else { None })
                    } else {
                        None
                    }
                }
                None => None,
            },
            Err(_) => None,
        };
        if let Some(keep) = give_back {
            Fleet::spawn_give_back(self, portal, keep);
        }
    }

    /// Lowers the allowance to the calls plus `keep` (default: a batch):
    /// `cap` first, the row after, under the gate.
    fn spawn_give_back(fleet: &Arc<Self>, portal: &str, keep: Option<u32>) {
        let fleet = fleet.clone();
        let portal = portal.to_owned();
        tokio::spawn(async move {
            let gate = fleet.gate(&portal);
            let _held = gate.lock().await;
            let target = {
                let Ok(mut books) = fleet.books.lock() else { return };
                let Some(b) = books.get_mut(&portal) else { return };
                b.returning = false;
                let target = b.used.saturating_add(keep.unwrap_or(b.batch));
                if target >= b.cap {
                    return;
                }
                b.cap = target;
                target
            };
            if let Err(e) = fleet.store.allowance_lower(&portal, &fleet.node_id, target).await {
                // The row stays higher than the node uses: safe, only
                // unavailable to the others until renewed lower or expired.
                debug!(error = %e, portal, "channel allowance not given back");
            }
        });
    }
}
