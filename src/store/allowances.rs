//! Channel allowances: how a fleet counts a portal's channels without a
//! database round trip per call (decision 0006).
//!
//! Each node holds, per portal, an allowance row (`granted`, `expires_at`):
//! the channels it may admit calls on by itself. The node counts its calls
//! in memory against that allowance, the way a single node counts against
//! the channels. Rows are only raised by [`Store::allowance_grant`], which
//! takes the portal's row lock and keeps **Σ granted ≤ channels** over the
//! portal's unexpired rows; they are lowered by [`Store::allowance_lower`]
//! without the lock (lowering cannot break the sum). So no interleaving of
//! nodes admits more calls than channels: each node admits only within its
//! own row, and the rows never sum to more than the channels.
//!
//! A node renews its rows with its leases; the rows of a node that died
//! expire with them, and their channels come back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Backend, Store, StoreError, ts};

/// PostgreSQL NOTIFY channel on which a node short of channels asks the
/// others to give back what they hold and do not use (payload: portal id).
pub const ALLOWANCES_CHANNEL: &str = "trunkgate_allowances";

/// Largest grant a node asks for beyond its calls: how many calls it can
/// admit between two round trips to the database.
pub const BATCH_MAX: u32 = 64;

/// A node asking for (more of) a portal's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRequest<'a> {
    /// Portal.
    pub portal: &'a str,
    /// Node asking.
    pub node_id: &'a str,
    /// The portal's channels now (from the licence rules).
    pub channels: u32,
    /// Calls the node has in progress on this portal.
    pub used: u32,
    /// The allowance never goes below this (what the node may already admit
    /// on: its calls, or its current allowance while that is unexpired).
    pub floor: u32,
    /// Time of the request.
    pub now: DateTime<Utc>,
    /// How long the allowance lives unless renewed; whole seconds, at least
    /// one.
    pub ttl: Duration,
}

/// What [`Store::allowance_grant`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The node's allowance now.
    pub granted: u32,
    /// The headroom this grant aimed at: the node asks again when fewer
    /// than half of it remain, and gives back what exceeds twice it.
    pub batch: u32,
    /// What the other nodes hold, unexpired.
    pub others: u32,
    /// How many other nodes hold some.
    pub other_nodes: u32,
    /// Unix seconds: the allowance counts until then (exclusive).
    pub expires_at: i64,
}

/// `channel_allowances`: one node's allowance of one portal's channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AllowanceRow {
    /// Portal.
    pub portal_id: String,
    /// Node.
    pub node_id: String,
    /// Channels the node may admit on.
    pub granted: i64,
    /// Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "super::rows::rfc3339")]
    pub expires_at: i64,
}

/// The allowance a grant writes: what the node asks, within what the others
/// leave, never below `floor`.
///
/// The headroom (`batch`) shrinks as the portal fills, so that a node never
/// sits on channels another node needs: half of what is free, shared among
/// the nodes that hold some, at most [`BATCH_MAX`], at least one. Within a
/// few channels of the limit each node holds about one spare: exact mode,
/// a round trip per call, but only where a refusal is near anyway.
///
/// Returns `(granted, batch)`.
pub fn grant_size(channels: u32, others: u32, other_nodes: u32, used: u32, floor: u32) -> (u32, u32) {
    let avail = channels.saturating_sub(others);
    let free = avail.saturating_sub(used);
    let nodes = other_nodes.saturating_add(1);
    let batch = (free / nodes.saturating_mul(2)).clamp(1, BATCH_MAX);
    let granted = avail.min(used.saturating_add(batch)).max(floor);
    (granted, batch)
}

fn whole_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn count(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

impl Store {
    /// Sets the node's allowance of a portal's channels to what
    /// [`grant_size`] gives, in one transaction under the portal's row lock
    /// (PostgreSQL) or the write lock (SQLite), so concurrent grants of one
    /// portal are serialised and Σ granted ≤ channels holds after each
    /// (unless `floor` forces more: a licence that lost channels while the
    /// node's calls went on). Expired rows of the portal are deleted on the
    /// way.
    ///
    /// Errors: [`StoreError::NotFound`] when no portal has that id,
    /// [`StoreError::Database`] when the database fails (fail closed: the
    /// node admits nothing beyond what it holds).
    pub async fn allowance_grant(&self, req: &GrantRequest<'_>) -> Result<Grant, StoreError> {
        let now = ts(req.now);
        let expires_at = now.saturating_add(whole_secs(req.ttl));
        let grant = with_tx!(self, tx => {
            // Grants of this portal wait here for the one before.
            lock_portal!(self, tx, req.portal);
            sqlx::query("DELETE FROM channel_allowances WHERE portal_id = $1 AND expires_at <= $2")
                .bind(req.portal)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let (others, other_nodes): (Option<i64>, i64) = sqlx::query_as(
                "SELECT CAST(SUM(granted) AS BIGINT), COUNT(*) FROM channel_allowances
                 WHERE portal_id = $1 AND node_id <> $2 AND granted > 0",
            )
            .bind(req.portal)
            .bind(req.node_id)
            .fetch_one(&mut *tx)
            .await?;
            let others = count(others.unwrap_or(0));
            let other_nodes = count(other_nodes);
            let (granted, batch) = grant_size(req.channels, others, other_nodes, req.used, req.floor);
            if granted == 0 {
                // Nothing held: no row (rows are the nodes holding some).
                sqlx::query("DELETE FROM channel_allowances WHERE portal_id = $1 AND node_id = $2")
                    .bind(req.portal)
                    .bind(req.node_id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query(
                    "INSERT INTO channel_allowances (portal_id, node_id, granted, expires_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (portal_id, node_id) DO UPDATE SET granted = excluded.granted, expires_at = excluded.expires_at",
                )
                .bind(req.portal)
                .bind(req.node_id)
                .bind(i64::from(granted))
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
            }
            Grant { granted, batch, others, other_nodes, expires_at }
        });
        Ok(grant)
    }

    /// Lowers the node's allowance of a portal to `granted` (removes the row
    /// at zero). Never raises it: a lower value cannot over-admit, so no lock
    /// is taken. The node must already admit within `granted`.
    pub async fn allowance_lower(&self, portal: &str, node_id: &str, granted: u32) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            if granted == 0 {
                sqlx::query("DELETE FROM channel_allowances WHERE portal_id = $1 AND node_id = $2")
                    .bind(portal)
                    .bind(node_id)
                    .execute(pool)
                    .await?;
            } else {
                sqlx::query(
                    "UPDATE channel_allowances SET granted = $3 WHERE portal_id = $1 AND node_id = $2 AND granted > $3",
                )
                .bind(portal)
                .bind(node_id)
                .bind(i64::from(granted))
                .execute(pool)
                .await?;
            }
        });
        Ok(())
    }

    /// Extends the node's unexpired allowances to `expires_at` (never
    /// shortening one) and returns the portals whose allowance was renewed.
    /// An allowance already expired is not renewed: other nodes may have
    /// been granted its channels, so the node must ask again.
    pub async fn renew_allowances(
        &self,
        node_id: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let portals = with_pool!(self, pool => {
            sqlx::query_scalar(
                "UPDATE channel_allowances SET expires_at = CASE WHEN expires_at < $3 THEN $3 ELSE expires_at END
                 WHERE node_id = $1 AND expires_at > $2 RETURNING portal_id",
            )
            .bind(node_id)
            .bind(ts(now))
            .bind(ts(expires_at))
            .fetch_all(pool)
            .await?
        });
        Ok(portals)
    }

    /// Removes every allowance of a node (its clean stop, or its start after
    /// a crash); returns how many.
    pub async fn release_node_allowances(&self, node_id: &str) -> Result<u64, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM channel_allowances WHERE node_id = $1")
                .bind(node_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// The allowances of a portal (or all), unexpired at `now`.
    pub async fn allowances(&self, portal: Option<&str>, now: DateTime<Utc>) -> Result<Vec<AllowanceRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT portal_id, node_id, CAST(granted AS BIGINT) AS granted, CAST(expires_at AS BIGINT) AS expires_at
                 FROM channel_allowances WHERE ($1 IS NULL OR portal_id = $1) AND expires_at > $2
                 ORDER BY portal_id, node_id",
            )
            .bind(portal)
            .bind(ts(now))
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Asks the other nodes to give back the allowance of `portal` they do
    /// not use (PostgreSQL NOTIFY; a single node has no one to ask).
    pub async fn allowance_ask_back(&self, portal: &str) -> Result<(), StoreError> {
        if let Backend::Postgres(pool) = &self.backend {
            sqlx::query("SELECT pg_notify($1, $2)").bind(ALLOWANCES_CHANNEL).bind(portal).execute(pool).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_node_on_a_big_portal_takes_a_full_batch() {
        assert_eq!(grant_size(100_000, 0, 0, 0, 0), (BATCH_MAX, BATCH_MAX));
        assert_eq!(grant_size(100_000, 0, 0, 500, 520), (500 + BATCH_MAX, BATCH_MAX));
    }

    #[test]
    fn the_batch_shrinks_with_what_is_free_and_the_nodes_sharing_it() {
        // 40 free, two nodes: 40 / 4 = 10.
        assert_eq!(grant_size(100, 50, 1, 10, 10), (20, 10));
        // 8 free among three nodes: 8 / 6 = 1.
        assert_eq!(grant_size(20, 10, 2, 2, 2), (3, 1));
    }

    #[test]
    fn near_the_limit_a_node_gets_exactly_one_more_and_never_past_the_channels() {
        // One left: exactly one.
        assert_eq!(grant_size(10, 6, 1, 3, 3), (4, 1));
        // None left: the allowance stays at the node's calls.
        assert_eq!(grant_size(10, 7, 1, 3, 3), (3, 1));
        // Others hold everything: nothing beyond the floor.
        assert_eq!(grant_size(10, 10, 1, 0, 0), (0, 1));
    }

    #[test]
    fn the_floor_holds_when_the_channels_shrink() {
        // Licence cut to 5 while the node has 8 calls: it keeps what it
        // holds (its calls go on) and gets nothing more.
        assert_eq!(grant_size(5, 0, 0, 8, 8), (8, 1));
        assert_eq!(grant_size(5, 2, 1, 1, 1), (2, 1));
    }
}
