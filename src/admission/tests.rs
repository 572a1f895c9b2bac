//! Tests of the licensing rules at their edges: for every instant that
//! matters, one second before, exactly at, and one second after. Time is
//! always an argument; nothing here reads the clock or sleeps.

use chrono::{DateTime, TimeDelta, Utc};

use crate::admission::*;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// An instant from RFC 3339 text.
fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap_or_else(|e| panic!("bad test instant {s:?}: {e}"))
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

/// Start and end of the licences under test; grace ends 15 days after END.
const START: &str = "2026-01-01T00:00:00Z";
const END: &str = "2026-03-01T00:00:00Z";
const GRACE_END: &str = "2026-03-16T00:00:00Z";
const CREATED: &str = "2025-12-01T00:00:00Z";

fn pro() -> Plan {
    Plan::paid("pro").expect("valid plan name")
}

fn licence(plan: Plan, on_expiry: ExpiryPolicy) -> Licence {
    Licence { plan, valid_from: Some(t(START)), valid_until: Some(t(END)), on_expiry, grace_days: DEFAULT_GRACE_DAYS }
}

fn ext(channels: u32, from: &str, until: &str) -> Extension {
    Extension { channels, valid_from: t(from), valid_until: t(until) }
}

/// An extension covering every instant of these tests.
fn long_ext(channels: u32) -> Extension {
    ext(channels, "2025-01-01T00:00:00Z", "2028-01-01T00:00:00Z")
}

fn pro_limits() -> PlanLimits {
    PlanLimits { max_users: Some(50), max_cps: Some(10), included_channels: 0 }
}

fn free_limits() -> PlanLimits {
    PlanLimits { max_users: Some(3), max_cps: Some(1), included_channels: 0 }
}

fn demo_limits() -> PlanLimits {
    PlanLimits { max_users: Some(10), max_cps: Some(5), included_channels: 2 }
}

/// An active portal `p1` with this licence, created on CREATED, never
/// active since, no extension.
fn portal(licence: Licence) -> PortalSnapshot {
    let licensed = match licence.plan {
        Plan::Free => free_limits(),
        Plan::Demo => demo_limits(),
        Plan::Paid(_) => pro_limits(),
    };
    PortalSnapshot {
        id: PortalId::new("p1"),
        domain: "acme.example".to_owned(),
        status: PortalStatus::Active,
        created_at: t(CREATED),
        last_activity_at: None,
        allow_extranet_calls: false,
        max_cps_override: None,
        licence,
        extensions: Vec::new(),
        limits: PlanLimitsTable { licensed, free: free_limits() },
        max_call_duration_s: 3600,
    }
}

/// A `pro` portal with a 3-channel extension covering every instant.
fn paid_portal(on_expiry: ExpiryPolicy) -> PortalSnapshot {
    let mut p = portal(licence(pro(), on_expiry));
    p.extensions.push(long_ext(3));
    p
}

/// A free portal with a 3-channel extension, last active at `active_at`.
fn free_portal(active_at: &str) -> PortalSnapshot {
    let mut p = portal(Licence::free());
    p.extensions.push(long_ext(3));
    p.last_activity_at = Some(t(active_at));
    p
}

fn load(active_calls: u32, calls_this_second: u32) -> Counters {
    Counters { active_calls, calls_this_second }
}

fn call(p: &PortalSnapshot, counters: Counters, now: DateTime<Utc>) -> Decision {
    let request = CallRequest { portal: p.id.clone(), node_overloaded: false };
    decide(&request, Some(p), &counters, now)
}

/// What a decision came to, for table comparisons.
#[derive(Debug, PartialEq, Eq)]
enum Want {
    Admit { channels: u32, plan: Plan },
    Refuse(Reason),
}

fn admit(channels: u32, plan: Plan) -> Want {
    Want::Admit { channels, plan }
}

fn outcome(d: &Decision) -> Want {
    match d {
        Decision::Admit { channels, effective_plan, .. } => admit(*channels, effective_plan.clone()),
        Decision::Refuse { refusal, .. } => Want::Refuse(refusal.reason),
    }
}

/// Runs idle calls at each instant and compares the outcomes.
fn assert_calls(p: &PortalSnapshot, cases: &[(&str, DateTime<Utc>, Want)]) {
    for (label, now, want) in cases {
        let decision = call(p, Counters::default(), *now);
        assert_eq!(&outcome(&decision), want, "{label} ({now}):\n{decision}");
    }
}

fn refusal(d: &Decision) -> &Refusal {
    d.refusal().unwrap_or_else(|| panic!("expected a refusal:\n{d}"))
}

// ---------------------------------------------------------------------------
// Model: tokens, names, validation, serde
// ---------------------------------------------------------------------------

#[test]
fn block_reason_tokens_are_stable_and_round_trip() {
    let cases = [
        (BlockReason::Violation, "violation"),
        (BlockReason::Inactivity, "inactivity"),
        (BlockReason::IncompatibleData, "incompatible_data"),
        (BlockReason::Manual, "manual"),
    ];
    for (reason, token) in cases {
        assert_eq!(reason.as_str(), token);
        assert_eq!(reason.to_string(), token);
        assert_eq!(token.parse::<BlockReason>(), Ok(reason));
    }
    assert_eq!(
        "Manual".parse::<BlockReason>(),
        Err(ModelError::UnknownToken { kind: "block reason", token: "Manual".to_owned() })
    );
}

#[test]
fn portal_status_text_round_trips() {
    let cases = [
        ("active", PortalStatus::Active),
        ("blocked:violation", PortalStatus::Blocked(BlockReason::Violation)),
        ("blocked:incompatible_data", PortalStatus::Blocked(BlockReason::IncompatibleData)),
        ("deleting", PortalStatus::Deleting),
        ("deleted", PortalStatus::Deleted),
    ];
    for (text, status) in cases {
        assert_eq!(text.parse::<PortalStatus>(), Ok(status), "{text}");
        assert_eq!(status.to_string(), text);
    }
    for bad in ["", "Active", "blocked", "blocked:", "blocked:sleepy", "gone"] {
        assert!(bad.parse::<PortalStatus>().is_err(), "{bad:?} parsed");
    }
    assert_eq!(PortalStatus::Blocked(BlockReason::Manual).as_str(), "blocked");
    assert_eq!(PortalStatus::Blocked(BlockReason::Manual).block_reason(), Some(BlockReason::Manual));
    assert_eq!(PortalStatus::Deleting.block_reason(), None);
}

#[test]
fn plan_text_form_and_paid_names() {
    assert_eq!("free".parse::<Plan>(), Ok(Plan::Free));
    assert_eq!("demo".parse::<Plan>(), Ok(Plan::Demo));
    assert_eq!("pro".parse::<Plan>(), Ok(Plan::Paid("pro".to_owned())));
    assert_eq!(Plan::Free.as_str(), "free");
    assert_eq!(Plan::Demo.to_string(), "demo");
    assert_eq!(pro().as_str(), "pro");

    let longest = "a".repeat(MAX_PLAN_NAME_LEN);
    for good in ["a", "gold_2-x", "-", longest.as_str()] {
        assert_eq!(good.parse::<Plan>(), Ok(Plan::Paid(good.to_owned())), "{good:?}");
    }
    let too_long = "a".repeat(MAX_PLAN_NAME_LEN + 1);
    for bad in ["", "Pro", "pro plan", "pro!", "prö", too_long.as_str()] {
        assert_eq!(bad.parse::<Plan>(), Err(ModelError::InvalidPlanName { name: bad.to_owned() }), "{bad:?}");
    }
}

#[test]
fn paid_plan_may_not_take_a_reserved_name() {
    // `Paid("free")` would read back as `Free` from its text form.
    for name in ["free", "demo"] {
        assert!(Plan::Paid(name.to_owned()).validate().is_err(), "{name}");
        assert!(Plan::paid(name).is_err(), "{name}");
    }
    assert_eq!(Plan::Free.validate(), Ok(()));
    assert_eq!(Plan::Demo.validate(), Ok(()));
}

#[test]
fn expiry_policy_tokens_round_trip() {
    for (policy, token) in [(ExpiryPolicy::Block, "block"), (ExpiryPolicy::DowngradeFree, "downgrade_free")] {
        assert_eq!(policy.as_str(), token);
        assert_eq!(token.parse::<ExpiryPolicy>(), Ok(policy));
    }
    assert!("downgrade".parse::<ExpiryPolicy>().is_err());
}

#[test]
fn serde_uses_the_stable_tokens() {
    let json = |v: serde_json::Value| v.to_string();
    assert_eq!(json(serde_json::json!(pro())), r#""pro""#);
    assert_eq!(json(serde_json::json!(Plan::Free)), r#""free""#);
    assert_eq!(
        json(serde_json::json!(PortalStatus::Blocked(BlockReason::IncompatibleData))),
        r#""blocked:incompatible_data""#
    );
    assert_eq!(json(serde_json::json!(ExpiryPolicy::DowngradeFree)), r#""downgrade_free""#);
    assert_eq!(json(serde_json::json!(Reason::DatabaseUnavailable)), r#""database-unavailable""#);
    assert_eq!(json(serde_json::json!(PortalId::new("p1"))), r#""p1""#);
    // Invalid names and tokens are refused on the way in.
    assert!(serde_json::from_str::<Plan>(r#""Pro""#).is_err());
    assert!(serde_json::from_str::<PortalStatus>(r#""blocked:nope""#).is_err());
}

#[test]
fn snapshot_round_trips_through_json() {
    let mut p = paid_portal(ExpiryPolicy::DowngradeFree);
    p.status = PortalStatus::Blocked(BlockReason::Manual);
    p.last_activity_at = Some(t("2026-02-01T12:30:00Z"));
    p.max_cps_override = Some(4);
    let text = serde_json::to_string(&p).expect("serializes");
    let back: PortalSnapshot = serde_json::from_str(&text).expect("deserializes");
    assert_eq!(back, p);
}

#[test]
fn licence_grace_days_default_to_15_when_omitted() {
    let text = r#"{"plan":"pro","valid_until":"2026-03-01T00:00:00Z","on_expiry":"block"}"#;
    let l: Licence = serde_json::from_str(text).expect("deserializes");
    assert_eq!(l.grace_days, 15);
    assert_eq!(l.valid_from, None);
    assert_eq!(l.validate(), Ok(()));
}

#[test]
fn grace_days_validation_allows_at_most_15() {
    let cases = [(0, true), (1, true), (14, true), (15, true), (16, false), (255, false)];
    for (grace_days, ok) in cases {
        let l = Licence { grace_days, ..licence(pro(), ExpiryPolicy::Block) };
        let want = if ok { Ok(()) } else { Err(ModelError::GraceTooLong { grace_days }) };
        assert_eq!(l.validate(), want, "grace_days {grace_days}");
    }
    assert_eq!(DEFAULT_GRACE_DAYS, 15);
    assert_eq!(MAX_GRACE_DAYS, 15);
}

#[test]
fn licence_validation_table() {
    let from = t(START);
    let window = |from: Option<&str>, until: Option<&str>, plan: Plan| Licence {
        plan,
        valid_from: from.map(t),
        valid_until: until.map(t),
        on_expiry: ExpiryPolicy::Block,
        grace_days: 15,
    };
    let cases = [
        ("paid, normal window", window(Some(START), Some(END), pro()), Ok(())),
        ("paid, one-second window", window(Some(START), Some("2026-01-01T00:00:01Z"), pro()), Ok(())),
        (
            "paid, until == from",
            window(Some(START), Some(START), pro()),
            Err(ModelError::EmptyLicenceWindow { from, until: from }),
        ),
        (
            "paid, until one second before from",
            window(Some(START), Some("2025-12-31T23:59:59Z"), pro()),
            Err(ModelError::EmptyLicenceWindow { from, until: from - secs(1) }),
        ),
        ("paid, no start", window(None, Some(END), pro()), Ok(())),
        ("paid, no end", window(Some(START), None, pro()), Err(ModelError::MissingEnd { plan: pro() })),
        ("demo, no end", window(Some(START), None, Plan::Demo), Err(ModelError::MissingEnd { plan: Plan::Demo })),
        ("demo, window", window(Some(START), Some(END), Plan::Demo), Ok(())),
        ("free", Licence::free(), Ok(())),
        ("free with an end", window(None, Some(END), Plan::Free), Err(ModelError::FreeWithEnd { until: t(END) })),
        (
            "paid with a reserved name",
            window(Some(START), Some(END), Plan::Paid("demo".to_owned())),
            Err(ModelError::InvalidPlanName { name: "demo".to_owned() }),
        ),
    ];
    for (label, l, want) in cases {
        assert_eq!(l.validate(), want, "{label}");
    }
}

#[test]
fn extension_validation_table() {
    let cases = [
        (ext(1, START, "2026-01-01T00:00:01Z"), Ok(())),
        (ext(30, START, END), Ok(())),
        (ext(0, START, END), Err(ModelError::NoChannels)),
        (ext(2, START, START), Err(ModelError::EmptyExtensionTerm { from: t(START), until: t(START) })),
        (ext(2, END, START), Err(ModelError::EmptyExtensionTerm { from: t(END), until: t(START) })),
    ];
    for (e, want) in cases {
        assert_eq!(e.validate(), want, "{e:?}");
    }
    let mut p = paid_portal(ExpiryPolicy::Block);
    assert_eq!(p.validate(), Ok(()));
    p.extensions.push(ext(0, START, END));
    assert_eq!(p.validate(), Err(ModelError::NoChannels));
}

#[test]
fn validation_errors_read_well() {
    assert_eq!(
        ModelError::GraceTooLong { grace_days: 16 }.to_string(),
        "grace period of 16 days exceeds the maximum of 15 days"
    );
    assert_eq!(
        ModelError::FreeWithEnd { until: t(END) }.to_string(),
        "the free plan has no end, but valid_until is 2026-03-01T00:00:00Z"
    );
}

#[test]
fn reason_tokens_statuses_and_retry_after() {
    let table = [
        (Reason::UnknownTrunk, "unknown-trunk", 403, false),
        (Reason::Overloaded, "overloaded", 503, true),
        (Reason::PortalNotFound, "portal-not-found", 403, false),
        (Reason::PortalDeleted, "portal-deleted", 403, false),
        (Reason::PortalBlocked, "portal-blocked", 403, false),
        (Reason::LicenceExpired, "licence-expired", 403, false),
        (Reason::NotLicensed, "not-licensed", 403, false),
        (Reason::ChannelsBusy, "channels-busy", 486, false),
        (Reason::RateLimited, "rate-limited", 503, false),
        (Reason::NoRoute, "no-route", 404, false),
        (Reason::Unavailable, "unavailable", 480, false),
        (Reason::NotPermitted, "not-permitted", 403, false),
        (Reason::DatabaseUnavailable, "database-unavailable", 503, true),
    ];
    assert_eq!(table.len(), Reason::ALL.len());
    for (reason, token, status, retry) in table {
        assert_eq!(reason.as_str(), token);
        assert_eq!(reason.to_string(), token);
        assert_eq!(token.parse::<Reason>(), Ok(reason));
        assert_eq!(RefusalAnswers::DEFAULT.answer(reason).0, status, "{token}");
        assert_eq!(reason.retry_after(), retry, "{token}");
    }
    assert!("channels_busy".parse::<Reason>().is_err());
}

#[test]
fn warning_text_is_token_colon_detail_and_stays_quotable() {
    let r = Refusal { reason: Reason::ChannelsBusy, detail: "3 calls in progress, all 3 channels busy".to_owned() };
    assert_eq!(r.warning_text(), "channels-busy: 3 calls in progress, all 3 channels busy");
    let hostile =
        Refusal { reason: Reason::PortalDeleted, detail: "portal p1 (a\"b\\c\r\nX: y) is deleted".to_owned() };
    assert_eq!(hostile.warning_text(), "portal-deleted: portal p1 (a'b/c  X: y) is deleted");
}

// ---------------------------------------------------------------------------
// licence_state
// ---------------------------------------------------------------------------

fn phase_and_plan(p: &PortalSnapshot, now: DateTime<Utc>) -> (LicencePhase, Option<Plan>) {
    let state = licence_state(p, now);
    let plan = state.effective_plan();
    (state.phase, plan)
}

#[test]
fn paid_licence_phases_at_every_edge() {
    let p = portal(licence(pro(), ExpiryPolicy::Block));
    let (start, end, grace_end) = (t(START), t(END), t(GRACE_END));
    let not_started = LicencePhase::NotStarted { starts_at: start };
    let in_force = LicencePhase::InForce { until: Some(end) };
    let grace = LicencePhase::Grace { ended_at: end, ends_at: grace_end };
    let ended = LicencePhase::Ended { ended_at: end, grace_ended_at: grace_end, policy: ExpiryPolicy::Block };
    let cases = [
        ("before start", start - secs(1), not_started, Some(Plan::Free)),
        ("at start", start, in_force, Some(pro())),
        ("after start", start + secs(1), in_force, Some(pro())),
        ("before end", end - secs(1), in_force, Some(pro())),
        ("at end", end, grace, Some(pro())),
        ("after end", end + secs(1), grace, Some(pro())),
        ("14 days after end", end + days(14), grace, Some(pro())),
        ("before grace end", grace_end - secs(1), grace, Some(pro())),
        ("at grace end (15 days)", grace_end, ended, None),
        ("after grace end", grace_end + secs(1), ended, None),
        ("16 days after end", end + days(16), ended, None),
    ];
    for (label, now, phase, plan) in cases {
        assert_eq!(phase_and_plan(&p, now), (phase, plan), "{label}");
    }
    assert_eq!(grace_end, end + days(15));
}

#[test]
fn downgrade_free_policy_applies_free_after_grace() {
    let p = portal(licence(pro(), ExpiryPolicy::DowngradeFree));
    let grace_end = t(GRACE_END);
    let cases = [
        (grace_end - secs(1), Some(pro()), false),
        (grace_end, Some(Plan::Free), false),
        (grace_end + secs(1), Some(Plan::Free), false),
    ];
    for (now, plan, blocked) in cases {
        let state = licence_state(&p, now);
        assert_eq!(state.effective_plan(), plan, "{now}");
        assert_eq!(state.is_expired_block(), blocked, "{now}");
    }
}

#[test]
fn grace_length_is_per_portal_and_clamped_to_15_days() {
    let end = t(END);
    // (grace_days, last instant in grace, first instant ended)
    let cases: [(u8, Option<DateTime<Utc>>, DateTime<Utc>); 4] = [
        (5, Some(end + days(5) - secs(1)), end + days(5)),
        (1, Some(end + days(1) - secs(1)), end + days(1)),
        (0, None, end),
        // Invalid data: never more than the agreement's 15 days.
        (200, Some(end + days(15) - secs(1)), end + days(15)),
    ];
    for (grace_days, last_in_grace, first_ended) in cases {
        let p = portal(Licence { grace_days, ..licence(pro(), ExpiryPolicy::Block) });
        if let Some(last) = last_in_grace {
            assert!(
                matches!(licence_state(&p, last).phase, LicencePhase::Grace { ends_at, .. } if ends_at == first_ended),
                "grace {grace_days}: in grace at {last}"
            );
        } else {
            assert_eq!(licence_state(&p, end - secs(1)).phase, LicencePhase::InForce { until: Some(end) });
        }
        assert_eq!(
            licence_state(&p, first_ended).phase,
            LicencePhase::Ended { ended_at: end, grace_ended_at: first_ended, policy: ExpiryPolicy::Block },
            "grace {grace_days}: ended at {first_ended}"
        );
    }
}

#[test]
fn demo_has_no_grace_whatever_grace_days_says() {
    let p = portal(Licence { grace_days: 15, ..licence(Plan::Demo, ExpiryPolicy::Block) });
    let end = t(END);
    let ended = LicencePhase::Ended { ended_at: end, grace_ended_at: end, policy: ExpiryPolicy::Block };
    let cases = [
        (t(START) - secs(1), LicencePhase::NotStarted { starts_at: t(START) }, Some(Plan::Free)),
        (t(START), LicencePhase::InForce { until: Some(end) }, Some(Plan::Demo)),
        (end - secs(1), LicencePhase::InForce { until: Some(end) }, Some(Plan::Demo)),
        (end, ended, None),
        (end + secs(1), ended, None),
    ];
    for (now, phase, plan) in cases {
        assert_eq!(phase_and_plan(&p, now), (phase, plan), "{now}");
    }
}

#[test]
fn free_licence_is_always_in_force() {
    let mut p = portal(Licence::free());
    for now in [t("1990-01-01T00:00:00Z"), t(START), t("2099-12-31T23:59:59Z")] {
        assert_eq!(phase_and_plan(&p, now), (LicencePhase::InForce { until: None }, Some(Plan::Free)));
    }
    // Invalid data (a free licence with a window) does not end free.
    p.licence.valid_from = Some(t(START));
    p.licence.valid_until = Some(t(END));
    assert_eq!(phase_and_plan(&p, t(GRACE_END) + days(100)), (LicencePhase::InForce { until: None }, Some(Plan::Free)));
}

#[test]
fn paid_licence_without_end_reads_as_open_ended() {
    let p = portal(Licence { valid_until: None, ..licence(pro(), ExpiryPolicy::Block) });
    assert_eq!(phase_and_plan(&p, t("2099-01-01T00:00:00Z")), (LicencePhase::InForce { until: None }, Some(pro())));
    assert_eq!(licence_state(&p, t(START) - secs(1)).phase, LicencePhase::NotStarted { starts_at: t(START) });
}

#[test]
fn licence_state_reads_as_one_line() {
    let paid = portal(licence(pro(), ExpiryPolicy::Block));
    let downgrade = portal(licence(pro(), ExpiryPolicy::DowngradeFree));
    let demo = portal(licence(Plan::Demo, ExpiryPolicy::Block));
    let free = portal(Licence::free());
    let cases = [
        (&paid, t(START) - secs(1), "licence paid 'pro' starts 2026-01-01T00:00:00Z; the free plan applies until then"),
        (&paid, t(START), "licence paid 'pro' in force until 2026-03-01T00:00:00Z"),
        (&paid, t(END), "licence paid 'pro' ended 2026-03-01T00:00:00Z, in grace until 2026-03-16T00:00:00Z"),
        (
            &paid,
            t(GRACE_END),
            "licence paid 'pro' ended 2026-03-01T00:00:00Z (grace ended 2026-03-16T00:00:00Z); \
             policy block",
        ),
        (
            &downgrade,
            t(GRACE_END),
            "licence paid 'pro' ended 2026-03-01T00:00:00Z (grace ended 2026-03-16T00:00:00Z); \
             policy downgrade_free: the free plan applies",
        ),
        (&demo, t(END), "licence demo ended 2026-03-01T00:00:00Z (no grace); policy block"),
        (&free, t(END), "licence free, always in force"),
    ];
    for (p, now, text) in cases {
        assert_eq!(licence_state(p, now).to_string(), text);
    }
}

// ---------------------------------------------------------------------------
// channels_in_force
// ---------------------------------------------------------------------------

/// Extension edges used below: A < B < C < D.
const A: &str = "2026-02-01T00:00:00Z";
const B: &str = "2026-02-10T00:00:00Z";
const C: &str = "2026-02-20T00:00:00Z";
const D: &str = "2026-03-01T00:00:00Z";

fn channels_table(p: &PortalSnapshot, cases: &[(&str, DateTime<Utc>, u32)]) {
    for (label, now, want) in cases {
        assert_eq!(channels_in_force(p, *now).total(), *want, "{label}");
    }
}

#[test]
fn extension_term_edges() {
    let mut p = portal(Licence::free());
    p.extensions.push(ext(3, A, B));
    let (a, b) = (t(A), t(B));
    channels_table(
        &p,
        &[
            ("before start", a - secs(1), 0),
            ("at start", a, 3),
            ("after start", a + secs(1), 3),
            ("before end", b - secs(1), 3),
            ("at end: no grace", b, 0),
            ("after end", b + secs(1), 0),
        ],
    );
}

#[test]
fn overlapping_extensions_stack() {
    let mut p = portal(Licence::free());
    p.extensions.push(ext(2, A, C));
    p.extensions.push(ext(3, B, D));
    let (b, c, d) = (t(B), t(C), t(D));
    channels_table(
        &p,
        &[
            ("first only", b - secs(1), 2),
            ("second starts", b, 5),
            ("both", c - secs(1), 5),
            ("first ends", c, 3),
            ("second only", d - secs(1), 3),
            ("second ends", d, 0),
        ],
    );
    assert_eq!(channels_in_force(&p, b), ChannelGrant { from_extensions: 5, extensions_in_force: 2, included: 0 });
}

#[test]
fn adjacent_extensions_hand_over_without_overlap() {
    let mut p = portal(Licence::free());
    p.extensions.push(ext(2, A, B));
    p.extensions.push(ext(4, B, C));
    let (b, c) = (t(B), t(C));
    channels_table(
        &p,
        &[
            ("first", b - secs(1), 2),
            ("handover: second only, not 6", b, 4),
            ("second", c - secs(1), 4),
            ("after both", c, 0),
        ],
    );
}

#[test]
fn demo_includes_channels_while_in_force_and_stacks_with_extensions() {
    let mut p = portal(licence(Plan::Demo, ExpiryPolicy::DowngradeFree));
    p.extensions.push(long_ext(3));
    let (start, end) = (t(START), t(END));
    let grant = |included, from_extensions| ChannelGrant { from_extensions, extensions_in_force: 1, included };
    let cases =
        [(start - secs(1), grant(0, 3)), (start, grant(2, 3)), (end - secs(1), grant(2, 3)), (end, grant(0, 3))];
    for (now, want) in cases {
        assert_eq!(channels_in_force(&p, now), want, "{now}");
    }
}

#[test]
fn plan_included_channels_count_in_grace_but_not_after_a_block_end() {
    let mut p = portal(licence(pro(), ExpiryPolicy::Block));
    p.limits.licensed.included_channels = 1;
    let grace_end = t(GRACE_END);
    channels_table(
        &p,
        &[("in force", t(START), 1), ("in grace", grace_end - secs(1), 1), ("ended under block", grace_end, 0)],
    );
}

// ---------------------------------------------------------------------------
// decide: licence and extension edges
// ---------------------------------------------------------------------------

#[test]
fn paid_licence_start_edges() {
    // Before its start the licence behaves as free: free limits, and the
    // extension still carries the calls.
    let p = paid_portal(ExpiryPolicy::Block);
    let start = t(START);
    assert_calls(
        &p,
        &[
            ("before start", start - secs(1), admit(3, Plan::Free)),
            ("at start", start, admit(3, pro())),
            ("after start", start + secs(1), admit(3, pro())),
        ],
    );
}

#[test]
fn paid_grace_edges_under_block_policy() {
    let p = paid_portal(ExpiryPolicy::Block);
    let (end, grace_end) = (t(END), t(GRACE_END));
    let expired = || Want::Refuse(Reason::LicenceExpired);
    assert_calls(
        &p,
        &[
            ("before end", end - secs(1), admit(3, pro())),
            ("at end: grace", end, admit(3, pro())),
            ("after end: grace", end + secs(1), admit(3, pro())),
            ("14 days after end", end + days(14), admit(3, pro())),
            ("last second of grace", grace_end - secs(1), admit(3, pro())),
            ("exactly 15 days after end", grace_end, expired()),
            ("after grace", grace_end + secs(1), expired()),
            ("16 days after end", end + days(16), expired()),
        ],
    );
    let d = call(&p, Counters::default(), grace_end);
    let r = refusal(&d);
    assert_eq!(RefusalAnswers::DEFAULT.answer(r.reason).0, 403);
    assert_eq!(
        r.warning_text(),
        "licence-expired: licence paid 'pro' ended 2026-03-01T00:00:00Z \
         (grace ended 2026-03-16T00:00:00Z); policy block"
    );
}

#[test]
fn downgrade_after_grace_applies_free_limits() {
    let mut p = paid_portal(ExpiryPolicy::DowngradeFree);
    p.last_activity_at = Some(t("2026-03-10T00:00:00Z"));
    let grace_end = t(GRACE_END);
    // One call already this second: under pro's 10 cps, at free's 1 cps.
    let cases = [
        (grace_end - secs(1), admit(3, pro())),
        (grace_end, Want::Refuse(Reason::RateLimited)),
        (grace_end + secs(1), Want::Refuse(Reason::RateLimited)),
    ];
    for (now, want) in cases {
        assert_eq!(outcome(&call(&p, load(0, 1), now)), want, "{now}");
    }
    // With no call yet this second, the downgraded portal is admitted as free.
    assert_eq!(outcome(&call(&p, load(0, 0), grace_end)), admit(3, Plan::Free));
}

#[test]
fn downgrade_after_grace_still_needs_an_extension() {
    // The extension ends before the grace does: in grace the paid plan
    // includes no channel, after it free includes none either.
    let mut p = portal(licence(pro(), ExpiryPolicy::DowngradeFree));
    p.last_activity_at = Some(t("2026-03-10T00:00:00Z"));
    p.extensions.push(ext(2, START, "2026-03-05T00:00:00Z"));
    let grace_end = t(GRACE_END);
    assert_calls(
        &p,
        &[
            ("grace, extension in force", t("2026-03-04T23:59:59Z"), admit(2, pro())),
            ("grace, extension ended", t("2026-03-05T00:00:00Z"), Want::Refuse(Reason::NotLicensed)),
            ("downgraded", grace_end, Want::Refuse(Reason::NotLicensed)),
        ],
    );
    p.extensions.push(ext(1, GRACE_END, "2026-04-01T00:00:00Z"));
    assert_calls(
        &p,
        &[
            ("before the new extension", grace_end - secs(1), Want::Refuse(Reason::NotLicensed)),
            ("downgraded with an extension", grace_end, admit(1, Plan::Free)),
        ],
    );
}

#[test]
fn demo_end_edges_by_policy() {
    let end = t(END);
    let block = portal(licence(Plan::Demo, ExpiryPolicy::Block));
    assert_calls(
        &block,
        &[
            ("demo in force, connector included", end - secs(1), admit(2, Plan::Demo)),
            ("at end: no grace", end, Want::Refuse(Reason::LicenceExpired)),
            ("after end", end + secs(1), Want::Refuse(Reason::LicenceExpired)),
        ],
    );

    let mut downgrade = portal(licence(Plan::Demo, ExpiryPolicy::DowngradeFree));
    downgrade.last_activity_at = Some(t("2026-02-20T00:00:00Z"));
    assert_calls(
        &downgrade,
        &[
            ("demo in force", end - secs(1), admit(2, Plan::Demo)),
            ("downgraded, no extension", end, Want::Refuse(Reason::NotLicensed)),
        ],
    );
    downgrade.extensions.push(long_ext(4));
    assert_calls(
        &downgrade,
        &[
            ("demo plus extension", end - secs(1), admit(6, Plan::Demo)),
            ("downgraded with extension", end, admit(4, Plan::Free)),
        ],
    );
}

#[test]
fn demo_start_edges() {
    let p = portal(licence(Plan::Demo, ExpiryPolicy::Block));
    let start = t(START);
    assert_calls(
        &p,
        &[
            ("not started: free, no channel", start - secs(1), Want::Refuse(Reason::NotLicensed)),
            ("at start", start, admit(2, Plan::Demo)),
            ("after start", start + secs(1), admit(2, Plan::Demo)),
        ],
    );
}

#[test]
fn extension_edges_decide_the_connector_licence() {
    let mut p = portal(Licence::free());
    p.last_activity_at = Some(t("2026-01-20T00:00:00Z"));
    p.extensions.push(ext(3, A, B));
    let (a, b) = (t(A), t(B));
    let unlicensed = || Want::Refuse(Reason::NotLicensed);
    assert_calls(
        &p,
        &[
            ("before start", a - secs(1), unlicensed()),
            ("at start", a, admit(3, Plan::Free)),
            ("before end", b - secs(1), admit(3, Plan::Free)),
            ("at end", b, unlicensed()),
            ("after end", b + secs(1), unlicensed()),
        ],
    );
    let d = call(&p, Counters::default(), b);
    assert_eq!(refusal(&d).detail, "no SIP connector extension in force and plan free includes no channel");
}

// ---------------------------------------------------------------------------
// decide: portal status, blocks, inactivity
// ---------------------------------------------------------------------------

#[test]
fn stored_blocks_refuse_with_their_reason() {
    for reason in BlockReason::ALL {
        let mut p = paid_portal(ExpiryPolicy::Block);
        p.status = PortalStatus::Blocked(reason);
        let d = call(&p, Counters::default(), t(START));
        let r = refusal(&d);
        assert_eq!(r.reason, Reason::PortalBlocked, "{reason}");
        assert_eq!(RefusalAnswers::DEFAULT.answer(r.reason).0, 403);
        assert_eq!(r.warning_text(), format!("portal-blocked: {reason} (stored status)"));
        assert_eq!(portal_block(&p, t(START)), Some(PortalBlock::Stored { reason }));
    }
}

#[test]
fn deleting_and_deleted_portals_are_refused() {
    let cases = [
        (PortalStatus::Deleting, "portal p1 (acme.example) is being deleted"),
        (PortalStatus::Deleted, "portal p1 (acme.example) is deleted"),
    ];
    for (status, detail) in cases {
        let mut p = paid_portal(ExpiryPolicy::Block);
        p.status = status;
        let d = call(&p, Counters::default(), t(START));
        assert_eq!(refusal(&d), &Refusal { reason: Reason::PortalDeleted, detail: detail.to_owned() });
        assert_eq!(may_register(&p, &UserInfo::default(), 0, t(START)), Err(RegisterRefusal::PortalDeleted));
    }
}

#[test]
fn unknown_portal_is_refused() {
    let request = CallRequest { portal: PortalId::new("p404"), node_overloaded: false };
    let d = decide(&request, None, &Counters::default(), t(START));
    assert_eq!(refusal(&d), &Refusal { reason: Reason::PortalNotFound, detail: "no portal p404".to_owned() });
}

#[test]
fn snapshot_of_another_portal_is_refused() {
    let p = paid_portal(ExpiryPolicy::Block);
    let request = CallRequest { portal: PortalId::new("p2"), node_overloaded: false };
    let d = decide(&request, Some(&p), &Counters::default(), t(START));
    assert_eq!(d.reason(), Some(Reason::PortalNotFound));
}

#[test]
fn free_inactivity_edges_at_50_days() {
    let last = "2026-02-01T00:00:00Z";
    let p = free_portal(last);
    let limit = t(last) + days(50);
    let blocked = || Want::Refuse(Reason::PortalBlocked);
    assert_calls(
        &p,
        &[
            ("49 days", t(last) + days(49), admit(3, Plan::Free)),
            ("one second before 50 days", limit - secs(1), admit(3, Plan::Free)),
            ("exactly 50 days", limit, blocked()),
            ("one second after", limit + secs(1), blocked()),
        ],
    );
    let d = call(&p, Counters::default(), limit);
    assert_eq!(
        refusal(&d).warning_text(),
        "portal-blocked: inactivity: free plan with no activity since \
         2026-02-01T00:00:00Z, 50 days or more"
    );
    assert_eq!(portal_block(&p, limit), Some(PortalBlock::Inactive { last_activity_at: t(last) }));
    assert_eq!(portal_block(&p, limit - secs(1)), None);
}

#[test]
fn inactivity_counts_from_creation_without_activity() {
    let mut p = free_portal(START);
    p.last_activity_at = None;
    let limit = t(CREATED) + days(50);
    assert_calls(
        &p,
        &[("before", limit - secs(1), admit(3, Plan::Free)), ("at", limit, Want::Refuse(Reason::PortalBlocked))],
    );
}

#[test]
fn activity_resets_the_inactivity_clock() {
    let first = "2026-02-01T00:00:00Z";
    let at = t(first) + days(50);
    let mut p = free_portal(first);
    assert_eq!(call(&p, Counters::default(), at).reason(), Some(Reason::PortalBlocked));
    for later in [t(first) + secs(1), t(first) + days(30), at] {
        p.last_activity_at = Some(later);
        assert_eq!(outcome(&call(&p, Counters::default(), at)), admit(3, Plan::Free), "activity at {later}");
    }
}

#[test]
fn inactivity_does_not_apply_while_paid_or_demo_is_in_force() {
    // Created long before, never active: 100+ days idle.
    for plan in [pro(), Plan::Demo] {
        let mut p = portal(licence(plan.clone(), ExpiryPolicy::Block));
        p.extensions.push(long_ext(3));
        p.created_at = t("2025-01-01T00:00:00Z");
        assert!(call(&p, Counters::default(), t(END) - secs(1)).is_admitted(), "{plan}");
        assert_eq!(portal_block(&p, t(END) - secs(1)), None, "{plan}");
    }
    let mut p = paid_portal(ExpiryPolicy::DowngradeFree);
    p.created_at = t("2025-01-01T00:00:00Z");
    assert!(call(&p, Counters::default(), t(GRACE_END) - secs(1)).is_admitted(), "grace");
}

#[test]
fn inactivity_applies_before_start_and_after_downgrade() {
    // Not started: behaves as free, so an idle portal is blocked.
    let mut p = paid_portal(ExpiryPolicy::DowngradeFree);
    p.licence.valid_from = Some(t("2026-06-01T00:00:00Z"));
    p.licence.valid_until = Some(t("2026-09-01T00:00:00Z"));
    let limit = t(CREATED) + days(50);
    assert_eq!(outcome(&call(&p, Counters::default(), limit - secs(1))), admit(3, Plan::Free));
    assert_eq!(call(&p, Counters::default(), limit).reason(), Some(Reason::PortalBlocked));

    // Downgraded after grace with the last activity 50 days back or more.
    let mut p = paid_portal(ExpiryPolicy::DowngradeFree);
    p.last_activity_at = Some(t(GRACE_END) - days(50));
    let d = call(&p, Counters::default(), t(GRACE_END));
    assert_eq!(d.reason(), Some(Reason::PortalBlocked));
    assert!(refusal(&d).detail.starts_with("inactivity: "));
    // The same portal was fine one second earlier, in grace on the paid plan.
    assert!(call(&p, Counters::default(), t(GRACE_END) - secs(1)).is_admitted());
}

#[test]
fn portal_block_reports_each_kind_with_its_token() {
    let mut stored = paid_portal(ExpiryPolicy::Block);
    stored.status = PortalStatus::Blocked(BlockReason::IncompatibleData);
    let idle = free_portal("2026-01-01T00:00:00Z");
    let expired = paid_portal(ExpiryPolicy::Block);
    let now = t(GRACE_END);
    let cases = [
        (&stored, "incompatible_data", Reason::PortalBlocked),
        (&idle, "inactivity", Reason::PortalBlocked),
        (&expired, "licence-expired", Reason::LicenceExpired),
    ];
    for (p, token, reason) in cases {
        let block = portal_block(p, now).expect("blocked");
        assert_eq!(block.token(), token);
        assert_eq!(block.reason(), reason);
    }
    assert_eq!(
        portal_block(&expired, now),
        Some(PortalBlock::LicenceExpired { plan: pro(), ended_at: t(END), grace_ended_at: t(GRACE_END) })
    );
    assert_eq!(portal_block(&paid_portal(ExpiryPolicy::Block), t(START)), None);
}

// ---------------------------------------------------------------------------
// decide: load checks and order
// ---------------------------------------------------------------------------

#[test]
fn overload_is_checked_first() {
    let mut deleted = paid_portal(ExpiryPolicy::Block);
    deleted.status = PortalStatus::Deleted;
    let request = CallRequest { portal: PortalId::new("p1"), node_overloaded: true };
    for p in [None, Some(&deleted)] {
        let d = decide(&request, p, &load(99, 99), t(START));
        let r = refusal(&d);
        assert_eq!(r.reason, Reason::Overloaded);
        assert_eq!(RefusalAnswers::DEFAULT.answer(r.reason).0, 503);
        assert!(r.reason.retry_after());
        assert_eq!(d.trace().len(), 1);
    }
}

#[test]
fn channels_busy_at_exactly_the_channel_count() {
    let p = paid_portal(ExpiryPolicy::Block);
    let busy = || Want::Refuse(Reason::ChannelsBusy);
    let cases = [(0, admit(3, pro())), (2, admit(3, pro())), (3, busy()), (4, busy())];
    for (active, want) in cases {
        assert_eq!(outcome(&call(&p, load(active, 0), t(START))), want, "{active} active");
    }
    let d = call(&p, load(3, 0), t(START));
    let r = refusal(&d);
    assert_eq!(RefusalAnswers::DEFAULT.answer(r.reason).0, 486);
    assert_eq!(r.detail, "3 calls in progress, all 3 channels busy");
}

#[test]
fn rate_limited_at_exactly_max_cps() {
    let p = paid_portal(ExpiryPolicy::Block);
    let limited = || Want::Refuse(Reason::RateLimited);
    for (cps, want) in [(0, admit(3, pro())), (9, admit(3, pro())), (10, limited()), (11, limited())] {
        assert_eq!(outcome(&call(&p, load(0, cps), t(START))), want, "{cps} cps");
    }
    let d = call(&p, load(0, 10), t(START));
    let r = refusal(&d);
    assert_eq!(RefusalAnswers::DEFAULT.answer(r.reason).0, 503);
    assert!(!r.reason.retry_after(), "the limit holds on every node");
    assert_eq!(r.detail, "10 calls this second, limit 10 per second (plan paid 'pro')");
}

/// DESIGN.md orders row 6 (486 channels-busy) before row 7 (503
/// rate-limited): a portal that is both full and over its rate is busy.
#[test]
fn full_portal_over_its_rate_is_busy_not_rate_limited() {
    let p = paid_portal(ExpiryPolicy::Block);
    // 3 channels, limit 10 per second: full and over the rate.
    let d = call(&p, load(3, 10), t(START));
    assert_eq!(outcome(&d), Want::Refuse(Reason::ChannelsBusy), "{d}");
    assert_eq!(d.trace().last().map(|c| c.name), Some(CheckName::Busy), "{d}");
}

/// The driver's two steps: rows 2-5 first, the rate verdict held back, then
/// rows 6 and 7 once the channel count is known.
#[test]
fn decide_licence_holds_the_rate_verdict_until_the_channel_count() {
    let p = paid_portal(ExpiryPolicy::Block);
    let request = CallRequest { portal: p.id.clone(), node_overloaded: false };
    let over_rate = decide_licence(&request, Some(&p), 10, t(START)).expect("rows 2-5 pass");
    assert_eq!(over_rate.channels(), 3);
    assert_eq!(over_rate.rate_refusal().map(|r| r.reason), Some(Reason::RateLimited));
    // Full: busy wins, and the rate check never shows in the trace.
    let full = over_rate.clone().decide(3);
    assert_eq!(full.reason(), Some(Reason::ChannelsBusy), "{full}");
    assert!(full.trace().iter().all(|c| c.name != CheckName::Rate), "{full}");
    // A channel free: the held-back rate verdict answers, after row 6.
    let limited = over_rate.decide(2);
    assert_eq!(limited.reason(), Some(Reason::RateLimited), "{limited}");
    let names: Vec<CheckName> = limited.trace().iter().rev().take(2).map(|c| c.name).collect();
    assert_eq!(names, [CheckName::Rate, CheckName::Busy], "{limited}");
    // Under the rate: nothing held back; the two steps equal `decide`.
    let under = decide_licence(&request, Some(&p), 9, t(START)).expect("rows 2-5 pass");
    assert!(under.rate_refusal().is_none());
    assert_eq!(under.decide(2), call(&p, load(2, 9), t(START)));
    // Rows 2-5 refuse before any count: no AwaitingChannel at all.
    let mut blocked = p.clone();
    blocked.status = PortalStatus::Blocked(BlockReason::Manual);
    let refused = decide_licence(&request, Some(&blocked), 0, t(START)).expect_err("blocked");
    assert_eq!(refused.reason(), Some(Reason::PortalBlocked));
    assert_eq!(refused, call(&blocked, load(0, 0), t(START)));
}

/// The node's untraced path decides exactly as the traced one, with the
/// same refusal detail (the `Warning` text), and keeps only the failed
/// check.
#[test]
fn untraced_decisions_equal_traced_ones_but_keep_only_the_failure() {
    let paid = paid_portal(ExpiryPolicy::Block);
    let mut blocked = paid.clone();
    blocked.status = PortalStatus::Blocked(BlockReason::Manual);
    let free = free_portal(START);
    let mut deleted = paid.clone();
    deleted.status = PortalStatus::Deleted;
    // (portal, active calls, calls this second)
    let cases = [
        (&paid, 0, 0),
        (&paid, 2, 9),
        (&paid, 3, 0),
        (&paid, 2, 10),
        (&paid, 3, 10),
        (&blocked, 0, 0),
        (&deleted, 0, 0),
        (&free, 0, 0),
        (&free, 0, 1000),
    ];
    for (p, active, cps) in cases {
        let request = CallRequest { portal: p.id.clone(), node_overloaded: false };
        let traced = decide_licence(&request, Some(p), cps, t(START)).map(|a| a.decide(active));
        let untraced = decide_licence_untraced(&request, Some(p), cps, t(START)).map(|a| a.decide(active));
        let (traced, untraced) = (traced.unwrap_or_else(|d| d), untraced.unwrap_or_else(|d| d));
        assert_eq!(untraced.reason(), traced.reason(), "{p:?} {active} {cps}");
        assert_eq!(untraced.refusal(), traced.refusal(), "{p:?} {active} {cps}");
        let failed: Vec<&Check> = traced.trace().iter().filter(|c| c.outcome == Outcome::Fail).collect();
        let kept: Vec<&Check> = untraced.trace().iter().collect();
        assert_eq!(kept, failed, "{traced}");
        assert!(traced.trace().len() > kept.len(), "{traced}");
    }
    // Overloaded and unknown portals too.
    let request = CallRequest { portal: paid.id.clone(), node_overloaded: true };
    let refused = decide_licence_untraced(&request, Some(&paid), 0, t(START)).expect_err("overloaded");
    assert_eq!(refused.reason(), Some(Reason::Overloaded));
    assert_eq!(refused.trace().len(), 1);
    let request = CallRequest { portal: paid.id.clone(), node_overloaded: false };
    let refused = decide_licence_untraced(&request, None, 0, t(START)).expect_err("no portal");
    assert_eq!(refused.reason(), Some(Reason::PortalNotFound));
}

#[test]
fn portal_rate_override_replaces_the_plan_limit() {
    // (override, plan max_cps, calls this second, admitted)
    let cases = [
        (Some(20), Some(10), 10, true),
        (Some(20), Some(10), 19, true),
        (Some(20), Some(10), 20, false),
        (Some(2), Some(10), 1, true),
        (Some(2), Some(10), 2, false),
        (Some(0), Some(10), 0, false),
        (Some(5), None, 5, false),
        (None, None, u32::MAX, true),
    ];
    for (max_cps_override, plan_max, cps, admitted) in cases {
        let mut p = paid_portal(ExpiryPolicy::Block);
        p.max_cps_override = max_cps_override;
        p.limits.licensed.max_cps = plan_max;
        let d = call(&p, load(0, cps), t(START));
        assert_eq!(d.is_admitted(), admitted, "override {max_cps_override:?}, plan {plan_max:?}, {cps} cps:\n{d}");
        if !admitted {
            assert_eq!(d.reason(), Some(Reason::RateLimited));
        }
    }
    let mut p = paid_portal(ExpiryPolicy::Block);
    p.max_cps_override = Some(2);
    assert_eq!(
        refusal(&call(&p, load(0, 2), t(START))).detail,
        "2 calls this second, limit 2 per second (portal override)"
    );
}

#[test]
fn first_failing_check_decides() {
    let now = t(GRACE_END);
    let mut blocked = paid_portal(ExpiryPolicy::Block);
    blocked.status = PortalStatus::Blocked(BlockReason::Violation);
    let mut deleting_expired = paid_portal(ExpiryPolicy::Block);
    deleting_expired.status = PortalStatus::Deleting;
    let expired = paid_portal(ExpiryPolicy::Block);
    let mut idle = free_portal("2026-01-01T00:00:00Z");
    idle.extensions.clear();
    let mut unlicensed = free_portal("2026-03-10T00:00:00Z");
    unlicensed.extensions.clear();
    let mut paid = paid_portal(ExpiryPolicy::Block);
    paid.licence.valid_until = Some(t("2026-06-01T00:00:00Z"));

    let cases = [
        // A stored block beats an expired licence and busy channels.
        ("blocked, expired, busy, rate", &blocked, load(9, 99), Reason::PortalBlocked),
        ("deleting and expired", &deleting_expired, load(0, 0), Reason::PortalDeleted),
        ("expired and busy", &expired, load(9, 99), Reason::LicenceExpired),
        ("idle, unlicensed, busy", &idle, load(9, 99), Reason::PortalBlocked),
        ("unlicensed, busy, rate", &unlicensed, load(9, 99), Reason::NotLicensed),
        ("busy and rate", &paid, load(3, 10), Reason::ChannelsBusy),
        ("rate only", &paid, load(2, 10), Reason::RateLimited),
    ];
    for (label, p, counters, reason) in cases {
        let d = call(p, counters, now);
        assert_eq!(d.reason(), Some(reason), "{label}:\n{d}");
    }
}

// ---------------------------------------------------------------------------
// decide: trace and rendering
// ---------------------------------------------------------------------------

#[test]
fn admitted_trace_lists_every_check_in_order() {
    let d = call(&paid_portal(ExpiryPolicy::Block), load(1, 2), t(START));
    let names: Vec<_> = d.trace().iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            CheckName::Overload,
            CheckName::Portal,
            CheckName::Block,
            CheckName::Licence,
            CheckName::Inactivity,
            CheckName::Channels,
            CheckName::Busy,
            CheckName::Rate,
        ]
    );
    assert!(d.trace().iter().all(|c| c.outcome == Outcome::Pass));
}

#[test]
fn refused_trace_stops_at_the_failing_check() {
    let d = call(&paid_portal(ExpiryPolicy::Block), load(3, 0), t(START));
    let trace = d.trace();
    assert_eq!(trace.len(), 7);
    let last = trace.last().expect("non-empty trace");
    assert_eq!((last.name, last.outcome), (CheckName::Busy, Outcome::Fail));
    assert_eq!(last.detail, refusal(&d).detail);
    assert!(trace[..6].iter().all(|c| c.outcome == Outcome::Pass));
}

#[test]
fn trace_tells_the_grace_period() {
    let d = call(&paid_portal(ExpiryPolicy::Block), Counters::default(), t(END) + days(1));
    let licence = d.trace().iter().find(|c| c.name == CheckName::Licence).expect("licence check ran");
    assert_eq!(licence.detail, "licence paid 'pro' ended 2026-03-01T00:00:00Z, in grace until 2026-03-16T00:00:00Z");
}

#[test]
fn admitted_decision_displays_as_an_explanation() {
    let d = call(&paid_portal(ExpiryPolicy::Block), load(1, 2), t(START));
    let want = "\
admitted: plan paid 'pro', 3 channels in force
  pass  overload    node accepts new calls
  pass  portal      portal p1 (acme.example) exists, status active
  pass  block       no stored block
  pass  licence     licence paid 'pro' in force until 2026-03-01T00:00:00Z
  pass  inactivity  inactivity does not apply to plan paid 'pro'
  pass  channels    3 channels in force: 3 from 1 extension(s), 0 included in plan paid 'pro'
  pass  busy        1 call in progress, 3 channels
  pass  rate        2 calls this second, limit 10 per second (plan paid 'pro')
";
    assert_eq!(d.to_string(), want);
}

#[test]
fn refused_decision_displays_the_answer_and_the_checks_run() {
    let mut p = paid_portal(ExpiryPolicy::Block);
    p.status = PortalStatus::Blocked(BlockReason::Violation);
    let want = "\
refused: portal-blocked (default answer 403): violation (stored status)
  pass  overload    node accepts new calls
  pass  portal      portal p1 (acme.example) exists, status blocked:violation
  FAIL  block       violation (stored status)
  (later checks not run)
";
    assert_eq!(call(&p, Counters::default(), t(START)).to_string(), want);

    let request = CallRequest { portal: PortalId::new("p1"), node_overloaded: true };
    let overloaded = decide(&request, None, &Counters::default(), t(START));
    assert!(overloaded.to_string().starts_with("refused: overloaded (default answer 503 with Retry-After): "));
}

#[test]
fn decision_serializes_with_a_verdict_tag() {
    let mut p = free_portal(START);
    p.status = PortalStatus::Blocked(BlockReason::Manual);
    let v = serde_json::to_value(call(&p, Counters::default(), t(START))).expect("serializes");
    assert_eq!(v["verdict"], "refuse");
    assert_eq!(v["refusal"]["reason"], "portal-blocked");
    assert_eq!(v["trace"][2]["name"], "block");
    assert_eq!(v["trace"][2]["outcome"], "fail");
}

// ---------------------------------------------------------------------------
// may_register and may_target
// ---------------------------------------------------------------------------

const MEMBER: UserInfo = UserInfo { extranet: false, disabled: false };
const GUEST: UserInfo = UserInfo { extranet: true, disabled: false };

#[test]
fn register_on_an_active_portal() {
    let p = paid_portal(ExpiryPolicy::Block);
    assert_eq!(may_register(&p, &MEMBER, 0, t(START)), Ok(()));
}

#[test]
fn register_refused_on_blocked_portals() {
    for reason in BlockReason::ALL {
        let mut p = paid_portal(ExpiryPolicy::Block);
        p.status = PortalStatus::Blocked(reason);
        assert_eq!(
            may_register(&p, &MEMBER, 0, t(START)),
            Err(RegisterRefusal::PortalBlocked(PortalBlock::Stored { reason }))
        );
    }
    // Computed blocks: inactivity on free, licence expired under block.
    let idle = free_portal("2026-01-01T00:00:00Z");
    let err = may_register(&idle, &MEMBER, 0, t("2026-02-20T00:00:00Z")).expect_err("idle");
    assert_eq!(err.as_str(), "portal-blocked");
    assert!(may_register(&idle, &MEMBER, 0, t("2026-02-19T23:59:59Z")).is_ok());

    let expired = paid_portal(ExpiryPolicy::Block);
    let err = may_register(&expired, &MEMBER, 0, t(GRACE_END)).expect_err("expired");
    assert_eq!(err.as_str(), "licence-expired");
    assert!(may_register(&expired, &MEMBER, 0, t(GRACE_END) - secs(1)).is_ok());
}

#[test]
fn register_checks_the_user() {
    let mut p = paid_portal(ExpiryPolicy::Block);
    let disabled = |extranet| UserInfo { extranet, disabled: true };
    let now = t(START);
    assert_eq!(may_register(&p, &disabled(false), 0, now), Err(RegisterRefusal::UserDisabled));
    assert_eq!(may_register(&p, &GUEST, 0, now), Err(RegisterRefusal::ExtranetNotAllowed));
    p.allow_extranet_calls = true;
    assert_eq!(may_register(&p, &GUEST, 0, now), Ok(()));
    assert_eq!(may_register(&p, &disabled(true), 0, now), Err(RegisterRefusal::UserDisabled));
}

#[test]
fn register_user_limit_edges() {
    let mut p = paid_portal(ExpiryPolicy::Block);
    let now = t(START);
    let full = |registered| Err(RegisterRefusal::UserLimit { registered, max_users: 50 });
    // `registered_users` counts the other users: 49 others + this one = 50.
    let cases = [(0, Ok(())), (49, Ok(())), (50, full(50)), (51, full(51))];
    for (registered, want) in cases {
        assert_eq!(may_register(&p, &MEMBER, registered, now), want, "{registered}");
    }
    p.limits.licensed.max_users = None;
    assert_eq!(may_register(&p, &MEMBER, u32::MAX, now), Ok(()));
    assert_eq!(full(50).unwrap_err().to_string(), "user-limit: 50 other users registered, the plan allows 50");
}

#[test]
fn register_limits_follow_the_effective_plan() {
    let mut p = paid_portal(ExpiryPolicy::DowngradeFree);
    p.last_activity_at = Some(t("2026-03-10T00:00:00Z"));
    let grace_end = t(GRACE_END);
    // In grace: pro allows 50. Downgraded: free allows 3.
    assert_eq!(may_register(&p, &MEMBER, 10, grace_end - secs(1)), Ok(()));
    assert_eq!(may_register(&p, &MEMBER, 2, grace_end), Ok(()));
    assert_eq!(
        may_register(&p, &MEMBER, 3, grace_end),
        Err(RegisterRefusal::UserLimit { registered: 3, max_users: 3 })
    );
}

#[test]
fn register_does_not_need_connector_channels() {
    let p = portal(licence(pro(), ExpiryPolicy::Block));
    assert_eq!(channels_in_force(&p, t(START)).total(), 0);
    assert_eq!(may_register(&p, &MEMBER, 0, t(START)), Ok(()));
}

#[test]
fn may_target_table() {
    // (extranet, disabled, portal allows extranet calls, target?)
    let cases = [
        (false, false, false, true),
        (false, false, true, true),
        (true, false, false, false),
        (true, false, true, true),
        (false, true, false, false),
        (false, true, true, false),
        (true, true, false, false),
        (true, true, true, false),
    ];
    for (extranet, disabled, allow, want) in cases {
        let mut p = paid_portal(ExpiryPolicy::Block);
        p.allow_extranet_calls = allow;
        let user = UserInfo { extranet, disabled };
        assert_eq!(may_target(&p, &user), want, "extranet {extranet}, disabled {disabled}, allowed {allow}");
    }
}
