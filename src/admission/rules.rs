//! The licensing rules as pure functions of a [`PortalSnapshot`] and an
//! instant.
//!
//! Nothing here reads the clock: `now` is always an argument, so every edge
//! (one second before an expiry, exactly at it, one second after) is a
//! plain unit test. Every interval is half-open, `[from, until)`: at exactly
//! `until` the thing has ended.
//!
//! The rules never panic on the data they are given. Data that
//! [`PortalSnapshot::validate`] would refuse is read the least surprising
//! way: a grace above [`MAX_GRACE_DAYS`] is clamped to it, a paid or demo
//! licence without an end is in force with no end, and counts that would
//! overflow saturate.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::admission::decision::{
    CallRequest, Check, CheckName, Counters, Decision, Outcome, Reason, Refusal, RegisterRefusal,
};
use crate::admission::model::{
    BlockReason, ExpiryPolicy, MAX_GRACE_DAYS, Plan, PortalSnapshot, PortalStatus, UserInfo, fmt_time,
};

/// Days without activity after which a portal on the free plan counts as
/// blocked: exactly this long idle is already blocked.
pub const INACTIVITY_DAYS: u16 = 50;

/// Where a licence stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum LicencePhase {
    /// Before `valid_from`: the portal behaves as on the free plan.
    NotStarted {
        /// The licence's `valid_from`.
        starts_at: DateTime<Utc>,
    },
    /// In its window (the free plan always is).
    InForce {
        /// The licence's `valid_until`; `None` = no end.
        until: Option<DateTime<Utc>>,
    },
    /// A paid licence after its end and before the end of its grace: it
    /// works exactly as in force.
    Grace {
        /// The licence's `valid_until`.
        ended_at: DateTime<Utc>,
        /// First instant after the grace period.
        ends_at: DateTime<Utc>,
    },
    /// Over, grace included: the expiry policy applies.
    Ended {
        /// The licence's `valid_until`.
        ended_at: DateTime<Utc>,
        /// When the policy started to apply (`ended_at` for demo and for a
        /// zero-day grace).
        grace_ended_at: DateTime<Utc>,
        /// The policy in force.
        policy: ExpiryPolicy,
    },
}

/// A licence's standing at an instant: see [`licence_state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceState {
    /// The plan the licence names.
    pub licensed_plan: Plan,
    /// Where the licence stands.
    pub phase: LicencePhase,
}

impl LicenceState {
    /// The plan whose rules and limits apply: the licensed plan in force or
    /// in grace, free before the start or after a `downgrade_free` end, and
    /// `None` after a `block` end (the portal counts as blocked).
    pub fn effective_plan(&self) -> Option<Plan> {
        match self.phase {
            LicencePhase::InForce { .. } | LicencePhase::Grace { .. } => Some(self.licensed_plan.clone()),
            LicencePhase::NotStarted { .. } | LicencePhase::Ended { policy: ExpiryPolicy::DowngradeFree, .. } => {
                Some(Plan::Free)
            }
            LicencePhase::Ended { policy: ExpiryPolicy::Block, .. } => None,
        }
    }

    /// Whether the licence is over under the `block` policy.
    pub fn is_expired_block(&self) -> bool {
        self.effective_plan().is_none()
    }
}

impl fmt::Display for LicenceState {
    /// One line for operators, e.g. `licence paid 'pro' ended
    /// 2026-01-01T00:00:00Z, in grace until 2026-01-16T00:00:00Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.licensed_plan.describe();
        match self.phase {
            LicencePhase::NotStarted { starts_at } => {
                write!(f, "licence {plan} starts {}; the free plan applies until then", fmt_time(&starts_at))
            }
            LicencePhase::InForce { until: None } if self.licensed_plan.is_free() => {
                write!(f, "licence free, always in force")
            }
            LicencePhase::InForce { until: None } => write!(f, "licence {plan} in force, no end"),
            LicencePhase::InForce { until: Some(until) } => {
                write!(f, "licence {plan} in force until {}", fmt_time(&until))
            }
            LicencePhase::Grace { ended_at, ends_at } => {
                write!(f, "licence {plan} ended {}, in grace until {}", fmt_time(&ended_at), fmt_time(&ends_at))
            }
            LicencePhase::Ended { ended_at, grace_ended_at, policy } => {
                fmt_ended(f, &self.licensed_plan, ended_at, grace_ended_at)?;
                match policy {
                    // Same text as the `PortalBlock::LicenceExpired` detail.
                    ExpiryPolicy::Block => f.write_str("; policy block"),
                    ExpiryPolicy::DowngradeFree => f.write_str("; policy downgrade_free: the free plan applies"),
                }
            }
        }
    }
}

/// `licence <plan> ended <t> (no grace | grace ended <t>)`, shared by the
/// licence state and the licence-expired block so both read the same.
fn fmt_ended(
    f: &mut fmt::Formatter<'_>,
    plan: &Plan,
    ended_at: DateTime<Utc>,
    grace_ended_at: DateTime<Utc>,
) -> fmt::Result {
    write!(f, "licence {} ended {}", plan.describe(), fmt_time(&ended_at))?;
    if grace_ended_at == ended_at {
        f.write_str(" (no grace)")
    } else {
        write!(f, " (grace ended {})", fmt_time(&grace_ended_at))
    }
}

/// Which plan is in force at `now`, and why.
///
/// - Free is always in force.
/// - Before a paid or demo licence's `valid_from` it is [`NotStarted`]
///   and the portal behaves as on the free plan.
/// - In `[valid_from, valid_until)` it is [`InForce`].
/// - A paid licence is then in [`Grace`] for `grace_days` (at most
///   [`MAX_GRACE_DAYS`]) and works as in force; demo has no grace.
/// - Then it is [`Ended`] and its `on_expiry` policy applies.
///
/// [`NotStarted`]: LicencePhase::NotStarted
/// [`InForce`]: LicencePhase::InForce
/// [`Grace`]: LicencePhase::Grace
/// [`Ended`]: LicencePhase::Ended
#[must_use]
pub fn licence_state(portal: &PortalSnapshot, now: DateTime<Utc>) -> LicenceState {
    let licence = &portal.licence;
    let phase = match (&licence.plan, licence.valid_from, licence.valid_until) {
        // The free plan has no window: a stray start or end in the data
        // must not take a free portal's plan away.
        (Plan::Free, _, _) => LicencePhase::InForce { until: None },
        (_, Some(starts_at), _) if now < starts_at => LicencePhase::NotStarted { starts_at },
        (_, _, None) => LicencePhase::InForce { until: None },
        (_, _, Some(until)) if now < until => LicencePhase::InForce { until: Some(until) },
        (plan, _, Some(ended_at)) => {
            let grace_days = match plan {
                Plan::Demo => 0,
                _ => licence.grace_days.min(MAX_GRACE_DAYS),
            };
            let grace_ended_at =
                ended_at.checked_add_signed(TimeDelta::days(i64::from(grace_days))).unwrap_or(DateTime::<Utc>::MAX_UTC);
            if now < grace_ended_at {
                LicencePhase::Grace { ended_at, ends_at: grace_ended_at }
            } else {
                LicencePhase::Ended { ended_at, grace_ended_at, policy: licence.on_expiry }
            }
        }
    };
    LicenceState { licensed_plan: licence.plan.clone(), phase }
}

/// Why a portal counts as blocked at an instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortalBlock {
    /// The stored status is `blocked`.
    Stored {
        /// The stored reason.
        reason: BlockReason,
    },
    /// On the free plan and idle for [`INACTIVITY_DAYS`] or more.
    Inactive {
        /// Last activity (creation, if none since).
        last_activity_at: DateTime<Utc>,
    },
    /// The licence ended, grace included, under the `block` policy.
    LicenceExpired {
        /// The licensed plan.
        plan: Plan,
        /// The licence's `valid_until`.
        ended_at: DateTime<Utc>,
        /// When the block started (end of grace).
        grace_ended_at: DateTime<Utc>,
    },
}

impl PortalBlock {
    /// The refusal reason: `portal-blocked`, or `licence-expired` for an
    /// expired licence (the same admission row, told apart for reports).
    pub fn reason(&self) -> Reason {
        match self {
            PortalBlock::Stored { .. } | PortalBlock::Inactive { .. } => Reason::PortalBlocked,
            PortalBlock::LicenceExpired { .. } => Reason::LicenceExpired,
        }
    }

    /// The block's own token: a [`BlockReason`] token (`inactivity` for a
    /// computed inactivity block) or `licence-expired`.
    pub fn token(&self) -> &'static str {
        match self {
            PortalBlock::Stored { reason } => reason.as_str(),
            PortalBlock::Inactive { .. } => BlockReason::Inactivity.as_str(),
            PortalBlock::LicenceExpired { .. } => Reason::LicenceExpired.as_str(),
        }
    }
}

impl fmt::Display for PortalBlock {
    /// The refusal detail, starting with [`PortalBlock::token`] for blocks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortalBlock::Stored { reason } => write!(f, "{reason} (stored status)"),
            PortalBlock::Inactive { last_activity_at } => write!(
                f,
                "inactivity: free plan with no activity since {}, {INACTIVITY_DAYS} days or more",
                fmt_time(last_activity_at)
            ),
            PortalBlock::LicenceExpired { plan, ended_at, grace_ended_at } => {
                fmt_ended(f, plan, *ended_at, *grace_ended_at)?;
                f.write_str("; policy block")
            }
        }
    }
}

/// Whether the portal counts as blocked at `now`, and why: a stored block
/// first, then an expired licence under `block`, then inactivity on the
/// free plan (the last two cannot both hold). Deleting and deleted portals
/// are not "blocked"; check [`PortalStatus::is_deleted`] first.
#[must_use]
pub fn portal_block(portal: &PortalSnapshot, now: DateTime<Utc>) -> Option<PortalBlock> {
    block_at(portal, &licence_state(portal, now), now)
}

/// [`portal_block`] with the licence state already computed.
fn block_at(portal: &PortalSnapshot, state: &LicenceState, now: DateTime<Utc>) -> Option<PortalBlock> {
    stored_block(portal).or_else(|| expired_block(state)).or_else(|| inactivity_block(portal, state, now))
}

fn stored_block(portal: &PortalSnapshot) -> Option<PortalBlock> {
    portal.status.block_reason().map(|reason| PortalBlock::Stored { reason })
}

fn expired_block(state: &LicenceState) -> Option<PortalBlock> {
    match state.phase {
        LicencePhase::Ended { ended_at, grace_ended_at, policy: ExpiryPolicy::Block } => {
            Some(PortalBlock::LicenceExpired { plan: state.licensed_plan.clone(), ended_at, grace_ended_at })
        }
        _ => None,
    }
}

/// The instant from which a portal idle since its last activity (or its
/// creation) counts as inactive, if it is on the free plan.
fn inactivity_deadline(portal: &PortalSnapshot) -> (DateTime<Utc>, DateTime<Utc>) {
    let last = portal.last_activity_at.unwrap_or(portal.created_at);
    let deadline =
        last.checked_add_signed(TimeDelta::days(i64::from(INACTIVITY_DAYS))).unwrap_or(DateTime::<Utc>::MAX_UTC);
    (last, deadline)
}

fn inactivity_block(portal: &PortalSnapshot, state: &LicenceState, now: DateTime<Utc>) -> Option<PortalBlock> {
    if !state.effective_plan().is_some_and(|plan| plan.is_free()) {
        return None;
    }
    let (last_activity_at, deadline) = inactivity_deadline(portal);
    (now >= deadline).then_some(PortalBlock::Inactive { last_activity_at })
}

/// SIP connector channels in force at an instant: see [`channels_in_force`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelGrant {
    /// Sum of the channels of the extensions in force.
    pub from_extensions: u32,
    /// How many extensions are in force.
    pub extensions_in_force: usize,
    /// Channels the effective plan includes (demo's connector).
    pub included: u32,
}

impl ChannelGrant {
    /// All channels in force; 0 means the SIP connector is not licensed.
    pub fn total(&self) -> u32 {
        self.from_extensions.saturating_add(self.included)
    }
}

/// Channels in force at `now`: the sum over the extensions whose term
/// covers `now` (they stack, with no grace), plus the `included_channels`
/// of the effective plan (in force or in grace; none after a `block` end).
#[must_use]
pub fn channels_in_force(portal: &PortalSnapshot, now: DateTime<Utc>) -> ChannelGrant {
    grant(portal, &licence_state(portal, now), now)
}

fn grant(portal: &PortalSnapshot, state: &LicenceState, now: DateTime<Utc>) -> ChannelGrant {
    let (from_extensions, extensions_in_force) = portal
        .extensions
        .iter()
        .filter(|extension| extension.covers(now))
        .fold((0u32, 0usize), |(channels, count), extension| (channels.saturating_add(extension.channels), count + 1));
    let included = state.effective_plan().map_or(0, |plan| portal.limits.for_plan(&plan).included_channels);
    ChannelGrant { from_extensions, extensions_in_force, included }
}

/// The trace being built by [`decide`].
/// The checks of one decision, as `admission explain` shows them. An
/// untraced decision (the node's, where nothing reads the passed checks)
/// keeps only a failure, and never formats a passed check's detail.
struct Trace {
    checks: Vec<Check>,
    passes: bool,
}

impl Trace {
    fn new(passes: bool) -> Self {
        Self { checks: Vec::new(), passes }
    }

    fn pass(&mut self, name: CheckName, detail: impl FnOnce() -> String) {
        if self.passes {
            self.checks.push(Check { name, outcome: Outcome::Pass, detail: detail() });
        }
    }

    /// Records the failed check and returns the refusal it decides; both
    /// carry the same detail, so `admission explain` and the `Warning`
    /// header agree.
    fn fail(&mut self, name: CheckName, reason: Reason, detail: impl Into<String>) -> Refusal {
        let detail = detail.into();
        self.checks.push(Check { name, outcome: Outcome::Fail, detail: detail.clone() });
        Refusal { reason, detail }
    }
}

/// Decides whether to admit a call for `request.portal` (DESIGN.md,
/// "Admission order and answers", rows 2 to 7). The first failing check
/// decides, in this order:
///
/// 1. the node is not overloaded (`overloaded`);
/// 2. the portal exists (`portal-not-found`) and is not deleting or deleted
///    (`portal-deleted`);
/// 3. no stored block (`portal-blocked`), no licence ended under `block`
///    (`licence-expired`), no inactivity on the free plan (`portal-blocked`);
/// 4. some channel is in force (`not-licensed`);
/// 5. `active_calls` is below the channels (`channels-busy`);
/// 6. `calls_this_second` is below the portal's `max_cps_override`, or else
///    the effective plan's `max_cps` (`rate-limited`; `None` = unlimited,
///    `Some(0)` refuses every call).
///
/// `portal` must be the snapshot of `request.portal`, `None` if there is no
/// such portal. A snapshot of another portal is refused as
/// `portal-not-found`: admitting on someone else's licence would be worse.
///
/// This is [`decide_licence`] followed by [`AwaitingChannel::decide`]; a
/// driver that takes the channel atomically elsewhere (a fleet's lease)
/// calls the two steps itself.
#[must_use]
pub fn decide(
    request: &CallRequest,
    portal: Option<&PortalSnapshot>,
    counters: &Counters,
    now: DateTime<Utc>,
) -> Decision {
    match decide_licence(request, portal, counters.calls_this_second, now) {
        Ok(awaiting) => awaiting.decide(counters.active_calls),
        Err(refused) => refused,
    }
}

/// Rows 2 to 5 decided and the call passed them; rows 6 (a channel free)
/// and 7 (the call rate) wait for the portal's channel count, which only
/// the I/O layer knows (in memory on one node, in the database for a
/// fleet).
///
/// Row 7's verdict is already known (`calls_this_second` was an input), but
/// it must not be answered before row 6: a full portal over its rate is
/// `channels-busy`, not `rate-limited`. So the driver either
///
/// - calls [`AwaitingChannel::decide`] with the channel count, or
/// - when [`AwaitingChannel::rate_refusal`] is `None`, takes the channel
///   atomically itself (its failure is `channels-busy`), and when it is
///   `Some`, counts the channels (without taking one) and calls
///   [`AwaitingChannel::decide`], so that a refused call never holds a
///   channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct AwaitingChannel {
    channels: u32,
    effective_plan: Plan,
    /// Rows 2 to 5, all passed (empty when untraced).
    trace: Vec<Check>,
    /// Whether passed checks are traced.
    traced: bool,
    /// Row 7's check, to be recorded after row 6's (`None` when untraced
    /// and passed).
    rate: Option<Check>,
    /// Row 7's refusal, if the rate is at its limit.
    rate_refusal: Option<Refusal>,
}

impl AwaitingChannel {
    /// SIP connector channels in force for the portal.
    pub fn channels(&self) -> u32 {
        self.channels
    }

    /// The plan whose rules applied.
    pub fn effective_plan(&self) -> &Plan {
        &self.effective_plan
    }

    /// Row 7's refusal, to be answered only if row 6 passes.
    pub fn rate_refusal(&self) -> Option<&Refusal> {
        self.rate_refusal.as_ref()
    }

    /// Rows 6 then 7, with `active_calls` the portal's calls in progress
    /// across the fleet, not counting this call.
    pub fn decide(self, active_calls: u32) -> Decision {
        let AwaitingChannel { channels, effective_plan, trace, traced, rate, rate_refusal } = self;
        let mut trace = Trace { checks: trace, passes: traced };
        // Row 6.
        let calls = || plural(active_calls, "call");
        if active_calls >= channels {
            let refusal = trace.fail(
                CheckName::Busy,
                Reason::ChannelsBusy,
                format!("{} in progress, all {} busy", calls(), plural(channels, "channel")),
            );
            return Decision::Refuse { refusal, trace: trace.checks };
        }
        trace.pass(CheckName::Busy, || format!("{} in progress, {channels} channels", calls()));
        // Row 7.
        trace.checks.extend(rate);
        match rate_refusal {
            Some(refusal) => Decision::Refuse { refusal, trace: trace.checks },
            None => Decision::Admit { channels, effective_plan, trace: trace.checks },
        }
    }
}

/// Rows 2 to 5 of [`decide`] (node, portal, block, licence, channels in
/// force), plus row 7's verdict on `calls_this_second`, held back until row
/// 6 has run: see [`AwaitingChannel`]. `Err` is the refusal of rows 2 to 5.
pub fn decide_licence(
    request: &CallRequest,
    portal: Option<&PortalSnapshot>,
    calls_this_second: u32,
    now: DateTime<Utc>,
) -> Result<AwaitingChannel, Decision> {
    licence_checks(request, portal, calls_this_second, now, Trace::new(true))
}

/// [`decide_licence`] without the passed checks in the trace: the same
/// verdict and the same refusal detail, and no text formatted for checks
/// nobody reads. The node's path, once per call attempt.
pub fn decide_licence_untraced(
    request: &CallRequest,
    portal: Option<&PortalSnapshot>,
    calls_this_second: u32,
    now: DateTime<Utc>,
) -> Result<AwaitingChannel, Decision> {
    licence_checks(request, portal, calls_this_second, now, Trace::new(false))
}

fn licence_checks(
    request: &CallRequest,
    portal: Option<&PortalSnapshot>,
    calls_this_second: u32,
    now: DateTime<Utc>,
    mut trace: Trace,
) -> Result<AwaitingChannel, Decision> {
    match run_licence_checks(request, portal, now, &mut trace) {
        Ok((portal, channels, effective_plan)) => {
            let (rate, rate_refusal) = rate_check(portal, &effective_plan, calls_this_second, trace.passes);
            let traced = trace.passes;
            Ok(AwaitingChannel { channels, effective_plan, trace: trace.checks, traced, rate, rate_refusal })
        }
        Err(refusal) => Err(Decision::Refuse { refusal, trace: trace.checks }),
    }
}

/// Row 7: the check as the trace shows it (when traced or failed), and the
/// refusal if it failed.
fn rate_check(
    portal: &PortalSnapshot,
    plan: &Plan,
    calls_this_second: u32,
    traced: bool,
) -> (Option<Check>, Option<Refusal>) {
    let max_cps = match portal.max_cps_override {
        Some(max) => Some(max),
        None => portal.limits.for_plan(plan).max_cps,
    };
    let failed = max_cps.is_some_and(|max| calls_this_second >= max);
    if !failed && !traced {
        return (None, None);
    }
    let source = match portal.max_cps_override {
        Some(_) => "portal override".to_owned(),
        None => format!("plan {}", plan.describe()),
    };
    let calls = plural(calls_this_second, "call");
    let detail = match max_cps {
        Some(max) => format!("{calls} this second, limit {max} per second ({source})"),
        None => format!("{calls} this second, no limit ({source})"),
    };
    if failed {
        let refusal = Refusal { reason: Reason::RateLimited, detail: detail.clone() };
        (Some(Check { name: CheckName::Rate, outcome: Outcome::Fail, detail }), Some(refusal))
    } else {
        (Some(Check { name: CheckName::Rate, outcome: Outcome::Pass, detail }), None)
    }
}

fn run_licence_checks<'p>(
    request: &CallRequest,
    portal: Option<&'p PortalSnapshot>,
    now: DateTime<Utc>,
    trace: &mut Trace,
) -> Result<(&'p PortalSnapshot, u32, Plan), Refusal> {
    // Row 2: cheapest, and it must not depend on the database at all.
    if request.node_overloaded {
        return Err(trace.fail(CheckName::Overload, Reason::Overloaded, "node is shedding load"));
    }
    trace.pass(CheckName::Overload, || "node accepts new calls".into());

    // Row 3.
    let Some(portal) = portal else {
        return Err(trace.fail(CheckName::Portal, Reason::PortalNotFound, format!("no portal {}", request.portal)));
    };
    if portal.id != request.portal {
        return Err(trace.fail(
            CheckName::Portal,
            Reason::PortalNotFound,
            format!("snapshot is of portal {}, not of portal {}", portal.id, request.portal),
        ));
    }
    let who = || format!("portal {} ({})", portal.id, portal.domain);
    match portal.status {
        PortalStatus::Deleting => {
            return Err(trace.fail(CheckName::Portal, Reason::PortalDeleted, format!("{} is being deleted", who())));
        }
        PortalStatus::Deleted => {
            return Err(trace.fail(CheckName::Portal, Reason::PortalDeleted, format!("{} is deleted", who())));
        }
        status => trace.pass(CheckName::Portal, || format!("{} exists, status {status}", who())),
    }

    // Row 4: stored block, expired licence, inactivity.
    if let Some(block) = stored_block(portal) {
        return Err(trace.fail(CheckName::Block, block.reason(), block.to_string()));
    }
    trace.pass(CheckName::Block, || "no stored block".into());

    let state = licence_state(portal, now);
    // No effective plan means the licence ended under `block`.
    let Some(plan) = state.effective_plan() else {
        return Err(trace.fail(CheckName::Licence, Reason::LicenceExpired, state.to_string()));
    };
    trace.pass(CheckName::Licence, || state.to_string());

    if let Some(block) = inactivity_block(portal, &state, now) {
        return Err(trace.fail(CheckName::Inactivity, block.reason(), block.to_string()));
    }
    if plan.is_free() {
        let (last, deadline) = inactivity_deadline(portal);
        trace.pass(CheckName::Inactivity, || {
            format!("free plan, last activity {}, inactive from {}", fmt_time(&last), fmt_time(&deadline))
        });
    } else {
        trace.pass(CheckName::Inactivity, || format!("inactivity does not apply to plan {}", plan.describe()));
    }

    // Row 5.
    let grant = grant(portal, &state, now);
    let channels = grant.total();
    if channels == 0 {
        return Err(trace.fail(
            CheckName::Channels,
            Reason::NotLicensed,
            format!("no SIP connector extension in force and plan {} includes no channel", plan.describe()),
        ));
    }
    trace.pass(CheckName::Channels, || {
        format!(
            "{} in force: {} from {} extension(s), {} included in plan {}",
            plural(channels, "channel"),
            grant.from_extensions,
            grant.extensions_in_force,
            grant.included,
            plan.describe()
        )
    });

    Ok((portal, channels, plan))
}

/// `1 call`, `2 calls`.
fn plural(n: u32, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// Whether a portal user may register (a softphone or SIP phone binding)
/// at `now`.
///
/// The portal must be active: not deleting or deleted, not blocked (stored,
/// inactivity, or licence ended under `block`). The user must not be
/// disabled, and an extranet user needs `allow_extranet_calls`. Finally
/// `registered_users` must be below the effective plan's `max_users`.
///
/// `registered_users` counts the *other* users of the portal that hold at
/// least one live registration, excluding this user: a user with several
/// devices counts once, and a refresh by an already registered user is
/// counted the same as their first registration. So when the operator
/// lowers the limit below the number registered, refreshes are refused too
/// and the portal shrinks to its new limit as registrations expire.
///
/// The SIP connector channels are not checked: registering costs no
/// channel, and calls are gated by [`decide`].
pub fn may_register(
    portal: &PortalSnapshot,
    user: &UserInfo,
    registered_users: u32,
    now: DateTime<Utc>,
) -> Result<(), RegisterRefusal> {
    if portal.status.is_deleted() {
        return Err(RegisterRefusal::PortalDeleted);
    }
    let state = licence_state(portal, now);
    if let Some(block) = block_at(portal, &state, now) {
        return Err(RegisterRefusal::PortalBlocked(block));
    }
    if user.disabled {
        return Err(RegisterRefusal::UserDisabled);
    }
    if user.extranet && !portal.allow_extranet_calls {
        return Err(RegisterRefusal::ExtranetNotAllowed);
    }
    let max_users = state.effective_plan().and_then(|plan| portal.limits.for_plan(&plan).max_users);
    match max_users {
        Some(max_users) if registered_users >= max_users => {
            Err(RegisterRefusal::UserLimit { registered: registered_users, max_users })
        }
        _ => Ok(()),
    }
}

/// Whether a user may be a call target: never when disabled, and an
/// extranet user only if the portal allows extranet calls. The portal's own
/// standing is [`decide`]'s business, not this function's.
#[must_use]
pub fn may_target(portal: &PortalSnapshot, user: &UserInfo) -> bool {
    !user.disabled && (!user.extranet || portal.allow_extranet_calls)
}
