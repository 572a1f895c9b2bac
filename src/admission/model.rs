//! The licensing domain as plain data: portals, licences, SIP connector
//! extensions and plan limits.
//!
//! These types are what the store loads and the CLI edits. They carry no
//! behaviour that depends on time; the rules over them live in
//! [`crate::admission::rules`]. Validation (`validate`) is for writers
//! (CLI, store migrations): the rules themselves never panic on invalid data
//! and read it in the least surprising way, as each rule documents.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Grace period, in days, that a paid licence gets after its end when the
/// operator sets none for the portal.
pub const DEFAULT_GRACE_DAYS: u8 = 15;

/// Longest grace period, in days, the licence agreement allows. Larger
/// stored values are refused by [`Licence::validate`] and clamped by the rules.
pub const MAX_GRACE_DAYS: u8 = 15;

/// Longest paid plan name, in characters.
pub const MAX_PLAN_NAME_LEN: usize = 32;

/// Invalid licensing data: a token this version does not know, or a licence
/// or extension that breaks the licence agreement's constraints.
///
/// Returned by the `FromStr` impls and the `validate` methods; the caller
/// should reject the input (CLI argument, config value, database row) and
/// show this message to the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A status, block reason or expiry policy token is unknown: fix the
    /// stored value, or upgrade trunkgate if a newer version wrote it.
    #[error("unknown {kind} {token:?}")]
    UnknownToken {
        /// What was being parsed, e.g. `"block reason"`.
        kind: &'static str,
        /// The text that did not parse.
        token: String,
    },
    /// A paid plan name is empty, too long, uses characters outside
    /// `[a-z0-9_-]`, or is one of the reserved names `free` and `demo`.
    #[error(
        "invalid plan name {name:?}: expected 1 to {max} characters of a-z, 0-9, '_' or '-', \
         other than \"free\" and \"demo\"",
        max = MAX_PLAN_NAME_LEN
    )]
    InvalidPlanName {
        /// The refused name.
        name: String,
    },
    /// The grace period exceeds what the licence agreement allows: use at
    /// most [`MAX_GRACE_DAYS`].
    #[error("grace period of {grace_days} days exceeds the maximum of {max} days", max = MAX_GRACE_DAYS)]
    GraceTooLong {
        /// The refused number of days.
        grace_days: u8,
    },
    /// The licence window `[valid_from, valid_until)` is empty.
    #[error(
        "licence window is empty: valid_until {} is not after valid_from {}",
        fmt_time(.until),
        fmt_time(.from)
    )]
    EmptyLicenceWindow {
        /// The licence's `valid_from`.
        from: DateTime<Utc>,
        /// The licence's `valid_until`.
        until: DateTime<Utc>,
    },
    /// A free licence has a `valid_until`: the free plan has no end, so
    /// drop the end (or choose a paid or demo plan).
    #[error("the free plan has no end, but valid_until is {}", fmt_time(.until))]
    FreeWithEnd {
        /// The refused end.
        until: DateTime<Utc>,
    },
    /// A paid or demo licence has no `valid_until`: every such licence ends.
    #[error("a {plan} licence needs a valid_until")]
    MissingEnd {
        /// The plan of the refused licence.
        plan: Plan,
    },
    /// An extension grants no channel: give it at least one.
    #[error("a SIP connector extension needs at least one channel")]
    NoChannels,
    /// The extension term `[valid_from, valid_until)` is empty.
    #[error(
        "extension term is empty: valid_until {} is not after valid_from {}",
        fmt_time(.until),
        fmt_time(.from)
    )]
    EmptyExtensionTerm {
        /// The extension's `valid_from`.
        from: DateTime<Utc>,
        /// The extension's `valid_until`.
        until: DateTime<Utc>,
    },
}

/// Formats an instant as RFC 3339 in UTC with a `Z`, with fractional seconds
/// only when there are some: the one time format of operator-facing text.
pub(crate) fn fmt_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Immutable identifier of a portal. Trunks and users are bound to it, never
/// to the portal's domain, which a new portal may reuse after a deletion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PortalId(String);

impl PortalId {
    /// Wraps an identifier as stored in the database.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PortalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for PortalId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for PortalId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// Why a portal is blocked, as stored by the operator or by a batch process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    /// The portal broke the terms of use.
    Violation,
    /// The portal stayed idle too long (also computed, see
    /// [`crate::admission::rules::portal_block`]).
    Inactivity,
    /// The portal's data does not fit the plan it was downgraded to.
    IncompatibleData,
    /// Blocked by hand by the operator.
    Manual,
}

impl BlockReason {
    /// Every reason, in declaration order (for CLI help and tests).
    pub const ALL: [BlockReason; 4] =
        [BlockReason::Violation, BlockReason::Inactivity, BlockReason::IncompatibleData, BlockReason::Manual];

    /// The stable token stored in the database and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Violation => "violation",
            BlockReason::Inactivity => "inactivity",
            BlockReason::IncompatibleData => "incompatible_data",
            BlockReason::Manual => "manual",
        }
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BlockReason {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlockReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| ModelError::UnknownToken { kind: "block reason", token: s.to_owned() })
    }
}

/// Lifecycle state of a portal as stored. Blocks computed from the clock
/// (inactivity, an expired licence) are not stored here: see
/// [`crate::admission::rules::portal_block`].
///
/// Text form (`Display`, `FromStr`, serde): `active`, `blocked:<reason>`,
/// `deleting`, `deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum PortalStatus {
    /// In service.
    Active,
    /// Blocked for the given reason until the operator unblocks it.
    Blocked(BlockReason),
    /// Deletion started; it completes within 90 days.
    Deleting,
    /// Deleted; its domain may belong to another portal now.
    Deleted,
}

impl PortalStatus {
    /// The status kind alone: `active`, `blocked`, `deleting` or `deleted`
    /// (for a database column next to a separate block reason column).
    pub fn as_str(self) -> &'static str {
        match self {
            PortalStatus::Active => "active",
            PortalStatus::Blocked(_) => "blocked",
            PortalStatus::Deleting => "deleting",
            PortalStatus::Deleted => "deleted",
        }
    }

    /// The stored block reason, if the status is `blocked`.
    pub fn block_reason(self) -> Option<BlockReason> {
        match self {
            PortalStatus::Blocked(reason) => Some(reason),
            _ => None,
        }
    }

    /// Whether the portal is being deleted or is deleted: it never takes
    /// calls or registrations again.
    pub fn is_deleted(self) -> bool {
        matches!(self, PortalStatus::Deleting | PortalStatus::Deleted)
    }
}

impl fmt::Display for PortalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortalStatus::Blocked(reason) => write!(f, "blocked:{reason}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl FromStr for PortalStatus {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(PortalStatus::Active),
            "deleting" => Ok(PortalStatus::Deleting),
            "deleted" => Ok(PortalStatus::Deleted),
            _ => match s.strip_prefix("blocked:") {
                Some(reason) => reason.parse().map(PortalStatus::Blocked),
                None => Err(ModelError::UnknownToken { kind: "portal status", token: s.to_owned() }),
            },
        }
    }
}

impl From<PortalStatus> for String {
    fn from(status: PortalStatus) -> Self {
        status.to_string()
    }
}

impl TryFrom<String> for PortalStatus {
    type Error = ModelError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A portal's plan.
///
/// Text form (`as_str`, `FromStr`, serde): `free`, `demo`, or the paid
/// plan's name (1 to 32 characters of `[a-z0-9_-]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Plan {
    /// No end, basic limits; needs an extension for the SIP connector.
    Free,
    /// Full functionality, SIP connector included, until it ends; no grace.
    Demo,
    /// A paid plan, by name. Build it with [`Plan::paid`] or `FromStr` to
    /// get the name checked.
    Paid(String),
}

impl Plan {
    /// A paid plan, after checking its name.
    pub fn paid(name: impl Into<String>) -> Result<Self, ModelError> {
        let plan = Plan::Paid(name.into());
        plan.validate()?;
        Ok(plan)
    }

    /// The stable token: `free`, `demo` or the paid plan's name.
    pub fn as_str(&self) -> &str {
        match self {
            Plan::Free => "free",
            Plan::Demo => "demo",
            Plan::Paid(name) => name,
        }
    }

    /// Whether this is the free plan.
    pub fn is_free(&self) -> bool {
        matches!(self, Plan::Free)
    }

    /// Checks a paid plan's name. Reserved names are refused because
    /// `Paid("free")` would read back from its text form as [`Plan::Free`].
    pub fn validate(&self) -> Result<(), ModelError> {
        let Plan::Paid(name) = self else {
            return Ok(());
        };
        let well_formed = (1..=MAX_PLAN_NAME_LEN).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if well_formed && name != "free" && name != "demo" {
            Ok(())
        } else {
            Err(ModelError::InvalidPlanName { name: name.clone() })
        }
    }

    /// Operator-facing description: `free`, `demo` or `paid '<name>'`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Plan::Paid(name) => format!("paid '{name}'"),
            other => other.as_str().to_owned(),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Plan {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "free" => Ok(Plan::Free),
            "demo" => Ok(Plan::Demo),
            name => Plan::paid(name),
        }
    }
}

impl From<Plan> for String {
    fn from(plan: Plan) -> Self {
        match plan {
            Plan::Paid(name) => name,
            other => other.as_str().to_owned(),
        }
    }
}

impl TryFrom<String> for Plan {
    type Error = ModelError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// What happens when a licence has ended (after the grace period, for a
/// paid plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryPolicy {
    /// The portal counts as blocked (`licence-expired`).
    Block,
    /// The portal falls back to the free plan and its limits.
    DowngradeFree,
}

impl ExpiryPolicy {
    /// Every policy, in declaration order.
    pub const ALL: [ExpiryPolicy; 2] = [ExpiryPolicy::Block, ExpiryPolicy::DowngradeFree];

    /// The stable token: `block` or `downgrade_free`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiryPolicy::Block => "block",
            ExpiryPolicy::DowngradeFree => "downgrade_free",
        }
    }
}

impl fmt::Display for ExpiryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExpiryPolicy {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExpiryPolicy::ALL
            .into_iter()
            .find(|policy| policy.as_str() == s)
            .ok_or_else(|| ModelError::UnknownToken { kind: "expiry policy", token: s.to_owned() })
    }
}

fn default_grace_days() -> u8 {
    DEFAULT_GRACE_DAYS
}

/// A portal's licence: its plan, the window `[valid_from, valid_until)` in
/// which the plan is in force, and what happens after it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    /// The licensed plan.
    pub plan: Plan,
    /// First instant the plan is in force; `None` = since ever. Ignored for
    /// the free plan, which is always in force.
    #[serde(default)]
    pub valid_from: Option<DateTime<Utc>>,
    /// First instant the plan is no longer in force (the window is
    /// half-open). Required for paid and demo plans, absent for free.
    #[serde(default)]
    pub valid_until: Option<DateTime<Utc>>,
    /// What applies after the end (after the grace period, for paid plans).
    pub on_expiry: ExpiryPolicy,
    /// Days a paid licence keeps working after `valid_until`; default
    /// [`DEFAULT_GRACE_DAYS`], at most [`MAX_GRACE_DAYS`]. Demo has no grace
    /// whatever this says.
    #[serde(default = "default_grace_days")]
    pub grace_days: u8,
}

impl Licence {
    /// The free licence: always in force, no end.
    pub fn free() -> Self {
        Licence {
            plan: Plan::Free,
            valid_from: None,
            valid_until: None,
            // Never applies: the free plan does not end.
            on_expiry: ExpiryPolicy::DowngradeFree,
            grace_days: DEFAULT_GRACE_DAYS,
        }
    }

    /// Checks the licence agreement's constraints: a valid plan name, a
    /// grace of at most [`MAX_GRACE_DAYS`], a non-empty window, no end for
    /// free and an end for paid and demo.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.plan.validate()?;
        if self.grace_days > MAX_GRACE_DAYS {
            return Err(ModelError::GraceTooLong { grace_days: self.grace_days });
        }
        match (&self.plan, self.valid_until) {
            (Plan::Free, Some(until)) => return Err(ModelError::FreeWithEnd { until }),
            (Plan::Demo | Plan::Paid(_), None) => {
                return Err(ModelError::MissingEnd { plan: self.plan.clone() });
            }
            _ => {}
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until)
            && until <= from
        {
            return Err(ModelError::EmptyLicenceWindow { from, until });
        }
        Ok(())
    }
}

/// A SIP connector extension bought for a term: `channels` concurrent calls
/// during `[valid_from, valid_until)`. Extensions stack and have no grace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Concurrent calls granted.
    pub channels: u32,
    /// First instant of the term.
    pub valid_from: DateTime<Utc>,
    /// First instant after the term.
    pub valid_until: DateTime<Utc>,
}

impl Extension {
    /// Whether the term covers `now` (half-open: `valid_until` is outside).
    pub fn covers(&self, now: DateTime<Utc>) -> bool {
        self.valid_from <= now && now < self.valid_until
    }

    /// Checks that the extension grants at least one channel over a
    /// non-empty term.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.channels == 0 {
            return Err(ModelError::NoChannels);
        }
        if self.valid_until <= self.valid_from {
            return Err(ModelError::EmptyExtensionTerm { from: self.valid_from, until: self.valid_until });
        }
        Ok(())
    }
}

/// Limits a plan sets, as configured by the operator (changeable at any
/// time; the next snapshot carries the new values). `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Portal users that may be registered at once (a user with several
    /// devices counts once).
    #[serde(default)]
    pub max_users: Option<u32>,
    /// New calls per second admitted for one portal.
    #[serde(default)]
    pub max_cps: Option<u32>,
    /// SIP connector channels the plan itself grants while it is in force
    /// (demo includes the connector; 0 for the other plans by default).
    #[serde(default)]
    pub included_channels: u32,
}

/// The plan limits a snapshot needs: those of the licensed plan, and those
/// of the free plan, which apply whenever the effective plan is free (free
/// licence, licence not started yet, or downgraded after its end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimitsTable {
    /// Limits of `licence.plan`. Not read when that plan is free.
    pub licensed: PlanLimits,
    /// Limits of the free plan.
    pub free: PlanLimits,
}

impl PlanLimitsTable {
    /// The limits for an effective plan, which is either the free plan or
    /// the licensed one.
    pub fn for_plan(&self, plan: &Plan) -> &PlanLimits {
        if plan.is_free() { &self.free } else { &self.licensed }
    }
}

/// Everything the admission rules need to know about one portal, as loaded
/// (and cached) from the shared database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSnapshot {
    /// The portal's immutable id.
    pub id: PortalId,
    /// The portal's current domain (for operators' eyes only).
    pub domain: String,
    /// Stored status.
    pub status: PortalStatus,
    /// When the portal was created; the inactivity clock starts here.
    pub created_at: DateTime<Utc>,
    /// Last activity (e.g. an admitted call); `None` = none since creation.
    pub last_activity_at: Option<DateTime<Utc>>,
    /// Whether extranet users (guests) may register and be call targets.
    pub allow_extranet_calls: bool,
    /// Per-portal call rate limit set by the operator under load; replaces
    /// the plan's `max_cps` when set.
    pub max_cps_override: Option<u32>,
    /// The portal's licence.
    pub licence: Licence,
    /// SIP connector extensions, past, present and future.
    pub extensions: Vec<Extension>,
    /// Limits of the licensed plan and of the free plan.
    pub limits: PlanLimitsTable,
    /// Longest call allowed, in seconds (calls are ended with BYE on both
    /// legs when it is reached). Default 3600.
    #[serde(default = "default_max_call_duration_s")]
    pub max_call_duration_s: u32,
}

/// The default longest call: one hour.
pub const DEFAULT_MAX_CALL_DURATION_S: u32 = 3600;

fn default_max_call_duration_s() -> u32 {
    DEFAULT_MAX_CALL_DURATION_S
}

impl PortalSnapshot {
    /// Checks the licence and every extension (for writers of licence data).
    pub fn validate(&self) -> Result<(), ModelError> {
        self.licence.validate()?;
        self.extensions.iter().try_for_each(Extension::validate)
    }
}

/// What the admission rules need to know about one portal user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// A guest of the portal rather than a member.
    pub extranet: bool,
    /// Disabled by a portal admin: may neither register nor be called.
    pub disabled: bool,
}
