//! The shared database: SQLite (embedded, one node) or PostgreSQL (a fleet).
//!
//! Both backends run the *same* query text and the same Rust code: each method
//! body is written once and expanded for each pool by `with_pool!` and
//! `with_tx!`, so the two cannot drift apart, and one conformance suite
//! (`tests/store.rs`) runs against both. sqlx's `Any` driver would also give
//! one code path, but it loses backend features we need (SQLite's
//! `BEGIN IMMEDIATE`, PostgreSQL's `LISTEN`), so the backend is an enum.
//!
//! Times are stored as Unix seconds (UTC); every write that can change an
//! admission decision bumps `change_counter` in its own transaction, which is
//! what nodes watch to refresh their licence cache.

mod error;
mod rows;
mod snapshot;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::admission::model::{BlockReason, Plan, PortalSnapshot};
use crate::config::DatabaseConfig;
use crate::credentials::{self, Ha1};

pub use allowances::{ALLOWANCES_CHANNEL, AllowanceRow, BATCH_MAX, Grant, GrantRequest, grant_size};
pub use error::StoreError;
pub use leases::{LeaseOp, LeaseOutcome, LeaseRequest, LeaseRow};
pub use rows::{
    CallRecord, ExtensionRow, LicenceRow, PlanRow, PortalRow, TrunkHealthRow, TrunkRegistrationRow, UserRow, format_ts,
    parse_time,
};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl BackendKind {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Handle on the shared database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

/// Runs `$body` with `$pool` bound to the backend's pool; the body is compiled
/// once per backend.
macro_rules! with_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` inside a write transaction bound to `$tx`, committing when the
/// body succeeds; an early `?` return drops (rolls back) the transaction.
/// SQLite starts with `BEGIN IMMEDIATE`: a deferred transaction that later
/// writes fails with SQLITE_BUSY at once, whatever the busy timeout.
macro_rules! with_tx {
    ($self:expr, $tx:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
            Backend::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
        }
    };
}

/// Bumps the change counter (and, on PostgreSQL, notifies listeners on commit).
macro_rules! bump {
    ($store:expr, $tx:ident, $portal:expr) => {{
        sqlx::query("UPDATE change_counter SET version = version + 1 WHERE id = 1").execute(&mut *$tx).await?;
        if matches!($store.backend, Backend::Postgres(_)) {
            // Delivered on commit; the payload is the portal id (or `*`),
            // never data: listeners re-read what they need.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(AsRef::<str>::as_ref(&$portal))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}

/// PostgreSQL NOTIFY channel for licence-relevant changes.
pub const CHANGES_CHANNEL: &str = "trunkgate_changes";

/// Locks portal `$id`'s row until the transaction ends, or fails with
/// `NotFound`. The row is the mutex of the portal's channels: per-call
/// admissions (`leases`) and allowance grants (`allowances`) of one portal
/// queue behind each other there, while other portals proceed. PostgreSQL:
/// NO KEY UPDATE, the lock an update of `last_activity_at` takes anyway,
/// which unlike FOR UPDATE does not hold up inserts of users or extensions
/// (their foreign keys take KEY SHARE). SQLite already holds the database's
/// write lock (`BEGIN IMMEDIATE`).
macro_rules! lock_portal {
    ($store:expr, $tx:ident, $id:expr) => {{
        let sql = if matches!($store.backend, Backend::Postgres(_)) {
            "SELECT 1 FROM portals WHERE id = $1 FOR NO KEY UPDATE"
        } else {
            "SELECT 1 FROM portals WHERE id = $1"
        };
        let found: Option<i32> = sqlx::query_scalar(sql).bind($id).fetch_optional(&mut *$tx).await?;
        if found.is_none() {
            return Err(StoreError::NotFound { what: "portal", id: $id.to_owned() });
        }
    }};
}

/// Fails unless plan `$plan` exists.
macro_rules! require_plan {
    ($tx:ident, $plan:expr) => {{
        let found: Option<String> =
            sqlx::query_scalar("SELECT name FROM plans WHERE name = $1").bind($plan).fetch_optional(&mut *$tx).await?;
        if found.is_none() {
            return Err(StoreError::NotFound { what: "plan", id: $plan.to_string() });
        }
    }};
}

/// Fails unless portal `$id` exists and is not being deleted; yields its domain.
macro_rules! require_live_portal {
    ($tx:ident, $id:expr) => {{
        let row: Option<(String, String)> = sqlx::query_as("SELECT status, domain FROM portals WHERE id = $1")
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?;
        match row {
            None => return Err(StoreError::NotFound { what: "portal", id: $id.to_string() }),
            Some((status, _)) if status == "deleting" || status == "deleted" => {
                return Err(StoreError::Conflict {
                    what: "portal status",
                    detail: format!("portal `{}` is {status}", $id),
                });
            }
            Some((_, domain)) => domain,
        }
    }};
}

/// Inserts or replaces a portal's licence row.
macro_rules! write_licence {
    ($tx:ident, $id:expr, $l:expr, $now:expr) => {{
        let l: &LicenceRow = $l;
        sqlx::query(
            "INSERT INTO licences (portal_id, plan, valid_from, valid_until, on_expiry, grace_days, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (portal_id) DO UPDATE SET plan = excluded.plan, valid_from = excluded.valid_from,
               valid_until = excluded.valid_until, on_expiry = excluded.on_expiry, grace_days = excluded.grace_days,
               updated_at = excluded.updated_at",
        )
        .bind($id)
        .bind(&l.plan)
        .bind(l.valid_from)
        .bind(l.valid_until)
        .bind(&l.on_expiry)
        .bind(l.grace_days)
        .bind(ts($now))
        .execute(&mut *$tx)
        .await?;
    }};
}

// After the macros: `macro_rules!` are in scope only below their definition.
mod allowances;
mod leases;

pub(crate) fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

pub(crate) fn from_ts(s: i64) -> DateTime<Utc> {
    // Out-of-range values cannot be written through this crate; clamp rather
    // than panic if someone edits the database by hand.
    DateTime::from_timestamp(s, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What routing needs to know about a user.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserBrief {
    /// Portal.
    pub portal_id: String,
    /// Login.
    pub username: String,
    /// A guest of the portal.
    pub extranet: bool,
    /// Disabled users are never rung.
    pub disabled: bool,
    /// Fixed contact, if any.
    pub static_contact: Option<String>,
}

/// A licence row with its portal id.
#[derive(sqlx::FromRow)]
struct PortalLicence {
    portal_id: String,
    #[sqlx(flatten)]
    licence: LicenceRow,
}

/// A new portal with its first licence.
#[derive(Debug, Clone)]
pub struct NewPortal {
    /// Immutable id.
    pub id: String,
    /// Domain name (also the SIP digest realm of its users).
    pub domain: String,
    /// First licence.
    pub licence: LicenceRow,
}

/// Changes an operator may make to a portal's settings; `None` keeps a value.
#[derive(Debug, Clone, Default)]
pub struct PortalSettings {
    /// Whether extranet users may be call targets and register.
    pub allow_extranet_calls: Option<bool>,
    /// Per-portal call-rate restriction (calls per second); `Some(None)` clears it.
    pub max_cps_override: Option<Option<u32>>,
    /// Longest call, in seconds.
    pub max_call_duration_s: Option<u32>,
}

/// Changes to a plan's limits; `None` keeps a value, `Some(None)` means unlimited.
#[derive(Debug, Clone, Default)]
pub struct PlanChange {
    /// Largest number of registered portal users.
    pub max_users: Option<Option<u32>>,
    /// Largest call rate, calls per second.
    pub max_cps: Option<Option<u32>>,
    /// Channels the plan itself includes.
    pub included_channels: Option<u32>,
}

impl Store {
    /// Opens the database at `url` and applies the embedded migrations.
    ///
    /// `sqlite://PATH` creates the file (and its folder) when missing, in WAL
    /// mode with `synchronous=NORMAL`; `postgres://…` connects to a server.
    pub async fn connect(url: &str, cfg: &DatabaseConfig) -> Result<Self, StoreError> {
        let store = if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let path = Path::new(path);
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::StateDir { path: dir.to_owned(), source: e })?;
            }
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_millis(cfg.busy_timeout_ms));
            // No ping before each acquire (sqlx's default): the connection
            // is a file opened in this process, which no peer can drop, and
            // the ping is a round trip to its worker thread, two thread
            // wake-ups for every batch of leases or call records.
            let pool = SqlitePoolOptions::new()
                .max_connections(cfg.max_connections.unwrap_or(4))
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
                .connect_with(opts)
                .await?;
            SQLITE_MIGRATOR.run(&pool).await?;
            Store { backend: Backend::Sqlite(pool) }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(cfg.max_connections.unwrap_or(8))
                .acquire_timeout(Duration::from_millis(cfg.acquire_timeout_ms))
                .connect_with(opts)
                .await?;
            POSTGRES_MIGRATOR.run(&pool).await?;
            Store { backend: Backend::Postgres(pool) }
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact_url(url) });
        };
        Ok(store)
    }

    /// Which engine this store uses.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Whether `e` means the database is saturated rather than
    /// unreachable: no pooled connection came free within the acquire
    /// timeout while the pool is full, every connection busy with a query.
    /// A database that does not answer leaves the pool short: its
    /// connections fail and are closed, and new ones cannot connect. (One
    /// whose connections all hang mid-query, a black-holed network, looks
    /// saturated until they fail.)
    pub fn is_saturated(&self, e: &StoreError) -> bool {
        matches!(e, StoreError::Saturated(_))
            || matches!(e, StoreError::Database(sqlx::Error::PoolTimedOut))
                && with_pool!(self, pool => {
                    pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections()
                })
    }

    /// How long a request waits for a pooled connection before it fails.
    pub fn acquire_timeout(&self) -> std::time::Duration {
        with_pool!(self, pool => pool.options().get_acquire_timeout())
    }

    /// A round trip to the database (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }

    /// The change counter: it moves whenever licence-relevant data changes.
    pub async fn change_version(&self) -> Result<i64, StoreError> {
        let v: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT version FROM change_counter WHERE id = 1").fetch_one(pool).await?
        });
        Ok(v)
    }

    // ---- plans -------------------------------------------------------------

    /// Creates or changes a plan's limits. A new plan starts unlimited with no
    /// included channels unless the change says otherwise.
    pub async fn plan_set(&self, name: &str, change: &PlanChange, now: DateTime<Utc>) -> Result<PlanRow, StoreError> {
        Plan::from_str(name).map_err(|e| StoreError::Invalid { field: "plan", detail: e.to_string() })?;
        let row: PlanRow = with_tx!(self, tx => {
            let old: Option<PlanRow> = sqlx::query_as("SELECT * FROM plans WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            let base = old.unwrap_or(PlanRow { name: name.to_owned(), max_users: None, max_cps: None, included_channels: 0, updated_at: 0 });
            let max_users = change.max_users.map_or(base.max_users, |v| v.map(i64::from));
            let max_cps = change.max_cps.map_or(base.max_cps, |v| v.map(i64::from));
            let included = change.included_channels.map_or(base.included_channels, i64::from);
            sqlx::query(
                "INSERT INTO plans (name, max_users, max_cps, included_channels, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO UPDATE SET max_users = excluded.max_users, max_cps = excluded.max_cps,
                 included_channels = excluded.included_channels, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(max_users)
            .bind(max_cps)
            .bind(included)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            bump!(self, tx, "*");
            PlanRow { name: name.to_owned(), max_users, max_cps, included_channels: included, updated_at: ts(now) }
        });
        Ok(row)
    }

    /// Every plan, by name.
    pub async fn plans(&self) -> Result<Vec<PlanRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM plans ORDER BY name").fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// One plan.
    pub async fn plan(&self, name: &str) -> Result<Option<PlanRow>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM plans WHERE name = $1").bind(name).fetch_optional(pool).await?
        });
        Ok(row)
    }

    // ---- portals -----------------------------------------------------------

    /// Creates a portal and its licence in one transaction.
    pub async fn portal_add(&self, new: &NewPortal, now: DateTime<Utc>) -> Result<(), StoreError> {
        if !crate::config::is_token(&new.id, 128) {
            return Err(StoreError::Invalid {
                field: "id",
                detail: "portal id must be 1 to 128 characters of letters, digits, `.`, `_` and `-`".into(),
            });
        }
        check_domain(&new.domain)?;
        new.licence.validate()?;
        let domain = new.domain.to_ascii_lowercase();
        with_tx!(self, tx => {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM portals WHERE id = $1")
                .bind(&new.id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Err(StoreError::Conflict { what: "portal", detail: format!("portal id `{}` exists (ids are never reused)", new.id) });
            }
            let taken: Option<String> = sqlx::query_scalar("SELECT id FROM portals WHERE domain = $1 AND status <> 'deleted'")
                .bind(&domain)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(other) = taken {
                return Err(StoreError::Conflict { what: "domain", detail: format!("domain `{domain}` belongs to portal `{other}`") });
            }
            require_plan!(tx, &new.licence.plan);
            sqlx::query(
                "INSERT INTO portals (id, domain, status, created_at, last_activity_at) VALUES ($1, $2, 'active', $3, $3)",
            )
            .bind(&new.id)
            .bind(&domain)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            write_licence!(tx, &new.id, &new.licence, now);
            bump!(self, tx, new.id.as_str());
        });
        Ok(())
    }

    /// One portal, whatever its status.
    pub async fn portal(&self, id: &str) -> Result<Option<PortalRow>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM portals WHERE id = $1").bind(id).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// The live (not purged) portal that owns `domain`, if any.
    pub async fn portal_by_domain(&self, domain: &str) -> Result<Option<PortalRow>, StoreError> {
        let domain = domain.to_ascii_lowercase();
        let row = with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM portals WHERE domain = $1 AND status <> 'deleted'")
                .bind(&domain)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Every portal, by id.
    pub async fn portals(&self) -> Result<Vec<PortalRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM portals ORDER BY id").fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Blocks a portal (or changes the reason of a block).
    pub async fn portal_block(&self, id: &str, reason: BlockReason, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.transition(id, &["active", "blocked"], "blocked", Some(reason.as_str()), now).await
    }

    /// Lifts a stored block.
    pub async fn portal_unblock(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.transition(id, &["blocked"], "active", None, now).await
    }

    /// Starts the deletion of a portal: from now on its calls are refused.
    pub async fn portal_delete(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.transition(id, &["active", "blocked"], "deleting", None, now).await
    }

    /// Completes a deletion: the portal is `deleted`, its credentials are
    /// erased and its domain may be given to a new portal. The id stays taken.
    pub async fn portal_purge(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.transition(id, &["deleting"], "deleted", None, now).await
    }

    async fn transition(
        &self,
        id: &str,
        from: &[&str],
        to: &'static str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_tx!(self, tx => {
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM portals WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(status) = status else {
                return Err(StoreError::NotFound { what: "portal", id: id.to_owned() });
            };
            if !from.contains(&status.as_str()) {
                let hint = match (status.as_str(), to) {
                    ("active", "active") => " (it is not blocked)".to_owned(),
                    (_, "deleted") => format!(" (run `portal delete {id}` first)"),
                    _ => String::new(),
                };
                return Err(StoreError::Conflict {
                    what: "portal status",
                    detail: format!("portal `{id}` is {status}; cannot make it {to}{hint}"),
                });
            }
            let now = ts(now);
            sqlx::query(
                "UPDATE portals SET status = $2, block_reason = $3,
                   deleting_since = CASE WHEN $2 = 'deleting' THEN $4 ELSE deleting_since END,
                   deleted_at = CASE WHEN $2 = 'deleted' THEN $4 ELSE deleted_at END,
                   version = version + 1
                 WHERE id = $1",
            )
            .bind(id)
            .bind(to)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if to == "deleted" {
                sqlx::query("DELETE FROM users WHERE portal_id = $1").bind(id).execute(&mut *tx).await?;
            }
            bump!(self, tx, id);
        });
        Ok(())
    }

    /// Changes a portal's settings.
    pub async fn portal_configure(&self, id: &str, s: &PortalSettings) -> Result<PortalRow, StoreError> {
        if let Some(d) = s.max_call_duration_s
            && d == 0
        {
            return Err(StoreError::Invalid {
                field: "max_call_duration_s",
                detail: "must be at least 1 second".into(),
            });
        }
        let row = with_tx!(self, tx => {
            let row: Option<PortalRow> = sqlx::query_as("SELECT * FROM portals WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Err(StoreError::NotFound { what: "portal", id: id.to_owned() });
            };
            let allow = s.allow_extranet_calls.unwrap_or(row.allow_extranet_calls);
            let cps = s.max_cps_override.map_or(row.max_cps_override, |v| v.map(i64::from));
            let dur = s.max_call_duration_s.map_or(row.max_call_duration_s, i64::from);
            sqlx::query(
                "UPDATE portals SET allow_extranet_calls = $2, max_cps_override = $3, max_call_duration_s = $4,
                 version = version + 1 WHERE id = $1",
            )
            .bind(id)
            .bind(allow)
            .bind(cps)
            .bind(dur)
            .execute(&mut *tx)
            .await?;
            bump!(self, tx, id);
            PortalRow { allow_extranet_calls: allow, max_cps_override: cps, max_call_duration_s: dur, version: row.version + 1, ..row }
        });
        Ok(row)
    }

    /// Records activity (an admitted call) on a portal.
    pub async fn portal_touch(&self, id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE portals SET last_activity_at = $2 WHERE id = $1 AND (last_activity_at IS NULL OR last_activity_at < $2)")
                .bind(id)
                .bind(ts(now))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    // ---- licences and extensions --------------------------------------------

    /// Replaces a portal's licence.
    pub async fn licence_set(&self, id: &str, licence: &LicenceRow, now: DateTime<Utc>) -> Result<(), StoreError> {
        licence.validate()?;
        with_tx!(self, tx => {
            require_live_portal!(tx, id);
            require_plan!(tx, &licence.plan);
            write_licence!(tx, id, licence, now);
            bump!(self, tx, id);
        });
        Ok(())
    }

    /// A portal's licence.
    pub async fn licence(&self, id: &str) -> Result<Option<LicenceRow>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as("SELECT plan, valid_from, valid_until, on_expiry, grace_days FROM licences WHERE portal_id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Adds a SIP connector extension; returns its id.
    pub async fn extension_add(
        &self,
        id: &str,
        channels: u32,
        valid_from: DateTime<Utc>,
        valid_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        if channels == 0 {
            return Err(StoreError::Invalid { field: "channels", detail: "must be at least 1".into() });
        }
        if valid_until <= valid_from {
            return Err(StoreError::Invalid { field: "valid_until", detail: "must be after valid_from".into() });
        }
        let ext_id = with_tx!(self, tx => {
            require_live_portal!(tx, id);
            let ext_id: i64 = sqlx::query_scalar(
                "INSERT INTO extensions (portal_id, channels, valid_from, valid_until, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(id)
            .bind(i64::from(channels))
            .bind(ts(valid_from))
            .bind(ts(valid_until))
            .bind(ts(now))
            .fetch_one(&mut *tx)
            .await?;
            bump!(self, tx, id);
            ext_id
        });
        Ok(ext_id)
    }

    /// A portal's extensions, oldest first.
    pub async fn extensions(&self, id: &str) -> Result<Vec<ExtensionRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT id, channels, valid_from, valid_until FROM extensions WHERE portal_id = $1 ORDER BY valid_from, id")
                .bind(id)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    // ---- users ---------------------------------------------------------------

    /// Adds a portal user. The password is checked against the rules and only
    /// its HA1 values (realm = the portal's domain) are stored.
    pub async fn user_add(
        &self,
        portal: &str,
        username: &str,
        password: &str,
        extranet: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        credentials::check_username(username)?;
        credentials::check_password(username, password)?;
        with_tx!(self, tx => {
            let domain = require_live_portal!(tx, portal);
            let ha1 = Ha1::compute(username, &domain, password);
            let res = sqlx::query(
                "INSERT INTO users (portal_id, username, realm, ha1_md5, ha1_sha256, extranet, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(portal)
            .bind(username)
            .bind(&domain)
            .bind(&ha1.md5)
            .bind(&ha1.sha256)
            .bind(extranet)
            .bind(ts(now))
            .execute(&mut *tx)
            .await;
            match res {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    return Err(StoreError::Conflict { what: "user", detail: format!("user `{username}` exists in portal `{portal}`") });
                }
                r => r?,
            };
            bump!(self, tx, portal);
        });
        Ok(())
    }

    /// A portal's users, by name.
    pub async fn users(&self, portal: &str) -> Result<Vec<UserRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM users WHERE portal_id = $1 ORDER BY username").bind(portal).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// One user.
    pub async fn user(&self, portal: &str, username: &str) -> Result<Option<UserRow>, StoreError> {
        let row = with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM users WHERE portal_id = $1 AND username = $2")
                .bind(portal)
                .bind(username)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Sets (or clears) a user's static contact: a desk phone on a fixed
    /// address that does not register. Must be a `sip:` URI with an IP host.
    pub async fn user_set_static_contact(
        &self,
        portal: &str,
        username: &str,
        contact: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(c) = contact {
            let ok = crate::sip::message::Uri::parse(c)
                .ok()
                .and_then(|u| {
                    u.as_sip().map(|s| {
                        s.host_str().trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok()
                    })
                })
                .unwrap_or(false);
            if !ok {
                return Err(StoreError::Invalid {
                    field: "contact",
                    detail: format!(
                        "`{c}` is not a sip: URI with an IP address host (such as sip:desk@192.0.2.5:5060)"
                    ),
                });
            }
        }
        with_tx!(self, tx => {
            let res = sqlx::query("UPDATE users SET static_contact = $3 WHERE portal_id = $1 AND username = $2")
                .bind(portal)
                .bind(username)
                .bind(contact)
                .execute(&mut *tx)
                .await?;
            if res.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "user", id: format!("{portal}/{username}") });
            }
            bump!(self, tx, portal);
        });
        Ok(())
    }

    /// Sets what a user may dial out (`any`, `none`, patterns) and/or the
    /// caller number their outbound calls present (`Some(None)`: the
    /// trunk's).
    pub async fn user_set_outbound(
        &self,
        portal: &str,
        username: &str,
        permission: Option<&str>,
        number: Option<Option<&str>>,
    ) -> Result<(), StoreError> {
        if let Some(p) = permission {
            crate::b2bua::outbound::Permission::parse(p)
                .map_err(|detail| StoreError::Invalid { field: "outbound", detail })?;
        }
        if let Some(Some(n)) = number {
            let digits = n.strip_prefix('+').unwrap_or(n);
            if digits.is_empty() || digits.len() > 32 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(StoreError::Invalid {
                    field: "outbound-number",
                    detail: format!("`{n}` is not a number (digits with an optional leading +)"),
                });
            }
        }
        with_tx!(self, tx => {
            let exists: Option<(String,)> = sqlx::query_as("SELECT username FROM users WHERE portal_id = $1 AND username = $2")
                .bind(portal)
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound { what: "user", id: format!("{portal}/{username}") });
            }
            if let Some(p) = permission {
                sqlx::query("UPDATE users SET outbound = $3 WHERE portal_id = $1 AND username = $2")
                    .bind(portal)
                    .bind(username)
                    .bind(p.trim())
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(n) = number {
                sqlx::query("UPDATE users SET outbound_number = $3 WHERE portal_id = $1 AND username = $2")
                    .bind(portal)
                    .bind(username)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
            }
            bump!(self, tx, portal);
        });
        Ok(())
    }

    /// Disables or re-enables a user.
    pub async fn user_set_disabled(&self, portal: &str, username: &str, disabled: bool) -> Result<(), StoreError> {
        with_tx!(self, tx => {
            let res = sqlx::query("UPDATE users SET disabled = $3 WHERE portal_id = $1 AND username = $2")
                .bind(portal)
                .bind(username)
                .bind(disabled)
                .execute(&mut *tx)
                .await?;
            if res.rows_affected() == 0 {
                return Err(StoreError::NotFound { what: "user", id: format!("{portal}/{username}") });
            }
            bump!(self, tx, portal);
        });
        Ok(())
    }

    /// Everything the licence rules need about one portal, read in one
    /// consistent view. `None` when no portal has that id.
    pub async fn portal_snapshot(&self, id: &str) -> Result<Option<PortalSnapshot>, StoreError> {
        let (portal, licence, extensions, plans) = with_tx!(self, tx => {
            let portal: Option<PortalRow> = sqlx::query_as("SELECT * FROM portals WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let licence: Option<LicenceRow> = sqlx::query_as(
                "SELECT plan, valid_from, valid_until, on_expiry, grace_days FROM licences WHERE portal_id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let extensions: Vec<ExtensionRow> = sqlx::query_as(
                "SELECT id, channels, valid_from, valid_until FROM extensions WHERE portal_id = $1 ORDER BY valid_from, id",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            let plans: Vec<PlanRow> = sqlx::query_as(
                "SELECT * FROM plans WHERE name = 'free' OR name = (SELECT plan FROM licences WHERE portal_id = $1)",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            (portal, licence, extensions, plans)
        });
        let Some(portal) = portal else { return Ok(None) };
        snapshot::build(portal, licence, &extensions, &plans).map(Some)
    }

    /// Every user's routing facts (no credentials), for the licence cache:
    /// the admission path never queries users per call.
    pub async fn user_briefs(&self) -> Result<Vec<UserBrief>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT portal_id, username, extranet, disabled, static_contact FROM users")
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Snapshots of every portal (deleted ones included, so their ids keep
    /// being refused as such), read in one transaction: four queries
    /// whatever the number of portals. What the licence cache loads.
    pub async fn all_snapshots(&self) -> Result<Vec<PortalSnapshot>, StoreError> {
        let (portals, licences, extensions, plans) = with_tx!(self, tx => {
            let portals: Vec<PortalRow> = sqlx::query_as("SELECT * FROM portals ORDER BY id").fetch_all(&mut *tx).await?;
            let licences: Vec<PortalLicence> = sqlx::query_as(
                "SELECT portal_id, plan, valid_from, valid_until, on_expiry, grace_days FROM licences",
            )
            .fetch_all(&mut *tx)
            .await?;
            let extensions: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
                "SELECT e.portal_id, e.id, e.channels, e.valid_from, e.valid_until FROM extensions e
                 JOIN portals p ON p.id = e.portal_id WHERE p.status <> 'deleted' ORDER BY e.valid_from, e.id",
            )
            .fetch_all(&mut *tx)
            .await?;
            let plans: Vec<PlanRow> = sqlx::query_as("SELECT * FROM plans").fetch_all(&mut *tx).await?;
            (portals, licences, extensions, plans)
        });
        let mut lic: std::collections::HashMap<String, LicenceRow> =
            licences.into_iter().map(|l| (l.portal_id, l.licence)).collect();
        let mut ext: std::collections::HashMap<String, Vec<ExtensionRow>> = std::collections::HashMap::new();
        for (portal, id, channels, valid_from, valid_until) in extensions {
            ext.entry(portal).or_default().push(ExtensionRow { id, channels, valid_from, valid_until });
        }
        let mut out = Vec::with_capacity(portals.len());
        for p in portals {
            let licence = lic.remove(&p.id);
            let e = ext.remove(&p.id).unwrap_or_default();
            let id = p.id.clone();
            match snapshot::build(p, licence, &e, &plans) {
                Ok(s) => out.push(s),
                // One corrupt row must not take every portal down: skip it
                // (its calls are refused as portal-not-found) and say so.
                Err(e) => tracing::error!(portal = %id, error = %e, "portal row is invalid; treated as missing"),
            }
        }
        Ok(out)
    }

    // ---- calls -----------------------------------------------------------------

    /// Calls in progress for a portal across the fleet: unexpired leases.
    pub async fn active_calls(&self, portal: &str, now: DateTime<Utc>) -> Result<u32, StoreError> {
        let n: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM call_leases WHERE portal_id = $1 AND expires_at > $2")
                .bind(portal)
                .bind(ts(now))
                .fetch_one(pool)
                .await?
        });
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Claims (or renews) the registration of cloud-PBX trunk `trunk` for
    /// `node` until `expires_at`: true when this node holds it now (it was
    /// free, expired, or already this node's). Atomic: two nodes racing
    /// for a free trunk never both win.
    pub async fn claim_registration(
        &self,
        trunk: &str,
        node: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO trunk_registrations (trunk, node_id, expires_at, state, detail, updated_at)
                 VALUES ($1, $2, $3, 'registering', NULL, $4)
                 ON CONFLICT (trunk) DO UPDATE SET node_id = excluded.node_id, expires_at = excluded.expires_at,
                   updated_at = excluded.updated_at
                 WHERE trunk_registrations.node_id = excluded.node_id OR trunk_registrations.expires_at <= $4",
            )
            .bind(trunk)
            .bind(node)
            .bind(expires_at)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Records the registration state `node` sees for `trunk` (only while
    /// it holds the claim).
    pub async fn set_registration_state(
        &self,
        trunk: &str,
        node: &str,
        state: &str,
        detail: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE trunk_registrations SET state = $3, detail = $4, updated_at = $5 WHERE trunk = $1 AND node_id = $2",
            )
            .bind(trunk)
            .bind(node)
            .bind(state)
            .bind(detail)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Gives the claim up (the node stops): another node may take it at once.
    pub async fn release_registration(&self, trunk: &str, node: &str) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query("UPDATE trunk_registrations SET expires_at = 0, state = 'released' WHERE trunk = $1 AND node_id = $2")
                .bind(trunk)
                .bind(node)
                .execute(pool)
                .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Every trunk's registration row.
    pub async fn registrations(&self) -> Result<Vec<TrunkRegistrationRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT trunk, node_id, expires_at, state, detail, updated_at FROM trunk_registrations ORDER BY trunk")
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Records whether `node` finds `trunk`'s PBX up.
    pub async fn set_trunk_health(
        &self,
        trunk: &str,
        node: &str,
        up: bool,
        since: i64,
        detail: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO trunk_health (trunk, node_id, up, since, detail, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (trunk, node_id) DO UPDATE SET up = excluded.up, since = excluded.since,
                   detail = excluded.detail, updated_at = excluded.updated_at",
            )
            .bind(trunk)
            .bind(node)
            .bind(i64::from(up))
            .bind(since)
            .bind(detail)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Every node's view of every trunk's health.
    pub async fn trunk_health(&self) -> Result<Vec<TrunkHealthRow>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT trunk, node_id, up, since, detail, updated_at FROM trunk_health ORDER BY trunk, node_id")
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Stores (or replaces) outbound trunk `trunk`'s credentials.
    pub async fn trunk_credentials_set(
        &self,
        trunk: &str,
        username: &str,
        password: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        if username.is_empty() || password.is_empty() {
            return Err(StoreError::Invalid {
                field: "credentials",
                detail: "username and password must not be empty".into(),
            });
        }
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO trunk_credentials (trunk, username, password, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (trunk) DO UPDATE SET username = excluded.username, password = excluded.password,
                   updated_at = excluded.updated_at",
            )
            .bind(trunk)
            .bind(username)
            .bind(password)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(())
    }

    /// Removes trunk `trunk`'s credentials; whether there were any.
    pub async fn trunk_credentials_remove(&self, trunk: &str) -> Result<bool, StoreError> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM trunk_credentials WHERE trunk = $1").bind(trunk).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Every trunk's stored credentials: (trunk, username, password).
    pub async fn trunk_credentials(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as("SELECT trunk, username, password FROM trunk_credentials ORDER BY trunk").fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Writes call records (in one transaction).
    pub async fn call_records_insert(&self, records: &[CallRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        // One multi-row INSERT per chunk, not one statement per record:
        // each statement is a round trip to SQLite's worker thread.
        with_tx!(self, tx => {
            for chunk in statement_chunks(records) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO call_records (call_id, node_id, portal_id, trunk, direction, caller, callee, target_user,
                       started_at, answered_at, ended_at, outcome, sip_status, reason, media) ",
                );
                q.push_values(chunk, |mut row, r| {
                    row.push_bind(&r.call_id)
                        .push_bind(&r.node_id)
                        .push_bind(&r.portal_id)
                        .push_bind(&r.trunk)
                        .push_bind(&r.direction)
                        .push_bind(&r.caller)
                        .push_bind(&r.callee)
                        .push_bind(&r.target_user)
                        .push_bind(r.started_at)
                        .push_bind(r.answered_at)
                        .push_bind(r.ended_at)
                        .push_bind(&r.outcome)
                        .push_bind(r.sip_status)
                        .push_bind(&r.reason)
                        .push_bind(&r.media);
                });
                q.build().execute(&mut *tx).await?;
            }
        });
        Ok(())
    }

    /// Call records, newest first, optionally for one portal and since a time.
    pub async fn call_records(
        &self,
        portal: Option<&str>,
        since: Option<DateTime<Utc>>,
        limit: u32,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT * FROM call_records WHERE ($1 IS NULL OR portal_id = $1) AND started_at >= $2
                 ORDER BY started_at DESC, id DESC LIMIT $3",
            )
            .bind(portal)
            .bind(since.map_or(i64::MIN, ts))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }
}

/// Most call records per INSERT (well under SQLite's and PostgreSQL's
/// limits on bound values: 15 per row).
const RECORDS_PER_STATEMENT: usize = 256;

/// `items` in chunks whose sizes are powers of two, largest first (a batch
/// of 300 goes as 256 + 32 + 8 + 4): a multi-row statement's text depends
/// on its row count, and the connection's statement cache (100 texts)
/// keeps a prepared statement per text. The call records' batches (one per
/// 200 ms, hundreds of rows under load) came in so many sizes that SQLite
/// parsed a 300-row INSERT anew for nearly every batch: a fifth of its
/// thread's time at 1500 calls per second. In these chunks they reuse at
/// most nine texts. The lease writer's batches (also 200 ms) go the same
/// way.
pub(crate) fn statement_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = items.len().min(RECORDS_PER_STATEMENT);
        // The largest power of two not above n.
        let size = 1 << (usize::BITS - 1 - n.leading_zeros());
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// Checks a portal domain name (RFC 1035 host name, lowercase or not).
fn check_domain(domain: &str) -> Result<(), StoreError> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid { field: "domain", detail: format!("`{domain}` is not a valid domain name") })
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host… → scheme://user:***@host…
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_come_in_power_of_two_chunks_largest_first_covering_the_batch_in_order() {
        let items: Vec<u32> = (0..1000).collect();
        let sizes = |n: usize| super::statement_chunks(&items[..n]).map(<[u32]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(300), [256, 32, 8, 4]);
        assert_eq!(sizes(255), [128, 64, 32, 16, 8, 4, 2, 1]);
        assert_eq!(sizes(1000), [256, 256, 256, 128, 64, 32, 8]);
        // Every batch size from 1 to 1000 uses only the nine texts, and the
        // chunks put back together are the batch in order.
        let mut texts = std::collections::BTreeSet::new();
        for n in 1..=1000 {
            let joined: Vec<u32> = super::statement_chunks(&items[..n]).flatten().copied().collect();
            assert_eq!(joined, items[..n]);
            texts.extend(sizes(n));
        }
        assert_eq!(texts.into_iter().collect::<Vec<_>>(), [1, 2, 4, 8, 16, 32, 64, 128, 256]);
    }
}
