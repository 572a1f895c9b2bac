//! Call leases: the record of each call in progress across the fleet.
//!
//! A call in progress holds one `call_leases` row (call, portal, node,
//! expiry) that its node renews; the leases of a node that died expire.
//! The daemon counts channels in memory (against the channels on a single
//! node, against its allowance on a fleet: see `allowances` and
//! `crate::node::channels`) and writes leases behind, in batches
//! ([`Store::apply_lease_ops`]); they serve `trunkgate calls`, live media
//! figures, the count behind a refusal's order, and cleanup after a node's
//! death.
//!
//! [`Store::admit_call`] is the exact per-call alternative the fleet used
//! before allowances (decision 0006): it counts and inserts in one
//! transaction that concurrent admissions of the same portal cannot
//! interleave with. The daemon no longer calls it.
//!
//! - PostgreSQL (READ COMMITTED) locks the portal row first, so admissions of
//!   one portal queue behind each other while other portals proceed; each
//!   statement after the lock sees the leases the previous holder committed.
//! - SQLite has one writer at a time: `BEGIN IMMEDIATE` (what `with_tx!`
//!   issues) takes the write lock before the count, and waits for it up to
//!   the busy timeout instead of failing with SQLITE_BUSY.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Backend, Store, StoreError, from_ts, ts};

/// One call asking for one of its portal's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest<'a> {
    /// Portal whose channels the call uses.
    pub portal: &'a str,
    /// The PBX leg's Call-ID: the lease's key, so a retransmitted INVITE
    /// admitted again finds its own lease instead of taking a second channel.
    pub call_id: &'a str,
    /// Node that handles the call and renews the lease.
    pub node_id: &'a str,
    /// The portal's channels now (from the licence rules).
    pub channels: u32,
    /// Admission time.
    pub now: DateTime<Utc>,
    /// How long the lease lives unless renewed; rounded up to whole seconds,
    /// at least one.
    pub ttl: Duration,
}

/// What [`Store::admit_call`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LeaseOutcome {
    /// The call holds a channel (a new lease, or the one it already had).
    Admitted {
        /// The portal's calls in progress, this one included.
        active_after: u32,
    },
    /// Every channel is taken; nothing was written.
    Busy {
        /// The portal's calls in progress.
        active: u32,
    },
}

impl LeaseOutcome {
    /// True when the call holds a channel.
    pub fn is_admitted(self) -> bool {
        matches!(self, LeaseOutcome::Admitted { .. })
    }
}

/// A change to the lease table, applied in order by
/// [`Store::apply_lease_ops`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// A call took a channel (already counted by the node).
    Take {
        /// Lease id.
        call_id: String,
        /// Portal.
        portal: String,
        /// Node.
        node_id: String,
        /// Unix seconds.
        acquired_at: i64,
        /// Unix seconds.
        expires_at: i64,
    },
    /// A call ended.
    Release {
        /// Lease id.
        call_id: String,
    },
    /// A call's live media figures (JSON).
    Media {
        /// Lease id.
        call_id: String,
        /// The figures.
        media: String,
    },
}

/// `call_leases`: a call in progress somewhere in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LeaseRow {
    /// The PBX leg's Call-ID.
    pub call_id: String,
    /// Portal whose channel it holds.
    pub portal_id: String,
    /// Node that handles it.
    pub node_id: String,
    /// Admission time, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "super::rows::rfc3339")]
    pub acquired_at: i64,
    /// The lease counts until this time (exclusive), Unix seconds (RFC 3339
    /// in JSON output).
    #[serde(serialize_with = "super::rows::rfc3339")]
    pub expires_at: i64,
    /// Live media figures of an anchored call (JSON object in JSON output).
    #[sqlx(default)]
    #[serde(serialize_with = "super::rows::json_text")]
    pub media: Option<String>,
}

impl LeaseRow {
    /// Admission time.
    pub fn acquired(&self) -> DateTime<Utc> {
        from_ts(self.acquired_at)
    }

    /// Expiry time.
    pub fn expires(&self) -> DateTime<Utc> {
        from_ts(self.expires_at)
    }
}

/// Whole seconds of `ttl`, rounded up: a sub-second TTL must not make a lease
/// that is expired the moment it is written.
fn ttl_secs(ttl: Duration) -> Result<i64, StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::Invalid { field: "ttl", detail: "a call lease must live at least 1 second".into() });
    }
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0));
    Ok(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Store {
    /// Takes one of the portal's channels for a call, atomically across the
    /// fleet: counts the portal's unexpired leases and, when fewer than
    /// `channels`, inserts the call's lease (expiring at `now + ttl`) and
    /// moves the portal's `last_activity_at` to `now` (never backwards).
    /// Otherwise answers [`LeaseOutcome::Busy`] and writes nothing.
    ///
    /// A call that already holds an unexpired lease of this portal (a
    /// retransmitted INVITE) is [`LeaseOutcome::Admitted`] again without a
    /// second channel, even when the portal is full; an expired one is
    /// replaced by a new lease, admitted like any new call.
    ///
    /// Errors: [`StoreError::NotFound`] when no portal has that id,
    /// [`StoreError::Conflict`] when the Call-ID holds a lease of another
    /// portal, [`StoreError::Invalid`] for a zero TTL, and
    /// [`StoreError::Database`] when the database fails (fail closed).
    pub async fn admit_call(&self, req: &LeaseRequest<'_>) -> Result<LeaseOutcome, StoreError> {
        let now = ts(req.now);
        let expires_at = now.saturating_add(ttl_secs(req.ttl)?);
        let outcome = with_tx!(self, tx => {
            // Admissions of this portal wait here for the one before.
            lock_portal!(self, tx, req.portal);
            let held: Option<(String, i64)> =
                sqlx::query_as("SELECT portal_id, expires_at FROM call_leases WHERE call_id = $1")
                    .bind(req.call_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let mut duplicate = false;
            match held {
                Some((portal, exp)) if exp > now && portal == req.portal => duplicate = true,
                Some((portal, exp)) if exp > now => {
                    return Err(StoreError::Conflict {
                        what: "call lease",
                        detail: format!("call `{}` holds a channel of portal `{portal}`", req.call_id),
                    });
                }
                // Expired: it counts for nobody; the call starts afresh.
                Some(_) => {
                    sqlx::query("DELETE FROM call_leases WHERE call_id = $1")
                        .bind(req.call_id)
                        .execute(&mut *tx)
                        .await?;
                }
                None => {}
            }
            let active: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM call_leases WHERE portal_id = $1 AND expires_at > $2")
                .bind(req.portal)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            let active = count(active);
            if duplicate {
                LeaseOutcome::Admitted { active_after: active }
            } else if active >= req.channels {
                LeaseOutcome::Busy { active }
            } else {
                let res = sqlx::query(
                    "INSERT INTO call_leases (call_id, portal_id, node_id, acquired_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(req.call_id)
                .bind(req.portal)
                .bind(req.node_id)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await;
                match res {
                    // Only an admission of *another* portal can race us to
                    // this Call-ID: those of this one wait on its lock.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        return Err(StoreError::Conflict {
                            what: "call lease",
                            detail: format!("call `{}` holds a channel of another portal", req.call_id),
                        });
                    }
                    r => r?,
                };
                // Not a licence change: the change counter stays, as for
                // `portal_touch`.
                sqlx::query(
                    "UPDATE portals SET last_activity_at = $2 WHERE id = $1 AND (last_activity_at IS NULL OR last_activity_at < $2)",
                )
                .bind(req.portal)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                LeaseOutcome::Admitted { active_after: active.saturating_add(1) }
            }
        });
        Ok(outcome)
    }

    /// Ends a call's lease: its channel is free at once. False when the call
    /// held none (already released, purged, or never admitted).
    pub async fn release_call(&self, call_id: &str) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM call_leases WHERE call_id = $1").bind(call_id).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Applies lease changes in order, in one transaction: what a
    /// single-node (SQLite) daemon does, since it counts its channels in
    /// memory and only records the leases (for `trunkgate calls`, restarts
    /// and reports). Each `Take` also moves the portal's activity forward.
    pub async fn apply_lease_ops(&self, ops: &[LeaseOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        // A few statements per batch, not one per change: each statement is
        // a round trip to SQLite's worker thread (two thread wake-ups), and
        // a busy node makes thousands of changes a second.
        let plan = LeasePlan::of(ops);
        with_tx!(self, tx => {
            for chunk in super::statement_chunks(&plan.gone) {
                let mut q = sqlx::QueryBuilder::new("DELETE FROM call_leases WHERE call_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                list.push_unseparated(")");
                q.build().execute(&mut *tx).await?;
            }
            for chunk in super::statement_chunks(&plan.taken) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO call_leases (call_id, portal_id, node_id, acquired_at, expires_at, media) ",
                );
                q.push_values(chunk, |mut row, t| {
                    row.push_bind(t.call_id)
                        .push_bind(t.portal)
                        .push_bind(t.node_id)
                        .push_bind(t.acquired_at)
                        .push_bind(t.expires_at)
                        .push_bind(t.media);
                });
                // Taken again after a release in this batch (or written by an
                // earlier one): the latest take is the row.
                q.push(
                    " ON CONFLICT (call_id) DO UPDATE SET portal_id = excluded.portal_id, node_id = excluded.node_id,
                      acquired_at = excluded.acquired_at, expires_at = excluded.expires_at, media = excluded.media",
                );
                q.build().execute(&mut *tx).await?;
            }
            for (call_id, media) in &plan.media {
                sqlx::query("UPDATE call_leases SET media = $2 WHERE call_id = $1")
                    .bind(*call_id)
                    .bind(*media)
                    .execute(&mut *tx)
                    .await?;
            }
            // Activity: once per portal per batch.
            for (portal, at) in &plan.touched {
                sqlx::query(
                    "UPDATE portals SET last_activity_at = $2 WHERE id = $1 AND (last_activity_at IS NULL OR last_activity_at < $2)",
                )
                .bind(*portal)
                .bind(*at)
                .execute(&mut *tx)
                .await?;
            }
        });
        Ok(())
    }

    /// Ends many calls' leases in one transaction (one commit for the batch:
    /// what a busy node does with the calls that ended in the last moment).
    /// Returns how many leases were removed.
    pub async fn release_calls(&self, call_ids: &[String]) -> Result<u64, StoreError> {
        if call_ids.is_empty() {
            return Ok(0);
        }
        let n = with_tx!(self, tx => {
            let mut n = 0;
            for chunk in super::statement_chunks(call_ids) {
                let mut q = sqlx::QueryBuilder::new("DELETE FROM call_leases WHERE call_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(id);
                }
                list.push_unseparated(")");
                n += q.build().execute(&mut *tx).await?.rows_affected();
            }
            n
        });
        Ok(n)
    }

    /// Extends every lease of a node to `expires_at` (never shortening one),
    /// in one statement; returns how many leases the node holds. The node
    /// calls it periodically, well within the TTL.
    ///
    /// A lease that expired but was not purged yet comes back: its call is
    /// still in progress, so the channel is truly taken. A purged lease does
    /// not: a count below the node's own tells it so.
    pub async fn renew_leases(&self, node_id: &str, expires_at: DateTime<Utc>) -> Result<u64, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE call_leases SET expires_at = CASE WHEN expires_at < $2 THEN $2 ELSE expires_at END WHERE node_id = $1",
            )
            .bind(node_id)
            .bind(ts(expires_at))
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n)
    }

    /// Removes every lease of a node (its clean shutdown, or its start after
    /// a crash: the calls it held are gone); returns how many.
    pub async fn release_node_leases(&self, node_id: &str) -> Result<u64, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM call_leases WHERE node_id = $1").bind(node_id).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// Deletes the leases expired at `now` (they no longer count anyway);
    /// returns how many.
    pub async fn purge_expired_leases(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM call_leases WHERE expires_at <= $1").bind(ts(now)).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// Calls in progress at `now` (unexpired leases), on one node or the
    /// whole fleet, oldest first.
    pub async fn calls_in_progress(&self, node: Option<&str>, now: DateTime<Utc>) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT call_id, portal_id, node_id, acquired_at, expires_at, media FROM call_leases
                 WHERE ($1 IS NULL OR node_id = $1) AND expires_at > $2 ORDER BY acquired_at, call_id",
            )
            .bind(node)
            .bind(ts(now))
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}

/// A row to insert: a lease taken in the batch and still held at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Taken<'a> {
    call_id: &'a str,
    portal: &'a str,
    node_id: &'a str,
    acquired_at: i64,
    expires_at: i64,
    media: Option<&'a str>,
}

/// What a batch of lease changes leaves, per lease: applied in order, a
/// batch's changes to one lease reduce to its final state, so a call that
/// began and ended within the batch is never inserted (its id goes in the
/// DELETE, in case an earlier batch wrote it).
#[derive(Debug, Default, PartialEq, Eq)]
struct LeasePlan<'a> {
    /// Leases ended (whether or not a row was written for them).
    gone: Vec<&'a str>,
    /// Leases to write, with the media figures they had by the batch's end.
    taken: Vec<Taken<'a>>,
    /// Media figures of leases written by an earlier batch.
    media: Vec<(&'a str, &'a str)>,
    /// Each portal that took a channel, with its latest take.
    touched: Vec<(&'a str, i64)>,
}

impl<'a> LeasePlan<'a> {
    fn of(ops: &'a [LeaseOp]) -> Self {
        enum Last<'a> {
            Taken(Taken<'a>),
            Gone,
            Media(&'a str),
        }
        let mut order: Vec<&'a str> = Vec::new();
        let mut last: std::collections::HashMap<&'a str, Last<'a>> = std::collections::HashMap::new();
        let mut touched: Vec<(&'a str, i64)> = Vec::new();
        for op in ops {
            let (id, next) = match op {
                LeaseOp::Take { call_id, portal, node_id, acquired_at, expires_at } => {
                    match touched.iter_mut().find(|(p, _)| p == portal) {
                        Some((_, at)) => *at = (*at).max(*acquired_at),
                        None => touched.push((portal.as_str(), *acquired_at)),
                    }
                    let t = Taken {
                        call_id,
                        portal,
                        node_id,
                        acquired_at: *acquired_at,
                        expires_at: *expires_at,
                        media: None,
                    };
                    (call_id.as_str(), Last::Taken(t))
                }
                LeaseOp::Release { call_id } => (call_id.as_str(), Last::Gone),
                LeaseOp::Media { call_id, media } => match last.get(call_id.as_str()) {
                    Some(Last::Taken(t)) => (call_id.as_str(), Last::Taken(Taken { media: Some(media), ..*t })),
                    // No row left to update.
                    Some(Last::Gone) => continue,
                    Some(Last::Media(_)) | None => (call_id.as_str(), Last::Media(media)),
                },
            };
            if last.insert(id, next).is_none() {
                order.push(id);
            }
        }
        let mut plan = LeasePlan { touched, ..Self::default() };
        for id in order {
            match last.remove(id) {
                Some(Last::Taken(t)) => plan.taken.push(t),
                Some(Last::Gone) => plan.gone.push(id),
                Some(Last::Media(m)) => plan.media.push((id, m)),
                None => {}
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_and_refuses_zero() {
        assert_eq!(ttl_secs(Duration::from_secs(30)).ok(), Some(30));
        assert_eq!(ttl_secs(Duration::from_millis(1)).ok(), Some(1));
        assert_eq!(ttl_secs(Duration::from_millis(1500)).ok(), Some(2));
        assert_eq!(ttl_secs(Duration::MAX).ok(), Some(i64::MAX));
        assert!(matches!(ttl_secs(Duration::ZERO), Err(StoreError::Invalid { field: "ttl", .. })));
    }

    #[test]
    fn a_batch_reduces_to_each_leases_final_state() {
        let take = |id: &str, portal: &str, at: i64| LeaseOp::Take {
            call_id: id.into(),
            portal: portal.into(),
            node_id: "n".into(),
            acquired_at: at,
            expires_at: at + 60,
        };
        let release = |id: &str| LeaseOp::Release { call_id: id.into() };
        let media = |id: &str, m: &str| LeaseOp::Media { call_id: id.into(), media: m.into() };
        let ops = vec![
            take("x", "p1", 10), // begins and ends in the batch
            take("y", "p2", 11), // still held: written with its media
            media("y", "{y}"),
            release("x"),
            release("z"),      // taken by an earlier batch
            media("w", "{w}"), // held since an earlier batch
            media("v", "{v}"), // media, then the end: only the end
            release("v"),
            take("u", "p1", 12), // ended, then taken again: the new take
            release("u"),
            take("u", "p1", 13),
        ];
        let plan = LeasePlan::of(&ops);
        assert_eq!(plan.gone, vec!["x", "z", "v"]);
        assert_eq!(
            plan.taken,
            vec![
                Taken { call_id: "y", portal: "p2", node_id: "n", acquired_at: 11, expires_at: 71, media: Some("{y}") },
                Taken { call_id: "u", portal: "p1", node_id: "n", acquired_at: 13, expires_at: 73, media: None },
            ]
        );
        assert_eq!(plan.media, vec![("w", "{w}")]);
        assert_eq!(plan.touched, vec![("p1", 13), ("p2", 11)]);
    }
}
