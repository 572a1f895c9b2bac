//! Inputs and outputs of the admission decision: the call request and the
//! fleet counters going in, the verdict with its reason and trace coming out.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::admission::answers::RefusalAnswers;
use crate::admission::model::{ModelError, Plan, PortalId};
use crate::admission::rules::PortalBlock;

/// Why a call was refused, anywhere in the pipeline. The token is stable: it
/// is the `Warning` header text prefix, the call record's reason and the
/// metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The source is not a configured trunk (row 1).
    UnknownTrunk,
    /// This node sheds load; the PBX should try another node (row 2).
    Overloaded,
    /// No portal has the trunk's portal id (row 3).
    PortalNotFound,
    /// The portal is being deleted or is deleted (row 3).
    PortalDeleted,
    /// The portal is blocked, stored or for inactivity (row 4).
    PortalBlocked,
    /// The licence ended (after any grace) under the `block` policy (row 4).
    LicenceExpired,
    /// No SIP connector channel is in force (row 5).
    NotLicensed,
    /// Every channel of the portal is in use across the fleet (row 6).
    ChannelsBusy,
    /// The portal's call rate is at its limit (row 7).
    RateLimited,
    /// The dialled number routes to no user or group (row 8).
    NoRoute,
    /// No target of the route is registered (row 8).
    Unavailable,
    /// A portal user's outbound call to a number their permission does not
    /// allow (or the user is disabled).
    NotPermitted,
    /// The shared database cannot be reached; new calls fail closed.
    DatabaseUnavailable,
}

impl Reason {
    /// Every reason, in admission order.
    pub const ALL: [Reason; 13] = [
        Reason::UnknownTrunk,
        Reason::Overloaded,
        Reason::PortalNotFound,
        Reason::PortalDeleted,
        Reason::PortalBlocked,
        Reason::LicenceExpired,
        Reason::NotLicensed,
        Reason::ChannelsBusy,
        Reason::RateLimited,
        Reason::NoRoute,
        Reason::Unavailable,
        Reason::NotPermitted,
        Reason::DatabaseUnavailable,
    ];

    /// The stable token, e.g. `channels-busy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownTrunk => "unknown-trunk",
            Reason::Overloaded => "overloaded",
            Reason::PortalNotFound => "portal-not-found",
            Reason::PortalDeleted => "portal-deleted",
            Reason::PortalBlocked => "portal-blocked",
            Reason::LicenceExpired => "licence-expired",
            Reason::NotLicensed => "not-licensed",
            Reason::ChannelsBusy => "channels-busy",
            Reason::RateLimited => "rate-limited",
            Reason::NoRoute => "no-route",
            Reason::Unavailable => "unavailable",
            Reason::NotPermitted => "not-permitted",
            Reason::DatabaseUnavailable => "database-unavailable",
        }
    }

    /// Whether the answer carries `Retry-After`: see
    /// [`RefusalAnswers::retry_after`], where refusal answers are chosen.
    pub fn retry_after(self) -> bool {
        RefusalAnswers::retry_after(self)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == s)
            .ok_or_else(|| ModelError::UnknownToken { kind: "refusal reason", token: s.to_owned() })
    }
}

/// A refused call: the reason, and a detail for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The stable reason.
    pub reason: Reason,
    /// What exactly failed, e.g. `"3 calls in progress, all 3 channels busy"`.
    pub detail: String,
}

impl Refusal {
    /// The text of the `Warning: 399 <host> "<text>"` header:
    /// `"<token>: <detail>"`.
    ///
    /// The warn-text is a SIP quoted-string, and details quote data from the
    /// database (a domain, for one), so `"` and `\` become `'` and `/` and
    /// control characters become spaces: the header can never be broken.
    pub fn warning_text(&self) -> String {
        let text = format!("{}: {}", self.reason, self.detail);
        text.chars()
            .map(|c| match c {
                '"' => '\'',
                '\\' => '/',
                c if c.is_control() => ' ',
                c => c,
            })
            .collect()
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// The call to admit, as seen by the admission rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRequest {
    /// The portal the trunk is bound to.
    pub portal: PortalId,
    /// Whether this node is shedding load right now (decided by the I/O
    /// layer from its own measurements).
    pub node_overloaded: bool,
}

/// The portal's load, counted across the fleet, not including this call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Calls in progress (live leases) of the portal on every node.
    pub active_calls: u32,
    /// Calls of the portal admitted in the current one-second window.
    pub calls_this_second: u32,
}

/// One admission check, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    /// Row 2: the node is not shedding load.
    Overload,
    /// Row 3: the portal exists and is not deleting or deleted.
    Portal,
    /// Row 4: the portal has no stored block.
    Block,
    /// Row 4: the licence has not ended under the `block` policy.
    Licence,
    /// Row 4: a portal on the free plan has not been idle for 50 days.
    Inactivity,
    /// Row 5: some SIP connector channel is in force.
    Channels,
    /// Row 6: a channel is free.
    Busy,
    /// Row 7: the call rate is under the limit.
    Rate,
}

impl CheckName {
    /// The stable token, e.g. `inactivity`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Overload => "overload",
            CheckName::Portal => "portal",
            CheckName::Block => "block",
            CheckName::Licence => "licence",
            CheckName::Inactivity => "inactivity",
            CheckName::Channels => "channels",
            CheckName::Busy => "busy",
            CheckName::Rate => "rate",
        }
    }
}

impl fmt::Display for CheckName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The check passed; the next one runs.
    Pass,
    /// The check failed and decided the refusal; no later check ran.
    Fail,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
        })
    }
}

/// One line of a decision's trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Which check.
    pub name: CheckName,
    /// Whether it passed.
    pub outcome: Outcome,
    /// What it saw, for operators, e.g. `"licence paid 'pro' in force until
    /// 2026-03-01T00:00:00Z"`.
    pub detail: String,
}

/// The admission verdict on one call, with the trace of the checks that ran
/// (printed by `admission explain`; `Display` renders it on several lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Decision {
    /// Every check passed.
    Admit {
        /// SIP connector channels in force for the portal.
        channels: u32,
        /// The plan whose rules applied (free when not started or
        /// downgraded).
        effective_plan: Plan,
        /// Every check, all passed.
        trace: Vec<Check>,
    },
    /// A check failed.
    Refuse {
        /// Why.
        refusal: Refusal,
        /// The checks that ran, the last one failed.
        trace: Vec<Check>,
    },
}

impl Decision {
    /// Whether the call is admitted.
    pub fn is_admitted(&self) -> bool {
        matches!(self, Decision::Admit { .. })
    }

    /// The refusal, if the call is refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Decision::Admit { .. } => None,
            Decision::Refuse { refusal, .. } => Some(refusal),
        }
    }

    /// The refusal reason, if the call is refused.
    pub fn reason(&self) -> Option<Reason> {
        self.refusal().map(|refusal| refusal.reason)
    }

    /// The checks that ran, in order.
    pub fn trace(&self) -> &[Check] {
        match self {
            Decision::Admit { trace, .. } | Decision::Refuse { trace, .. } => trace,
        }
    }
}

impl fmt::Display for Decision {
    /// ```text
    /// refused: portal-blocked (default answer 403): violation (stored status)
    ///   pass  overload    node accepts new calls
    ///   pass  portal      portal p1 (acme.example) is active
    ///   FAIL  block       violation (stored status)
    ///   (later checks not run)
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Admit { channels, effective_plan, .. } => writeln!(
                f,
                "admitted: plan {}, {channels} channel{} in force",
                effective_plan.describe(),
                if *channels == 1 { "" } else { "s" }
            )?,
            Decision::Refuse { refusal, .. } => {
                let reason = refusal.reason;
                let (status, retry) = RefusalAnswers::DEFAULT.answer(reason);
                let retry = if retry { " with Retry-After" } else { "" };
                writeln!(f, "refused: {reason} (default answer {status}{retry}): {}", refusal.detail)?;
            }
        }
        for check in self.trace() {
            writeln!(f, "  {:<4}  {:<10}  {}", check.outcome.to_string(), check.name.as_str(), check.detail)?;
        }
        if !self.is_admitted() {
            f.write_str("  (later checks not run)\n")?;
        }
        Ok(())
    }
}

/// Why a portal user may not register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterRefusal {
    /// The portal is being deleted or is deleted: refuse for good.
    #[error("portal-deleted: the portal is being deleted or is deleted")]
    PortalDeleted,
    /// The portal is blocked (stored or computed) or its licence expired
    /// under `block`: refuse until the operator acts.
    #[error("{}: {}", .0.reason(), .0)]
    PortalBlocked(PortalBlock),
    /// The user is disabled by a portal admin.
    #[error("user-disabled: the user is disabled")]
    UserDisabled,
    /// The user is an extranet guest and the portal does not allow
    /// extranet calls.
    #[error("extranet-not-allowed: the portal does not allow extranet users")]
    ExtranetNotAllowed,
    /// The plan's user limit is reached: another user must unregister, or
    /// the operator must raise the limit.
    #[error("user-limit: {registered} other users registered, the plan allows {max_users}")]
    UserLimit {
        /// Other users registered at the time.
        registered: u32,
        /// The effective plan's `max_users`.
        max_users: u32,
    },
}

impl RegisterRefusal {
    /// Stable token for logs and metrics: `portal-deleted`, `portal-blocked`,
    /// `licence-expired`, `user-disabled`, `extranet-not-allowed`,
    /// `user-limit`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RegisterRefusal::PortalDeleted => "portal-deleted",
            RegisterRefusal::PortalBlocked(block) => block.reason().as_str(),
            RegisterRefusal::UserDisabled => "user-disabled",
            RegisterRefusal::ExtranetNotAllowed => "extranet-not-allowed",
            RegisterRefusal::UserLimit { .. } => "user-limit",
        }
    }
}
