//! The in-memory licence cache: every portal's [`PortalSnapshot`], kept
//! fresh from the shared database so the admission path never waits on it.
//!
//! Freshness: the store bumps a change counter in every licence-relevant
//! write. The refresher polls that one-row table (cheap on both engines)
//! every `poll_interval`, and on PostgreSQL also LISTENs for
//! `trunkgate_changes` so a change is usually seen within milliseconds. A
//! LISTEN connection that drops loses notifications, so polling goes on
//! regardless; a block or an expiry is in force for new calls within about
//! a second in the worst case.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{PortalId, PortalSnapshot, PortalStatus};
use crate::store::{BackendKind, Store, StoreError, UserBrief};

/// All portals at one instant.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The change counter value this snapshot reflects.
    pub version: i64,
    by_id: HashMap<PortalId, Arc<PortalSnapshot>>,
    /// Live (not purged) portals by lowercase domain.
    by_domain: HashMap<String, PortalId>,
    /// Users' routing facts by (portal id, username).
    users: HashMap<(String, String), UserBrief>,
}

impl Snapshot {
    /// Builds the indexes.
    pub fn new(version: i64, portals: Vec<PortalSnapshot>, users: Vec<UserBrief>) -> Self {
        let mut by_id = HashMap::with_capacity(portals.len());
        let mut by_domain = HashMap::with_capacity(portals.len());
        for p in portals {
            if p.status != PortalStatus::Deleted {
                by_domain.insert(p.domain.to_ascii_lowercase(), p.id.clone());
            }
            by_id.insert(p.id.clone(), Arc::new(p));
        }
        let users = users.into_iter().map(|u| ((u.portal_id.clone(), u.username.clone()), u)).collect();
        Self { version, by_id, by_domain, users }
    }

    /// A user's routing facts.
    pub fn user(&self, portal: &PortalId, username: &str) -> Option<&UserBrief> {
        self.users.get(&(portal.as_str().to_owned(), username.to_owned()))
    }

    /// A portal by id.
    pub fn portal(&self, id: &PortalId) -> Option<&Arc<PortalSnapshot>> {
        self.by_id.get(id)
    }

    /// The live portal owning `domain`.
    pub fn portal_by_domain(&self, domain: &str) -> Option<&Arc<PortalSnapshot>> {
        let id = self.by_domain.get(&domain.to_ascii_lowercase())?;
        self.by_id.get(id)
    }

    /// Number of portals.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Shared handle on the current snapshot. Reads are lock-free.
#[derive(Debug, Clone)]
pub struct LicenceCache {
    current: Arc<ArcSwap<Snapshot>>,
    version: Arc<tokio::sync::watch::Sender<i64>>,
}

impl LicenceCache {
    /// Loads every portal once.
    pub async fn load(store: &Store) -> Result<Self, StoreError> {
        let version = store.change_version().await?;
        let portals = store.all_snapshots().await?;
        let users = store.user_briefs().await?;
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::new(version, portals, users))),
            version: Arc::new(tokio::sync::watch::Sender::new(version)),
        })
    }

    /// The current snapshot.
    pub fn get(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Notified with the new change-counter value after each refresh that
    /// changed the snapshot.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.version.subscribe()
    }

    /// Re-reads everything if the change counter moved; returns whether it did.
    pub async fn refresh(&self, store: &Store) -> Result<bool, StoreError> {
        let version = store.change_version().await?;
        if version == self.current.load().version {
            return Ok(false);
        }
        let portals = store.all_snapshots().await?;
        let users = store.user_briefs().await?;
        debug!(version, portals = portals.len(), users = users.len(), "licence cache refreshed");
        self.current.store(Arc::new(Snapshot::new(version, portals, users)));
        self.version.send_replace(version);
        Ok(true)
    }

    /// Keeps the cache fresh until `shutdown`: polls every `poll_interval`
    /// and, on PostgreSQL, wakes on NOTIFY.
    pub async fn run_refresher(
        self,
        store: Store,
        database_url: String,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut listener = None;
        if store.kind() == BackendKind::Postgres {
            match sqlx::postgres::PgListener::connect(&database_url).await {
                Ok(mut l) => match l.listen(crate::store::CHANGES_CHANNEL).await {
                    Ok(()) => listener = Some(l),
                    Err(e) => warn!(error = %e, "LISTEN failed; relying on polling"),
                },
                Err(e) => warn!(error = %e, "LISTEN connection failed; relying on polling"),
            }
        }
        let mut tick = tokio::time::interval(poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                n = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Ok(None): the connection dropped and came back; anything
                    // sent meanwhile is lost, so re-read (below) either way.
                    if let Err(e) = n {
                        warn!(error = %e, "LISTEN connection error");
                    }
                }
            }
            match self.refresh(&store).await {
                Ok(_) if failing => {
                    info!("database reachable again; licence cache refreshed");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    warn!(error = %e, "licence cache refresh failed; keeping the last snapshot");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}
