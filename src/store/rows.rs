//! Rows as stored. Times are Unix seconds (serialized as RFC 3339 strings,
//! the one time convention of every `--json` output); enums are their stable
//! tokens.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{StoreError, from_ts, ts};
use crate::admission::model::{ExpiryPolicy, Licence, MAX_GRACE_DAYS, Plan};

/// `plans`: the limits of one plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PlanRow {
    /// Plan name (`free`, `demo` or a paid plan).
    pub name: String,
    /// Largest number of registered users; NULL = unlimited.
    pub max_users: Option<i64>,
    /// Largest call rate (calls per second); NULL = unlimited.
    pub max_cps: Option<i64>,
    /// Channels the plan itself includes while in force.
    pub included_channels: i64,
    /// Last change, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: i64,
}

/// `portals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PortalRow {
    /// Immutable id.
    pub id: String,
    /// Domain (lowercase).
    pub domain: String,
    /// `active`, `blocked`, `deleting` or `deleted`.
    pub status: String,
    /// Set when blocked.
    pub block_reason: Option<String>,
    /// Whether extranet users may be call targets.
    pub allow_extranet_calls: bool,
    /// Per-portal call-rate restriction.
    pub max_cps_override: Option<i64>,
    /// Longest call, in seconds.
    pub max_call_duration_s: i64,
    /// Creation time, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: i64,
    /// Last admitted call (or creation), Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "opt_rfc3339")]
    pub last_activity_at: Option<i64>,
    /// When deletion started, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "opt_rfc3339")]
    pub deleting_since: Option<i64>,
    /// When deletion completed, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "opt_rfc3339")]
    pub deleted_at: Option<i64>,
    /// Bumped on every change of the row.
    pub version: i64,
}

/// `licences`: one per portal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LicenceRow {
    /// Plan name.
    pub plan: String,
    /// Start, Unix seconds (RFC 3339 in JSON output); NULL = in force from creation.
    #[serde(serialize_with = "opt_rfc3339")]
    pub valid_from: Option<i64>,
    /// End, Unix seconds (RFC 3339 in JSON output); NULL for free.
    #[serde(serialize_with = "opt_rfc3339")]
    pub valid_until: Option<i64>,
    /// `block` or `downgrade_free`.
    pub on_expiry: String,
    /// Grace after the end of a paid licence, days (0..=15).
    pub grace_days: i64,
}

impl LicenceRow {
    /// A row from the domain value.
    pub fn from_model(l: &Licence) -> Self {
        Self {
            plan: l.plan.as_str().to_owned(),
            valid_from: l.valid_from.map(ts),
            valid_until: l.valid_until.map(ts),
            on_expiry: l.on_expiry.as_str().to_owned(),
            grace_days: i64::from(l.grace_days),
        }
    }

    /// The domain value, validated.
    pub fn to_model(&self) -> Result<Licence, StoreError> {
        let plan =
            Plan::from_str(&self.plan).map_err(|e| StoreError::Invalid { field: "plan", detail: e.to_string() })?;
        let on_expiry = ExpiryPolicy::from_str(&self.on_expiry)
            .map_err(|e| StoreError::Invalid { field: "on_expiry", detail: e.to_string() })?;
        let grace_days =
            u8::try_from(self.grace_days).ok().filter(|g| *g <= MAX_GRACE_DAYS).ok_or_else(|| StoreError::Invalid {
                field: "grace_days",
                detail: format!("{} is over the {MAX_GRACE_DAYS}-day maximum", self.grace_days),
            })?;
        let l = Licence {
            plan,
            valid_from: self.valid_from.map(from_ts),
            valid_until: self.valid_until.map(from_ts),
            on_expiry,
            grace_days,
        };
        l.validate().map_err(|e| StoreError::Invalid { field: "licence", detail: e.to_string() })?;
        Ok(l)
    }

    /// Checks the row against the licence rules.
    pub fn validate(&self) -> Result<(), StoreError> {
        self.to_model().map(|_| ())
    }
}

/// `extensions`: a SIP connector extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ExtensionRow {
    /// Row id.
    pub id: i64,
    /// Channels it grants.
    pub channels: i64,
    /// Start (inclusive), Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "rfc3339")]
    pub valid_from: i64,
    /// End (exclusive), Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "rfc3339")]
    pub valid_until: i64,
}

/// `users`: a portal user. Holds HA1 values, never a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct UserRow {
    /// Portal.
    pub portal_id: String,
    /// Login.
    pub username: String,
    /// Digest realm (the portal's domain).
    pub realm: String,
    /// MD5 HA1.
    #[serde(skip)]
    pub ha1_md5: String,
    /// SHA-256 HA1.
    #[serde(skip)]
    pub ha1_sha256: String,
    /// A guest of the portal.
    pub extranet: bool,
    /// Disabled users cannot register nor be called.
    pub disabled: bool,
    /// A fixed contact URI (desk phone that does not register).
    pub static_contact: Option<String>,
    /// What the user may dial out: `any`, `none`, or patterns
    /// ([`crate::b2bua::outbound::Permission`]).
    pub outbound: String,
    /// Caller number presented on the user's outbound calls (`None`: the
    /// trunk's).
    pub outbound_number: Option<String>,
    /// Creation time, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "rfc3339")]
    pub created_at: i64,
}

/// `call_records`: one per call attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct CallRecord {
    /// Row id (0 before insertion).
    #[sqlx(default)]
    pub id: i64,
    /// The PBX leg's Call-ID.
    pub call_id: String,
    /// Node that handled it.
    pub node_id: String,
    /// Portal, when the trunk was known.
    pub portal_id: Option<String>,
    /// Trunk name, when known.
    pub trunk: Option<String>,
    /// `inbound` (PBX to portal) or `outbound`.
    pub direction: String,
    /// Caller number.
    pub caller: Option<String>,
    /// Dialled number.
    pub callee: Option<String>,
    /// Portal user who answered.
    pub target_user: Option<String>,
    /// Start, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "rfc3339")]
    pub started_at: i64,
    /// Answer time, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "opt_rfc3339")]
    pub answered_at: Option<i64>,
    /// End time, Unix seconds (RFC 3339 in JSON output).
    #[serde(serialize_with = "opt_rfc3339")]
    pub ended_at: Option<i64>,
    /// `admitted`, `refused`, `answered`, `cancelled`, `failed`…
    pub outcome: String,
    /// Final SIP status.
    pub sip_status: Option<i64>,
    /// Reason token of a refusal.
    pub reason: Option<String>,
    /// Final media figures of an anchored call (JSON object in JSON output).
    #[sqlx(default)]
    #[serde(serialize_with = "json_text")]
    pub media: Option<String>,
}

/// A stored JSON text as the JSON it holds (`null` when absent or not JSON).
pub(super) fn json_text<S: serde::Serializer>(text: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    let v: Option<serde_json::Value> = text.as_deref().and_then(|t| serde_json::from_str(t).ok());
    v.serialize(serializer)
}

/// Stored Unix seconds as RFC 3339 (`2026-01-31T00:00:00Z`), the way every
/// `--json` output gives times.
pub(super) fn rfc3339<S: serde::Serializer>(secs: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_ts(*secs))
}

/// [`rfc3339`] for an optional time (`null` when absent).
pub(super) fn opt_rfc3339<S: serde::Serializer>(secs: &Option<i64>, serializer: S) -> Result<S::Ok, S::Error> {
    match secs {
        Some(secs) => serializer.serialize_some(&format_ts(*secs)),
        None => serializer.serialize_none(),
    }
}

/// Parses an RFC 3339 time for commands and formats stored ones.
pub fn format_ts(s: i64) -> String {
    from_ts(s).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parses RFC 3339 (`2026-01-31T00:00:00Z`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time such as 2026-01-31T00:00:00Z: {e}"))
}

/// `trunk_registrations`: which node registers a cloud-PBX trunk, and how
/// it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TrunkRegistrationRow {
    /// Trunk name.
    pub trunk: String,
    /// The node holding the registration.
    pub node_id: String,
    /// Its claim runs out then (Unix seconds) unless renewed.
    pub expires_at: i64,
    /// `registering`, `registered`, `failed`, `standby`, `released`.
    pub state: String,
    /// Granted expiry, last response, next attempt.
    pub detail: Option<String>,
    /// Last change (Unix seconds).
    pub updated_at: i64,
}

/// `trunk_health`: one node's view of one trunk's PBX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TrunkHealthRow {
    /// Trunk name.
    pub trunk: String,
    /// The node that pings it.
    pub node_id: String,
    /// 1 up, 0 down.
    pub up: i64,
    /// Up or down since (Unix seconds).
    pub since: i64,
    /// Last OPTIONS answer, or why none.
    pub detail: Option<String>,
    /// Last ping (Unix seconds).
    pub updated_at: i64,
}
